//! Shared setup for the client's integration tests: a real emulator on 127.0.0.1:0, reached
//! through the client's own endpoint override (the production code path), and helpers that
//! build the cross-tenant layout of the product: a platform app with a certificate in tenant P,
//! customer tenants with their admins.
//!
//! What Azure offers an API for (service principals, vaults, keys, role assignments) is done
//! through that API as the customer's admin would. What it has none for (tenants, registering
//! the platform app with its certificate, faults, settings) goes through the emulator's admin
//! API (`docs/emulator.md`), authenticated as the bootstrap principal.
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_azure::{AzureClient, CertificateCredential, ClientConfig, ClientCredential, RetryPolicy, TransportConfig};
use atrest_domain::{AzureEnvironment, AzureUuid, KeyIdentifier};
use atrest_emulator::{Emulator, EmulatorConfig, PrincipalInfo};

pub const KEY_VAULT_CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub struct World {
    pub emu: Emulator,
    pub dir: tempfile::TempDir,
    /// The bootstrap principal: the only caller the admin API accepts.
    pub bootstrap: Admin,
}

/// The platform app: registered in its home tenant with a certificate credential.
pub struct PlatformApp {
    pub app_id: AzureUuid,
    pub home_tenant: AzureUuid,
    pub cert_pem: String,
    pub key_pem: String,
}

impl PlatformApp {
    pub fn credential(&self) -> ClientCredential {
        let cert = CertificateCredential::from_pem(&self.cert_pem, &SecretString::from(self.key_pem.clone())).unwrap();
        ClientCredential::certificate(self.app_id, cert)
    }
}

/// A retry policy small enough for tests.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        max_retry_after: Duration::from_secs(2),
        total: Duration::from_secs(6),
        max_attempts: 10,
    }
}

fn config_for(emu: &Emulator, retry: RetryPolicy) -> ClientConfig {
    let mut transport = TransportConfig::with_override(emu.addr(), emu.ca_pem());
    transport.request_timeout = Duration::from_secs(10);
    ClientConfig { transport, retry }
}

