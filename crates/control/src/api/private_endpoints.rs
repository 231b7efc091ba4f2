//! Encryption at Rest private endpoints:
//! `GET/POST /api/atlas/v2/groups/{groupId}/encryptionAtRest/{cloudProvider}/privateEndpoints` and
//! `GET/DELETE .../privateEndpoints/{endpointId}` (atlas-admin-api.md §1 endpoints 8–11, §3.5,
//! §3.6, §9.4). Every operation needs Project Owner, reads included, as the spec says.
//!
//! # What atrest does, honestly
//! In Atlas, a private endpoint is an Azure Private Endpoint that Atlas creates in its own
//! subscription, in one region, pointing at the customer's Key Vault; the customer then approves
//! the private endpoint connection on the vault, and Atlas's nodes in that region reach the vault
//! over it. atrest's control plane creates no Azure resource. It records which regions a project
//! wants private access in and tracks each endpoint through Atlas's states, so that Terraform
//! (`mongodbatlas_encryption_at_rest_private_endpoint`) and scripts drive it exactly as they drive
//! Atlas:
//!
//! - `POST` records the endpoint `INITIATING` and answers `202`.
//! - The background job ([`advance`]) moves `INITIATING` to `PENDING_ACCEPTANCE` and names the
//!   connection the customer approves on the vault, `atrest-<endpointId>`
//!   (`privateEndpointConnectionName`).
//! - `ACTIVE` is reported by the data nodes once they reach the vault over the endpoint
//!   ([`mark_active`]); the control plane never claims it itself, since it cannot see that path.
//!   `FAILED` and `PENDING_RECREATION` are valid stored states that nothing produces yet.
//! - `DELETE` answers `204` and moves the endpoint to `DELETING` (refused with Atlas's
//!   `ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_DELETE_BLOCKED_DURING_PROVISIONING` while it is still
//!   `INITIATING`); the background job then removes it, after which it answers `404`.
//!
//! Every transition is a conditional update in the store (`... WHERE status = <old>`), so
//! several replicas running [`advance`] together apply each one once.
//!
//! # Rules
//! - Creating needs `{cloudProvider}` = `AZURE`: `AWS` is a clear
//!   `400 CLOUD_PROVIDER_NOT_SUPPORTED`. Reading and deleting answer for `AWS` what is true and
//!   what the spec documents: an empty list, and `404` for any id (atrest has no AWS endpoints).
//!   Any other value is `400 INVALID_ENUM_VALUE` everywhere.
//! - The body is `{regionName}` with one of the 56 Azure region names of the spec;
//!   `cloudProvider` may be sent too (Terraform does) and must then match the path. Read-only
//!   attributes sent back are ignored; unknown attributes are `400 INVALID_ATTRIBUTE`.
//! - One endpoint per region per project: a second one for a region is
//!   `409 ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_ALREADY_EXISTS` (also while the first is
//!   `DELETING`: wait for it to disappear).
//! - Creating one requires the project's Azure Key Vault configuration to be enabled with
//!   `requirePrivateNetworking: true`, the documented first step (Atlas's guide enables private
//!   networking on the configuration before creating endpoints, and Terraform's docs call it a
//!   prerequisite of the private endpoint resource). Otherwise
//!   `400 ENCRYPTION_AT_REST_PRIVATE_NETWORKING_NOT_ENABLED` says what to PATCH first. The EAR
//!   PATCH refuses to turn `requirePrivateNetworking` off while endpoints exist (using
//!   `Store::list_ear_private_endpoints`).
//! - The project is checked first (`404`/`401`/`403`), before the path, the query or the body,
//!   so an unknown project is a `404` whatever else the request contains.
//! - A malformed or unknown `endpointId` is `404 ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_NOT_FOUND`.

use crate::api::params::{Path, Query};
use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::StatusCode;
use serde_json::{Value, json};

use atrest_store::{
    CloudProvider, EarPrivateEndpoint, EarPrivateEndpointDeletion, EarPrivateEndpointId, EarPrivateEndpointStatus,
    EarPrivateEndpointTransition, GroupId, StoreError,
};

use crate::api::body::{Fields, JsonObject};
use crate::api::groups::{PageQuery, paginated};
use crate::api::ok_json;
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult, codes};
use crate::state::AppState;

