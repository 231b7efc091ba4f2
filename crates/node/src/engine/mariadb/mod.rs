//! The MariaDB engine: a `mariadbd` the node supervises, whose data at rest (InnoDB tablespaces,
//! redo log, temporary tables and files, binlog, Aria tables) is encrypted by MariaDB with keys
//! it reads through its `hashicorp_key_management` plugin from the node's own key server
//! ([`keyserver`]), which derives them from the node's data keys. `shared/reference/data-nodes.md`
//! §1 and §1b are the facts this follows.
//!
//! **Order.** [`Engine::open`] starts the key server first, then `mariadb-install-db` (first
//! start only) and `mariadbd`: a mariadbd started without its keys runs Aria recovery without
//! them and loses committed rows (§1b). [`Engine::close`] stops mariadbd (SIGTERM, its clean
//! shutdown; SIGKILL to the process group after [`STOP_BOUND`]) and only then the key server:
//! refusing a running mariadbd its keys with an HTTP error makes it abort, and it keeps every key
//! it fetched cached anyway, so stopping the server is the only way to take the keys away.
//!
//! **Supervision.** mariadbd runs in its own process group with `PR_SET_PDEATHSIG` = SIGKILL, so
//! a kill -9 of the node leaves no server holding keys. Because the death signal follows the
//! *thread* that forked, mariadbd is spawned and waited for by one supervisor thread that lives
//! as long as the engine is open; if mariadbd dies while the engine is open, the supervisor
//! starts it again (the keys are still served) and counts the restart.
//!
//! **What stays in clear** (MariaDB does not encrypt it): the Aria transaction log `aria_log.*`
//! (it carries rows of Aria tables, including the `mysql.*` system tables: user names), MyISAM
//! and non-PAGE Aria files, schema metadata (`.frm`), and the error log. So user tables are
//! InnoDB only (`enforce_storage_engine`), and a client's `ENGINE=Aria` or `MyISAM` is refused.

pub mod keyserver;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::keyserver::{KeyServer, Token};
use crate::engine::{Engine, EngineError, Health};
use crate::keystore::DataKeys;

/// How long a clean shutdown may take before the process group is killed. The probe measured
/// 1.3–2.0 s for an idle server (§1b, Timings).
pub const STOP_BOUND: Duration = Duration::from_secs(30);
/// How long mariadbd may take to accept connections after it is started.
const START_BOUND: Duration = Duration::from_secs(60);

/// Where the MariaDB binaries are and how the server listens.
#[derive(Clone, Debug)]
pub struct MariaDbOptions {
    /// The node's data dir; MariaDB's files go under `<dir>/mariadb/`.
    pub dir: PathBuf,
    /// `mariadbd` (Debian: /usr/sbin/mariadbd).
    pub mariadbd: PathBuf,
    /// `mariadb-install-db`.
    pub install_db: PathBuf,
    /// The `mariadb` client, which the status uses to read the tablespaces' encryption.
    pub client: PathBuf,
    /// The TCP port on 127.0.0.1 (0: a free one, chosen at the first start and kept while this
    /// process runs, so clients find the server again after a revocation and recovery).
    pub port: u16,
}

