//! `GET/PATCH /api/atlas/v2/groups/{groupId}/encryptionAtRest`, and atrest's dry run
//! `POST /api/atrest/v1/groups/{groupId}/encryptionAtRest/azureKeyVault:validate` and status
//! `GET /api/atrest/v1/groups/{groupId}/encryptionAtRest/azureKeyVault/status`, and the "Try Again"
//! trigger `POST /api/atlas/v2/groups/{groupId}/encryptionAtRest/azureKeyVault:revalidate`
//! (Atlas has the button, not an Admin API call: atrest's own route).
//!
//! Wire semantics (atlas-admin-api.md §3, §8, §9): GET always answers 200 with all three
//! provider blocks (unconfigured ones as `{enabled:false}`); PATCH merges per provider, ignores
//! read-only attributes (`valid`), never returns `secret`, echoes every other attribute exactly
//! as set, and `{enabled:false}` removes the configuration. The Atlas body stays exactly Atlas's
//! shape; atrest's extra state (pending/unreachable, the key version in use, the last check's
//! detail) is served by the status endpoint.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use atrest_store::{AzureCredentials, Group, StoredEarConfig, ValidationState, ValidationStatus};

use crate::api::body::{Fields, JsonObject};
use crate::api::{atlas_time, ok_json};
use crate::auth::{Access, Caller};
use crate::ear::{self, AzurePatch, event_types};
use crate::error::{ApiError, ApiResult, codes};
use crate::state::AppState;
use crate::validate::{self, CheckName, CheckResult, CheckStatus, Depth, Outcome, Report};

const AWS_FIELDS: [&str; 8] = [
    "accessKeyID",
    "secretAccessKey",
    "customerMasterKeyID",
    "enabled",
    "region",
    "requirePrivateNetworking",
    "roleId",
    "valid",
];
const GCP_FIELDS: [&str; 5] = ["enabled", "keyVersionResourceID", "roleId", "serviceAccountKey", "valid"];

/// The Atlas `EncryptionAtRest` body for what is stored.
pub fn ear_json(stored: Option<&StoredEarConfig>) -> Value {
    json!({
        "awsKms": {"enabled": false},
        "azureKeyVault": azure_json(stored),
        "googleCloudKms": {"enabled": false},
        "enabledForSearchNodes": false,
    })
}

fn azure_json(stored: Option<&StoredEarConfig>) -> Value {
    let Some(s) = stored else { return json!({"enabled": false}) };
    let a = &s.azure;
    let mut m = Map::new();
    m.insert("enabled".into(), a.enabled.into());
    match (&a.credentials, &a.pending_role_id) {
        // A migration pending on the data nodes shows the configuration as the customer set it
        // (the status endpoint says the static credentials are still in force).
        (AzureCredentials::Secretless { role_id }, _) | (AzureCredentials::Static { .. }, Some(role_id)) => {
            m.insert("roleId".into(), role_id.as_str().into());
        }
        (AzureCredentials::Static { client_id, tenant_id, .. }, None) => {
            m.insert("clientID".into(), client_id.as_str().into());
            m.insert("tenantID".into(), tenant_id.as_str().into());
        }
    }
    for (name, v) in [
        ("subscriptionID", &a.subscription_id),
        ("resourceGroupName", &a.resource_group_name),
        ("keyVaultName", &a.key_vault_name),
        ("keyIdentifier", &a.key_identifier),
        ("azureEnvironment", &a.azure_environment),
    ] {
        if let Some(v) = v {
            m.insert(name.into(), v.as_str().into());
        }
    }
    m.insert("requirePrivateNetworking".into(), a.require_private_networking.into());
    m.insert("valid".into(), s.status.valid.into());
    Value::Object(m)
}

