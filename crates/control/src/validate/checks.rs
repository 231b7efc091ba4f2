//! Checks 2–7 against Azure (see the module above for the list and their order).
//!
//! The schedule, which the benchmark `atrest bench control-patch` counts in round trips:
//!
//! ```text
//! round 0  tokens: Key Vault + ARM audiences, together (cached; not counted)
//! round 1  ARM vault GET  ‖  key GET (resolve)  ‖  encrypt  ‖  [diagnose: role assignments]
//! round 2  decrypt of what round 1 encrypted (a re-encrypt first only when an unversioned id's
//!          current version was unusable and resolve picked another one)
//! ```
//!
//! The customer key is used with `encrypt`/`decrypt` (RSA-OAEP-256), never `wrapKey`/
//! `unwrapKey`: the minimum grant Atlas documents is the key permissions get, encrypt and
//! decrypt (issue 10 §1), which Key Vault Crypto User has and Key Vault Crypto Service Encryption
//! User does not. The ARM read is best effort: it needs Reader, which the access-policy path
//! does not grant, so a 403 there only skips the checks that need the vault's metadata.

use std::collections::BTreeSet;

use atrest_azure::{
    AzureClient, EncryptionAlgorithm, Error as AzureError, ErrorKind, KeyProperties, RoleAssignment, VaultProperties,
    VaultRef,
};
use atrest_domain::AzureUuid;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::{CheckName, CheckResult, CheckStatus, Credential, Depth, Outcome, Report, Target};
use crate::state::AppState;

/// The algorithm the probe (and the data nodes, for their master keys) use.
const PROBE_ALGORITHM: EncryptionAlgorithm = EncryptionAlgorithm::RsaOaep256;

/// Built-in roles whose dataActions include `keys/read`, `keys/encrypt/action` and
/// `keys/decrypt/action` (GUIDs from Azure's built-in roles list).
const DATA_ROLES: &[(&str, &str)] = &[
    ("12338af0-0e69-4776-bea7-57ae8d297424", "Key Vault Crypto User"),
    ("14b46e9e-c2b7-41b4-b07b-48a6ebf60603", "Key Vault Crypto Officer"),
    ("00482a5a-887f-4fb3-b363-3b7fe8e74483", "Key Vault Administrator"),
];

/// Key Vault Crypto Service Encryption User: keys/read, wrap and unwrap only. Holding it is the
/// most likely reason for a refused encrypt, so the diagnosis names it.
const WRAP_ONLY_ROLE: &str = "e147488a-f6f5-4113-8e2d-b22465e65bf6";

/// Access-policy key permissions the validation (and every later use of the key) needs: the
/// minimum Atlas documents.
const POLICY_PERMISSIONS: &[&str] = &["get", "encrypt", "decrypt"];

/// One check's outcome before it becomes a [`CheckResult`]: the class of a failure decides the
/// report's outcome (a denial is not an outage).
struct Step {
    result: CheckResult,
    failure: Option<ErrorKind>,
}

impl Step {
    fn passed(name: CheckName, message: impl Into<String>) -> Step {
        Step { result: result(name, CheckStatus::Passed, message, None, None), failure: None }
    }

    fn warning(name: CheckName, message: impl Into<String>, fix: Option<String>) -> Step {
        Step { result: result(name, CheckStatus::Warning, message, None, fix), failure: None }
    }

    fn skipped(name: CheckName, message: impl Into<String>) -> Step {
        Step { result: result(name, CheckStatus::Skipped, message, None, None), failure: None }
    }

    /// A failure found by looking at an answer (not an error from Azure).
    fn failed(name: CheckName, kind: ErrorKind, message: impl Into<String>, fix: Option<String>) -> Step {
        Step { result: result(name, CheckStatus::Failed, message, None, fix), failure: Some(kind) }
    }

