//! The Key Vault keys operations, after the pipeline in `mod.rs` has authenticated and
//! authorised the caller. Reads work on the request's state snapshot; writes go through
//! [`Ctx::mutate`], which re-reads the vault, so a write either happens completely and is on
//! disk before the answer, or not at all.
//!
//! Key-state rules, applied to the crypto operations after the key is found:
//! * **Disabled** (`enabled: false`): decrypt, unwrapKey and sign → 403 `KeyDisabled`;
//!   encrypt, wrapKey, verify and GET keep working, as Azure does (peers.md §0.1,
//!   Azure/azure-sdk-for-python#45342).
//! * **`key_ops`**: an operation the key does not allow → 403 `KeyOperationForbidden`.
//! * **`nbf`/`exp`**: outside the window, encrypt, wrapKey and sign → 403 `KeyNotYetValid` /
//!   `KeyExpired`; decrypt, unwrapKey and verify keep working. This is Key Vault's documented
//!   rule ("Not-yet-valid and expired keys, outside the nbf / exp window, will work for decrypt,
//!   unwrap, and verify operations", about-keys-details): data protected while the key was valid
//!   must stay recoverable.
//!
//! The exact texts of these three 403s are not published by Azure; the codes and shapes are.
//!
//! Soft-deleted keys whose `scheduledPurgeDate` has passed count as purged; they are dropped
//! from the state the next time the vault is written.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};

use super::crypto::{self, CryptoError, EncryptionAlgorithm, KeyMaterial, SignatureAlgorithm};
use super::model::{self, B64URL_LENIENT};
use super::{CryptoOp, KvResult, Op, Query, Reject, bad_parameter, forbidden};
use crate::Ctx;
use crate::errors::{self, Surface, parse_json};
use crate::server::RequestInfo;
use crate::state::{DeletedKey, Key, KeyVersionRecord, Map, Vault};

const DEFAULT_MAX_RESULTS: usize = 25;

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

fn ok(body: &Value) -> KvResult<Response> {
    Ok(json_response(StatusCode::OK, body))
}

fn key_not_found(name: &str, version: &str) -> Reject {
    let id = if version.is_empty() { name.to_string() } else { format!("{name}/{version}") };
    errors::vault(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        &format!("A key with (name/id) {id} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"),
        None,
    )
    .into()
}

fn deleted_key_not_found(name: &str) -> Reject {
    errors::vault(StatusCode::NOT_FOUND, "KeyNotFound", &format!("Deleted Key not found: {name}"), None).into()
}

fn deleted_conflict(name: &str) -> Reject {
    errors::vault(
        StatusCode::CONFLICT,
        "Conflict",
        &format!("Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."),
        None,
    )
    .into()
}

fn vault_gone() -> Reject {
    errors::vault(StatusCode::NOT_FOUND, "VaultNotFound", "The vault was deleted while the request was running.", None)
        .into()
}

fn check_name(name: &str) -> KvResult<()> {
    if model::valid_key_name(name) {
        Ok(())
    } else {
        Err(bad_parameter(format!("The request URI contains an invalid name: {name}")))
    }
}

fn b64_field(field: &str, value: &str) -> KvResult<Vec<u8>> {
    B64URL_LENIENT.decode(value).map_err(|_| bad_parameter(format!("Property '{field}' is not valid base64url.")))
}

/// A soft-deleted key that is still recoverable at `now`.
fn live_deleted<'a>(vault: &'a Vault, lname: &str, now: i64) -> Option<&'a DeletedKey> {
    vault.deleted_keys.get(lname).filter(|d| d.scheduled_purge_date > now)
}

/// Drop soft-deleted keys whose purge date has passed; returns their versions for the cache.
fn expire_deleted(vault: &mut Vault, now: i64) -> Vec<String> {
    let mut gone = Vec::new();
    vault.deleted_keys.retain(|_, d| {
        let keep = d.scheduled_purge_date > now;
        if !keep {
            gone.extend(d.key.versions.iter().map(|v| v.version.clone()));
        }
        keep
    });
    gone
}

