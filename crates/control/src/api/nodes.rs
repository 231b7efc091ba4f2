//! The data nodes' API (docs/design/node-api-draft.md): the operator endpoints under
//! `/api/atrest/v1/groups/{groupId}/clusters/{clusterName}/` (join tokens, nodes, data
//! credentials; Atlas authentication) and the node endpoints under `/api/atrest/v1/node/`
//! (join, configuration long-poll, Key Vault tokens, status reports; node credential).
//!
//! Every credential here is `atr?_<id>_<43 chars of base64url>` (32 bytes from the OS CSPRNG)
//! and is stored as its SHA-256 only; each is shown once, in the response that creates it.

use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::StatusCode;
use serde_json::{Value, json};
use time::Duration as TimeDuration;

use atrest_store::{
    AzureCredentials, Cluster, ClusterEarProvider, DataCredential, DataCredentialId, EarConfigWrite,
    EarPrivateEndpoint, EarPrivateEndpointStatus, EarPrivateEndpointTransition, GroupId, JoinOutcome, JoinToken,
    JoinTokenId, NewNode, Node, NodeId, NodeReport, StoreError, StoredEarConfig, ValidationState, ValidationStatus,
};

use crate::api::body::{Fields, JsonObject};
use crate::api::params::Path;
use crate::api::{atlas_time, ok_json};
use crate::auth::secrets::{random_bytes, sha256};
use crate::auth::{Access, Caller};
use crate::ear::{self, event_types};
use crate::error::{ApiError, ApiResult, codes, echo};
use crate::state::AppState;
use crate::validate::Credential;

const JOIN_PREFIX: &str = "atrj_";
const NODE_PREFIX: &str = "atrn_";
const DATA_PREFIX: &str = "atrd_";
const STATES: [&str; 4] = ["LOCKED", "SERVING", "DEGRADED", "SHUT_DOWN"];

fn new_secret(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}_{}", B64.encode(random_bytes::<32>()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Operator endpoints
// ---------------------------------------------------------------------------------------------

async fn cluster_of(
    state: &AppState,
    caller: &Caller,
    group_id: &str,
    name: &str,
    access: Access,
) -> ApiResult<Cluster> {
    let group = caller.group(state, group_id, access).await?;
    crate::api::clusters::load(state, &group, name).await
}

/// `POST .../clusters/{clusterName}/joinTokens` (Project Owner): `{}` or `{"ttlSecs": N}`.
pub async fn create_join_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let cluster = cluster_of(&state, &caller, &group_id, &name, Access::Write).await?;
    let mut f = Fields::new("", body);
    let ttl = match f.take_raw("ttlSecs") {
        None | Some(Value::Null) => 3600,
        Some(v) => match v.as_u64() {
            Some(n @ 60..=86400) => n,
            _ => {
                return Err(ApiError::invalid_attribute(
                    "ttlSecs",
                    format!("{} is not a lifetime from 60 to 86400 seconds", echo(&v.to_string())),
                ));
            }
        },
    };
    f.finish()?;
    let (token, expires_at) = issue_join_token(&state, &cluster, ttl, &caller.label).await?;
    Ok((
        StatusCode::CREATED,
        ok_json(json!({
            "token": token,
            "expiresAt": atlas_time(expires_at),
            "groupId": cluster.group_id.as_str(),
            "clusterName": cluster.name,
        })),
    )
        .into_response())
}

/// Makes a join token for `cluster` living `ttl_secs`; returns it (shown once) and its expiry.
/// Shared by the API and `atrest admin create-join-token`.
pub async fn issue_join_token(
    state: &AppState,
    cluster: &Cluster,
    ttl_secs: u64,
    created_by: &str,
) -> ApiResult<(String, time::OffsetDateTime)> {
    if cluster.deleting {
        return Err(deleting(cluster));
    }
    let id = JoinTokenId::new_random();
    let token = new_secret(JOIN_PREFIX, id.as_str());
    let now = state.now();
    let expires_at = now + TimeDuration::seconds(ttl_secs as i64);
    state
        .store
        .create_join_token(&JoinToken {
            id,
            token_sha256: sha256(token.as_bytes()),
            group_id: cluster.group_id.clone(),
            cluster_id: cluster.id.clone(),
            created_by: created_by.to_string(),
            created_at: now,
            expires_at,
        })
        .await?;
    Ok((token, expires_at))
}

/// Makes a data credential for `cluster`; returns its id, the credential (shown once) and
/// when it was made. Shared by the API and `atrest admin create-data-credential`.
pub async fn issue_data_credential(
    state: &AppState,
    cluster: &Cluster,
) -> ApiResult<(DataCredentialId, String, time::OffsetDateTime)> {
    let id = DataCredentialId::new_random();
    let credential = new_secret(DATA_PREFIX, id.as_str());
    let now = state.now();
    state
        .store
        .create_data_credential(&DataCredential {
            id: id.clone(),
            cluster_id: cluster.id.clone(),
            credential_sha256: sha256(credential.as_bytes()),
            created_at: now,
        })
        .await?;
    state.nodes_config_changed();
    Ok((id, credential, now))
}

fn deleting(c: &Cluster) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        codes::CLUSTER_DELETING,
        format!("Cluster {} is being deleted: no node can join it. Create a new cluster to add nodes.", c.name),
    )
    .with_params([c.name.as_str()])
}