/// atrest: a second private endpoint for a region that already has one in the project.
pub const PRIVATE_ENDPOINT_ALREADY_EXISTS: &str = "ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_ALREADY_EXISTS";
/// atrest: no private endpoint with this id in the project.
pub const PRIVATE_ENDPOINT_NOT_FOUND: &str = "ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_NOT_FOUND";
/// atrest: private endpoints need `requirePrivateNetworking: true` on the Azure Key Vault
/// configuration first.
pub const PRIVATE_NETWORKING_NOT_ENABLED: &str = "ENCRYPTION_AT_REST_PRIVATE_NETWORKING_NOT_ENABLED";

/// The Azure region names the spec allows in `regionName` (`AzureKeyVaultEARPrivateEndpoint`).
pub const AZURE_REGIONS: [&str; 56] = [
    "US_CENTRAL",
    "US_EAST",
    "US_EAST_2",
    "US_NORTH_CENTRAL",
    "US_WEST",
    "US_SOUTH_CENTRAL",
    "EUROPE_NORTH",
    "EUROPE_WEST",
    "US_WEST_CENTRAL",
    "US_WEST_2",
    "US_WEST_3",
    "CANADA_EAST",
    "CANADA_CENTRAL",
    "BRAZIL_SOUTH",
    "BRAZIL_SOUTHEAST",
    "AUSTRALIA_CENTRAL",
    "AUSTRALIA_CENTRAL_2",
    "AUSTRALIA_EAST",
    "AUSTRALIA_SOUTH_EAST",
    "GERMANY_WEST_CENTRAL",
    "GERMANY_NORTH",
    "SWEDEN_CENTRAL",
    "SWEDEN_SOUTH",
    "SWITZERLAND_NORTH",
    "SWITZERLAND_WEST",
    "UK_SOUTH",
    "UK_WEST",
    "NORWAY_EAST",
    "NORWAY_WEST",
    "INDIA_CENTRAL",
    "INDIA_SOUTH",
    "INDIA_WEST",
    "CHINA_EAST",
    "CHINA_NORTH",
    "ASIA_EAST",
    "JAPAN_EAST",
    "JAPAN_WEST",
    "ASIA_SOUTH_EAST",
    "KOREA_CENTRAL",
    "KOREA_SOUTH",
    "FRANCE_CENTRAL",
    "FRANCE_SOUTH",
    "SOUTH_AFRICA_NORTH",
    "SOUTH_AFRICA_WEST",
    "UAE_CENTRAL",
    "UAE_NORTH",
    "QATAR_CENTRAL",
    "POLAND_CENTRAL",
    "ISRAEL_CENTRAL",
    "ITALY_NORTH",
    "SPAIN_CENTRAL",
    "MEXICO_CENTRAL",
    "NEW_ZEALAND_NORTH",
    "US_GOV_VIRGINIA",
    "US_GOV_ARIZONA",
    "US_GOV_TEXAS",
];

/// Read-only attributes a client may send back in a POST body (ignored).
const READ_ONLY: [&str; 4] = ["id", "status", "errorMessage", "privateEndpointConnectionName"];

/// How many endpoints one pass of [`advance`] reads per state at a time.
const BATCH: u32 = 100;

/// The Atlas `EARPrivateEndpoint` body (Azure variant).
pub fn endpoint_json(ep: &EarPrivateEndpoint) -> Value {
    let mut v = json!({
        "id": ep.id.as_str(),
        "cloudProvider": ep.provider.as_str(),
        "regionName": ep.region_name,
        "status": ep.status.as_str(),
    });
    if let Some(message) = &ep.error_message {
        v["errorMessage"] = json!(message);
    }
    if let Some(name) = &ep.private_endpoint_connection_name {
        v["privateEndpointConnectionName"] = json!(name);
    }
    v
}

/// The name of the private endpoint connection the customer approves on the vault for `id`.
pub fn connection_name(id: &EarPrivateEndpointId) -> String {
    format!("atrest-{id}")
}

fn collection_path(group: &GroupId, provider: &str) -> String {
    format!("/api/atlas/v2/groups/{group}/encryptionAtRest/{provider}/privateEndpoints")
}

/// Which provider a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathProvider {
    Azure,
    /// Valid in the spec, never offered here: nothing to list, nothing to find.
    Aws,
}

/// Reads the `{cloudProvider}` path segment: AZURE or AWS, else `400 INVALID_ENUM_VALUE`.
fn path_provider(provider: &str) -> ApiResult<PathProvider> {
    match provider {
        "AZURE" => Ok(PathProvider::Azure),
        "AWS" => Ok(PathProvider::Aws),
        other => Err(ApiError::bad_request(
            codes::INVALID_ENUM_VALUE,
            format!(
                "An invalid enumeration value {other} was specified for cloudProvider: use AZURE \
                 (.../encryptionAtRest/AZURE/privateEndpoints)."
            ),
        )
        .with_params([other])
        .with_field("cloudProvider", "use AZURE")),
    }
}

