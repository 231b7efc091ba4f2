//! `atrest up`: start the local Azure and lay out the demo the seeds describe.
//!
//! Everything is created through the emulator's public surfaces (admin API, Entra token
//! endpoint, Graph, ARM, Key Vault), exactly as a customer and a platform would, so `up` also
//! proves those surfaces work together. The layout is recorded in `DATA_DIR/demo.json`; a second
//! `up` on the same directory reuses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use atrest_azure::{Transport, TransportConfig};
use atrest_emulator::{Emulator, EmulatorConfig};

pub use atrest_emulator::scenario::DemoLayout;
use atrest_emulator::scenario::create_demo_layout;

/// A client that reaches every Azure host name at the emulator and trusts only its CA: the
/// azure crate's [`Transport`] with an endpoint override, so the CLI and the client library map
/// host names the same way.
pub fn emulator_client(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(Transport::new(&TransportConfig::with_override(addr, ca_pem))?.http().clone())
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
        let l = create_demo_layout(&http, &emu.info().bootstrap).await?;
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
