//! Test support (feature `testing`): a throwaway PostgreSQL cluster shared by one test binary,
//! and a fresh, empty database in it for each test.
//!
//! ```no_run
//! # async fn demo() -> Result<(), atrest_store::StoreError> {
//! let url = atrest_store::testing::fresh_postgres_database().await?;
//! let replica_a = atrest_store::Store::open(&url).await?;
//! let replica_b = atrest_store::Store::open(&url).await?;
//! # Ok(()) }
//! ```
//!
//! The cluster is started by the first caller in the process and reused by every later one:
//! `initdb` into a temp dir (as the `postgres` user when running as root, since initdb refuses
//! root), then `pg_ctl start` on a free loopback port with `fsync=off`. Starting takes about a
//! second; each fresh database (`CREATE DATABASE`) takes a few tens of milliseconds.
//!
//! Cleanup does not rely on destructors (statics are never dropped): a watchdog shell in its own
//! session holds the read end of a pipe whose write end only this process holds. When the process
//! exits for any reason (success, panic, abort, even SIGKILL) the pipe closes and the watchdog
//! stops the cluster and removes its directory.
//!
//! If the PostgreSQL server binaries are missing, every call fails with a message that says how
//! to install them: tests must fail, never skip. Set `ATREST_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`, a role allowed to create databases) to use an
//! existing server instead; fresh databases are then created there and left behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use sqlx::{Connection, PgConnection};

use crate::error::{Result, StoreError};

/// The shared cluster (or the server named by `ATREST_TEST_POSTGRES_URL`).
pub struct PostgresCluster {
    admin_url: String,
    /// Dropped only when the process exits, which is what tells the watchdog to clean up.
    _watchdog: Option<ChildStdin>,
}

static CLUSTER: OnceLock<Result<PostgresCluster, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The process-wide cluster, started on first use. Blocks the calling thread while starting
/// (about a second); a failure to start is remembered and returned to every later caller.
pub fn postgres_cluster() -> Result<&'static PostgresCluster> {
    CLUSTER
        .get_or_init(start)
        .as_ref()
        .map_err(|message| StoreError::Backend(format!("cannot start the PostgreSQL test cluster: {message}")))
}

/// A new, empty database in the process-wide cluster; returns its URL for [`crate::Store::open`].
pub async fn fresh_postgres_database() -> Result<String> {
    postgres_cluster()?.fresh_database().await
}

impl PostgresCluster {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`: a superuser connection to the cluster.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn fresh_database(&self) -> Result<String> {
        let name = format!("atrest_test_{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
        let fail = |e: &dyn std::fmt::Display| StoreError::Backend(format!("cannot create test database {name}: {e}"));
        let mut admin = PgConnection::connect(&self.admin_url).await.map_err(|e| fail(&e))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .map_err(|e| fail(&e))?;
        admin.close().await.ok();
        let mut url = url::Url::parse(&self.admin_url).map_err(|e| fail(&e))?;
        url.set_path(&name);
        Ok(url.to_string())
    }
}

fn start() -> std::result::Result<PostgresCluster, String> {
    if let Ok(url) = std::env::var("ATREST_TEST_POSTGRES_URL") {
        return Ok(PostgresCluster { admin_url: url, _watchdog: None });
    }
    let started = Instant::now();
    let bin = find_bindir()?;
    let as_postgres = running_as_root();

    let dir = std::env::temp_dir().join(format!(
        "atrest-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if as_postgres {
        run(Command::new("chown").arg("postgres:postgres").arg(&dir), "chown")?;
    }
    let data = dir.join("data");
    let pg_ctl = bin.join("pg_ctl");

    // The watchdog first, so that even a failed start below is cleaned up when we exit.
    let watchdog = spawn_watchdog(&pg_ctl, &data, &dir, as_postgres)?;

    let t = Instant::now();
    run(
        server_command(&bin.join("initdb"), as_postgres).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]),
        "initdb",
    )?;
    let initdb_took = t.elapsed();

    let t = Instant::now();
    let mut last_error = String::new();
    for _attempt in 0..3 {
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            dir.display()
        );
        let result = run(
            server_command(&pg_ctl, as_postgres)
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        );
        match result {
            Ok(_) => {
                eprintln!(
                    "PostgreSQL test cluster on 127.0.0.1:{port}: initdb {initdb_took:?}, start {:?}, total {:?}",
                    t.elapsed(),
                    started.elapsed()
                );
                return Ok(PostgresCluster {
                    admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                    _watchdog: Some(watchdog),
                });
            }
            // Most likely the port was taken between probing and binding: try another.
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                last_error = format!("{e}\n--- postgres.log ---\n{log}");
            }
        }
    }
    Err(last_error)
}

/// The directory holding `initdb` and `pg_ctl`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian does not put server binaries on PATH).
fn find_bindir() -> std::result::Result<PathBuf, String> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "PostgreSQL server binaries (initdb, pg_ctl) were not found via `pg_config --bindir` or in \
         /usr/lib/postgresql/*/bin. Run ./scripts/test.sh, which installs the Debian package \
         `postgresql`, or install it yourself (apt-get install postgresql), or set \
         ATREST_TEST_POSTGRES_URL to an existing server. PostgreSQL tests are never skipped."
            .to_string()
    })
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A command for a server binary, run as `postgres` when we are root.
fn server_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> std::result::Result<Output, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> std::result::Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot probe a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// `sh -c 'cat >/dev/null; pg_ctl stop; rm -rf DIR'` in a new session (so a Ctrl-C aimed at the
/// test run does not kill it before it has cleaned up), reading a pipe only we write to.
fn spawn_watchdog(
    pg_ctl: &Path,
    data: &Path,
    dir: &Path,
    as_postgres: bool,
) -> std::result::Result<ChildStdin, String> {
    const SCRIPT: &str = r#"cat >/dev/null
if [ "$4" = 1 ]; then runuser -u postgres -- "$1" -D "$2" -m immediate -w stop
else "$1" -D "$2" -m immediate -w stop; fi
rm -rf "$3""#;
    let args = |cmd: &mut Command| {
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("sh")
            .arg(pg_ctl)
            .arg(data)
            .arg(dir)
            .arg(if as_postgres { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut with_setsid = Command::new("setsid");
    with_setsid.arg("sh");
    args(&mut with_setsid);
    let child = match with_setsid.spawn() {
        Ok(child) => child,
        Err(_) => {
            let mut plain = Command::new("sh");
            args(&mut plain);
            plain.spawn().map_err(|e| format!("cannot start the cleanup watchdog: {e}"))?
        }
    };
    child.stdin.ok_or_else(|| "the cleanup watchdog has no stdin".to_string())
}
