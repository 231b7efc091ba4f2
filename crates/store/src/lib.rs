//! Control-plane persistence for atrest: organizations and projects, API keys and service
//! accounts with their roles, OAuth tokens, Digest nonces, Cloud Provider Access roles, the
//! Encryption at Rest configuration with its validation state and private endpoints, clusters with
//! their join tokens, data nodes and data credentials, events, and leases that let several control-plane replicas share the work.
//!
//! ```no_run
//! # async fn demo() -> Result<(), atrest_store::StoreError> {
//! use atrest_store::Store;
//! let store = Store::open("sqlite://data/atrest.db").await?; // or "postgres://user@host/db"
//! # Ok(()) }
//! ```
//!
//! # Shape
//! [`Store`] is one concrete, cheaply clonable handle over either an embedded SQLite file (the
//! default; one control plane) or PostgreSQL (several replicas). It is a struct over an enum of
//! connection pools rather than a trait with two implementations because the two backends share
//! nearly all of their SQL: each operation is written once and expanded for each pool type by the
//! `with_backend!` macro, so the backends cannot drift apart, calls are statically dispatched, and
//! callers hold a `Store` instead of an `Arc<dyn Trait>` with boxed futures. The few
//! dialect-specific statements (PostgreSQL's `FOR UPDATE SKIP LOCKED`) sit side by side.
//!
//! # Rules the store keeps
//! - Only domain types cross the API: no `sqlx` type appears in a public signature, and every
//!   failure is a [`StoreError`] whose variant carries the domain meaning (`NotFound`, `Conflict`,
//!   `InUse`, `StaleWrite`).
//! - No secret in clear: API key HA1s and static Azure secrets arrive encrypted by the control
//!   plane, client secrets and access tokens arrive as SHA-256 digests.
//! - Time is a parameter (`now`) of every operation that depends on it, so tests control it and
//!   all replicas agree on what "expired" means as long as their clocks roughly agree (lease TTLs
//!   must be much longer than the clock skew between replicas).
//! - A write that fails changes nothing: multi-statement writes run in one transaction.
//! - Concurrency is settled in the database, never in memory: optimistic versions on the
//!   Encryption at Rest configuration, single-statement atomic upserts for nonces and leases, and
//!   atomic claims of due revalidations, so two replicas never double-process.
//!
//! # Backends
//! - `sqlite://PATH` (relative or, with a third slash, absolute): the file and its directory are
//!   created if missing; WAL journal, `synchronous=FULL` (an acknowledged write survives a power
//!   cut), foreign keys on, and a 5-second busy timeout so concurrent writers queue instead of
//!   failing. Several `Store`s may open the same file.
//! - `postgres://...` / `postgresql://...`: any libpq-style URL sqlx accepts (TLS through rustls).
//!
//! Migrations (see `migrate.rs`) run at open and are idempotent.

mod codec;
mod error;
mod ids;
mod migrate;
mod model;

mod cloud_access;
mod clusters;
mod ear;
mod events;
mod kek_canary;
mod leases;
mod nonces;
mod principals;
mod private_endpoints;
mod shared_tokens;
mod tenancy;

#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use clusters::{
    Cluster, ClusterDeletion, ClusterEarProvider, ClusterUpdate, DataCredential, JoinOutcome, JoinToken, NewNode, Node,
    NodeReport,
};
pub use error::{Result, StoreError};
pub use ids::{
    ApiKeyId, ClientId, ClusterId, DataCredentialId, EventId, GroupId, InvalidId, JoinTokenId, NodeId, OrgId, RoleId,
};
pub use kek_canary::KekCanary;
pub use model::{
    AccessToken, ApiKey, AzureCredentials, AzureKeyVaultConfig, CloudProvider, CloudProviderAccessRole, ConfigVersion,
    EarConfigWrite, Event, EventPage, Group, GroupRole, Lease, NonceCheck, OrgRole, Organization, Page, Principal,
    Roles, ServiceAccount, StatusVersion, StoredEarConfig, UnknownRole, ValidationState, ValidationStatus,
};
pub use private_endpoints::{
    EarPrivateEndpoint, EarPrivateEndpointDeletion, EarPrivateEndpointId, EarPrivateEndpointStatus,
    EarPrivateEndpointTransition,
};
pub use shared_tokens::SharedToken;

