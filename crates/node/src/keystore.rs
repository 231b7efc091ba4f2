//! The node's keystore: customer key (Key Vault RSA) → node master key → data keys.
//!
//! MongoDB's model, per node (`shared/reference/data-nodes.md` §4): the master key is 256 random
//! bits made at first start and kept on disk only as Key Vault `encrypt` output (RSA-OAEP-256),
//! together with the versioned key identifier and the algorithm, so that it can be decrypted with
//! exactly the version that encrypted it. Data keys are sealed under the master key with
//! AES-256-GCM, bound (AAD) to the node, the master-key generation and the data key's id. The
//! engines encrypt pages with the data keys.
//!
//! Consequences:
//! - The customer's key is used once per start (`decrypt`), once per check (`decrypt`, writing
//!   nothing) and once per rotation (`encrypt`); never per data operation.
//! - Rotating the customer key re-encrypts 32 bytes; rotating the master key re-seals the data
//!   keys. Neither rewrites a page.
//! - `keystore.json` is replaced only by [`persist::write_atomic`]: at every instant the file on
//!   disk is either the old keystore or the new one, both complete.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use atrest_azure::{EncryptionAlgorithm, KeyVaultClient};
use atrest_domain::KeyIdentifier;

use crate::persist;
use crate::secret::KeyBytes;

/// The keystore's file name inside the node's data dir.
pub const FILE_NAME: &str = "keystore.json";
const FORMAT: u32 = 1;
/// The only algorithm used for new blobs: the one Atlas's Azure integration and the seeds'
/// minimum permissions (`get`, `encrypt`, `decrypt`) rely on.
const ALGORITHM: EncryptionAlgorithm = EncryptionAlgorithm::RsaOaep256;

/// What can go wrong with the keystore.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// Key Vault refused or could not be reached; the kind (denied / unreachable / ...) decides
    /// what the node does.
    #[error("Key Vault: {0}")]
    KeyVault(#[from] atrest_azure::Error),
    #[error("keystore {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file exists but is not a keystore this version can read (or was edited): the node
    /// refuses to start rather than guess.
    #[error(
        "keystore {path} is unreadable: {reason}. Restore it from the node's backup; without it the node's data cannot be decrypted"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// Key Vault decrypted the blob, but what came out is not this keystore's master key.
    #[error(
        "Key Vault decrypted the master key blob, but it does not open this keystore's data keys ({reason}); the keystore does not belong to this key"
    )]
    WrongKey { reason: String },
    #[error("the operating system's random generator failed")]
    Random,
}

