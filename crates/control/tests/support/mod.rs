//! Shared by the control plane's integration tests: a real emulator and a real control plane,
//! both on 127.0.0.1:0, the control plane configured exactly as `atrest up` configures it
//! (platform app with a certificate, Azure host names sent to the emulator), an organization
//! with an Organization Owner service account, and helpers to call the Atlas API over HTTP.
#![allow(dead_code)]

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_control::{Config, ControlPlane};
use atrest_emulator::scenario::{self, Azure, Customer, VaultAuth};
use atrest_emulator::{Emulator, EmulatorConfig};
use atrest_store::{OrgId, Organization, Roles};

pub const ACCEPT: &str = "application/vnd.atlas.2023-01-01+json";
/// The clusters operations' media type (docs/clusters.md).
pub const CLUSTERS_ACCEPT: &str = "application/vnd.atlas.2024-08-05+json";

/// Knobs for [`Env::start_with`].
#[derive(Clone)]
pub struct Options {
    pub revalidate_interval_secs: u64,
    pub on_read_min_interval_secs: u64,
    pub require_key_binding: bool,
    pub poll_interval_ms: u64,
    /// `None`: a fresh SQLite store in the temp dir.
    pub store_url: Option<String>,
    /// `azure.retry_budget_secs`.
    pub retry_budget_secs: u64,
    /// `validation.node_check_interval_secs`.
    pub node_check_interval_secs: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            revalidate_interval_secs: 3600,
            on_read_min_interval_secs: 0,
            require_key_binding: false,
            poll_interval_ms: 100,
            store_url: None,
            retry_budget_secs: 30,
            node_check_interval_secs: 60,
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub emu: Emulator,
    pub az: Azure,
    pub platform: scenario::Platform,
    pub control: ControlPlane,
    pub config: Config,
    pub http: reqwest::Client,
    pub org: OrgId,
    pub client_id: String,
    pub client_secret: String,
    pub token: String,
}

/// One customer tenant set up the way the seeds describe: the platform's service principal
/// created in it, a resource group, a vault and an RSA key. No grant yet.
pub struct Tenant {
    pub customer: Customer,
    pub sp: String,
    pub rg: String,
    pub vault: String,
    pub vault_id: String,
    pub kid: String,
}

impl Tenant {
    /// The key identifier without its version.
    pub fn unversioned_kid(&self) -> String {
        self.kid.rsplit_once('/').map(|(a, _)| a.to_string()).unwrap()
    }

    /// The RBAC grants of the seeds: Reader and Key Vault Crypto User on the vault. Returns the
    /// two assignment ids.
    pub async fn grant_rbac(&self) -> (String, String) {
        let reader = self.customer.assign_role(&self.sp, scenario::roles::READER, &self.vault_id).await.unwrap();
        let crypto =
            self.customer.assign_role(&self.sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &self.vault_id).await.unwrap();
        (reader, crypto)
    }

    /// The `azureKeyVault` block for this tenant's key with `role_id`.
    pub fn ear_block(&self, role_id: &str) -> Value {
        json!({
            "enabled": true,
            "roleId": role_id,
            "subscriptionID": self.customer.subscription_id(),
            "resourceGroupName": self.rg,
            "keyVaultName": self.vault,
            "keyIdentifier": self.kid,
            "azureEnvironment": "AZURE",
        })
    }