    /// A failure Azure answered (or a failure to reach it).
    fn azure(name: CheckName, what: &str, e: &AzureError) -> Step {
        let (prose, command) = split_remediation(e.remediation());
        let mut message = match e.status() {
            Some(s) => format!("{what}: {} answered HTTP {s} ({})", e.service(), e.kind()),
            None => format!("{what}: {} {}", e.service(), e.kind()),
        };
        let azure_message = one_line(e.message());
        if !azure_message.is_empty() {
            message.push_str(&format!(": {azure_message}"));
        }
        if e.attempts() > 1 {
            message.push_str(&format!(" (after {} attempts)", e.attempts()));
        }
        if let Some(p) = prose {
            message.push_str(&format!(". {p}"));
        }
        let code = e.code().map(str::to_owned).or_else(|| e.aadsts_code().map(|c| format!("AADSTS{c}")));
        Step { result: result(name, CheckStatus::Failed, message, code, command), failure: Some(e.kind()) }
    }
}

fn result(
    name: CheckName,
    status: CheckStatus,
    message: impl Into<String>,
    azure_error_code: Option<String>,
    fix: Option<String>,
) -> CheckResult {
    CheckResult { name, status, azure_error_code, message: message.into(), fix }
}

/// Azure messages use "\r\n" between fields; one line reads better in a report.
fn one_line(s: &str) -> String {
    s.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The azure crate's remediations read "what to do: `the command` (a note)". The report wants
/// the command on its own (`fix`) and the words in the message, pointing at it.
fn split_remediation(r: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(r) = r else { return (None, None) };
    let mut parts = r.splitn(3, '`');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(before), Some(command), Some(after)) => {
            let before = before.trim_end();
            let lead = match before.strip_suffix(':') {
                Some(b) => format!("{b} with"),
                None => before.to_owned(),
            };
            (Some(format!("To fix it, {lead} the command below{}", after.trim_end())), Some(command.to_owned()))
        }
        _ => (Some(format!("To fix it, {r}")), None),
    }
}

/// Counts one Azure call in `atrest_azure_calls_total`, with the labels `api/cpa.rs` uses
/// (`entra.token`, ...; outcome `ok` or the error class).
fn azure_outcome(state: &AppState, operation: &str, r: &Result<impl Sized, AzureError>) {
    state.metrics.azure_call(operation, r.as_ref().map_or_else(|e| e.kind().as_str(), |_| "ok"));
}

/// The principal whose grants matter: the platform's service principal in the customer tenant,
/// or, for static credentials, the `oid` of the token Entra issued to the customer's app.
fn principal_of(target: &Target, arm_token: Option<&str>) -> Option<AzureUuid> {
    match &target.credential {
        Credential::Secretless { service_principal_id } => Some(*service_principal_id),
        Credential::Static { .. } => arm_token.and_then(super::token_oid).and_then(|o| o.parse().ok()),
    }
}

