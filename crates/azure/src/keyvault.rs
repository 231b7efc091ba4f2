//! The Key Vault keys client: get a key, list its versions, resolve an unversioned identifier
//! to a usable version, wrap/unwrap, encrypt/decrypt.
//!
//! Requests follow the data-plane REST API (`shared/reference/azure-protocols.md` §3): `GET
//! /keys/{name}/{version}`, `GET /keys/{name}/versions` (paged with `maxresults` and `nextLink`)
//! and `POST /keys/{name}/{version}/{wrapkey|unwrapkey|encrypt|decrypt}` with `{"alg","value"}`
//! (base64url).
//!
//! **What an unversioned [`KeyIdentifier`] means.** Every operation except
//! [`KeyVaultClient::resolve_key`] sends it with the empty version segment
//! (`/keys/{name}//wrapkey`), which Key Vault resolves to the key's *current* (most recently
//! created) version in the same round trip, whatever that version's state: a disabled or expired
//! current version is refused by Key Vault, not replaced by an older one.
//! [`KeyVaultClient::resolve_key`] instead picks the most recently created version that is
//! enabled and inside its `nbf`/`exp` window; pass the versioned identifier it returns to the
//! operations to use that version. Either way, the `kid` of the answer names the version actually
//! used, and every result carries it as a versioned identifier (design.md §3.7: the version used
//! is recorded).
//!
//! The token is requested for the vault's cloud (`{vault resource}/.default`) in the tenant the
//! caller names — the customer's, since Key Vault accepts tokens from the vault's own tenant
//! only. Authorization is evaluated by Key Vault on every request, so a revoked grant shows up
//! as a 403 even with a cached token. Decrypted and unwrapped bytes come back as
//! [`SecretSlice`], wiped on drop and never printed by `Debug`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretSlice;
use serde::Deserialize;
use zeroize::Zeroizing;

use atrest_domain::{AzureUuid, KeyIdentifier};

use crate::error::{Error, ErrorKind, Service, kind_for_status};
use crate::http::{self, AzureErrorBody, between};
use crate::retry::RetryPolicy;
use crate::token::TokenProvider;
use crate::token_cache::AccessToken;

/// The data-plane api-version sent. Key Vault serves every 7.x; 7.5 is what current SDKs use.
pub const API_VERSION: &str = "7.5";

/// The largest `maxresults` Key Vault accepts on its lists, and the page size used by default
/// (the fewest round trips).
pub const MAX_PAGE_SIZE: u8 = 25;

/// A bound on `nextLink` pages of one list (25,000 versions at the default page size), so a
/// misbehaving server cannot keep us reading forever.
const MAX_PAGES: usize = 1000;

/// RSA encryption algorithms for wrap/unwrap and encrypt/decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EncryptionAlgorithm {
    /// RSAES-OAEP with SHA-1.
    RsaOaep,
    /// RSAES-OAEP with SHA-256: the default for new wrapping.
    #[default]
    RsaOaep256,
    /// RSAES-PKCS1-v1_5: only for blobs that were wrapped with it.
    Rsa1_5,
}

impl EncryptionAlgorithm {
    /// The JWA name Key Vault uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RsaOaep => "RSA-OAEP",
            Self::RsaOaep256 => "RSA-OAEP-256",
            Self::Rsa1_5 => "RSA1_5",
        }
    }
}

impl std::str::FromStr for EncryptionAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "RSA-OAEP" => Ok(Self::RsaOaep),
            "RSA-OAEP-256" => Ok(Self::RsaOaep256),
            "RSA1_5" => Ok(Self::Rsa1_5),
            other => Err(Error::local(format!("unknown algorithm '{other}': use RSA-OAEP, RSA-OAEP-256 or RSA1_5"))),
        }
    }
}

/// A key version's public part and attributes, as `GET /keys/{name}/{version}` returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyProperties {
    /// The versioned identifier of the version returned.
    pub id: KeyIdentifier,
    /// `RSA`, `RSA-HSM`, `EC`, ...
    pub kty: String,
    /// Permitted operations (`wrapKey`, `unwrapKey`, ...).
    pub key_ops: Vec<String>,
    /// RSA modulus and public exponent (big-endian), when the key is RSA.
    pub n: Option<Vec<u8>>,
    /// RSA public exponent (big-endian).
    pub e: Option<Vec<u8>>,
    /// Whether the version is enabled.
    pub enabled: bool,
    /// Not valid before / after (Unix seconds).
    pub not_before: Option<i64>,
    /// Not valid after (Unix seconds).
    pub expires: Option<i64>,
    /// Creation time (Unix seconds).
    pub created: Option<i64>,
    /// Last update (Unix seconds).
    pub updated: Option<i64>,
    /// Key Vault's `recoveryLevel` (`Recoverable+Purgeable`, ...).
    pub recovery_level: Option<String>,
    /// The key's tags (a binding check can look for one naming the allowed project).
    pub tags: BTreeMap<String, String>,
    /// Set when the key backs a certificate.
    pub managed: bool,
}

impl KeyProperties {
    /// RSA modulus size in bits (0 for non-RSA keys).
    pub fn key_size_bits(&self) -> usize {
        self.n.as_ref().map(|n| n.iter().skip_while(|b| **b == 0).count() * 8).unwrap_or(0)
    }

    /// Does `key_ops` allow `op` (`wrapKey`, `unwrapKey`, ...)? Compared case-insensitively.
    pub fn allows(&self, op: &str) -> bool {
        self.key_ops.iter().any(|o| o.eq_ignore_ascii_case(op))
    }

