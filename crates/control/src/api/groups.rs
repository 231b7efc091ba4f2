//! Projects ("groups"): `GET/POST /api/atlas/v2/groups`, `GET /groups/{groupId}`.
//!
//! Only the part of Atlas's project resource atrest needs: `id`, `name`, `orgId`, `created`,
//! `clusterCount` (always 0 here) and `links`. Creating a project needs `ORG_OWNER` in the
//! organization; listing shows the projects the caller holds a role on.

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::api::body::{Fields, JsonObject};
use crate::api::params::{Path, Query};
use crate::api::{atlas_time, ok_json};
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult, codes, echo};
use crate::state::AppState;

fn group_json(g: &atrest_store::Group) -> Value {
    json!({
        "id": g.id.as_str(),
        "name": g.name,
        "orgId": g.org_id.as_str(),
        "created": atlas_time(g.created_at),
        "clusterCount": 0,
        "links": [{"href": format!("/api/atlas/v2/groups/{}", g.id.as_str()), "rel": "self"}],
    })
}

/// Atlas's pagination query parameters (read with [`Query`]: a repeated one takes its first
/// value; unknown ones are ignored, as JAX-RS ignores them).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageQuery {
    pub page_num: Option<String>,
    pub items_per_page: Option<String>,
    pub include_count: Option<String>,
}

impl PageQuery {
    /// Validates into a store page, with Atlas's limits (pageNum ≥ 1, itemsPerPage 1–500).
    pub fn page(&self) -> ApiResult<atrest_store::Page> {
        let max_items = atrest_store::Page::MAX_ITEMS_PER_PAGE;
        let parse = |name: &str, v: &Option<String>, default: u32, max: u32, range: &str| -> ApiResult<u32> {
            match v {
                None => Ok(default),
                // A page number past u32 is a page past the end (the spec sets no maximum), not
                // an error: saturate it.
                Some(s) => match s.parse::<u32>().or_else(|e| match e.kind() {
                    std::num::IntErrorKind::PosOverflow if name == "pageNum" => Ok(u32::MAX),
                    _ => Err(e),
                }) {
                    Ok(n) if n >= 1 && n <= max => Ok(n),
                    _ => Err(ApiError::invalid_attribute(
                        name,
                        format!("query parameter {name}='{}' must be {range} (for example ?{name}={default})", echo(s)),
                    )),
                },
            }
        };
        Ok(atrest_store::Page {
            page_num: parse("pageNum", &self.page_num, 1, u32::MAX, "a whole number of 1 or more")?,
            items_per_page: parse(
                "itemsPerPage",
                &self.items_per_page,
                100,
                max_items,
                &format!("a whole number from 1 to {max_items}"),
            )?,
        })
    }

    /// `includeCount`, default true; parsed like the other Atlas booleans
    /// ([`crate::media::parse_bool`]).
    pub fn include_count(&self) -> ApiResult<bool> {
        Ok(self.include_count.as_deref().is_none_or(crate::media::parse_bool))
    }
}

/// `{results, totalCount, links}` for one page of `items`.
pub fn paginated(path: &str, items: Vec<Value>, total: u64, include_count: bool) -> Value {
    let mut v = json!({
        "results": items,
        "links": [{"href": path, "rel": "self"}],
    });
    if include_count {
        v["totalCount"] = json!(total);
    }
    v
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let page = q.page()?;
    let include_count = q.include_count()?;
    let visible: Vec<_> = state
        .store
        .list_groups(&caller.org_id)
        .await?
        .into_iter()
        .filter(|g| caller.authorize(g, Access::Read).is_ok())
        .collect();
    let total = visible.len() as u64;
    let start = (page.page_num as usize - 1).saturating_mul(page.items_per_page as usize);
    let items = visible.iter().skip(start).take(page.items_per_page as usize).map(group_json).collect();
    Ok(ok_json(paginated("/api/atlas/v2/groups", items, total, include_count)))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group_id): Path<String>,
) -> ApiResult<Response> {
    let group = caller.group(&state, &group_id, Access::Read).await?;
    Ok(ok_json(group_json(&group)))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let mut f = Fields::new("", body);
    let name = f.string("name")?.ok_or_else(|| ApiError::missing_attribute("name", "give the project a name"))?;
    let org = f.string("orgId")?;
    for ro in ["id", "created", "clusterCount", "links"] {
        f.ignore(ro);
    }
    f.finish()?;
    if let Some(org) = &org
        && org != caller.org_id.as_str()
    {
        return Err(ApiError::unauthorized(format!(
            "You are not authorized for this resource: the credentials belong to organization {}, not {org}.",
            caller.org_id
        )));
    }
    if !caller.is_org_owner() {
        return Err(ApiError::forbidden(format!(
            "Current user is not authorized to perform this action: creating a project needs ORG_OWNER in organization {}.",
            caller.org_id
        )));
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::bad_request(
            codes::INVALID_ATTRIBUTE,
            "Invalid attribute name specified: a project name is 1 to 64 characters.",
        )
        .with_params(["name"])
        .with_field("name", "1 to 64 characters"));
    }
    let group = atrest_store::Group {
        id: atrest_store::GroupId::new_random(),
        org_id: caller.org_id.clone(),
        name: name.to_owned(),
        created_at: OffsetDateTime::now_utc(),
    };
    match state.store.create_group(&group).await {
        Ok(()) => {}
        Err(atrest_store::StoreError::Conflict { .. }) => {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                codes::GROUP_ALREADY_EXISTS,
                format!("A group with name \"{name}\" already exists."),
            )
            .with_params([name]));
        }
        Err(e) => return Err(e.into()),
    }
    let stored = state.store.get_group(&group.id).await?;
    tracing::info!(group = %stored.id, by = %caller.label, "project created");
    Ok(ok_json(group_json(&stored)))
}
