//! Who the node is: `node.json` (public: ids and the control plane's URL) and
//! `node-credential` (the node credential, 0600), both in the data dir, both written by
//! [`persist::write_atomic`]. `node.json` is written last: its presence means "joined".

use std::fs;
use std::io;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::persist;

/// The identity file's name.
pub const IDENTITY_FILE: &str = "node.json";
/// The credential file's name.
pub const CREDENTIAL_FILE: &str = "node-credential";

/// A joined node's identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub node_id: String,
    pub group_id: String,
    pub cluster_name: String,
    #[serde(default)]
    pub cluster_id: String,
    pub control_plane: String,
}

/// Errors reading or writing the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path} is unreadable ({reason}); the node cannot prove who it is. Revoke it (DELETE .../nodes/{{nodeId}}) and join a fresh data dir with a new join token"
    )]
    Corrupt { path: String, reason: String },
}

/// Reads the identity and credential in `dir`; `Ok(None)` if the node never finished joining.
pub fn load(dir: &Path) -> Result<Option<(Identity, SecretString)>, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path: path.display().to_string(), source }),
    };
    let identity: Identity = serde_json::from_slice(&bytes)
        .map_err(|e| IdentityError::Corrupt { path: path.display().to_string(), reason: e.to_string() })?;
    let cred_path = dir.join(CREDENTIAL_FILE);
    let credential = Zeroizing::new(
        fs::read_to_string(&cred_path)
            .map_err(|e| IdentityError::Corrupt { path: cred_path.display().to_string(), reason: e.to_string() })?,
    );
    let credential = credential.trim();
    if credential.is_empty() {
        return Err(IdentityError::Corrupt { path: cred_path.display().to_string(), reason: "it is empty".into() });
    }
    Ok(Some((identity, SecretString::from(credential.to_string()))))
}

/// Writes the credential, then the identity (each atomic and durable).
pub fn save(dir: &Path, identity: &Identity, credential: &SecretString) -> Result<(), IdentityError> {
    let io = |name: &str| {
        let path = dir.join(name).display().to_string();
        move |source| IdentityError::Io { path, source }
    };
    persist::private_dir(dir).map_err(io(""))?;
    persist::write_atomic(dir, CREDENTIAL_FILE, credential.expose_secret().as_bytes()).map_err(io(CREDENTIAL_FILE))?;
    let json = serde_json::to_vec_pretty(identity).expect("identity serializes");
    persist::write_atomic(dir, IDENTITY_FILE, &json).map_err(io(IDENTITY_FILE))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn round_trips_with_a_private_credential_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("n");
        assert!(load(&d).unwrap().is_none());
        let id = Identity {
            node_id: "n1".into(),
            group_id: "g".into(),
            cluster_name: "Cluster0".into(),
            cluster_id: "c".into(),
            control_plane: "http://127.0.0.1:1".into(),
        };
        save(&d, &id, &SecretString::from("atrn_n1_secret")).unwrap();
        let (back, cred) = load(&d).unwrap().unwrap();
        assert_eq!(back, id);
        assert_eq!(cred.expose_secret(), "atrn_n1_secret");
        let mode = fs::metadata(d.join(CREDENTIAL_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The identity without its credential is a broken node, not a fresh one.
        fs::remove_file(d.join(CREDENTIAL_FILE)).unwrap();
        assert!(matches!(load(&d), Err(IdentityError::Corrupt { .. })));
    }
}
