//! RSA key material behind the Key Vault surface: key generation and import, the JWK algorithms
//! Key Vault offers for RSA keys, and [`KeyCache`], which keeps every key version that has been
//! used parsed in memory.
//!
//! The cache is what makes `unwrapkey` fast: parsing a PKCS#8 document costs about as much as the
//! RSA operation itself, so the hot path must never do it. Key versions are immutable (their key
//! material never changes; only attributes do), so an entry never goes stale. Entries are keyed by
//! the version id, which is 128 random bits, and each entry remembers its modulus; a lookup
//! compares it with the stored record, so even a version id reused by hand in `state.json` can
//! never select the wrong key.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{
    self, KeyPairComponents, KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm,
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey,
    PrivateDecryptingKey, PublicKeyComponents,
};
use aws_lc_rs::signature::{self, KeyPair as _, RsaEncoding, RsaParameters};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use parking_lot::RwLock;

use crate::state::KeyVersionRecord;

/// Why a cryptographic operation could not be done. Every variant is the caller's input, except
/// [`CryptoError::Internal`] (a stored key that does not parse, or a library failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    PlaintextTooLong { len: usize, max: usize },
    CiphertextWrongLength { len: usize, expected: usize },
    DecryptionFailed,
    DigestWrongLength { len: usize, expected: usize },
    Internal,
}

/// The RSA encryption algorithms of Key Vault (`JsonWebKeyEncryptionAlgorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptionAlgorithm {
    /// OAEP with SHA-1 and MGF1-SHA-1 (RFC 3447 defaults).
    RsaOaep,
    /// OAEP with SHA-256 and MGF1-SHA-256.
    RsaOaep256,
    /// RSAES-PKCS1-v1_5.
    Rsa1_5,
}

impl EncryptionAlgorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RSA-OAEP" => Some(Self::RsaOaep),
            "RSA-OAEP-256" => Some(Self::RsaOaep256),
            "RSA1_5" => Some(Self::Rsa1_5),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RsaOaep => "RSA-OAEP",
            Self::RsaOaep256 => "RSA-OAEP-256",
            Self::Rsa1_5 => "RSA1_5",
        }
    }

    fn oaep(self) -> Option<&'static OaepAlgorithm> {
        match self {
            Self::RsaOaep => Some(&OAEP_SHA1_MGF1SHA1),
            Self::RsaOaep256 => Some(&OAEP_SHA256_MGF1SHA256),
            Self::Rsa1_5 => None,
        }
    }

    /// Largest plaintext for a modulus of `k` bytes (RFC 8017 §7.1.1 and §7.2.1).
    pub fn max_plaintext(self, k: usize) -> usize {
        match self {
            Self::RsaOaep => k.saturating_sub(2 * 20 + 2),
            Self::RsaOaep256 => k.saturating_sub(2 * 32 + 2),
            Self::Rsa1_5 => k.saturating_sub(11),
        }
    }
}

/// The RSA signature algorithms of Key Vault (`JsonWebKeySignatureAlgorithm`). The caller sends
/// the digest, not the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
}

impl SignatureAlgorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Self::Rs256),
            "RS384" => Some(Self::Rs384),
            "RS512" => Some(Self::Rs512),
            "PS256" => Some(Self::Ps256),
            "PS384" => Some(Self::Ps384),
            "PS512" => Some(Self::Ps512),
            _ => None,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Rs256 | Self::Ps256 => &digest::SHA256,
            Self::Rs384 | Self::Ps384 => &digest::SHA384,
            Self::Rs512 | Self::Ps512 => &digest::SHA512,
        }
    }

    fn encoding(self) -> &'static dyn RsaEncoding {
        match self {
            Self::Rs256 => &signature::RSA_PKCS1_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_SHA512,
            Self::Ps256 => &signature::RSA_PSS_SHA256,
            Self::Ps384 => &signature::RSA_PSS_SHA384,
            Self::Ps512 => &signature::RSA_PSS_SHA512,
        }
    }

    fn verification(self) -> &'static RsaParameters {
        match self {
            Self::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        }
    }
}

/// Fresh key material, in the form [`KeyVersionRecord`] stores it.
pub struct KeyMaterial {
    /// Base64 (standard) PKCS#8 v1 DER.
    pub pkcs8_b64: String,
    /// Base64url modulus and public exponent, as the JWK carries them.
    pub n: String,
    pub e: String,
    pub bits: u32,
}

impl KeyMaterial {
    fn from_key_pair(kp: &rsa::KeyPair) -> Result<Self, CryptoError> {
        let der = AsDer::<Pkcs8V1Der>::as_der(kp).map_err(|_| CryptoError::Internal)?;
        let public = PublicKeyComponents::<Vec<u8>>::from(kp.public_key());
        Ok(Self {
            pkcs8_b64: STANDARD.encode(der.as_ref()),
            n: URL_SAFE_NO_PAD.encode(&public.n),
            e: URL_SAFE_NO_PAD.encode(&public.e),
            bits: (kp.public_modulus_len() * 8) as u32,
        })
    }
}