/// Creating needs the `{cloudProvider}` path segment to be AZURE.
fn require_azure(provider: &str) -> ApiResult<()> {
    match path_provider(provider)? {
        PathProvider::Azure => Ok(()),
        PathProvider::Aws => Err(ApiError::bad_request(
            codes::CLOUD_PROVIDER_NOT_SUPPORTED,
            "Cloud provider AWS is not supported by this deployment: atrest offers Encryption at Rest private endpoints \
             for Azure Key Vault only. Use .../encryptionAtRest/AZURE/privateEndpoints.",
        )
        .with_params(["AWS"])),
    }
}

fn not_found(raw: &str, provider: PathProvider) -> ApiError {
    let detail = match provider {
        PathProvider::Azure => format!(
            "No Encryption at Rest private endpoint with ID {raw} exists in this project; list them with \
             GET /api/atlas/v2/groups/{{groupId}}/encryptionAtRest/AZURE/privateEndpoints."
        ),
        PathProvider::Aws => format!(
            "No AWS Encryption at Rest private endpoint with ID {raw} exists: this deployment offers private \
             endpoints for Azure Key Vault only (.../encryptionAtRest/AZURE/privateEndpoints)."
        ),
    };
    ApiError::new(StatusCode::NOT_FOUND, PRIVATE_ENDPOINT_NOT_FOUND, detail).with_params([raw])
}

/// The endpoint a path names, or `404` (a malformed id cannot name one; there are no AWS ones).
fn endpoint_in_path(provider: &str, raw: &str) -> ApiResult<EarPrivateEndpointId> {
    let provider = path_provider(provider)?;
    match EarPrivateEndpointId::parse(raw) {
        Ok(id) if provider == PathProvider::Azure => Ok(id),
        _ => Err(not_found(raw, provider)),
    }
}

/// The region named by a POST body, validated.
fn parse_create(body: serde_json::Map<String, Value>) -> ApiResult<String> {
    let mut f = Fields::new("", body);
    let provider = f.string("cloudProvider")?;
    let region = f.string("regionName")?;
    for ro in READ_ONLY {
        f.ignore(ro);
    }
    f.finish()?;
    match provider.as_deref() {
        None | Some("AZURE") => {}
        Some("AWS") => {
            return Err(ApiError::invalid_attribute(
                "cloudProvider",
                "the body says AWS but the path says AZURE; omit cloudProvider or set it to AZURE",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                codes::INVALID_ENUM_VALUE,
                format!("An invalid enumeration value {other} was specified for cloudProvider: use AZURE."),
            )
            .with_params([other])
            .with_field("cloudProvider", "use AZURE"));
        }
    }
    let region = region.ok_or_else(|| {
        ApiError::missing_attribute("regionName", "the Azure region of the private endpoint, e.g. US_EAST_2")
    })?;
    if !AZURE_REGIONS.contains(&region.as_str()) {
        return Err(ApiError::bad_request(
            codes::INVALID_ENUM_VALUE,
            format!(
                "An invalid enumeration value {region} was specified for regionName: use an Atlas Azure region name \
                 such as US_EAST_2, EUROPE_WEST or UK_SOUTH (AWS region names are not accepted here)."
            ),
        )
        .with_params([region.clone()])
        .with_field("regionName", "an Atlas Azure region name, e.g. US_EAST_2"));
    }
    Ok(region)
}

/// Private endpoints need an enabled Azure Key Vault configuration with private networking.
async fn require_private_networking(state: &AppState, group: &GroupId) -> ApiResult<()> {
    let enabled =
        state.store.get_ear_config(group).await?.is_some_and(|c| c.azure.enabled && c.azure.require_private_networking);
    if enabled {
        return Ok(());
    }
    Err(ApiError::bad_request(
        PRIVATE_NETWORKING_NOT_ENABLED,
        format!(
            "Encryption at Rest private endpoints need private networking on the project's Azure Key Vault \
             configuration first: PATCH /api/atlas/v2/groups/{group}/encryptionAtRest with \
             {{\"azureKeyVault\":{{\"requirePrivateNetworking\":true}}}} (Encryption at Rest with Azure Key Vault \
             must be enabled), then create the endpoint."
        ),
    )
    .with_params([group.as_str()]))
}

