//! Azure's error bodies, one builder per surface.
//!
//! Each Azure service has its own error JSON; clients parse them (the Python SDK reads
//! `error.code`, MSAL reads `error`/`error_codes`, azure-cli matches message text), so every
//! emulator error goes through one of these builders and never through a generic one.
//! Shapes: `shared/reference/azure-protocols.md` §1.4 (Entra), §3.7 (Key Vault), §4.1 (ARM).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Which service answers; decides the error body shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Entra,
    Graph,
    Arm,
    Vault,
    Admin,
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

fn now_stamp() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc().format(f).unwrap_or_default()
}

/// Entra ID token-endpoint error (AADSTS JSON).
pub fn aad(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let trace = uuid::Uuid::new_v4();
    let corr = uuid::Uuid::new_v4();
    let ts = now_stamp();
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace.to_string(),
            "correlation_id": corr.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

/// ARM error: `{"error":{"code","message"}}`.
pub fn arm(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({"error": {"code": code, "message": message}}))
}

/// Key Vault error: `{"error":{"code","message","innererror"?}}`.
pub fn vault(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut err = json!({"code": code, "message": message});
    if let Some(i) = inner {
        err["innererror"] = json!({"code": i});
    }
    json_response(status, json!({"error": err}))
}

/// Microsoft Graph error: `{"error":{"code","message","innerError":{...}}}`.
pub fn graph(status: StatusCode, code: &str, message: &str) -> Response {
    let f = time::format_description::well_known::Rfc3339;
    let date = time::OffsetDateTime::now_utc().format(&f).unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    json_response(
        status,
        json!({"error": {"code": code, "message": message, "innerError": {"date": date, "request-id": id, "client-request-id": id}}}),
    )
}

/// The error shape of `surface` for a generic condition (bad JSON, not found, too large...).
/// `code` is the surface-specific code to use.
pub fn for_surface(surface: Surface, status: StatusCode, code: &str, message: &str) -> Response {
    match surface {
        Surface::Entra => {
            let (error, aadsts) = match status {
                StatusCode::NOT_FOUND => ("invalid_request", 90002u32),
                _ => ("invalid_request", 900144u32),
            };
            let _ = code;
            aad(status, error, aadsts, message)
        }
        Surface::Graph => graph(status, code, message),
        Surface::Arm | Surface::Admin => arm(status, code, message),
        Surface::Vault => vault(status, code, message, None),
    }
}

/// Body too large for `surface`.
pub fn too_large(surface: Surface, limit: usize) -> Response {
    let msg = format!("The request body is larger than the {limit} bytes this endpoint accepts.");
    match surface {
        Surface::Vault => vault(StatusCode::PAYLOAD_TOO_LARGE, "BadParameter", &msg, None),
        Surface::Graph => graph(StatusCode::PAYLOAD_TOO_LARGE, "Request_EntityTooLarge", &msg),
        Surface::Entra => aad(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", 90020, &msg),
        Surface::Arm | Surface::Admin => arm(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", &msg),
    }
}

/// Parse a JSON body, answering with the surface's 400 on failure.
#[allow(clippy::result_large_err)]
pub fn parse_json<T: serde::de::DeserializeOwned>(surface: Surface, body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = format!("The request body is not valid JSON for this operation: {e}");
        match surface {
            Surface::Vault => vault(StatusCode::BAD_REQUEST, "BadParameter", &msg, None),
            Surface::Graph => graph(StatusCode::BAD_REQUEST, "Request_BadRequest", &msg),
            Surface::Entra => aad(StatusCode::BAD_REQUEST, "invalid_request", 900144, &msg),
            Surface::Arm | Surface::Admin => arm(StatusCode::BAD_REQUEST, "InvalidRequestContent", &msg),
        }
    })
}

/// 429 with `Retry-After`, in the surface's shape.
pub fn throttled(surface: Surface, retry_after_secs: u64) -> Response {
    let msg = "Request was not processed because too many requests were received. Reason: throttled by the emulator (per-vault limit or an injected fault). Retry after the interval in Retry-After.";
    let mut resp = match surface {
        Surface::Vault => vault(StatusCode::TOO_MANY_REQUESTS, "Throttled", msg, None),
        Surface::Graph => graph(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", msg),
        Surface::Entra => aad(StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable", 50196, msg),
        Surface::Arm | Surface::Admin => arm(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", msg),
    };
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

/// An injected 5xx in the surface's shape.
pub fn injected_server_error(surface: Surface, status: StatusCode) -> Response {
    server_error(
        surface,
        status,
        "The service is temporarily unavailable (fault injected by the emulator). Retry the request.",
    )
}

fn server_error(surface: Surface, status: StatusCode, msg: &str) -> Response {
    match surface {
        Surface::Vault => vault(status, "ServiceUnavailable", msg, None),
        Surface::Graph => graph(status, "serviceNotAvailable", msg),
        Surface::Entra => aad(status, "temporarily_unavailable", 90033, msg),
        Surface::Arm | Surface::Admin => arm(status, "ServiceUnavailable", msg),
    }
}

/// The state could not be written to disk, so the change was not applied. That is the
/// emulator's fault and retryable: a 503 in the surface's shape, never a 500.
pub fn persist_failed(surface: Surface, error: &anyhow::Error) -> Response {
    tracing::error!(error = %error, ?surface, "persisting emulator state failed");
    server_error(
        surface,
        StatusCode::SERVICE_UNAVAILABLE,
        "The emulator could not persist the change; nothing was changed. See the emulator log and retry the request.",
    )
}
