//! Atlas's versioned media types, and the `envelope` and `pretty` query parameters.
//!
//! - `Accept: application/vnd.atlas.YYYY-MM-DD+json` resolves to the newest version of the
//!   operation on or before that date (atlas-admin-api.md §7.5). Every operation here exists
//!   only as 2023-01-01, so any date from 2023-01-01 on resolves to it; an earlier date, the
//!   preview type, a malformed date or no Atlas type at all is `406 INVALID_VERSION_DATE`
//!   (the code and detail live Atlas answers with).
//! - Request bodies may be `application/json` or the vendor type; anything else is 415.
//! - Successful responses carry `Content-Type: application/vnd.atlas.<resolved>+json`; errors
//!   stay `application/json`, as in Atlas.
//! - `envelope=true` wraps a successful body as `{status, content}` (lists: adds `status`
//!   beside `results`); error bodies stay as they are (they carry the status in `error`).
//!   `pretty=true` indents. Both parse like Java's `Boolean.valueOf` (see [`parse_bool`]).
//! - Every error is an Atlas `ApiError` in `application/json`: an error response in any other
//!   type (a rejection from an axum extractor a handler uses instead of [`crate::api::params`],
//!   say) is rewritten into one here ([`atlas_error_from`]), keeping its status.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::error::{ApiError, codes};

/// The versions of the in-scope operations, oldest first.
pub const VERSIONS: &[&str] = &["2023-01-01"];

/// The versions of the clusters operations (`/api/atlas/v2/groups/{groupId}/clusters[/{name}]`),
/// oldest first, per method, as the Atlas Go SDK sends them (admin/api_clusters.go): getCluster
/// and listClusters 2024-08-05, createCluster and updateCluster 2024-10-23 (the same
/// `ClusterDescription20240805` body as 2024-08-05), deleteCluster 2023-02-01. The older
/// versions of get, list, create and update have another body (the pre-2024 cluster
/// description), which atrest does not serve: an Accept date before 2024-08-05 is 406 there.
pub fn cluster_versions(method: &http::Method) -> &'static [&'static str] {
    match *method {
        http::Method::GET => &["2024-08-05"],
        http::Method::DELETE => &["2023-01-01", "2023-02-01"],
        _ => &["2024-08-05", "2024-10-23"],
    }
}

/// The versions of the operation at `path` with `method`.
pub fn versions_for(method: &http::Method, path: &str) -> &'static [&'static str] {
    let is_clusters = path
        .strip_prefix("/api/atlas/v2/groups/")
        .and_then(|rest| rest.split('/').nth(1))
        .is_some_and(|segment| segment == "clusters");
    if is_clusters { cluster_versions(method) } else { VERSIONS }
}

/// The version a request resolved to, available to handlers as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersion(pub &'static str);

impl ApiVersion {
    pub fn media_type(self) -> String {
        format!("application/vnd.atlas.{}+json", self.0)
    }
}

fn not_acceptable(versions: &[&str]) -> ApiError {
    ApiError::new(StatusCode::NOT_ACCEPTABLE, codes::INVALID_VERSION_DATE, "Invalid accept header or version date.")
        .with_field(
            "Accept",
            format!(
                "send Accept: application/vnd.atlas.{}+json (or any later date); supported versions: {}",
                versions[0],
                versions.join(", ")
            ),
        )
}

/// Resolves an `Accept` header value to a supported version.
pub fn resolve_accept(accept: Option<&str>) -> Result<ApiVersion, ApiError> {
    resolve_accept_among(accept, VERSIONS)
}

/// Resolves an `Accept` header value among `versions` (one operation's, oldest first).
pub fn resolve_accept_among(accept: Option<&str>, versions: &'static [&'static str]) -> Result<ApiVersion, ApiError> {
    let accept = accept.ok_or_else(|| not_acceptable(versions))?;
    for range in accept.split(',') {
        let media = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let Some(date) = media.strip_prefix("application/vnd.atlas.").and_then(|r| r.strip_suffix("+json")) else {
            continue;
        };
        if !is_date(date) {
            continue;
        }
        // Dates compare correctly as strings in YYYY-MM-DD form.
        if let Some(v) = versions.iter().rev().find(|v| **v <= date) {
            return Ok(ApiVersion(v));
        }
    }
    Err(not_acceptable(versions))
}

fn is_date(s: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    s.len() == 10 && time::Date::parse(s, format).is_ok()
}

fn body_type_ok(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json"
        || media.strip_prefix("application/vnd.atlas.").and_then(|r| r.strip_suffix("+json")).is_some_and(is_date)
}

/// Parses a boolean query flag as Atlas does. Atlas's API is served by JAX-RS, which converts a
/// `boolean` query parameter with `Boolean.valueOf`: `true` in any case is true, and every other
/// value (`false`, `null`, `yes`, empty) is false rather than an error. The spec documents no 400
/// for the read operations, so this must not refuse.
pub(crate) fn parse_bool(v: &str) -> bool {
    v.eq_ignore_ascii_case("true")
}

