//! The Atlas error body (`ApiError`) and the error codes this API answers with.
//!
//! Every failure a client sees goes through [`ApiError`], so every one of them has the Atlas
//! shape `{error, errorCode, detail, reason, parameters}` and `Content-Type: application/json`.
//! Terraform matches `errorCode` by substring, so codes are exact constants here, never built
//! from strings at the call site. Where Atlas has a code for a case (see
//! `../shared/reference/atlas-admin-api.md` §5 and the Cloud Manager API error list in
//! mongodb/docs), we use it; the few codes atrest adds are marked in [`codes`].
//!
//! A value the client sent is echoed back at most [`ECHO_LIMIT`] characters long (then `…`):
//! call sites wrap echoed values in [`echo`], `parameters` are shortened as they are added, and
//! [`ApiError::body`] shortens any run of more than [`ECHO_LIMIT`] non-blank characters in
//! `detail` and `badRequestDetail`, so a value that reaches a message another way (a domain
//! type's parse error, say) cannot make a 60 KB field into a 120 KB answer either.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{Value, json};

/// How many characters of a client's value an error message repeats.
pub const ECHO_LIMIT: usize = 256;

/// `value` as an error message may repeat it: unchanged up to [`ECHO_LIMIT`] characters,
/// otherwise its first [`ECHO_LIMIT`] characters and `…`.
pub fn echo(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(ECHO_LIMIT) {
        None => Cow::Borrowed(value),
        Some((cut, _)) => Cow::Owned(format!("{}…", &value[..cut])),
    }
}

/// `text` with every run of non-whitespace characters longer than [`ECHO_LIMIT`] shortened by
/// [`echo`]. Message templates have no such runs, so only echoed values are touched.
fn shorten_long_runs(text: &str) -> Cow<'_, str> {
    let too_long = |run: &str| run.chars().nth(ECHO_LIMIT).is_some();
    if !text.split_whitespace().any(too_long) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(4 * ECHO_LIMIT));
    let mut rest = text;
    while !rest.is_empty() {
        let run_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (run, after) = rest.split_at(run_len);
        out.push_str(&echo(run));
        let blank_len = after.find(|c: char| !c.is_whitespace()).unwrap_or(after.len());
        out.push_str(&after[..blank_len]);
        rest = &after[blank_len..];
    }
    Cow::Owned(out)
}

/// A parameter as the body carries it: strings shortened by [`echo`].
fn echo_value(v: Value) -> Value {
    match v {
        Value::String(s) => match echo(&s) {
            Cow::Borrowed(_) => Value::String(s),
            Cow::Owned(short) => Value::String(short),
        },
        other => other,
    }
}

/// Error codes. Atlas's own unless marked "atrest".
pub mod codes {
    pub const INVALID_JSON: &str = "INVALID_JSON";
    pub const INVALID_JSON_ATTRIBUTE: &str = "INVALID_JSON_ATTRIBUTE";
    pub const INVALID_ATTRIBUTE: &str = "INVALID_ATTRIBUTE";
    pub const INVALID_ENUM_VALUE: &str = "INVALID_ENUM_VALUE";
    pub const MISSING_ATTRIBUTE: &str = "MISSING_ATTRIBUTE";
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    pub const INVALID_GROUP_ID: &str = "INVALID_GROUP_ID";
    pub const GROUP_NOT_FOUND: &str = "GROUP_NOT_FOUND";
    pub const GROUP_ALREADY_EXISTS: &str = "GROUP_ALREADY_EXISTS";
    pub const ORG_NOT_FOUND: &str = "ORG_NOT_FOUND";
    pub const RESOURCE_NOT_FOUND: &str = "RESOURCE_NOT_FOUND";
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    pub const USER_UNAUTHORIZED: &str = "USER_UNAUTHORIZED";
    pub const INVALID_VERSION_DATE: &str = "INVALID_VERSION_DATE";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const UNEXPECTED_ERROR: &str = "UNEXPECTED_ERROR";
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    pub const CONFLICT: &str = "CONFLICTING_UPDATE";