impl World {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(EmulatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path())).await.unwrap();
        let bootstrap = Admin::with_config(&config_for(&emu, quick_retry()), emu.info().bootstrap.clone());
        // Fetch the admin token now, so that faults injected on the token endpoint later
        // do not stand between the test and the admin API.
        bootstrap.client.tokens().arm_token(AzureEnvironment::Azure, &bootstrap.tenant).await.unwrap();
        Self { emu, dir, bootstrap }
    }

    /// Client configuration that sends every Azure host name to the emulator and trusts its CA.
    pub fn config(&self, retry: RetryPolicy) -> ClientConfig {
        config_for(&self.emu, retry)
    }

    pub fn client(&self, credential: ClientCredential) -> AzureClient {
        AzureClient::new(&self.config(quick_retry()), credential).unwrap()
    }

    /// A call to the admin API; asserts a 2xx answer.
    pub async fn admin_api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (s, b) = self.bootstrap.arm(method.clone(), &format!("/_emulator/{path}"), body).await;
        assert!((200..300).contains(&s), "{method} /_emulator/{path}: {s} {b}");
        b
    }

    /// A new tenant with a subscription and an admin principal (Owner, Key Vault Administrator,
    /// directory admin).
    pub async fn new_tenant(&self, name: &str) -> PrincipalInfo {
        let b = self.admin_api(reqwest::Method::POST, "tenants", Some(json!({"display_name": name}))).await;
        serde_json::from_value(b).unwrap()
    }

    /// Register the multi-tenant platform app in `home` with a fresh certificate, and its
    /// service principal in `home`.
    pub async fn register_platform_app(&self, home: &AzureUuid) -> PlatformApp {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "atrest platform");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        let b = self
            .admin_api(
                reqwest::Method::POST,
                "applications",
                Some(json!({
                    "home_tenant_id": home.to_string(),
                    "display_name": "atrest platform",
                    "multi_tenant": true,
                    "certificate_pem": cert.pem(),
                    "create_service_principal": true,
                })),
            )
            .await;
        PlatformApp {
            app_id: b["app_id"].as_str().unwrap().parse().unwrap(),
            home_tenant: *home,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Add a federated identity credential to an app.
    pub async fn add_federated_credential(&self, app_id: &AzureUuid, issuer: &str, subject: &str) {
        self.admin_api(
            reqwest::Method::POST,
            &format!("applications/{app_id}/credentials"),
            Some(json!({"federated": {"issuer": issuer, "subject": subject}})),
        )
        .await;
    }

    /// A service principal created through the admin API (for tests about tokens only; the
    /// end-to-end tests create theirs through Graph, as the customer would).
    pub async fn add_service_principal(&self, app_id: &AzureUuid, tenant: &AzureUuid) -> AzureUuid {
        let b = self
            .admin_api(
                reqwest::Method::POST,
                "service-principals",
                Some(json!({"tenant_id": tenant.to_string(), "app_id": app_id.to_string()})),
            )
            .await;
        b["object_id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn set_sp_enabled(&self, sp: &AzureUuid, enabled: bool) {
        self.admin_api(
            reqwest::Method::PATCH,
            &format!("service-principals/{sp}"),
            Some(json!({"account_enabled": enabled})),
        )
        .await;
    }

    pub async fn settings(&self, settings: Value) {
        self.admin_api(reqwest::Method::PATCH, "settings", Some(settings)).await;
    }

    /// Inject a fault on `host` for `count` requests (`None`: until cleared). `kind` is the
    /// admin API's `{"kind": ...}` object.
    pub async fn host_fault(&self, host: &str, kind: Value, count: Option<u64>) {
        let mut body = json!({"host": host, "kind": kind});
        if let Some(n) = count {
            body["count"] = json!(n);
        }
        self.admin_api(reqwest::Method::POST, "faults", Some(body)).await;
    }

    /// Inject a fault on one vault.
    pub async fn vault_fault(&self, vault: &str, kind: Value, count: Option<u64>) {
        let mut body = json!({"vault": vault, "kind": kind});
        if let Some(n) = count {
            body["count"] = json!(n);
        }
        self.admin_api(reqwest::Method::POST, "faults", Some(body)).await;
    }

    pub async fn clear_faults(&self) {
        self.admin_api(reqwest::Method::DELETE, "faults", None).await;
    }
}

/// The customer's admin, acting through Azure's public APIs with a client-secret token.
pub struct Admin {
    pub info: PrincipalInfo,
    pub tenant: AzureUuid,
    pub subscription: AzureUuid,
    pub client: AzureClient,
}

impl Admin {
    pub fn new(world: &World, info: PrincipalInfo) -> Self {
        Self::with_config(&world.config(quick_retry()), info)
    }

    fn with_config(config: &ClientConfig, info: PrincipalInfo) -> Self {
        let tenant: AzureUuid = info.tenant_id.parse().unwrap();
        let subscription: AzureUuid = info.subscription_id.parse().unwrap();
        let credential = ClientCredential::client_secret(
            info.client_id.parse().unwrap(),
            SecretString::from(info.client_secret.clone()),
        );
        let client = AzureClient::new(config, credential).unwrap();
        Self { info, tenant, subscription, client }
    }

    async fn bearer(&self, scope: &str) -> String {
        self.client
            .tokens()
            .token(AzureEnvironment::Azure, &self.tenant, scope)
            .await
            .unwrap()
            .expose_secret()
            .to_string()
    }

    /// One JSON call with a token for `scope`; returns (status, body).
    pub async fn call(&self, method: reqwest::Method, url: &str, scope: &str, body: Option<Value>) -> (u16, Value) {
        let token = self.bearer(scope).await;
        let mut req = self.client.transport().http().request(method, url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn arm(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, &format!("https://management.azure.com{path}"), "https://management.azure.com/.default", body)
            .await
    }

    pub async fn graph(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, &format!("https://graph.microsoft.com{path}"), "https://graph.microsoft.com/.default", body)
            .await
    }

    pub async fn vault(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, url, "https://vault.azure.net/.default", body).await
    }

    /// `az ad sp create --id <app>`: Graph `POST /v1.0/servicePrincipals`. Returns the object id.
    pub async fn create_service_principal(&self, app_id: &AzureUuid) -> AzureUuid {
        let (s, b) = self
            .graph(
                reqwest::Method::POST,
                "/v1.0/servicePrincipals",
                Some(json!({"appId": app_id.to_string(), "accountEnabled": true})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b["id"].as_str().unwrap().parse().unwrap()
    }

    pub fn resource_group_path(&self, rg: &str) -> String {
        format!("/subscriptions/{}/resourceGroups/{rg}", self.subscription)
    }

    pub fn vault_path(&self, rg: &str, vault: &str) -> String {
        format!("{}/providers/Microsoft.KeyVault/vaults/{vault}", self.resource_group_path(rg))
    }

    /// A resource group and a vault in it (RBAC or access-policy mode).
    pub async fn create_vault(&self, rg: &str, vault: &str, rbac: bool, access_policies: Value) {
        let (s, b) = self
            .arm(
                reqwest::Method::PUT,
                &format!("{}?api-version=2021-04-01", self.resource_group_path(rg)),
                Some(json!({"location": "westeurope"})),
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {b}");
        let (s, b) = self
            .arm(
                reqwest::Method::PUT,
                &format!("{}?api-version=2023-07-01", self.vault_path(rg, vault)),
                Some(json!({
                    "location": "westeurope",
                    "properties": {
                        "tenantId": self.tenant.to_string(),
                        "sku": {"family": "A", "name": "standard"},
                        "enableRbacAuthorization": rbac,
                        "accessPolicies": access_policies,
                    }
                })),
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {b}");
    }

    /// `POST /keys/{name}/create` (RSA-2048). Returns the unversioned identifier and the version.
    pub async fn create_key(&self, vault: &str, name: &str) -> (KeyIdentifier, KeyIdentifier) {
        let (s, b) = self
            .vault(
                reqwest::Method::POST,
                &format!("https://{vault}.vault.azure.net/keys/{name}/create?api-version=7.5"),
                Some(
                    json!({"kty": "RSA", "key_size": 2048, "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"]}),
                ),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let versioned: KeyIdentifier = b["key"]["kid"].as_str().unwrap().parse().unwrap();
        (versioned.unversioned(), versioned)
    }

    /// `az role assignment create`: PUT at `scope`. Returns the assignment id.
    pub async fn assign_role(&self, scope: &str, role_guid: &str, principal: &AzureUuid) -> String {
        let name = Uuid::new_v4();
        let (s, b) = self
            .arm(
                reqwest::Method::PUT,
                &format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01"),
                Some(json!({"properties": {
                    "roleDefinitionId": format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}", self.subscription),
                    "principalId": principal.to_string(),
                    "principalType": "ServicePrincipal",
                }})),
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {b}");
        b["id"].as_str().unwrap().to_string()
    }

    pub async fn delete_role_assignment(&self, id: &str) {
        let (s, b) = self.arm(reqwest::Method::DELETE, &format!("{id}?api-version=2022-04-01"), None).await;
        assert!(s == 200 || s == 204, "{s} {b}");
    }
}

impl Admin {
    /// The admin's own service principal object id (the `oid` of its tokens).
    pub async fn object_id(&self) -> AzureUuid {
        let token = self.bearer("https://management.azure.com/.default").await;
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["oid"].as_str().unwrap().parse().unwrap()
    }
}
