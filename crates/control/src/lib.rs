//! The atrest control plane: the Atlas Admin API v2 subset for Cloud Provider Access and
//! Encryption at Rest, authenticated with Digest API keys or OAuth service accounts, validating
//! customer keys against Azure with short-lived tokens (no customer secret in the secretless
//! mode), revalidating in the background, and recording Atlas-style events.
//!
//! ```text
//!  request ─► metrics ─► [atlas media: Accept / envelope / pretty] ─► [auth: Digest | Bearer]
//!          ─► api::{groups, cpa, ear, events} ─► store (SQLite | PostgreSQL)
//!                                   └─► validate ─► atrest_azure (Entra, ARM, Key Vault)
//!  jobs: background revalidation (claims due projects in the store; one replica each)
//! ```
//!
//! Start one with [`ControlPlane::start`]; `atrest serve --config FILE` does exactly that.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod datadir;
pub mod ear;
pub mod error;
pub mod files;
pub mod jobs;
pub mod kek;
pub mod key_age;
pub mod media;
pub mod metrics;
pub mod server;
pub mod shared_tokens;
pub mod state;
pub mod validate;

pub use bootstrap::BootstrapInfo;
pub use config::Config;
pub use server::ControlPlane;
pub use state::AppState;