    pub const INVALID_AZURE_CREDENTIALS: &str = "INVALID_AZURE_CREDENTIALS";
    pub const CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL: &str = "CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL";
    pub const AZURE_SERVICE_PRINCIPAL_INVALID: &str = "CLOUD_PROVIDER_ACCESS_AZURE_SERVICE_PRINCIPAL_INVALID";
    pub const DUPLICATE_AZURE_SERVICE_PRINCIPAL: &str = "DUPLICATE_AZURE_SERVICE_PRINCIPAL";
    pub const AZURE_SERVICE_PRINCIPAL_IN_USE: &str = "AZURE_SERVICE_PRINCIPAL_IN_USE";
    pub const CLOUD_PROVIDER_ACCESS_ROLE_NOT_FOUND: &str = "CLOUD_PROVIDER_ACCESS_ROLE_NOT_FOUND";
    pub const CANNOT_DISABLE_REQUIRE_PRIVATE_NETWORKING: &str =
        "CANNOT_DISABLE_ENCRYPTION_AT_REST_REQUIRE_PRIVATE_NETWORKING_WHILE_PRIVATE_ENDPOINTS_EXIST";
    pub const PRIVATE_ENDPOINT_DELETE_BLOCKED: &str =
        "ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_DELETE_BLOCKED_DURING_PROVISIONING";
    pub const CLUSTER_NOT_FOUND: &str = "CLUSTER_NOT_FOUND";
    // atrest's own codes for the node API (docs/design/node-api-draft.md).
    pub const NODE_REVOKED: &str = "NODE_REVOKED";
    pub const NODE_NOT_FOUND: &str = "NODE_NOT_FOUND";
    pub const CLUSTER_DELETING: &str = "CLUSTER_DELETING";
    pub const INVALID_JOIN_TOKEN: &str = "INVALID_JOIN_TOKEN";
    pub const AZURE_TOKEN_DENIED: &str = "AZURE_TOKEN_DENIED";
    pub const AZURE_TOKEN_UNAVAILABLE: &str = "AZURE_TOKEN_UNAVAILABLE";
    pub const DATA_CREDENTIAL_NOT_FOUND: &str = "DATA_CREDENTIAL_NOT_FOUND";
    pub const DUPLICATE_CLUSTER_NAME: &str = "DUPLICATE_CLUSTER_NAME";
    pub const CLUSTER_NAME_INVALID: &str = "CLUSTER_NAME_INVALID";
    pub const CLUSTER_CANNOT_CHANGE_NAME: &str = "CLUSTER_CANNOT_CHANGE_NAME";
    pub const CLUSTER_REPLICATION_FACTOR_INVALID: &str = "CLUSTER_REPLICATION_FACTOR_INVALID";
    pub const CLUSTER_ALREADY_REQUESTED_DELETION: &str = "CLUSTER_ALREADY_REQUESTED_DELETION";
    pub const ENCRYPTION_AT_REST_NOT_ENABLED: &str = "ENCRYPTION_AT_REST_NOT_ENABLED";
    /// atrest: a cluster cannot move from AZURE to NONE (no re-keying under a platform key).
    pub const ENCRYPTION_AT_REST_PROVIDER_CHANGE_NOT_SUPPORTED: &str =
        "ENCRYPTION_AT_REST_PROVIDER_CHANGE_NOT_SUPPORTED";
    /// atrest: the project's Azure Key Vault configuration is still used by clusters.
    pub const ENCRYPTION_AT_REST_IN_USE_BY_CLUSTERS: &str = "ENCRYPTION_AT_REST_IN_USE_BY_CLUSTERS";
    /// atrest: a provider this deployment does not offer (AWS, GCP).
    pub const CLOUD_PROVIDER_NOT_SUPPORTED: &str = "CLOUD_PROVIDER_NOT_SUPPORTED";
    /// atrest: the key lacks the tag binding it to this project (confused-deputy protection).
    pub const KEY_NOT_BOUND_TO_PROJECT: &str = "ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT";
}