/// The on-disk form. Everything in it is public or ciphertext.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct KeystoreFile {
    format: u32,
    node_id: String,
    master: WrappedMaster,
    data_keys: Vec<SealedDataKey>,
    current_data_key: u32,
    /// The control plane's master-key rotation request this keystore has carried out (the
    /// node's `masterKeyRotationNonce`). Kept here, in the same atomic write as the new master
    /// key, so a request made while the node was down, or one a crash interrupted, is carried
    /// out at the next start, and a finished one is never repeated.
    #[serde(default)]
    rotation_nonce: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct WrappedMaster {
    /// The versioned key identifier that encrypted it: decrypt with exactly this one.
    key_identifier: String,
    algorithm: String,
    ciphertext: String,
    /// Incremented by every master-key rotation; part of the data keys' AAD.
    generation: u32,
    /// Unix seconds: when this blob was written (for the rotation-age alert).
    wrapped_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SealedDataKey {
    id: u32,
    nonce: String,
    ciphertext: String,
    created_at: i64,
}

/// A keystore as read from disk: ciphertext only, no key material.
#[derive(Clone, Debug)]
pub struct Keystore {
    dir: PathBuf,
    file: KeystoreFile,
    key_identifier: KeyIdentifier,
}

/// The unlocked keys, in memory only. Dropping it zeroizes every key.
#[derive(Debug)]
pub struct Unlocked {
    master: KeyBytes,
    data: DataKeys,
}

/// The data keys an engine needs, by id. The engine opens with [`DataKeys::current`]; an engine
/// that keeps several generations of pages (MariaDB's key versions) looks older ones up by id.
#[derive(Debug)]
pub struct DataKeys {
    current: u32,
    keys: BTreeMap<u32, KeyBytes>,
}

impl DataKeys {
    /// One key, id 1: for engines opened outside a keystore (the storage benchmark, tests).
    pub fn single(key: KeyBytes) -> Self {
        Self { current: 1, keys: BTreeMap::from([(1, key)]) }
    }

    /// The id and key new data is written with.
    pub fn current(&self) -> (u32, &KeyBytes) {
        (self.current, &self.keys[&self.current])
    }

    /// A key by id.
    pub fn get(&self, id: u32) -> Option<&KeyBytes> {
        self.keys.get(&id)
    }

    /// Every id, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }
}

impl Unlocked {
    /// The data keys, for the engine.
    pub fn data_keys(&self) -> &DataKeys {
        &self.data
    }

    /// The master key, for the plaintext tests' grep.
    pub fn master(&self) -> &KeyBytes {
        &self.master
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn random_nonce() -> Result<[u8; NONCE_LEN], KeystoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| KeystoreError::Random)?;
    Ok(nonce)
}

fn aad(node_id: &str, generation: u32, id: u32) -> Vec<u8> {
    format!("atrest-node data key v1\0{node_id}\0{generation}\0{id}").into_bytes()
}

fn gcm(master: &KeyBytes) -> LessSafeKey {
    // A 32-byte key is always valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, master.expose()).expect("32-byte AES-256 key"))
}

fn seal(
    master: &KeyBytes,
    node_id: &str,
    generation: u32,
    id: u32,
    key: &KeyBytes,
) -> Result<SealedDataKey, KeystoreError> {
    let nonce = random_nonce()?;
    let mut buf = zeroize::Zeroizing::new(key.expose().to_vec());
    gcm(master)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(node_id, generation, id)),
            &mut *buf,
        )
        .map_err(|_| KeystoreError::Random)?;
    Ok(SealedDataKey { id, nonce: B64.encode(nonce), ciphertext: B64.encode(&buf[..]), created_at: now() })
}

fn open_sealed(
    master: &KeyBytes,
    node_id: &str,
    generation: u32,
    sealed: &SealedDataKey,
) -> Result<KeyBytes, KeystoreError> {
    let wrong = |reason: &str| KeystoreError::WrongKey { reason: format!("data key {}: {reason}", sealed.id) };
    let nonce: [u8; NONCE_LEN] =
        B64.decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or_else(|| wrong("bad nonce"))?;
    let mut buf = zeroize::Zeroizing::new(B64.decode(&sealed.ciphertext).map_err(|_| wrong("bad base64"))?);
    let plain = gcm(master)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad(node_id, generation, sealed.id)), &mut buf)
        .map_err(|_| wrong("authentication failed"))?;
    KeyBytes::from_slice(plain).ok_or_else(|| wrong("not 32 bytes"))
}