pub(super) async fn run(state: &AppState, target: &Target, depth: Depth) -> Report {
    let mut steps = vec![Step::passed(
        CheckName::Shape,
        format!(
            "keyIdentifier {} names key '{}' in vault '{}' ({}), as keyVaultName and azureEnvironment say",
            target.key,
            target.key.name(),
            target.vault,
            target.environment.as_str()
        ),
    )];
    let client: AzureClient = match &target.credential {
        Credential::Secretless { .. } => match state.platform.secretless() {
            Ok(c) => c.clone(),
            Err(e) => {
                steps.push(Step::failed(CheckName::Token, ErrorKind::Misconfigured, e.detail.clone(), None));
                return finish(steps);
            }
        },
        Credential::Static { client_id, secret } => state.platform.static_client(*client_id, secret.clone()),
    };

    // Round 0: tokens for both audiences.
    let tokens = client.tokens();
    let (kv_token, arm_token) = tokio::join!(
        tokens.key_vault_token(target.environment, &target.tenant_id),
        tokens.arm_token(target.environment, &target.tenant_id)
    );
    azure_outcome(state, "entra.token", &kv_token);
    azure_outcome(state, "entra.token", &arm_token);
    let arm_token = match (kv_token, arm_token) {
        (Ok(_), Ok(t)) => t,
        (Err(e), _) | (_, Err(e)) => {
            steps.push(Step::azure(
                CheckName::Token,
                &format!("no token in tenant {} for {}", target.tenant_id, credential_label(target)),
                &e,
            ));
            return finish(steps);
        }
    };
    steps.push(Step::passed(
        CheckName::Token,
        format!("obtained tokens in tenant {} for {}", target.tenant_id, credential_label(target)),
    ));
    let principal = principal_of(target, Some(arm_token.expose_secret()));
    drop(arm_token);

    // Round 1: the ARM read, the key GET and the encrypt go out together.
    let arm = client.arm(target.environment, target.tenant_id);
    let kv = client.key_vault(target.tenant_id);
    let vault_ref = VaultRef::new(target.subscription_id, target.resource_group.clone(), target.vault.clone());
    let vault_id = vault_ref.resource_id();
    let probe = Zeroizing::new(crate::auth::provision::random_bytes::<32>());
    let now_unix = state.now().unix_timestamp();
    let diagnose_rbac = depth == Depth::Diagnose && principal.is_some();
    let (vault, key, encrypted, assignments) = tokio::join!(
        arm.get_vault(&vault_ref),
        kv.resolve_key(&target.key, now_unix),
        kv.encrypt(&target.key, PROBE_ALGORITHM, probe.as_ref()),
        async {
            match (diagnose_rbac, principal) {
                (true, Some(p)) => Some(arm.role_assignments(&vault_id, &p).await),
                _ => None,
            }
        }
    );
    azure_outcome(state, "arm.get_vault", &vault);
    azure_outcome(state, "keyvault.get_key", &key);
    azure_outcome(state, "keyvault.encrypt", &encrypted);
    if let Some(a) = &assignments {
        azure_outcome(state, "arm.role_assignments", a);
    }

    steps.push(vault_step(target, &vault_id, principal, &vault));

    let mut observed = Observed::default();
    // A refusal to list versions (resolving an unversioned id) is not a refusal of `get`.
    let list_refused = key.as_ref().is_err_and(|e| e.message().contains(" list permission"));
    observed.get = if list_refused { None } else { observed.note(&key) };
    let key_props = key.as_ref().ok();
    steps.push(key_step(target, &key, now_unix));
    let key_usable = steps.last().is_some_and(|s| s.failure.is_none());

    // An unversioned id whose current version is unusable: resolve picked another version, but
    // round 1 encrypted with (or, outside nbf/exp, was refused by) the current one. Encrypt
    // again with the version that will be used.
    let reencrypt_with = match (&encrypted, key_props) {
        (Ok(c), Some(p)) if key_usable && c.key_id != p.id => Some(p.id.clone()),
        (Err(e), Some(p)) if key_usable && target.key.version().is_none() && e.kind() == ErrorKind::Disabled => {
            Some(p.id.clone())
        }
        _ => None,
    };
    let encrypted = match reencrypt_with {
        Some(id) => {
            let again = kv.encrypt(&id, PROBE_ALGORITHM, probe.as_ref()).await;
            azure_outcome(state, "keyvault.encrypt", &again);
            again
        }
        None => encrypted,
    };
    observed.encrypt = observed.note(&encrypted);

    // Round 2: decrypt on the server what was encrypted.
    let mut key_version_in_use = None;
    let crypto_step = match encrypted {
        Err(e) => Step::azure(CheckName::EncryptDecrypt, "encrypting a random 32-byte value failed", &e),
        Ok(_) if !key_usable => Step::skipped(CheckName::EncryptDecrypt, "not run: the key check failed"),
        Ok(ciphertext) => {
            let decrypted = kv.decrypt(&ciphertext.key_id, ciphertext.algorithm, &ciphertext.value).await;
            azure_outcome(state, "keyvault.decrypt", &decrypted);
            observed.decrypt = observed.note(&decrypted);
            match decrypted {
                Err(e) => Step::azure(CheckName::EncryptDecrypt, "the server-side decrypt failed", &e),
                Ok(plain) if plain.value.expose_secret() == probe.as_slice() => {
                    key_version_in_use = Some(ciphertext.key_id.to_string());
                    Step::passed(
                        CheckName::EncryptDecrypt,
                        format!(
                            "encrypted a random 32-byte value with {} ({}) and Key Vault decrypted it back",
                            ciphertext.key_id,
                            ciphertext.algorithm.as_str()
                        ),
                    )
                }
                Ok(_) => Step::failed(
                    CheckName::EncryptDecrypt,
                    ErrorKind::Misconfigured,
                    format!("Key Vault decrypted a different value than {} encrypted", ciphertext.key_id),
                    None,
                ),
            }
        }
    };
    steps.push(crypto_step);

    if state.config.validation.require_key_binding {
        steps.push(binding_step(state, target, key_props));
    }

    let mut report = finish(steps_with_permissions(steps, target, depth, principal, &vault, assignments, &observed));
    report.key_version_in_use = if report.outcome == Outcome::Valid { key_version_in_use } else { None };
    report
}