    /// The Cloud Provider Access registration body.
    pub fn cpa_body(&self, app_id: &str) -> Value {
        json!({
            "providerName": "AZURE",
            "atlasAzureAppId": app_id,
            "servicePrincipalId": self.sp,
            "tenantId": self.customer.tenant_id(),
        })
    }
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(EmulatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("emulator")))
            .await
            .unwrap();
        let azure_http =
            atrest_azure::Transport::new(&atrest_azure::TransportConfig::with_override(emu.addr(), emu.ca_pem()))
                .unwrap()
                .http()
                .clone();
        let az = Azure::new(azure_http);
        let platform = scenario::create_platform(&az, &emu.info().bootstrap).await.unwrap();
        let control_dir = dir.path().join("control");
        std::fs::create_dir_all(&control_dir).unwrap();
        std::fs::write(control_dir.join("platform-cert.pem"), &platform.cert_pem).unwrap();
        std::fs::write(control_dir.join("platform-key.pem"), &platform.key_pem).unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: control_dir.clone(),
            store_url: opts.store_url.clone(),
            bootstrap: false,
            ..Config::default()
        };
        config.platform.app_id = Some(platform.app_id.clone());
        config.platform.certificate_path = Some(control_dir.join("platform-cert.pem"));
        config.platform.private_key_path = Some(control_dir.join("platform-key.pem"));
        config.azure.endpoint_override = Some(emu.addr());
        config.azure.extra_ca_path = Some(emu.info().ca_pem.clone().into());
        config.validation.revalidate_interval_secs = opts.revalidate_interval_secs;
        config.validation.on_read_min_interval_secs = opts.on_read_min_interval_secs;
        config.validation.require_key_binding = opts.require_key_binding;
        config.validation.poll_interval_ms = opts.poll_interval_ms;
        config.azure.retry_budget_secs = opts.retry_budget_secs;
        config.validation.node_check_interval_secs = opts.node_check_interval_secs;
        let control = ControlPlane::start(config.clone()).await.unwrap();
        let state = control.state().clone();
        let org = Organization {
            id: OrgId::new_random(),
            name: "test org".into(),
            created_at: time::OffsetDateTime::now_utc(),
        };
        state.store.create_organization(&org).await.unwrap();
        let (sa, secret) =
            atrest_control::auth::provision::create_service_account(&state, &org.id, "owner", Roles::org_owner())
                .await
                .unwrap();
        let http = reqwest::Client::new();
        let client_id = sa.client_id.as_str().to_string();
        let client_secret = secrecy::ExposeSecret::expose_secret(&secret).to_string();
        let token = oauth_token(&http, control.url(), &client_id, &client_secret).await;
        Env { dir, emu, az, platform, control, config, http, org: org.id, client_id, client_secret, token }
    }

    pub fn url(&self) -> &str {
        self.control.url()
    }

    /// Another replica of the same control plane: same configuration, store and data directory
    /// (hence the same KEK), its own listener. Needs `Options::store_url` (PostgreSQL): the
    /// embedded store's data directory is locked by the process that opened it.
    pub async fn replica(&self) -> ControlPlane {
        ControlPlane::start(self.config.clone()).await.unwrap()
    }

    /// An Atlas API call with the owner's bearer token. Returns the status and the JSON body
    /// (`Null` when empty).
    pub async fn atlas(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.atlas_as(&self.token, method, path, body).await
    }

    pub async fn atlas_as(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut rb =
            self.http.request(method, format!("{}{path}", self.url())).bearer_auth(token).header("Accept", ACCEPT);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, v)
    }

    /// Creates a project through the API; returns its id.
    pub async fn project(&self, name: &str) -> String {
        let (s, v) = self
            .atlas(Method::POST, "/api/atlas/v2/groups", Some(json!({"name": name, "orgId": self.org.as_str()})))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// A customer tenant with the platform's service principal, a resource group, a vault
    /// (`auth`, purge protection on) and a key.
    pub async fn tenant(&self, auth: VaultAuth) -> Tenant {
        let customer = Customer::create(&self.az, &self.emu.info().bootstrap, "Customer").await.unwrap();
        let sp = customer.create_service_principal(&self.platform.app_id).await.unwrap();
        let rg = "cmk-rg".to_string();
        customer.create_resource_group(&rg).await.unwrap();
        let vault = format!("v{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let vault_id = customer.create_vault(&rg, &vault, auth, true).await.unwrap();
        if auth == VaultAuth::AccessPolicies {
            let admin = customer.admin_object_id().await.unwrap();
            customer.set_access_policy(&vault_id, &admin, &["all"]).await.unwrap();
        }
        let kid = customer.create_key(&vault, "cmk", None).await.unwrap();
        Tenant { customer, sp, rg, vault, vault_id, kid }
    }

    /// A customer app with a generated secret in `t`'s tenant, granted Reader and Key Vault
    /// Crypto User on the vault: the legacy static credentials. Returns (app id, secret,
    /// service principal id).
    pub async fn static_app(&self, t: &Tenant) -> (String, String, String) {
        let app = self
            .az
            .register_app(
                &self.emu.info().bootstrap,
                json!({"home_tenant_id": t.customer.tenant_id(), "display_name": "legacy", "generate_secret": true, "create_service_principal": true}),
            )
            .await
            .unwrap();
        let sp = app["service_principal_id"].as_str().unwrap().to_string();
        t.customer.assign_role(&sp, scenario::roles::READER, &t.vault_id).await.unwrap();
        t.customer.assign_role(&sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &t.vault_id).await.unwrap();
        (app["app_id"].as_str().unwrap().to_string(), app["client_secret"].as_str().unwrap().to_string(), sp)
    }

    /// Registers `t`'s service principal with project `group`; returns the role `_id`.
    pub async fn register(&self, group: &str, t: &Tenant) -> String {
        let (s, v) = self
            .atlas(
                Method::POST,
                &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess"),
                Some(t.cpa_body(&self.platform.app_id)),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["_id"].as_str().unwrap().to_string()
    }

    pub async fn patch_ear(&self, group: &str, block: Value) -> (StatusCode, Value) {
        self.atlas(
            Method::PATCH,
            &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"),
            Some(json!({"azureKeyVault": block})),
        )
        .await
    }

    pub async fn get_ear(&self, group: &str) -> Value {
        let (s, v) = self.atlas(Method::GET, &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn status(&self, group: &str) -> Value {
        let (s, v) = self
            .atlas(Method::GET, &format!("/api/atrest/v1/groups/{group}/encryptionAtRest/azureKeyVault/status"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// The dry run: `POST .../azureKeyVault:validate` with `block`.
    pub async fn dry_run(&self, group: &str, block: Value) -> (StatusCode, Value) {
        self.atlas(
            Method::POST,
            &format!("/api/atrest/v1/groups/{group}/encryptionAtRest/azureKeyVault:validate"),
            Some(block),
        )
        .await
    }

    /// `POST /api/atlas/v2/groups/{group}/clusters`: a REPLICASET cluster `name` on the
    /// project's Azure key with `node_count` electable nodes (the clusters API's own media type).
    pub async fn create_cluster(&self, group: &str, name: &str, node_count: u32) -> Value {
        let r = self
            .http
            .post(format!("{}/api/atlas/v2/groups/{group}/clusters", self.url()))
            .bearer_auth(&self.token)
            .header("Accept", CLUSTERS_ACCEPT)
            .header("Content-Type", CLUSTERS_ACCEPT)
            .json(&json!({
                "name": name,
                "clusterType": "REPLICASET",
                "encryptionAtRestProvider": "AZURE",
                "replicationSpecs": [{"regionConfigs": [{"providerName": "AZURE", "regionName": "US_EAST_2", "priority": 7,
                    "electableSpecs": {"instanceSize": "M10", "nodeCount": node_count}}]}],
            }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "creating cluster {name}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// An emulator admin call as its bootstrap principal (`path` under `/_emulator/`).
    pub async fn emulator_admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.az.admin(&self.emu.info().bootstrap, method, path, body).await.unwrap()
    }

    pub async fn event_types(&self, group: &str) -> Vec<String> {
        let (s, v) = self.atlas(Method::GET, &format!("/api/atlas/v2/groups/{group}/events"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["results"].as_array().unwrap().iter().map(|e| e["eventTypeName"].as_str().unwrap().to_string()).collect()
    }

    /// Polls `check` every 100 ms until it returns true, up to `limit` (waiting for background
    /// work, not timing it).
    pub async fn wait_for<F, Fut>(&self, limit: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// `POST /api/oauth/token` with client credentials.
pub async fn oauth_token(http: &reqwest::Client, url: &str, client_id: &str, secret: &str) -> String {
    let r = http
        .post(format!("{url}/api/oauth/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// `atrest_validations_total{trigger="<trigger>",...}` summed over results, from the text of
/// one instance's `/metrics` registry (`ControlPlane::state().metrics.render()`).
pub fn validations(metrics: &str, trigger: &str) -> u64 {
    let label = format!("trigger=\"{trigger}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("atrest_validations_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Polls `check` every 100 ms until it returns true or `limit` has passed; true if it did.
/// For waiting on background work (a condition), never for timing it.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