impl Keystore {
    /// The keystore path in `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads the keystore in `dir`; `Ok(None)` if there is none yet (first start).
    pub fn load(dir: &Path) -> Result<Option<Self>, KeystoreError> {
        let path = Self::path_in(dir);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeystoreError::Io { path, source }),
        };
        let corrupt = |reason: String| KeystoreError::Corrupt { path: path.clone(), reason };
        let file: KeystoreFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupt(format!("format {} (this atrest reads format {FORMAT})", file.format)));
        }
        if file.master.algorithm != ALGORITHM.as_str() {
            return Err(corrupt(format!("master key algorithm {:?}", file.master.algorithm)));
        }
        let key_identifier: KeyIdentifier = file.master.key_identifier.parse().map_err(|e| corrupt(format!("{e}")))?;
        if key_identifier.version().is_none() {
            return Err(corrupt("the master key's key identifier has no version".into()));
        }
        if !file.data_keys.iter().any(|k| k.id == file.current_data_key) {
            return Err(corrupt(format!("current data key {} is missing", file.current_data_key)));
        }
        Ok(Some(Self { dir: dir.to_path_buf(), file, key_identifier }))
    }

    /// First start: a new master key and data key, the master key encrypted by `key` (an
    /// unversioned identifier means its current version; the version Key Vault used is
    /// recorded), written durably before anything else may use it. `rotation_nonce` is the
    /// control plane's master-key rotation nonce now: a fresh master key satisfies it.
    pub async fn create(
        dir: &Path,
        node_id: &str,
        kv: &KeyVaultClient,
        key: &KeyIdentifier,
        rotation_nonce: u64,
    ) -> Result<(Self, Unlocked), KeystoreError> {
        persist::private_dir(dir).map_err(|source| KeystoreError::Io { path: dir.to_path_buf(), source })?;
        let master = KeyBytes::random().map_err(|_| KeystoreError::Random)?;
        let data_key = KeyBytes::random().map_err(|_| KeystoreError::Random)?;
        let sealed = seal(&master, node_id, 1, 1, &data_key)?;
        persist::failpoint("keystore-create-generated");
        let wrapped = kv.encrypt(key, ALGORITHM, master.expose()).await?;
        persist::failpoint("keystore-create-encrypted");
        let file = KeystoreFile {
            format: FORMAT,
            node_id: node_id.to_string(),
            master: WrappedMaster {
                key_identifier: wrapped.key_id.to_string(),
                algorithm: ALGORITHM.as_str().to_string(),
                ciphertext: B64.encode(&wrapped.value),
                generation: 1,
                wrapped_at: now(),
            },
            data_keys: vec![sealed],
            current_data_key: 1,
            rotation_nonce,
        };
        let store = Self { dir: dir.to_path_buf(), file, key_identifier: wrapped.key_id };
        store.write("keystore-create")?;
        let data = DataKeys { current: 1, keys: BTreeMap::from([(1, data_key)]) };
        Ok((store, Unlocked { master, data }))
    }

    /// The node this keystore belongs to.
    pub fn node_id(&self) -> &str {
        &self.file.node_id
    }

    /// The versioned key identifier that encrypted the master key.
    pub fn key_identifier(&self) -> &KeyIdentifier {
        &self.key_identifier
    }

    /// When the master key blob was last written (Unix seconds).
    pub fn wrapped_at(&self) -> i64 {
        self.file.master.wrapped_at
    }

    /// The master-key generation (1 at first start, +1 per master-key rotation).
    pub fn generation(&self) -> u32 {
        self.file.master.generation
    }

    /// The last master-key rotation request carried out (see [`Keystore::rotate_master`]).
    pub fn rotation_nonce(&self) -> u64 {
        self.file.rotation_nonce
    }

    fn ciphertext(&self) -> Result<Vec<u8>, KeystoreError> {
        B64.decode(&self.file.master.ciphertext).map_err(|e| KeystoreError::Corrupt {
            path: Self::path_in(&self.dir),
            reason: format!("master ciphertext: {e}"),
        })
    }

    async fn decrypt_master(&self, kv: &KeyVaultClient) -> Result<KeyBytes, KeystoreError> {
        let plain = kv.decrypt(&self.key_identifier, ALGORITHM, &self.ciphertext()?).await?;
        KeyBytes::from_slice(plain.value.expose_secret())
            .ok_or_else(|| KeystoreError::WrongKey { reason: "the decrypted master key is not 32 bytes".into() })
    }

    /// Start: one Key Vault `decrypt`, then the data keys are opened in memory.
    pub async fn unlock(&self, kv: &KeyVaultClient) -> Result<Unlocked, KeystoreError> {
        let master = self.decrypt_master(kv).await?;
        let generation = self.file.master.generation;
        let mut keys = BTreeMap::new();
        for sealed in &self.file.data_keys {
            keys.insert(sealed.id, open_sealed(&master, &self.file.node_id, generation, sealed)?);
        }
        Ok(Unlocked { master, data: DataKeys { current: self.file.current_data_key, keys } })
    }

    /// A check: one Key Vault `decrypt` of the stored blob, compared with the master key in
    /// memory. Proves the grant still works; writes nothing.
    pub async fn check(&self, kv: &KeyVaultClient, unlocked: &Unlocked) -> Result<(), KeystoreError> {
        let master = self.decrypt_master(kv).await?;
        if master.ct_eq(&unlocked.master) {
            Ok(())
        } else {
            Err(KeystoreError::WrongKey { reason: "it differs from the master key in memory".into() })
        }
    }

    /// Customer-key rotation: the master key encrypted by `new_key` (a new identifier, or the
    /// new current version behind an unversioned one), written durably; the old blob stays on
    /// disk until then. The data and the data keys are untouched.
    pub async fn rewrap(
        &mut self,
        kv: &KeyVaultClient,
        unlocked: &Unlocked,
        new_key: &KeyIdentifier,
    ) -> Result<(), KeystoreError> {
        // Prove the stored blob is the key in memory before replacing it: a rewrap must never
        // turn a keystore that opens into one that does not.
        self.check(kv, unlocked).await?;
        persist::failpoint("keystore-rewrap-decrypted");
        let wrapped = kv.encrypt(new_key, ALGORITHM, unlocked.master.expose()).await?;
        persist::failpoint("keystore-rewrap-encrypted");
        let mut next = self.clone();
        next.file.master.key_identifier = wrapped.key_id.to_string();
        next.file.master.ciphertext = B64.encode(&wrapped.value);
        next.file.master.wrapped_at = now();
        next.key_identifier = wrapped.key_id;
        // Until this write is durable the old blob is the one on disk (and it still opens).
        next.write("keystore-rewrap")?;
        *self = next;
        Ok(())
    }

    /// Master-key rotation: a new master key, the data keys re-sealed under it, the new master
    /// key encrypted by the key in use, and `nonce` (the request carried out) recorded in the
    /// same write. No page is rewritten.
    pub async fn rotate_master(
        &mut self,
        kv: &KeyVaultClient,
        unlocked: &mut Unlocked,
        nonce: u64,
    ) -> Result<(), KeystoreError> {
        let master = KeyBytes::random().map_err(|_| KeystoreError::Random)?;
        persist::failpoint("keystore-rotate-generated");
        let generation = self.file.master.generation + 1;
        let node_id = self.file.node_id.clone();
        let mut sealed = Vec::with_capacity(unlocked.data.keys.len());
        for (id, key) in &unlocked.data.keys {
            sealed.push(seal(&master, &node_id, generation, *id, key)?);
        }
        persist::failpoint("keystore-rotate-resealed");
        let wrapped = kv.encrypt(&self.key_identifier, ALGORITHM, master.expose()).await?;
        persist::failpoint("keystore-rotate-encrypted");
        let mut next = self.clone();
        next.file.master = WrappedMaster {
            key_identifier: wrapped.key_id.to_string(),
            algorithm: ALGORITHM.as_str().to_string(),
            ciphertext: B64.encode(&wrapped.value),
            generation,
            wrapped_at: now(),
        };
        next.file.data_keys = sealed;
        next.file.rotation_nonce = nonce;
        next.key_identifier = wrapped.key_id;
        next.write("keystore-rotate")?;
        *self = next;
        unlocked.master = master;
        Ok(())
    }

    /// The durable replace; `step` names its failpoints (`{step}-tmp-written`, `{step}-renamed`).
    fn write(&self, step: &str) -> Result<(), KeystoreError> {
        let bytes = serde_json::to_vec_pretty(&self.file).expect("keystore serializes");
        persist::write_atomic_at(&self.dir, FILE_NAME, &bytes, Some(step))
            .map_err(|source| KeystoreError::Io { path: Self::path_in(&self.dir), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_keys_are_bound_to_node_generation_and_id() {
        let master = KeyBytes::random().unwrap();
        let key = KeyBytes::random().unwrap();
        let sealed = seal(&master, "node-a", 1, 1, &key).unwrap();
        assert!(open_sealed(&master, "node-a", 1, &sealed).unwrap().ct_eq(&key));
        for (node, generation, id) in [("node-b", 1, 1), ("node-a", 2, 1), ("node-a", 1, 2)] {
            let mut moved = sealed.clone();
            moved.id = id;
            let err = open_sealed(&master, node, generation, &moved).unwrap_err();
            assert!(matches!(err, KeystoreError::WrongKey { .. }), "{node} {generation} {id}: {err}");
        }
        let other = KeyBytes::random().unwrap();
        assert!(matches!(open_sealed(&other, "node-a", 1, &sealed), Err(KeystoreError::WrongKey { .. })));
    }
}
