//! `atrest up`: the local Azure, the control plane on its embedded store, and the demo layout
//! the seeds describe, with a step-by-step guide.
//!
//! The Azure side is created through the emulator's public surfaces only
//! ([`atrest_emulator::scenario`]), the control plane is started exactly as `atrest serve`
//! starts it (configured to reach the emulator through an endpoint override), and the guide
//! walks the seeds' flow against both with curl. Everything is recorded under `DATA_DIR`; a
//! second `up` on the same directory reuses it, and one killed while making the demo layout
//! finishes that layout from `demo.partial.json` instead of starting another. When ready, `up` writes `DATA_DIR/up.json`
//! (mode 0600), the contract external tests read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use atrest_azure::{Transport, TransportConfig};
use atrest_control::{Config, ControlPlane};
pub use atrest_emulator::scenario::DemoLayout;
use atrest_emulator::scenario::{DemoProgress, resume_demo_layout};
use atrest_emulator::{Emulator, EmulatorConfig};

/// A client that reaches every Azure host name at the emulator and trusts only its CA: the
/// azure crate's [`Transport`] with an endpoint override, so the CLI and the client library map
/// host names the same way.
pub fn emulator_client(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(Transport::new(&TransportConfig::with_override(addr, ca_pem))?.http().clone())
}

/// Options of `atrest up`.
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub emulator_listen: SocketAddr,
    pub control_listen: SocketAddr,
    pub no_wait: bool,
}

/// The credentials `up` hands out, from this start's bootstrap or from bootstrap.json.
struct Credentials {
    org_id: String,
    api_public: String,
    api_private: String,
    sa_client_id: String,
    sa_secret: String,
}

/// The credentials in bootstrap.json's shape (`BootstrapInfo::to_json`); `source` names where
/// they came from in errors.
fn credentials(v: &serde_json::Value, source: &Path) -> anyhow::Result<Credentials> {
    let s = |p: &str| {
        v.pointer(p).and_then(|x| x.as_str()).map(str::to_owned).with_context(|| format!("{p} in {}", source.display()))
    };
    Ok(Credentials {
        org_id: s("/org_id")?,
        api_public: s("/api_key/public_key")?,
        api_private: s("/api_key/private_key")?,
        sa_client_id: s("/service_account/client_id")?,
        sa_secret: s("/service_account/client_secret")?,
    })
}

fn read_bootstrap(path: &Path) -> anyhow::Result<Credentials> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path)
            .with_context(|| format!("reading {} (delete the data directory to start over)", path.display()))?,
    )?;
    credentials(&v, path)
}

/// The ports a previous `up` on this data directory listened on, reused when free so the URLs
/// of its guide keep working.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Ports {
    emulator: Option<u16>,
    control: Option<u16>,
    /// The demo cluster's nodes, in order.
    #[serde(default)]
    nodes: Vec<u16>,
}

/// `requested`, or when it asks for any port (0) the port recorded by the previous run if it is
/// still free. Says loudly when a recorded port is taken, since the old URLs then stop working.
/// A port for a demo node: the one it had last time if free, else any free one.
fn node_port(recorded: Option<u16>, what: &str) -> anyhow::Result<u16> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let addr = pick_port(any, recorded, what);
    if addr.port() != 0 {
        return Ok(addr.port());
    }
    // The node binds it itself a moment later; the probe is the same as pick_port's.
    Ok(std::net::TcpListener::bind(any)?.local_addr()?.port())
}

fn pick_port(requested: SocketAddr, recorded: Option<u16>, what: &str) -> SocketAddr {
    let Some(port) = recorded.filter(|_| requested.port() == 0) else { return requested };
    let again = SocketAddr::new(requested.ip(), port);
    // Probing by binding and releasing: the emulator and the control plane bind themselves.
    if std::net::TcpListener::bind(again).is_ok() {
        again
    } else {
        eprintln!(
            "NOTE: port {port}, where the previous run's {what} listened, is in use; {what} gets a new port \
             and every URL printed by that run changes (the new ones are below)"
        );
        requested
    }
}

pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    atrest_control::datadir::create_private_dir(&opts.data_dir)?;
    let data_dir = std::fs::canonicalize(&opts.data_dir)?;
    let _lock = atrest_control::datadir::DirLock::acquire(&data_dir, "atrest up")?;
    // A harness waits for up.json: one left by a killed run must not announce dead ports.
    let up_json_path = data_dir.join("up.json");
    match std::fs::remove_file(&up_json_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale {}", up_json_path.display())),
    }
    let ports_path = data_dir.join("ports.json");
    let recorded: Ports =
        std::fs::read(&ports_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if recorded.emulator.is_some() {
        eprintln!("      reusing the ports of the previous run where free ({})", ports_path.display());
    }
    eprintln!("[1/5] starting the local Azure emulator in {}/emulator ...", data_dir.display());
    let emu_listen = pick_port(opts.emulator_listen, recorded.emulator, "the emulator");
    let emu = Emulator::start(EmulatorConfig::new(emu_listen, data_dir.join("emulator"))).await?;
    let http = emulator_client(emu.addr(), &emu.ca_pem())?;
    let layout_path = data_dir.join("demo.json");
    let layout: DemoLayout = if layout_path.exists() {
        eprintln!("[2/5] reusing the demo layout in {}", layout_path.display());
        serde_json::from_slice(&std::fs::read(&layout_path)?)?
    } else {
        // Every step is recorded in demo.partial.json as it completes: a run killed half-way
        // finishes the same layout on the next start instead of leaving orphans behind.
        let partial_path = data_dir.join("demo.partial.json");
        let progress: DemoProgress = match std::fs::read(&partial_path) {
            Ok(b) => {
                eprintln!("[2/5] finishing the demo layout a previous run started ({}) ...", partial_path.display());
                serde_json::from_slice(&b)
                    .with_context(|| format!("{} is not a demo layout journal: delete it", partial_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("[2/5] creating the demo layout (tenants, platform app, vault, key) ...");
                DemoProgress::default()
            }
            // Starting afresh here would orphan what the journal records: stop and say why.
            Err(e) => {
                return Err(anyhow::anyhow!(e)).with_context(|| {
                    format!(
                        "cannot read the demo layout journal {}: fix its permissions (it must be readable by this user), or delete it to start a new layout",
                        partial_path.display()
                    )
                });
            }
        };
        let mut save = |p: &DemoProgress| -> anyhow::Result<()> {
            atrest_control::files::write_private(&partial_path, &serde_json::to_vec_pretty(p)?)?;
            atrest_control::bootstrap::failpoint(&format!("demo-layout-after-step-{}", p.steps_done()));
            Ok(())
        };
        let l = resume_demo_layout(&http, &emu.info().bootstrap, progress, &mut save).await?;
        atrest_control::files::write_private(&layout_path, &serde_json::to_vec_pretty(&l)?)?;
        let _ = std::fs::remove_file(&partial_path);
        l
    };

    eprintln!("[3/5] starting the control plane (embedded SQLite) ...");
    let control_dir = data_dir.join("control");
    atrest_control::datadir::create_private_dir(&control_dir)?;
    let cert_path = control_dir.join("platform-cert.pem");
    let key_path = control_dir.join("platform-key.pem");
    atrest_control::files::write_private(&cert_path, layout.platform_cert_pem.as_bytes())?;
    atrest_control::files::write_private(&key_path, layout.platform_key_pem.as_bytes())?;
    let mut config = Config::load(None)?;
    config.listen = pick_port(opts.control_listen, recorded.control, "the control plane");
    config.data_dir = control_dir.clone();
    config.platform.app_id = Some(layout.platform_app_id.clone());
    config.platform.certificate_path = Some(cert_path);
    config.platform.private_key_path = Some(key_path);
    config.platform.federated_token_file = None;
    config.azure.endpoint_override = Some(emu.addr());
    config.azure.extra_ca_path = Some(PathBuf::from(&emu.info().ca_pem));
    config.validation.node_check_interval_secs = crate::demo_cluster::CHECK_INTERVAL_SECS;
    config.check()?;
    // The configuration as run, for `atrest serve --config` and `atrest admin --config`: paths
    // only (the platform key file, the KEK file in data_dir), never a secret. The listen port
    // is left to the reader (a second server beside this one needs its own).
    let config_path = control_dir.join("config.toml");
    let mut saved = config.clone();
    saved.listen = SocketAddr::new(config.listen.ip(), 0);
    atrest_control::files::write_private(
        &config_path,
        format!(
            "# Written by `atrest up`: the control plane configuration it runs with. See docs/control-plane.md.\n{}",
            toml::to_string(&saved).context("writing the control plane configuration as TOML")?
        )
        .as_bytes(),
    )?;
    let control = ControlPlane::start(config).await?;
    let creds = match control.bootstrap() {
        Some(b) => {
            eprintln!("      first start: created an organization, an owner API key and a service account");
            credentials(&b.to_json(), &b.file)?
        }
        None => read_bootstrap(&control_dir.join("bootstrap.json"))?,
    };
    let org = atrest_store::OrgId::parse(&creds.org_id).map_err(|e| anyhow::anyhow!("bootstrap.json org_id: {e}"))?;
    let store = &control.state().store;
    let group = match store.get_group_by_name(&org, "demo").await {
        Ok(g) => g,
        Err(_) => {
            let g = atrest_store::Group {
                id: atrest_store::GroupId::new_random(),
                org_id: org.clone(),
                name: "demo".into(),
                created_at: time::OffsetDateTime::now_utc(),
            };
            store.create_group(&g).await.map_err(|e| anyhow::anyhow!("creating the demo project: {e}"))?;
            g
        }
    };

    eprintln!(
        "[4/5] cluster {} in project \"demo\": Encryption at Rest with the demo key, {} data nodes ...",
        crate::demo_cluster::CLUSTER,
        crate::demo_cluster::NODES
    );
    let atlas = crate::demo_cluster::Atlas::sign_in(control.url(), &creds.sa_client_id, &creds.sa_secret).await?;
    let gid = group.id.as_str();
    crate::demo_cluster::configure_encryption(&atlas, gid, &layout, &http).await?;
    crate::demo_cluster::ensure_cluster(&atlas, gid).await?;
    let data_credential = crate::demo_cluster::data_credential(&atlas, gid, &data_dir).await?;
    let nodes_dir = data_dir.join("nodes");
    atrest_control::datadir::create_private_dir(&nodes_dir)?;
    let ca_path = PathBuf::from(&emu.info().ca_pem);
    let launch = crate::demo_cluster::NodeLaunch {
        exe: std::env::current_exe().context("finding the atrest binary to start the nodes with")?,
        control_url: control.url(),
        azure_endpoint: emu.addr(),
        azure_ca: &ca_path,
        nodes_dir: nodes_dir.clone(),
    };
    let mut nodes = Vec::new();
    for i in 1..=crate::demo_cluster::NODES {
        let port = node_port(recorded.nodes.get(i - 1).copied(), &format!("node {i}"))?;
        nodes.push(crate::demo_cluster::start_node(&atlas, gid, &launch, i, port).await?);
    }
    crate::demo_cluster::wait_serving(&atlas, gid, &mut nodes, &nodes_dir).await?;

    eprintln!("[5/5] ready");
    let up_json = json!({
        "control_plane_url": control.url(),
        "emulator_json": data_dir.join("emulator").join("emulator.json"),
        "platform_app_id": layout.platform_app_id,
        "org_id": creds.org_id,
        "api_key": {"public_key": creds.api_public, "private_key": creds.api_private},
        "service_account": {"client_id": creds.sa_client_id, "client_secret": creds.sa_secret},
        "control_config": config_path,
        "demo": {
            "group_id": gid,
            "customer_tenant_id": layout.customer_tenant.tenant_id,
            "subscription_id": layout.customer_tenant.subscription_id,
            "resource_group": layout.customer_resource_group,
            "key_vault_name": layout.customer_vault,
            "key_identifier": layout.customer_key_id,
            "service_principal_id": layout.platform_sp_in_customer,
            "customer_admin": {
                "tenant_id": layout.customer_tenant.tenant_id,
                "client_id": layout.customer_tenant.client_id,
                "client_secret": layout.customer_tenant.client_secret,
            },
        },
        "clusters": [{
            "name": crate::demo_cluster::CLUSTER,
            "group_id": gid,
            "data_credential": data_credential,
            "nodes": nodes.iter().map(|n| json!({"id": n.id, "data_url": n.data_url, "data_dir": n.data_dir})).collect::<Vec<_>>(),
        }],
    });
    let ports = Ports {
        emulator: Some(emu.addr().port()),
        control: Some(control.addr().port()),
        nodes: nodes.iter().map(|n| n.port).collect(),
    };
    atrest_control::files::write_private(&ports_path, &serde_json::to_vec_pretty(&ports)?)?;
    print_guide(
        &data_dir,
        emu.info(),
        &layout,
        control.url(),
        group.id.as_str(),
        &creds,
        control.state().config.revalidate_interval().as_secs(),
        &config_path,
        &nodes.iter().map(|n| n.data_url.clone()).collect::<Vec<_>>(),
    );
    // Last, as the "ready" signal harnesses wait for.
    atrest_control::files::write_private(&up_json_path, &serde_json::to_vec_pretty(&up_json)?)?;
    if !opts.no_wait {
        println!("Press Ctrl-C to stop.");
        crate::wait_for_shutdown().await;
    }
    crate::demo_cluster::stop(nodes).await;
    control.shutdown().await;
    emu.shutdown().await;
    Ok(())
}

/// The line before and after the walk-through that can be pasted into bash as a whole (and is,
/// by the suite: scripts/test.sh runs it with `bash -euo pipefail`).
pub const GUIDE_BEGIN: &str = "----- 8< ----- the walk-through: paste into bash (needs curl and jq) -----";
pub const GUIDE_END: &str = "----- >8 -----";

#[allow(clippy::too_many_arguments)]
fn print_guide(
    data_dir: &Path,
    emu: &atrest_emulator::EmulatorInfo,
    d: &DemoLayout,
    url: &str,
    group: &str,
    creds: &Credentials,
    interval_secs: u64,
    config_path: &Path,
    node_urls: &[String],
) {
    let port = emu.listen.rsplit(':').next().unwrap_or("443");
    let ca = &emu.ca_pem;
    let c = &d.customer_tenant;
    let ct = format!("--cacert '{ca}' --connect-to ::127.0.0.1:{port}");
    let ear = format!(
        r#"{{"enabled":true,"roleId":"'"$ROLE"'","subscriptionID":"{sub}","resourceGroupName":"{rg}","keyVaultName":"{vault}","keyIdentifier":"{kid}","azureEnvironment":"AZURE"}}"#,
        sub = c.subscription_id,
        rg = d.customer_resource_group,
        vault = d.customer_vault,
        kid = d.customer_key_id,
    );
    println!(
        r#"
atrest is up.
  control plane (Atlas Admin API v2)  {url}
  local Azure (emulator)              https://{listen}   CA {ca}
  state and credentials               {dir}/up.json (mode 0600), bootstrap.json in {dir}/control
  control plane configuration         {config} (for `atrest serve --config`; `atrest admin --up {dir} ...` uses it)
  organization {org}, project "demo" {group}
  cluster {cluster} in "demo": {count} data nodes   {node_list}

The demo layout (as in the secretless Key Vault guide):
  platform tenant   {pt}  with the multi-tenant platform app {app} (certificate credential)
  customer tenant   {ctid}  subscription {sub}
                    resource group {rg}, vault {vault} (RBAC), key {kid}
                    the platform's service principal in the customer tenant: {sp}
                    (created as `az ad sp create --id {app}` would)

{begin}
# Atlas calls use HTTP Digest with the bootstrap API key; --fail-with-body stops on any error
# and shows Atlas's error body.
atlas() {{
  curl -sS --fail-with-body --digest -u "{public}:$(jq -er .api_key.private_key '{dir}/up.json')" \
    -H "Accept: ${{ACCEPT:-application/vnd.atlas.2023-01-01+json}}" -H 'Content-Type: application/json' "$@"
}}
# Every Azure host name is served at 127.0.0.1:{port}; curl reaches them this way.
azure() {{ curl -sS --fail-with-body {ct} "$@"; }}

# Step 1. Register the service principal with the project (Cloud Provider Access), keep its _id
# (pasted again, this reuses the role already registered: a second POST would be 409).
ROLE=$(atlas '{url}/api/atlas/v2/groups/{group}/cloudProviderAccess' \
  | jq -r '[.azureServicePrincipals[] | select(.servicePrincipalId == "{sp}")][0]._id // empty')
[ -n "$ROLE" ] || ROLE=$(atlas -X POST '{url}/api/atlas/v2/groups/{group}/cloudProviderAccess' \
  -d '{{"providerName":"AZURE","atlasAzureAppId":"{app}","servicePrincipalId":"{sp}","tenantId":"{ctid}"}}' | jq -er ._id)
echo "role id: $ROLE"

# Step 2. As the customer, grant the service principal Reader and Key Vault Crypto User on the
# vault, as `az role assignment create --assignee-object-id {sp} --assignee-principal-type
# ServicePrincipal --role "Key Vault Crypto User" --scope {vid}` does; keep the assignment ids.
# (`atrest up` has already done Steps 1 to 4 once so that Cluster0 could start; pasted, each step
# finds what exists and reuses it.)
grant() {{
  TOKEN=$(azure 'https://login.microsoftonline.com/{ctid}/oauth2/v2.0/token' \
    -d grant_type=client_credentials -d client_id={cid} \
    --data-urlencode "client_secret=$(jq -er .demo.customer_admin.client_secret '{dir}/up.json')" \
    -d scope=https://management.azure.com/.default | jq -er .access_token)
  ASSIGNMENTS=()
  for ROLEDEF in acdd72a7-3385-48ef-bd42-f606fba81ae7 12338af0-0e69-4776-bea7-57ae8d297424; do
    # An assignment that already exists is kept (Azure answers a second one with 409 RoleAssignmentExists).
    A=$(azure -H "Authorization: Bearer $TOKEN" \
      "https://management.azure.com{vid}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&\$filter=principalId%20eq%20'{sp}'" \
      | jq -r --arg d "$ROLEDEF" '[.value[] | select(.properties.roleDefinitionId | endswith($d))][0].id // empty')
    [ -n "$A" ] || A=$(azure -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      "https://management.azure.com{vid}/providers/Microsoft.Authorization/roleAssignments/$(cat /proc/sys/kernel/random/uuid)?api-version=2022-04-01" \
      -d '{{"properties":{{"roleDefinitionId":"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/'"$ROLEDEF"'","principalId":"{sp}","principalType":"ServicePrincipal"}}}}' \
      | jq -er .id)
    ASSIGNMENTS+=("$A")
  done
  printf 'role assignment: %s\n' "${{ASSIGNMENTS[@]}}"
}}
grant

# Step 3. Check before patching (a dry run: every check, with the az command that fixes each
# failure). Or: atrest doctor --up '{dir}/up.json' --group {group} --role-id "$ROLE"
atlas -X POST '{url}/api/atrest/v1/groups/{group}/encryptionAtRest/azureKeyVault:validate' -d '{ear}' \
  | jq -e '., (.outcome == "VALID")' 

# Step 4. Configure Encryption at Rest with the role (no customer secret anywhere).
atlas -X PATCH '{url}/api/atlas/v2/groups/{group}/encryptionAtRest' -d '{{"azureKeyVault":{ear}}}' | jq .azureKeyVault

# Step 5. Read it back, and the events.
atlas '{url}/api/atlas/v2/groups/{group}/events' | jq -r '.results[].eventTypeName'
atlas '{url}/api/atlas/v2/groups/{group}/encryptionAtRest' | jq -c '.azureKeyVault | {{enabled, valid, keyIdentifier}}'

# Step 6. Cluster {cluster}'s {count} data nodes keep their data in SQLCipher pages under keys only
# this Key Vault key unlocks (`atrest up` runs them; each node keeps its own copy of what it is
# sent). Write a document to node 1 and read it back with the cluster's data credential.
DATA=$(jq -er '.clusters[0].data_credential' '{dir}/up.json')
data() {{ curl -sS --fail-with-body -H "Authorization: Bearer $DATA" -H 'Content-Type: application/json' "$@"; }}
data -X PUT '{node1}/v1/collections/orders/documents/order-1' -d '{{"item":"widget","qty":3}}' | jq -c .
data '{node1}/v1/collections/orders/documents/order-1' | jq -c .
# Every node's state as the control plane has it, and a wait for all of them to reach one.
nodes() {{ atlas '{url}/api/atrest/v1/groups/{group}/clusters/{cluster}/nodes' | jq -r '[.results[].state] | join(" ")'; }}
wait_for() {{
  local s="" last=""
  for _ in $(seq 1 60); do
    s=$(nodes)
    [ "$s" = "$last" ] || echo "  nodes: $s"
    last=$s
    [ -n "$s" ] && [ -z "$(tr ' ' '\n' <<<"$s" | grep -vx "$1")" ] && return 0
    sleep 0.5
  done
  echo "the nodes did not all reach $1 within 30 s (now: $s)" >&2
  return 1
}}
wait_for SERVING

# Step 7. Revoke: as the customer, remove both role assignments. Each node checks its key every
# {check} s (validation.node_check_interval_secs); denied, it drops its keys, closes its data and
# refuses every request with Azure's reason and the fix.
for A in "${{ASSIGNMENTS[@]}}"; do
  azure -X DELETE -H "Authorization: Bearer $TOKEN" "https://management.azure.com$A?api-version=2022-04-01" >/dev/null
done
wait_for SHUT_DOWN
curl -sS -H "Authorization: Bearer $DATA" '{node1}/v1/collections/orders/documents/order-1' \
  | jq -r '"\(.error) \(.errorCode): \(.detail)\n  fix: \(.fix)"'
ACCEPT=application/vnd.atlas.2024-08-05+json atlas '{url}/api/atlas/v2/groups/{group}/clusters/{cluster}' \
  | jq -r '"cluster {cluster}: \(.stateName)"'

# Step 8. Restore: grant again (Step 2); at their next check the nodes unlock by themselves and
# serve the same data. Then "Try Again" (Atlas's revalidate) and read the configuration.
grant
wait_for SERVING
data '{node1}/v1/collections/orders/documents/order-1' | jq -c .
atlas -X POST '{url}/api/atlas/v2/groups/{group}/encryptionAtRest/azureKeyVault:revalidate' >/dev/null
echo "valid: $(atlas '{url}/api/atlas/v2/groups/{group}/encryptionAtRest' | jq -er '.azureKeyVault.valid')"
{end}

The control plane also revalidates the configuration itself every {interval} s
(validation.revalidate_interval_secs); the nodes' logs are in {dir}/nodes, their data dirs
{dir}/nodes/node-N. Admin API (faults, throttling, clock, private endpoints): docs/emulator.md.
Control plane: docs/control-plane.md. Nodes and the data API: docs/design/node-api-draft.md.
"#,
        listen = emu.listen,
        dir = data_dir.display(),
        config = config_path.display(),
        org = creds.org_id,
        public = creds.api_public,
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
        begin = GUIDE_BEGIN,
        end = GUIDE_END,
        interval = interval_secs,
        cluster = crate::demo_cluster::CLUSTER,
        count = node_urls.len(),
        node1 = node_urls.first().map(String::as_str).unwrap_or(""),
        check = crate::demo_cluster::CHECK_INTERVAL_SECS,
        node_list = node_urls.join("  "),
    );
}
