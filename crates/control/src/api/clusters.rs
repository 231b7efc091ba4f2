//! `POST/GET /api/atlas/v2/groups/{groupId}/clusters` and `GET/PATCH/DELETE
//! .../clusters/{clusterName}`: the Atlas `ClusterDescription20240805` body (see docs/clusters.md).
//!
//! atrest acts on `name`, `clusterType`, `encryptionAtRestProvider` (`AZURE` | `NONE`), the node
//! count (the sum of `replicationSpecs[].regionConfigs[].electableSpecs.nodeCount`, default 3)
//! and `paused`; it serves the read-only `id`, `groupId`, `createDate` and `stateName`. Every
//! other top-level attribute of the schema is stored and echoed exactly as sent, whatever it
//! nests; a top-level attribute the schema does not have is refused.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value};

use atrest_store::{Cluster, ClusterDeletion, ClusterEarProvider, ClusterId, ClusterUpdate, Group, StoreError};

use crate::api::body::JsonObject;
use crate::api::params::Path;
use crate::api::{atlas_time, ok_json};
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult, codes, echo};
use crate::state::AppState;

/// Attributes atrest computes; accepted in a body (Terraform echoes them) and ignored.
const READ_ONLY: &[&str] = &[
    "configServerType",
    "connectionStrings",
    "createDate",
    "effectiveReplicationSpecs",
    "featureCompatibilityVersion",
    "featureCompatibilityVersionExpirationDate",
    "groupId",
    "id",
    "internalClusterRole",
    "links",
    "mongoDBVersion",
    "stateName",
];

/// The other attributes of `ClusterDescription20240805`, with the JSON type each must have.
const ECHOED: &[(&str, Kind)] = &[
    ("acceptDataRisksAndForceReplicaSetReconfig", Kind::String),
    ("adaptiveCapacity", Kind::String),
    ("advancedConfiguration", Kind::Object),
    ("backupEnabled", Kind::Bool),
    ("biConnector", Kind::Object),
    ("configServerManagementMode", Kind::String),
    ("diskWarmingMode", Kind::String),
    ("globalClusterSelfManagedSharding", Kind::Bool),
    ("labels", Kind::Array),
    ("mongoDBEmployeeAccessGrant", Kind::Object),
    ("mongoDBMajorVersion", Kind::String),
    ("pitEnabled", Kind::Bool),
    ("redactClientLogData", Kind::Bool),
    ("replicaSetScalingStrategy", Kind::String),
    ("retainBackups", Kind::Bool),
    ("rootCertType", Kind::String),
    ("tags", Kind::Array),
    ("terminationProtectionEnabled", Kind::Bool),
    ("useAwsTimeBasedSnapshotCopyForFastInitialSync", Kind::Bool),
    ("versionReleaseSystem", Kind::String),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    String,
    Object,
    Array,
}