fn node_json(n: &Node) -> Value {
    let r = n.report.as_ref();
    json!({
        "id": n.id.as_str(),
        "state": r.map(|r| r.state.as_str()).unwrap_or("UNREPORTED"),
        "dataUrl": n.data_url,
        "keyIdentifier": r.and_then(|r| r.key_identifier.clone()),
        "keyVersion": r.and_then(|r| r.key_version.clone()),
        "authMode": r.and_then(|r| r.auth_mode.clone()),
        "via": r.and_then(|r| r.via.clone()),
        "masterKeyGeneration": r.and_then(|r| r.master_key_generation),
        "lastCheckAt": r.and_then(|r| r.last_check_at).map(atlas_time),
        "lastReportAt": r.map(|r| atlas_time(r.reported_at)),
        "joinedAt": atlas_time(n.joined_at),
        "lastError": r.and_then(|r| r.last_error.as_deref()).and_then(|e| serde_json::from_str::<Value>(e).ok()),
    })
}

/// `GET .../clusters/{clusterName}/nodes` (Project Read Only).
pub async fn list_nodes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let cluster = cluster_of(&state, &caller, &group_id, &name, Access::Read).await?;
    let nodes = state.store.list_nodes(&cluster.id).await?;
    let results: Vec<Value> = nodes.iter().filter(|n| n.revoked_at.is_none()).map(node_json).collect();
    Ok(ok_json(json!({"totalCount": results.len(), "results": results})))
}

fn node_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, codes::NODE_NOT_FOUND, format!("No active node {} in this cluster.", echo(id)))
        .with_params([id])
}

/// `DELETE .../clusters/{clusterName}/nodes/{nodeId}` (Project Owner): revokes at once.
pub async fn revoke_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name, node_id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let cluster = cluster_of(&state, &caller, &group_id, &name, Access::Write).await?;
    let id = NodeId::parse(&node_id).map_err(|_| node_not_found(&node_id))?;
    match state.store.revoke_node(&cluster.id, &id, state.now()).await {
        // `true`: it was the last node of a deleting cluster, which is now gone.
        Ok(removed) => {
            if removed {
                tracing::info!(cluster = %cluster.name, "the deleting cluster's last node was revoked: cluster removed");
            }
        }
        Err(StoreError::NotFound { .. }) => return Err(node_not_found(&node_id)),
        Err(e) => return Err(e.into()),
    }
    state.nodes_config_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST .../clusters/{clusterName}/nodes/{nodeId}:rotateMasterKey` (Project Owner): the node
/// makes a new master key and re-seals its data keys on its next configuration read (no page is
/// rewritten). The path segment is matched whole (`{nodeId}:rotateMasterKey`) and split here.
pub async fn node_action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name, segment)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let cluster = cluster_of(&state, &caller, &group_id, &name, Access::Write).await?;
    let Some(node_id) = segment.strip_suffix(":rotateMasterKey") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            codes::RESOURCE_NOT_FOUND,
            format!("No action {}: POST .../nodes/{{nodeId}}:rotateMasterKey is the one there is.", echo(&segment)),
        ));
    };
    let id = NodeId::parse(node_id).map_err(|_| node_not_found(node_id))?;
    match state.store.request_master_key_rotation(&cluster.id, &id).await {
        Ok(node) => Ok(rotation_accepted(&state, &node)),
        Err(StoreError::NotFound { .. }) => Err(node_not_found(node_id)),
        Err(e) => Err(e.into()),
    }
}

/// `POST .../clusters/{clusterName}/dataCredentials` (Project Owner).
pub async fn create_data_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let cluster = cluster_of(&state, &caller, &group_id, &name, Access::Write).await?;
    Fields::new("", body).finish()?;
    let (id, credential, now) = issue_data_credential(&state, &cluster).await?;
    Ok((
        StatusCode::CREATED,
        ok_json(json!({"id": id.as_str(), "credential": credential, "createdAt": atlas_time(now)})),
    )
        .into_response())
}

/// `GET .../clusters/{clusterName}/dataCredentials` (Project Read Only): ids only.
pub async fn list_data_credentials(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let cluster = cluster_of(&state, &caller, &group_id, &name, Access::Read).await?;
    let list = state.store.list_data_credentials(&cluster.id).await?;
    let results: Vec<Value> =
        list.iter().map(|c| json!({"id": c.id.as_str(), "createdAt": atlas_time(c.created_at)})).collect();
    Ok(ok_json(json!({"totalCount": results.len(), "results": results})))
}

/// `DELETE .../clusters/{clusterName}/dataCredentials/{id}` (Project Owner).
pub async fn revoke_data_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, name, id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let cluster = cluster_of(&state, &caller, &group_id, &name, Access::Write).await?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::DATA_CREDENTIAL_NOT_FOUND,
            format!("No data credential {} in this cluster.", echo(&id)),
        )
        .with_params([id.as_str()])
    };
    let cid = DataCredentialId::parse(&id).map_err(|_| not_found())?;
    match state.store.revoke_data_credential(&cluster.id, &cid, state.now()).await {
        Ok(()) => {}
        Err(StoreError::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    }
    state.nodes_config_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// Node endpoints
// ---------------------------------------------------------------------------------------------

/// The node endpoints, outside the Atlas authentication and media-type layers.
pub fn node_routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/atrest/v1/node/join", post(join))
        .route("/api/atrest/v1/node/config", get(config))
        .route("/api/atrest/v1/node/token", post(token))
        .route("/api/atrest/v1/node/status", post(status))
        .route("/api/atrest/v1/node/rotateMasterKey", post(rotate_own_master_key))
}

/// `POST /api/atrest/v1/node/rotateMasterKey` `{}`: the node's own credential asks for what the
/// operator route `.../nodes/{nodeId}:rotateMasterKey` asks (`atrest node rotate-master-key
/// --data-dir DIR`, whether the node runs or not); the node rotates on its next configuration
/// read, or at its next start.
async fn rotate_own_master_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let node = node_of(&state, &headers).await?;
    Fields::new("", body).finish()?;
    match state.store.request_master_key_rotation(&node.cluster_id, &node.id).await {
        Ok(node) => Ok(rotation_accepted(&state, &node)),
        Err(StoreError::NotFound { .. }) => Err(revoked("the node was revoked")),
        Err(e) => Err(e.into()),
    }
}

