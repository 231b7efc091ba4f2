//! The client side of Azure for atrest: Entra ID tokens as the platform's multi-tenant app
//! (certificate assertion or federated token; a client secret only for the legacy mode), the
//! Key Vault keys data plane, and the ARM reads validation needs.
//!
//! Layout:
//! - [`transport`]: one pooled HTTPS client; the endpoint override that sends every Azure host
//!   name to the emulator is its only knob, so the emulator and Azure share every code path.
//! - [`credential`]: certificate assertions (PS256 `x5t#S256` or RS256 `x5t`), federated token
//!   files, client secrets.
//! - [`token`] asks Entra; [`token_cache`] keeps one single-flight cache per
//!   (authority, tenant, client, scope); [`entra_error`] turns AADSTS codes into fixes.
//! - [`keyvault`]: get key, list versions, resolve an unversioned id to the latest usable
//!   version, wrap/unwrap, encrypt/decrypt. [`arm`]: vault properties, access policies, role
//!   assignments.
//! - [`retry`]: backoff with `Retry-After` inside a total budget. [`error`]: the classified error
//!   (denied / not found / disabled / unreachable / throttled / misconfigured) every call returns.
//!
//! This crate knows Azure's JSON and nothing of Atlas's or the store's. No token, assertion,
//! secret or unwrapped key is ever logged, and no `Debug` output shows one.

#![warn(missing_docs)]

pub mod arm;
mod client;
pub mod credential;
pub mod entra_error;
pub mod error;
mod http;
pub mod keyvault;
pub mod retry;
pub mod token;
pub mod token_cache;
pub mod token_shared;
pub mod transport;

pub use arm::{AccessPolicy, ArmClient, RoleAssignment, VaultProperties, VaultRef};
pub use client::{AzureClient, ClientConfig};
pub use credential::{AssertionAlgorithm, CertificateCredential, ClientCredential, CredentialKind, FederatedTokenFile};
pub use error::{Error, ErrorKind, Service};
pub use keyvault::{Ciphertext, EncryptionAlgorithm, KeyProperties, KeyVaultClient, KeyVersionInfo, Plaintext};
pub use retry::RetryPolicy;
pub use token::{TokenProvider, TokenSource};
pub use token_cache::{AccessToken, CacheKey, TokenCache, TokenCacheStats};
pub use token_shared::{SharedError, SharedTokens, StoredToken};
pub use transport::{EndpointOverride, Transport, TransportConfig};