fn credential_label(target: &Target) -> String {
    match &target.credential {
        Credential::Secretless { service_principal_id } => {
            format!("the platform application (service principal {service_principal_id})")
        }
        Credential::Static { client_id, .. } => format!("the customer application {client_id} (static credentials)"),
    }
}

/// The command that lets the platform read the vault's metadata through ARM.
fn reader_fix(principal: Option<AzureUuid>, vault_id: &str) -> String {
    let assignee = principal.map_or_else(|| "<service principal object id>".to_owned(), |p| p.to_string());
    format!("az role assignment create --assignee {assignee} --role Reader --scope {vault_id}")
}

fn vault_step(
    target: &Target,
    vault_id: &str,
    principal: Option<AzureUuid>,
    vault: &Result<VaultProperties, AzureError>,
) -> Step {
    let v = match vault {
        // Best effort: without Reader (the access-policy path grants none) ARM answers 403. The
        // data-plane checks decide validity; only the checks that need the metadata are skipped.
        Err(e) if e.status() == Some(403) => {
            let code = e.code().map(|c| format!(" {c}")).unwrap_or_default();
            let mut s = Step::warning(
                CheckName::Vault,
                format!(
                    "vault {} could not be read through ARM (HTTP 403{code}: the platform's service principal has no Reader role on it), so two checks were skipped: that the vault belongs to tenant {}, and that purge protection is on. Key Vault itself decides validity. To enable the skipped checks, grant Reader with the command below",
                    target.vault, target.tenant_id
                ),
                Some(reader_fix(principal, vault_id)),
            );
            s.result.azure_error_code = e.code().map(str::to_owned);
            return s;
        }
        Err(e) => return Step::azure(CheckName::Vault, &format!("reading vault {vault_id} through ARM failed"), e),
        Ok(v) => v,
    };
    if let Some(t) = v.tenant_id
        && t != target.tenant_id
    {
        return Step::failed(
            CheckName::Vault,
            ErrorKind::Misconfigured,
            format!(
                "vault {} belongs to tenant {t}, but the configuration names tenant {}",
                target.vault, target.tenant_id
            ),
            Some(format!("az keyvault show --name {} --query properties.tenantId -o tsv", target.vault)),
        );
    }
    let expected_uri = target.key.vault_url();
    if let Some(uri) = &v.vault_uri
        && !uri.trim_end_matches('/').eq_ignore_ascii_case(expected_uri.trim_end_matches('/'))
    {
        return Step::failed(
            CheckName::Vault,
            ErrorKind::Misconfigured,
            format!("vault {} is served at {uri}, not at {expected_uri} as keyIdentifier says", target.vault),
            Some(format!("az keyvault show --name {} --query properties.vaultUri -o tsv", target.vault)),
        );
    }
    let auth = if v.enable_rbac_authorization { "Azure RBAC" } else { "access policies" };
    if !v.enable_purge_protection {
        return Step::warning(
            CheckName::Vault,
            format!(
                "vault {} ({auth}) has purge protection off: a deleted key could be purged before its retention ends, destroying the data it protects",
                target.vault
            ),
            Some(format!(
                "az keyvault update --name {} --resource-group {} --enable-purge-protection true",
                target.vault, target.resource_group
            )),
        );
    }
    Step::passed(
        CheckName::Vault,
        format!(
            "vault {} found in resource group {} ({auth}, purge protection on)",
            target.vault, target.resource_group
        ),
    )
}