fn revoked(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        codes::NODE_REVOKED,
        format!("{detail}: this node may not use the node API. Join a fresh data dir with a new join token."),
    )
}

/// The calling node, from `Authorization: Bearer atrn_<nodeId>_<secret>`.
async fn node_of(state: &AppState, headers: &HeaderMap) -> ApiResult<Node> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| revoked("no node credential (Authorization: Bearer atrn_...)"))?;
    let id = presented
        .strip_prefix(NODE_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(id, _)| NodeId::parse(id).ok())
        .ok_or_else(|| revoked("the credential is not a node credential"))?;
    let node = match state.store.get_node(&id).await {
        Ok(n) => n,
        Err(StoreError::NotFound { .. }) => return Err(revoked("unknown node")),
        Err(e) => return Err(e.into()),
    };
    if !constant_time_eq(&node.credential_sha256, &sha256(presented.as_bytes())) {
        return Err(revoked("wrong node credential"));
    }
    if node.revoked_at.is_some() {
        return Err(revoked("the node was revoked"));
    }
    Ok(node)
}

/// `POST /api/atrest/v1/node/join` `{"joinToken", "dataUrl"}`.
async fn join(State(state): State<AppState>, JsonObject(body): JsonObject) -> ApiResult<Response> {
    let mut f = Fields::new("", body);
    let token = f.string("joinToken")?.ok_or_else(|| {
        ApiError::missing_attribute("joinToken", "send the join token from POST .../clusters/{name}/joinTokens")
    })?;
    let data_url = f.string("dataUrl")?.unwrap_or_default();
    f.finish()?;
    if !(data_url.starts_with("http://") || data_url.starts_with("https://")) || data_url.len() > 2048 {
        return Err(ApiError::invalid_attribute(
            "dataUrl",
            "send the node's data API URL (http://host:port or https://...)",
        ));
    }
    let invalid = |why: String| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_JOIN_TOKEN,
            format!(
                "{why}. Make a new one: atrest admin create-join-token --group <groupId> --cluster <name>, or POST /api/atrest/v1/groups/{{groupId}}/clusters/{{name}}/joinTokens"
            ),
        )
    };
    if !token.starts_with(JOIN_PREFIX) {
        return Err(invalid("this is not a join token (it starts with atrj_)".into()));
    }
    let id = NodeId::new_random();
    let credential = new_secret(NODE_PREFIX, id.as_str());
    let node = NewNode { id: id.clone(), credential_sha256: sha256(credential.as_bytes()), data_url };
    match state.store.join_cluster(&sha256(token.as_bytes()), &node, state.now()).await? {
        JoinOutcome::Joined { node, cluster } => {
            tracing::info!(node = %node.id, cluster = %cluster.name, "a data node joined");
            Ok((
                StatusCode::CREATED,
                ok_json(json!({
                    "nodeId": node.id.as_str(),
                    "nodeCredential": credential,
                    "groupId": cluster.group_id.as_str(),
                    "clusterName": cluster.name,
                    "clusterId": cluster.id.as_str(),
                })),
            )
                .into_response())
        }
        JoinOutcome::UnknownToken => Err(invalid("the join token is unknown".into())),
        JoinOutcome::UsedToken(at) => Err(invalid(format!("the join token was used at {}", atlas_time(at)))),
        JoinOutcome::ExpiredToken(at) => Err(invalid(format!("the join token expired at {}", atlas_time(at)))),
        JoinOutcome::ClusterDeleting => Err(invalid("the cluster is being deleted".into())),
    }
}

