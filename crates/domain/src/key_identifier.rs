//! `keyIdentifier`: the URL of a Key Vault key, with or without a version.
//!
//! `https://{vault}.{vault dns suffix}/keys/{name}[/{version}]`. The DNS suffix decides the cloud,
//! so a parsed identifier always knows its [`AzureEnvironment`].

use std::fmt;
use std::str::FromStr;

use crate::{AzureEnvironment, HostKind, KeyName, KeyVersion, VaultName};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyIdentifier {
    environment: AzureEnvironment,
    vault: VaultName,
    name: KeyName,
    version: Option<KeyVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyIdentifierError {
    #[error("keyIdentifier '{0}' is not a URL; expected https://<vault>.vault.azure.net/keys/<key>[/<version>]")]
    NotAUrl(String),
    #[error("keyIdentifier '{0}' must use https")]
    NotHttps(String),
    #[error(
        "keyIdentifier '{0}' has a port, a user or a query; give only https://<vault>.<suffix>/keys/<key>[/<version>]"
    )]
    Extraneous(String),
    #[error(
        "keyIdentifier host '{host}' is not a Key Vault host; expected <vault>.vault.azure.net, <vault>.vault.azure.cn or <vault>.vault.usgovcloudapi.net"
    )]
    NotAVaultHost { host: String },
    #[error("keyIdentifier '{0}' has no key name; expected https://<vault>.<suffix>/keys/<key>[/<version>]")]
    MissingKeyName(String),
    #[error("keyIdentifier path '{0}' must be /keys/<key> or /keys/<key>/<version>")]
    BadPath(String),
    #[error(transparent)]
    Vault(#[from] crate::InvalidVaultName),
    #[error(transparent)]
    Name(#[from] crate::InvalidKeyName),
    #[error(transparent)]
    Version(#[from] crate::InvalidKeyVersion),
}

impl KeyIdentifier {
    pub fn new(environment: AzureEnvironment, vault: VaultName, name: KeyName, version: Option<KeyVersion>) -> Self {
        Self { environment, vault, name, version }
    }
    pub fn environment(&self) -> AzureEnvironment {
        self.environment
    }
    pub fn vault(&self) -> &VaultName {
        &self.vault
    }
    pub fn name(&self) -> &KeyName {
        &self.name
    }
    pub fn version(&self) -> Option<&KeyVersion> {
        self.version.as_ref()
    }
    /// `https://{vault}.{suffix}` (no trailing slash).
    pub fn vault_url(&self) -> String {
        format!("https://{}.{}", self.vault, self.environment.vault_dns_suffix())
    }
    /// The same key pinned to `version`.
    pub fn with_version(&self, version: KeyVersion) -> Self {
        Self { version: Some(version), ..self.clone() }
    }
    /// The same key without a version.
    pub fn unversioned(&self) -> Self {
        Self { version: None, ..self.clone() }
    }
}

impl FromStr for KeyIdentifier {
    type Err = KeyIdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = url::Url::parse(s).map_err(|_| KeyIdentifierError::NotAUrl(s.to_string()))?;
        if url.scheme() != "https" {
            return Err(KeyIdentifierError::NotHttps(s.to_string()));
        }
        if url.port().is_some() || !url.username().is_empty() || url.query().is_some() || url.fragment().is_some() {
            return Err(KeyIdentifierError::Extraneous(s.to_string()));
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let (environment, vault) = match AzureEnvironment::classify_host(&host) {
            Some((env, HostKind::Vault(v))) => (env, v.parse::<VaultName>()?),
            _ => return Err(KeyIdentifierError::NotAVaultHost { host }),
        };
        let path = url.path();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["keys"] | ["keys", ""] | [""] => Err(KeyIdentifierError::MissingKeyName(s.to_string())),
            ["keys", name] | ["keys", name, ""] => Ok(Self { environment, vault, name: name.parse()?, version: None }),
            ["keys", name, version] => {
                Ok(Self { environment, vault, name: name.parse()?, version: Some(version.parse()?) })
            }
            _ => Err(KeyIdentifierError::BadPath(path.to_string())),
        }
    }
}

impl fmt::Display for KeyIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/keys/{}", self.vault_url(), self.name)?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versioned_and_unversioned() {
        let k: KeyIdentifier =
            "https://EXAMPLEKeyVault.vault.azure.net/keys/EXAMPLEKey/d891821e3d364e9eb88fbd3d11807b86".parse().unwrap();
        assert_eq!(k.environment(), AzureEnvironment::Azure);
        assert_eq!(k.vault().as_str(), "examplekeyvault");
        assert_eq!(k.name().as_str(), "EXAMPLEKey");
        assert_eq!(k.version().unwrap().as_str(), "d891821e3d364e9eb88fbd3d11807b86");
        let u: KeyIdentifier = "https://kv1.vault.usgovcloudapi.net/keys/k".parse().unwrap();
        assert_eq!(u.environment(), AzureEnvironment::AzureUsGovernment);
        assert!(u.version().is_none());
        assert_eq!(u.to_string(), "https://kv1.vault.usgovcloudapi.net/keys/k");
    }

    #[test]
    fn rejects_each_bad_shape_with_a_specific_error() {
        use KeyIdentifierError as E;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("http://kv1.vault.azure.net/keys/k", |e| matches!(e, E::NotHttps(_))),
            ("kv1.vault.azure.net/keys/k", |e| matches!(e, E::NotAUrl(_))),
            ("https://kv1.example.com/keys/k", |e| matches!(e, E::NotAVaultHost { .. })),
            ("https://kv1.vault.azure.net/keys/", |e| matches!(e, E::MissingKeyName(_))),
            ("https://kv1.vault.azure.net/", |e| matches!(e, E::MissingKeyName(_))),
            ("https://kv1.vault.azure.net/secrets/k", |e| matches!(e, E::BadPath(_))),
            ("https://kv1.vault.azure.net/keys/k/notaversion", |e| matches!(e, E::Version(_))),
            ("https://kv1.vault.azure.net:8443/keys/k", |e| matches!(e, E::Extraneous(_))),
            ("https://k.vault.azure.net/keys/k", |e| matches!(e, E::Vault(_))),
            ("https://kv1.vault.azure.net/keys/a_b", |e| matches!(e, E::Name(_))),
        ];
        for (input, check) in cases {
            let err = input.parse::<KeyIdentifier>().unwrap_err();
            assert!(check(&err), "{input}: {err:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn display_parse_round_trip(vault in "[a-z][a-z0-9]{2,22}", name in "[A-Za-z0-9-]{1,40}", ver in proptest::option::of("[0-9a-f]{32}")) {
            let text = match &ver { Some(v) => format!("https://{vault}.vault.azure.cn/keys/{name}/{v}"), None => format!("https://{vault}.vault.azure.cn/keys/{name}") };
            let k: KeyIdentifier = text.parse().unwrap();
            proptest::prop_assert_eq!(k.to_string(), text);
        }
    }
}