impl Kind {
    fn matches(self, v: &Value) -> bool {
        match self {
            Kind::Bool => v.is_boolean(),
            Kind::String => v.is_string(),
            Kind::Object => v.is_object(),
            Kind::Array => v.is_array(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::String => "a string",
            Kind::Object => "an object",
            Kind::Array => "an array",
        }
    }
}

fn wrong_type(path: &str, expected: &str) -> ApiError {
    ApiError::bad_request(
        codes::INVALID_JSON_ATTRIBUTE,
        format!("Received JSON for the {path} attribute does not match expected format: expected {expected}."),
    )
    .with_params([path])
    .with_field(path, format!("expected {expected}"))
}

/// The acted-on attributes of a body, after checking every attribute's type.
struct Parsed {
    /// The body to store: every attribute sent except the read-only ones.
    stored: Map<String, Value>,
    name: Option<String>,
    provider: Option<ClusterEarProvider>,
    node_count: Option<u32>,
    paused: Option<bool>,
}

fn parse(body: Map<String, Value>) -> ApiResult<Parsed> {
    let mut p = Parsed { stored: Map::new(), name: None, provider: None, node_count: None, paused: None };
    for (key, value) in body {
        if READ_ONLY.contains(&key.as_str()) {
            continue;
        }
        if value.is_null() {
            p.stored.insert(key, value);
            continue;
        }
        match key.as_str() {
            "name" => p.name = Some(value.as_str().ok_or_else(|| wrong_type("name", "a string"))?.to_owned()),
            "clusterType" => {
                let t = value.as_str().ok_or_else(|| wrong_type("clusterType", "a string"))?;
                if !["REPLICASET", "SHARDED", "GEOSHARDED"].contains(&t) {
                    return Err(ApiError::bad_request(
                        codes::INVALID_ENUM_VALUE,
                        format!("An invalid enumeration value {} was specified for clusterType: send REPLICASET, SHARDED or GEOSHARDED.", echo(t)),
                    )
                    .with_params([t, "clusterType"])
                    .with_field("clusterType", "REPLICASET, SHARDED or GEOSHARDED"));
                }
            }
            "encryptionAtRestProvider" => {
                let v = value.as_str().ok_or_else(|| wrong_type("encryptionAtRestProvider", "a string"))?;
                p.provider = Some(match v {
                    "NONE" => ClusterEarProvider::None,
                    "AZURE" => ClusterEarProvider::Azure,
                    "AWS" | "GCP" => {
                        return Err(ApiError::bad_request(
                            codes::CLOUD_PROVIDER_NOT_SUPPORTED,
                            format!("encryptionAtRestProvider {v} is not offered by atrest: send AZURE or NONE."),
                        )
                        .with_params([v])
                        .with_field("encryptionAtRestProvider", "AZURE or NONE"));
                    }
                    other => {
                        return Err(ApiError::bad_request(
                            codes::INVALID_ENUM_VALUE,
                            format!(
                                "An invalid enumeration value {} was specified for encryptionAtRestProvider: send AZURE or NONE.",
                                echo(other)
                            ),
                        )
                        .with_params([other, "encryptionAtRestProvider"])
                        .with_field("encryptionAtRestProvider", "AZURE or NONE"));
                    }
                });
            }
            "paused" => p.paused = Some(value.as_bool().ok_or_else(|| wrong_type("paused", "a boolean"))?),
            "replicationSpecs" => p.node_count = Some(node_count(&value)?),
            other => match ECHOED.iter().find(|(n, _)| *n == other) {
                Some((_, kind)) if !kind.matches(&value) => return Err(wrong_type(other, kind.name())),
                Some(_) => {}
                None => {
                    return Err(ApiError::bad_request(
                        codes::INVALID_ATTRIBUTE,
                        format!(
                            "Invalid attribute {} specified: ClusterDescription20240805 has no such attribute.",
                            echo(other)
                        ),
                    )
                    .with_params([other])
                    .with_field(other, "unknown attribute"));
                }
            },
        }
        p.stored.insert(key, value);
    }
    Ok(p)
}

/// The sum of `electableSpecs.nodeCount` over every region of every replication spec
/// (a region without it counts 0; a body without any counts the default 3).
fn node_count(specs: &Value) -> ApiResult<u32> {
    let specs = specs.as_array().ok_or_else(|| wrong_type("replicationSpecs", "an array"))?;
    let mut total: u64 = 0;
    let mut any = false;
    for (i, spec) in specs.iter().enumerate() {
        let spec = spec.as_object().ok_or_else(|| wrong_type(&format!("replicationSpecs[{i}]"), "an object"))?;
        let Some(regions) = spec.get("regionConfigs").filter(|v| !v.is_null()) else { continue };
        let regions = regions
            .as_array()
            .ok_or_else(|| wrong_type(&format!("replicationSpecs[{i}].regionConfigs"), "an array"))?;
        for (j, region) in regions.iter().enumerate() {
            let at = format!("replicationSpecs[{i}].regionConfigs[{j}]");
            let region = region.as_object().ok_or_else(|| wrong_type(&at, "an object"))?;
            let Some(electable) = region.get("electableSpecs").filter(|v| !v.is_null()) else { continue };
            let electable =
                electable.as_object().ok_or_else(|| wrong_type(&format!("{at}.electableSpecs"), "an object"))?;
            let Some(n) = electable.get("nodeCount").filter(|v| !v.is_null()) else { continue };
            let n = n
                .as_u64()
                .ok_or_else(|| wrong_type(&format!("{at}.electableSpecs.nodeCount"), "a non-negative integer"))?;
            total = total.saturating_add(n);
            any = true;
        }
    }
    if !any {
        return Ok(3);
    }
    // Atlas: 3, 5 or 7 electable nodes. atrest also accepts 1 (a single-node development cluster).
    match total {
        1 | 3 | 5 | 7 => Ok(total as u32),
        _ => Err(ApiError::bad_request(
            codes::CLUSTER_REPLICATION_FACTOR_INVALID,
            format!(
                "The cluster's replication factor must be either 3, 5, or 7 (or 1 for a single-node development cluster); \
                 replicationSpecs[].regionConfigs[].electableSpecs.nodeCount sums to {total}."
            ),
        )
        .with_field("replicationSpecs", "electableSpecs.nodeCount must sum to 1, 3, 5 or 7")),
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            codes::CLUSTER_NAME_INVALID,
            format!(
                "The cluster name {} is invalid. The name can only contain ASCII letters, numbers, and hyphens \
                 (1 to 64 characters, not starting or ending with a hyphen).",
                echo(name)
            ),
        )
        .with_params([name])
        .with_field("name", "1..64 of ASCII letters, digits and hyphens"))
    }
}

