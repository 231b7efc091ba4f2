//! Key Vault's JSON for keys (`KeyBundle`, `KeyItem`, `DeletedKeyBundle`, the request parameter
//! objects) and the validation of what callers send. Shapes follow the `keys.json` data-plane
//! spec and `shared/reference/azure-examples/kv_key_bundle_response.json`; this is the only
//! module that knows them.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde_json::{Map as JsonMap, Value, json};

use crate::state::{DeletedKey, Key, KeyVersionRecord, Map, Vault};

/// JWK operations, in the order Key Vault lists them.
pub const KEY_OPS: [&str; 8] = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"];

/// What a new RSA key may do when the caller does not say (Key Vault's default).
pub const DEFAULT_RSA_OPS: [&str; 6] = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"];

pub const MAX_TAGS: usize = 15;

/// Base64url, with or without padding (clients differ; Key Vault accepts both).
pub const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Deserialize)]
pub struct AttributesIn {
    pub enabled: Option<bool>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub exportable: Option<bool>,
}

/// `KeyCreateParameters`.
#[derive(Debug, Deserialize)]
pub struct CreateParams {
    pub kty: String,
    pub key_size: Option<u32>,
    pub public_exponent: Option<u64>,
    pub key_ops: Option<Vec<String>>,
    pub attributes: Option<AttributesIn>,
    pub tags: Option<Map<String, String>>,
    pub crv: Option<String>,
    pub release_policy: Option<Value>,
}

/// `KeyUpdateParameters`.
#[derive(Debug, Deserialize)]
pub struct UpdateParams {
    pub key_ops: Option<Vec<String>>,
    pub attributes: Option<AttributesIn>,
    pub tags: Option<Map<String, String>>,
    pub release_policy: Option<Value>,
}

/// `JsonWebKey` as sent to import (base64url fields).
#[derive(Debug, Deserialize)]
pub struct JsonWebKeyIn {
    pub kty: String,
    pub key_ops: Option<Vec<String>>,
    pub n: Option<String>,
    pub e: Option<String>,
    pub d: Option<String>,
    pub dp: Option<String>,
    pub dq: Option<String>,
    pub qi: Option<String>,
    pub p: Option<String>,
    pub q: Option<String>,
}

/// `KeyImportParameters`.
#[derive(Debug, Deserialize)]
pub struct ImportParams {
    pub key: JsonWebKeyIn,
    #[serde(rename = "Hsm")]
    pub hsm: Option<bool>,
    pub attributes: Option<AttributesIn>,
    pub tags: Option<Map<String, String>>,
    pub release_policy: Option<Value>,
}

/// `KeyOperationsParameters` (encrypt, decrypt, wrapkey, unwrapkey). `iv`, `aad` and `tag` only
/// matter for symmetric keys, which vaults do not have, so they are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct OperationParams {
    pub alg: String,
    pub value: String,
}

/// `KeySignParameters`: `value` is the digest.
#[derive(Debug, Deserialize)]
pub struct SignParams {
    pub alg: String,
    pub value: String,
}

/// `KeyVerifyParameters`: `value` is the signature.
#[derive(Debug, Deserialize)]
pub struct VerifyParams {
    pub alg: String,
    pub digest: String,
    pub value: String,
}

/// A rejected input, as the message of a 400 `BadParameter`.
pub type Invalid = String;

/// Key names: 1–127 of `[0-9a-zA-Z-]`.
pub fn valid_key_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Validate and normalise `key_ops` to Key Vault's spelling, keeping the caller's order and
/// dropping repeats.
pub fn parse_key_ops(ops: &[String]) -> Result<Vec<String>, Invalid> {
    let mut out: Vec<String> = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(canonical) = KEY_OPS.iter().find(|k| k.eq_ignore_ascii_case(op)) else {
            return Err(format!("Invalid key operation '{op}' in key_ops. Valid operations: {}.", KEY_OPS.join(", ")));
        };
        if !out.iter().any(|o| o == canonical) {
            out.push((*canonical).to_string());
        }
    }
    Ok(out)
}

pub fn check_tags(tags: &Map<String, String>) -> Result<(), Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(format!("A key can have at most {MAX_TAGS} tags; the request has {}.", tags.len()));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 512 {
            return Err("Tag names must be 1 to 512 characters long.".into());
        }
        if v.len() > 256 {
            return Err(format!("The value of tag '{k}' is longer than 256 characters."));
        }
    }
    Ok(())
}

/// Reject attribute combinations Key Vault refuses.
pub fn check_attributes(a: &AttributesIn, release_policy: Option<&Value>) -> Result<(), Invalid> {
    if release_policy.is_some_and(|p| !p.is_null()) {
        return Err("Key release policies (secure key release) are not supported by the atrest emulator.".into());
    }
    if a.exportable == Some(true) {
        return Err("AKV.SKR.1004: Exportable keys must have release policy.".into());
    }
    if let (Some(nbf), Some(exp)) = (a.nbf, a.exp)
        && exp <= nbf
    {
        return Err("The key's expiry time (exp) must be later than its activation time (nbf).".into());
    }
    Ok(())
}

