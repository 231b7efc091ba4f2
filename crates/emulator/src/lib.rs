//! atrest's local Azure: Entra ID, a Microsoft Graph subset, an ARM subset and Key Vault keys,
//! behind one TLS listener that serves the real Azure host names of the three clouds.
//!
//! Unlike other local fakes, it authenticates every request with the tokens it issued and
//! authorises it with Azure's rules (RBAC scope walk or vault access policies), and it answers
//! with Azure's own error bodies. See `docs/emulator.md` for the contract and the admin API.
//!
//! Layout: [`server`] accepts connections and routes by host; [`entra`], [`graph`], [`arm`] and
//! [`keyvault`] each own one surface, parsing requests with the shared helpers of `http`;
//! [`authz`] decides; [`state`] holds the model and
//! [`Ctx::mutate`] persists it; [`admin`] is the `/_emulator/` API for what Azure has no API for.

pub mod admin;
pub mod arm;
pub mod authz;
pub mod entra;
pub mod errors;
pub mod graph;
mod http;
pub mod keyvault;
mod persist;
pub mod requests;
pub mod scenario;
pub mod server;
pub mod state;
mod tls;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use atrest_domain::AzureEnvironment;
use state::{Fault, State};

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen. Must be a loopback address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where state, keys and the CA live. Created if missing.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Access-token lifetime for a fresh data dir (later changed through the admin API).
    pub token_lifetime_secs: Option<u64>,
}

impl EmulatorConfig {
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self { listen, data_dir: data_dir.into(), max_body_bytes: 256 * 1024, token_lifetime_secs: None }
    }
}

/// The bootstrap principal, as written to `emulator.json` and returned by `POST /_emulator/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrincipalInfo {
    pub tenant_id: String,
    pub subscription_id: String,
    pub client_id: String,
    pub client_secret: String,
}

/// `DIR/emulator.json`: the fixed contract external tests read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmulatorInfo {
    pub listen: String,
    pub ca_pem: String,
    pub bootstrap: PrincipalInfo,
    pub data_dir: String,
    /// `https://{listen}`: every route is reachable here too when a client cannot map host names.
    pub base_url: String,
    pub pid: u32,
}

/// Sliding-window throttle state for one vault.
pub struct ThrottleState {
    pub limit: u64,
    pub window_ms: i64,
    pub hits: std::collections::VecDeque<i64>,
}

/// Everything a request handler can reach.
pub struct Inner {
    state: RwLock<Arc<State>>,
    write_lock: Mutex<()>,
    data_dir: PathBuf,
    pub signer: tokens::TokenSigner,
    pub tls: Arc<rustls::ServerConfig>,
    pub max_body: usize,
    clock_shift: AtomicI64,
    /// Injected faults (runtime only; a restart clears them).
    pub faults: Mutex<Vec<Fault>>,
    /// Per-vault throttles (runtime only), keyed by lowercase vault name.
    pub throttles: Mutex<HashMap<String, ThrottleState>>,
    /// Running private-endpoint listeners: id → (port, task).
    pub private_listeners: Mutex<HashMap<Uuid, (u16, tokio::task::AbortHandle)>>,
    /// Requests counted by surface and operation (runtime only; `GET /_emulator/requests`).
    pub requests: requests::RequestLog,
    pub key_cache: keyvault::KeyCache,
    pub issuers: entra::IssuerCache,
    pub listen_addr: RwLock<Option<SocketAddr>>,
    routers: std::sync::OnceLock<Arc<server::Routers>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone)]
pub struct Ctx(Arc<Inner>);

impl std::ops::Deref for Ctx {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Ctx {
    /// Unix seconds on the emulator's clock (wall clock plus the admin clock shift).
    pub fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp() + self.clock_shift.load(Ordering::Relaxed)
    }

    /// A consistent snapshot of the state. Cheap: the state is behind an `Arc`.
    pub fn snapshot(&self) -> Arc<State> {
        self.state.read().clone()
    }