/// The node's configuration and its ETag (a hash of the body).
async fn node_config(state: &AppState, node: &Node) -> ApiResult<(Value, String)> {
    let cluster = state.store.get_cluster_by_id(&node.cluster_id).await?;
    let stored = state.store.get_ear_config(&cluster.group_id).await?;
    let ear = match &stored {
        Some(s) if s.azure.enabled => {
            let (mode, tenant) = match &s.azure.credentials {
                AzureCredentials::Secretless { role_id } => {
                    let role = state.store.get_cloud_provider_access_role(&cluster.group_id, role_id).await?;
                    ("SERVICE_PRINCIPAL", role.tenant_id)
                }
                AzureCredentials::Static { tenant_id, .. } => ("STATIC", tenant_id.clone()),
            };
            json!({
                "enabled": true,
                "authMode": mode,
                "tenantId": tenant,
                "keyIdentifier": s.azure.key_identifier,
                "currentKeyVersion": current_key_version(s),
                "keyVaultName": s.azure.key_vault_name,
                "azureEnvironment": s.azure.azure_environment.clone().unwrap_or_else(|| "AZURE".into()),
                "requirePrivateNetworking": s.azure.require_private_networking,
                "privateEndpoint": private_endpoint_json(state, &cluster.group_id, s).await?,
                // A static → roleId migration under private networking: STATIC stays in force
                // while the nodes validate the role (docs/design/node-api-draft.md).
                "pendingAuthMode": s.azure.pending_role_id.as_ref().map(|_| "SERVICE_PRINCIPAL"),
                "keyBinding": state.config.validation.require_key_binding.then(|| json!({
                    "tag": state.config.validation.key_binding_tag,
                    "value": cluster.group_id.as_str(),
                })),
            })
        }
        _ => json!({"enabled": false}),
    };
    let creds = state.store.list_data_credentials(&cluster.id).await?;
    let body = json!({
        "nodeId": node.id.as_str(),
        "groupId": cluster.group_id.as_str(),
        "clusterName": cluster.name,
        "clusterId": cluster.id.as_str(),
        "cluster": {
            "paused": cluster.paused,
            "deleting": cluster.deleting,
            "encryptionAtRestProvider": cluster.encryption_at_rest_provider.as_str(),
        },
        "encryptionAtRest": ear,
        "checkIntervalSecs": state.config.validation.node_check_interval_secs,
        "denialGraceSecs": state.config.validation.node_denial_grace_secs,
        "checkNonce": node.check_nonce,
        "masterKeyRotationNonce": node.master_key_rotation_nonce,
        "dataCredentials": creds.iter().map(|c| json!({"id": c.id.as_str(), "sha256": hex::encode(c.credential_sha256)})).collect::<Vec<_>>(),
    });
    let etag = format!("\"{}\"", hex::encode(&sha256(body.to_string().as_bytes())[..16]));
    Ok((body, etag))
}

/// The version of the configured key that the last successful validation used (an unversioned
/// identifier resolved to its current version), if it is of the configured key: nodes re-wrap to
/// it without asking Key Vault, and a new one changes the configuration's ETag.
fn current_key_version(s: &atrest_store::StoredEarConfig) -> Option<String> {
    let configured: atrest_domain::KeyIdentifier = s.azure.key_identifier.as_deref()?.parse().ok()?;
    let used: atrest_domain::KeyIdentifier = s.status.key_version_in_use.as_deref()?.parse().ok()?;
    (used.vault() == configured.vault() && used.name() == configured.name())
        .then(|| used.version().map(|v| v.to_string()))
        .flatten()
}

#[derive(serde::Deserialize)]
struct ConfigQuery {
    #[serde(rename = "waitSecs")]
    wait_secs: Option<String>,
}

/// `GET /api/atrest/v1/node/config[?waitSecs=N]` with optional `If-None-Match`: held until
/// the configuration changes (200) or the wait ends (304). A change made through this replica
/// wakes the wait at once; one made through another replica is seen by the once-a-second
/// re-read.
async fn config(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ConfigQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let node = node_of(&state, &headers).await?;
    let Query(q) = query.map_err(|e| ApiError::invalid_attribute("query", e.to_string()))?;
    let wait = match q.wait_secs.as_deref() {
        None => 30,
        Some(w) => match w.parse::<u64>() {
            Ok(n @ 0..=60) => n,
            _ => return Err(ApiError::invalid_attribute("waitSecs", format!("{} is not 0 to 60 seconds", echo(w)))),
        },
    };
    let wanted = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut changes = state.nodes_config.subscribe();
    let mut node = node;
    loop {
        let (body, etag) = node_config(&state, &node).await?;
        if wanted.as_deref() != Some(etag.as_str()) {
            let mut resp = ok_json(body);
            resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex etag"));
            return Ok(resp);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex etag"));
            return Ok(resp);
        }
        let tick = (deadline - now).min(Duration::from_secs(1));
        let _ = tokio::time::timeout(tick, changes.changed()).await;
        // Revoked meanwhile: say so now rather than at the next poll.
        node = node_of(&state, &headers).await?;
    }
}