/// `GET .../{cloudProvider}/privateEndpoints`: one page of the project's endpoints, oldest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, provider)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let which = path_provider(&provider)?;
    let page = q.page()?;
    let include_count = q.include_count()?;
    // At most one endpoint per region (56), so paging in memory is cheap.
    let all = match which {
        PathProvider::Azure => state.store.list_ear_private_endpoints(&group.id).await?,
        PathProvider::Aws => Vec::new(),
    };
    let total = all.len() as u64;
    let start = (page.page_num as usize - 1).saturating_mul(page.items_per_page as usize);
    let items = all.iter().skip(start).take(page.items_per_page as usize).map(endpoint_json).collect();
    Ok(ok_json(paginated(&collection_path(&group.id, &provider), items, total, include_count)))
}

/// `POST .../{cloudProvider}/privateEndpoints`: `202` with the new endpoint, `INITIATING`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, provider)): Path<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    require_azure(&provider)?;
    // Read only now, so that an unknown project is a 404 whatever the body holds.
    let JsonObject(body) = JsonObject::from_request(request, &state).await?;
    let region = parse_create(body)?;
    require_private_networking(&state, &group.id).await?;
    let now = state.now();
    let endpoint = EarPrivateEndpoint {
        id: EarPrivateEndpointId::new_random(),
        group_id: group.id.clone(),
        provider: CloudProvider::Azure,
        region_name: region.clone(),
        status: EarPrivateEndpointStatus::Initiating,
        error_message: None,
        private_endpoint_connection_name: None,
        private_address: None,
        created_at: now,
        updated_at: now,
    };
    match state.store.create_ear_private_endpoint(&endpoint).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            let existing = state.store.list_ear_private_endpoints(&group.id).await?;
            let existing = existing.iter().find(|e| e.region_name == region);
            let which = existing.map(|e| format!(" (id {}, status {})", e.id, e.status)).unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                PRIVATE_ENDPOINT_ALREADY_EXISTS,
                format!(
                    "An Encryption at Rest private endpoint already exists in region {region} for this project{which}. \
                     A project has at most one per region: use the existing one, or delete it and wait until it is gone \
                     before creating another."
                ),
            )
            .with_params([region]));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(group = %group.id, endpoint = %endpoint.id, region = %endpoint.region_name, by = %caller.label, "encryption at rest private endpoint requested");
    Ok((StatusCode::ACCEPTED, Json(endpoint_json(&endpoint))).into_response())
}

/// `GET .../{cloudProvider}/privateEndpoints/{endpointId}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, provider, endpoint_id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let id = endpoint_in_path(&provider, &endpoint_id)?;
    match state.store.get_ear_private_endpoint(&group.id, &id).await {
        Ok(ep) => Ok(ok_json(endpoint_json(&ep))),
        Err(StoreError::NotFound { .. }) => Err(not_found(&endpoint_id, PathProvider::Azure)),
        Err(e) => Err(e.into()),
    }
}