fn key_step(target: &Target, key: &Result<KeyProperties, AzureError>, now_unix: i64) -> Step {
    let k = match key {
        Err(e) => return Step::azure(CheckName::Key, &format!("reading key {} failed", target.key), e),
        Ok(k) => k,
    };
    let version_arg = k.id.version().map(|v| format!(" --version {v}")).unwrap_or_default();
    let set_attributes =
        format!("az keyvault key set-attributes --vault-name {} --name {}{version_arg}", target.vault, k.id.name());
    if let Some(reason) = k.unusable_reason(now_unix) {
        let fix = if !k.enabled {
            format!("{set_attributes} --enabled true")
        } else if k.not_before.is_some_and(|nbf| now_unix < nbf) {
            format!("{set_attributes} --not-before <YYYY-MM-DDThh:mm:ssZ>")
        } else {
            format!("{set_attributes} --expires <YYYY-MM-DDThh:mm:ssZ>")
        };
        let mut s = Step::failed(
            CheckName::Key,
            ErrorKind::Disabled,
            format!("{reason}; the platform cannot use it"),
            Some(fix),
        );
        if !k.enabled {
            // The GET itself succeeds on a disabled key; name the code Key Vault answers the
            // decrypt with, so that the report reads like the failure a data node would see.
            s.result.azure_error_code = Some("KeyDisabled".into());
        }
        return s;
    }
    if !k.kty.starts_with("RSA") {
        return Step::failed(
            CheckName::Key,
            ErrorKind::Misconfigured,
            format!("key {} is of type {}; RSA-OAEP-256 encryption needs an RSA or RSA-HSM key", k.id, k.kty),
            Some(format!(
                "az keyvault key create --vault-name {} --name <new key name> --kty RSA --size 3072",
                target.vault
            )),
        );
    }
    let missing: Vec<&str> = ["encrypt", "decrypt"].into_iter().filter(|op| !k.allows(op)).collect();
    if !missing.is_empty() {
        return Step::failed(
            CheckName::Key,
            ErrorKind::Disabled,
            format!("key {} does not allow {} (key_ops: {})", k.id, missing.join(" and "), k.key_ops.join(", ")),
            Some(format!("{set_attributes} --ops encrypt decrypt wrapKey unwrapKey")),
        );
    }
    let resolved =
        if target.key.version().is_none() { format!(", resolved to version {}", k.id) } else { String::new() };
    Step::passed(
        CheckName::Key,
        format!(
            "key {} is an enabled {} key of {} bits allowing encrypt and decrypt{resolved}",
            target.key,
            k.kty,
            k.key_size_bits()
        ),
    )
}