/// The `ClusterDescription20240805` body of a stored cluster.
pub fn cluster_json(c: &Cluster) -> Value {
    let mut v: Map<String, Value> = serde_json::from_str(&c.body).unwrap_or_default();
    v.insert("id".into(), c.id.as_str().into());
    v.insert("groupId".into(), c.group_id.as_str().into());
    v.insert("name".into(), c.name.clone().into());
    v.insert("createDate".into(), atlas_time(c.create_date).into());
    v.insert("stateName".into(), c.state_name.clone().into());
    v.insert("paused".into(), c.paused.into());
    v.insert("encryptionAtRestProvider".into(), c.encryption_at_rest_provider.as_str().into());
    v.entry("clusterType").or_insert_with(|| "REPLICASET".into());
    Value::Object(v)
}

fn not_found(group: &Group, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::CLUSTER_NOT_FOUND,
        format!("No cluster named {} exists in group {}.", echo(name), group.id),
    )
    .with_params([name, group.id.as_str()])
}

/// Loads cluster `name` of `group`: `404 CLUSTER_NOT_FOUND` if absent.
pub async fn load(state: &AppState, group: &Group, name: &str) -> ApiResult<Cluster> {
    match state.store.get_cluster(&group.id, name).await {
        Ok(c) => Ok(c),
        Err(StoreError::NotFound { .. }) => Err(not_found(group, name)),
        Err(e) => Err(e.into()),
    }
}