/// atrest's status view: what Atlas's `valid` summarises.
pub fn status_json(stored: Option<&StoredEarConfig>) -> Value {
    let Some(s) = stored else {
        return json!({"enabled": false, "state": "NOT_CONFIGURED", "valid": false});
    };
    let st: &ValidationStatus = &s.status;
    json!({
        "enabled": s.azure.enabled,
        "state": st.state.as_str().to_ascii_uppercase(),
        "valid": st.valid,
        "detail": st.detail,
        "keyIdentifier": s.azure.key_identifier,
        "keyVersionInUse": st.key_version_in_use,
        "lastValidatedDate": st.last_validated_at.map(atlas_time),
        "nextValidationDate": atlas_time(s.next_validation_at),
        "lastUpdatedDate": atlas_time(s.updated_at),
        "credentialMode": match s.azure.credentials { AzureCredentials::Secretless { .. } => "SECRETLESS", AzureCredentials::Static { .. } => "STATIC_CREDENTIALS" },
        // Under private networking: the roleId the data nodes are validating while the static
        // credentials stay in force.
        "pendingRoleId": s.azure.pending_role_id.as_ref().map(|r| r.as_str()),
        "configVersion": s.config_version.get(),
    })
}

/// Parses an `azureKeyVault` object.
fn parse_azure(mut f: Fields) -> ApiResult<AzurePatch> {
    let p = AzurePatch {
        enabled: f.boolean("enabled")?,
        role_id: f.string("roleId")?,
        client_id: f.string("clientID")?,
        tenant_id: f.string("tenantID")?,
        secret: f.string("secret")?.map(SecretString::from),
        subscription_id: f.string("subscriptionID")?,
        resource_group_name: f.string("resourceGroupName")?,
        key_vault_name: f.string("keyVaultName")?,
        key_identifier: f.string_not_null(
            "keyIdentifier",
            "send the key's identifier (https://<vault>.vault.azure.net/keys/<name>[/<version>]), or leave it out to keep the current one; to remove the configuration send {\"azureKeyVault\": {\"enabled\": false}}",
        )?,
        azure_environment: f.string("azureEnvironment")?,
        require_private_networking: f.boolean("requirePrivateNetworking")?,
    };
    f.ignore("valid");
    f.finish()?;
    // The spec's formats hold whatever else the body says (even with enabled: false, which
    // removes the configuration): a request that breaks them changes nothing. An empty string
    // is what clients send for an unset value, so it passes.
    for (field, v, what) in [
        ("azureKeyVault.clientID", &p.client_id, "the application (client) id of your Entra app, a UUID"),
        (
            "azureKeyVault.tenantID",
            &p.tenant_id,
            "your Entra tenant id, a UUID: `az account show --query tenantId -o tsv`",
        ),
        (
            "azureKeyVault.subscriptionID",
            &p.subscription_id,
            "the vault's subscription id, a UUID: `az account show --query id -o tsv`",
        ),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty())
            && v.parse::<atrest_domain::AzureUuid>().is_err()
        {
            return Err(ApiError::invalid_attribute(field, format!("'{v}' is not a UUID: send {what}")));
        }
    }
    if let Some(v) = p.role_id.as_deref()
        && !(v.len() == 24 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(ApiError::invalid_attribute(
            "azureKeyVault.roleId",
            format!("'{v}' is not a role id (24 lowercase hex characters): use the _id from POST /cloudProviderAccess"),
        ));
    }
    Ok(p)
}