fn binding_step(state: &AppState, target: &Target, key: Option<&KeyProperties>) -> Step {
    let tag = &state.config.validation.key_binding_tag;
    let group = target.group_id.as_str();
    let Some(k) = key else {
        return Step::skipped(CheckName::KeyBinding, "not run: the key could not be read");
    };
    let version_arg = k.id.version().map(|v| format!(" --version {v}")).unwrap_or_default();
    let fix = format!(
        "az keyvault key set-attributes --vault-name {} --name {}{version_arg} --tags {tag}={group}",
        target.vault,
        k.id.name()
    );
    match k.tags.get(tag) {
        Some(v) if v.split([',', ' ']).any(|p| p == group) => {
            Step::passed(CheckName::KeyBinding, format!("key {} carries the tag {tag}={group}", k.id))
        }
        Some(_) => Step::failed(
            CheckName::KeyBinding,
            ErrorKind::Denied,
            // The other project's id is not shown: it belongs to whoever tagged the key.
            format!(
                "key {} is bound to another project (its {tag} tag names a different project); this deployment requires the key to name this project, so that no other project can use it",
                k.id
            ),
            Some(fix),
        ),
        None => Step::failed(
            CheckName::KeyBinding,
            ErrorKind::Denied,
            format!(
                "key {} has no {tag} tag; this deployment requires the key's owner to bind it to the project by tagging it with the project id",
                k.id
            ),
            Some(fix),
        ),
    }
}

/// What Key Vault's own answers showed about the three permissions the platform needs: allowed
/// (`Some(true)`), refused with a 403 `ForbiddenByPolicy`/`ForbiddenByRbac` (`Some(false)`), or
/// not shown (not attempted, or another failure). The diagnosis falls back on it when the
/// vault's grants cannot be read through ARM.
#[derive(Default)]
struct Observed {
    get: Option<bool>,
    encrypt: Option<bool>,
    decrypt: Option<bool>,
    /// The code of the first refusal, which says the vault's authorization model.
    refusal_code: Option<String>,
}

impl Observed {
    fn note<T>(&mut self, r: &Result<T, AzureError>) -> Option<bool> {
        match r {
            Ok(_) => Some(true),
            Err(e) => {
                let code = e.code().filter(|c| matches!(*c, "ForbiddenByPolicy" | "ForbiddenByRbac"))?;
                if e.status() != Some(403) {
                    return None;
                }
                self.refusal_code.get_or_insert_with(|| code.to_owned());
                Some(false)
            }
        }
    }

    fn refused(&self) -> Vec<&'static str> {
        [("get", self.get), ("encrypt", self.encrypt), ("decrypt", self.decrypt)]
            .into_iter()
            .filter_map(|(n, v)| (v == Some(false)).then_some(n))
            .collect()
    }
}

