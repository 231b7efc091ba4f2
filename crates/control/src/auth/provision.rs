//! Creating credentials: API keys (public + private key) and service accounts (client id +
//! secret). Used by bootstrap and by `atrest` admin commands. The private key and the secret are
//! returned once and never stored in clear.
//!
//! - An API key's public key is 8 lowercase letters and its private key a random UUID, as in
//!   Atlas. The store keeps the Digest HA1 (`MD5(public:realm:private)`), sealed with the KEK for
//!   the purpose [`ha1_purpose`] (bound to the key's id, so a ciphertext copied onto another row
//!   does not open). HA1 is password-equivalent for Digest, hence the sealing.
//! - A service account's client id is `mdb_sa_id_<24 hex>` and its secret `mdb_sa_sk_` followed
//!   by 40 random alphanumeric characters (≈238 bits). The store keeps only the secret's SHA-256:
//!   a high-entropy secret needs no slow hash.
//!
//! All randomness comes from the operating system's CSPRNG (`aws_lc_rs::rand`).

use anyhow::Context;
use atrest_store::{ApiKey, ApiKeyId, ClientId, OrgId, Roles, ServiceAccount, StoreError};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::state::AppState;

/// The prefix of every service account secret (Atlas's).
pub const SECRET_PREFIX: &str = "mdb_sa_sk_";

/// How many times a random public key or client id is drawn again after a collision.
const ATTEMPTS: usize = 5;

pub use crate::auth::digest::{ha1, ha1_purpose};
pub use crate::auth::secrets::{random_bytes, sha256};

/// `len` characters drawn uniformly from `alphabet` (at most 256 symbols), by rejection sampling
/// of random bytes so that no symbol is more likely than another.
fn random_string(alphabet: &[u8], len: usize) -> String {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let n = alphabet.len();
    let limit = 256 - 256 % n; // bytes at or above this would bias the result
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<64>() {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % n] as char);
            }
        }
    }
    out
}

/// A fresh public key: 8 lowercase letters, like Atlas's (≈37.6 bits; the store refuses a
/// duplicate and the caller draws again).
pub fn new_public_key() -> String {
    random_string(b"abcdefghijklmnopqrstuvwxyz", 8)
}

/// A fresh private key: a random (version 4) UUID, like Atlas's.
pub fn new_private_key() -> SecretString {
    let uuid = uuid::Builder::from_random_bytes(random_bytes::<16>()).into_uuid();
    SecretString::from(uuid.hyphenated().to_string())
}

/// A fresh service account secret: `mdb_sa_sk_` + 40 alphanumeric characters.
pub fn new_service_account_secret() -> SecretString {
    let body = random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 40);
    SecretString::from(format!("{SECRET_PREFIX}{body}"))
}

/// Creates an API key for `org` with `roles` and returns it with its private key, which exists
/// nowhere else: show it once. Errors if the organization, or a project named in `roles`, does
/// not exist in the store (project roles must be on projects of `org`).
pub async fn create_api_key(
    state: &AppState,
    org: &OrgId,
    description: &str,
    roles: Roles,
) -> anyhow::Result<(ApiKey, SecretString)> {
    let private_key = new_private_key();
    for _ in 0..ATTEMPTS {
        let id = ApiKeyId::new_random();
        let public_key = new_public_key();
        let ha1 = Zeroizing::new(ha1(&public_key, private_key.expose_secret()));
        let key = ApiKey {
            digest_ha1_ciphertext: state.kek.seal(&ha1_purpose(&id), ha1.as_ref()),
            id,
            org_id: org.clone(),
            public_key,
            description: description.to_owned(),
            created_at: state.now(),
            roles: roles.clone(),
        };
        match state.store.create_api_key(&key).await {
            Ok(()) => {
                tracing::info!(org = %org, public_key = %key.public_key, "API key created");
                return Ok((key, private_key));
            }
            // A public key (or id) collision: draw new ones.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("creating an API key in organization {org} (does the organization exist, and every project named in the roles belong to it?)")
                });
            }
        }
    }
    anyhow::bail!("could not draw an unused API key public key in {ATTEMPTS} attempts")
}

/// Creates a service account for `org` with `roles` and returns it with its client secret, which
/// exists nowhere else: show it once. Errors as [`create_api_key`].
pub async fn create_service_account(
    state: &AppState,
    org: &OrgId,
    name: &str,
    roles: Roles,
) -> anyhow::Result<(ServiceAccount, SecretString)> {
    let secret = new_service_account_secret();
    let secret_sha256 = sha256(secret.expose_secret().as_bytes());
    for _ in 0..ATTEMPTS {
        let account = ServiceAccount {
            client_id: ClientId::new_random(),
            org_id: org.clone(),
            name: name.to_owned(),
            secret_sha256,
            created_at: state.now(),
            roles: roles.clone(),
        };
        match state.store.create_service_account(&account).await {
            Ok(()) => {
                tracing::info!(org = %org, client_id = %account.client_id, "service account created");
                return Ok((account, secret));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("creating a service account in organization {org} (does the organization exist, and every project named in the roles belong to it?)")
                });
            }
        }
    }
    anyhow::bail!("could not draw an unused service account client id in {ATTEMPTS} attempts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    #[test]
    fn ha1_matches_rfc_2617_example() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / Circle Of Life → 939e7578ed9e3c518a452acee763bce9.
        let mut h = Md5::new();
        h.update(b"Mufasa:testrealm@host.com:Circle Of Life");
        assert_eq!(hex::encode(h.finalize()), "939e7578ed9e3c518a452acee763bce9");
        // And ours uses the Atlas realm.
        let mut h = Md5::new();
        h.update(b"abcdefgh:MMS Public API:secret");
        assert_eq!(ha1("abcdefgh", "secret"), <[u8; 16]>::from(h.finalize()));
    }

    #[test]
    fn credential_formats() {
        let p = new_public_key();
        assert!(p.len() == 8 && p.bytes().all(|b| b.is_ascii_lowercase()), "{p}");
        let k = new_private_key();
        let u = uuid::Uuid::parse_str(k.expose_secret()).unwrap();
        assert_eq!(u.get_version_num(), 4);
        let s = new_service_account_secret();
        let body = s.expose_secret().strip_prefix(SECRET_PREFIX).unwrap();
        assert!(body.len() == 40 && body.bytes().all(|b| b.is_ascii_alphanumeric()), "{body}");
        assert_ne!(new_service_account_secret().expose_secret(), s.expose_secret());
        assert!(!format!("{s:?}").contains(body), "Debug must not show the secret");
        assert!(!format!("{k:?}").contains(k.expose_secret()), "Debug must not show the private key");
    }

    #[test]
    fn random_strings_use_the_whole_alphabet() {
        let s = random_string(b"ab", 4000);
        let a = s.bytes().filter(|&b| b == b'a').count();
        assert!((1700..2300).contains(&a), "{a} of 4000");
    }
}
