//! Cloud Provider Access roles (`/groups/{groupId}/cloudProviderAccess`): the customer's
//! registration of the platform app's service principal in their tenant. Azure only; AWS and
//! GCP get a clear 400 saying this deployment does not offer them.
//!
//! Creating (and authorizing) a role proves the platform can act in the tenant: it obtains a
//! token there as the platform app and checks that the token's `oid` is the service principal
//! the customer named. So a typo in `servicePrincipalId`, or a tenant where
//! `az ad sp create --id <app>` was never run, is caught at registration, not at the first PATCH.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;

use atrest_domain::{AzureEnvironment, AzureUuid};
use atrest_store::{CloudProvider, CloudProviderAccessRole, RoleId, StoreError};

use crate::api::body::{Fields, JsonObject};
use crate::api::params::Path;
use crate::api::{atlas_time, ok_json};
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult, codes, echo};
use crate::state::AppState;

/// Read-only attributes a client may send back (Terraform copies GET responses).
const READ_ONLY: [&str; 4] = ["_id", "createdDate", "lastUpdatedDate", "featureUsages"];

pub fn role_json(role: &CloudProviderAccessRole, in_use: bool) -> Value {
    let usages: Vec<Value> =
        if in_use { vec![json!({"featureType": "ENCRYPTION_AT_REST", "featureId": null})] } else { vec![] };
    json!({
        "providerName": role.provider.as_str(),
        "_id": role.id.as_str(),
        "atlasAzureAppId": role.atlas_azure_app_id,
        "servicePrincipalId": role.service_principal_id,
        "tenantId": role.tenant_id,
        "createdDate": atlas_time(role.created_at),
        "lastUpdatedDate": atlas_time(role.last_updated_at),
        "featureUsages": usages,
    })
}

/// `providerName` (or the `{cloudProvider}` path segment) must be AZURE.
pub fn require_azure(value: &str, field: &str) -> ApiResult<()> {
    match value {
        "AZURE" => Ok(()),
        "AWS" | "GCP" => Err(ApiError::bad_request(
            codes::CLOUD_PROVIDER_NOT_SUPPORTED,
            format!("Cloud provider {value} is not supported by this deployment: atrest offers Azure Key Vault only. Use providerName AZURE."),
        )
        .with_params([value])),
        other => Err(ApiError::bad_request(
            codes::INVALID_ENUM_VALUE,
            format!("An invalid enumeration value {} was specified for {field}: use AZURE (AWS and GCP are not offered by this deployment).", echo(other)),
        )
        .with_params([other])
        .with_field(field, "use AZURE")),
    }
}

fn parse_role_id(raw: &str) -> ApiResult<RoleId> {
    RoleId::parse(raw).map_err(|_| role_not_found(raw))
}

fn role_not_found(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::CLOUD_PROVIDER_ACCESS_ROLE_NOT_FOUND,
        format!("No Cloud Provider Access role with ID {} exists in this project; list them with GET /api/atlas/v2/groups/{{groupId}}/cloudProviderAccess.", echo(raw)),
    )
    .with_params([raw])
}

fn sp_invalid(sp: &str, why: String) -> ApiError {
    ApiError::bad_request(
        codes::AZURE_SERVICE_PRINCIPAL_INVALID,
        format!(
            "The specified Azure Service Principal ({}) contains invalid tenant id or service principal id: {why}",
            echo(sp)
        ),
    )
    .with_params([sp])
}

/// The Azure fields of a POST or PATCH body.
struct AzureRoleRequest {
    app_id: Option<AzureUuid>,
    service_principal_id: AzureUuid,
    tenant_id: AzureUuid,
    /// As sent, for echoing exactly.
    raw_sp: String,
    raw_tenant: String,
}

fn parse_request(body: serde_json::Map<String, Value>) -> ApiResult<AzureRoleRequest> {
    let mut f = Fields::new("", body);
    let provider = f
        .string("providerName")?
        .ok_or_else(|| ApiError::missing_attribute("providerName", "set providerName to AZURE"))?;
    require_azure(&provider, "providerName")?;
    let app = f.string("atlasAzureAppId")?;
    let sp = f.string("servicePrincipalId")?.ok_or_else(|| {
        ApiError::missing_attribute(
            "servicePrincipalId",
            "the object id of the platform app's service principal in your tenant: `az ad sp show --id <atlasAzureAppId> --query id -o tsv`",
        )
    })?;
    let tenant = f.string("tenantId")?.ok_or_else(|| {
        ApiError::missing_attribute("tenantId", "your Entra tenant id: `az account show --query tenantId -o tsv`")
    })?;
    for ro in READ_ONLY {
        f.ignore(ro);
    }
    f.finish()?;
    let service_principal_id: AzureUuid =
        sp.parse().map_err(|_| sp_invalid(&sp, format!("servicePrincipalId '{}' is not a UUID", echo(&sp))))?;
    let tenant_id: AzureUuid =
        tenant.parse().map_err(|_| sp_invalid(&sp, format!("tenantId '{}' is not a UUID", echo(&tenant))))?;
    let app_id = app
        .map(|a| {
            a.parse::<AzureUuid>()
                .map_err(|_| ApiError::invalid_attribute("atlasAzureAppId", format!("'{}' is not a UUID", echo(&a))))
        })
        .transpose()?;
    Ok(AzureRoleRequest { app_id, service_principal_id, tenant_id, raw_sp: sp, raw_tenant: tenant })
}

