//! Domain types shared by every atrest crate.
//!
//! This crate does no IO and knows no wire format. Each type here is "parse, don't validate":
//! once you hold a [`KeyIdentifier`] or an [`AzureEnvironment`], it is valid, and the
//! constructors say exactly what is wrong with bad input so callers can pass the message on.

mod cloud;
mod ids;
mod key_identifier;

pub use cloud::{AzureEnvironment, HostKind, UnknownAzureEnvironment};
pub use ids::{
    AzureUuid, InvalidKeyName, InvalidKeyVersion, InvalidUuid, InvalidVaultName, KeyName, KeyVersion, VaultName,
};
pub use key_identifier::{KeyIdentifier, KeyIdentifierError};
