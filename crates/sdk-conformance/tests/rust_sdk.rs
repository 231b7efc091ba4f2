//! Microsoft's official Rust crates (`azure_identity`, `azure_security_keyvault_keys`), unchanged,
//! against the emulator. The only difference from real Azure is the transport: a reqwest client
//! that resolves every Azure host name to the emulator and trusts its CA. Cloud configuration,
//! URLs and challenge verification stay at their defaults.

use std::net::SocketAddr;
use std::sync::Arc;

use azure_core::credentials::Secret;
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use azure_security_keyvault_keys::models::{CreateKeyParameters, EncryptionAlgorithm, KeyOperationParameters, KeyType};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions, ResourceExt, ResourceId};
use serde_json::{Value, json};

struct ToEmulator(SocketAddr);

impl reqwest::dns::Resolve for ToEmulator {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

struct Setup {
    _emu: atrest_emulator::Emulator,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    bootstrap: atrest_emulator::PrincipalInfo,
}

impl Setup {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let emu = atrest_emulator::Emulator::start(atrest_emulator::EmulatorConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path(),
        ))
        .await
        .unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap()])
            .dns_resolver(Arc::new(ToEmulator(emu.addr())))
            .build()
            .unwrap();
        let bootstrap = emu.info().bootstrap.clone();
        Self { _emu: emu, _dir: dir, http, bootstrap }
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions { transport: Some(Transport::new(Arc::new(self.http.clone()))), ..Default::default() }
    }

    async fn token(&self, p: &atrest_emulator::PrincipalInfo, scope: &str) -> String {
        let r: Value = self
            .http
            .post(format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", p.tenant_id))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &p.client_id),
                ("client_secret", &p.client_secret),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["access_token"].as_str().unwrap().to_string()
    }

    async fn send(&self, method: reqwest::Method, url: &str, scope: &str, body: Option<Value>) -> (u16, Value) {
        let token = self.token(&self.bootstrap, scope).await;
        let mut rb = self.http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An RBAC vault in the bootstrap subscription, returning (name, resource id).
    async fn vault(&self) -> (String, String) {
        let sub = &self.bootstrap.subscription_id;
        let arm = "https://management.azure.com/.default";
        let (s, b) = self
            .send(
                reqwest::Method::PUT,
                &format!("https://management.azure.com/subscriptions/{sub}/resourcegroups/sdk?api-version=2022-09-01"),
                arm,
                Some(json!({"location": "eastus"})),
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {b}");
        let name = format!("sdk{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let id = format!("/subscriptions/{sub}/resourceGroups/sdk/providers/Microsoft.KeyVault/vaults/{name}");
        let (s, b) = self
            .send(
                reqwest::Method::PUT,
                &format!("https://management.azure.com{id}?api-version=2023-07-01"),
                arm,
                Some(json!({"location": "eastus", "properties": {
                    "tenantId": self.bootstrap.tenant_id, "sku": {"family": "A", "name": "standard"},
                    "enableRbacAuthorization": true}})),
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {b}");
        (name, id)
    }
}

#[tokio::test]
async fn official_rust_sdk_creates_wraps_unwraps_and_sees_revocation() {
    let t = Setup::start().await;
    let (vault, vault_id) = t.vault().await;
    let b = &t.bootstrap;
    let cred = ClientSecretCredential::new(
        &b.tenant_id,
        b.client_id.clone(),
        Secret::new(b.client_secret.clone()),
        Some(ClientSecretCredentialOptions { client_options: t.client_options() }),
    )
    .unwrap();
    let client = KeyClient::new(
        &format!("https://{vault}.vault.azure.net"),
        cred,
        Some(KeyClientOptions { client_options: t.client_options(), ..Default::default() }),
    )
    .unwrap();

    let body = CreateKeyParameters { kty: Some(KeyType::Rsa), key_size: Some(2048), ..Default::default() };
    let key = client.create_key("sdk-key", body.try_into().unwrap(), None).await.unwrap().into_model().unwrap();
    assert_eq!(key.resource_id().unwrap().name, "sdk-key");

    // No version: the SDK sends /keys/sdk-key//wrapkey (an empty segment), meaning "latest".
    let dek = b"0123456789abcdef0123456789abcdef".to_vec();
    let mut params = KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::RsaOaep256),
        value: Some(dek.clone()),
        ..Default::default()
    };
    let wrapped =
        client.wrap_key("sdk-key", params.clone().try_into().unwrap(), None).await.unwrap().into_model().unwrap();
    let ResourceId { version, .. } = wrapped.resource_id().unwrap();
    let version = version.expect("wrap returns the versioned kid");
    params.value = wrapped.result.clone();
    let unwrapped = client
        .unwrap_key("sdk-key", &version, params.clone().try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(unwrapped.result.unwrap(), dek);

    // Remove the bootstrap principal's data-plane role at the subscription; the same client
    // (with its cached token) is refused on the next call.
    let sub = &b.subscription_id;
    let (s, list) = t
        .send(
            reqwest::Method::GET,
            &format!(
                "https://management.azure.com/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01"
            ),
            "https://management.azure.com/.default",
            None,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let kv_admin = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ra| {
            ra["properties"]["roleDefinitionId"].as_str().unwrap().ends_with("00482a5a-887f-4fb3-b363-3b7fe8e74483")
        })
        .expect("bootstrap principal is Key Vault Administrator")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = t
        .send(
            reqwest::Method::DELETE,
            &format!("https://management.azure.com{kv_admin}?api-version=2022-04-01"),
            "https://management.azure.com/.default",
            None,
        )
        .await;
    assert!(s == 200 || s == 204);
    let err = client.unwrap_key("sdk-key", &version, params.try_into().unwrap(), None).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("403") || text.contains("Forbidden"), "{text}");
    let _ = vault_id;
}