/// The platform app id a request must name (and the one used when it names none).
fn platform_app_id(state: &AppState, requested: Option<&AzureUuid>) -> ApiResult<AzureUuid> {
    let Some(platform) = state.platform.app_id else {
        return Err(ApiError::bad_request(
            codes::CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL,
            "This deployment has no platform application configured, so Azure service principals cannot be registered. \
             The operator must set platform.app_id and a platform credential.",
        ));
    };
    match requested {
        Some(r) if r != &platform => Err(ApiError::invalid_attribute(
            "atlasAzureAppId",
            format!(
                "this platform's application id is {platform}, not {r}; omit atlasAzureAppId or set it to {platform}"
            ),
        )),
        _ => Ok(platform),
    }
}

/// Proves the platform app can obtain a token in `tenant` and that its service principal there
/// is `sp`.
async fn prove_service_principal(
    state: &AppState,
    app: &AzureUuid,
    tenant: &AzureUuid,
    sp: &AzureUuid,
    raw_sp: &str,
) -> ApiResult<()> {
    let client = state.platform.secretless()?;
    // A proof must come from Entra now: a cached token was issued before the customer may have
    // disabled or deleted the service principal, so drop it first (one extra token request per
    // registration or PATCH, which are rare).
    let key = client.tokens().cache_key(
        AzureEnvironment::Azure,
        tenant,
        &format!("{}/.default", AzureEnvironment::Azure.arm_resource()),
    );
    client.tokens().cache().invalidate(&key);
    let token = client.tokens().arm_token(AzureEnvironment::Azure, tenant).await;
    let token = match token {
        Ok(t) => {
            state.metrics.azure_call("entra.token", "ok");
            t
        }
        Err(e) => {
            state.metrics.azure_call("entra.token", e.kind().as_str());
            let mut detail = format!("Atlas cannot authenticate with the service principal ({raw_sp}).");
            match e.aadsts_code() {
                Some(700016) => detail.push_str(&format!(
                    " The platform application {app} has no service principal in tenant {tenant} (AADSTS700016). \
                     Create it as an administrator of that tenant: `az login --tenant {tenant}` then `az ad sp create --id {app}`, \
                     and register the object id it prints as servicePrincipalId."
                )),
                Some(90002) => {
                    return Err(sp_invalid(raw_sp, format!("tenant {tenant} does not exist (AADSTS90002); check tenantId with `az account show --query tenantId -o tsv`")));
                }
                _ => {
                    detail.push_str(&format!(" Entra ID answered: {}", e.message()));
                    if let Some(fix) = e.remediation() {
                        detail.push_str(&format!(" Fix: {fix}"));
                    }
                }
            }
            return Err(
                ApiError::bad_request(codes::CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL, detail).with_params([raw_sp])
            );
        }
    };
    let oid = crate::validate::token_oid(token.expose_secret());
    match oid {
        Some(oid) if oid.eq_ignore_ascii_case(&sp.to_string()) => Ok(()),
        Some(oid) => Err(sp_invalid(
            raw_sp,
            format!(
                "in tenant {tenant} the service principal of application {app} has object id {oid}, not {sp}. \
                 Use {oid} as servicePrincipalId (`az ad sp show --id {app} --query id -o tsv`)"
            ),
        )),
        None => Err(ApiError::bad_request(
            codes::CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL,
            format!("Atlas cannot authenticate with the service principal ({raw_sp}): the token Entra ID issued carries no object id."),
        )
        .with_params([raw_sp])),
    }
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let roles = state.store.list_cloud_provider_access_roles(&group.id).await?;
    let in_use = state.store.roles_in_use(&group.id).await?;
    let azure: Vec<Value> = roles.iter().map(|r| role_json(r, in_use.contains(&r.id))).collect();
    Ok(ok_json(json!({"awsIamRoles": [], "azureServicePrincipals": azure, "gcpServiceAccounts": []})))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, role_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let id = parse_role_id(&role_id)?;
    let role = match state.store.get_cloud_provider_access_role(&group.id, &id).await {
        Err(StoreError::NotFound { .. }) => return Err(role_not_found(&role_id)),
        other => other?,
    };
    let in_use = state.store.is_role_in_use(&group.id, &id).await?;
    Ok(ok_json(role_json(&role, in_use)))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let req = parse_request(body)?;
    let app = platform_app_id(&state, req.app_id.as_ref())?;
    let duplicate = || {
        ApiError::new(
            StatusCode::CONFLICT,
            codes::DUPLICATE_AZURE_SERVICE_PRINCIPAL,
            format!(
                "An Azure Service Principal has already been configured for the specified Azure Service Principal ID ({}).",
                req.raw_sp
            ),
        )
        .with_params([req.raw_sp.clone()])
    };
    let existing = state.store.list_cloud_provider_access_roles(&group.id).await?;
    if existing.iter().any(|r| {
        r.service_principal_id.eq_ignore_ascii_case(&req.raw_sp) && r.tenant_id.eq_ignore_ascii_case(&req.raw_tenant)
    }) {
        return Err(duplicate());
    }
    prove_service_principal(&state, &app, &req.tenant_id, &req.service_principal_id, &req.raw_sp).await?;
    let now = OffsetDateTime::now_utc();
    let role = CloudProviderAccessRole {
        id: RoleId::new_random(),
        group_id: group.id.clone(),
        provider: CloudProvider::Azure,
        atlas_azure_app_id: app.to_string(),
        service_principal_id: req.raw_sp.clone(),
        tenant_id: req.raw_tenant.clone(),
        created_at: now,
        last_updated_at: now,
    };
    match state.store.create_cloud_provider_access_role(&role).await {
        Err(StoreError::Conflict { .. }) => return Err(duplicate()),
        other => other?,
    }
    let stored = state.store.get_cloud_provider_access_role(&group.id, &role.id).await?;
    tracing::info!(group = %group.id, role = %stored.id, tenant = %stored.tenant_id, by = %caller.label, "azure service principal registered");
    Ok(ok_json(role_json(&stored, false)))
}

