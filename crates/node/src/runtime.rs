//! The node's lifecycle: join, unlock, serve, check, shut down, recover.
//!
//! ```text
//!            unlock ok                 check: unreachable
//!  LOCKED ─────────────▶ SERVING ◀──────────────────────▶ DEGRADED (still serving)
//!    ▲  unlock: denied      │ ▲ check ok (unlock again)
//!    │  ─────────────▶      ▼ │
//!    └──────────────── SHUT_DOWN (keys dropped, engine closed)
//!                       check: denied, after the denial grace
//! ```
//!
//! One task (the supervisor) owns the keystore and the unlocked keys; nothing else touches
//! them. A second task long-polls the control plane's configuration and hands each new one to
//! the supervisor through a `watch` channel. The data API reads only the published [`Status`]
//! and the data-credential hashes, and the engine itself refuses work once closed, so a request
//! racing a shutdown is refused by the engine, never served with a dropped key.
//!
//! **Denied is not unreachable** (as Atlas): only an answer from Azure that refuses the key
//! (401/403, key disabled, deleted, expired, not found; Entra refusing the token) shuts the node
//! down. Azure not answering, the control plane not answering, 429 and 5xx leave it serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrest_azure::{
    EndpointOverride, KeyVaultClient, RetryPolicy, TokenCache, TokenProvider, Transport, TransportConfig,
};
use atrest_domain::{AzureUuid, KeyIdentifier};
use parking_lot::RwLock;
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, watch};

use crate::control::{
    ConfigPoll, ControlClient, ControlError, DataCredentialHash, NodeConfig, ReportedError, StatusReport,
};
use crate::engine::Engine;
use crate::identity::{self, Identity};
use crate::keystore::{Keystore, KeystoreError, Unlocked};
use crate::persist::failpoint;
use crate::tokens::{ControlPlaneTokens, REVOKED_CODE};

/// A node's state, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// No key in memory yet (first start, or the control plane / Key Vault not reached).
    Locked,
    /// Keys in memory, engine open, checks pass.
    Serving,
    /// Serving, but the last check could not reach Key Vault (or the control plane for a token).
    Degraded,
    /// Access was denied: keys dropped, engine closed, the data API refuses with the reason.
    ShutDown,
}

impl NodeState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "LOCKED",
            Self::Serving => "SERVING",
            Self::Degraded => "DEGRADED",
            Self::ShutDown => "SHUT_DOWN",
        }
    }

    /// Whether the data API serves in this state.
    pub fn serves(self) -> bool {
        matches!(self, Self::Serving | Self::Degraded)
    }
}

/// What the node publishes about itself (the data API's `/v1/status`, the reports).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node_id: String,
    pub state: NodeState,
    pub key_identifier: Option<String>,
    pub key_version: Option<String>,
    pub auth_mode: Option<String>,
    pub master_key_generation: Option<u32>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_check_at: Option<OffsetDateTime>,
    pub last_error: Option<ReportedError>,
    pub via: &'static str,
}

/// How a node is started.
#[derive(Clone)]
pub struct NodeOptions {
    /// Where the keystore, the identity and the engine's files live.
    pub data_dir: PathBuf,
    /// The control plane's base URL (used to join; afterwards the one in `node.json`).
    pub control_plane: String,
    /// Extra CA to trust for the control plane (PEM).
    pub control_plane_ca_pem: Option<String>,
    /// Needed on first start only.
    pub join_token: Option<SecretString>,
    /// The data API's URL, as the control plane should list it.
    pub data_url: String,
    /// How Azure is reached (the endpoint override for the emulator). Under private
    /// networking the override's address is replaced by the private endpoint's.
    pub azure: TransportConfig,
    /// Retries for Key Vault calls. Kept short: a check must end well inside the interval.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("data_dir", &self.data_dir)
            .field("control_plane", &self.control_plane)
            .field("data_url", &self.data_url)
            .finish_non_exhaustive()
    }
}

