//! The Encryption at Rest workflow, independent of HTTP: merging a PATCH into the stored
//! configuration, the credential modes and the migration between them, building a validation
//! target from a configuration, revalidating, and the events that record what changed.
//!
//! Invariants:
//! - A configuration is committed only after it validated (or, with private networking, as
//!   pending); a failed validation changes nothing, so static credentials stay in force when a
//!   migration to `roleId` fails, and are deleted in the same transaction when it succeeds
//!   (the store keeps exactly one credential mode per project).
//! - Every committed change and every change of validity is recorded as an event in the same
//!   transaction as the change.
//! - A revalidation result is recorded only against the configuration version it validated
//!   (optimistic versions in the store), so a slow check cannot overwrite a newer PATCH.
//! - Events are stamped when the check finished (when the transition was observed), not when it
//!   started.
//! - A failure inside the control plane (a sealed secret that does not open, a store error) is
//!   never the customer's `INVALID`: it is recorded as [`event_types::VALIDATION_INTERNAL_ERROR`],
//!   counted (`result="internal_error"`) and logged, and the last verdict stays.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;

use atrest_domain::AzureUuid;
use atrest_store::{
    AzureCredentials, AzureKeyVaultConfig, Event, EventId, GroupId, RoleId, StoreError, StoredEarConfig,
    ValidationState, ValidationStatus,
};

use crate::error::{ApiError, ApiResult, codes};
use crate::state::AppState;
use crate::validate::{self, Credential, Depth, Outcome, Report, Target, shape};

/// Atlas event type names for Encryption at Rest.
pub mod event_types {
    pub const CONFIG_NO_LONGER_VALID: &str = "ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID";
    pub const CONFIG_IS_VALID: &str = "ENCRYPTION_AT_REST_CONFIG_IS_VALID";
    pub const KMS_NETWORK_ACCESS_DENIED: &str = "ENCRYPTION_AT_REST_KMS_NETWORK_ACCESS_DENIED";
    pub const KMS_NETWORK_ACCESS_RESTORED: &str = "ENCRYPTION_AT_REST_KMS_NETWORK_ACCESS_RESTORED";
    pub const CONFIGURATION_UPDATED: &str = "ENCRYPTION_AT_REST_CONFIGURATION_UPDATED";
    pub const CONFIGURATION_VALIDATION_FAILED: &str = "ENCRYPTION_AT_REST_CONFIGURATION_VALIDATION_FAILED";
    /// atrest's own (Atlas has no such event): a revalidation could not run or be recorded
    /// because of a failure inside the control plane; the last verdict is kept.
    pub const VALIDATION_INTERNAL_ERROR: &str = "ENCRYPTION_AT_REST_VALIDATION_INTERNAL_ERROR";
}

/// The `azureKeyVault` attributes of a PATCH (or dry-run) body. `None` = not sent.
#[derive(Default)]
pub struct AzurePatch {
    pub enabled: Option<bool>,
    pub role_id: Option<String>,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    /// An empty string counts as not sent (clients send `"secret": ""` as a placeholder).
    pub secret: Option<SecretString>,
    pub subscription_id: Option<String>,
    pub resource_group_name: Option<String>,
    pub key_vault_name: Option<String>,
    pub key_identifier: Option<String>,
    pub azure_environment: Option<String>,
    pub require_private_networking: Option<bool>,
}

/// A configuration after merging, ready to validate and commit.
pub struct Merged {
    pub config: AzureKeyVaultConfig,
    /// The static secret in clear (new from the request, or opened from the store), for validation only.
    pub static_secret: Option<SecretString>,
    /// Whether this replaces static credentials with a role (a migration).
    pub migrating_to_secretless: bool,
}

fn secret_purpose(group: &GroupId) -> String {
    format!("azure-secret:{}", group.as_str())
}

fn both_modes() -> ApiError {
    ApiError::bad_request(
        codes::INVALID_ATTRIBUTE,
        "Invalid attribute roleId specified: roleId (the secretless mode) cannot be combined with clientID, tenantID and \
         secret (static credentials) in one request. Send roleId alone to use the secretless mode (this also migrates \
         a project off its static credentials once validation passes), or clientID, tenantID and secret without roleId.",
    )
    .with_params(["roleId"])
    .with_field("roleId", "cannot be combined with clientID/tenantID/secret")
}