/// `PATCH /cloudProviderAccess/{roleId}`: Atlas's "authorize". For Azure it re-proves the
/// service principal (Terraform's authorization resource sends the role's own ids back); the
/// ids cannot be changed.
pub async fn authorize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, role_id)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let id = parse_role_id(&role_id)?;
    let role = match state.store.get_cloud_provider_access_role(&group.id, &id).await {
        Err(StoreError::NotFound { .. }) => return Err(role_not_found(&role_id)),
        other => other?,
    };
    let req = parse_request(body)?;
    let app = platform_app_id(&state, req.app_id.as_ref())?;
    if !req.raw_sp.eq_ignore_ascii_case(&role.service_principal_id)
        || !req.raw_tenant.eq_ignore_ascii_case(&role.tenant_id)
    {
        return Err(ApiError::invalid_attribute(
            "servicePrincipalId",
            format!(
                "role {} is registered for service principal {} in tenant {}; its ids cannot be changed. Register a new role instead",
                role.id, role.service_principal_id, role.tenant_id
            ),
        ));
    }
    prove_service_principal(&state, &app, &req.tenant_id, &req.service_principal_id, &req.raw_sp).await?;
    let in_use = state.store.is_role_in_use(&group.id, &id).await?;
    Ok(ok_json(role_json(&role, in_use)))
}

pub async fn deauthorize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, provider, role_id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    require_azure(&provider, "cloudProvider")?;
    let id = parse_role_id(&role_id)?;
    match state.store.delete_cloud_provider_access_role(&group.id, &id).await {
        Ok(()) => {}
        Err(StoreError::NotFound { .. }) => return Err(role_not_found(&role_id)),
        Err(StoreError::InUse { .. }) => {
            let msg = format!("Cannot remove the Azure Service Principal ({role_id}) because it is still in use.");
            return Err(ApiError::bad_request(
                codes::AZURE_SERVICE_PRINCIPAL_IN_USE,
                format!(
                    "Cannot remove the Azure Service Principal because it is still in use. Disable Encryption at Rest first \
                     (PATCH /api/atlas/v2/groups/{group_id}/encryptionAtRest with {{\"azureKeyVault\":{{\"enabled\":false}}}}) \
                     or point it at another role."
                ),
            )
            .with_params([msg]));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(group = %group.id, role = %role_id, by = %caller.label, "azure service principal deregistered");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_providers_are_refused_clearly() {
        assert!(require_azure("AZURE", "providerName").is_ok());
        assert_eq!(require_azure("AWS", "providerName").unwrap_err().error_code, "CLOUD_PROVIDER_NOT_SUPPORTED");
        assert_eq!(require_azure("azure", "providerName").unwrap_err().error_code, "INVALID_ENUM_VALUE");
    }
}