/// The default retry budget of a node's Key Vault calls.
pub fn node_retry() -> RetryPolicy {
    RetryPolicy { total: Duration::from_secs(5), max_attempts: 3, ..RetryPolicy::default() }
}

/// Why a node could not start or stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("{0}")]
    Keystore(#[from] KeystoreError),
    #[error(
        "this data dir has not joined a cluster: pass --join-token (make one with `atrest admin create-join-token --group <groupId> --cluster <name>` or POST /api/atrest/v1/groups/{{groupId}}/clusters/{{name}}/joinTokens)"
    )]
    NeedsJoinToken,
    #[error("joining failed: {0}")]
    Join(ControlError),
    #[error(
        "the control plane revoked this node ({0}); its keys were dropped. Join a fresh data dir with a new join token"
    )]
    Revoked(String),
    #[error("{0}")]
    Setup(String),
}

/// What the data API needs of the node: its status and who may use it.
#[derive(Debug)]
pub struct Gate {
    status: RwLock<Status>,
    data_credentials: RwLock<Vec<DataCredentialHash>>,
    changed: Notify,
}

impl Gate {
    pub(crate) fn new(node_id: &str) -> Self {
        Self {
            status: RwLock::new(Status {
                node_id: node_id.to_string(),
                state: NodeState::Locked,
                key_identifier: None,
                key_version: None,
                auth_mode: None,
                master_key_generation: None,
                last_check_at: None,
                last_error: None,
                via: "PUBLIC",
            }),
            data_credentials: RwLock::new(Vec::new()),
            changed: Notify::new(),
        }
    }

    /// The status now.
    pub fn status(&self) -> Status {
        self.status.read().clone()
    }

    /// Waits until the status next changes.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Whether `credential` is one of the cluster's data credentials (SHA-256 compared in
    /// constant time).
    pub fn accepts(&self, credential: &str) -> bool {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, credential.as_bytes());
        let hex = hex::encode(digest.as_ref());
        self.data_credentials
            .read()
            .iter()
            .any(|c| aws_lc_rs::constant_time::verify_slices_are_equal(c.sha256.as_bytes(), hex.as_bytes()).is_ok())
    }

    pub(crate) fn set_data_credentials(&self, credentials: Vec<DataCredentialHash>) {
        *self.data_credentials.write() = credentials;
    }

    pub(crate) fn publish(&self, f: impl FnOnce(&mut Status)) {
        let changed = {
            let mut s = self.status.write();
            let before = s.clone();
            f(&mut s);
            *s != before
        };
        if changed {
            self.changed.notify_waiters();
        }
    }
}

/// A running node.
pub struct NodeHandle {
    gate: Arc<Gate>,
    identity: Identity,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    done: tokio::sync::oneshot::Receiver<NodeError>,
    engine: Arc<dyn Engine>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// The status and credential gate, for the data API.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Who the node is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Waits until the node stops for good (revoked); returns why.
    pub async fn stopped(&mut self) -> NodeError {
        match (&mut self.done).await {
            Ok(e) => e,
            Err(_) => NodeError::Setup("the node's supervisor ended".into()),
        }
    }

    /// Stops the node: its tasks end, the engine is closed and the keys are dropped.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        close_engine(&self.engine).await;
    }
}

/// Closes the engine off the async workers (MariaDB's close waits for mariadbd to stop, up to
/// its shutdown bound).
async fn close_engine(engine: &Arc<dyn Engine>) {
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || engine.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "closing the engine failed"),
        Err(e) => tracing::error!(error = %e, "closing the engine panicked"),
    }
}