fn flag(query: &str, name: &str) -> bool {
    url_pairs(query).into_iter().find(|(k, _)| k == name).is_some_and(|(_, v)| parse_bool(&v))
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

/// Middleware for every `/api/atlas/v2` and `/api/atrest/v1` route.
pub async fn atlas_media(mut request: Request, next: Next) -> Response {
    let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let versions = versions_for(request.method(), request.uri().path());
    let version = match resolve_accept_among(accept, versions) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let query = request.uri().query().unwrap_or("").to_owned();
    let (envelope, pretty) = (flag(&query, "envelope"), flag(&query, "pretty"));
    if let Some(ct) = request.headers().get(header::CONTENT_TYPE) {
        let ok = ct.to_str().map(body_type_ok).unwrap_or(false);
        if !ok {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Request bodies must be application/json or {}; got {:?}.",
                    version.media_type(),
                    ct.to_str().unwrap_or("<not text>")
                ),
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(version);
    let response = next.run(request).await;
    finish(response, version, envelope, pretty).await
}

async fn finish(response: Response, version: ApiVersion, envelope: bool, pretty: bool) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        if status.is_client_error() || status.is_server_error() {
            return atlas_error_from(response).await.into_response();
        }
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if status.is_success() {
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_str(&version.media_type()).expect("media type is ASCII"));
    }
    if !envelope && !pretty {
        return Response::from_parts(parts, body);
    }
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal().into_response();
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    // Errors keep Atlas's error body, which already carries the status in `error`: the spec's
    // ApiError schema describes every error response, enveloped or not.
    if envelope && status.is_success() {
        value = match value {
            Value::Object(mut map) if map.contains_key("results") => {
                map.insert("status".into(), status.as_u16().into());
                Value::Object(map)
            }
            other => serde_json::json!({"status": status.as_u16(), "content": other}),
        };
    }
    let out = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }
        .expect("a JSON value serializes");
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// An Atlas error for a non-JSON error response, with the same status. A client error keeps
/// the first [`crate::error::ECHO_LIMIT`] characters of its text as the detail; a server error
/// says nothing of its cause (it is logged).
async fn atlas_error_from(response: Response) -> ApiError {
    let status = response.status();
    const READ_LIMIT: usize = 64 * 1024;
    let text = match axum::body::to_bytes(response.into_body(), READ_LIMIT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), body = %crate::error::echo(&text), "a handler answered a non-JSON error");
        return ApiError { status, ..ApiError::internal() };
    }
    let code = match status {
        StatusCode::NOT_FOUND => codes::RESOURCE_NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED => codes::METHOD_NOT_ALLOWED,
        StatusCode::PAYLOAD_TOO_LARGE => codes::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => codes::UNSUPPORTED_MEDIA_TYPE,
        _ => codes::VALIDATION_ERROR,
    };
    let text = if text.is_empty() { status.canonical_reason().unwrap_or("bad request").to_owned() } else { text };
    ApiError::new(
        status,
        code,
        format!(
            "The request was refused: {}. Check the path, query parameters and body against the Atlas Admin API reference.",
            crate::error::echo(text.trim_end_matches('.'))
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_dates_resolve_to_the_newest_version_not_after_them() {
        for ok in [
            "application/vnd.atlas.2023-01-01+json",
            "application/vnd.atlas.2025-03-12+json",
            "application/json, application/vnd.atlas.2024-05-30+json;q=0.9",
            "APPLICATION/VND.ATLAS.2023-01-01+JSON; charset=utf-8",
        ] {
            assert_eq!(resolve_accept(Some(ok)).unwrap(), ApiVersion("2023-01-01"), "{ok}");
        }
        for bad in [
            None,
            Some("application/json"),
            Some("*/*"),
            Some("application/vnd.atlas.2022-12-31+json"),
            Some("application/vnd.atlas.preview+json"),
            Some("application/vnd.atlas.2023-13-01+json"),
            Some("application/vnd.atlas.2023-1-1+json"),
        ] {
            let e = resolve_accept(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE, "{bad:?}");
            assert_eq!(e.error_code, "INVALID_VERSION_DATE");
        }
    }

    #[test]
    fn cluster_operations_resolve_their_own_versions() {
        let get = versions_for(&http::Method::GET, "/api/atlas/v2/groups/0123456789abcdef01234567/clusters/C0");
        assert_eq!(resolve_accept_among(Some("application/vnd.atlas.2025-01-01+json"), get).unwrap().0, "2024-08-05");
        assert!(resolve_accept_among(Some("application/vnd.atlas.2023-01-01+json"), get).is_err());
        let post = versions_for(&http::Method::POST, "/api/atlas/v2/groups/0123456789abcdef01234567/clusters");
        assert_eq!(resolve_accept_among(Some("application/vnd.atlas.2024-10-23+json"), post).unwrap().0, "2024-10-23");
        assert_eq!(resolve_accept_among(Some("application/vnd.atlas.2024-09-01+json"), post).unwrap().0, "2024-08-05");
        let del = versions_for(&http::Method::DELETE, "/api/atlas/v2/groups/0123456789abcdef01234567/clusters/C0");
        assert_eq!(resolve_accept_among(Some("application/vnd.atlas.2023-01-01+json"), del).unwrap().0, "2023-01-01");
        assert_eq!(versions_for(&http::Method::GET, "/api/atlas/v2/groups/0123456789abcdef01234567/events"), VERSIONS);
    }

    #[test]
    fn body_media_types() {
        assert!(body_type_ok("application/json"));
        assert!(body_type_ok("application/json; charset=utf-8"));
        assert!(body_type_ok("application/vnd.atlas.2023-01-01+json"));
        assert!(!body_type_ok("text/plain"));
        assert!(!body_type_ok("application/x-www-form-urlencoded"));
    }

    #[test]
    fn flags_parse_like_boolean_value_of() {
        assert!(flag("envelope=true", "envelope"));
        assert!(flag("envelope=TRUE", "envelope"));
        assert!(!flag("pretty=false&envelope=true", "pretty"));
        assert!(!flag("", "pretty"));
        for other in ["pretty=yes", "pretty=null", "pretty=", "pretty=1"] {
            assert!(!flag(other, "pretty"), "{other}");
        }
    }
}