fn find_key<'a>(vault: &'a Vault, name: &str) -> KvResult<&'a Key> {
    vault.keys.get(&name.to_ascii_lowercase()).ok_or_else(|| key_not_found(name, ""))
}

/// The version named by the path; an empty version is the latest.
fn find_version<'a>(key: &'a Key, name: &str, version: &str) -> KvResult<&'a KeyVersionRecord> {
    let rec = if version.is_empty() { key.latest() } else { key.version(version) };
    rec.ok_or_else(|| key_not_found(name, version))
}

fn new_version_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(super) async fn execute(
    ctx: &Ctx,
    info: &RequestInfo,
    vault: &Vault,
    op: Op,
    query: &Query,
    body: &[u8],
    now: i64,
) -> KvResult<Response> {
    if let Some(name) = op.key_name() {
        check_name(name)?;
    }
    match op {
        Op::Crypto { name, version, op } => crypto_op(ctx, vault, &name, &version, op, body, now).await,
        Op::Get { name, version } => {
            let key = find_key(vault, &name)?;
            ok(&model::key_bundle(vault, key, find_version(key, &name, &version)?))
        }
        Op::ListKeys => list_keys(info, vault, query),
        Op::Versions { name } => list_versions(info, vault, &name, query),
        Op::ListDeleted => list_deleted(info, vault, query, now),
        Op::GetDeleted { name } => {
            let d = live_deleted(vault, &name.to_ascii_lowercase(), now).ok_or_else(|| deleted_key_not_found(&name))?;
            ok(&model::deleted_key_bundle(vault, d, true))
        }
        Op::Create { name } => create(ctx, vault, &name, body).await,
        Op::Import { name } => import(ctx, vault, &name, body).await,
        Op::Update { name, version } => update(ctx, vault, &name, &version, body),
        Op::Rotate { name } => rotate(ctx, vault, &name).await,
        Op::Delete { name } => delete(ctx, vault, &name),
        Op::Recover { name } => recover(ctx, vault, &name),
        Op::Purge { name } => purge(ctx, vault, &name),
    }
}

// ---------------------------------------------------------------------------------------------
// Crypto operations (the hot path: no state writes, cached keys, one small JSON in and out).

#[derive(Serialize)]
struct OperationResult<'a> {
    kid: &'a str,
    value: &'a str,
}

fn crypto_error(e: CryptoError, alg: &str) -> Reject {
    match e {
        CryptoError::PlaintextTooLong { len, max } => {
            bad_parameter(format!("The plaintext is {len} bytes; {alg} with this key accepts at most {max} bytes."))
        }
        CryptoError::CiphertextWrongLength { len, expected } => bad_parameter(format!(
            "The ciphertext is {len} bytes; a ciphertext for this key must be exactly {expected} bytes."
        )),
        CryptoError::DecryptionFailed => {
            bad_parameter(format!("Decryption failed: the ciphertext was not produced by this key with {alg}."))
        }
        CryptoError::DigestWrongLength { len, expected } => {
            bad_parameter(format!("The digest is {len} bytes; {alg} needs a digest of exactly {expected} bytes."))
        }
        CryptoError::Internal => {
            tracing::error!("a stored key could not be used for a cryptographic operation");
            errors::vault(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The key's material could not be loaded by the emulator.",
                None,
            )
            .into()
        }
    }
}