/// Generate an RSA key of `bits` (2048, 3072 or 4096) with exponent 65537. A 4096-bit key can
/// take a second, so callers run this on a blocking thread.
pub fn generate(bits: u32) -> Result<KeyMaterial, CryptoError> {
    let size = match bits {
        2048 => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        _ => return Err(CryptoError::Internal),
    };
    let kp = rsa::KeyPair::generate(size).map_err(|_| CryptoError::Internal)?;
    KeyMaterial::from_key_pair(&kp)
}

/// The private parts of an RSA JWK, already base64url-decoded.
pub struct RsaPrivateComponents {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
    pub d: Vec<u8>,
    pub p: Vec<u8>,
    pub q: Vec<u8>,
    pub dp: Vec<u8>,
    pub dq: Vec<u8>,
    pub qi: Vec<u8>,
}

/// Build key material from imported JWK components. `None` when they do not form a valid RSA
/// key of 2048 to 4096 bits.
pub fn import(c: &RsaPrivateComponents) -> Option<KeyMaterial> {
    // aws-lc wants the public components without leading zero bytes.
    fn strip(b: &[u8]) -> &[u8] {
        let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        &b[first..]
    }
    let components = KeyPairComponents {
        public_key: PublicKeyComponents { n: strip(&c.n), e: strip(&c.e) },
        d: c.d.as_slice(),
        p: c.p.as_slice(),
        q: c.q.as_slice(),
        dP: c.dp.as_slice(),
        dQ: c.dq.as_slice(),
        qInv: c.qi.as_slice(),
    };
    let kp = rsa::KeyPair::from_components(&components).ok()?;
    let m = KeyMaterial::from_key_pair(&kp).ok()?;
    (2048..=4096).contains(&m.bits).then_some(m)
}

/// One key version, parsed once, with every operation Key Vault offers on it prepared.
pub struct LoadedKey {
    /// The modulus this entry was built from (base64url), to check it against the record.
    n: String,
    modulus_len: usize,
    oaep_private: OaepPrivateDecryptingKey,
    pkcs1_private: Pkcs1PrivateDecryptingKey,
    oaep_public: OaepPublicEncryptingKey,
    pkcs1_public: Pkcs1PublicEncryptingKey,
    signer: rsa::KeyPair,
    /// DER RSAPublicKey, for signature verification.
    public_der: Vec<u8>,
}

impl LoadedKey {
    fn from_record(rec: &KeyVersionRecord) -> Result<Self, CryptoError> {
        let der = STANDARD.decode(&rec.pkcs8_b64).map_err(|_| CryptoError::Internal)?;
        let private = PrivateDecryptingKey::from_pkcs8(&der).map_err(|_| CryptoError::Internal)?;
        let signer = rsa::KeyPair::from_pkcs8(&der).map_err(|_| CryptoError::Internal)?;
        let public = private.public_key();
        Ok(Self {
            n: rec.n.clone(),
            modulus_len: private.key_size_bytes(),
            oaep_public: OaepPublicEncryptingKey::new(public.clone()).map_err(|_| CryptoError::Internal)?,
            pkcs1_public: Pkcs1PublicEncryptingKey::new(public).map_err(|_| CryptoError::Internal)?,
            oaep_private: OaepPrivateDecryptingKey::new(private.clone()).map_err(|_| CryptoError::Internal)?,
            pkcs1_private: Pkcs1PrivateDecryptingKey::new(private).map_err(|_| CryptoError::Internal)?,
            public_der: signer.public_key().as_ref().to_vec(),
            signer,
        })
    }

    /// Encrypt (or wrap) with the public key.
    pub fn encrypt(&self, alg: EncryptionAlgorithm, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let max = alg.max_plaintext(self.modulus_len);
        if plaintext.len() > max {
            return Err(CryptoError::PlaintextTooLong { len: plaintext.len(), max });
        }
        let mut out = vec![0u8; self.modulus_len];
        let len = match alg.oaep() {
            Some(oaep) => self.oaep_public.encrypt(oaep, plaintext, &mut out, None).map(|c| c.len()),
            None => self.pkcs1_public.encrypt(plaintext, &mut out).map(|c| c.len()),
        }
        .map_err(|_| CryptoError::Internal)?;
        out.truncate(len);
        Ok(out)
    }

    /// Decrypt (or unwrap) with the private key.
    pub fn decrypt(&self, alg: EncryptionAlgorithm, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.len() != self.modulus_len {
            return Err(CryptoError::CiphertextWrongLength { len: ciphertext.len(), expected: self.modulus_len });
        }
        let mut out = vec![0u8; self.modulus_len];
        let len = match alg.oaep() {
            Some(oaep) => self.oaep_private.decrypt(oaep, ciphertext, &mut out, None).map(|p| p.len()),
            None => self.pkcs1_private.decrypt(ciphertext, &mut out).map(|p| p.len()),
        }
        .map_err(|_| CryptoError::DecryptionFailed)?;
        out.truncate(len);
        Ok(out)
    }

