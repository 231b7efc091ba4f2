//! The HTTP surface: routes, the Atlas JSON body extractor, and the small helpers every
//! handler shares. Each resource lives in its own module.

pub mod body;
pub mod clusters;
pub mod cpa;
pub mod ear;
pub mod events;
pub mod groups;
pub mod nodes;
pub mod ops;
pub mod params;
pub mod private_endpoints;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::StatusCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{ApiError, codes};
use crate::state::AppState;

/// The whole application.
pub fn router(state: AppState) -> Router {
    let atlas = Router::new()
        .route("/groups", get(groups::list).post(groups::create))
        .route("/groups/{groupId}", get(groups::get))
        .route("/groups/{groupId}/cloudProviderAccess", get(cpa::list).post(cpa::create))
        .route("/groups/{groupId}/cloudProviderAccess/{roleId}", get(cpa::get).patch(cpa::authorize))
        .route("/groups/{groupId}/cloudProviderAccess/{cloudProvider}/{roleId}", delete(cpa::deauthorize))
        .route("/groups/{groupId}/encryptionAtRest", get(ear::get).patch(ear::patch))
        .route("/groups/{groupId}/encryptionAtRest/azureKeyVault:revalidate", post(ear::revalidate_now))
        .route(
            "/groups/{groupId}/encryptionAtRest/{cloudProvider}/privateEndpoints",
            get(private_endpoints::list).post(private_endpoints::create),
        )
        .route(
            "/groups/{groupId}/encryptionAtRest/{cloudProvider}/privateEndpoints/{endpointId}",
            get(private_endpoints::get).delete(private_endpoints::delete),
        )
        .route("/groups/{groupId}/clusters", get(clusters::list).post(clusters::create))
        .route(
            "/groups/{groupId}/clusters/{clusterName}",
            get(clusters::get).patch(clusters::update).delete(clusters::delete),
        )
        .route("/groups/{groupId}/events", get(events::list))
        .route("/groups/{groupId}/events/{eventId}", get(events::get));
    let atrest = Router::new()
        .route("/groups/{groupId}/encryptionAtRest/azureKeyVault:validate", post(ear::validate_dry_run))
        .route("/groups/{groupId}/encryptionAtRest/azureKeyVault/status", get(ear::status))
        .route(
            "/groups/{groupId}/encryptionAtRest/{cloudProvider}/privateEndpoints/{endpointId}",
            axum::routing::patch(private_endpoints::set_address),
        )
        .route("/groups/{groupId}/clusters/{clusterName}/joinTokens", post(nodes::create_join_token))
        .route("/groups/{groupId}/clusters/{clusterName}/nodes", get(nodes::list_nodes))
        .route(
            "/groups/{groupId}/clusters/{clusterName}/nodes/{nodeId}",
            delete(nodes::revoke_node).post(nodes::node_action),
        )
        .route(
            "/groups/{groupId}/clusters/{clusterName}/dataCredentials",
            get(nodes::list_data_credentials).post(nodes::create_data_credential),
        )
        .route("/groups/{groupId}/clusters/{clusterName}/dataCredentials/{id}", delete(nodes::revoke_data_credential))
        .route("/whoami", get(whoami));

    let authenticated = Router::new()
        .nest("/api/atlas/v2", atlas)
        .nest("/api/atrest/v1", atrest)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::auth::require_caller))
        .layer(middleware::from_fn(crate::media::atlas_media));

    Router::new()
        .merge(crate::auth::oauth::routes())
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        // The node API authenticates nodes itself (node credential), outside the Atlas layers.
        .merge(nodes::node_routes())
        .merge(authenticated)
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_panic| {
            tracing::error!("a request handler panicked");
            ApiError::internal().into_response()
        }))
        .with_state(state)
}

/// `GET /api/atrest/v1/whoami`: who the credentials are (and the cheapest authenticated call,
/// which the read benchmark uses as its baseline).
async fn whoami(axum::Extension(caller): axum::Extension<crate::auth::Caller>) -> Response {
    ok_json(serde_json::json!({
        "principal": caller.label,
        "orgId": caller.org_id.as_str(),
        "orgRoles": caller.roles.org.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
    }))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::RESOURCE_NOT_FOUND,
        format!(
            "Cannot find resource {}. The API's routes are under /api/atlas/v2/groups/{{groupId}}/... (see docs/control-plane.md).",
            crate::error::echo(request.uri().path())
        ),
    )
    .with_params([request.uri().path().to_string()])
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        format!("{} is not supported on {}.", request.method(), crate::error::echo(request.uri().path())),
    )
}

/// Counts and times every request by its route template (never by its concrete path, which
/// would make one series per project).
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.request(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// Atlas's timestamp format: ISO 8601 in UTC with a `Z`, whole seconds.
pub fn atlas_time(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap_or(t).to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_default()
}

/// A 200 JSON response (the media layer sets the versioned content type).
pub fn ok_json(value: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}