/// An `awsKms` / `googleCloudKms` block: accepted only when it configures nothing.
fn check_unsupported_block(name: &str, provider: &str, f: Option<Fields>, known: &[&str]) -> ApiResult<()> {
    let Some(mut f) = f else { return Ok(()) };
    let mut configures = false;
    for field in known {
        if *field == "valid" {
            f.ignore(field);
            continue;
        }
        let v = f.take_raw(field);
        // The spec gives these a minimum length, a pattern or an enum that "" breaks, so an
        // empty one is a malformed request, not an unset value (schemathesis found one).
        if matches!(&v, Some(Value::String(s)) if s.is_empty())
            && matches!(*field, "accessKeyID" | "customerMasterKeyID" | "region" | "roleId")
        {
            return Err(ApiError::invalid_attribute(
                &format!("{name}.{field}"),
                format!(
                    "it is empty, which the API does not allow: leave it out (atrest offers Azure Key Vault only; send {name} as {{\"enabled\": false}})"
                ),
            ));
        }
        configures |= match v {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
    }
    f.finish()?;
    if configures {
        return Err(ApiError::bad_request(
            codes::CLOUD_PROVIDER_NOT_SUPPORTED,
            format!("{name} is not supported by this deployment: atrest offers Azure Key Vault only ({provider} is not available). Send {name} as {{\"enabled\": false}} or leave it out."),
        )
        .with_params([provider]));
    }
    Ok(())
}

struct EarPatch {
    azure: Option<AzurePatch>,
}

fn parse_patch(body: Map<String, Value>) -> ApiResult<EarPatch> {
    let mut f = Fields::new("", body);
    let azure = f.object("azureKeyVault")?.map(parse_azure).transpose()?;
    check_unsupported_block("awsKms", "AWS", f.object("awsKms")?, &AWS_FIELDS)?;
    check_unsupported_block("googleCloudKms", "GCP", f.object("googleCloudKms")?, &GCP_FIELDS)?;
    if f.boolean("enabledForSearchNodes")? == Some(true) {
        return Err(ApiError::invalid_attribute(
            "enabledForSearchNodes",
            "atrest has no search nodes; send false or leave it out",
        ));
    }
    f.finish()?;
    Ok(EarPatch { azure })
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let stored = read_with_revalidation(&state, &group).await?;
    Ok(ok_json(ear_json(stored.as_ref())))
}

/// Reads the configuration, revalidating first when the last check is older than the
/// on-read interval (at most once per interval across replicas: the store arbitrates).
async fn read_with_revalidation(state: &AppState, group: &Group) -> ApiResult<Option<StoredEarConfig>> {
    let min = state.config.on_read_min_interval();
    if !min.is_zero() {
        let due_locally = {
            let mut seen = state.read_revalidation.lock();
            let now = std::time::Instant::now();
            match seen.get(&group.id) {
                Some(last) if now.duration_since(*last) < min => false,
                _ => {
                    seen.insert(group.id.clone(), now);
                    true
                }
            }
        };
        if due_locally
            && let Some(claimed) = state.store.claim_revalidation_on_read(&group.id, state.now(), min).await?
        {
            match ear::revalidate(state, claimed, "read").await {
                Ok(s) => return Ok(Some(s)),
                // Recorded as an internal error; the read still answers with the last verdict.
                Err(e) if e.status.is_server_error() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(state.store.get_ear_config(&group.id).await?)
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let patch = parse_patch(body)?;
    let existing = state.store.get_ear_config(&group.id).await?;
    let Some(azure) = patch.azure else {
        return Ok(ok_json(ear_json(existing.as_ref())));
    };
    let now = state.now();

    if azure.enabled == Some(false) {
        let in_use = state.store.clusters_using_azure_key(&group.id).await?;
        if existing.is_some() && !in_use.is_empty() {
            return Err(ApiError::bad_request(
                codes::ENCRYPTION_AT_REST_IN_USE_BY_CLUSTERS,
                format!(
                    "Encryption at Rest with Azure Key Vault cannot be disabled for group {}: clusters {} keep their \
                     data under this key (encryptionAtRestProvider AZURE). Delete those clusters first; nothing was changed.",
                    group.id,
                    in_use.join(", ")
                ),
            )
            .with_params(in_use));
        }
        if let Some(e) = &existing {
            let ev = ear::event(
                &group.id,
                event_types::CONFIGURATION_UPDATED,
                json!({"azureKeyVault": {"enabled": false}, "by": caller.label}),
                now,
            );
            state.store.delete_ear_config(&group.id, e.config_version, &[ev]).await?;
            state.nodes_config_changed();
            tracing::info!(group = %group.id, by = %caller.label, "encryption at rest disabled");
        }
        return Ok(ok_json(ear_json(None)));
    }

    let merged = ear::merge(&state, &group.id, existing.as_ref(), azure).await?;
    if let Some(e) = &existing
        && e.azure == merged.config
    {
        // Nothing changed (e.g. Terraform re-sending the GET body): no validation, no write.
        return Ok(ok_json(ear_json(Some(e))));
    }
    let target = ear::target(&state, &group.id, &merged.config, merged.static_secret).await?;

    let status = if merged.config.require_private_networking {
        state.metrics.validation("patch", "pending");
        ValidationStatus::pending(Some(
            "Validation pending: requirePrivateNetworking is set, so the Key Vault is validated by the data nodes over the \
             private endpoint; the result appears here once they report."
                .into(),
        ))
    } else {
        let report = validate::run(&state, &target, Depth::Commit, "patch").await;
        if report.outcome != Outcome::Valid {
            let failed = ear::event(
                &group.id,
                event_types::CONFIGURATION_VALIDATION_FAILED,
                json!({"detail": report.summary(), "keyIdentifier": merged.config.key_identifier, "by": caller.label}),
                state.now(),
            );
            if let Err(e) = state.store.insert_event(&failed).await {
                tracing::warn!(group = %group.id, error = %e, "could not record the validation-failed event");
            }
            return Err(validation_error(&report, existing.as_ref()));
        }
        ear::status_from(&report, None, state.now())
    };
    // The change and its events happen when the validation finished, not when the request came.
    let now = state.now();

    let mut events = vec![ear::event(
        &group.id,
        event_types::CONFIGURATION_UPDATED,
        json!({
            "azureKeyVault": {
                "keyIdentifier": merged.config.key_identifier,
                "keyVersionInUse": status.key_version_in_use,
                "credentialMode": match merged.config.credentials { AzureCredentials::Secretless { .. } => "SECRETLESS", AzureCredentials::Static { .. } => "STATIC_CREDENTIALS" },
                "migratedFromStaticCredentials": merged.migrating_to_secretless,
                "requirePrivateNetworking": merged.config.require_private_networking,
            },
            "by": caller.label,
        }),
        now,
    )];
    if let Some(e) = &existing {
        events.extend(ear::transition_events(&group.id, &e.status, &status, now));
    }
    let write = atrest_store::EarConfigWrite {
        azure: merged.config,
        status,
        now,
        next_validation_at: now + state.config.revalidate_interval(),
    };
    let stored =
        state.store.put_ear_config(&group.id, existing.as_ref().map(|e| e.config_version), &write, &events).await?;
    state.nodes_config_changed();
    tracing::info!(
        group = %group.id,
        by = %caller.label,
        migrated = merged.migrating_to_secretless,
        state = stored.status.state.as_str(),
        "encryption at rest configured"
    );
    Ok(ok_json(ear_json(Some(&stored))))
}

/// The 400 for a failed validation: `INVALID_AZURE_CREDENTIALS` (Atlas's code), or atrest's
/// key-binding code when only the binding failed.
fn validation_error(report: &Report, existing: Option<&StoredEarConfig>) -> ApiError {
    let code = match report.first_failure().map(|c| c.name) {
        Some(CheckName::KeyBinding) => codes::KEY_NOT_BOUND_TO_PROJECT,
        _ => codes::INVALID_AZURE_CREDENTIALS,
    };
    let mut detail = format!("Invalid Azure credentials. {}", report.summary());
    if report.outcome == Outcome::Unreachable {
        detail.push_str(" Azure could not be reached, so nothing was changed; retry when it is reachable.");
    } else {
        detail.push_str(" Nothing was changed.");
    }
    if existing.is_some_and(|e| matches!(e.azure.credentials, AzureCredentials::Static { .. })) {
        detail.push_str(" The project keeps using its current static credentials.");
    }
    ApiError::bad_request(code, detail)
}

/// atrest's dry run: runs every check on the configuration the body would produce (merged into
/// what is stored), stores nothing, and reports each check with its fix.
pub async fn validate_dry_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    // Accept the block itself, or an EncryptionAtRest body holding it.
    let block = match body.get("azureKeyVault") {
        Some(Value::Object(inner)) if body.len() == 1 => inner.clone(),
        _ => body,
    };
    let azure = parse_azure(Fields::new("azureKeyVault.", block))?;
    let existing = state.store.get_ear_config(&group.id).await?;
    let mut checks_stored = false;
    let target = match ear::merge(&state, &group.id, existing.as_ref(), azure).await {
        Ok(m) => {
            checks_stored = existing.as_ref().is_some_and(|e| e.azure == m.config);
            ear::target(&state, &group.id, &m.config, m.static_secret).await
        }
        Err(e) => Err(e),
    };
    let report = match target {
        Ok(t) => validate::run(&state, &t, Depth::Diagnose, "dry_run").await,
        Err(e) if e.status == http::StatusCode::BAD_REQUEST || e.status == http::StatusCode::NOT_FOUND => Report {
            outcome: Outcome::Invalid,
            checks: vec![CheckResult {
                name: CheckName::Shape,
                status: CheckStatus::Failed,
                azure_error_code: None,
                message: e.detail.clone(),
                fix: e.fields.first().map(|(_, d)| d.clone()),
            }],
            key_version_in_use: None,
        },
        Err(e) => return Err(e),
    };
    let mut v = serde_json::to_value(&report).map_err(|_| ApiError::internal())?;
    let mut summary = report.summary();
    // A dry run records nothing: when the stored configuration passes now but is stored as
    // INVALID, say so and point at the trigger that records it.
    if let Some(e) = existing.as_ref().filter(|e| checks_stored && e.status.state == ValidationState::Invalid) {
        v["storedState"] = "INVALID".into();
        if report.outcome == Outcome::Valid {
            summary.push_str(&format!(
                " The stored configuration is still INVALID (from the check at {}): a dry run records nothing. To record \
                 this result now, POST /api/atlas/v2/groups/{}/encryptionAtRest/azureKeyVault:revalidate (\"Try Again\"); \
                 otherwise the next background check, due at {}, records it.",
                e.status.last_validated_at.map(atlas_time).unwrap_or_else(|| "an unknown time".into()),
                group.id.as_str(),
                atlas_time(e.next_validation_at)
            ));
        }
    }
    v["summary"] = summary.into();
    Ok(ok_json(v))
}

/// "Try Again": validates the stored configuration now, records the result and its events (as a
/// background check would), and answers the `EncryptionAtRest` document, as GET does. A
/// configuration pending on its data nodes (private networking) is returned unchanged.
pub async fn revalidate_now(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let Some(stored) = state.store.get_ear_config(&group.id).await? else {
        return Err(ApiError::new(
            http::StatusCode::NOT_FOUND,
            codes::RESOURCE_NOT_FOUND,
            format!(
                "Project {} has no Azure Key Vault configuration to revalidate. Configure one first with PATCH \
                 /api/atlas/v2/groups/{}/encryptionAtRest.",
                group.id.as_str(),
                group.id.as_str()
            ),
        ));
    };
    let stored = ear::revalidate(&state, stored, "try_again").await?;
    tracing::info!(group = %group.id, by = %caller.label, state = stored.status.state.as_str(), "revalidated on demand");
    Ok(ok_json(ear_json(Some(&stored))))
}

pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let stored = state.store.get_ear_config(&group.id).await?;
    Ok(ok_json(status_json(stored.as_ref())))
}
