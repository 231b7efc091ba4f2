//! `atrest node`: run a data node (the embedded engine and its data API).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use atrest_azure::TransportConfig;
use atrest_node::runtime::{NodeOptions, node_retry};
use atrest_node::server::EmbeddedNode;
use secrecy::SecretString;

/// Run a data node: join a cluster (first start), unlock the data with the customer's Key
/// Vault key, serve the data API, and check access on the configured interval.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The control plane's base URL (used to join; later starts use the one saved in DIR/node.json).
    #[arg(long, env = "ATREST_CONTROL_PLANE")]
    control_plane: String,
    /// A join token (first start only): `atrest admin create-join-token --group G --cluster NAME`.
    #[arg(long, env = "ATREST_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// The node's data dir: keystore, identity, credential and the encrypted database.
    #[arg(long, env = "ATREST_NODE_DATA_DIR")]
    data_dir: PathBuf,
    /// Where the data API listens; port 0 picks a free port.
    #[arg(long, env = "ATREST_NODE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The data API's URL as clients should reach it (default: http://<listen address>).
    #[arg(long, env = "ATREST_NODE_DATA_URL")]
    data_url: Option<String>,
    /// Send every Azure host name to this address (the emulator); needs --azure-ca.
    #[arg(long, env = "ATREST_NODE_AZURE_ENDPOINT", requires = "azure_ca")]
    azure_endpoint: Option<SocketAddr>,
    /// The CA (PEM) that signed the certificate at --azure-endpoint (the emulator's ca.pem).
    #[arg(long, env = "ATREST_NODE_AZURE_CA")]
    azure_ca: Option<PathBuf>,
    /// An extra CA (PEM) to trust for the control plane.
    #[arg(long, env = "ATREST_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Keeps the process from being dumped (core files, ptrace by other users): the unwrapped keys
/// live in its memory.
fn forbid_core_dumps() {
    // SAFETY: prctl with PR_SET_DUMPABLE takes integer arguments only and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!("prctl(PR_SET_DUMPABLE, 0) failed: a core dump of this process could hold keys");
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    forbid_core_dumps();
    let azure = match (args.azure_endpoint, &args.azure_ca) {
        (Some(addr), Some(ca)) => TransportConfig::with_override(addr, read(ca, "the Azure CA")?),
        (None, Some(_)) => anyhow::bail!("--azure-ca needs --azure-endpoint (the address the CA's server listens on)"),
        _ => TransportConfig::default(),
    };
    let control_plane_ca_pem = args.control_plane_ca.as_ref().map(|p| read(p, "the control plane CA")).transpose()?;
    let options = NodeOptions {
        data_dir: args.data_dir.clone(),
        control_plane: args.control_plane,
        control_plane_ca_pem,
        join_token: args.join_token.map(SecretString::from),
        data_url: args.data_url.unwrap_or_default(),
        azure,
        retry: node_retry(),
    };
    let mut node = EmbeddedNode::start(options, args.listen).await?;
    let id = node.handle().identity().clone();
    println!("atrest node {} of cluster {} (project {})", id.node_id, id.cluster_name, id.group_id);
    println!("  data API:  {}  (GET /healthz, /v1/status; Authorization: Bearer <data credential>)", node.url());
    println!("  data dir:  {}", args.data_dir.display());
    let gate = node.handle().gate();
    let watch = tokio::spawn(async move {
        let mut last = None;
        loop {
            let s = gate.status();
            if last != Some(s.state) {
                match &s.last_error {
                    Some(e) => println!("  state: {} ({})", s.state.as_str(), e.message),
                    None => println!("  state: {}", s.state.as_str()),
                }
                last = Some(s.state);
            }
            gate.changed().await;
        }
    });
    let outcome = tokio::select! {
        _ = crate::wait_for_shutdown() => Ok(()),
        e = node.stopped() => Err(anyhow::anyhow!(e)),
    };
    watch.abort();
    node.shutdown().await;
    outcome
}