/// Adds the `permissions` diagnosis (dry run only) and, when Key Vault refused with
/// `ForbiddenByRbac` although a data role is assigned, says that propagation takes minutes.
fn steps_with_permissions(
    mut steps: Vec<Step>,
    target: &Target,
    depth: Depth,
    principal: Option<AzureUuid>,
    vault: &Result<VaultProperties, AzureError>,
    assignments: Option<Result<Vec<RoleAssignment>, AzureError>>,
    observed: &Observed,
) -> Vec<Step> {
    if depth != Depth::Diagnose {
        return steps;
    }
    let Some(principal) = principal else {
        steps.push(Step::skipped(
            CheckName::Permissions,
            "the principal's object id is unknown, so its grants could not be read",
        ));
        return steps;
    };
    let vault_id =
        VaultRef::new(target.subscription_id, target.resource_group.clone(), target.vault.clone()).resource_id();
    let crypto_user_fix = format!(
        "az role assignment create --assignee-object-id {principal} --assignee-principal-type ServicePrincipal --role \"Key Vault Crypto User\" --scope {vault_id}"
    );
    let set_policy_fix = |permissions: &str| {
        format!(
            "az keyvault set-policy --name {} --resource-group {} --object-id {principal} --key-permissions {permissions}",
            target.vault, target.resource_group
        )
    };
    let v = match vault {
        Ok(v) => v,
        Err(_) => {
            // The grants cannot be read without Reader: say what Key Vault's answers showed.
            let refused = observed.refused();
            let step = if !refused.is_empty() {
                let (model, fix) = match observed.refusal_code.as_deref() {
                    Some("ForbiddenByRbac") => ("Azure RBAC", crypto_user_fix.clone()),
                    _ => ("access policies", set_policy_fix("get encrypt decrypt")),
                };
                Step::failed(
                    CheckName::Permissions,
                    ErrorKind::Denied,
                    format!(
                        "Key Vault refused {} to service principal {principal} (the vault uses {model}); the platform needs the key permissions get, encrypt and decrypt. The vault's grants could not be read through ARM (see the vault check), so this comes from Key Vault's answers",
                        refused.join(", ")
                    ),
                    Some(fix),
                )
            } else if [observed.get, observed.encrypt, observed.decrypt].iter().all(|v| *v == Some(true)) {
                Step::passed(
                    CheckName::Permissions,
                    format!(
                        "Key Vault allowed get, encrypt and decrypt for service principal {principal}; the grants themselves were not read (no Reader on the vault, see the vault check)"
                    ),
                )
            } else {
                Step::skipped(
                    CheckName::Permissions,
                    "not run: the vault could not be read through ARM and Key Vault's answers do not show which permission is missing (see the other checks)",
                )
            };
            steps.push(step);
            return steps;
        }
    };
    let step = if v.enable_rbac_authorization {
        match assignments {
            None => Step::skipped(CheckName::Permissions, "role assignments were not read"),
            Some(Err(e)) => {
                Step::azure(CheckName::Permissions, &format!("reading role assignments at {vault_id} failed"), &e)
            }
            Some(Ok(list)) => {
                let names: BTreeSet<String> = list
                    .iter()
                    .map(|a| {
                        format!(
                            "{} at {}",
                            a.role_name.clone().unwrap_or_else(|| a.role_definition_guid().to_owned()),
                            a.scope
                        )
                    })
                    .collect();
                let data = list
                    .iter()
                    .find(|a| DATA_ROLES.iter().any(|(g, _)| a.role_definition_guid().eq_ignore_ascii_case(g)));
                let wrap_only = list.iter().any(|a| a.role_definition_guid().eq_ignore_ascii_case(WRAP_ONLY_ROLE));
                match data {
                    Some(a) => {
                        let role = a.role_name.as_deref().unwrap_or("a Key Vault data role");
                        // The grant is there: a ForbiddenByRbac from Key Vault means it has not
                        // propagated yet.
                        for s in steps.iter_mut() {
                            if s.result.azure_error_code.as_deref() == Some("ForbiddenByRbac") {
                                s.result.message.push_str(&format!(
                                    ". The service principal already has '{role}' at {}: new role assignments can take several minutes (up to 10) to reach Key Vault; retry in a few minutes",
                                    a.scope
                                ));
                                s.result.fix = Some(format!(
                                    "az role assignment list --assignee {principal} --scope {vault_id} --include-inherited -o table"
                                ));
                            }
                        }
                        Step::passed(
                            CheckName::Permissions,
                            format!(
                                "service principal {principal} holds: {}",
                                names.into_iter().collect::<Vec<_>>().join("; ")
                            ),
                        )
                    }
                    None => Step::failed(
                        CheckName::Permissions,
                        ErrorKind::Denied,
                        format!(
                            "service principal {principal} holds no role with the Key Vault key dataActions (keys/read, keys/encrypt/action, keys/decrypt/action) at or above {vault_id}{}{}",
                            if names.is_empty() {
                                String::new()
                            } else {
                                format!("; it holds: {}", names.into_iter().collect::<Vec<_>>().join("; "))
                            },
                            if wrap_only {
                                "; Key Vault Crypto Service Encryption User allows only wrapKey and unwrapKey, and the platform uses encrypt and decrypt"
                            } else {
                                ""
                            }
                        ),
                        Some(crypto_user_fix),
                    ),
                }
            }
        }
    } else {
        match v.access_policy_for(&target.tenant_id, &principal) {
            None => Step::failed(
                CheckName::Permissions,
                ErrorKind::Denied,
                format!(
                    "vault {} uses access policies and has none for service principal {principal} in tenant {}; the platform needs the key permissions get, encrypt and decrypt",
                    target.vault, target.tenant_id
                ),
                Some(set_policy_fix("get encrypt decrypt")),
            ),
            Some(p) => {
                let missing: Vec<&str> =
                    POLICY_PERMISSIONS.iter().copied().filter(|perm| !p.allows_key(perm)).collect();
                if missing.is_empty() {
                    Step::passed(
                        CheckName::Permissions,
                        format!(
                            "the access policy for {principal} grants key permissions: {}",
                            p.key_permissions.join(", ")
                        ),
                    )
                } else {
                    // `set-policy` replaces the key permissions: keep what is granted, add
                    // what is missing.
                    let mut all: Vec<&str> = p.key_permissions.iter().map(String::as_str).collect();
                    all.extend(missing.iter().copied());
                    Step::failed(
                        CheckName::Permissions,
                        ErrorKind::Denied,
                        format!(
                            "the access policy for {principal} lacks the key permissions {} (it grants: {}); the platform needs get, encrypt and decrypt",
                            missing.join(", "),
                            p.key_permissions.join(", ")
                        ),
                        Some(set_policy_fix(&all.join(" "))),
                    )
                }
            }
        }
    };
    // The grants demonstrably work (Key Vault encrypted and decrypted): what this check could
    // not find (a key-scoped assignment, a custom role, a group's policy) is not a failure.
    let crypto_passed =
        steps.iter().any(|s| s.result.name == CheckName::EncryptDecrypt && s.result.status == CheckStatus::Passed);
    let mut step = step;
    if crypto_passed && step.failure.is_some() {
        step.failure = None;
        step.result.status = CheckStatus::Warning;
        step.result.azure_error_code = None;
        step.result.message.push_str(
            "; Key Vault nevertheless encrypted and decrypted, so the grant comes from something this check does not \
             see (an assignment on the key itself, a custom role, or a group)",
        );
    }
    steps.push(step);
    steps
}

