//! The atrest data node.
//!
//! A node keeps every byte it stores encrypted under keys that only the customer's Key Vault key
//! unlocks: customer key (Key Vault RSA) → node master key ([`keystore`]) → data keys → engine
//! pages ([`engine`]). The node core knows nothing of how an engine stores; an engine knows
//! nothing of Key Vault.
//!
//! **Invariants:**
//! - An unwrapped key exists only in memory, in [`secret::KeyBytes`] (zeroized on drop, redacted
//!   in `Debug`); it is never logged, returned or written to disk.
//! - The customer key is used only through Key Vault `encrypt`/`decrypt` with RSA-OAEP-256: the
//!   seeds' minimum permissions are `get`, `encrypt`, `decrypt`.
//! - `keystore.json` changes only by an atomic, durable replace: at every instant the file on
//!   disk opens with the customer key.

pub mod control;
pub mod data_api;
pub mod engine;
pub mod identity;
pub mod keystore;
pub mod persist;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod tokens;

pub use engine::sqlcipher::{BatchOp, BatchResult, Document, Durability, Encryption, Page, SqlCipherEngine};
pub use engine::{Engine, EngineError, Health};
pub use keystore::{DataKeys, Keystore, KeystoreError, Unlocked};
pub use runtime::{Gate, NodeError, NodeHandle, NodeOptions, NodeState, Status};
pub use secret::KeyBytes;