    /// Why the key cannot serve as a wrapping key at `now` (Unix seconds), if it cannot:
    /// disabled (Key Vault then refuses unwrap and decrypt) or outside its `nbf`/`exp` window
    /// (Key Vault then refuses wrap and encrypt, while still unwrapping what it wrapped before).
    pub fn unusable_reason(&self, now: i64) -> Option<String> {
        unusable_reason(&self.id, self.enabled, self.not_before, self.expires, now)
    }
}

/// One version of a key as the versions list (`GET /keys/{name}/versions`) shows it: its
/// identifier and attributes, without key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionInfo {
    /// The versioned identifier.
    pub id: KeyIdentifier,
    /// Whether the version is enabled.
    pub enabled: bool,
    /// Not valid before (Unix seconds).
    pub not_before: Option<i64>,
    /// Not valid after (Unix seconds).
    pub expires: Option<i64>,
    /// Creation time (Unix seconds).
    pub created: Option<i64>,
    /// Last update (Unix seconds).
    pub updated: Option<i64>,
    /// The version's tags.
    pub tags: BTreeMap<String, String>,
    /// Set when the key backs a certificate.
    pub managed: bool,
}

impl KeyVersionInfo {
    /// Why this version cannot serve as a wrapping key at `now` (Unix seconds), if it cannot:
    /// the same rule as [`KeyProperties::unusable_reason`].
    pub fn unusable_reason(&self, now: i64) -> Option<String> {
        unusable_reason(&self.id, self.enabled, self.not_before, self.expires, now)
    }
}

fn unusable_reason(
    id: &KeyIdentifier,
    enabled: bool,
    not_before: Option<i64>,
    expires: Option<i64>,
    now: i64,
) -> Option<String> {
    if !enabled {
        return Some(format!("key {id} is disabled"));
    }
    if let Some(nbf) = not_before.filter(|nbf| now < *nbf) {
        return Some(format!("key {id} is not valid before {}", fmt_unix(nbf)));
    }
    if let Some(exp) = expires.filter(|exp| now >= *exp) {
        return Some(format!("key {id} expired at {}", fmt_unix(exp)));
    }
    None
}

fn fmt_unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// The result of wrap or encrypt. Ciphertext is not secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    /// The key version that produced it; unwrap with exactly this one.
    pub key_id: KeyIdentifier,
    /// The algorithm it was produced with; unwrap with the same.
    pub algorithm: EncryptionAlgorithm,
    /// The ciphertext bytes.
    pub value: Vec<u8>,
}

/// The result of unwrap or decrypt: secret, wiped on drop, redacted in `Debug`.
#[derive(Debug)]
pub struct Plaintext {
    /// The key version that produced it.
    pub key_id: KeyIdentifier,
    /// The plaintext bytes.
    pub value: SecretSlice<u8>,
}

/// A Key Vault keys client for vaults of one tenant. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KeyVaultClient {
    tokens: TokenProvider,
    tenant: AzureUuid,
    retry: RetryPolicy,
    page_size: u8,
}

#[derive(Deserialize)]
struct KeyBundle {
    key: JsonWebKey,
    #[serde(default)]
    attributes: KeyAttributes,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    managed: Option<bool>,
}

#[derive(Deserialize)]
struct JsonWebKey {
    kid: String,
    #[serde(default)]
    kty: String,
    #[serde(default)]
    key_ops: Vec<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize, Default)]
struct KeyAttributes {
    #[serde(default = "yes")]
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    created: Option<i64>,
    updated: Option<i64>,
    #[serde(rename = "recoveryLevel")]
    recovery_level: Option<String>,
}

fn yes() -> bool {
    true
}

/// `KeyListResult`: one page of a list.
#[derive(Deserialize)]
struct KeyListResult {
    #[serde(default)]
    value: Vec<KeyItem>,
    #[serde(default, rename = "nextLink")]
    next_link: Option<String>,
}

/// `KeyItem`: an entry of a list (no key material).
#[derive(Deserialize)]
struct KeyItem {
    kid: String,
    #[serde(default)]
    attributes: KeyAttributes,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    managed: Option<bool>,
}

#[derive(Deserialize)]
struct KeyOperationResult {
    kid: String,
    value: Zeroizing<String>,
}

/// Which operation, for the path and the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Get,
    List,
    Wrap,
    Unwrap,
    Encrypt,
    Decrypt,
}

impl Operation {
    fn path(self) -> &'static str {
        match self {
            Self::Get => "",
            Self::List => "versions",
            Self::Wrap => "wrapkey",
            Self::Unwrap => "unwrapkey",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
        }
    }

    /// The `key_ops` / access-policy permission name.
    fn permission(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Wrap => "wrapKey",
            Self::Unwrap => "unwrapKey",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
        }
    }
}

impl KeyVaultClient {
    /// A client that gets its tokens from `tokens` in `tenant` (the vault's tenant).
    pub fn new(tokens: TokenProvider, tenant: AzureUuid, retry: RetryPolicy) -> Self {
        Self { tokens, tenant, retry, page_size: MAX_PAGE_SIZE }
    }