    /// Sign a digest the caller computed.
    pub fn sign(&self, alg: SignatureAlgorithm, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let d = import_digest(alg, digest)?;
        let mut sig = vec![0u8; self.signer.public_modulus_len()];
        self.signer.sign_digest(alg.encoding(), &d, &mut sig).map_err(|_| CryptoError::Internal)?;
        Ok(sig)
    }

    /// Verify a signature over a digest. A signature that does not verify is `Ok(false)`.
    pub fn verify(&self, alg: SignatureAlgorithm, digest: &[u8], sig: &[u8]) -> Result<bool, CryptoError> {
        let d = import_digest(alg, digest)?;
        let key = signature::UnparsedPublicKey::new(alg.verification(), &self.public_der);
        Ok(key.verify_digest(&d, sig).is_ok())
    }
}

fn import_digest(alg: SignatureAlgorithm, digest: &[u8]) -> Result<Digest, CryptoError> {
    let expected = alg.digest().output_len();
    Digest::import_less_safe(digest, alg.digest())
        .map_err(|_| CryptoError::DigestWrongLength { len: digest.len(), expected })
}

/// Bound on cached key versions; past it the cache starts over (a rebuild is cheap and rare).
const CACHE_MAX: usize = 16_384;

/// Parsed private keys by version id, so the hot path never re-parses PKCS#8.
#[derive(Default)]
pub struct KeyCache {
    keys: RwLock<HashMap<String, Arc<LoadedKey>>>,
}

impl KeyCache {
    /// The parsed form of `rec`, loading it on first use.
    pub fn get(&self, rec: &KeyVersionRecord) -> Result<Arc<LoadedKey>, CryptoError> {
        if let Some(k) = self.keys.read().get(rec.version.as_str())
            && k.n == rec.n
        {
            return Ok(k.clone());
        }
        let loaded = Arc::new(LoadedKey::from_record(rec)?);
        let mut keys = self.keys.write();
        if keys.len() >= CACHE_MAX {
            keys.clear();
        }
        keys.insert(rec.version.clone(), loaded.clone());
        Ok(loaded)
    }

    /// Drop the parsed forms of purged versions, so purged key material leaves memory too.
    pub fn forget<'a>(&self, versions: impl IntoIterator<Item = &'a str>) {
        let mut keys = self.keys.write();
        for v in versions {
            keys.remove(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(m: &KeyMaterial) -> KeyVersionRecord {
        KeyVersionRecord {
            version: "0123456789abcdef0123456789abcdef".into(),
            kty: "RSA".into(),
            key_size: m.bits,
            pkcs8_b64: m.pkcs8_b64.clone(),
            n: m.n.clone(),
            e: m.e.clone(),
            key_ops: vec![],
            enabled: true,
            nbf: None,
            exp: None,
            created: 0,
            updated: 0,
            tags: Default::default(),
        }
    }

    #[test]
    fn round_trips_and_limits() {
        let m = generate(2048).unwrap();
        assert_eq!(m.bits, 2048);
        assert_eq!(m.e, "AQAB");
        let cache = KeyCache::default();
        let k = cache.get(&record(&m)).unwrap();
        for alg in [EncryptionAlgorithm::RsaOaep, EncryptionAlgorithm::RsaOaep256, EncryptionAlgorithm::Rsa1_5] {
            let max = alg.max_plaintext(256);
            let pt = vec![7u8; max];
            let ct = k.encrypt(alg, &pt).unwrap();
            assert_eq!(ct.len(), 256);
            assert_eq!(k.decrypt(alg, &ct).unwrap(), pt);
            assert_eq!(
                k.encrypt(alg, &vec![0u8; max + 1]).unwrap_err(),
                CryptoError::PlaintextTooLong { len: max + 1, max }
            );
        }
        assert_eq!(
            k.decrypt(EncryptionAlgorithm::RsaOaep, &[1, 2, 3]).unwrap_err(),
            CryptoError::CiphertextWrongLength { len: 3, expected: 256 }
        );
        assert_eq!(k.decrypt(EncryptionAlgorithm::RsaOaep, &[1u8; 256]).unwrap_err(), CryptoError::DecryptionFailed);
        for alg in [SignatureAlgorithm::Rs256, SignatureAlgorithm::Ps512] {
            let d = digest::digest(alg.digest(), b"message");
            let sig = k.sign(alg, d.as_ref()).unwrap();
            assert!(k.verify(alg, d.as_ref(), &sig).unwrap());
            assert!(!k.verify(alg, d.as_ref(), &sig[1..]).unwrap());
        }
        assert!(matches!(k.sign(SignatureAlgorithm::Rs256, &[0u8; 5]), Err(CryptoError::DigestWrongLength { .. })));
    }

    #[test]
    fn cache_never_serves_a_different_key_under_a_reused_version() {
        let a = generate(2048).unwrap();
        let b = generate(2048).unwrap();
        let cache = KeyCache::default();
        let ka = cache.get(&record(&a)).unwrap();
        let ct = ka.encrypt(EncryptionAlgorithm::RsaOaep256, b"x").unwrap();
        let kb = cache.get(&record(&b)).unwrap();
        assert!(kb.decrypt(EncryptionAlgorithm::RsaOaep256, &ct).is_err());
    }
}
