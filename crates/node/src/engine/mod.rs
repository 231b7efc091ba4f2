//! The engine interface: what the node's core (keystore, checks, lifecycle, reports) needs of a
//! storage engine, and nothing of how it stores.
//!
//! Two engines are planned behind it: the embedded one ([`sqlcipher::SqlCipherEngine`], the
//! default, with a document data API) and MariaDB (a supervised `mariadbd` whose key-management
//! plugin the node serves with the data keys by id; `shared/reference/data-nodes.md` §1). Hence
//! [`Engine::open`] takes every data key, not just the current one.
//!
//! The trait is synchronous: SQLite is a blocking library and supervising a process is too. The
//! node calls it from `spawn_blocking` (MariaDB's open takes about a second to start mariadbd,
//! its close up to the shutdown bound).

pub mod mariadb;
pub mod sqlcipher;

use crate::keystore::DataKeys;

/// An engine's health, as the node reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not open: no key has been given, or it was taken away by [`Engine::close`].
    Closed,
    /// Open and answering.
    Serving,
    /// Open but failing (the reason says what and what to do).
    Failing(String),
}

/// Errors opening or running an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The key does not open the existing data (wrong keystore, or the files were replaced).
    #[error("the data key does not open {what}: {detail}")]
    WrongKey { what: String, detail: String },
    /// The engine's files could not be created, opened or written.
    #[error("{what}: {detail}")]
    Storage { what: String, detail: String },
    /// The engine was asked to work while closed.
    #[error("the engine is closed: the node has no key (it is locked or shut down)")]
    Closed,
    /// The build links no encrypting engine (a plain SQLite): refusing to write clear pages.
    #[error("{0}")]
    NotEncrypting(String),
}

/// A storage engine that keeps its data encrypted under the node's data keys.
pub trait Engine: Send + Sync {
    /// A short name for reports and logs (`embedded`, `mariadb`).
    fn kind(&self) -> &'static str;

    /// Opens (creating on first use) the data with `keys`. The engine may keep what it derives
    /// from the keys only while open, in memory.
    fn open(&self, keys: &DataKeys) -> Result<(), EngineError>;

    /// Closes the data and forgets every key. Idempotent. After it, nothing is served.
    fn close(&self) -> Result<(), EngineError>;

    /// The engine's health now.
    fn health(&self) -> Health;

    /// What the node's status shows of the engine (`GET /v1/status`, `engine`). May block
    /// briefly (it is called from `spawn_blocking`).
    fn describe(&self) -> serde_json::Value {
        let health = match self.health() {
            Health::Closed => serde_json::json!({"state": "CLOSED"}),
            Health::Serving => serde_json::json!({"state": "SERVING"}),
            Health::Failing(why) => serde_json::json!({"state": "FAILING", "detail": why}),
        };
        serde_json::json!({"kind": self.kind(), "health": health})
    }
}
