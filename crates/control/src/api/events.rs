//! `GET /api/atlas/v2/groups/{groupId}/events[/{eventId}]`: the project's events, newest
//! first, in Atlas's event shape (`id`, `created`, `eventTypeName`, `groupId`, `links`) with
//! the event's details as further attributes.

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use atrest_store::{Event, EventId, StoreError};

use crate::api::groups::{PageQuery, paginated};
use crate::api::params::{Path, Query};
use crate::api::{atlas_time, ok_json};
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult, codes, echo};
use crate::state::AppState;

pub fn event_json(e: &Event) -> Value {
    let mut v = match serde_json::from_str::<Value>(&e.payload) {
        Ok(Value::Object(m)) => Value::Object(m),
        _ => json!({}),
    };
    v["id"] = e.id.as_str().into();
    v["created"] = atlas_time(e.created_at).into();
    v["eventTypeName"] = e.event_type_name.clone().into();
    v["groupId"] = e.group_id.as_str().into();
    v["links"] = json!([{"href": format!("/api/atlas/v2/groups/{}/events/{}", e.group_id.as_str(), e.id.as_str()), "rel": "self"}]);
    v
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let page = q.page()?;
    let include_count = q.include_count()?;
    let events = state.store.list_events(&group.id, page).await?;
    let items = events.events.iter().map(event_json).collect();
    Ok(ok_json(paginated(
        &format!("/api/atlas/v2/groups/{}/events", group.id.as_str()),
        items,
        events.total_count,
        include_count,
    )))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group_id, event_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::RESOURCE_NOT_FOUND,
            format!(
                "No event with ID {} exists in this project; list them with GET /api/atlas/v2/groups/{}/events.",
                echo(&event_id),
                group.id.as_str()
            ),
        )
        .with_params([event_id.clone()])
    };
    let id = EventId::parse(&event_id).map_err(|_| not_found())?;
    match state.store.get_event(&group.id, &id).await {
        Ok(e) => Ok(ok_json(event_json(&e))),
        Err(StoreError::NotFound { .. }) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}