/// `https://{vault}.{suffix}/keys/{name}/{version}`, or without the version.
pub fn kid(vault: &Vault, name: &str, version: Option<&str>) -> String {
    let base = vault.vault_uri();
    match version {
        Some(v) => format!("{base}keys/{name}/{v}"),
        None => format!("{base}keys/{name}"),
    }
}

/// The vault's recovery level and how many days a deleted key stays recoverable.
pub fn recovery(vault: &Vault) -> (&'static str, Option<u32>) {
    let p = &vault.properties;
    if !p.enable_soft_delete {
        return ("Purgeable", None);
    }
    let days = p.soft_delete_retention_in_days;
    // Retention below the 90-day default is "Customized" in Azure's enum.
    let protected = p.enable_purge_protection == Some(true);
    let level = match (days < 90, protected) {
        (false, true) => "Recoverable",
        (false, false) => "Recoverable+Purgeable",
        (true, true) => "CustomizedRecoverable",
        (true, false) => "CustomizedRecoverable+Purgeable",
    };
    (level, Some(days))
}

pub fn attributes(vault: &Vault, rec: &KeyVersionRecord) -> Value {
    let mut a = JsonMap::new();
    a.insert("enabled".into(), json!(rec.enabled));
    if let Some(nbf) = rec.nbf {
        a.insert("nbf".into(), json!(nbf));
    }
    if let Some(exp) = rec.exp {
        a.insert("exp".into(), json!(exp));
    }
    a.insert("created".into(), json!(rec.created));
    a.insert("updated".into(), json!(rec.updated));
    let (level, days) = recovery(vault);
    a.insert("recoveryLevel".into(), json!(level));
    if let Some(d) = days {
        a.insert("recoverableDays".into(), json!(d));
    }
    a.insert("exportable".into(), json!(false));
    Value::Object(a)
}

/// `KeyBundle` of one version.
pub fn key_bundle(vault: &Vault, key: &Key, rec: &KeyVersionRecord) -> Value {
    let mut b = JsonMap::new();
    b.insert(
        "key".into(),
        json!({
            "kid": kid(vault, &key.name, Some(&rec.version)),
            "kty": rec.kty,
            "key_ops": rec.key_ops,
            "n": rec.n,
            "e": rec.e,
        }),
    );
    b.insert("attributes".into(), attributes(vault, rec));
    if !rec.tags.is_empty() {
        b.insert("tags".into(), json!(rec.tags));
    }
    Value::Object(b)
}

/// `KeyItem`: `kid` without a version for the key list, with one for the versions list.
pub fn key_item(vault: &Vault, key: &Key, rec: &KeyVersionRecord, versioned: bool) -> Value {
    let mut item = JsonMap::new();
    item.insert("kid".into(), json!(kid(vault, &key.name, versioned.then_some(rec.version.as_str()))));
    item.insert("attributes".into(), attributes(vault, rec));
    if !rec.tags.is_empty() {
        item.insert("tags".into(), json!(rec.tags));
    }
    Value::Object(item)
}

fn add_deletion(vault: &Vault, name: &str, d: &DeletedKey, recoverable: bool, v: &mut Value) {
    if let Value::Object(m) = v {
        if recoverable {
            m.insert("recoveryId".into(), json!(format!("{}deletedkeys/{name}", vault.vault_uri())));
            m.insert("scheduledPurgeDate".into(), json!(d.scheduled_purge_date));
        }
        m.insert("deletedDate".into(), json!(d.deleted_date));
    }
}

/// `DeletedKeyBundle`: the latest version's bundle plus the deletion facts. Without soft delete
/// the key is gone at once and there is nothing to recover, so `recoveryId` is left out.
pub fn deleted_key_bundle(vault: &Vault, d: &DeletedKey, recoverable: bool) -> Value {
    let Some(rec) = d.key.latest() else { return json!({}) };
    let mut v = key_bundle(vault, &d.key, rec);
    add_deletion(vault, &d.key.name, d, recoverable, &mut v);
    v
}

/// `DeletedKeyItem`.
pub fn deleted_key_item(vault: &Vault, d: &DeletedKey) -> Value {
    let Some(rec) = d.key.latest() else { return json!({}) };
    let mut v = key_item(vault, &d.key, rec, false);
    add_deletion(vault, &d.key.name, d, true, &mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn key_names_and_ops() {
        assert!(valid_key_name("Key-1"));
        assert!(!valid_key_name(""));
        assert!(!valid_key_name("a_b"));
        assert!(!valid_key_name(&"a".repeat(128)));
        assert_eq!(
            parse_key_ops(&["WRAPKEY".into(), "wrapKey".into(), "decrypt".into()]).unwrap(),
            vec!["wrapKey", "decrypt"]
        );
        assert!(parse_key_ops(&["fly".into()]).is_err());
    }

    #[test]
    fn lenient_base64url() {
        assert_eq!(B64URL_LENIENT.decode("AQAB").unwrap(), vec![1, 0, 1]);
        assert_eq!(B64URL_LENIENT.decode("AQ").unwrap(), vec![1]);
        assert_eq!(B64URL_LENIENT.decode("AQ==").unwrap(), vec![1]);
        assert!(B64URL_LENIENT.decode("A+/=").is_err());
    }
}