    /// Read the state.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let s = self.state.read().clone();
        f(&s)
    }

    /// Change the state. `f` works on a copy; if it returns `Ok`, the copy is written to
    /// `DIR/state.json` and then becomes the state. If `f` fails or the write fails, nothing
    /// changes, so a rejected request can never leave a partial change behind.
    pub fn mutate<R, E>(&self, f: impl FnOnce(&mut State) -> Result<R, E>) -> Result<R, E>
    where
        E: From<anyhow::Error>,
    {
        let _guard = self.write_lock.lock();
        let mut next: State = (**self.state.read()).clone();
        let out = f(&mut next)?;
        next.generation += 1;
        let bytes = serde_json::to_vec(&next).map_err(|e| E::from(anyhow::anyhow!("serializing state: {e}")))?;
        persist::write_private(&self.data_dir.join("state.json"), &bytes)
            .map_err(|e| E::from(anyhow::anyhow!("writing state.json: {e}")))?;
        self.clock_shift.store(next.settings.clock_shift_secs, Ordering::Relaxed);
        *self.state.write() = Arc::new(next);
        Ok(out)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn routers(&self) -> Arc<server::Routers> {
        self.routers.get().expect("routers are built at start").clone()
    }

    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// A running emulator.
pub struct Emulator {
    ctx: Ctx,
    addr: SocketAddr,
    info: EmulatorInfo,
    accept_task: tokio::task::JoinHandle<()>,
    /// The exclusive lock on `DIR/emulator.lock`, released when the emulator is dropped.
    _lock: std::fs::File,
}

impl Emulator {
    /// Start the emulator: lock the data dir, remove a stale `emulator.json`, load or create
    /// state, CA and keys, bind, and write `emulator.json` last; serve until
    /// [`Emulator::shutdown`].
    pub async fn start(cfg: EmulatorConfig) -> anyhow::Result<Self> {
        if !cfg.listen.ip().is_loopback() {
            anyhow::bail!(
                "the emulator listens on loopback only; {} is not a loopback address (use 127.0.0.1:PORT)",
                cfg.listen
            );
        }
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&cfg.data_dir)?;
        // One emulator per data dir: a second one would overwrite the first one's state.json
        // and lose its acknowledged writes.
        let lock = lock_data_dir(&data_dir)?;
        // emulator.json means "ready": a file left by a process that was killed must not make
        // a harness proceed against a dead port. Its bootstrap secret is the only copy of it,
        // so read it before removing the file.
        let info_path = data_dir.join("emulator.json");
        let previous: Option<EmulatorInfo> =
            std::fs::read(&info_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match std::fs::remove_file(&info_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing the stale {}", info_path.display())),
        }
        let ca = tls::Ca::load_or_create(&data_dir)?;
        let tls = ca.server_config()?;
        let signer = tokens::TokenSigner::load_or_create(&data_dir)?;
        let state_path = data_dir.join("state.json");
        let loaded: State = if state_path.exists() {
            let bytes = std::fs::read(&state_path)?;
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", state_path.display()))?
        } else {
            State::default()
        };
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let ctx = Ctx(Arc::new(Inner {
            clock_shift: AtomicI64::new(loaded.settings.clock_shift_secs),
            state: RwLock::new(Arc::new(loaded)),
            write_lock: Mutex::new(()),
            data_dir: data_dir.clone(),
            signer,
            tls,
            max_body: cfg.max_body_bytes,
            faults: Mutex::new(Vec::new()),
            throttles: Mutex::new(HashMap::new()),
            private_listeners: Mutex::new(HashMap::new()),
            requests: requests::RequestLog::default(),
            key_cache: keyvault::KeyCache::default(),
            issuers: entra::IssuerCache::default(),
            listen_addr: RwLock::new(None),
            routers: std::sync::OnceLock::new(),
            shutdown,
        }));
        let _ = ctx.routers.set(Arc::new(server::Routers::new(ctx.clone())));
        let bootstrap_secret = bootstrap_secret(&ctx, &cfg, previous.as_ref())?;

        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {} (is another emulator running on it?)", cfg.listen))?;
        let addr = listener.local_addr()?;
        *ctx.listen_addr.write() = Some(addr);
        let accept_task = tokio::spawn(server::serve(ctx.clone(), listener, server::ListenerKind::Public));
        admin::restore_private_endpoints(&ctx).await?;

        let b = ctx.read(|s| s.bootstrap.clone()).expect("bootstrap exists");
        let info = EmulatorInfo {
            listen: addr.to_string(),
            ca_pem: data_dir.join("ca.pem").display().to_string(),
            bootstrap: PrincipalInfo {
                tenant_id: b.tenant_id.to_string(),
                subscription_id: b.subscription_id.to_string(),
                client_id: b.client_id.to_string(),
                client_secret: bootstrap_secret,
            },
            data_dir: data_dir.display().to_string(),
            base_url: format!("https://{addr}"),
            pid: std::process::id(),
        };
        // emulator.json is written last: its presence means "ready".
        persist::write_private(&info_path, &serde_json::to_vec_pretty(&info)?)?;
        tracing::info!(listen = %addr, data_dir = %data_dir.display(), "emulator ready");
        Ok(Self { ctx, addr, info, accept_task, _lock: lock })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn info(&self) -> &EmulatorInfo {
        &self.info
    }

    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// The CA certificate clients must trust (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.info.ca_pem).unwrap_or_default()
    }

    /// Stop accepting, close listeners. State is already on disk.
    pub async fn shutdown(self) {
        let _ = self.ctx.shutdown.send(true);
        self.accept_task.abort();
        for (_, (_, h)) in self.ctx.private_listeners.lock().drain() {
            h.abort();
        }
        let _ = self.accept_task.await;
    }
}

/// Take the exclusive lock on `DIR/emulator.lock` (an `flock`, released by the kernel when the
/// process dies, so a kill -9 never leaves the dir locked) and record this PID in the file. A
/// second emulator on the same dir fails here at once, naming the PID that holds the lock.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join("emulator.lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&path).with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { "another process".to_string() } else { format!("PID {holder}") };
            anyhow::bail!(
                "the data dir {} is in use by another emulator ({who} holds {}). Stop that emulator first{}, or give this one another --data-dir.",
                data_dir.display(),
                path.display(),
                if holder.is_empty() { String::new() } else { format!(" (kill {holder})") },
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(file)
}

/// The bootstrap principal's client secret for `emulator.json`, creating the principal on a
/// fresh data dir. `state.json` keeps only its SHA-256; the secret itself comes from the
/// previous `emulator.json` (checked against the hash), or from the clear copy an older
/// `state.json` kept (migrated to the hash now). When neither is there, the principal gets a
/// new secret, because no copy of the old one is left to show.
fn bootstrap_secret(ctx: &Ctx, cfg: &EmulatorConfig, previous: Option<&EmulatorInfo>) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let Some(b) = ctx.read(|s| s.bootstrap.clone()) else {
        // First start: the bootstrap tenant, subscription and principal.
        let lifetime = cfg.token_lifetime_secs;
        return ctx.mutate(|s| -> anyhow::Result<String> {
            if let Some(l) = lifetime {
                s.settings.token_lifetime_secs = l;
            }
            let p = s.create_tenant_with_admin("Bootstrap", AzureEnvironment::Azure, now);
            s.bootstrap = Some(state::Bootstrap {
                tenant_id: p.tenant_id.parse()?,
                subscription_id: p.subscription_id.parse()?,
                client_id: p.client_id.parse()?,
                client_secret_sha256: state::sha256_hex(p.client_secret.as_bytes()),
                client_secret: None,
            });
            Ok(p.client_secret)
        });
    };
    if let Some(clear) = b.client_secret.clone() {
        let hash = state::sha256_hex(clear.as_bytes());
        ctx.mutate(|s| -> anyhow::Result<()> {
            if let Some(b) = s.bootstrap.as_mut() {
                b.client_secret_sha256 = hash;
                b.client_secret = None;
            }
            Ok(())
        })?;
        return Ok(clear);
    }
    let known = previous
        .map(|p| &p.bootstrap)
        .filter(|p| p.client_id == b.client_id.to_string())
        .map(|p| p.client_secret.clone())
        .filter(|secret| state::sha256_hex(secret.as_bytes()) == b.client_secret_sha256);
    if let Some(secret) = known {
        return Ok(secret);
    }
    let secret = ctx.mutate(|s| s.rotate_bootstrap_secret(now))?;
    tracing::warn!(
        data_dir = %ctx.data_dir().display(),
        "emulator.json was missing or unreadable, and it is the only copy of the bootstrap principal's client secret: the principal got a new secret (the old one no longer works); read it from emulator.json"
    );
    Ok(secret)
}