/// A failure answered in Atlas's error shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_code: &'static str,
    pub detail: String,
    pub parameters: Vec<Value>,
    /// `badRequestDetail.fields`: (field, description).
    pub fields: Vec<(String, String)>,
    /// Extra response headers (e.g. a Digest challenge, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, error_code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error_code,
            detail: detail.into(),
            parameters: Vec::new(),
            fields: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(error_code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error_code, detail)
    }

    pub fn with_params<I, V>(mut self, params: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        self.parameters = params.into_iter().map(|p| echo_value(p.into())).collect();
        self
    }

    pub fn with_field(mut self, field: impl Into<String>, description: impl Into<String>) -> Self {
        self.fields.push((field.into(), description.into()));
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 401: no or bad credentials, or no role at all on the project (Atlas answers 401 there too).
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, detail)
    }

    /// 403: authenticated, but the role is not enough.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, codes::USER_UNAUTHORIZED, detail)
    }

    /// 404 for a project id that is well formed but unknown to this caller's organization.
    pub fn group_not_found(group_id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, codes::GROUP_NOT_FOUND, format!("No group with ID {group_id} exists."))
            .with_params([group_id])
    }

    pub fn invalid_attribute(field: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        Self::bad_request(codes::INVALID_ATTRIBUTE, format!("Invalid attribute {field} specified: {why}"))
            .with_params([field])
            .with_field(field, why)
    }

    pub fn missing_attribute(field: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        Self::bad_request(codes::MISSING_ATTRIBUTE, format!("The required attribute {field} was not specified: {why}"))
            .with_params([field])
            .with_field(field, why)
    }

    /// 500 for a bug or a store failure. The cause is logged by the caller, never sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::UNEXPECTED_ERROR,
            "Unexpected error. The request was not applied; retry it, and if it keeps failing check the control plane's logs.",
        )
    }

    /// 503: the store is unavailable; nothing was applied.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, codes::SERVICE_UNAVAILABLE, detail)
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("5"))
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "error": self.status.as_u16(),
            "errorCode": self.error_code,
            "detail": shorten_long_runs(&self.detail),
            "reason": self.status.canonical_reason().unwrap_or(""),
            "parameters": self.parameters.iter().cloned().map(echo_value).collect::<Vec<_>>(),
        });
        if !self.fields.is_empty() {
            body["badRequestDetail"] = json!({
                "fields": self.fields.iter().map(|(f, d)| json!({
                    "field": echo(f),
                    "description": shorten_long_runs(d),
                })).collect::<Vec<_>>()
            });
        }
        body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.error_code, self.detail)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

impl From<atrest_store::StoreError> for ApiError {
    fn from(e: atrest_store::StoreError) -> Self {
        use atrest_store::StoreError;
        match e {
            StoreError::Backend(_) => {
                tracing::error!(error = %e, "store unavailable");
                ApiError::unavailable("The control plane's store is unavailable; nothing was changed. Retry shortly.")
            }
            StoreError::StaleWrite => ApiError::new(
                StatusCode::CONFLICT,
                codes::CONFLICT,
                "The configuration was changed by another request while this one was being processed; nothing was changed. Read it again and retry.",
            ),
            other => {
                tracing::error!(error = %other, "unexpected store error");
                ApiError::internal()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_keeps_short_values_and_cuts_long_ones_on_a_character_boundary() {
        assert_eq!(echo("abc"), "abc");
        let exact = "é".repeat(ECHO_LIMIT);
        assert_eq!(echo(&exact), exact.as_str());
        let long = "é".repeat(ECHO_LIMIT + 1);
        assert_eq!(echo(&long), format!("{}…", "é".repeat(ECHO_LIMIT)));
    }

    #[test]
    fn the_body_shortens_long_values_wherever_they_were_put() {
        let big = "x".repeat(60 * 1024);
        let e = ApiError::invalid_attribute("tenantID", format!("'{big}' is not a UUID"))
            .with_params([big.clone(), "short".to_string()]);
        let body = e.body().to_string();
        assert!(body.len() < 2048, "{} bytes", body.len());
        let cut = format!("'{}…", "x".repeat(ECHO_LIMIT - 1));
        assert!(e.body()["detail"].as_str().unwrap().contains(&cut), "{body}");
        assert!(e.body()["detail"].as_str().unwrap().ends_with("is not a UUID"), "{body}");
        assert_eq!(e.body()["parameters"][0], format!("{}…", "x".repeat(ECHO_LIMIT)));
        assert_eq!(e.body()["parameters"][1], "short");
        // Blanks between words survive.
        assert_eq!(shorten_long_runs("a  b\nc"), "a  b\nc");
    }
}