/// `encryptionAtRestProvider: AZURE` needs the project's Azure Key Vault configuration enabled.
async fn require_project_ear(state: &AppState, group: &Group) -> ApiResult<()> {
    let enabled = state.store.get_ear_config(&group.id).await?.is_some_and(|c| c.azure.enabled);
    if enabled {
        return Ok(());
    }
    Err(ApiError::bad_request(
        codes::ENCRYPTION_AT_REST_NOT_ENABLED,
        format!(
            "Encryption at Rest is not enabled for group {}. Configure the project's Azure Key Vault first (PATCH \
             /api/atlas/v2/groups/{}/encryptionAtRest with azureKeyVault), or create the cluster with \
             encryptionAtRestProvider NONE.",
            group.id, group.id
        ),
    )
    .with_params([group.id.as_str()]))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let clusters = state.store.list_clusters(&group.id).await?;
    let total = clusters.len() as u64;
    let items = clusters.iter().map(cluster_json).collect();
    Ok(ok_json(crate::api::groups::paginated(
        &format!("/api/atlas/v2/groups/{}/clusters", group.id),
        items,
        total,
        true,
    )))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let c = load(&state, &group, &name).await?;
    Ok(ok_json(cluster_json(&c)))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let p = parse(body)?;
    let name = p.name.clone().ok_or_else(|| ApiError::missing_attribute("name", "name the cluster, e.g. Cluster0"))?;
    check_name(&name)?;
    let provider = p.provider.unwrap_or(ClusterEarProvider::None);
    if provider == ClusterEarProvider::Azure {
        require_project_ear(&state, &group).await?;
    }
    let now = state.now();
    let mut stored = p.stored;
    stored.remove("name");
    let cluster = Cluster {
        id: ClusterId::new_random(),
        group_id: group.id.clone(),
        name: name.clone(),
        body: Value::Object(stored).to_string(),
        encryption_at_rest_provider: provider,
        node_count: p.node_count.unwrap_or(3),
        paused: p.paused.unwrap_or(false),
        state_name: "CREATING".into(),
        deleting: false,
        create_date: now,
        updated_at: now,
        version: 1,
    };
    match state.store.create_cluster(&cluster).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::bad_request(
                codes::DUPLICATE_CLUSTER_NAME,
                format!("A cluster named {} is already present in group {}.", echo(&name), group.id),
            )
            .with_params([name.as_str(), group.id.as_str()]));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(group = %group.id, cluster = %cluster.name, by = %caller.label, "cluster created");
    Ok((StatusCode::CREATED, axum::Json(cluster_json(&cluster))).into_response())
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let p = parse(body)?;
    let current = load(&state, &group, &name).await?;
    if let Some(new_name) = p.name.as_deref().filter(|n| *n != current.name) {
        return Err(ApiError::bad_request(
            codes::CLUSTER_CANNOT_CHANGE_NAME,
            format!("Cannot change name of cluster during an update: {} is {}.", echo(new_name), current.name),
        )
        .with_field("name", "leave it out or send the current name"));
    }
    if current.deleting {
        return Err(ApiError::bad_request(
            codes::CLUSTER_ALREADY_REQUESTED_DELETION,
            format!("The cluster {} has already been requested for deletion.", current.name),
        )
        .with_params([current.name.as_str()]));
    }
    let provider = p.provider.unwrap_or(current.encryption_at_rest_provider);
    match (current.encryption_at_rest_provider, provider) {
        (ClusterEarProvider::Azure, ClusterEarProvider::None) => {
            return Err(ApiError::bad_request(
                codes::ENCRYPTION_AT_REST_PROVIDER_CHANGE_NOT_SUPPORTED,
                format!(
                    "Cluster {} keeps its data under the project's Azure Key Vault key: atrest does not re-key a \
                     cluster's data under a platform-held key, so encryptionAtRestProvider cannot change from AZURE \
                     to NONE. Create a new cluster with encryptionAtRestProvider NONE and move the data instead.",
                    current.name
                ),
            )
            .with_field("encryptionAtRestProvider", "AZURE cannot become NONE"));
        }
        (ClusterEarProvider::None, ClusterEarProvider::Azure) => require_project_ear(&state, &group).await?,
        _ => {}
    }
    let mut stored: Map<String, Value> = serde_json::from_str(&current.body).unwrap_or_default();
    for (k, v) in p.stored {
        if k != "name" {
            stored.insert(k, v);
        }
    }
    let state_name = if current.state_name == "CREATING" { "CREATING" } else { "UPDATING" };
    let update = ClusterUpdate {
        body: Value::Object(stored).to_string(),
        encryption_at_rest_provider: provider,
        node_count: p.node_count.unwrap_or(current.node_count),
        paused: p.paused.unwrap_or(current.paused),
        state_name: state_name.into(),
        now: state.now(),
    };
    let updated = state.store.update_cluster(&current.id, current.version, &update).await?;
    state.nodes_config_changed();
    tracing::info!(group = %group.id, cluster = %updated.name, by = %caller.label, "cluster updated");
    Ok(ok_json(cluster_json(&updated)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Write).await?;
    let current = load(&state, &group, &name).await?;
    match state.store.request_cluster_deletion(&current.id, state.now()).await {
        Ok(ClusterDeletion::Removed) | Ok(ClusterDeletion::Deleting(_)) => {}
        Err(StoreError::NotFound { .. }) => return Err(not_found(&group, &name)),
        Err(e) => return Err(e.into()),
    }
    state.nodes_config_changed();
    tracing::info!(group = %group.id, cluster = %name, by = %caller.label, "cluster deletion requested");
    Ok(StatusCode::ACCEPTED.into_response())
}