impl MariaDbOptions {
    /// Debian's paths, a free port.
    pub fn new(dir: &Path) -> MariaDbOptions {
        MariaDbOptions {
            dir: dir.to_path_buf(),
            mariadbd: PathBuf::from("/usr/sbin/mariadbd"),
            install_db: PathBuf::from("/usr/bin/mariadb-install-db"),
            client: PathBuf::from("/usr/bin/mariadb"),
            port: 0,
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.join("mariadb")
    }

    /// MariaDB's data directory.
    pub fn datadir(&self) -> PathBuf {
        self.home().join("data")
    }

    /// The server's unix socket (root connects through it with unix_socket authentication).
    pub fn socket(&self) -> PathBuf {
        self.home().join("mariadbd.sock")
    }

    fn option_file(&self) -> PathBuf {
        self.home().join("my.cnf")
    }

    /// mariadbd's error log.
    pub fn error_log(&self) -> PathBuf {
        self.home().join("error.log")
    }
}

/// The supervised server while the engine is open.
struct Running {
    keys: KeyServer,
    port: u16,
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    supervisor: std::thread::JoinHandle<()>,
}

/// The MariaDB engine. Cheap to share behind an `Arc`.
pub struct MariaDbEngine {
    options: MariaDbOptions,
    running: Mutex<Option<Running>>,
    restarts: Arc<AtomicU32>,
    chosen_port: Mutex<Option<u16>>,
}

impl MariaDbEngine {
    /// An engine for `options`.
    pub fn new(options: MariaDbOptions) -> MariaDbEngine {
        MariaDbEngine {
            options,
            running: Mutex::new(None),
            restarts: Arc::new(AtomicU32::new(0)),
            chosen_port: Mutex::new(None),
        }
    }

    /// The options it runs with.
    pub fn options(&self) -> &MariaDbOptions {
        &self.options
    }

    /// The TCP port mariadbd listens on while open.
    pub fn port(&self) -> Option<u16> {
        self.running.lock().as_ref().map(|r| r.port)
    }

    /// mariadbd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.lock().as_ref().map(|r| r.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// How many times the supervisor started mariadbd again after it died on its own.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// The key server's address while open (for tests: its requests, its refusals).
    pub fn key_server(&self) -> Option<(std::net::SocketAddr, String)> {
        self.running.lock().as_ref().map(|r| (r.keys.addr(), r.keys.ca_pem().to_string()))
    }

    fn storage(&self, what: &str, detail: impl std::fmt::Display) -> EngineError {
        EngineError::Storage { what: format!("MariaDB: {what}"), detail: detail.to_string() }
    }

    fn write_files(&self, keys: &KeyServer, port: u16) -> Result<(), EngineError> {
        let o = &self.options;
        std::fs::create_dir_all(o.home()).map_err(|e| self.storage(&format!("creating {}", o.home().display()), e))?;
        let ca = o.home().join("vault-ca.pem");
        std::fs::write(&ca, keys.ca_pem()).map_err(|e| self.storage("writing the key server's CA", e))?;
        let cnf = option_file(o, &keys.vault_url(), &ca, port);
        std::fs::write(o.option_file(), cnf).map_err(|e| self.storage("writing my.cnf", e))
    }

    fn install_db(&self, token: &Token) -> Result<(), EngineError> {
        let o = &self.options;
        if o.datadir().join("mysql").is_dir() {
            return Ok(());
        }
        let mut cmd = Command::new(&o.install_db);
        cmd.arg(format!("--defaults-file={}", o.option_file().display()))
            .arg("--skip-test-db")
            .arg(format!("--auth-root-socket-user={}", os_user()))
            .env("VAULT_TOKEN", token.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output().map_err(|e| {
            self.storage(
                &format!("running {}", o.install_db.display()),
                format!("{e}; install MariaDB with `sudo apt-get install mariadb-server mariadb-plugin-hashicorp-key-management`"),
            )
        })?;
        if !out.status.success() {
            return Err(self.storage(
                "mariadb-install-db failed",
                format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            ));
        }
        Ok(())
    }
}

/// The OS user running the node (unix_socket authentication maps it to MariaDB's root): the
/// password database's name for the effective uid, else `$USER`.
fn os_user() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid returns null or a pointer to a static
    // record whose name is a NUL-terminated string, copied out at once.
    let from_passwd = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
        }
    };
    from_passwd.or_else(|| std::env::var("USER").ok()).filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into())
}

