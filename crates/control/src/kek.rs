//! The local key-encryption key (KEK) that seals the few secrets the control plane must keep:
//! legacy static Azure client secrets and the Digest HA1 of each API key.
//!
//! AES-256-GCM from aws-lc-rs with a random 96-bit nonce per seal. Sealed blobs are
//! `0x01 || nonce (12) || ciphertext || tag (16)`. Each seal is bound to its purpose and row by
//! the additional authenticated data (e.g. `azure-secret:<groupId>`), so a ciphertext copied to
//! another row or purpose fails to open instead of decrypting.
//!
//! The KEK comes from `ATREST_KEK` (base64 of 32 bytes) when set, else from a key file (created
//! with 32 random bytes and mode 0600 on first start). Rotating the KEK is out of scope for now.
//!
//! Replicas on one store must share the KEK: a row one sealed must open on every other. The first
//! control plane to start on a store writes a canary there (a fixed value sealed with its KEK,
//! plus the KEK's fingerprint); every start opens it and refuses to start when it does not open
//! ([`Kek::check_canary`]), naming the fingerprint expected and the fix.

use std::path::Path;

use anyhow::{Context, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretSlice;
use zeroize::Zeroizing;

const FORMAT_V1: u8 = 1;
const TAG_LEN: usize = 16;

/// The key-encryption key. `Debug` never shows it.
pub struct Kek {
    key: RandomizedNonceKey,
    /// Not secret: `kek:` and the first 8 bytes (hex) of HMAC-SHA-256(KEK, a fixed label).
    fingerprint: String,
    /// Where it came from, for messages (`ATREST_KEK`, or the key file's path).
    source: String,
}

/// The AAD and the plaintext of the canary (nothing secret: only whether it opens matters).
const CANARY_PURPOSE: &str = "kek-canary";
const CANARY_VALUE: &[u8] = b"atrest key-encryption key canary v1";

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// A blob that does not open under this KEK for this purpose.
#[derive(Debug, thiserror::Error)]
#[error(
    "sealed value does not open under this control plane's key-encryption key (wrong KEK, wrong row, or corrupted)"
)]
pub struct OpenError;

impl Kek {
    /// From 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Kek> {
        if bytes.len() != 32 {
            bail!("the key-encryption key must be 32 bytes, got {}", bytes.len());
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| anyhow::anyhow!("AES-256-GCM key setup failed"))?;
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, bytes),
            b"atrest kek fingerprint v1",
        );
        let fingerprint = format!("kek:{}", hex::encode(&tag.as_ref()[..8]));
        Ok(Kek { key, fingerprint, source: "given bytes".into() })
    }

    /// A fingerprint that tells KEKs apart without revealing them (safe to log and show).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where this KEK came from: `ATREST_KEK` or the key file.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn with_source(mut self, source: String) -> Kek {
        self.source = source;
        self
    }

    /// Checks this KEK against the store's canary, writing the canary first if the store has
    /// none (the first start). Fails, with the fix, when the canary was sealed with another KEK.
    pub async fn check_canary(&self, store: &atrest_store::Store, now: time::OffsetDateTime) -> anyhow::Result<()> {
        let sealed = self.seal(CANARY_PURPOSE, CANARY_VALUE);
        let canary = store
            .kek_canary_or_insert(&sealed, &self.fingerprint, now)
            .await
            .map_err(|e| anyhow::anyhow!("checking the key-encryption key against the store: {e}"))?;
        match self.open(CANARY_PURPOSE, &canary.sealed) {
            Ok(v) if secrecy::ExposeSecret::expose_secret(&v) == CANARY_VALUE => Ok(()),
            _ => bail!(
                "this control plane's key-encryption key ({}, from {}) is not the one this store's data is sealed with ({}, \
                 used since {}): its replicas would not read each other's sealed secrets. Refusing to start. Give this \
                 replica the same KEK as the others: set ATREST_KEK to the value they use (base64 of 32 bytes), or copy \
                 their kek.key into its data directory (mode 0600) and leave ATREST_KEK unset; then start again",
                self.fingerprint,
                self.source,
                canary.fingerprint,
                canary.created_at
            ),
        }
    }

    /// `ATREST_KEK` if given (base64), else the file at `path`, created if missing.
    pub fn load(env_value: Option<&str>, path: &Path) -> anyhow::Result<Kek> {
        if let Some(b64) = env_value {
            let raw = Zeroizing::new(
                STANDARD
                    .decode(b64.trim())
                    .context("ATREST_KEK is not base64; generate one with `openssl rand -base64 32`")?,
            );
            return Ok(Kek::from_bytes(&raw)?.with_source("ATREST_KEK".into()));
        }
        let from_file = format!("the key file {}", path.display());
        if path.exists() {
            check_private(path)?;
            let raw = Zeroizing::new(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
            return Ok(Kek::from_bytes(&raw)
                .with_context(|| format!("{} is not a valid key file", path.display()))?
                .with_source(from_file));
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| anyhow::anyhow!("no randomness"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::files::write_private(path, raw.as_ref()).with_context(|| format!("writing {}", path.display()))?;
        Ok(Kek::from_bytes(raw.as_ref())?.with_source(format!("{from_file}, created now")))
    }

    /// Seals `plaintext` for `purpose` (the additional authenticated data).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut buf = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(purpose.as_bytes()), &mut buf)
            .expect("AES-GCM sealing of a short buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        out
    }

    /// Opens a blob sealed for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<SecretSlice<u8>, OpenError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
            return Err(OpenError);
        }
        let nonce =
            aws_lc_rs::aead::Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| OpenError)?;
        let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let plain = self.key.open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf).map_err(|_| OpenError)?;
        Ok(SecretSlice::from(plain.to_vec()))
    }
}

fn check_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!("{} is readable by other users (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn sealed_values_open_only_for_their_purpose() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let sealed = kek.seal("azure-secret:g1", b"s3cret");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(kek.open("azure-secret:g1", &sealed).unwrap().expose_secret(), b"s3cret");
        assert!(kek.open("azure-secret:g2", &sealed).is_err());
        let other = Kek::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open("azure-secret:g1", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(kek.open("azure-secret:g1", &tampered).is_err());
        assert!(kek.open("azure-secret:g1", &sealed[..10]).is_err());
        assert_ne!(kek.seal("p", b"x"), kek.seal("p", b"x"), "nonces must differ");
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        let a = Kek::load(None, &path).unwrap();
        let sealed = a.seal("p", b"v");
        let b = Kek::load(None, &path).unwrap();
        assert_eq!(b.open("p", &sealed).unwrap().expose_secret(), b"v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Kek::load(None, &path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        assert!(Kek::load(Some("not base64!"), &path).unwrap_err().to_string().contains("openssl rand"));
    }
}