/// `DELETE .../{cloudProvider}/privateEndpoints/{endpointId}`: `204`, the endpoint is then
/// `DELETING` until the background job removes it. Asking again while it is `DELETING` is `204`
/// too.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, provider, endpoint_id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let id = endpoint_in_path(&provider, &endpoint_id)?;
    match state.store.request_ear_private_endpoint_deletion(&group.id, &id, state.now()).await {
        Ok(EarPrivateEndpointDeletion::Requested(ep)) => {
            tracing::info!(group = %group.id, endpoint = %ep.id, region = %ep.region_name, by = %caller.label, "encryption at rest private endpoint deletion requested");
        }
        Ok(EarPrivateEndpointDeletion::AlreadyDeleting(_)) => {}
        Ok(EarPrivateEndpointDeletion::BlockedWhileInitiating(ep)) => {
            // Atlas's exact detail and its nested parameter list, which clients match on.
            return Err(ApiError::bad_request(
                codes::PRIVATE_ENDPOINT_DELETE_BLOCKED,
                format!(
                    "Failed to delete Encryption at Rest Private endpoint with id [{}] during IN_PROGRESS state. \
                     Please try again later.",
                    ep.id
                ),
            )
            .with_params([json!([ep.id.as_str()])]));
        }
        Err(StoreError::NotFound { .. }) => return Err(not_found(&endpoint_id, PathProvider::Azure)),
        Err(e) => return Err(e.into()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// atrest's own `PATCH /api/atrest/v1/groups/{groupId}/encryptionAtRest/AZURE/privateEndpoints/{endpointId}`
/// `{"privateAddress": "IP:PORT" | null}` (Project Owner): records where the data nodes reach the
/// vault through this endpoint. In Atlas the platform creates the Azure private endpoint itself
/// and knows its private IP; atrest creates no Azure resource, so the platform operator who
/// created it records the address (in Azure, the endpoint's private IP and 443; with the
/// emulator, the address `POST /_emulator/private-endpoints` returned). The nodes get it in
/// their configuration (`privateEndpoint`).
pub async fn set_address(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, provider, endpoint_id)): Path<(String, String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let id = endpoint_in_path(&provider, &endpoint_id)?;
    let mut f = Fields::new("", body);
    let raw = f.take_raw("privateAddress");
    for ro in READ_ONLY.iter().chain(["cloudProvider", "regionName"].iter()) {
        f.ignore(ro);
    }
    f.finish()?;
    let address = match raw {
        None => {
            return Err(ApiError::missing_attribute(
                "privateAddress",
                "the IP address and port the data nodes reach the vault at through this endpoint, e.g. 10.0.1.4:443, or null to clear it",
            ));
        }
        Some(Value::Null) => None,
        Some(Value::String(a)) if a.parse::<std::net::SocketAddr>().is_ok() => Some(a),
        Some(other) => {
            return Err(ApiError::invalid_attribute(
                "privateAddress",
                format!(
                    "{} is not IP:PORT: send the endpoint's private IP address and port, e.g. 10.0.1.4:443 (or null to clear it)",
                    crate::error::echo(&other.to_string())
                ),
            ));
        }
    };
    match state.store.set_ear_private_endpoint_address(&group.id, &id, address.as_deref(), state.now()).await {
        Ok(ep) => {
            tracing::info!(group = %group.id, endpoint = %ep.id, address = ?ep.private_address, by = %caller.label, "encryption at rest private endpoint address recorded");
            state.nodes_config_changed();
            let mut v = endpoint_json(&ep);
            v["privateAddress"] = json!(ep.private_address);
            Ok(ok_json(v))
        }
        Err(StoreError::NotFound { .. }) => Err(not_found(&endpoint_id, PathProvider::Azure)),
        Err(e) => Err(e.into()),
    }
}

/// Moves private endpoints forward, for the background job of every replica: `INITIATING` →
/// `PENDING_ACCEPTANCE` (with the connection name the customer approves on the vault), and
/// removes `DELETING` ones. Safe to run on several replicas at once: each change is applied by
/// exactly one of them. Failures are logged and retried at the next call.
pub async fn advance(state: &AppState) {
    if let Err(e) = advance_all(state).await {
        tracing::warn!(error = %e, "could not advance encryption at rest private endpoints; retrying at the next poll");
    }
}

async fn advance_all(state: &AppState) -> Result<(), StoreError> {
    let store = &state.store;
    loop {
        let initiating =
            store.list_ear_private_endpoints_in_status(EarPrivateEndpointStatus::Initiating, BATCH).await?;
        for ep in &initiating {
            let change = EarPrivateEndpointTransition {
                from: EarPrivateEndpointStatus::Initiating,
                to: EarPrivateEndpointStatus::PendingAcceptance,
                error_message: None,
                private_endpoint_connection_name: Some(connection_name(&ep.id)),
            };
            if let Some(moved) =
                store.transition_ear_private_endpoint(&ep.group_id, &ep.id, &change, state.now()).await?
            {
                tracing::info!(
                    group = %moved.group_id,
                    endpoint = %moved.id,
                    region = %moved.region_name,
                    connection = moved.private_endpoint_connection_name.as_deref().unwrap_or_default(),
                    "encryption at rest private endpoint waits for the customer to approve its connection on the vault"
                );
            }
        }
        if initiating.len() < BATCH as usize {
            break;
        }
    }
    loop {
        let deleting = store.list_ear_private_endpoints_in_status(EarPrivateEndpointStatus::Deleting, BATCH).await?;
        for ep in &deleting {
            if store.remove_deleting_ear_private_endpoint(&ep.group_id, &ep.id).await? {
                tracing::info!(group = %ep.group_id, endpoint = %ep.id, region = %ep.region_name, "encryption at rest private endpoint deleted");
            }
        }
        if deleting.len() < BATCH as usize {
            break;
        }
    }
    Ok(())
}

/// Records that the data nodes reach the vault over endpoint `id` of `group`:
/// `PENDING_ACCEPTANCE` → `ACTIVE` (clearing any error message). Returns whether this call made
/// the change; `false` if the endpoint is not (or no longer) `PENDING_ACCEPTANCE`, or is gone.
pub async fn mark_active(state: &AppState, group: &GroupId, id: &EarPrivateEndpointId) -> Result<bool, StoreError> {
    let change = EarPrivateEndpointTransition {
        from: EarPrivateEndpointStatus::PendingAcceptance,
        to: EarPrivateEndpointStatus::Active,
        error_message: None,
        private_endpoint_connection_name: None,
    };
    let moved = state.store.transition_ear_private_endpoint(group, id, &change, state.now()).await?;
    if let Some(ep) = &moved {
        tracing::info!(group = %ep.group_id, endpoint = %ep.id, region = %ep.region_name, "encryption at rest private endpoint is active");
    }
    Ok(moved.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_region_list_is_the_specs_56_without_duplicates() {
        let unique: std::collections::BTreeSet<_> = AZURE_REGIONS.iter().collect();
        assert_eq!(unique.len(), 56);
    }

    #[test]
    fn create_bodies_are_read_strictly() {
        assert_eq!(parse_create(body(json!({"regionName": "US_EAST_2"}))).unwrap(), "US_EAST_2");
        // Terraform sends cloudProvider too; read-only attributes sent back are ignored.
        assert_eq!(
            parse_create(body(json!({"cloudProvider": "AZURE", "regionName": "UK_SOUTH", "status": "ACTIVE"})))
                .unwrap(),
            "UK_SOUTH"
        );
        let code = |v: Value| parse_create(body(v)).unwrap_err().error_code;
        assert_eq!(code(json!({})), codes::MISSING_ATTRIBUTE);
        assert_eq!(code(json!({"regionName": "US_EAST_1"})), codes::INVALID_ENUM_VALUE);
        assert_eq!(code(json!({"regionName": 5})), codes::INVALID_JSON_ATTRIBUTE);
        assert_eq!(code(json!({"regionName": "US_EAST_2", "vault": "x"})), codes::INVALID_ATTRIBUTE);
        assert_eq!(code(json!({"regionName": "US_EAST_2", "cloudProvider": "AWS"})), codes::INVALID_ATTRIBUTE);
        assert_eq!(code(json!({"regionName": "US_EAST_2", "cloudProvider": "GCP"})), codes::INVALID_ENUM_VALUE);
    }

    #[test]
    fn only_azure_endpoints_are_created_or_found() {
        assert!(require_azure("AZURE").is_ok());
        assert_eq!(require_azure("AWS").unwrap_err().error_code, codes::CLOUD_PROVIDER_NOT_SUPPORTED);
        assert_eq!(require_azure("azure").unwrap_err().error_code, codes::INVALID_ENUM_VALUE);
        let id = "5f1d7a2b9c3e4d5f6a7b8c9d";
        assert_eq!(endpoint_in_path("AZURE", id).unwrap().as_str(), id);
        assert_eq!(endpoint_in_path("AWS", id).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(endpoint_in_path("AZURE", "nope").unwrap_err().error_code, PRIVATE_ENDPOINT_NOT_FOUND);
        assert_eq!(endpoint_in_path("GCP", id).unwrap_err().error_code, codes::INVALID_ENUM_VALUE);
    }

    #[test]
    fn optional_attributes_appear_only_when_set() {
        let mut ep = EarPrivateEndpoint {
            id: EarPrivateEndpointId::parse("5f1d7a2b9c3e4d5f6a7b8c9d").unwrap(),
            group_id: GroupId::new_random(),
            provider: CloudProvider::Azure,
            region_name: "US_EAST_2".into(),
            status: EarPrivateEndpointStatus::Initiating,
            error_message: None,
            private_endpoint_connection_name: None,
            private_address: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            endpoint_json(&ep),
            json!({"id": "5f1d7a2b9c3e4d5f6a7b8c9d", "cloudProvider": "AZURE", "regionName": "US_EAST_2", "status": "INITIATING"})
        );
        ep.private_endpoint_connection_name = Some(connection_name(&ep.id));
        ep.error_message = Some("approve it".into());
        let v = endpoint_json(&ep);
        assert_eq!(v["privateEndpointConnectionName"], "atrest-5f1d7a2b9c3e4d5f6a7b8c9d");
        assert_eq!(v["errorMessage"], "approve it");
    }
}