/// Merges `patch` into `existing` (Atlas merge semantics: absent attributes keep their value).
/// `patch.enabled == Some(false)` is handled by the caller (it removes the configuration).
pub async fn merge(
    state: &AppState,
    group: &GroupId,
    existing: Option<&StoredEarConfig>,
    patch: AzurePatch,
) -> ApiResult<Merged> {
    let base = existing.map(|e| &e.azure);
    let enabled = match (patch.enabled, base.map(|b| b.enabled)) {
        (Some(e), _) => e,
        (None, Some(e)) => e,
        (None, None) => {
            return Err(ApiError::missing_attribute(
                "azureKeyVault.enabled",
                "the first configuration must set enabled: true along with every other attribute",
            ));
        }
    };
    let existing_static = base.and_then(|b| match &b.credentials {
        AzureCredentials::Static { client_id, tenant_id, secret_ciphertext } => {
            Some((client_id.clone(), tenant_id.clone(), secret_ciphertext.clone()))
        }
        AzureCredentials::Secretless { .. } => None,
    });
    let new_secret = patch.secret.filter(|s| !s.expose_secret().is_empty());
    let patched_credentials =
        patch.role_id.is_some() || patch.client_id.is_some() || patch.tenant_id.is_some() || new_secret.is_some();

    let (credentials, static_secret, migrating) = if let Some(role_raw) = &patch.role_id {
        if new_secret.is_some() {
            return Err(both_modes());
        }
        // clientID / tenantID alongside roleId are tolerated only as echoes of what is stored
        // (Terraform sends computed values back).
        let echo_ok = |sent: &Option<String>, stored: Option<&String>| match sent {
            None => true,
            Some(s) if s.is_empty() => true,
            Some(s) => stored.is_some_and(|v| v.eq_ignore_ascii_case(s)),
        };
        let (sc, st) = (existing_static.as_ref().map(|s| &s.0), existing_static.as_ref().map(|s| &s.1));
        if !echo_ok(&patch.client_id, sc) || !echo_ok(&patch.tenant_id, st) {
            return Err(both_modes());
        }
        let role_id = RoleId::parse(role_raw).map_err(|_| {
            ApiError::invalid_attribute(
                "azureKeyVault.roleId",
                format!(
                    "'{role_raw}' is not a role id (24 hex characters): use the _id from POST /cloudProviderAccess"
                ),
            )
        })?;
        match state.store.get_cloud_provider_access_role(group, &role_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::new(
                    http::StatusCode::NOT_FOUND,
                    codes::CLOUD_PROVIDER_ACCESS_ROLE_NOT_FOUND,
                    format!(
                        "No Cloud Provider Access role with ID {role_raw} exists in this project. Register the service principal first \
                         (POST /api/atlas/v2/groups/{}/cloudProviderAccess) and use the _id it returns.",
                        group.as_str()
                    ),
                )
                .with_params([role_raw.clone()]));
            }
            Err(e) => return Err(e.into()),
        }
        (AzureCredentials::Secretless { role_id }, None, existing_static.is_some())
    } else if patch.client_id.is_some() || patch.tenant_id.is_some() || new_secret.is_some() {
        let client_id = patch.client_id.or_else(|| existing_static.as_ref().map(|s| s.0.clone())).ok_or_else(|| {
            ApiError::missing_attribute(
                "azureKeyVault.clientID",
                "static credentials need clientID, tenantID and secret",
            )
        })?;
        let tenant_id = patch.tenant_id.or_else(|| existing_static.as_ref().map(|s| s.1.clone())).ok_or_else(|| {
            ApiError::missing_attribute(
                "azureKeyVault.tenantID",
                "static credentials need clientID, tenantID and secret",
            )
        })?;
        for (field, v) in [("azureKeyVault.clientID", &client_id), ("azureKeyVault.tenantID", &tenant_id)] {
            v.parse::<AzureUuid>().map_err(|_| ApiError::invalid_attribute(field, format!("'{v}' is not a UUID")))?;
        }
        if state.platform.app_id.is_some_and(|p| client_id.parse::<AzureUuid>().is_ok_and(|c| c == p)) {
            return Err(ApiError::invalid_attribute(
                "azureKeyVault.clientID",
                "clientID is the platform's own application; static credentials name the customer's application. To use the platform's application, register its service principal (POST /cloudProviderAccess) and give roleId instead",
            ));
        }
        let same_app = existing_static
            .as_ref()
            .is_some_and(|s| s.0.eq_ignore_ascii_case(&client_id) && s.1.eq_ignore_ascii_case(&tenant_id));
        let (ciphertext, secret) = match new_secret {
            Some(secret) => (state.kek.seal(&secret_purpose(group), secret.expose_secret().as_bytes()), secret),
            None if same_app => {
                let ct = existing_static.as_ref().map(|s| s.2.clone()).unwrap_or_default();
                let secret = open_secret(state, group, &ct)?;
                (ct, secret)
            }
            None => {
                return Err(ApiError::missing_attribute(
                    "azureKeyVault.secret",
                    "a new clientID or tenantID needs its secret; the secret is write-only and never returned",
                ));
            }
        };
        (AzureCredentials::Static { client_id, tenant_id, secret_ciphertext: ciphertext }, Some(secret), false)
    } else {
        match base {
            Some(b) => {
                let secret = match &b.credentials {
                    AzureCredentials::Static { secret_ciphertext, .. } => {
                        Some(open_secret(state, group, secret_ciphertext)?)
                    }
                    AzureCredentials::Secretless { .. } => None,
                };
                (b.credentials.clone(), secret, false)
            }
            None => {
                return Err(ApiError::missing_attribute(
                    "azureKeyVault.roleId",
                    "give roleId (the secretless mode: the _id from POST /cloudProviderAccess), or clientID, tenantID and secret",
                ));
            }
        }
    };
    let pick = |new: Option<String>, old: Option<&Option<String>>| new.or_else(|| old.cloned().flatten());
    let require_private_networking =
        patch.require_private_networking.or(base.map(|b| b.require_private_networking)).unwrap_or(false);
    // Under private networking the control plane cannot validate a migration to roleId: the
    // data nodes do. The static credentials stay in force (and stored) until every node has
    // validated with the role ([`complete_migration`]); the role waits in `pending_role_id`.
    let (credentials, pending_role_id) = match (credentials, &existing_static) {
        (AzureCredentials::Secretless { role_id }, Some((client_id, tenant_id, ct))) if require_private_networking => (
            AzureCredentials::Static {
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                secret_ciphertext: ct.clone(),
            },
            Some(role_id),
        ),
        // Private networking turned off with a migration still pending: the control plane
        // validates the role itself now, so the migration completes with this PATCH.
        (AzureCredentials::Static { .. }, _)
            if !patched_credentials
                && !require_private_networking
                && base.and_then(|b| b.pending_role_id.as_ref()).is_some() =>
        {
            let role_id = base.and_then(|b| b.pending_role_id.clone()).expect("checked");
            (AzureCredentials::Secretless { role_id }, None)
        }
        (c @ AzureCredentials::Static { .. }, _) if !patched_credentials => {
            (c, base.and_then(|b| b.pending_role_id.clone()))
        }
        (c, _) => (c, None),
    };
    let static_secret = match &credentials {
        AzureCredentials::Static { .. } => static_secret,
        AzureCredentials::Secretless { .. } => None,
    };
    let migrating = migrating || pending_role_id.is_some();
    let config = AzureKeyVaultConfig {
        enabled,
        credentials,
        pending_role_id,
        subscription_id: pick(patch.subscription_id, base.map(|b| &b.subscription_id)),
        resource_group_name: pick(patch.resource_group_name, base.map(|b| &b.resource_group_name)),
        key_vault_name: pick(patch.key_vault_name, base.map(|b| &b.key_vault_name)),
        key_identifier: pick(patch.key_identifier, base.map(|b| &b.key_identifier)),
        azure_environment: pick(patch.azure_environment, base.map(|b| &b.azure_environment)),
        require_private_networking,
    };
    if !config.enabled {
        return Err(ApiError::invalid_attribute(
            "azureKeyVault.enabled",
            "to disable Encryption at Rest send only {\"enabled\": false}",
        ));
    }
    Ok(Merged { config, static_secret, migrating_to_secretless: migrating })
}

