//! `atrest node`: run a data node (the embedded engine and its data API).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use atrest_azure::TransportConfig;
use atrest_node::engine::mariadb::MariaDbOptions;
use atrest_node::runtime::{NodeOptions, node_retry};
use atrest_node::server::{EmbeddedNode, MariaDbNode};
use secrecy::SecretString;

/// Run a data node: join a cluster (first start), unlock the data with the customer's Key
/// Vault key, serve the data API, and check access on the configured interval.
///
/// `atrest node --control-plane URL --data-dir DIR [...]` runs the node; `atrest node
/// rotate-master-key --data-dir DIR` asks for a master-key rotation.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    cmd: Option<NodeCommand>,
    /// The control plane's base URL (used to join; later starts use the one saved in DIR/node.json).
    #[arg(long, env = "ATREST_CONTROL_PLANE", required = true)]
    control_plane: Option<String>,
    /// A join token (first start only): `atrest admin create-join-token --group G --cluster NAME`.
    #[arg(long, env = "ATREST_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// The node's data dir: keystore, identity, credential and the encrypted database.
    #[arg(long, env = "ATREST_NODE_DATA_DIR", required = true)]
    data_dir: Option<PathBuf>,
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
    /// The storage engine: `embedded` (documents in SQLCipher, served by the data API) or
    /// `mariadb` (a mariadbd the node supervises, encrypted with the node's keys; docs/mariadb-engine.md).
    #[arg(long, env = "ATREST_NODE_ENGINE", value_enum, default_value = "embedded")]
    engine: EngineKind,
    /// mariadbd to run (--engine mariadb).
    #[arg(long, env = "ATREST_MARIADBD", default_value = "/usr/sbin/mariadbd")]
    mariadbd: PathBuf,
    /// mariadb-install-db to make the data directory with on first start (--engine mariadb).
    #[arg(long, env = "ATREST_MARIADB_INSTALL_DB", default_value = "/usr/bin/mariadb-install-db")]
    mariadb_install_db: PathBuf,
    /// The port mariadbd listens on, on 127.0.0.1 (--engine mariadb; 0 picks a free one at each start).
    #[arg(long, env = "ATREST_MARIADB_PORT", default_value_t = 0)]
    mariadb_port: u16,
}

/// Which engine a node runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Embedded,
    #[value(name = "mariadb")]
    MariaDb,
}

/// The running node, whichever its engine.
enum Running {
    Embedded(EmbeddedNode),
    MariaDb(MariaDbNode),
}

impl Running {
    fn handle(&self) -> &atrest_node::NodeHandle {
        match self {
            Running::Embedded(n) => n.handle(),
            Running::MariaDb(n) => n.handle(),
        }
    }

    fn url(&self) -> String {
        match self {
            Running::Embedded(n) => n.url(),
            Running::MariaDb(n) => n.url(),
        }
    }

    async fn stopped(&mut self) -> atrest_node::NodeError {
        match self {
            Running::Embedded(n) => n.stopped().await,
            Running::MariaDb(n) => n.stopped().await,
        }
    }