/// Expands `$body` once per backend with `$pool` bound to that backend's pool.
///
/// This is how every operation is written once for both databases: inside `$body`, `$pool` is a
/// `SqlitePool` in one expansion and a `PgPool` in the other, and rows decode through
/// [`codec::Cols`], which both row types implement.
macro_rules! with_backend {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::Backend::Sqlite($pool) => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_backend;

/// Like [`with_backend!`], but with a statement that differs per dialect: `$sql` is bound to the
/// SQLite text in the first expansion and to the PostgreSQL text in the second.
macro_rules! with_dialect {
    ($store:expr, $sql:ident = ($sqlite:expr, $postgres:expr), |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::Backend::Sqlite($pool) => {
                let $sql: &'static str = $sqlite;
                $body
            }
            $crate::Backend::Postgres($pool) => {
                let $sql: &'static str = $postgres;
                $body
            }
        }
    };
}
pub(crate) use with_dialect;

/// Starts a transaction that will write.
///
/// On SQLite this is `BEGIN IMMEDIATE`: the write lock is taken up front (waiting up to the busy
/// timeout), because a deferred transaction that reads first and writes later fails outright with
/// `SQLITE_BUSY` if another connection wrote in between. On PostgreSQL a plain `BEGIN` is right:
/// row locks and `ON CONFLICT` settle concurrency.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.begin().await?)
    }
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Tuning for [`Store::open_with`]. The defaults suit one control-plane process.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections in the pool (default 8). With PostgreSQL, replicas × this must stay below the
    /// server's `max_connections`.
    pub max_connections: u32,
    /// How long an operation waits for a free connection before failing (default 10 s).
    pub acquire_timeout: Duration,
    /// How long a SQLite writer waits for another writer's lock (default 5 s).
    pub sqlite_busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The control-plane store. Clone it freely: clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately not the URL: it may carry a password.
        f.debug_struct("Store").field("backend", &self.kind()).finish()
    }
}

/// Where a store URL points, parsed but not yet opened.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Sqlite(PathBuf),
    Postgres,
}

fn parse_target(url: &str) -> Result<Target> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        if rest.is_empty() || rest.contains('?') || rest == ":memory:" {
            return Err(StoreError::Invalid(
                "a SQLite store URL is sqlite://PATH (e.g. sqlite://data/atrest.db, or sqlite:///abs/atrest.db); \
                 query parameters and in-memory databases are not supported"
                    .into(),
            ));
        }
        Ok(Target::Sqlite(PathBuf::from(rest)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Target::Postgres)
    } else {
        Err(StoreError::Invalid(
            "the store URL must start with sqlite:// or postgres:// (postgresql:// is accepted too)".into(),
        ))
    }
}

/// Creates the SQLite file with mode 0600 (or tightens an existing one) before SQLite opens
/// it: SQLite gives the `-wal` and `-shm` files it creates the database file's mode, so all
/// three stay private to the owner. SQLite's own create would honour the umask (often 0644).
fn create_private_file(path: &Path) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let fail =
        |e: std::io::Error| StoreError::Backend(format!("cannot create the SQLite store {}: {e}", path.display()));
    let file = opts.open(path).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        for side in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(side);
            if let Ok(f) = std::fs::File::open(&p) {
                f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
            }
        }
    }
    drop(file);
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store at `url` with default options and applies pending
    /// migrations. See the crate docs for the accepted URLs.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_with(url, &StoreOptions::default()).await
    }

    /// [`Store::open`] with explicit pool options.
    pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Store> {
        let backend = match parse_target(url)? {
            Target::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Backend(format!("cannot create the directory {}: {e}", dir.display()))
                    })?;
                }
                create_private_file(&path)?;
                let connect = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(options.sqlite_busy_timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(|e| StoreError::Backend(format!("cannot open SQLite store {}: {e}", path.display())))?;
                migrate::sqlite().run(&pool).await?;
                Backend::Sqlite(pool)
            }
            Target::Postgres => {
                let connect = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?;
                migrate::postgres().run(&pool).await?;
                Backend::Postgres(pool)
            }
        };
        Ok(Store { backend })
    }

    /// Which database this store uses.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// One round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every pooled connection and waits for them to finish. Clones become unusable.
    pub async fn close(&self) {
        with_backend!(self, |pool| pool.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_parsed_or_explained() {
        assert_eq!(parse_target("sqlite://data/atrest.db").unwrap(), Target::Sqlite("data/atrest.db".into()));
        assert_eq!(parse_target("sqlite:///var/lib/atrest.db").unwrap(), Target::Sqlite("/var/lib/atrest.db".into()));
        assert_eq!(parse_target("postgres://u@h/db").unwrap(), Target::Postgres);
        assert_eq!(parse_target("postgresql://u@h/db").unwrap(), Target::Postgres);
        for bad in ["sqlite://", "sqlite://:memory:", "sqlite://x.db?mode=ro", "mysql://h/db", "data/atrest.db"] {
            let err = parse_target(bad).unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{bad}: {err}");
        }
    }
}