/// Joins (first start) or loads the identity, then starts the supervisor and the config poller.
pub async fn start(options: NodeOptions, engine: Arc<dyn Engine>) -> Result<NodeHandle, NodeError> {
    let client = ControlClient::new(&options.control_plane, options.control_plane_ca_pem.as_deref())
        .map_err(NodeError::Setup)?;
    let (identity, credential) = match identity::load(&options.data_dir)? {
        Some(found) => found,
        None => {
            let token = options.join_token.as_ref().ok_or(NodeError::NeedsJoinToken)?;
            let joined = client.join(token, &options.data_url).await.map_err(NodeError::Join)?;
            let identity = Identity {
                node_id: joined.node_id,
                group_id: joined.group_id,
                cluster_name: joined.cluster_name,
                cluster_id: joined.cluster_id,
                control_plane: options.control_plane.clone(),
            };
            identity::save(&options.data_dir, &identity, &joined.node_credential)?;
            tracing::info!(node_id = %identity.node_id, cluster = %identity.cluster_name, "joined the cluster");
            (identity, joined.node_credential)
        }
    };
    // The keystore is read before anything is served: a corrupt one stops the start.
    let keystore = Keystore::load(&options.data_dir)?;
    if let Some(ks) = &keystore
        && ks.node_id() != identity.node_id
    {
        return Err(NodeError::Setup(format!(
            "the keystore in {} belongs to node {}, but this data dir joined as {}: restore the matching node.json",
            options.data_dir.display(),
            ks.node_id(),
            identity.node_id
        )));
    }
    let client = ControlClient::new(&identity.control_plane, options.control_plane_ca_pem.as_deref())
        .map_err(NodeError::Setup)?
        .with_credential(credential);
    let gate = Arc::new(Gate::new(&identity.node_id));
    let (config_tx, config_rx) = watch::channel(None);
    let control_state = Arc::new(RwLock::new(None::<String>));
    let revoked = Arc::new(Notify::new());
    let revoked_why = Arc::new(RwLock::new(String::new()));
    let (done_tx, done) = tokio::sync::oneshot::channel();

    let poller = tokio::spawn(poll_config(
        client.clone(),
        config_tx,
        control_state.clone(),
        revoked.clone(),
        revoked_why.clone(),
    ));
    let supervisor = Supervisor {
        options,
        identity: identity.clone(),
        client,
        gate: gate.clone(),
        engine: engine.clone(),
        keystore,
        unlocked: None,
        kv: None,
        kv_candidate: None,
        bound_key: None,
        denied_since: None,
        reported: false,
        control_state,
    };
    let sup = tokio::spawn(supervisor.run(config_rx, revoked, revoked_why, done_tx));
    Ok(NodeHandle { gate, identity, tasks: vec![poller, sup], done, engine })
}