/// `POST /api/atrest/v1/node/token` `{}` or `{"authMode": "STATIC" | "SERVICE_PRINCIPAL"}`,
/// optionally with `"refusedTokenSha256"`: the SHA-256 (hex) of the token Key Vault just refused
/// the node (401). If that is the cached token it is dropped and Entra is asked again, so a
/// token Key Vault no longer accepts is not handed out until it expires by our clock, and
/// Entra's answer (a fresh token, or its refusal: the service principal deleted, ...) reaches
/// the node. Only a node that holds the cached token can name it, and N nodes naming the same
/// one cost one Entra request.
async fn token(State(state): State<AppState>, headers: HeaderMap, JsonObject(body): JsonObject) -> ApiResult<Response> {
    let node = node_of(&state, &headers).await?;
    let mut f = Fields::new("", body);
    let mode = f.string("authMode")?;
    let refused = match f.string("refusedTokenSha256")? {
        None => None,
        Some(h) => Some(hex::decode(&h).ok().filter(|d| d.len() == 32).ok_or_else(|| {
            ApiError::invalid_attribute(
                "refusedTokenSha256",
                format!("{} is not a SHA-256 in hex (64 characters)", echo(&h)),
            )
        })?),
    };
    f.finish()?;
    if let Some(m) = &mode
        && m != "STATIC"
        && m != "SERVICE_PRINCIPAL"
    {
        return Err(ApiError::invalid_attribute("authMode", format!("{} is not STATIC or SERVICE_PRINCIPAL", echo(m))));
    }
    let cluster = state.store.get_cluster_by_id(&node.cluster_id).await?;
    let stored = state.store.get_ear_config(&cluster.group_id).await?.filter(|s| s.azure.enabled).ok_or_else(|| {
        ApiError::bad_request(
            codes::ENCRYPTION_AT_REST_NOT_ENABLED,
            "The project's Encryption at Rest is not enabled: there is no key to get a token for.",
        )
    })?;
    let mut config = stored.azure.clone();
    // While a migration waits for the nodes, they validate with the role and keep serving with
    // the static credentials: both modes get tokens until the migration completes.
    if mode.as_deref() == Some("SERVICE_PRINCIPAL")
        && let Some(role_id) = config.pending_role_id.take()
    {
        config.credentials = AzureCredentials::Secretless { role_id };
    }
    let target = ear::target(&state, &cluster.group_id, &config, None).await?;
    let current = match target.credential {
        Credential::Secretless { .. } => "SERVICE_PRINCIPAL",
        Credential::Static { .. } => "STATIC",
    };
    if mode.as_deref().is_some_and(|m| m != current) {
        return Err(ApiError::bad_request(
            codes::INVALID_ATTRIBUTE,
            format!("The project now uses {current}; ask for a token without authMode or with authMode {current}."),
        )
        .with_params(["authMode"]));
    }
    let client = match &target.credential {
        Credential::Secretless { .. } => state.platform.secretless()?.clone(),
        // A fresh cache per request (AppState::static_client): nothing cached to drop.
        Credential::Static { client_id, secret } => state.platform.static_client(*client_id, secret.clone()),
    };
    if let Some(digest) = &refused
        && client.tokens().drop_refused_key_vault_token(target.environment, &target.tenant_id, digest)
    {
        tracing::info!(node = %node.id, tenant = %target.tenant_id, "Key Vault refused the cached token a node held: dropped it, asking Entra again");
    }
    match client.tokens().key_vault_token(target.environment, &target.tenant_id).await {
        Ok(t) => Ok(ok_json(json!({
            "accessToken": t.expose_secret(),
            "expiresIn": t.expires_in().as_secs().max(1),
            "tenantId": target.tenant_id.to_string(),
            "authMode": current,
        }))),
        Err(e) if e.kind().is_transient() => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            codes::AZURE_TOKEN_UNAVAILABLE,
            format!(
                "Entra ID did not answer for tenant {}: {e}. The node keeps serving and asks again.",
                target.tenant_id
            ),
        )),
        Err(e) => {
            let fix = e.remediation().map(|r| format!(" Fix: {r}")).unwrap_or_default();
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                codes::AZURE_TOKEN_DENIED,
                format!("Entra ID refused a Key Vault token in tenant {}: {e}.{fix}", target.tenant_id),
            )
            // The node takes the fix from the detail, after " Fix: " (parameters are shortened).
            .with_params([e.code().unwrap_or("").to_string()]))
        }
    }
}

