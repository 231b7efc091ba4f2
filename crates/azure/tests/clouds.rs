//! The client in the sovereign clouds, end to end: a customer tenant whose subscription is in
//! `AZURE_CHINA` or `AZURE_US_GOVERNMENT`, its vault and key created through that cloud's ARM and
//! Key Vault hosts, the platform app's service principal created there through that cloud's
//! Graph, RBAC grants; then the platform client, holding only its certificate, reads the vault
//! through the cloud's ARM, resolves the key and round-trips an encrypt/decrypt on
//! `*.vault.azure.cn` / `*.vault.usgovcloudapi.net`, each with a token from the cloud's login
//! host for the cloud's audience.

mod support;

use base64::Engine;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use atrest_azure::{AzureClient, ClientCredential, EncryptionAlgorithm, ErrorKind, VaultRef};
use atrest_domain::{AzureEnvironment, AzureUuid, KeyIdentifier};
use support::{KEY_VAULT_CRYPTO_USER, READER, World, quick_retry};

/// The customer's admin in `cloud`, calling that cloud's hosts with tokens from its login host.
struct SovereignAdmin {
    cloud: AzureEnvironment,
    tenant: AzureUuid,
    subscription: String,
    client: AzureClient,
}

impl SovereignAdmin {
    async fn create(w: &World, cloud: AzureEnvironment) -> SovereignAdmin {
        let info = w
            .admin_api(
                Method::POST,
                "tenants",
                Some(json!({"display_name": "Sovereign customer", "cloud": cloud.as_str()})),
            )
            .await;
        assert_eq!(info["cloud"], cloud.as_str(), "{info}");
        let credential = ClientCredential::client_secret(
            info["client_id"].as_str().unwrap().parse().unwrap(),
            SecretString::from(info["client_secret"].as_str().unwrap().to_string()),
        );
        SovereignAdmin {
            cloud,
            tenant: info["tenant_id"].as_str().unwrap().parse().unwrap(),
            subscription: info["subscription_id"].as_str().unwrap().to_string(),
            client: AzureClient::new(&w.config(quick_retry()), credential).unwrap(),
        }
    }

    async fn call(&self, method: Method, url: &str, resource: &str, body: Value) -> Value {
        let scope = format!("{}/.default", resource.trim_end_matches('/'));
        let token = self.client.tokens().token(self.cloud, &self.tenant, &scope).await.unwrap();
        let r = self
            .client
            .transport()
            .http()
            .request(method.clone(), url)
            .bearer_auth(token.expose_secret())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {url}: {status} {v}");
        v
    }

    async fn arm(&self, method: Method, path: &str, body: Value) -> Value {
        self.call(method, &format!("https://{}{path}", self.cloud.arm_host()), self.cloud.arm_resource(), body).await
    }
}

async fn platform_client_in(cloud: AzureEnvironment) {
    let w = World::start().await;
    let home = w.new_tenant("Platform").await;
    let platform = w.register_platform_app(&home.tenant_id.parse().unwrap()).await;
    let admin = SovereignAdmin::create(&w, cloud).await;

    // `az ad sp create --id <app>` through the cloud's Graph.
    let sp = admin
        .call(
            Method::POST,
            &format!("https://{}/v1.0/servicePrincipals", cloud.graph_host()),
            &cloud.graph_resource(),
            json!({"appId": platform.app_id.to_string()}),
        )
        .await;
    let sp: AzureUuid = sp["id"].as_str().unwrap().parse().unwrap();

    let (rg, vault) = ("cmk-rg", format!("sov{}", &uuid::Uuid::new_v4().simple().to_string()[..10]));
    let sub = admin.subscription.clone();
    admin
        .arm(
            Method::PUT,
            &format!("/subscriptions/{sub}/resourcegroups/{rg}?api-version=2022-09-01"),
            json!({"location": "usgovvirginia"}),
        )
        .await;
    let vault_id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}");
    admin
        .arm(
            Method::PUT,
            &format!("{vault_id}?api-version=2023-07-01"),
            json!({"location": "usgovvirginia", "properties": {
                "tenantId": admin.tenant.to_string(),
                "sku": {"family": "A", "name": "standard"},
                "enableRbacAuthorization": true,
                "enablePurgeProtection": true,
                "accessPolicies": [],
            }}),
        )
        .await;
    let key = admin
        .call(
            Method::POST,
            &format!("https://{vault}.{}/keys/cmk/create?api-version=7.5", cloud.vault_dns_suffix()),
            &cloud.vault_resource(),
            json!({"kty": "RSA", "key_size": 2048}),
        )
        .await;
    let versioned: KeyIdentifier = key["key"]["kid"].as_str().unwrap().parse().unwrap();
    assert_eq!(versioned.environment(), cloud, "{versioned}");
    // The seeds' grants: Reader and Key Vault Crypto User on the vault.
    for role in [READER, KEY_VAULT_CRYPTO_USER] {
        admin
            .arm(
                Method::PUT,
                &format!(
                    "{vault_id}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
                    uuid::Uuid::new_v4()
                ),
                json!({"properties": {
                    "roleDefinitionId": format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role}"),
                    "principalId": sp.to_string(),
                    "principalType": "ServicePrincipal",
                }}),
            )
            .await;
    }

    // The platform, with its certificate only.
    let client = w.client(platform.credential());
    let vault_ref =
        VaultRef { subscription_id: sub.parse().unwrap(), resource_group: rg.into(), name: vault.parse().unwrap() };
    let props = client.arm(cloud, admin.tenant).get_vault(&vault_ref).await.unwrap();
    assert_eq!(props.tenant_id, Some(admin.tenant));
    // The same vault is not in the public cloud's ARM.
    let e = client.arm(AzureEnvironment::Azure, admin.tenant).get_vault(&vault_ref).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let kv = client.key_vault(admin.tenant);
    let resolved = kv.resolve_key(&versioned.unversioned(), support::now()).await.unwrap();
    assert_eq!(resolved.id, versioned);
    let secret = [7u8; 32];
    let sealed = kv.encrypt(&versioned, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();
    assert_eq!(sealed.key_id, versioned);
    let opened = kv.decrypt(&sealed.key_id, EncryptionAlgorithm::RsaOaep256, &sealed.value).await.unwrap();
    assert_eq!(opened.value.expose_secret(), secret.as_slice());

    // Every Key Vault token came from the cloud's login host for the cloud's vault audience.
    let token = client.tokens().key_vault_token(cloud, &admin.tenant).await.unwrap();
    let payload = token.expose_secret().split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(
        claims["aud"].as_str().map(|a| a.trim_end_matches('/')),
        Some(cloud.vault_resource().trim_end_matches('/'))
    );
    assert_eq!(claims["oid"], sp.to_string());
}

#[tokio::test]
async fn platform_client_works_against_a_vault_in_azure_china() {
    platform_client_in(AzureEnvironment::AzureChina).await;
}

#[tokio::test]
async fn platform_client_works_against_a_vault_in_azure_us_government() {
    platform_client_in(AzureEnvironment::AzureUsGovernment).await;
}