    async fn shutdown(self) {
        match self {
            Running::Embedded(n) => n.shutdown().await,
            Running::MariaDb(n) => n.shutdown().await,
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Ask for a new master key for the node of DIR: it re-seals its data keys under it (no page
    /// is rewritten) on its next configuration read, or at its next start if it is not running.
    /// Authenticates with the node's own credential in DIR.
    RotateMasterKey {
        /// The node's data dir (node.json and node-credential are read from it).
        #[arg(long, env = "ATREST_NODE_DATA_DIR")]
        data_dir: PathBuf,
        /// An extra CA (PEM) to trust for the control plane.
        #[arg(long, env = "ATREST_CONTROL_PLANE_CA")]
        control_plane_ca: Option<PathBuf>,
    },
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
    if let Some(NodeCommand::RotateMasterKey { data_dir, control_plane_ca }) = &args.cmd {
        return rotate_master_key(data_dir, control_plane_ca.as_ref()).await;
    }
    let (Some(control_plane), Some(data_dir)) = (args.control_plane.clone(), args.data_dir.clone()) else {
        anyhow::bail!("atrest node needs --control-plane URL and --data-dir DIR");
    };
    forbid_core_dumps();
    // One node per data dir: two would open the same database and keystore and overwrite each
    // other's files. Taken before anything in DIR is read or written (join included), held
    // until the process ends (the kernel drops it on kill -9 too).
    atrest_control::datadir::create_private_dir(&data_dir)?;
    let _lock = atrest_control::datadir::DirLock::acquire(&data_dir, "atrest node")?;
    let azure = match (args.azure_endpoint, &args.azure_ca) {
        (Some(addr), Some(ca)) => TransportConfig::with_override(addr, read(ca, "the Azure CA")?),
        (None, Some(_)) => anyhow::bail!("--azure-ca needs --azure-endpoint (the address the CA's server listens on)"),
        _ => TransportConfig::default(),
    };
    let control_plane_ca_pem = args.control_plane_ca.as_ref().map(|p| read(p, "the control plane CA")).transpose()?;
    let options = NodeOptions {
        data_dir: data_dir.clone(),
        control_plane,
        control_plane_ca_pem,
        join_token: args.join_token.map(SecretString::from),
        data_url: args.data_url.unwrap_or_default(),
        azure,
        retry: node_retry(),
    };
    let mut node = match args.engine {
        EngineKind::Embedded => Running::Embedded(EmbeddedNode::start(options, args.listen).await?),
        EngineKind::MariaDb => {
            let mut m = MariaDbOptions::new(&data_dir);
            m.mariadbd = args.mariadbd.clone();
            m.install_db = args.mariadb_install_db.clone();
            m.port = args.mariadb_port;
            Running::MariaDb(MariaDbNode::start(options, args.listen, m).await?)
        }
    };
    let id = node.handle().identity().clone();
    println!("atrest node {} of cluster {} (project {})", id.node_id, id.cluster_name, id.group_id);
    match &node {
        Running::Embedded(_) => {
            println!("  data API:  {}  (GET /healthz, /v1/status; Authorization: Bearer <data credential>)", node.url())
        }
        Running::MariaDb(n) => {
            println!(
                "  status:    {}  (GET /healthz, /v1/status; Authorization: Bearer <data credential>)",
                node.url()
            );
            match n.engine().port() {
                Some(port) => println!(
                    "  MariaDB:   mariadb -h 127.0.0.1 -P {port}  (root: mariadb --socket={} -u root)",
                    n.engine().options().socket().display()
                ),
                None => println!("  MariaDB:   starts once the node has its keys (it is not SERVING yet)"),
            }
        }
    }
    println!("  data dir:  {}", data_dir.display());
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

/// `atrest node rotate-master-key --data-dir DIR`.
async fn rotate_master_key(data_dir: &std::path::Path, ca: Option<&PathBuf>) -> anyhow::Result<()> {
    let (identity, credential) = atrest_node::identity::load(data_dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} has not joined a cluster (no node.json): there is no master key to rotate",
            data_dir.display()
        )
    })?;
    let ca_pem = ca.map(|p| read(p, "the control plane CA")).transpose()?;
    let client = atrest_node::control::ControlClient::new(&identity.control_plane, ca_pem.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?
        .with_credential(credential);
    let nonce = client.request_master_key_rotation().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let generation = atrest_node::Keystore::load(data_dir)?.map(|k| k.generation());
    println!(
        "asked {} for a new master key for node {} (request {nonce}); the node rotates on its next configuration read, or at its next start",
        identity.control_plane, identity.node_id
    );
    if let Some(g) = generation {
        println!("  master key generation now: {g} (GET /v1/status shows masterKeyGeneration {} once done)", g + 1);
    }
    Ok(())
}