fn open_secret(state: &AppState, group: &GroupId, ciphertext: &[u8]) -> ApiResult<SecretString> {
    let unreadable = || {
        let mut e = ApiError::internal();
        e.detail = format!(
            "The stored Azure client secret of project {} does not open under this control plane's key-encryption key \
             ({}): the KEK changed since the secret was stored, or the row is corrupted. Nothing was changed. Start the \
             control plane with the KEK the secret was stored with (ATREST_KEK or kek.key), or send the secret again \
             with a PATCH of clientID, tenantID and secret.",
            group.as_str(),
            state.kek.fingerprint()
        );
        e
    };
    let plain = state.kek.open(&secret_purpose(group), ciphertext).map_err(|e| {
        tracing::error!(group = %group, error = %e, kek = state.kek.fingerprint(), "stored Azure secret does not open");
        unreadable()
    })?;
    let s = String::from_utf8(plain.expose_secret().to_vec()).map_err(|_| unreadable())?;
    Ok(SecretString::from(s))
}

/// Checks the shape of `config` and builds the validation target. The static secret, when the
/// configuration uses one, comes from `secret` (or is opened from the store).
pub async fn target(
    state: &AppState,
    group: &GroupId,
    config: &AzureKeyVaultConfig,
    secret: Option<SecretString>,
) -> ApiResult<Target> {
    let shaped = shape::shape(shape::Fields {
        azure_environment: config.azure_environment.as_deref(),
        subscription_id: config.subscription_id.as_deref(),
        resource_group_name: config.resource_group_name.as_deref(),
        key_vault_name: config.key_vault_name.as_deref(),
        key_identifier: config.key_identifier.as_deref(),
    })?;
    let (tenant_id, credential) = match &config.credentials {
        AzureCredentials::Secretless { role_id } => {
            let role = state.store.get_cloud_provider_access_role(group, role_id).await?;
            let tenant: AzureUuid = role.tenant_id.parse().map_err(|_| ApiError::internal())?;
            let sp: AzureUuid = role.service_principal_id.parse().map_err(|_| ApiError::internal())?;
            (tenant, Credential::Secretless { service_principal_id: sp })
        }
        AzureCredentials::Static { client_id, tenant_id, secret_ciphertext } => {
            let secret = match secret {
                Some(s) => s,
                None => open_secret(state, group, secret_ciphertext)?,
            };
            let tenant: AzureUuid = tenant_id.parse().map_err(|_| ApiError::internal())?;
            let client: AzureUuid = client_id.parse().map_err(|_| ApiError::internal())?;
            (tenant, Credential::Static { client_id: client, secret })
        }
    };
    Ok(Target {
        group_id: group.clone(),
        environment: shaped.environment,
        tenant_id,
        credential,
        subscription_id: shaped.subscription_id,
        resource_group: shaped.resource_group,
        vault: shaped.vault,
        key: shaped.key,
    })
}

