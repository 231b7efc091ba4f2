//! The seeds' flow in the sovereign clouds, end to end: a customer tenant whose subscription is
//! in `AZURE_CHINA` or `AZURE_US_GOVERNMENT`, its vault and key created through that cloud's own
//! ARM and Key Vault host names, the platform's service principal registered through Cloud
//! Provider Access, the RBAC grants of the seeds, then `PATCH encryptionAtRest` with
//! `azureEnvironment` naming the cloud answers `valid: true`. The control plane reaches the
//! vault through the real sovereign host names (login, ARM, `*.vault.azure.cn`,
//! `*.vault.usgovcloudapi.net`), which only the endpoint override sends to the emulator.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_domain::AzureEnvironment;
use atrest_emulator::PrincipalInfo;
use atrest_emulator::scenario::roles;
use support::Env;

/// A customer in a sovereign cloud, acting through that cloud's public host names only (the
/// scenario helpers speak the public cloud).
struct SovereignCustomer<'a> {
    env: &'a Env,
    cloud: AzureEnvironment,
    admin: PrincipalInfo,
}

impl SovereignCustomer<'_> {
    async fn create(env: &Env, cloud: AzureEnvironment) -> SovereignCustomer<'_> {
        let v = env
            .emulator_admin(
                Method::POST,
                "tenants",
                Some(json!({"display_name": format!("{} customer", cloud.as_str()), "cloud": cloud.as_str()})),
            )
            .await;
        assert_eq!(v["cloud"], cloud.as_str(), "{v}");
        SovereignCustomer { env, cloud, admin: serde_json::from_value(v).unwrap() }
    }

    /// A token from this cloud's login host for `resource`.
    async fn token(&self, resource: &str) -> String {
        let r = self
            .env
            .az
            .http
            .post(format!("{}/{}/oauth2/v2.0/token", self.cloud.authority_url(), self.admin.tenant_id))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.admin.client_id.as_str()),
                ("client_secret", self.admin.client_secret.as_str()),
                ("scope", &format!("{}/.default", resource.trim_end_matches('/'))),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "token from {}", self.cloud.login_host());
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
    }

    async fn call(&self, method: Method, url: &str, resource: &str, body: Value) -> Value {
        let token = self.token(resource).await;
        let v = self.env.az.call(method, url, &token, Some(body), url).await;
        v.unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn arm(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("https://{}{path}", self.cloud.arm_host());
        self.call(method, &url, self.cloud.arm_resource(), body).await
    }

    /// `az ad sp create --id <platform app>` through this cloud's Graph host.
    async fn create_service_principal(&self, app_id: &str) -> String {
        let url = format!("https://{}/v1.0/servicePrincipals", self.cloud.graph_host());
        let sp = self.call(Method::POST, &url, &self.cloud.graph_resource(), json!({"appId": app_id})).await;
        sp["id"].as_str().unwrap().to_string()
    }

    /// A resource group, an RBAC vault with purge protection and an RSA key. Returns the
    /// vault's resource id and the key's versioned identifier.
    async fn vault_and_key(&self, rg: &str, vault: &str) -> (String, String) {
        let sub = &self.admin.subscription_id;
        self.arm(
            Method::PUT,
            &format!("/subscriptions/{sub}/resourcegroups/{rg}?api-version=2022-09-01"),
            json!({"location": "chinaeast2"}),
        )
        .await;
        let vault_id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}");
        let created = self
            .arm(
                Method::PUT,
                &format!("{vault_id}?api-version=2023-07-01"),
                json!({"location": "chinaeast2", "properties": {
                    "tenantId": self.admin.tenant_id,
                    "sku": {"family": "A", "name": "standard"},
                    "enableRbacAuthorization": true,
                    "enableSoftDelete": true,
                    "enablePurgeProtection": true,
                    "accessPolicies": [],
                }}),
            )
            .await;
        let vault_uri = created["properties"]["vaultUri"].as_str().unwrap().to_string();
        assert_eq!(vault_uri.trim_end_matches('/'), self.cloud.vault_uri(vault).trim_end_matches('/'), "{created}");
        let key = self
            .call(
                Method::POST,
                &format!("{}/keys/cmk/create?api-version=7.5", vault_uri.trim_end_matches('/')),
                &self.cloud.vault_resource(),
                json!({"kty": "RSA", "key_size": 2048}),
            )
            .await;
        (vault_id, key["key"]["kid"].as_str().unwrap().to_string())
    }

    /// The seeds' RBAC grants: Reader and Key Vault Crypto User on the vault.
    async fn grant(&self, principal: &str, vault_id: &str) {
        for role in [roles::READER, roles::KEY_VAULT_CRYPTO_USER] {
            let name = uuid::Uuid::new_v4();
            self.arm(
                Method::PUT,
                &format!("{vault_id}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01"),
                json!({"properties": {
                    "roleDefinitionId": format!(
                        "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{role}",
                        self.admin.subscription_id
                    ),
                    "principalId": principal,
                    "principalType": "ServicePrincipal",
                }}),
            )
            .await;
        }
    }
}

async fn seeds_flow_in(cloud: AzureEnvironment) {
    let env = Env::start().await;
    let group = env.project(cloud.as_str()).await;
    let customer = SovereignCustomer::create(&env, cloud).await;
    let sp = customer.create_service_principal(&env.platform.app_id).await;
    let vault = format!("v{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (vault_id, kid) = customer.vault_and_key("cmk-rg", &vault).await;
    assert!(kid.starts_with(&format!("https://{vault}.{}/keys/cmk/", cloud.vault_dns_suffix())), "{kid}");

    let (s, role) = env
        .atlas(
            Method::POST,
            &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess"),
            Some(json!({
                "providerName": "AZURE",
                "atlasAzureAppId": env.platform.app_id,
                "servicePrincipalId": sp,
                "tenantId": customer.admin.tenant_id,
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{role}");
    let role_id = role["_id"].as_str().unwrap().to_string();
    customer.grant(&sp, &vault_id).await;

    let block = json!({
        "enabled": true,
        "roleId": role_id,
        "subscriptionID": customer.admin.subscription_id,
        "resourceGroupName": "cmk-rg",
        "keyVaultName": vault,
        "keyIdentifier": kid,
        "azureEnvironment": cloud.as_str(),
    });
    // The same key named under the public cloud is refused before anything reaches Azure: the
    // cloud decides every host name the control plane uses.
    let mut public = block.clone();
    public["azureEnvironment"] = json!("AZURE");
    let (s, e) = env.patch_ear(&group, public).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");

    let (s, v) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true, "{v}");
    assert_eq!(v["azureKeyVault"]["azureEnvironment"], cloud.as_str());
    assert_eq!(v["azureKeyVault"]["keyIdentifier"], kid.as_str());
    let status = env.status(&group).await;
    assert_eq!(status["state"], "VALID", "{status}");
    assert_eq!(status["keyVersionInUse"], kid.as_str(), "{status}");
    // The dry run of what is stored passes every check against the sovereign vault.
    let (s, report) = env.dry_run(&group, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(report["outcome"], "VALID", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_flow_against_a_vault_in_azure_china() {
    seeds_flow_in(AzureEnvironment::AzureChina).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_flow_against_a_vault_in_azure_us_government() {
    seeds_flow_in(AzureEnvironment::AzureUsGovernment).await;
}