/// Long-polls the configuration; publishes each new one.
async fn poll_config(
    client: ControlClient,
    tx: watch::Sender<Option<(Box<NodeConfig>, Option<String>)>>,
    control_state: Arc<RwLock<Option<String>>>,
    revoked: Arc<Notify>,
    revoked_why: Arc<RwLock<String>>,
) {
    let mut etag: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let wait = if etag.is_some() { Duration::from_secs(30) } else { Duration::ZERO };
        match client.config(etag.as_deref(), wait).await {
            Ok(ConfigPoll::Changed(cfg, tag)) => {
                *control_state.write() = None;
                backoff = Duration::from_millis(250);
                etag = tag.clone();
                tx.send_replace(Some((cfg, tag)));
            }
            Ok(ConfigPoll::NotModified) => {
                *control_state.write() = None;
            }
            Err(ControlError::Revoked { detail }) => {
                *revoked_why.write() = detail;
                revoked.notify_one();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the control plane did not answer the configuration poll; retrying");
                *control_state.write() = Some(e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The Key Vault client the supervisor uses, and what it was built for.
struct KvSetup {
    tenant: AzureUuid,
    auth_mode: Option<String>,
    address: Option<String>,
    client: KeyVaultClient,
}

struct Supervisor {
    options: NodeOptions,
    identity: Identity,
    client: ControlClient,
    gate: Arc<Gate>,
    engine: Arc<dyn Engine>,
    keystore: Option<Keystore>,
    unlocked: Option<Unlocked>,
    kv: Option<KvSetup>,
    /// A migration's candidate mode (`pendingAuthMode`), kept beside the mode in force.
    kv_candidate: Option<KvSetup>,
    /// The key identifier whose binding tag was last verified.
    bound_key: Option<String>,
    denied_since: Option<Instant>,
    /// Whether this process has sent a report yet (for the crash tests' failpoint).
    reported: bool,
    control_state: Arc<RwLock<Option<String>>>,
}

type ConfigRx = watch::Receiver<Option<(Box<NodeConfig>, Option<String>)>>;

/// The control plane's error code for a key without the project's binding tag.
pub const KEY_NOT_BOUND_CODE: &str = "ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT";

/// Classifies an error for the report: `DENIED`, `UNREACHABLE` or `INTERNAL`.
fn reported(e: &KeystoreError) -> ReportedError {
    match e {
        KeystoreError::KeyVault(az) => ReportedError {
            kind: if az.kind().revokes_access() {
                "DENIED"
            } else if az.kind().is_transient() {
                "UNREACHABLE"
            } else {
                "INTERNAL"
            },
            azure_code: az.code().map(str::to_string),
            message: az.to_string(),
            fix: az.remediation().map(str::to_string),
        },
        other => ReportedError { kind: "INTERNAL", azure_code: None, message: other.to_string(), fix: None },
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The key's current version as the control plane last resolved it, if it sent one.
fn ear_current_version(cfg: &NodeConfig) -> Option<&str> {
    cfg.encryption_at_rest.current_key_version.as_deref().filter(|v| !v.is_empty() && !v.contains('/'))
}

impl Supervisor {
    async fn run(
        mut self,
        mut config: ConfigRx,
        revoked: Arc<Notify>,
        revoked_why: Arc<RwLock<String>>,
        done: tokio::sync::oneshot::Sender<NodeError>,
    ) {
        let mut last_etag: Option<String> = None;
        loop {
            let current = config.borrow_and_update().clone();
            let interval = match &current {
                None => {
                    let why = self.control_state.read().clone();
                    self.gate.publish(|s| {
                        s.state = if s.state.serves() { s.state } else { NodeState::Locked };
                        if !s.state.serves() {
                            s.last_error = Some(ReportedError {
                                kind: "UNREACHABLE",
                                azure_code: None,
                                message: format!(
                                    "waiting for the configuration from the control plane at {}: {}",
                                    self.identity.control_plane,
                                    why.as_deref().unwrap_or("no answer yet")
                                ),
                                fix: Some(format!(
                                    "check that the control plane at {} is running and reachable from this node",
                                    self.identity.control_plane
                                )),
                            });
                        }
                    });
                    Duration::from_secs(1)
                }
                Some((cfg, etag)) => {
                    let changed = *etag != last_etag;
                    last_etag = etag.clone();
                    self.step(cfg, changed).await;
                    self.report(etag.clone()).await;
                    self.reported = true;
                    Duration::from_secs(cfg.check_interval_secs.max(1))
                }
            };
            let revoked_now = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                // The poller ends only when the control plane revoked the node (it drops the
                // sender then), so a closed channel means the same as the notification.
                r = config.changed() => r.is_err(),
                _ = revoked.notified() => true,
            };
            if revoked_now {
                let why = revoked_why.read().clone();
                self.drop_keys().await;
                self.gate.publish(|s| {
                    s.state = NodeState::ShutDown;
                    s.last_error = Some(ReportedError {
                        kind: "DENIED",
                        azure_code: Some(REVOKED_CODE.into()),
                        message: format!("the control plane revoked this node: {why}"),
                        fix: Some(
                            "join a fresh data dir with a new join token (atrest admin create-join-token)".into(),
                        ),
                    });
                });
                let _ = done.send(NodeError::Revoked(why));
                return;
            }
        }
    }

    async fn drop_keys(&mut self) {
        close_engine(&self.engine).await;
        // Dropping `Unlocked` zeroizes the master and data keys.
        self.unlocked = None;
        self.denied_since = None;
    }

    /// The Key Vault client for `mode` (the configuration's `authMode`, or a migration's
    /// `pendingAuthMode`), through the private endpoint under private networking. The mode in
    /// force and a migration's candidate are kept side by side, so that checking both on every
    /// pass rebuilds neither.
    fn kv_for(&mut self, cfg: &NodeConfig, mode: Option<&String>) -> Result<KeyVaultClient, String> {
        let ear = &cfg.encryption_at_rest;
        let mode = mode.cloned();
        let tenant: AzureUuid = ear
            .tenant_id
            .as_deref()
            .ok_or("the configuration names no tenant")?
            .parse()
            .map_err(|e| format!("the configuration's tenant id: {e}"))?;
        let address = if ear.require_private_networking {
            Some(
                ear.private_endpoint
                    .as_ref()
                    .map(|p| p.address.clone())
                    .ok_or("requirePrivateNetworking is on but the project has no approved EAR private endpoint for this node's region: create one (POST .../encryptionAtRest/AZURE/privateEndpoints) and approve it in Azure")?,
            )
        } else {
            None
        };
        for kv in [&self.kv, &self.kv_candidate].into_iter().flatten() {
            if kv.tenant == tenant && kv.auth_mode == mode && kv.address == address {
                return Ok(kv.client.clone());
            }
        }
        if self.kv.as_ref().is_some_and(|kv| kv.auth_mode != ear.auth_mode) {
            // A static → roleId migration (or back) switches the node's token path. Nothing
            // about it is persisted: a restart reads the mode from the configuration again.
            failpoint("node-auth-mode-switched");
        }
        let mut transport = self.options.azure.clone();
        if let Some(addr) = &address {
            let addr = addr.parse().map_err(|e| format!("the private endpoint's address {addr}: {e}"))?;
            let ca = transport.endpoint_override.as_ref().map(|o| o.extra_ca_pem.clone()).unwrap_or_default();
            transport.endpoint_override = Some(EndpointOverride { addr, extra_ca_pem: ca });
        }
        let transport = Transport::new(&transport).map_err(|e| e.to_string())?;
        let source = ControlPlaneTokens::new(self.client.clone(), mode.clone());
        // A fresh cache per setup: a token of the old auth mode is never reused for the new one.
        let tokens = TokenProvider::external(
            transport,
            // The cache key needs an app id; the node knows none (only the control plane does).
            AzureUuid::new_v4(),
            source,
            Arc::new(TokenCache::new()),
            self.options.retry.clone(),
        );
        let client = KeyVaultClient::new(tokens, tenant, self.options.retry.clone());
        let setup = KvSetup { tenant, auth_mode: mode.clone(), address, client: client.clone() };
        if mode == ear.auth_mode {
            self.kv = Some(setup);
        } else {
            self.kv_candidate = Some(setup);
        }
        Ok(client)
    }

    /// Whether the configuration's key carries the binding tag (when the control plane requires
    /// one): one key GET on a configuration change or a new key, none otherwise. The refusal
    /// carries the control plane's code for it, so the control plane flags the project with the
    /// same `ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT` as on the PATCH path.
    async fn check_binding(
        &mut self,
        cfg: &NodeConfig,
        kv: &KeyVaultClient,
        kid: &KeyIdentifier,
        config_changed: bool,
    ) -> Result<(), ReportedError> {
        let Some(binding) = &cfg.encryption_at_rest.key_binding else {
            self.bound_key = None;
            return Ok(());
        };
        let id = kid.to_string();
        if !config_changed && self.bound_key.as_deref() == Some(id.as_str()) {
            return Ok(());
        }
        let props = kv.get_key(kid).await.map_err(|e| reported(&KeystoreError::KeyVault(e)))?;
        if props.tags.get(&binding.tag) == Some(&binding.value) {
            self.bound_key = Some(id);
            return Ok(());
        }
        self.bound_key = None;
        let found = match props.tags.get(&binding.tag) {
            Some(v) => format!("carries {}={v}", binding.tag),
            None => format!("has no tag {}", binding.tag),
        };
        Err(ReportedError {
            kind: "DENIED",
            azure_code: Some(KEY_NOT_BOUND_CODE.into()),
            message: format!(
                "key {kid} {found}, but this project ({}) may use only a key tagged {}={}: the node does not wrap its master key under it",
                binding.value, binding.tag, binding.value
            ),
            fix: Some(format!(
                "az keyvault key set-attributes --vault-name {} --name {} --tags {}={}",
                kid.vault(),
                kid.name(),
                binding.tag,
                binding.value
            )),
        })
    }

    fn fail_setup(&mut self, message: String) {
        self.gate.publish(|s| {
            if !s.state.serves() {
                s.state = NodeState::Locked;
            }
            s.last_error = Some(ReportedError { kind: "INTERNAL", azure_code: None, message, fix: None });
        });
    }

    /// One pass: unlock if locked or shut down, else check; rotate when asked.
    async fn step(&mut self, cfg: &NodeConfig, config_changed: bool) {
        self.gate.set_data_credentials(cfg.data_credentials.clone());
        let ear = &cfg.encryption_at_rest;
        let Some(kid) = ear.key_identifier.as_deref().filter(|_| ear.enabled) else {
            return self.fail_setup(
                "the project's Encryption at Rest is not enabled: PATCH /api/atlas/v2/groups/{groupId}/encryptionAtRest with an azureKeyVault configuration".into(),
            );
        };
        let kid: KeyIdentifier = match kid.parse() {
            Ok(k) => k,
            Err(e) => return self.fail_setup(format!("the configuration's key identifier {kid}: {e}")),
        };
        let kv = match self.kv_for(cfg, ear.auth_mode.as_ref()) {
            Ok(kv) => kv,
            Err(e) => return self.fail_setup(e),
        };
        let via = if ear.require_private_networking { "PRIVATE_ENDPOINT" } else { "PUBLIC" };
        let checked_at = now();
        // The key binding (confused-deputy guard): never wrap under a key the project does not own.
        let binding = self.check_binding(cfg, &kv, &kid, config_changed).await;
        if self.unlocked.is_none() {
            if let Err(err) = binding {
                tracing::warn!(error = %err.message, "the key is not bound to this project: not unlocking");
                self.gate.publish(|s| {
                    if !s.state.serves() {
                        s.state = NodeState::Locked;
                    }
                    s.last_check_at = Some(checked_at);
                    s.via = via;
                    s.last_error = Some(err);
                });
                return;
            }
            let result = match &self.keystore {
                None => {
                    // A fresh master key satisfies every rotation request made so far.
                    let nonce = cfg.master_key_rotation_nonce;
                    Keystore::create(&self.options.data_dir, &self.identity.node_id, &kv, &kid, nonce).await
                }
                Some(ks) => ks.unlock(&kv).await.map(|u| (ks.clone(), u)),
            };
            match result {
                Ok((ks, unlocked)) => {
                    // Off the async workers: MariaDB's open starts mariadbd and waits for it.
                    let engine = self.engine.clone();
                    let opened = tokio::task::spawn_blocking(move || {
                        let r = engine.open(unlocked.data_keys());
                        (unlocked, r)
                    })
                    .await;
                    let unlocked = match opened {
                        Ok((unlocked, Ok(()))) => unlocked,
                        Ok((_, Err(e))) => {
                            return self.fail_setup(format!("the {} engine did not open: {e}", self.engine.kind()));
                        }
                        Err(e) => {
                            return self.fail_setup(format!("the {} engine's open failed: {e}", self.engine.kind()));
                        }
                    };
                    failpoint("node-engine-opened");
                    tracing::info!(key = %ks.key_identifier(), "unlocked: serving");
                    self.keystore = Some(ks);
                    self.unlocked = Some(unlocked);
                    self.publish_ok(NodeState::Serving, checked_at, via, ear.auth_mode.clone());
                }
                Err(e) => {
                    let denied = matches!(&e, KeystoreError::KeyVault(az) if az.kind().revokes_access());
                    let state = if denied { NodeState::ShutDown } else { NodeState::Locked };
                    tracing::warn!(error = %e, state = state.as_str(), "could not unlock");
                    let err = reported(&e);
                    self.gate.publish(|s| {
                        s.state = state;
                        s.last_check_at = Some(checked_at);
                        s.via = via;
                        s.last_error = Some(err);
                    });
                }
            }
            return;
        }
        // A migration under private networking: check with the candidate mode first; if it is
        // refused, the mode in force checks instead and the refusal is reported beside it.
        let mut kv = kv;
        let mut mode = ear.auth_mode.clone();
        let mut candidate_error = None;
        if let Some(candidate) = ear.pending_auth_mode.as_ref().filter(|m| Some(*m) != ear.auth_mode.as_ref()) {
            match self.kv_for(cfg, Some(candidate)) {
                Ok(cand) => {
                    let (Some(ks), Some(unlocked)) = (&self.keystore, &self.unlocked) else { return };
                    match ks.check(&cand, unlocked).await {
                        Ok(()) => {
                            kv = cand;
                            mode = Some(candidate.clone());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the pending auth mode {candidate} was refused; checking with the mode in force");
                            let mut err = reported(&e);
                            err.message = format!("validating {candidate} for the pending migration: {}", err.message);
                            candidate_error = Some(err);
                        }
                    }
                }
                Err(e) => {
                    candidate_error = Some(ReportedError { kind: "INTERNAL", azure_code: None, message: e, fix: None })
                }
            }
        }
        let (Some(ks), Some(unlocked)) = (&self.keystore, &self.unlocked) else { return };
        let checked =
            if candidate_error.is_none() && mode != ear.auth_mode { Ok(()) } else { ks.check(&kv, unlocked).await };
        match checked {
            Ok(()) => {
                self.denied_since = None;
                if let Err(err) = binding {
                    // Serving under a key this project's data is already wrapped under; the
                    // configuration's key is refused (no re-wrap) until it carries the tag.
                    self.publish_ok(NodeState::Serving, checked_at, via, mode);
                    self.gate.publish(|s| s.last_error = Some(err));
                    return;
                }
                if let Err(e) = self.rotate_if_asked(cfg, &kv, &kid, config_changed).await {
                    tracing::warn!(error = %e, "rotation failed; the current key stays in use");
                    let err = reported(&e);
                    self.gate.publish(|s| s.last_error = Some(err));
                    return;
                }
                self.publish_ok(NodeState::Serving, checked_at, via, mode);
                if let Some(err) = candidate_error {
                    self.gate.publish(|s| s.last_error = Some(err));
                }
            }
            Err(e) => {
                let err = reported(&e);
                // A blob that decrypts to another key is as final as a denial: the node must not
                // go on with keys it cannot prove.
                let denied = err.kind == "DENIED" || matches!(&e, KeystoreError::WrongKey { .. });
                if denied {
                    let since = *self.denied_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(cfg.denial_grace_secs) {
                        tracing::warn!(error = %e, "access denied: dropping the keys and closing the engine");
                        self.drop_keys().await;
                        self.gate.publish(|s| {
                            s.state = NodeState::ShutDown;
                            s.last_check_at = Some(checked_at);
                            s.last_error = Some(err);
                        });
                    } else {
                        self.gate.publish(|s| {
                            s.last_check_at = Some(checked_at);
                            s.last_error = Some(err);
                        });
                    }
                } else {
                    tracing::warn!(error = %e, "Key Vault unreachable: still serving");
                    self.gate.publish(|s| {
                        s.state = NodeState::Degraded;
                        s.last_check_at = Some(checked_at);
                        s.last_error = Some(err);
                    });
                }
            }
        }
    }

    /// Re-wraps the master key when the configuration names another key or version, and
    /// rotates the master key when the control plane asked for it.
    async fn rotate_if_asked(
        &mut self,
        cfg: &NodeConfig,
        kv: &KeyVaultClient,
        wanted: &KeyIdentifier,
        config_changed: bool,
    ) -> Result<(), KeystoreError> {
        let (Some(ks), Some(unlocked)) = (&mut self.keystore, &mut self.unlocked) else { return Ok(()) };
        let current = ks.key_identifier().clone();
        let same_key = current.vault() == wanted.vault() && current.name() == wanted.name();
        // The control plane resolves an unversioned identifier's current version when it
        // revalidates and sends it (`currentKeyVersion`; a new one changes the ETag), so a check
        // stays one decrypt and a new version reaches the node within a poll.
        let resolved = match (wanted.version(), ear_current_version(cfg)) {
            (None, Some(v)) => format!("{wanted}/{v}").parse::<KeyIdentifier>().ok(),
            _ => None,
        };
        let target = resolved.as_ref().unwrap_or(wanted);
        let rewrap = match target.version() {
            Some(v) => !same_key || current.version() != Some(v),
            None if !same_key => true,
            // No resolved version from the control plane (it has not revalidated yet): asking Key
            // Vault costs a GET, so it is asked on configuration changes only.
            None if config_changed => {
                let props = kv.get_key(wanted).await?;
                props.id.version() != current.version()
            }
            None => false,
        };
        if rewrap {
            ks.rewrap(kv, unlocked, target).await?;
            tracing::info!(from = %current, to = %ks.key_identifier(), "re-wrapped the master key");
        }
        // The request carried out is recorded in the keystore with the new master key: one asked
        // for while the node was down, or interrupted by a crash, is carried out now.
        if cfg.master_key_rotation_nonce > ks.rotation_nonce() {
            ks.rotate_master(kv, unlocked, cfg.master_key_rotation_nonce).await?;
            tracing::info!(generation = ks.generation(), "rotated the master key");
        }
        Ok(())
    }

    fn publish_ok(&self, state: NodeState, at: OffsetDateTime, via: &'static str, auth_mode: Option<String>) {
        let ks = self.keystore.as_ref();
        self.gate.publish(|s| {
            s.state = state;
            s.last_check_at = Some(at);
            s.last_error = None;
            s.via = via;
            s.auth_mode = auth_mode;
            s.key_identifier = ks.map(|k| k.key_identifier().unversioned().to_string());
            s.key_version = ks.and_then(|k| k.key_identifier().version().map(|v| v.to_string()));
            s.master_key_generation = ks.map(|k| k.generation());
        });
    }

    async fn report(&self, etag: Option<String>) {
        if !self.reported {
            failpoint("node-before-first-report");
        }
        let s = self.gate.status();
        let report = StatusReport {
            state: s.state.as_str().to_string(),
            key_identifier: s.key_identifier,
            key_version: s.key_version,
            auth_mode: s.auth_mode,
            master_key_generation: s.master_key_generation,
            last_check_at: s.last_check_at.and_then(|t| t.format(&Rfc3339).ok()),
            config_etag: etag,
            via: s.via,
            last_error: s.last_error,
        };
        if let Err(e) = self.client.report(&report).await {
            tracing::debug!(error = %e, "the status report did not reach the control plane; the next check reports again");
        }
    }
}