/// A new event for `group`.
pub fn event(group: &GroupId, type_name: &str, payload: Value, now: OffsetDateTime) -> Event {
    Event {
        id: EventId::new_random(),
        group_id: group.clone(),
        event_type_name: type_name.to_owned(),
        created_at: now,
        payload: payload.to_string(),
    }
}

/// The validation status a report leads to, given the previous one.
pub fn status_from(report: &Report, previous: Option<&ValidationStatus>, now: OffsetDateTime) -> ValidationStatus {
    match report.outcome {
        Outcome::Valid => ValidationStatus {
            valid: true,
            state: ValidationState::Valid,
            detail: report
                .checks
                .iter()
                .find(|c| c.status == validate::CheckStatus::Warning)
                .map(|c| c.message.clone()),
            key_version_in_use: report.key_version_in_use.clone(),
            last_validated_at: Some(now),
        },
        Outcome::Invalid => ValidationStatus {
            valid: false,
            state: ValidationState::Invalid,
            detail: Some(report.summary()),
            key_version_in_use: previous.and_then(|p| p.key_version_in_use.clone()),
            last_validated_at: Some(now),
        },
        // Could not reach Azure: keep the last known validity (Atlas keeps processes running and
        // raises "KMS network access denied").
        Outcome::Unreachable => ValidationStatus {
            valid: previous.is_some_and(|p| p.valid),
            state: ValidationState::Unreachable,
            detail: Some(report.summary()),
            key_version_in_use: previous.and_then(|p| p.key_version_in_use.clone()),
            last_validated_at: previous.and_then(|p| p.last_validated_at),
        },
    }
}