/// The report: checks in order, the outcome from the failures' classes.
fn finish(mut steps: Vec<Step>) -> Report {
    // Checks that never ran because an earlier one stopped the run.
    let ran: BTreeSet<CheckName> = steps.iter().map(|s| s.result.name).collect();
    for name in [CheckName::Token, CheckName::Vault, CheckName::Key, CheckName::EncryptDecrypt] {
        if !ran.contains(&name) {
            steps.push(Step::skipped(name, "not run: an earlier check failed"));
        }
    }
    steps.sort_by_key(|s| s.result.name);
    let failures: Vec<ErrorKind> = steps.iter().filter_map(|s| s.failure).collect();
    let outcome = if failures.is_empty() {
        Outcome::Valid
    } else if failures.iter().all(|k| k.is_transient()) {
        Outcome::Unreachable
    } else {
        Outcome::Invalid
    };
    Report { outcome, checks: steps.into_iter().map(|s| s.result).collect(), key_version_in_use: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remediation_splits_into_words_and_command() {
        let (words, cmd) = split_remediation(Some(
            "grant the data role: `az role assignment create --role \"Key Vault Crypto User\"` (can take minutes)",
        ));
        assert_eq!(cmd.as_deref(), Some("az role assignment create --role \"Key Vault Crypto User\""));
        assert_eq!(words.as_deref(), Some("To fix it, grant the data role with the command below (can take minutes)"));
        let (words, _) = split_remediation(Some("if it was deleted, recover it with `az keyvault key recover`"));
        assert_eq!(words.as_deref(), Some("To fix it, if it was deleted, recover it with the command below"));
        let (words, cmd) = split_remediation(Some("configure tenant X"));
        assert_eq!((words.as_deref(), cmd), (Some("To fix it, configure tenant X"), None));
        assert_eq!(split_remediation(None), (None, None));
    }
}
