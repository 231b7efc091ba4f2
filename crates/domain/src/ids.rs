//! Azure identifiers as types that can only hold valid values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A GUID as Azure writes it: 36 characters, lowercase on output. Tenant ids, client (app) ids,
/// object ids and subscription ids are all of this shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AzureUuid(uuid::Uuid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a UUID: expected 36 characters like 00000000-0000-0000-0000-000000000000")]
pub struct InvalidUuid(pub String);

impl AzureUuid {
    pub fn new_v4() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl FromStr for AzureUuid {
    type Err = InvalidUuid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the hyphenated 36-character form: Azure never accepts braces or URNs here.
        if s.len() != 36 {
            return Err(InvalidUuid(s.to_string()));
        }
        uuid::Uuid::try_parse(s).map(Self).map_err(|_| InvalidUuid(s.to_string()))
    }
}

impl TryFrom<String> for AzureUuid {
    type Error = InvalidUuid;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AzureUuid> for String {
    fn from(v: AzureUuid) -> String {
        v.to_string()
    }
}

impl fmt::Display for AzureUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

/// A Key Vault name: 3–24 characters, letters, digits and hyphens, starting with a letter,
/// ending with a letter or digit, no consecutive hyphens. Stored lowercase (vault names are
/// case-insensitive DNS labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VaultName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{name}' is not a valid Key Vault name: {why}")]
pub struct InvalidVaultName {
    pub name: String,
    pub why: &'static str,
}

impl VaultName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VaultName {
    type Err = InvalidVaultName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidVaultName { name: s.to_string(), why };
        if !(3..=24).contains(&s.len()) {
            return Err(bad("it must be 3 to 24 characters long"));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("it may contain only letters, digits and hyphens"));
        }
        if !s.as_bytes()[0].is_ascii_alphabetic() {
            return Err(bad("it must start with a letter"));
        }
        if s.ends_with('-') {
            return Err(bad("it must end with a letter or digit"));
        }
        if s.contains("--") {
            return Err(bad("it must not contain consecutive hyphens"));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for VaultName {
    type Error = InvalidVaultName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<VaultName> for String {
    fn from(v: VaultName) -> String {
        v.0
    }
}

impl fmt::Display for VaultName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Key Vault key name: `^[0-9a-zA-Z-]{1,127}$`. Case is preserved; Key Vault compares
/// names case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid key name: use 1 to 127 letters, digits and hyphens")]
pub struct InvalidKeyName(pub String);

impl KeyName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyName {
    type Err = InvalidKeyName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if (1..=127).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidKeyName(s.to_string()))
        }
    }
}

impl TryFrom<String> for KeyName {
    type Error = InvalidKeyName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KeyName> for String {
    fn from(v: KeyName) -> String {
        v.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key version: 32 hexadecimal characters, stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyVersion(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid key version: expected 32 hexadecimal characters")]
pub struct InvalidKeyVersion(pub String);

impl KeyVersion {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A fresh random version, as Key Vault mints them.
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl FromStr for KeyVersion {
    type Err = InvalidKeyVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(InvalidKeyVersion(s.to_string()))
        }
    }
}

impl TryFrom<String> for KeyVersion {
    type Error = InvalidKeyVersion;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KeyVersion> for String {
    fn from(v: KeyVersion) -> String {
        v.0
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_requires_hyphenated_form() {
        assert!("00000000-0000-0000-0000-000000000000".parse::<AzureUuid>().is_ok());
        assert!("00000000000000000000000000000000".parse::<AzureUuid>().is_err());
        assert!("{00000000-0000-0000-0000-000000000000}".parse::<AzureUuid>().is_err());
        assert_eq!(
            "ABCDEF00-0000-0000-0000-000000000000".parse::<AzureUuid>().unwrap().to_string(),
            "abcdef00-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn vault_name_rules() {
        assert_eq!("EXAMPLEKeyVault".parse::<VaultName>().unwrap().as_str(), "examplekeyvault");
        for bad in ["ab", "1abc", "abc-", "a--b", "a_b", "abcdefghijklmnopqrstuvwxy"] {
            assert!(bad.parse::<VaultName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn key_name_and_version_rules() {
        assert!("my-Key-1".parse::<KeyName>().is_ok());
        assert!("".parse::<KeyName>().is_err());
        assert!("a/b".parse::<KeyName>().is_err());
        assert!("78deebed173b48e48f55abf87ed4cf71".parse::<KeyVersion>().is_ok());
        assert!("78deebed".parse::<KeyVersion>().is_err());
        assert_eq!(KeyVersion::new_random().as_str().len(), 32);
    }
}
