//! `atrest up`: start the local Azure and lay out the demo the seeds describe.
//!
//! Everything is created through the emulator's public surfaces (admin API, Entra token
//! endpoint, Graph, ARM, Key Vault), exactly as a customer and a platform would, so `up` also
//! proves those surfaces work together. The layout is recorded in `DATA_DIR/demo.json`; a second
//! `up` on the same directory reuses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use atrest_azure::{Transport, TransportConfig};
use atrest_emulator::{Emulator, EmulatorConfig, PrincipalInfo};

/// What `up` created, written to `DATA_DIR/demo.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoLayout {
    pub platform_tenant: PrincipalInfo,
    pub platform_app_id: String,
    pub platform_cert_pem: String,
    pub platform_key_pem: String,
    pub customer_tenant: PrincipalInfo,
    pub customer_resource_group: String,
    pub customer_vault: String,
    pub customer_vault_resource_id: String,
    pub customer_key_id: String,
    /// The platform's service principal object id in the customer tenant.
    pub platform_sp_in_customer: String,
}

/// A client that reaches every Azure host name at the emulator and trusts only its CA: the
/// azure crate's [`Transport`] with an endpoint override, so the CLI and the client library map
/// host names the same way.
pub fn emulator_client(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(Transport::new(&TransportConfig::with_override(addr, ca_pem))?.http().clone())
}

/// Minimal calls against the emulator's public surfaces, for `up` and the benchmarks.
pub(crate) struct Azure {
    pub http: reqwest::Client,
}

impl Azure {
    pub async fn token(&self, p: &PrincipalInfo, scope: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .post(format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", p.tenant_id))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", p.client_id.as_str()),
                ("client_secret", p.client_secret.as_str()),
                ("scope", scope),
            ])
            .send()
            .await?;
        let v = expect_ok(r, "token request").await?;
        v["access_token"].as_str().map(str::to_string).context("token response without access_token")
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: Option<Value>,
        what: &str,
    ) -> anyhow::Result<Value> {
        let mut rb = self.http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        expect_ok(rb.send().await?, what).await
    }
}

async fn expect_ok(r: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("{what} failed with HTTP {status}: {text}");
    }
    Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
}

/// A self-signed RSA certificate for the platform app (Entra certificate credentials are RSA).
pub(crate) fn platform_certificate() -> anyhow::Result<(String, String)> {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
        .map_err(|_| anyhow::anyhow!("PKCS#8 encoding failed"))?;
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der.as_ref().into(), &rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "atrest platform app");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(730);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Create the demo layout through the emulator's public APIs.
pub async fn create_layout(http: &reqwest::Client, bootstrap: &PrincipalInfo) -> anyhow::Result<DemoLayout> {
    let az = Azure { http: http.clone() };
    let arm_scope = "https://management.azure.com/.default";
    let graph_scope = "https://graph.microsoft.com/.default";
    let vault_scope = "https://vault.azure.net/.default";
    let admin = az.token(bootstrap, arm_scope).await?;
    let new_tenant = |name: &'static str| {
        let az = &az;
        let admin = admin.clone();
        async move {
            let v = az
                .call(
                    reqwest::Method::POST,
                    "https://management.azure.com/_emulator/tenants",
                    &admin,
                    Some(json!({"display_name": name})),
                    "creating a tenant",
                )
                .await?;
            Ok::<PrincipalInfo, anyhow::Error>(serde_json::from_value(v)?)
        }
    };
    let platform = new_tenant("Platform (atrest)").await?;
    let customer = new_tenant("Contoso (customer)").await?;

    let (cert_pem, key_pem) = platform_certificate()?;
    let app = az
        .call(
            reqwest::Method::POST,
            "https://management.azure.com/_emulator/applications",
            &admin,
            Some(json!({
                "home_tenant_id": platform.tenant_id,
                "display_name": "atrest platform",
                "multi_tenant": true,
                "certificate_pem": cert_pem,
            })),
            "registering the platform app",
        )
        .await?;
    let platform_app_id = app["app_id"].as_str().context("app_id in application response")?.to_string();

    // The customer's side, as the customer's admin.
    let c_graph = az.token(&customer, graph_scope).await?;
    let sp = az
        .call(
            reqwest::Method::POST,
            "https://graph.microsoft.com/v1.0/servicePrincipals",
            &c_graph,
            Some(json!({"appId": platform_app_id, "accountEnabled": true})),
            "az ad sp create (Graph POST servicePrincipals)",
        )
        .await?;
    let sp_id = sp["id"].as_str().context("id in servicePrincipal")?.to_string();

    let c_arm = az.token(&customer, arm_scope).await?;
    let sub = &customer.subscription_id;
    let rg = "atrest-demo";
    az.call(
        reqwest::Method::PUT,
        &format!("https://management.azure.com/subscriptions/{sub}/resourcegroups/{rg}?api-version=2022-09-01"),
        &c_arm,
        Some(json!({"location": "eastus"})),
        "creating the resource group",
    )
    .await?;
    let vault = format!("atrest{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let vault_id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}");
    az.call(
        reqwest::Method::PUT,
        &format!("https://management.azure.com{vault_id}?api-version=2023-07-01"),
        &c_arm,
        Some(json!({
            "location": "eastus",
            "properties": {
                "tenantId": customer.tenant_id,
                "sku": {"family": "A", "name": "standard"},
                "enableRbacAuthorization": true,
                "enableSoftDelete": true,
                "enablePurgeProtection": true,
                "publicNetworkAccess": "Enabled",
            }
        })),
        "creating the vault",
    )
    .await?;
    let c_vault = az.token(&customer, vault_scope).await?;
    let key = az
        .call(
            reqwest::Method::POST,
            &format!("https://{vault}.vault.azure.net/keys/atrest-cmk/create?api-version=7.5"),
            &c_vault,
            Some(json!({"kty": "RSA", "key_size": 2048})),
            "creating the RSA key",
        )
        .await?;
    let kid = key["key"]["kid"].as_str().context("kid in key bundle")?.to_string();
    Ok(DemoLayout {
        platform_tenant: platform,
        platform_app_id,
        platform_cert_pem: cert_pem,
        platform_key_pem: key_pem,
        customer_tenant: customer,
        customer_resource_group: rg.to_string(),
        customer_vault: vault,
        customer_vault_resource_id: vault_id,
        customer_key_id: kid,
        platform_sp_in_customer: sp_id,
    })
}