/// The key-state rules of the module doc, in that order.
fn check_key_state(rec: &KeyVersionRecord, op: CryptoOp, now: i64) -> KvResult<()> {
    let name = op.key_op();
    let private_op = matches!(op, CryptoOp::Decrypt | CryptoOp::UnwrapKey | CryptoOp::Sign);
    if !rec.enabled && private_op {
        return Err(forbidden(format!("Operation {name} is not allowed on a disabled key."), "KeyDisabled"));
    }
    if !rec.key_ops.iter().any(|o| o == name) {
        return Err(forbidden(
            format!(
                "Operation {name} is not allowed on this key. The key allows these operations: [{}].",
                rec.key_ops.join(", ")
            ),
            "KeyOperationForbidden",
        ));
    }
    let dated_op = matches!(op, CryptoOp::Encrypt | CryptoOp::WrapKey | CryptoOp::Sign);
    if dated_op {
        if let Some(nbf) = rec.nbf
            && now < nbf
        {
            return Err(forbidden(
                format!("Operation {name} is not allowed on a key that is not yet valid (nbf {nbf})."),
                "KeyNotYetValid",
            ));
        }
        if let Some(exp) = rec.exp
            && now >= exp
        {
            return Err(forbidden(
                format!("Operation {name} is not allowed on an expired key (exp {exp})."),
                "KeyExpired",
            ));
        }
    }
    Ok(())
}

async fn crypto_op(
    ctx: &Ctx,
    vault: &Vault,
    name: &str,
    version: &str,
    op: CryptoOp,
    body: &[u8],
    now: i64,
) -> KvResult<Response> {
    // Parse the request fully before touching the key: a bad body is the caller's error
    // whatever state the key is in.
    enum Input {
        Cipher(EncryptionAlgorithm, Vec<u8>),
        Sign(SignatureAlgorithm, Vec<u8>),
        Verify(SignatureAlgorithm, Vec<u8>, Vec<u8>),
    }
    let input = match op {
        CryptoOp::Sign => {
            let p: model::SignParams = parse_json(Surface::Vault, body)?;
            Input::Sign(sign_alg(&p.alg)?, b64_field("value", &p.value)?)
        }
        CryptoOp::Verify => {
            let p: model::VerifyParams = parse_json(Surface::Vault, body)?;
            Input::Verify(sign_alg(&p.alg)?, b64_field("digest", &p.digest)?, b64_field("value", &p.value)?)
        }
        _ => {
            let p: model::OperationParams = parse_json(Surface::Vault, body)?;
            let alg = EncryptionAlgorithm::parse(&p.alg).ok_or_else(|| {
                bad_parameter(format!(
                    "Invalid algorithm '{}' for an RSA key. Use RSA-OAEP, RSA-OAEP-256 or RSA1_5.",
                    p.alg
                ))
            })?;
            Input::Cipher(alg, b64_field("value", &p.value)?)
        }
    };

    let key = find_key(vault, name)?;
    let rec = find_version(key, name, version)?;
    check_key_state(rec, op, now)?;
    let loaded = ctx.key_cache.get(rec).map_err(|e| crypto_error(e, ""))?;
    let kid = model::kid(vault, &key.name, Some(&rec.version));

    // Public-key operations (encrypt, wrap, verify: tens of microseconds) run inline. Private-key
    // operations (decrypt, unwrap, sign: ~0.7 ms for RSA-2048, ~5 ms for 4096) run on the
    // blocking pool, so the runtime threads keep serving I/O and the other surfaces; tokio asks
    // for no more than ~100 us between awaits. Measured with the `unwrap_throughput_over_tls`
    // test: the CPU per request is the same either way (~850 us for request plus in-process
    // client, against ~685 us for the bare RSA decryption), so the thread hop costs nothing.
    let out = match input {
        Input::Cipher(alg, data) if matches!(op, CryptoOp::Encrypt | CryptoOp::WrapKey) => {
            loaded.encrypt(alg, &data).map_err(|e| crypto_error(e, alg.name()))?
        }
        Input::Cipher(alg, data) => tokio::task::spawn_blocking(move || loaded.decrypt(alg, &data))
            .await
            .unwrap_or(Err(CryptoError::Internal))
            .map_err(|e| crypto_error(e, alg.name()))?,
        Input::Sign(alg, digest) => tokio::task::spawn_blocking(move || loaded.sign(alg, &digest))
            .await
            .unwrap_or(Err(CryptoError::Internal))
            .map_err(|e| crypto_error(e, "this algorithm"))?,
        Input::Verify(alg, digest, sig) => {
            let valid = loaded.verify(alg, &digest, &sig).map_err(|e| crypto_error(e, "this algorithm"))?;
            return ok(&json!({ "value": valid }));
        }
    };
    let value = URL_SAFE_NO_PAD.encode(&out);
    Ok(json_response(StatusCode::OK, &OperationResult { kid: &kid, value: &value }))
}