/// `POST /api/atrest/v1/node/status`: the node's report; the cluster's `stateName` and the
/// events follow from it in the same transaction.
async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let node = node_of(&state, &headers).await?;
    let mut f = Fields::new("", body);
    let st = f
        .string("state")?
        .ok_or_else(|| ApiError::missing_attribute("state", "send LOCKED, SERVING, DEGRADED or SHUT_DOWN"))?;
    if !STATES.contains(&st.as_str()) {
        return Err(ApiError::invalid_attribute(
            "state",
            format!("{} is not LOCKED, SERVING, DEGRADED or SHUT_DOWN", echo(&st)),
        ));
    }
    let key_identifier = f.string("keyIdentifier")?;
    let key_version = f.string("keyVersion")?;
    let auth_mode = f.string("authMode")?;
    let generation = match f.take_raw("masterKeyGeneration") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| ApiError::invalid_attribute("masterKeyGeneration", "send a number"))?),
    };
    let last_check_at = match f.string("lastCheckAt")? {
        None => None,
        Some(t) => Some(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::invalid_attribute("lastCheckAt", "send an RFC 3339 time"))?,
        ),
    };
    let config_etag = f.string("configEtag")?;
    let via = f.string("via")?;
    let last_error = match f.take_raw("lastError") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) if v.to_string().len() <= 8192 => Some(v.to_string()),
        Some(_) => {
            return Err(ApiError::invalid_attribute(
                "lastError",
                "send null or an object {kind, azureCode, message, fix} under 8 KiB",
            ));
        }
    };
    f.finish()?;
    let now = state.now();
    let report = NodeReport {
        state: st.clone(),
        key_identifier,
        key_version,
        auth_mode,
        master_key_generation: generation,
        config_etag,
        via,
        last_error,
        last_check_at,
        reported_at: now,
    };
    let node_id = node.id.clone();
    // The versioned key identifiers the cluster's serving nodes use, for the key rotation alert.
    let serving_version = |r: &NodeReport| match (&r.key_identifier, &r.key_version) {
        (Some(k), Some(v)) if matches!(r.state.as_str(), "SERVING" | "DEGRADED") => {
            Some(format!("{}/{v}", k.trim_end_matches('/')))
        }
        _ => None,
    };
    let mut in_use = Vec::new();
    let mut transitioned = false;
    let result = state
        .store
        .record_node_report(&node.id, &report, |cluster, before, nodes| {
            in_use = nodes
                .iter()
                .filter(|n| n.revoked_at.is_none() && n.id != node_id)
                .filter_map(|n| n.report.as_ref().and_then(serving_version))
                .chain(serving_version(&report))
                .collect();
            let state_name = derive_state(cluster, nodes);
            let was = before.map(|r| r.state.as_str());
            let event = transition_event(&st, was);
            // A shutdown for a denial, or the recovery from one: the project's validity changes.
            transitioned = event
                .is_some_and(|(t, _)| t == event_types::CONFIG_NO_LONGER_VALID || t == event_types::CONFIG_IS_VALID);
            let events = event.map(|(type_name, detail)| {
                let payload = json!({"clusterName": cluster.name, "nodeId": node_id.as_str(), "detail": detail});
                ear::event(&cluster.group_id, type_name, payload, now)
            });
            (state_name, events.into_iter().collect())
        })
        .await;
    match result {
        Ok((_, cluster)) => {
            if transitioned {
                tokio::spawn(revalidate_on_node_transition(state.clone(), cluster.group_id.clone()));
            }
            if !in_use.is_empty() {
                tokio::spawn(crate::key_age::observe(
                    state.clone(),
                    cluster.group_id.clone(),
                    cluster.name.clone(),
                    in_use,
                ));
            }
            // Under private networking the nodes are the only ones that can see the vault:
            // their reports decide the project's validity, the endpoint's status and the
            // migration. A failure here is logged; the report itself is recorded.
            if let Err(e) = private_networking_verdict(&state, &cluster.group_id).await {
                tracing::warn!(group = %cluster.group_id, error = %e.detail, "could not apply the nodes' reports to the project");
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(StoreError::NotFound { .. }) => Err(revoked("the node was revoked")),
        Err(e) => Err(e.into()),
    }
}

/// When a node shuts down for a denial, or serves again after one, outside private networking:
/// the control plane revalidates the project at once (trigger `node_report`), so the project's
/// `valid` and events follow the nodes within seconds instead of at the next background
/// revalidation. One at a time per project on this replica; reports that arrive meanwhile are
/// covered by the one running. Under private networking the nodes' reports are the verdict
/// ([`private_networking_verdict`]).
async fn revalidate_on_node_transition(state: AppState, group: GroupId) {
    if !state.node_revalidations.lock().insert(group.clone()) {
        return;
    }
    let result = async {
        let Some(stored) = state.store.get_ear_config(&group).await? else { return Ok(()) };
        if stored.azure.enabled && !stored.azure.require_private_networking {
            ear::revalidate(&state, stored, "node_report").await?;
        }
        Ok::<_, ApiError>(())
    }
    .await;
    state.node_revalidations.lock().remove(&group);
    if let Err(e) = result {
        tracing::warn!(group = %group, error = %e.detail, "could not revalidate the project after a node's report; the background revalidation will");
    }
}

/// The event a node's move from `was` to `now` raises, with its detail: a shutdown and its
/// recovery, Key Vault unreachable and reached again.
fn transition_event(now: &str, was: Option<&str>) -> Option<(&'static str, &'static str)> {
    match (was, now) {
        (Some("SHUT_DOWN"), "SHUT_DOWN") | (Some("DEGRADED"), "DEGRADED") => None,
        (_, "SHUT_DOWN") => {
            Some((event_types::CONFIG_NO_LONGER_VALID, "the node was denied access to the key and shut down"))
        }
        (_, "DEGRADED") => {
            Some((event_types::KMS_NETWORK_ACCESS_DENIED, "the node cannot reach Key Vault and keeps serving"))
        }
        (Some("SHUT_DOWN"), "SERVING") => {
            Some((event_types::CONFIG_IS_VALID, "the node has access to the key again and serves"))
        }
        (Some("DEGRADED"), "SERVING") => {
            Some((event_types::KMS_NETWORK_ACCESS_RESTORED, "the node reaches Key Vault again"))
        }
        _ => None,
    }
}

/// The cluster's `stateName` from its nodes (docs/clusters.md, "stateName").
fn derive_state(cluster: &Cluster, nodes: &[Node]) -> String {
    if cluster.deleting {
        return "DELETING".into();
    }
    let states: Vec<&str> = nodes.iter().filter_map(|n| n.report.as_ref().map(|r| r.state.as_str())).collect();
    if states.contains(&"SHUT_DOWN") {
        return "SHUT_DOWN".into();
    }
    let serving = states.iter().filter(|s| matches!(**s, "SERVING" | "DEGRADED")).count();
    if serving >= cluster.node_count as usize {
        "IDLE".into()
    } else if cluster.state_name == "IDLE" || cluster.state_name == "SHUT_DOWN" {
        "UPDATING".into()
    } else {
        cluster.state_name.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Private networking: the nodes validate, the control plane decides from their reports
// ---------------------------------------------------------------------------------------------

/// The EAR private endpoint the nodes of `group` reach the vault through: one the platform
/// recorded an address for, `ACTIVE` first, then `PENDING_ACCEPTANCE` (the customer may have
/// approved it in Azure; only the nodes can tell), then `FAILED` (the nodes were refused; they
/// keep trying, so that an approval given later is seen).
pub async fn chosen_private_endpoint(state: &AppState, group: &GroupId) -> ApiResult<Option<EarPrivateEndpoint>> {
    use EarPrivateEndpointStatus as S;
    let all = state.store.list_ear_private_endpoints(group).await?;
    let rank = |s: S| match s {
        S::Active => Some(0),
        S::PendingAcceptance => Some(1),
        S::Failed => Some(2),
        _ => None,
    };
    Ok(all
        .into_iter()
        .filter(|e| e.private_address.is_some())
        .filter_map(|e| rank(e.status).map(|r| (r, e)))
        .min_by_key(|(r, e)| (*r, e.created_at))
        .map(|(_, e)| e))
}

async fn private_endpoint_json(state: &AppState, group: &GroupId, s: &StoredEarConfig) -> ApiResult<Value> {
    if !s.azure.require_private_networking {
        return Ok(Value::Null);
    }
    Ok(match chosen_private_endpoint(state, group).await? {
        Some(e) => json!({
            "id": e.id.as_str(),
            "region": e.region_name,
            "status": e.status.as_str(),
            "address": e.private_address,
            "connectionName": e.private_endpoint_connection_name,
        }),
        None => Value::Null,
    })
}

/// One node's last report, read for the verdict.
struct Seen<'a> {
    node: &'a Node,
    report: &'a NodeReport,
    error: Option<Value>,
}

impl Seen<'_> {
    fn serving(&self) -> bool {
        matches!(self.report.state.as_str(), "SERVING" | "DEGRADED")
    }
    fn via_private_endpoint(&self) -> bool {
        self.report.via.as_deref() == Some("PRIVATE_ENDPOINT")
    }
    fn error_str(&self, field: &str) -> Option<&str> {
        self.error.as_ref().and_then(|e| e.get(field)).and_then(Value::as_str)
    }
    fn denied(&self) -> bool {
        self.error_str("kind") == Some("DENIED")
    }
    fn error_line(&self) -> String {
        let code = self.error_str("azureCode").map(|c| format!(" ({c})")).unwrap_or_default();
        let fix = self.error_str("fix").map(|f| format!(" Fix: {f}")).unwrap_or_default();
        format!("node {}{code}: {}.{fix}", self.node.id, self.error_str("message").unwrap_or("no detail"))
    }
}

/// What the nodes' reports, under private networking, make of the project: its validity and
/// events, the private endpoint's status, the key binding, and a pending static → roleId
/// migration. Only reports made under the node's current configuration (same ETag) count, so a
/// check that started before a PATCH never decides about the PATCH.
///
/// - Any node denied (by Key Vault, or the key not carrying the binding tag) → `INVALID`, with
///   the node's Azure code and fix; a key-binding refusal carries
///   `ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT`, the code the PATCH path uses.
/// - Every active node serving through the private endpoint → `VALID`, and the endpoint
///   becomes `ACTIVE`; when the nodes reached it and were refused by the vault's network rules
///   (`ForbiddenByConnection`) it becomes `FAILED` with the reason.
/// - A pending migration completes (the static secret is deleted, `roleId` in force) only when
///   every active node has reported serving with `authMode: SERVICE_PRINCIPAL`.
async fn private_networking_verdict(state: &AppState, group: &GroupId) -> ApiResult<()> {
    let Some(stored) = state.store.get_ear_config(group).await? else { return Ok(()) };
    if !stored.azure.enabled || !stored.azure.require_private_networking {
        return Ok(());
    }
    let mut nodes = Vec::new();
    for c in state.store.list_clusters(group).await? {
        if c.encryption_at_rest_provider != ClusterEarProvider::Azure || c.deleting {
            continue;
        }
        nodes.extend(state.store.list_nodes(&c.id).await?.into_iter().filter(|n| n.revoked_at.is_none()));
    }
    if nodes.is_empty() {
        return Ok(());
    }
    let mut current = Vec::new();
    for n in &nodes {
        let Some(report) = n.report.as_ref() else { continue };
        let (_, etag) = node_config(state, n).await?;
        if report.config_etag.as_deref() == Some(etag.as_str()) {
            let error = report.last_error.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok());
            current.push(Seen { node: n, report, error });
        }
    }
    let endpoint = chosen_private_endpoint(state, group).await?;
    if let Some(ep) = &endpoint {
        update_endpoint_status(state, ep, &current).await?;
    }

    let now = state.now();
    let binding_refused = current.iter().find(|s| s.error_str("azureCode") == Some(codes::KEY_NOT_BOUND_TO_PROJECT));
    let denied = current.iter().find(|s| !s.serving() && s.denied());
    let all_serving = current.len() == nodes.len() && current.iter().all(|s| s.serving() && s.via_private_endpoint());
    let status = if let Some(s) = binding_refused.or(denied) {
        let code =
            if binding_refused.is_some() { codes::KEY_NOT_BOUND_TO_PROJECT } else { codes::INVALID_AZURE_CREDENTIALS };
        Some(ValidationStatus {
            valid: false,
            state: ValidationState::Invalid,
            detail: Some(format!(
                "{code}: the data nodes validate over the private endpoint and were refused: {}",
                s.error_line()
            )),
            key_version_in_use: stored.status.key_version_in_use.clone(),
            last_validated_at: Some(now),
        })
    } else if all_serving {
        let version = current.iter().find_map(|s| s.report.key_version.clone());
        let detail = match &stored.azure.pending_role_id {
            Some(_) => {
                let done =
                    current.iter().filter(|s| s.report.auth_mode.as_deref() == Some("SERVICE_PRINCIPAL")).count();
                let waiting: Vec<String> = current
                    .iter()
                    .filter(|s| s.report.auth_mode.as_deref() != Some("SERVICE_PRINCIPAL"))
                    .map(|s| match s.error.as_ref() {
                        Some(_) => s.error_line(),
                        None => format!("node {} has not validated the role yet", s.node.id),
                    })
                    .collect();
                Some(format!(
                    "Valid with the static credentials, validated by {} data node(s) over the private endpoint. Migration \
                     to roleId pending: {done} of {} node(s) validated the role{}",
                    current.len(),
                    nodes.len(),
                    if waiting.is_empty() { ".".to_string() } else { format!("; {}", waiting.join("; ")) }
                ))
            }
            None => Some(format!("Validated by {} data node(s) over the private endpoint.", current.len())),
        };
        Some(ValidationStatus {
            valid: true,
            state: ValidationState::Valid,
            detail,
            key_version_in_use: version.or_else(|| stored.status.key_version_in_use.clone()),
            last_validated_at: Some(now),
        })
    } else {
        None
    };

    // The migration: every node serves with the role → the role is in force, the static
    // secret is deleted in the same write.
    if let Some(role_id) = &stored.azure.pending_role_id
        && all_serving
        && binding_refused.is_none()
        && current.iter().all(|s| s.report.auth_mode.as_deref() == Some("SERVICE_PRINCIPAL"))
    {
        let mut azure = stored.azure.clone();
        azure.credentials = AzureCredentials::Secretless { role_id: role_id.clone() };
        azure.pending_role_id = None;
        let status = status.clone().expect("all serving gives a status");
        let mut events = vec![ear::event(
            group,
            event_types::CONFIGURATION_UPDATED,
            json!({
                "azureKeyVault": {
                    "keyIdentifier": azure.key_identifier,
                    "keyVersionInUse": status.key_version_in_use,
                    "credentialMode": "SECRETLESS",
                    "migratedFromStaticCredentials": true,
                    "requirePrivateNetworking": true,
                },
                "by": "data nodes",
                "detail": format!("every data node ({}) validated the roleId over the private endpoint; the static credentials were deleted", nodes.len()),
            }),
            now,
        )];
        events.extend(ear::transition_events(group, &stored.status, &status, now));
        let write = EarConfigWrite { azure, status, now, next_validation_at: stored.next_validation_at };
        match state.store.put_ear_config(group, Some(stored.config_version), &write, &events).await {
            Ok(_) => {
                tracing::info!(group = %group, nodes = nodes.len(), "every data node validated the roleId: migration complete, static credentials deleted");
                state.nodes_config_changed();
            }
            Err(StoreError::StaleWrite) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(());
    }

    let Some(status) = status else { return Ok(()) };
    if status.state == stored.status.state
        && status.valid == stored.status.valid
        && status.detail == stored.status.detail
    {
        return Ok(());
    }
    let events = ear::transition_events(group, &stored.status, &status, now);
    match state.store.record_validation(group, stored.config_version, stored.status_version, &status, &events).await {
        Ok(_) | Err(StoreError::StaleWrite) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `ACTIVE` once a node serves through the endpoint; `FAILED` with the reason when the nodes
/// reach it and the vault refuses the connection (the customer rejected or deleted it).
async fn update_endpoint_status(state: &AppState, ep: &EarPrivateEndpoint, current: &[Seen<'_>]) -> ApiResult<()> {
    use EarPrivateEndpointStatus as S;
    let used = current.iter().any(|s| s.serving() && s.via_private_endpoint() && s.error.is_none());
    let refused = current.iter().find(|s| {
        !s.serving() && s.via_private_endpoint() && s.error_str("azureCode") == Some("ForbiddenByConnection")
    });
    let change = match (ep.status, used, refused) {
        (S::PendingAcceptance | S::Failed, true, _) => Some(EarPrivateEndpointTransition {
            from: ep.status,
            to: S::Active,
            error_message: None,
            private_endpoint_connection_name: None,
        }),
        (S::Active | S::PendingAcceptance, false, Some(s)) => Some(EarPrivateEndpointTransition {
            from: ep.status,
            to: S::Failed,
            error_message: Some(format!(
                "The data nodes reach the vault over this endpoint but the vault refuses the connection: {} Approve the \
                 private endpoint connection {} on the vault (az keyvault private-endpoint-connection approve --vault-name \
                 <vault> --name {}).",
                s.error_line(),
                ep.private_endpoint_connection_name.as_deref().unwrap_or("(unnamed)"),
                ep.private_endpoint_connection_name.as_deref().unwrap_or("<connection>")
            )),
            private_endpoint_connection_name: None,
        }),
        _ => None,
    };
    if let Some(change) = change
        && let Some(moved) =
            state.store.transition_ear_private_endpoint(&ep.group_id, &ep.id, &change, state.now()).await?
    {
        tracing::info!(group = %moved.group_id, endpoint = %moved.id, status = moved.status.as_str(), "encryption at rest private endpoint status from the data nodes' reports");
        state.nodes_config_changed();
    }
    Ok(())
}

/// 202 for a master-key rotation request (the operator's or the node's own): the waiting
/// config polls wake so the node sees it at once.
fn rotation_accepted(state: &AppState, node: &Node) -> Response {
    state.nodes_config_changed();
    (
        StatusCode::ACCEPTED,
        ok_json(json!({"id": node.id.as_str(), "masterKeyRotationNonce": node.master_key_rotation_nonce})),
    )
        .into_response()
}