    /// The same client asking for `page_size` entries per page of a list (`maxresults`),
    /// clamped to Key Vault's 1..=25. The default, 25, needs the fewest round trips; smaller
    /// pages only matter for tests of paging.
    pub fn with_page_size(mut self, page_size: u8) -> Self {
        self.page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// The tenant tokens are requested in.
    pub fn tenant(&self) -> &AzureUuid {
        &self.tenant
    }

    /// The key's public part and attributes. A versioned `id`: exactly that version. An
    /// unversioned `id`: the key's current (most recently created) version, whatever its state;
    /// [`Self::resolve_key`] picks the latest *usable* version instead. `KeyProperties::id`
    /// names the version returned.
    pub async fn get_key(&self, id: &KeyIdentifier) -> Result<KeyProperties, Error> {
        let body = self.call(id, Operation::Get, None).await?;
        let bundle: KeyBundle = serde_json::from_slice(&body).map_err(|e| bad_answer(id, &e.to_string()))?;
        let key_id = versioned_kid(id, &bundle.key.kid)?;
        let b64 = |v: &Option<String>| -> Result<Option<Vec<u8>>, Error> {
            v.as_deref().map(|s| decode_b64url(s).map(|z| z.to_vec()).map_err(|e| bad_answer(id, &e))).transpose()
        };
        Ok(KeyProperties {
            id: key_id,
            kty: bundle.key.kty,
            key_ops: bundle.key.key_ops,
            n: b64(&bundle.key.n)?,
            e: b64(&bundle.key.e)?,
            enabled: bundle.attributes.enabled,
            not_before: bundle.attributes.nbf,
            expires: bundle.attributes.exp,
            created: bundle.attributes.created,
            updated: bundle.attributes.updated,
            recovery_level: bundle.attributes.recovery_level,
            tags: bundle.tags.unwrap_or_default(),
            managed: bundle.managed.unwrap_or(false),
        })
    }

    /// Every version of the key `id` names (its version, if any, is ignored), with their
    /// attributes, in the order Key Vault lists them: `GET /keys/{name}/versions`, following
    /// `nextLink` page after page. A `nextLink` must stay on the vault's own host (https, default
    /// port): the bearer token goes with it, so any other link is refused with an error.
    pub async fn list_key_versions(&self, id: &KeyIdentifier) -> Result<Vec<KeyVersionInfo>, Error> {
        let key = id.unversioned();
        let token = self.tokens.key_vault_token(key.environment(), &self.tenant).await?;
        let mut next = Some(format!(
            "{}/keys/{}/versions?api-version={API_VERSION}&maxresults={}",
            key.vault_url(),
            key.name(),
            self.page_size
        ));
        let mut versions = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(bad_answer(&key, &format!("the versions list has more than {MAX_PAGES} pages")));
            }
            let body = self.send(&key, Operation::List, &token, &url, None).await?;
            let page: KeyListResult = serde_json::from_slice(&body).map_err(|e| bad_answer(&key, &e.to_string()))?;
            for item in page.value {
                versions.push(KeyVersionInfo {
                    id: versioned_kid(&key, &item.kid)?,
                    enabled: item.attributes.enabled,
                    not_before: item.attributes.nbf,
                    expires: item.attributes.exp,
                    created: item.attributes.created,
                    updated: item.attributes.updated,
                    tags: item.tags.unwrap_or_default(),
                    managed: item.managed.unwrap_or(false),
                });
            }
            if let Some(link) = page.next_link.filter(|l| !l.is_empty()) {
                check_next_link(&key, &link)?;
                next = Some(link);
            }
        }
        Ok(versions)
    }

    /// The version of `id` to use at `now_unix` (Unix seconds, Key Vault's clock), with its
    /// public part and attributes. `KeyProperties::id` is always the versioned identifier of
    /// the version returned: record it, and unwrap with it later.
    ///
    /// - A versioned `id`: exactly that version (one `GET`), whatever its state.
    /// - An unversioned `id`: the current version (one `GET`) if it is enabled and inside its
    ///   `nbf`/`exp` window. Otherwise the versions are listed and the most recently created
    ///   version that is enabled and inside its window is fetched and returned (`created` ties,
    ///   within one second, go to the version listed later; a candidate whose `GET` shows it
    ///   became unusable meanwhile is skipped).
    /// - When no version is usable, the **current** version's properties are returned rather
    ///   than an error, so that the caller reports why the key is unusable with
    ///   [`KeyProperties::unusable_reason`] (disabled, expired, not yet valid) about the version
    ///   an administrator is most likely to fix.
    ///
    /// Listing needs the `list` key permission under access policies (`keys/read` under RBAC,
    /// which Key Vault Crypto User has); it is only attempted when the current version is
    /// unusable, and its errors are returned as they are.
    pub async fn resolve_key(&self, id: &KeyIdentifier, now_unix: i64) -> Result<KeyProperties, Error> {
        if id.version().is_some() {
            return self.get_key(id).await;
        }
        let current = self.get_key(id).await?;
        if current.unusable_reason(now_unix).is_none() {
            return Ok(current);
        }
        let mut candidates: Vec<(usize, KeyVersionInfo)> = self
            .list_key_versions(id)
            .await?
            .into_iter()
            .enumerate()
            .filter(|(_, v)| v.unusable_reason(now_unix).is_none())
            .collect();
        // Newest first; on equal timestamps the later-listed version first.
        candidates.sort_by_key(|(i, v)| std::cmp::Reverse((v.created, v.updated, *i)));
        for (_, candidate) in candidates {
            let props = self.get_key(&candidate.id).await?;
            if props.unusable_reason(now_unix).is_none() {
                return Ok(props);
            }
        }
        Ok(current)
    }

    /// Wrap `key` (a data-encryption key) with the Key Vault key. An unversioned `id` means the
    /// key's current version, whatever its state (Key Vault refuses a disabled or expired one;
    /// use [`Self::resolve_key`] to pick the latest usable version and pass its versioned id).
    /// The result's `key_id` names the version used: record it, and unwrap with exactly it.
    pub async fn wrap_key(
        &self,
        id: &KeyIdentifier,
        algorithm: EncryptionAlgorithm,
        key: &[u8],
    ) -> Result<Ciphertext, Error> {
        self.seal(id, Operation::Wrap, algorithm, key).await
    }

    /// Unwrap `wrapped` with the Key Vault key. Pass the versioned identifier recorded at wrap
    /// time: another version cannot unwrap it. An unversioned `id` means the key's current
    /// version, which fails once the key has been rotated after wrapping. The result's `key_id`
    /// names the version used.
    pub async fn unwrap_key(
        &self,
        id: &KeyIdentifier,
        algorithm: EncryptionAlgorithm,
        wrapped: &[u8],
    ) -> Result<Plaintext, Error> {
        self.open(id, Operation::Unwrap, algorithm, wrapped).await
    }

    /// Encrypt a short `plaintext` (RSA: at most the modulus size minus padding). An unversioned
    /// `id` means the key's current version, whatever its state (see [`Self::wrap_key`]). The
    /// result's `key_id` names the version used: decrypt with exactly it.
    pub async fn encrypt(
        &self,
        id: &KeyIdentifier,
        algorithm: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Ciphertext, Error> {
        self.seal(id, Operation::Encrypt, algorithm, plaintext).await
    }

    /// Decrypt `ciphertext`. Pass the versioned identifier recorded at encryption time; an
    /// unversioned `id` means the key's current version, which fails once the key has been
    /// rotated after encrypting. The result's `key_id` names the version used.
    pub async fn decrypt(
        &self,
        id: &KeyIdentifier,
        algorithm: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Plaintext, Error> {
        self.open(id, Operation::Decrypt, algorithm, ciphertext).await
    }

    async fn seal(
        &self,
        id: &KeyIdentifier,
        op: Operation,
        algorithm: EncryptionAlgorithm,
        input: &[u8],
    ) -> Result<Ciphertext, Error> {
        let request = operation_body(algorithm, input);
        let body = self.call(id, op, Some(request)).await?;
        let result: KeyOperationResult = serde_json::from_slice(&body).map_err(|e| bad_answer(id, &e.to_string()))?;
        let value = decode_b64url(&result.value).map_err(|e| bad_answer(id, &e))?;
        Ok(Ciphertext { key_id: versioned_kid(id, &result.kid)?, algorithm, value: value.to_vec() })
    }

    async fn open(
        &self,
        id: &KeyIdentifier,
        op: Operation,
        algorithm: EncryptionAlgorithm,
        input: &[u8],
    ) -> Result<Plaintext, Error> {
        let request = operation_body(algorithm, input);
        let body = self.call(id, op, Some(request)).await?;
        let result: KeyOperationResult = serde_json::from_slice(&body).map_err(|e| bad_answer(id, &e.to_string()))?;
        let value = decode_b64url(&result.value).map_err(|e| bad_answer(id, &e))?;
        // `to_vec` allocates exactly `len`, so the box conversion does not leave a copy behind.
        Ok(Plaintext { key_id: versioned_kid(id, &result.kid)?, value: SecretSlice::from(value.to_vec()) })
    }

    /// One operation on `id` with retries; returns the success body.
    async fn call(
        &self,
        id: &KeyIdentifier,
        op: Operation,
        request_body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        // One token for every attempt: the token provider retries Entra on its own, and
        // nesting its retries inside these would multiply the time budget.
        let token = self.tokens.key_vault_token(id.environment(), &self.tenant).await?;
        let version = id.version().map(|v| v.as_str()).unwrap_or("");
        let mut url = format!("{}/keys/{}/{version}", id.vault_url(), id.name());
        if op != Operation::Get {
            url.push('/');
            url.push_str(op.path());
        }
        url.push_str("?api-version=");
        url.push_str(API_VERSION);
        self.send(id, op, &token, &url, request_body.as_ref().map(|b| b.as_slice())).await
    }

    /// One request to `url` (GET without a body, POST with one) with retries; returns the
    /// success body or the classified error about `id`. A 401 is retried once with a fresh token
    /// ([`TokenProvider::with_refresh_on_401`]).
    async fn send(
        &self,
        id: &KeyIdentifier,
        op: Operation,
        token: &AccessToken,
        url: &str,
        request_body: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let environment = id.environment();
        let scope = format!("{}/.default", environment.vault_resource());
        let result = self
            .tokens
            .with_refresh_on_401(environment, &self.tenant, &scope, token, |t| async move {
                self.attempt(id, op, &t, url, request_body).await
            })
            .await;
        if let Err(e) = &result {
            tracing::info!(key = %id, op = op.permission(), error = %e, "Key Vault request failed");
        }
        result
    }

    /// [`Self::send`] with one token, retrying what the retry policy retries.
    async fn attempt(
        &self,
        id: &KeyIdentifier,
        op: Operation,
        token: &AccessToken,
        url: &str,
        request_body: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let transport = self.tokens.transport();
        self.retry
            .run(|time_left| {
                let request = match request_body {
                    None => transport.http().get(url),
                    Some(b) => transport
                        .http()
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        // The body may hold a key in clear (encrypt, wrap): each attempt's copy is
                        // owned by a Zeroizing buffer that is wiped when the HTTP stack drops it.
                        .body(bytes::Bytes::from_owner(Zeroizing::new(b.to_vec()))),
                };
                async move {
                    let resp = http::send(transport, Service::KeyVault, request, token, time_left).await?;
                    if resp.is_success() { Ok(resp) } else { Err(classify(id, op, &self.tenant, &resp)) }
                }
            })
            .await
            .map(|r| r.body)
    }
}

/// A `nextLink` must stay on the vault's host: the bearer token goes with it. Key Vault writes
/// the default port explicitly (`https://myvault.vault.azure.net:443/...`), which is the same
/// origin.
fn check_next_link(key: &KeyIdentifier, link: &str) -> Result<(), Error> {
    let vault_host = format!("{}.{}", key.vault(), key.environment().vault_dns_suffix());
    let parsed = url::Url::parse(link).ok();
    let same_origin = parsed.as_ref().is_some_and(|u| {
        u.scheme() == "https"
            && u.port().is_none()
            && u.username().is_empty()
            && u.password().is_none()
            && u.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&vault_host))
    });
    if same_origin {
        Ok(())
    } else {
        let elsewhere = parsed
            .map(|u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")))
            .unwrap_or_else(|| "an unparseable URL".into());
        Err(bad_answer(
            key,
            &format!(
                "the versions list's nextLink leads to {elsewhere}, not to https://{vault_host}; it was not followed"
            ),
        ))
    }
}