fn sign_alg(alg: &str) -> KvResult<SignatureAlgorithm> {
    SignatureAlgorithm::parse(alg).ok_or_else(|| {
        bad_parameter(format!(
            "Invalid algorithm '{alg}' for an RSA key. Use RS256, RS384, RS512, PS256, PS384 or PS512."
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Lists.

fn max_results(q: &Query) -> KvResult<usize> {
    match q.maxresults.as_deref() {
        None => Ok(DEFAULT_MAX_RESULTS),
        Some(v) => {
            v.parse::<usize>().ok().filter(|n| (1..=DEFAULT_MAX_RESULTS).contains(n)).ok_or_else(|| {
                bad_parameter(format!("Invalid maxresults '{v}': it must be an integer between 1 and 25."))
            })
        }
    }
}

/// `$skiptoken` carries the sort key of the last item returned (base64url, opaque to clients).
fn skip_after(q: &Query) -> KvResult<Option<String>> {
    let Some(t) = q.skiptoken.as_deref() else { return Ok(None) };
    B64URL_LENIENT
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| bad_parameter("The $skiptoken is not one this vault issued."))
}

/// One page of `entries` (already in order) after `after`, and the token for the next page.
fn paginate<T>(entries: Vec<(String, T)>, after: Option<&str>, max: usize) -> (Vec<T>, Option<String>) {
    let start = match after {
        None => 0,
        Some(a) => entries.iter().position(|(k, _)| k.as_str() > a).unwrap_or(entries.len()),
    };
    let more = entries.len() > start + max;
    let page: Vec<(String, T)> = entries.into_iter().skip(start).take(max).collect();
    let next = if more { page.last().map(|(k, _)| k.clone()) } else { None };
    (page.into_iter().map(|(_, v)| v).collect(), next)
}

fn list_response(
    info: &RequestInfo,
    path: &str,
    q: &Query,
    items: Vec<Value>,
    next: Option<String>,
) -> KvResult<Response> {
    let next_link = next.map(|token| {
        let mut link = format!(
            "{}{path}?api-version={}&$skiptoken={}",
            info.origin,
            q.api_version.as_deref().unwrap_or("7.6"),
            URL_SAFE_NO_PAD.encode(token.as_bytes())
        );
        if let Some(m) = &q.maxresults {
            link.push_str(&format!("&maxresults={m}"));
        }
        link
    });
    ok(&json!({ "value": items, "nextLink": next_link }))
}

fn list_keys(info: &RequestInfo, vault: &Vault, q: &Query) -> KvResult<Response> {
    let max = max_results(q)?;
    let after = skip_after(q)?;
    // The map is ordered by lowercase name, which is the sort key the token carries.
    let entries = vault
        .keys
        .iter()
        .filter_map(|(lname, key)| key.latest().map(|rec| (lname.clone(), model::key_item(vault, key, rec, false))))
        .collect();
    let (items, next) = paginate(entries, after.as_deref(), max);
    list_response(info, "/keys", q, items, next)
}

fn list_versions(info: &RequestInfo, vault: &Vault, name: &str, q: &Query) -> KvResult<Response> {
    let max = max_results(q)?;
    let after = skip_after(q)?;
    let key = find_key(vault, name)?;
    // Versions are listed oldest first; the token is a zero-padded position so that string
    // order is list order.
    let entries = key
        .versions
        .iter()
        .enumerate()
        .map(|(i, rec)| (format!("{i:08}"), model::key_item(vault, key, rec, true)))
        .collect();
    let (items, next) = paginate(entries, after.as_deref(), max);
    list_response(info, &format!("/keys/{name}/versions"), q, items, next)
}

fn list_deleted(info: &RequestInfo, vault: &Vault, q: &Query, now: i64) -> KvResult<Response> {
    let max = max_results(q)?;
    let after = skip_after(q)?;
    let entries = vault
        .deleted_keys
        .iter()
        .filter(|(_, d)| d.scheduled_purge_date > now)
        .map(|(lname, d)| (lname.clone(), model::deleted_key_item(vault, d)))
        .collect();
    let (items, next) = paginate(entries, after.as_deref(), max);
    list_response(info, "/deletedkeys", q, items, next)
}

// ---------------------------------------------------------------------------------------------
// Writes.

/// Validated settings of a new key version.
struct NewVersion {
    kty: String,
    key_ops: Vec<String>,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    tags: Map<String, String>,
}

impl NewVersion {
    fn from_parts(
        kty: String,
        key_ops: Option<&[String]>,
        attributes: Option<&model::AttributesIn>,
        tags: Option<Map<String, String>>,
        release_policy: Option<&Value>,
    ) -> KvResult<Self> {
        let key_ops = match key_ops {
            Some(ops) => model::parse_key_ops(ops).map_err(bad_parameter)?,
            None => model::DEFAULT_RSA_OPS.iter().map(|s| s.to_string()).collect(),
        };
        let none = model::AttributesIn { enabled: None, nbf: None, exp: None, exportable: None };
        let a = attributes.unwrap_or(&none);
        model::check_attributes(a, release_policy).map_err(bad_parameter)?;
        let tags = tags.unwrap_or_default();
        model::check_tags(&tags).map_err(bad_parameter)?;
        Ok(Self { kty, key_ops, enabled: a.enabled.unwrap_or(true), nbf: a.nbf, exp: a.exp, tags })
    }

    fn record(self, material: KeyMaterial, now: i64) -> KeyVersionRecord {
        KeyVersionRecord {
            version: new_version_id(),
            kty: self.kty,
            key_size: material.bits,
            pkcs8_b64: material.pkcs8_b64,
            n: material.n,
            e: material.e,
            key_ops: self.key_ops,
            enabled: self.enabled,
            nbf: self.nbf,
            exp: self.exp,
            created: now,
            updated: now,
            tags: self.tags,
        }
    }
}

/// `RSA` or `RSA-HSM` in Key Vault's spelling; other key types get a clear 400.
fn rsa_kty(kty: &str) -> KvResult<String> {
    if kty.eq_ignore_ascii_case("RSA") {
        return Ok("RSA".into());
    }
    if kty.eq_ignore_ascii_case("RSA-HSM") {
        return Ok("RSA-HSM".into());
    }
    if ["EC", "EC-HSM", "oct", "oct-HSM"].iter().any(|k| k.eq_ignore_ascii_case(kty)) {
        return Err(bad_parameter(format!(
            "Key type '{kty}' is not supported by the atrest emulator, which implements RSA and RSA-HSM keys only."
        )));
    }
    Err(bad_parameter(format!("Invalid kty '{kty}'. Valid key types: EC, EC-HSM, RSA, RSA-HSM, oct, oct-HSM.")))
}

/// Generate key material off the runtime threads (a 4096-bit key takes a while).
async fn generate(bits: u32) -> KvResult<KeyMaterial> {
    let r = tokio::task::spawn_blocking(move || crypto::generate(bits)).await;
    match r {
        Ok(Ok(m)) => Ok(m),
        _ => Err(crypto_error(CryptoError::Internal, "")),
    }
}

/// Add `rec` as the newest version of key `name` (creating the key), refusing a name that is
/// soft-deleted. Returns the new version's bundle.
fn add_version(ctx: &Ctx, vault: &Vault, name: &str, rec: KeyVersionRecord) -> KvResult<Response> {
    let vault_key = Vault::key(vault.cloud, &vault.name);
    let lname = name.to_ascii_lowercase();
    let now = ctx.now();
    let (bundle, expired) = ctx.mutate(|s| -> KvResult<(Value, Vec<String>)> {
        let v = s.vaults.get_mut(&vault_key).ok_or_else(vault_gone)?;
        let expired = expire_deleted(v, now);
        if v.deleted_keys.contains_key(&lname) {
            return Err(deleted_conflict(name));
        }
        v.keys
            .entry(lname.clone())
            .or_insert_with(|| Key { name: name.to_string(), versions: Vec::new() })
            .versions
            .push(rec);
        let v = &*v;
        let key = v.keys.get(&lname).ok_or_else(|| key_not_found(name, ""))?;
        let latest = key.latest().ok_or_else(|| key_not_found(name, ""))?;
        Ok((model::key_bundle(v, key, latest), expired))
    })?;
    ctx.key_cache.forget(expired.iter().map(String::as_str));
    ok(&bundle)
}

async fn create(ctx: &Ctx, vault: &Vault, name: &str, body: &[u8]) -> KvResult<Response> {
    let p: model::CreateParams = parse_json(Surface::Vault, body)?;
    let kty = rsa_kty(&p.kty)?;
    let bits = p.key_size.unwrap_or(2048);
    if ![2048, 3072, 4096].contains(&bits) {
        return Err(bad_parameter(format!(
            "The key size {bits} is not supported for RSA keys. Supported sizes: 2048, 3072, 4096."
        )));
    }
    if p.public_exponent.is_some_and(|e| e != 65537) {
        return Err(bad_parameter("Only the public exponent 65537 is supported."));
    }
    let _ = &p.crv; // Curves apply to EC keys only; Key Vault ignores one sent with an RSA key.
    let spec =
        NewVersion::from_parts(kty, p.key_ops.as_deref(), p.attributes.as_ref(), p.tags, p.release_policy.as_ref())?;
    // Refuse a soft-deleted name before paying for key generation (checked again when writing).
    if live_deleted(vault, &name.to_ascii_lowercase(), ctx.now()).is_some() {
        return Err(deleted_conflict(name));
    }
    let material = generate(bits).await?;
    add_version(ctx, vault, name, spec.record(material, ctx.now()))
}

async fn import(ctx: &Ctx, vault: &Vault, name: &str, body: &[u8]) -> KvResult<Response> {
    let p: model::ImportParams = parse_json(Surface::Vault, body)?;
    let mut kty = rsa_kty(&p.key.kty)?;
    if p.hsm == Some(true) {
        kty = "RSA-HSM".into();
    }
    let field = |f: &str, v: &Option<String>| -> KvResult<Vec<u8>> {
        match v {
            Some(v) => b64_field(&format!("key.{f}"), v),
            None => Err(bad_parameter(format!(
                "The imported JSON web key has no '{f}': importing an RSA key needs n, e, d, p, q, dp, dq and qi."
            ))),
        }
    };
    let k = &p.key;
    let components = crypto::RsaPrivateComponents {
        n: field("n", &k.n)?,
        e: field("e", &k.e)?,
        d: field("d", &k.d)?,
        p: field("p", &k.p)?,
        q: field("q", &k.q)?,
        dp: field("dp", &k.dp)?,
        dq: field("dq", &k.dq)?,
        qi: field("qi", &k.qi)?,
    };
    let spec =
        NewVersion::from_parts(kty, k.key_ops.as_deref(), p.attributes.as_ref(), p.tags, p.release_policy.as_ref())?;
    let material =
        tokio::task::spawn_blocking(move || crypto::import(&components)).await.ok().flatten().ok_or_else(|| {
            bad_parameter("The imported JSON web key is not a valid RSA private key of 2048 to 4096 bits.")
        })?;
    add_version(ctx, vault, name, spec.record(material, ctx.now()))
}

async fn rotate(ctx: &Ctx, vault: &Vault, name: &str) -> KvResult<Response> {
    let latest = find_version(find_key(vault, name)?, name, "")?;
    // A rotation makes a new version with the same type, size, operations and tags; the new
    // version is enabled and has no activation or expiry (no rotation policy sets one here).
    let spec = NewVersion {
        kty: latest.kty.clone(),
        key_ops: latest.key_ops.clone(),
        enabled: true,
        nbf: None,
        exp: None,
        tags: latest.tags.clone(),
    };
    let material = generate(latest.key_size).await?;
    let rec = spec.record(material, ctx.now());
    let vault_key = Vault::key(vault.cloud, &vault.name);
    let lname = name.to_ascii_lowercase();
    let bundle = ctx.mutate(|s| -> KvResult<Value> {
        let v = s.vaults.get_mut(&vault_key).ok_or_else(vault_gone)?;
        // The key may have been deleted while the new material was generated.
        let key = v.keys.get_mut(&lname).ok_or_else(|| key_not_found(name, ""))?;
        key.versions.push(rec);
        let v = &*v;
        let key = v.keys.get(&lname).ok_or_else(|| key_not_found(name, ""))?;
        let latest = key.latest().ok_or_else(|| key_not_found(name, ""))?;
        Ok(model::key_bundle(v, key, latest))
    })?;
    ok(&bundle)
}

fn update(ctx: &Ctx, vault: &Vault, name: &str, version: &str, body: &[u8]) -> KvResult<Response> {
    let p: model::UpdateParams = parse_json(Surface::Vault, body)?;
    let key_ops = p.key_ops.as_deref().map(model::parse_key_ops).transpose().map_err(bad_parameter)?;
    if let Some(a) = &p.attributes {
        model::check_attributes(a, p.release_policy.as_ref()).map_err(bad_parameter)?;
    } else if p.release_policy.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(bad_parameter(
            "Key release policies (secure key release) are not supported by the atrest emulator.",
        ));
    }
    if let Some(t) = &p.tags {
        model::check_tags(t).map_err(bad_parameter)?;
    }
    let vault_key = Vault::key(vault.cloud, &vault.name);
    let lname = name.to_ascii_lowercase();
    let now = ctx.now();
    let bundle = ctx.mutate(|s| -> KvResult<Value> {
        let v = s.vaults.get_mut(&vault_key).ok_or_else(vault_gone)?;
        let key = v.keys.get_mut(&lname).ok_or_else(|| key_not_found(name, ""))?;
        let rec = if version.is_empty() {
            key.versions.last_mut()
        } else {
            key.versions.iter_mut().find(|r| r.version.eq_ignore_ascii_case(version))
        }
        .ok_or_else(|| key_not_found(name, version))?;
        if let Some(ops) = key_ops {
            rec.key_ops = ops;
        }
        if let Some(a) = &p.attributes {
            if let Some(e) = a.enabled {
                rec.enabled = e;
            }
            if a.nbf.is_some() {
                rec.nbf = a.nbf;
            }
            if a.exp.is_some() {
                rec.exp = a.exp;
            }
            if let (Some(nbf), Some(exp)) = (rec.nbf, rec.exp)
                && exp <= nbf
            {
                return Err(bad_parameter("The key's expiry time (exp) must be later than its activation time (nbf)."));
            }
        }
        if let Some(t) = &p.tags {
            rec.tags = t.clone();
        }
        rec.updated = now;
        let version_id = rec.version.clone();
        let v = &*v;
        let key = v.keys.get(&lname).ok_or_else(|| key_not_found(name, ""))?;
        let rec = key.version(&version_id).ok_or_else(|| key_not_found(name, version))?;
        Ok(model::key_bundle(v, key, rec))
    })?;
    ok(&bundle)
}

fn delete(ctx: &Ctx, vault: &Vault, name: &str) -> KvResult<Response> {
    let vault_key = Vault::key(vault.cloud, &vault.name);
    let lname = name.to_ascii_lowercase();
    let now = ctx.now();
    let (bundle, forget) = ctx.mutate(|s| -> KvResult<(Value, Vec<String>)> {
        let v = s.vaults.get_mut(&vault_key).ok_or_else(vault_gone)?;
        let mut forget = expire_deleted(v, now);
        let key = v.keys.remove(&lname).ok_or_else(|| key_not_found(name, ""))?;
        let soft = v.properties.enable_soft_delete;
        let days = i64::from(v.properties.soft_delete_retention_in_days);
        let deleted = DeletedKey { key, deleted_date: now, scheduled_purge_date: now + days * 86_400 };
        let bundle = model::deleted_key_bundle(v, &deleted, soft);
        if soft {
            v.deleted_keys.insert(lname.clone(), deleted);
        } else {
            forget.extend(deleted.key.versions.iter().map(|r| r.version.clone()));
        }
        Ok((bundle, forget))
    })?;
    ctx.key_cache.forget(forget.iter().map(String::as_str));
    ok(&bundle)
}

fn recover(ctx: &Ctx, vault: &Vault, name: &str) -> KvResult<Response> {
    let vault_key = Vault::key(vault.cloud, &vault.name);
    let lname = name.to_ascii_lowercase();
    let now = ctx.now();
    let (bundle, expired) = ctx.mutate(|s| -> KvResult<(Value, Vec<String>)> {
        let v = s.vaults.get_mut(&vault_key).ok_or_else(vault_gone)?;
        let expired = expire_deleted(v, now);
        let d = v.deleted_keys.remove(&lname).ok_or_else(|| deleted_key_not_found(name))?;
        // A soft-deleted name cannot be created again, so a live key of the same name cannot
        // exist; refuse anyway rather than overwrite one.
        if v.keys.contains_key(&lname) {
            return Err(errors::vault(
                StatusCode::CONFLICT,
                "Conflict",
                &format!("Key {name} exists and is not deleted; recovering the deleted one would replace it."),
                None,
            )
            .into());
        }
        v.keys.insert(lname.clone(), d.key);
        let v = &*v;
        let key = v.keys.get(&lname).ok_or_else(|| key_not_found(name, ""))?;
        let latest = key.latest().ok_or_else(|| key_not_found(name, ""))?;
        Ok((model::key_bundle(v, key, latest), expired))
    })?;
    ctx.key_cache.forget(expired.iter().map(String::as_str));
    ok(&bundle)
}

fn purge(ctx: &Ctx, vault: &Vault, name: &str) -> KvResult<Response> {
    let vault_key = Vault::key(vault.cloud, &vault.name);
    let lname = name.to_ascii_lowercase();
    let now = ctx.now();
    let forget = ctx.mutate(|s| -> KvResult<Vec<String>> {
        let v = s.vaults.get_mut(&vault_key).ok_or_else(vault_gone)?;
        let mut forget = expire_deleted(v, now);
        if !v.deleted_keys.contains_key(&lname) {
            return Err(deleted_key_not_found(name));
        }
        if v.properties.enable_purge_protection == Some(true) {
            return Err(errors::vault(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Key Vault service will automatically purge it after the retention period has passed.",
                None,
            )
            .into());
        }
        if let Some(d) = v.deleted_keys.remove(&lname) {
            forget.extend(d.key.versions.iter().map(|r| r.version.clone()));
        }
        Ok(forget)
    })?;
    ctx.key_cache.forget(forget.iter().map(String::as_str));
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