/// The events a change of status warrants.
pub fn transition_events(
    group: &GroupId,
    before: &ValidationStatus,
    after: &ValidationStatus,
    now: OffsetDateTime,
) -> Vec<Event> {
    use ValidationState::*;
    use event_types::*;
    let payload = json!({
        "previousState": before.state.as_str(),
        "state": after.state.as_str(),
        "valid": after.valid,
        "detail": after.detail,
        "keyVersionInUse": after.key_version_in_use,
    });
    let mut events = Vec::new();
    let e = |t: &str| event(group, t, payload.clone(), now);
    match (before.state, after.state) {
        (Invalid, Invalid) | (Valid, Valid) | (Unreachable, Unreachable) | (Pending, Pending) => {}
        (_, Invalid) => {
            if before.state == Unreachable {
                events.push(e(KMS_NETWORK_ACCESS_RESTORED));
            }
            events.push(e(CONFIG_NO_LONGER_VALID));
        }
        (_, Unreachable) => events.push(e(KMS_NETWORK_ACCESS_DENIED)),
        (_, Valid) => {
            if before.state == Unreachable {
                events.push(e(KMS_NETWORK_ACCESS_RESTORED));
            }
            if !before.valid {
                events.push(e(CONFIG_IS_VALID));
            }
        }
        (_, Pending) => {}
    }
    events
}

/// Revalidates a stored configuration and records the result (and events on a change).
/// Configurations that wait for data nodes (private networking, pending) are left alone.
/// Returns what is stored afterwards.
///
/// A failure inside the control plane (the stored secret does not open, the role row is gone,
/// the store refuses the write) is not a verdict on the customer's configuration: it is recorded
/// by [`internal_failure`] and returned as a 500, and the stored verdict stays as it was.
pub async fn revalidate(state: &AppState, stored: StoredEarConfig, trigger: &str) -> Result<StoredEarConfig, ApiError> {
    if stored.azure.require_private_networking && stored.status.state == ValidationState::Pending {
        return Ok(stored);
    }
    let report = match target(state, &stored.group_id, &stored.azure, None).await {
        Ok(t) => validate::run(state, &t, Depth::Commit, trigger).await,
        // The configuration itself is wrong (it no longer passes the shape check): the
        // customer's to fix.
        Err(e) if e.status == http::StatusCode::BAD_REQUEST => Report {
            outcome: Outcome::Invalid,
            checks: vec![validate::CheckResult {
                name: validate::CheckName::Shape,
                status: validate::CheckStatus::Failed,
                azure_error_code: None,
                message: e.detail.clone(),
                fix: None,
            }],
            key_version_in_use: None,
        },
        Err(e) => return Err(internal_failure(state, &stored, trigger, &e.detail).await),
    };
    // The transition happened when the check finished, not when it started.
    let now = state.now();
    let status = status_from(&report, Some(&stored.status), now);
    let events = transition_events(&stored.group_id, &stored.status, &status, now);
    match state
        .store
        .record_validation(&stored.group_id, stored.config_version, stored.status_version, &status, &events)
        .await
    {
        Ok(s) => Ok(s),
        // Someone changed the configuration or recorded a newer result meanwhile: theirs wins.
        Err(StoreError::StaleWrite) => Ok(state.store.get_ear_config(&stored.group_id).await?.unwrap_or(stored)),
        Err(e) => Err(internal_failure(state, &stored, trigger, &format!("recording the result failed: {e}")).await),
    }
}

/// Records a revalidation that failed inside the control plane: a log line, the metric
/// `atrest_validations_total{result="internal_error"}` and (if the store takes it) an
/// [`event_types::VALIDATION_INTERNAL_ERROR`] event. `what` must hold no secret. Returns the 500
/// to answer, which says the last verdict is kept.
async fn internal_failure(state: &AppState, stored: &StoredEarConfig, trigger: &str, what: &str) -> ApiError {
    let kept = stored.status.state.as_str().to_ascii_uppercase();
    state.metrics.validation(trigger, "internal_error");
    tracing::error!(
        group = %stored.group_id,
        trigger,
        error = what,
        kept = %kept,
        "revalidation failed inside the control plane (not a verdict on the customer's key vault); the last verdict is kept"
    );
    let event = event(
        &stored.group_id,
        event_types::VALIDATION_INTERNAL_ERROR,
        json!({"detail": what, "trigger": trigger, "keptState": kept, "valid": stored.status.valid}),
        state.now(),
    );
    if let Err(e) = state.store.insert_event(&event).await {
        tracing::warn!(group = %stored.group_id, error = %e, "could not record the internal-error event either");
    }
    let mut e = ApiError::internal();
    e.detail = format!(
        "The configuration could not be revalidated because of a failure inside the control plane, not because of \
         Azure: {what} The last result ({kept}) is kept."
    );
    e
}