fn operation_body(algorithm: EncryptionAlgorithm, input: &[u8]) -> Zeroizing<Vec<u8>> {
    // The value may be a master key (wrap/encrypt): keep every copy we own wipeable.
    let value = Zeroizing::new(URL_SAFE_NO_PAD.encode(input));
    let mut body = Zeroizing::new(Vec::with_capacity(value.len() + 40));
    body.extend_from_slice(br#"{"alg":""#);
    body.extend_from_slice(algorithm.as_str().as_bytes());
    body.extend_from_slice(br#"","value":""#);
    body.extend_from_slice(value.as_bytes());
    body.extend_from_slice(br#""}"#);
    body
}

fn decode_b64url(s: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    // Key Vault writes base64url without padding; tolerate padding in case a proxy adds it.
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map(Zeroizing::new)
        .map_err(|e| format!("a value is not base64url: {e}"))
}

fn bad_answer(id: &KeyIdentifier, why: &str) -> Error {
    Error::new(ErrorKind::Unreachable, Service::KeyVault, format!("Key Vault's answer for {id} is unusable: {why}"))
}

/// The versioned identifier in a `kid`, checked to be the key that was asked for.
fn versioned_kid(asked: &KeyIdentifier, kid: &str) -> Result<KeyIdentifier, Error> {
    let got: KeyIdentifier = kid.parse().map_err(|e| bad_answer(asked, &format!("kid '{kid}': {e}")))?;
    if got.vault() != asked.vault() || !got.name().as_str().eq_ignore_ascii_case(asked.name().as_str()) {
        return Err(bad_answer(asked, &format!("kid '{kid}' names another key")));
    }
    if got.version().is_none() {
        return Err(bad_answer(asked, &format!("kid '{kid}' has no version")));
    }
    if let Some(v) = asked.version()
        && got.version() != Some(v)
    {
        return Err(bad_answer(asked, &format!("kid '{kid}' is not the version asked for")));
    }
    Ok(got)
}

/// Classify a Key Vault error answer and attach the fix.
fn classify(id: &KeyIdentifier, op: Operation, tenant: &AzureUuid, resp: &http::Response) -> Error {
    let parsed = AzureErrorBody::parse(&resp.body);
    let code = parsed.specific_code().map(str::to_string);
    let message = if parsed.error.message.is_empty() {
        format!("HTTP {} without a Key Vault error body", resp.status)
    } else {
        parsed.error.message.clone()
    };
    let kind = classify_kind(resp.status, code.as_deref(), &message);
    let mut err = Error::new(kind, Service::KeyVault, message.clone())
        .with_status(resp.status)
        .with_retry_after(resp.retry_after());
    if let Some(c) = &code {
        err = err.with_code(c.clone());
    }
    let www_authenticate = resp.headers.get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
    if let Some(r) = remediation(id, op, tenant, resp.status, kind, code.as_deref(), &message, www_authenticate) {
        err = err.with_remediation(r);
    }
    err
}

/// The class of a Key Vault error from its status, specific code and message.
pub(crate) fn classify_kind(status: u16, code: Option<&str>, message: &str) -> ErrorKind {
    let lower = message.to_ascii_lowercase();
    match (status, code) {
        (429, _) => ErrorKind::Throttled,
        (408 | 500..=599, _) => ErrorKind::Unreachable,
        (401, _) => ErrorKind::Denied,
        (_, Some("ForbiddenByRbac" | "ForbiddenByPolicy" | "ForbiddenByConnection" | "ForbiddenByFirewall")) => {
            ErrorKind::Denied
        }
        (
            _,
            Some("KeyDisabled" | "KeyExpired" | "KeyNotYetValid" | "KeyOperationForbidden" | "OperationNotAllowed"),
        ) => ErrorKind::Disabled,
        (403 | 400, _)
            if lower.contains("disabled key")
                || lower.contains("key is disabled")
                || lower.contains("expired")
                || lower.contains("not yet valid")
                || lower.contains("is not allowed on this key")
                || lower.contains("not permitted by key_ops") =>
        {
            ErrorKind::Disabled
        }
        (404, _) => ErrorKind::NotFound,
        (_, Some("KeyNotFound" | "VaultNotFound")) => ErrorKind::NotFound,
        _ => kind_for_status(status),
    }
}

/// The fix for a Key Vault error, when one is known. Uses the caller's object id and the vault's
/// resource id from Azure's message when it names them.
#[allow(clippy::too_many_arguments)]
fn remediation(
    id: &KeyIdentifier,
    op: Operation,
    tenant: &AzureUuid,
    status: u16,
    kind: ErrorKind,
    code: Option<&str>,
    message: &str,
    www_authenticate: Option<&str>,
) -> Option<String> {
    let vault = id.vault();
    let key = id.name();
    let oid = between(message, "oid=", &[';', '\'', '\r', '\n', ' ']).unwrap_or("<service principal object id>");
    let vault_scope = between(message, "Resource: '", &['\''])
        .map(|r| match r.to_ascii_lowercase().find("/keys/") {
            Some(i) => r[..i].to_string(),
            None => r.to_string(),
        })
        .unwrap_or_else(|| format!("$(az keyvault show --name {vault} --query id -o tsv)"));
    let version_arg = id.version().map(|v| format!(" --version {v}")).unwrap_or_default();
    Some(match (kind, code) {
        (ErrorKind::Denied, Some("ForbiddenByRbac")) => format!(
            "grant the platform's service principal the data role on the vault: `az role assignment create --assignee-object-id {oid} --assignee-principal-type ServicePrincipal --role \"Key Vault Crypto User\" --scope {vault_scope}` (role assignments can take several minutes to propagate)"
        ),
        (ErrorKind::Denied, Some("ForbiddenByPolicy")) if op == Operation::List => format!(
            "add the list permission to the platform's access policy (the current version of key {key} is unusable, so its versions were listed to find an earlier usable one): `az keyvault set-policy --name {vault} --object-id {oid} --key-permissions get list encrypt decrypt wrapKey unwrapKey`"
        ),
        (ErrorKind::Denied, Some("ForbiddenByPolicy")) => format!(
            "add an access policy for the platform's service principal: `az keyvault set-policy --name {vault} --object-id {oid} --key-permissions get encrypt decrypt wrapKey unwrapKey`"
        ),
        (ErrorKind::Denied, Some("ForbiddenByConnection" | "ForbiddenByFirewall")) => format!(
            "vault {vault} refuses this network path: reach it through its private endpoint, or allow public access with `az keyvault update --name {vault} --public-network-access Enabled`"
        ),
        (ErrorKind::Denied, _) if status == 401 => {
            let vault_tenant = www_authenticate.and_then(challenge_tenant);
            match vault_tenant {
                Some(t) if !t.eq_ignore_ascii_case(&tenant.to_string()) => format!(
                    "vault {vault} belongs to tenant {t}, but the token was issued in tenant {tenant}: configure tenant {t}"
                ),
                _ => format!(
                    "Key Vault refused the token: check that tenant {tenant} is the vault's tenant and that the azureEnvironment matches the vault's cloud"
                ),
            }
        }
        (ErrorKind::Disabled, _) => {
            let lower = message.to_ascii_lowercase();
            if lower.contains("expired") {
                format!(
                    "the key has expired: set a later expiry with `az keyvault key set-attributes --vault-name {vault} --name {key}{version_arg} --expires <YYYY-MM-DDThh:mm:ssZ>`, or rotate to a new version"
                )
            } else if lower.contains("not yet valid") {
                format!(
                    "the key is not valid yet: `az keyvault key set-attributes --vault-name {vault} --name {key}{version_arg} --not-before <YYYY-MM-DDThh:mm:ssZ>`"
                )
            } else if lower.contains("disabled") || code == Some("KeyDisabled") {
                format!(
                    "enable the key: `az keyvault key set-attributes --vault-name {vault} --name {key}{version_arg} --enabled true`"
                )
            } else {
                format!(
                    "allow the operation on the key: `az keyvault key set-attributes --vault-name {vault} --name {key}{version_arg} --ops encrypt decrypt wrapKey unwrapKey` (this call needed {})",
                    op.permission()
                )
            }
        }
        (ErrorKind::NotFound, _) => format!(
            "check the keyIdentifier {id}; if key {key} was deleted, recover it with `az keyvault key recover --vault-name {vault} --name {key}`"
        ),
        _ => return None,
    })
}

/// The tenant in a `WWW-Authenticate: Bearer authorization="https://login.../{tenant}", ...`
/// challenge: the first path segment of the authorization URI (how the SDKs read it, §3.6).
fn challenge_tenant(header: &str) -> Option<String> {
    let uri =
        between(header, "authorization=\"", &['"']).or_else(|| between(header, "authorization_uri=\"", &['"']))?;
    let url = url::Url::parse(uri).ok()?;
    url.path_segments()?.next().filter(|s| !s.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> KeyIdentifier {
        s.parse().unwrap()
    }

    #[test]
    fn classification_of_the_reference_bodies() {
        // shared/reference/azure-examples/kv_errors.json
        let rbac = "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid=11111111-2222-3333-4444-555555555555;oid=66666666-7777-8888-9999-000000000000;iss=https://sts.windows.net/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee/\r\nAction: 'Microsoft.KeyVault/vaults/keys/unwrap/action'\r\nResource: '/subscriptions/s1/resourcegroups/rg1/providers/microsoft.keyvault/vaults/kv1/keys/k1'\r\nAssignment: (not found)\r\n";
        assert_eq!(classify_kind(403, Some("ForbiddenByRbac"), rbac), ErrorKind::Denied);
        assert_eq!(
            classify_kind(403, Some("ForbiddenByPolicy"), "does not have keys unwrapKey permission"),
            ErrorKind::Denied
        );
        assert_eq!(
            classify_kind(403, Some("ForbiddenByConnection"), "Public network access is disabled"),
            ErrorKind::Denied
        );
        assert_eq!(
            classify_kind(403, Some("KeyDisabled"), "Operation unwrapKey is not allowed on a disabled key."),
            ErrorKind::Disabled
        );
        // Top-level code only, as some services send it.
        assert_eq!(
            classify_kind(403, Some("Forbidden"), "Operation WrapKey is not allowed on a disabled key"),
            ErrorKind::Disabled
        );
        assert_eq!(classify_kind(403, Some("Forbidden"), "The key is expired."), ErrorKind::Disabled);
        assert_eq!(
            classify_kind(404, Some("KeyNotFound"), "A key with (name/id) mykey was not found"),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify_kind(401, Some("Unauthorized"), "AKV10000: Request is missing a Bearer or PoP token."),
            ErrorKind::Denied
        );
        assert_eq!(classify_kind(400, Some("BadParameter"), "Property has invalid value"), ErrorKind::Misconfigured);
        assert_eq!(classify_kind(429, Some("Throttled"), "slow down"), ErrorKind::Throttled);
        assert_eq!(classify_kind(503, None, ""), ErrorKind::Unreachable);
        assert_eq!(classify_kind(403, Some("Forbidden"), "something else"), ErrorKind::Denied);
        // The emulator's codes for the key-state rules.
        for code in ["KeyExpired", "KeyNotYetValid", "KeyOperationForbidden"] {
            assert_eq!(
                classify_kind(403, Some(code), "Operation wrapKey is not allowed"),
                ErrorKind::Disabled,
                "{code}"
            );
        }
    }

    #[test]
    fn rbac_fix_uses_the_callers_oid_and_the_vault_scope_from_the_message() {
        let k = id("https://kv1.vault.azure.net/keys/k1/0698c2156c1a4e1da5b6bab6f6422fd6");
        let msg = "Caller: appid=a;oid=66666666-7777-8888-9999-000000000000;iss=https://sts.windows.net/t/\r\nResource: '/subscriptions/s1/resourcegroups/rg1/providers/microsoft.keyvault/vaults/kv1/keys/k1'\r\n";
        let t = AzureUuid::new_v4();
        let r =
            remediation(&k, Operation::Unwrap, &t, 403, ErrorKind::Denied, Some("ForbiddenByRbac"), msg, None).unwrap();
        assert!(
            r.contains("`az role assignment create --assignee-object-id 66666666-7777-8888-9999-000000000000 --assignee-principal-type ServicePrincipal --role \"Key Vault Crypto User\" --scope /subscriptions/s1/resourcegroups/rg1/providers/microsoft.keyvault/vaults/kv1`"),
            "{r}"
        );
        assert!(r.contains("propagate"));
        // Without a resource in the message, the scope is looked up by name.
        let r = remediation(&k, Operation::Unwrap, &t, 403, ErrorKind::Denied, Some("ForbiddenByRbac"), "denied", None)
            .unwrap();
        assert!(r.contains("--scope $(az keyvault show --name kv1 --query id -o tsv)"), "{r}");
        assert!(r.contains("<service principal object id>"), "{r}");

        let policy = "The user, group or application 'appid=a;oid=66666666-7777-8888-9999-000000000000;numgroups=0;iss=x' does not have keys unwrapKey permission on key vault 'kv1;location=westeurope'.";
        let r = remediation(&k, Operation::Unwrap, &t, 403, ErrorKind::Denied, Some("ForbiddenByPolicy"), policy, None)
            .unwrap();
        assert!(r.contains("az keyvault set-policy --name kv1 --object-id 66666666-7777-8888-9999-000000000000 --key-permissions get encrypt decrypt wrapKey unwrapKey"), "{r}");

        let r = remediation(
            &k,
            Operation::Unwrap,
            &t,
            403,
            ErrorKind::Disabled,
            Some("KeyDisabled"),
            "Operation unwrapKey is not allowed on a disabled key.",
            None,
        )
        .unwrap();
        assert!(r.contains("az keyvault key set-attributes --vault-name kv1 --name k1 --version 0698c2156c1a4e1da5b6bab6f6422fd6 --enabled true"), "{r}");
        let r =
            remediation(&k, Operation::Unwrap, &t, 404, ErrorKind::NotFound, Some("KeyNotFound"), "not found", None)
                .unwrap();
        assert!(r.contains("az keyvault key recover --vault-name kv1 --name k1"), "{r}");
    }

    #[test]
    fn wrong_tenant_is_named_from_the_challenge() {
        let k = id("https://kv1.vault.azure.net/keys/k1");
        let ours: AzureUuid = "aaaaaaaa-0000-0000-0000-000000000000".parse().unwrap();
        let header = r#"Bearer authorization="https://login.microsoftonline.com/bbbbbbbb-0000-0000-0000-000000000000", resource="https://vault.azure.net""#;
        let r = remediation(
            &k,
            Operation::Get,
            &ours,
            401,
            ErrorKind::Denied,
            Some("Unauthorized"),
            "AKV10032: Invalid issuer.",
            Some(header),
        )
        .unwrap();
        assert!(r.contains("belongs to tenant bbbbbbbb-0000-0000-0000-000000000000"), "{r}");
    }

    #[test]
    fn kid_must_name_the_asked_key_and_a_version() {
        let asked = id("https://kv1.vault.azure.net/keys/k1");
        let v = "0698c2156c1a4e1da5b6bab6f6422fd6";
        let got = versioned_kid(&asked, &format!("https://kv1.vault.azure.net/keys/K1/{v}")).unwrap();
        assert_eq!(got.version().unwrap().as_str(), v);
        assert!(versioned_kid(&asked, "https://kv1.vault.azure.net/keys/k1").is_err());
        assert!(versioned_kid(&asked, &format!("https://kv2.vault.azure.net/keys/k1/{v}")).is_err());
        let pinned = id(&format!("https://kv1.vault.azure.net/keys/k1/{v}"));
        assert!(
            versioned_kid(&pinned, "https://kv1.vault.azure.net/keys/k1/11111111111111111111111111111111").is_err()
        );
    }

    #[test]
    fn next_link_must_stay_on_the_vault() {
        let key = id("https://kv1.vault.azure.net/keys/k1");
        // Key Vault's own form writes the default port.
        for ok in [
            "https://kv1.vault.azure.net:443/keys/k1/versions?api-version=7.2&$skiptoken=abc&maxresults=1",
            "https://KV1.vault.azure.net/keys/k1/versions?api-version=7.5&$skiptoken=abc",
        ] {
            assert!(check_next_link(&key, ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://attacker.example/keys/k1/versions?$skiptoken=abc",
            "https://kv2.vault.azure.net/keys/k1/versions?$skiptoken=abc",
            "https://kv1.vault.azure.net.attacker.example/keys/k1/versions",
            "http://kv1.vault.azure.net/keys/k1/versions",
            "https://kv1.vault.azure.net:8443/keys/k1/versions",
            "https://user@kv1.vault.azure.net/keys/k1/versions",
            "https://kv1.vault.azure.cn/keys/k1/versions",
            "/keys/k1/versions?$skiptoken=abc",
        ] {
            let e = check_next_link(&key, bad).unwrap_err();
            assert!(e.to_string().contains("not followed"), "{bad}: {e}");
        }
        let china = id("https://kv1.vault.azure.cn/keys/k1");
        assert!(check_next_link(&china, "https://kv1.vault.azure.cn:443/keys/k1/versions").is_ok());
    }

    #[test]
    fn list_permission_fix_names_list() {
        let k = id("https://kv1.vault.azure.net/keys/k1");
        let t = AzureUuid::new_v4();
        let msg = "The user, group or application 'appid=a;oid=66666666-7777-8888-9999-000000000000;numgroups=0;iss=x' does not have keys list permission on key vault 'kv1;location=westeurope'.";
        let r =
            remediation(&k, Operation::List, &t, 403, ErrorKind::Denied, Some("ForbiddenByPolicy"), msg, None).unwrap();
        assert!(r.contains("--key-permissions get list encrypt decrypt wrapKey unwrapKey"), "{r}");
    }

    #[test]
    fn version_usability_follows_the_key_rule() {
        let v = KeyVersionInfo {
            id: id("https://kv1.vault.azure.net/keys/k1/0698c2156c1a4e1da5b6bab6f6422fd6"),
            enabled: true,
            not_before: Some(100),
            expires: Some(200),
            created: Some(50),
            updated: Some(50),
            tags: BTreeMap::new(),
            managed: false,
        };
        assert!(v.unusable_reason(150).is_none());
        assert!(v.unusable_reason(99).unwrap().contains("not valid before"));
        assert!(v.unusable_reason(200).unwrap().contains("expired"));
        assert!(KeyVersionInfo { enabled: false, ..v }.unusable_reason(150).unwrap().contains("disabled"));
    }

    #[test]
    fn request_body_is_alg_and_base64url_value() {
        let b = operation_body(EncryptionAlgorithm::RsaOaep256, &[0xfb, 0xff, 0x00]);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"alg": "RSA-OAEP-256", "value": "-_8A"}));
        for alg in [EncryptionAlgorithm::RsaOaep, EncryptionAlgorithm::RsaOaep256, EncryptionAlgorithm::Rsa1_5] {
            assert_eq!(alg.as_str().parse::<EncryptionAlgorithm>().unwrap(), alg);
        }
    }

    #[test]
    fn plaintext_debug_is_redacted() {
        let p = Plaintext {
            key_id: id("https://kv1.vault.azure.net/keys/k1/0698c2156c1a4e1da5b6bab6f6422fd6"),
            value: SecretSlice::from(b"master-key-bytes".to_vec()),
        };
        let s = format!("{p:?}");
        assert!(!s.contains("master") && !s.contains("109, 97"), "{s}");
    }

    #[test]
    fn key_usability() {
        let mut p = KeyProperties {
            id: id("https://kv1.vault.azure.net/keys/k1/0698c2156c1a4e1da5b6bab6f6422fd6"),
            kty: "RSA".into(),
            key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
            n: Some(vec![0xc0; 256]),
            e: Some(vec![1, 0, 1]),
            enabled: true,
            not_before: Some(100),
            expires: Some(200),
            created: None,
            updated: None,
            recovery_level: None,
            tags: BTreeMap::new(),
            managed: false,
        };
        assert_eq!(p.key_size_bits(), 2048);
        assert!(p.allows("unwrapkey") && !p.allows("sign"));
        assert!(p.unusable_reason(150).is_none());
        assert!(p.unusable_reason(50).unwrap().contains("not valid before"));
        assert!(p.unusable_reason(200).unwrap().contains("expired"));
        p.enabled = false;
        assert!(p.unusable_reason(150).unwrap().contains("disabled"));
    }
}
