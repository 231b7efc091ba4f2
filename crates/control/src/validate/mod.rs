//! Validation of a project's Azure Key Vault configuration against Azure.
//!
//! The checks, in the order they are reported (issue 3 §4; design.md §3):
//! 1. **shape**: `keyIdentifier` parses; its vault is `keyVaultName`; its DNS suffix matches
//!    `azureEnvironment` ([`shape`], pure, no IO);
//! 2. **token**: a token for the customer's tenant (Key Vault and ARM audiences);
//! 3. **vault**: vault metadata through ARM, best effort: it needs Reader, which the seeds'
//!    access-policy path does not grant, so a 403 is a warning saying which checks were skipped
//!    (the vault's tenant, purge protection) with the Reader command; a warning when purge
//!    protection is off;
//! 4. **key**: key GET: enabled, inside `nbf`/`exp`, `key_ops` allow encrypt and decrypt, an RSA key;
//! 5. **encrypt_decrypt**: encrypt 32 random bytes (RSA-OAEP-256), then decrypt them **on the
//!    server** and compare (an encrypt alone passes on a disabled key and can be done locally
//!    with the public key). `encrypt`/`decrypt`, not `wrapKey`/`unwrapKey`: the minimum grant is
//!    the key permissions get, encrypt and decrypt;
//! 6. **key_binding** (when the platform requires it): the key carries the tag naming the project;
//! 7. **permissions** (dry run only): role assignments at the vault scope, or the access policy,
//!    read through ARM so the report can name the missing permission.
//!
//! Independent checks run concurrently: after the tokens, the ARM read, the key GET and the
//! encrypt go out together, and only the decrypt waits (for the encrypt), so a validation costs
//! two sequential round trips after the token (design.md §7: at most three).
//!
//! Nothing here writes to the store: callers decide what to commit. No key material outlives
//! the check: the random value and the unwrapped bytes are zeroized on drop.

mod checks;
pub mod shape;

use atrest_domain::{AzureEnvironment, AzureUuid, KeyIdentifier, VaultName};
use atrest_store::GroupId;
use secrecy::SecretString;
use serde::Serialize;

use crate::state::AppState;

/// The names of the checks, declared in report order (which `Ord` follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    Shape,
    Token,
    Vault,
    Key,
    EncryptDecrypt,
    KeyBinding,
    Permissions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// Passed with a caveat (e.g. purge protection off).
    Warning,
    /// Not run because an earlier check failed, or not applicable.
    Skipped,
}

/// One check's result, as the dry run returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    pub name: CheckName,
    pub status: CheckStatus,
    /// Azure's error code (`ForbiddenByRbac`, `KeyDisabled`, `AADSTS700016`, ...), when Azure answered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_error_code: Option<String>,
    /// What happened, in words.
    pub message: String,
    /// The exact command (usually `az ...`) that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The overall result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Every check passed (warnings allowed).
    Valid,
    /// Azure refused (denied, disabled, not found) or the configuration is wrong.
    Invalid,
    /// Azure could not be reached (DNS, TCP, TLS, timeouts, 5xx, 429).
    Unreachable,
}

/// Everything a validation produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub outcome: Outcome,
    pub checks: Vec<CheckResult>,
    /// The versioned key identifier that encrypt/decrypt used (unversioned identifiers are resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version_in_use: Option<String>,
}

/// How the control plane authenticates to the customer's tenant.
pub enum Credential {
    /// The platform's multi-tenant app; `service_principal_id` is its object id in the tenant.
    Secretless { service_principal_id: AzureUuid },
    /// The legacy static credentials (the customer's own app and secret).
    Static { client_id: AzureUuid, secret: SecretString },
}

/// A configuration that passed [`shape`], ready to be checked against Azure.
pub struct Target {
    pub group_id: GroupId,
    pub environment: AzureEnvironment,
    pub tenant_id: AzureUuid,
    pub credential: Credential,
    pub subscription_id: AzureUuid,
    pub resource_group: String,
    pub vault: VaultName,
    pub key: KeyIdentifier,
}

/// How far to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// PATCH and revalidation: checks 2–6, stopping at the first failure.
    Commit,
    /// The dry run: every check that can run, plus `permissions` for diagnosis.
    Diagnose,
}

/// Runs the checks against Azure. `trigger` labels the metrics (`patch`, `dry_run`,
/// `background`, `read`).
pub async fn run(state: &AppState, target: &Target, depth: Depth, trigger: &str) -> Report {
    let report = checks::run(state, target, depth).await;
    let result = match report.outcome {
        Outcome::Valid => "valid",
        Outcome::Invalid => "invalid",
        Outcome::Unreachable => "unreachable",
    };
    state.metrics.validation(trigger, result);
    tracing::info!(
        group = %target.group_id,
        trigger,
        result,
        failed = report.first_failure().map(|c| format!("{:?}", c.name)).unwrap_or_default(),
        "key vault configuration validated"
    );
    report
}

/// The `oid` claim of a JWT access token (the principal it was issued to). The token came
/// straight from Entra ID over TLS, so its payload is read without verifying the signature: it
/// only names or compares the principal, it never grants access.
pub fn token_oid(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("oid")?.as_str().map(str::to_owned)
}

impl Report {
    /// The first failed check, if any.
    pub fn first_failure(&self) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.status == CheckStatus::Failed)
    }

    /// One paragraph for Atlas's `detail`: the failed check, what Azure said, and the fix.
    pub fn summary(&self) -> String {
        match self.first_failure() {
            None => "All checks passed.".to_string(),
            Some(c) => {
                let mut s = format!(
                    "Check '{}' failed: {}",
                    serde_json::to_value(c.name).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                    c.message
                );
                if let Some(code) = &c.azure_error_code {
                    s.push_str(&format!(" (Azure error {code})"));
                }
                if let Some(fix) = &c.fix {
                    s.push_str(&format!(". Fix: {fix}"));
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    #[test]
    fn oid_is_read_from_the_token_payload() {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let payload = enc(br#"{"oid":"48f1d2a6-d0e9-482a-83a4-b8dd7dddc5c1","tid":"x"}"#);
        assert_eq!(
            super::token_oid(&format!("h.{payload}.s")).as_deref(),
            Some("48f1d2a6-d0e9-482a-83a4-b8dd7dddc5c1")
        );
        assert_eq!(super::token_oid("not-a-jwt"), None);
        assert_eq!(super::token_oid("a.!!!.c"), None);
        assert_eq!(super::token_oid(&format!("a.{}.c", enc(br#"{"tid":"x"}"#))), None);
    }
}