/// The generated option file: nothing secret in it (the token goes by environment).
fn option_file(o: &MariaDbOptions, vault_url: &str, ca: &Path, port: u16) -> String {
    let home = o.home();
    format!(
        "# Written by the atrest node at each start; edits are lost. docs/mariadb-engine.md says why each line is here.
[mariadbd]
datadir={datadir}
socket={socket}
pid-file={home}/mariadbd.pid
log-error={error_log}
bind-address=127.0.0.1
port={port}
skip-name-resolve
tmpdir={home}/tmp
log-bin={home}/binlog/mariadb-bin
plugin-load-add=hashicorp_key_management
hashicorp-key-management=FORCE
hashicorp-key-management-vault-url={vault_url}
hashicorp-key-management-vault-ca={ca}
hashicorp-key-management-check-kv-version=ON
innodb-encrypt-tables=FORCE
innodb-encrypt-log=ON
innodb-encrypt-temporary-tables=ON
innodb-encryption-threads=2
innodb-encryption-rotate-key-age=1
encrypt-tmp-files=ON
encrypt-binlog=ON
aria-encrypt-tables=ON
default-storage-engine=InnoDB
default-tmp-storage-engine=InnoDB
",
        datadir = o.datadir().display(),
        socket = o.socket().display(),
        home = home.display(),
        error_log = o.error_log().display(),
        ca = ca.display(),
    )
}

fn free_port() -> std::io::Result<u16> {
    // The port is free now; mariadbd binds it a moment later. Another process could take it in
    // between, and then the start fails with the error log saying so.
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The `[ERROR]` lines mariadbd logged since its last start (at most 8), for messages.
fn last_errors(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let since_start = s.rfind("Starting MariaDB").map_or(s.as_str(), |i| &s[i..]);
    let errors: Vec<&str> = since_start.lines().filter(|l| l.contains("[ERROR]")).collect();
    errors[errors.len().saturating_sub(8)..].join(" | ")
}

/// Starts mariadbd in its own process group, killed if its parent thread dies.
fn spawn_mariadbd(o: &MariaDbOptions, token: &Token) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&o.mariadbd);
    cmd.arg(format!("--defaults-file={}", o.option_file().display()))
        // Only mariadbd, not mariadb-install-db (whose system tables are Aria).
        .arg("--enforce-storage-engine=InnoDB");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--user=root");
    }
    cmd.env("VAULT_TOKEN", token.expose()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn signal_group(pid: u32, signal: i32) {
    if pid != 0 {
        // SAFETY: kill has no memory preconditions; a negative pid names the process group.
        unsafe { libc::kill(-(pid as i32), signal) };
    }
}

impl MariaDbEngine {
    /// The tablespaces' encryption as `information_schema.INNODB_TABLESPACES_ENCRYPTION` shows
    /// it: how many there are, how many are unencrypted or rotating, and per key id which key
    /// versions pages still use (the oldest of each tablespace). Asked through the `mariadb`
    /// client over the socket as root (unix_socket authentication as the node's OS user): the
    /// node links no MySQL protocol library, and this is read only for the status.
    fn tablespaces(&self) -> serde_json::Value {
        let q = "SELECT CURRENT_KEY_ID, MIN_KEY_VERSION, ENCRYPTION_SCHEME, ROTATING_OR_FLUSHING, COUNT(*) \
                 FROM information_schema.INNODB_TABLESPACES_ENCRYPTION \
                 GROUP BY CURRENT_KEY_ID, MIN_KEY_VERSION, ENCRYPTION_SCHEME, ROTATING_OR_FLUSHING";
        let out = Command::new(&self.options.client)
            .arg(format!("--socket={}", self.options.socket().display()))
            .args(["-u", "root", "--batch", "--skip-column-names", "-e", q])
            .stdin(Stdio::null())
            .output();
        let text = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => return serde_json::json!({"error": String::from_utf8_lossy(&o.stderr).trim()}),
            Err(e) => return serde_json::json!({"error": format!("{}: {e}", self.options.client.display())}),
        };
        let (mut total, mut unencrypted, mut rotating) = (0u64, 0u64, 0u64);
        let mut by_key: std::collections::BTreeMap<u64, std::collections::BTreeMap<u64, u64>> = Default::default();
        for line in text.lines() {
            let f: Vec<u64> = line.split('\t').map(|v| v.parse().unwrap_or(0)).collect();
            let [key_id, min_version, scheme, rotating_now, count] = f[..] else { continue };
            total += count;
            if scheme == 0 {
                unencrypted += count;
            }
            if rotating_now != 0 {
                rotating += count;
            }
            *by_key.entry(key_id).or_default().entry(min_version).or_default() += count;
        }
        let keys: Vec<serde_json::Value> = by_key
            .into_iter()
            .map(|(id, versions)| {
                let versions: Vec<_> = versions
                    .into_iter()
                    .map(|(v, n)| serde_json::json!({"minKeyVersion": v, "tablespaces": n}))
                    .collect();
                serde_json::json!({"keyId": id, "versions": versions})
            })
            .collect();
        serde_json::json!({"total": total, "unencrypted": unencrypted, "rotating": rotating, "byKeyId": keys})
    }
}

