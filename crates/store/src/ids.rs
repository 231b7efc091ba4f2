//! Identifiers the store hands out and accepts: parsed once, valid forever after.
//!
//! Atlas identifies organizations, projects (groups), API keys, Cloud Provider Access roles and
//! events with 24 lowercase hex characters (a MongoDB ObjectId). Each kind gets its own newtype so
//! a `RoleId` can never be passed where a `GroupId` is expected. Service accounts are identified
//! by a client id of the form `mdb_sa_id_<24 hex>`, as in Atlas.

use std::fmt;
use std::str::FromStr;

/// The input was not 24 lowercase hex characters (or not a service account client id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {kind}: expected {expected}")]
pub struct InvalidId {
    /// The rejected input (ids are not secrets, so echoing it back is safe).
    pub value: String,
    /// What was being parsed, e.g. "group id".
    pub kind: &'static str,
    /// The shape that would have been accepted.
    pub expected: &'static str,
}

const HEX24: &str = "24 lowercase hexadecimal characters, like 5f1d7a2b9c3e4d5f6a7b8c9d";

fn is_hex24(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex24() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

macro_rules! hex24_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses 24 lowercase hex characters. Uppercase is rejected rather than folded:
            /// Atlas ids are lowercase, and accepting two spellings would make two keys for one row.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if is_hex24(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidId { value: s.to_owned(), kind: $kind, expected: HEX24 })
                }
            }

            /// A fresh random id (96 random bits, so collisions are not a practical concern).
            pub fn new_random() -> Self {
                Self(random_hex24())
            }

            /// The 24 hex characters.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

hex24_id!(
    /// An Atlas organization id.
    OrgId,
    "organization id"
);
hex24_id!(
    /// An Atlas project id (Atlas calls projects "groups" in its API paths).
    GroupId,
    "group id"
);
hex24_id!(
    /// The id of a programmatic API key (not its public key, which is what Digest sends).
    ApiKeyId,
    "API key id"
);
hex24_id!(
    /// A Cloud Provider Access role id: the Azure `_id`, used as `azureKeyVault.roleId`.
    RoleId,
    "role id"
);
hex24_id!(
    /// An event id.
    EventId,
    "event id"
);

hex24_id!(
    /// A cluster id (the Atlas cluster's `id`).
    ClusterId,
    "cluster id"
);
hex24_id!(
    /// A data node id, assigned when the node joins its cluster.
    NodeId,
    "node id"
);
hex24_id!(
    /// The id of a join token (the public part of `atrj_<id>_<secret>`).
    JoinTokenId,
    "join token id"
);
hex24_id!(
    /// The id of a cluster's data credential (the public part of `atrd_<id>_<secret>`).
    DataCredentialId,
    "data credential id"
);

/// A service account's OAuth client id, `mdb_sa_id_` followed by 24 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

const CLIENT_ID_PREFIX: &str = "mdb_sa_id_";

impl ClientId {
    /// Parses `mdb_sa_id_<24 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        match s.strip_prefix(CLIENT_ID_PREFIX) {
            Some(rest) if is_hex24(rest) => Ok(Self(s.to_owned())),
            _ => Err(InvalidId {
                value: s.to_owned(),
                kind: "service account client id",
                expected: "mdb_sa_id_ followed by 24 lowercase hexadecimal characters",
            }),
        }
    }

    /// A fresh random client id.
    pub fn new_random() -> Self {
        Self(format!("{CLIENT_ID_PREFIX}{}", random_hex24()))
    }

    /// The whole client id, prefix included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClientId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex24_ids_accept_only_lowercase_hex_of_length_24() {
        assert!(GroupId::parse("5f1d7a2b9c3e4d5f6a7b8c9d").is_ok());
        for bad in [
            "",
            "5f1d7a2b9c3e4d5f6a7b8c9",
            "5f1d7a2b9c3e4d5f6a7b8c9d0",
            "5F1D7A2B9C3E4D5F6A7B8C9D",
            "zf1d7a2b9c3e4d5f6a7b8c9d",
        ] {
            let err = GroupId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "group id");
            assert!(err.to_string().contains("24 lowercase hexadecimal"), "{err}");
        }
    }

    #[test]
    fn random_ids_parse_and_differ() {
        let a = RoleId::new_random();
        let b = RoleId::new_random();
        assert_ne!(a, b);
        assert_eq!(RoleId::parse(a.as_str()).unwrap(), a);
        let c = ClientId::new_random();
        assert_eq!(ClientId::parse(c.as_str()).unwrap(), c);
        assert!(c.as_str().starts_with("mdb_sa_id_"));
    }

    #[test]
    fn client_ids_need_the_prefix() {
        assert!(ClientId::parse("5f1d7a2b9c3e4d5f6a7b8c9d").is_err());
        assert!(ClientId::parse("mdb_sa_id_5f1d7a2b9c3e4d5f6a7b8c9").is_err());
    }
}