fn print_guide(data_dir: &Path, emu: &atrest_emulator::EmulatorInfo, d: &DemoLayout) {
    let port = emu.listen.rsplit(':').next().unwrap_or("443");
    let ca = &emu.ca_pem;
    let c = &d.customer_tenant;
    let ct = format!("--cacert {ca} --connect-to ::127.0.0.1:{port}");
    println!(
        r#"
atrest is up. Local Azure (emulator) at https://{listen}, CA {ca}
State: {dir}

The demo layout (as in the secretless Key Vault guide):
  platform tenant   {pt}  with the multi-tenant platform app {app} (certificate credential)
  customer tenant   {ctid}  subscription {sub}
                    resource group {rg}, vault {vault} (RBAC), key {kid}
                    the platform's service principal in the customer tenant: {sp}

Every Azure host name is served at 127.0.0.1:{port}. curl reaches them with
  {ct}

Step 1. Sign in as the customer's admin (client credentials; the secret is in {dir}/demo.json):
  TOKEN=$(curl -s {ct} https://login.microsoftonline.com/{ctid}/oauth2/v2.0/token \
      -d grant_type=client_credentials -d client_id={cid} --data-urlencode client_secret=$(jq -r .customer_tenant.client_secret {dir}/demo.json) \
      -d scope=https://management.azure.com/.default | jq -r .access_token)

Step 2. Grant the platform's service principal Reader and Key Vault Crypto User on the vault
  (what `az role assignment create --assignee-object-id {sp} --assignee-principal-type ServicePrincipal --role "Key Vault Crypto User" --scope {vid}` sends):
  curl -s {ct} -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      "https://management.azure.com{vid}/providers/Microsoft.Authorization/roleAssignments/$(uuidgen)?api-version=2022-04-01" \
      -d '{{"properties":{{"roleDefinitionId":"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/12338af0-0e69-4776-bea7-57ae8d297424","principalId":"{sp}","principalType":"ServicePrincipal"}}}}'
  (Reader is acdd72a7-3385-48ef-bd42-f606fba81ae7.)

Step 3. The platform now gets short-lived tokens in the customer's tenant with its certificate
  (no customer secret) and can wrap and unwrap with {kid}.
  Revoke the grant (DELETE the role assignment) and the next unwrap is refused with ForbiddenByRbac.

Admin API (faults, throttling, clock, private endpoints): docs/emulator.md
"#,
        listen = emu.listen,
        dir = data_dir.display(),
        pt = d.platform_tenant.tenant_id,
        app = d.platform_app_id,
        ctid = c.tenant_id,
        sub = c.subscription_id,
        rg = d.customer_resource_group,
        vault = d.customer_vault,
        kid = d.customer_key_id,
        sp = d.platform_sp_in_customer,
        cid = c.client_id,
        vid = d.customer_vault_resource_id,
    );
}

pub async fn up(data_dir: PathBuf, emulator_listen: SocketAddr, no_wait: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&data_dir)?;
    eprintln!("[1/3] starting the local Azure emulator in {}/emulator ...", data_dir.display());
    let emu = Emulator::start(EmulatorConfig::new(emulator_listen, data_dir.join("emulator"))).await?;
    let http = emulator_client(emu.addr(), &emu.ca_pem())?;
    let layout_path = data_dir.join("demo.json");
    let layout: DemoLayout = if layout_path.exists() {
        eprintln!("[2/3] reusing the demo layout in {}", layout_path.display());
        serde_json::from_slice(&std::fs::read(&layout_path)?)?
    } else {
        eprintln!("[2/3] creating the demo layout (tenants, platform app, vault, key) ...");
        let l = create_layout(&http, &emu.info().bootstrap).await?;
        write_private(&layout_path, &serde_json::to_vec_pretty(&l)?)?;
        l
    };
    eprintln!("[3/3] ready");
    print_guide(&data_dir, emu.info(), &layout);
    if no_wait {
        emu.shutdown().await;
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    crate::wait_for_shutdown().await;
    emu.shutdown().await;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}