impl Engine for MariaDbEngine {
    fn kind(&self) -> &'static str {
        "mariadb"
    }

    fn open(&self, keys: &DataKeys) -> Result<(), EngineError> {
        let mut running = self.running.lock();
        if running.is_some() {
            return Ok(());
        }
        let o = self.options.clone();
        let token = Token::random();
        let server = KeyServer::start(keys, token.clone()).map_err(|e| self.storage("starting the key server", e))?;
        let port = match (o.port, *self.chosen_port.lock()) {
            (0, Some(chosen)) => chosen,
            (0, None) => free_port().map_err(|e| self.storage("choosing a port", e))?,
            (fixed, _) => fixed,
        };
        *self.chosen_port.lock() = Some(port);
        self.write_files(&server, port)?;
        for d in ["tmp", "binlog"] {
            std::fs::create_dir_all(o.home().join(d)).map_err(|e| self.storage(&format!("creating {d}"), e))?;
        }
        self.install_db(&token)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(0));
        let (first_tx, first_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let supervisor = {
            let flags =
                Flags { stop: stop.clone(), ready: ready.clone(), pid: pid.clone(), restarts: self.restarts.clone() };
            let (o, token) = (o.clone(), token.clone());
            std::thread::Builder::new()
                .name("mariadbd-supervisor".into())
                .spawn(move || supervise(&o, &token, &flags, first_tx))
                .map_err(|e| self.storage("starting the supervisor thread", e))?
        };
        let spawned = first_rx.recv().unwrap_or_else(|_| Err(std::io::Error::other("the supervisor exited")));
        if let Err(e) = spawned {
            let _ = supervisor.join();
            return Err(self.storage(&format!("starting {}", o.mariadbd.display()), e));
        }
        // Ready when it accepts TCP connections; a server that exits meanwhile fails the open.
        let deadline = Instant::now() + START_BOUND;
        loop {
            if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok() {
                break;
            }
            if supervisor.is_finished() || Instant::now() > deadline {
                stop.store(true, Ordering::SeqCst);
                signal_group(pid.load(Ordering::SeqCst), libc::SIGKILL);
                let _ = supervisor.join();
                return Err(self.storage(
                    "mariadbd did not start",
                    format!(
                        "its error log ({}) says: {}. A malformed redo log or a key that is not found here means these keys do not open this data directory (it was made under another node's keystore); restore this node's keystore.json",
                        o.error_log().display(),
                        last_errors(&o.error_log())
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ready.store(true, Ordering::SeqCst);
        tracing::info!(port, pid = pid.load(Ordering::SeqCst), "mariadbd is serving");
        *running = Some(Running { keys: server, port, stop, pid, supervisor });
        Ok(())
    }

    fn close(&self) -> Result<(), EngineError> {
        // The lock is held until mariadbd is gone and the keys are dropped: a second close (the
        // node's shutdown racing its own revocation) waits for the first instead of returning
        // while mariadbd still runs.
        let mut running = self.running.lock();
        let Some(r) = running.take() else { return Ok(()) };
        r.stop.store(true, Ordering::SeqCst);
        let started = Instant::now();
        // The pid is 0 while the supervisor restarts a crashed mariadbd, and changes once it
        // has: signal whichever process is current, until the supervisor has seen it exit.
        let mut signalled = 0;
        while !r.supervisor.is_finished() && started.elapsed() < STOP_BOUND {
            let pid = r.pid.load(Ordering::SeqCst);
            if pid != 0 && pid != signalled {
                signal_group(pid, libc::SIGTERM);
                signalled = pid;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !r.supervisor.is_finished() {
            tracing::warn!(bound = ?STOP_BOUND, "mariadbd did not shut down cleanly in time; killing it");
            signal_group(r.pid.load(Ordering::SeqCst), libc::SIGKILL);
        }
        let _ = r.supervisor.join();
        // Only now: mariadbd is gone, so nothing can still need a key.
        r.keys.stop();
        drop(running);
        tracing::info!(secs = started.elapsed().as_secs_f64(), "mariadbd stopped; its keys are dropped");
        Ok(())
    }

    fn describe(&self) -> serde_json::Value {
        let health = match self.health() {
            Health::Closed => serde_json::json!({"state": "CLOSED"}),
            Health::Serving => serde_json::json!({"state": "SERVING"}),
            Health::Failing(why) => serde_json::json!({"state": "FAILING", "detail": why}),
        };
        let tablespaces =
            if matches!(self.health(), Health::Serving) { self.tablespaces() } else { serde_json::Value::Null };
        serde_json::json!({
            "kind": self.kind(),
            "health": health,
            "tablespaces": tablespaces,
            "mariadbd": {
                "pid": self.pid(),
                "host": "127.0.0.1",
                "port": self.port(),
                "socket": self.options.socket(),
                "datadir": self.options.datadir(),
                "restarts": self.restarts(),
            },
        })
    }

    fn health(&self) -> Health {
        let running = self.running.lock();
        let Some(r) = running.as_ref() else { return Health::Closed };
        if TcpStream::connect_timeout(&([127, 0, 0, 1], r.port).into(), Duration::from_millis(200)).is_ok() {
            Health::Serving
        } else {
            Health::Failing(format!(
                "mariadbd does not accept connections on 127.0.0.1:{} (restarted {} times); its error log: {}",
                r.port,
                self.restarts(),
                self.options.error_log().display()
            ))
        }
    }
}

/// What the supervisor thread shares with the engine.
struct Flags {
    /// The engine is closing: do not start mariadbd again.
    stop: Arc<AtomicBool>,
    /// mariadbd accepted connections once since open: only then is an exit restarted (one that
    /// dies before, as with another node's keys, fails the open instead).
    ready: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
}

/// The supervisor thread: starts mariadbd, waits for it, and starts it again while the engine
/// is open. Reports the first spawn's result on `first`.
fn supervise(o: &MariaDbOptions, token: &Token, flags: &Flags, first: std::sync::mpsc::Sender<std::io::Result<()>>) {
    let Flags { stop, ready, pid, restarts } = flags;
    let mut first = Some(first);
    loop {
        let mut child = match spawn_mariadbd(o, token) {
            Ok(c) => c,
            Err(e) => {
                match first.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(e));
                    }
                    None => tracing::error!(error = %e, "mariadbd could not be started again"),
                }
                return;
            }
        };
        pid.store(child.id(), Ordering::SeqCst);
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        let status = child.wait();
        pid.store(0, Ordering::SeqCst);
        if stop.load(Ordering::SeqCst) || !ready.load(Ordering::SeqCst) {
            return;
        }
        restarts.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(status = ?status, error_log = %o.error_log().display(), "mariadbd exited on its own; starting it again");
        std::thread::sleep(Duration::from_millis(500));
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}
