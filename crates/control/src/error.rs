//! The Atlas error body (`ApiError`) and the error codes this API answers with.
//!
//! Every failure a client sees goes through [`ApiError`], so every one of them has the Atlas
//! shape `{error, errorCode, detail, reason, parameters}` and `Content-Type: application/json`.
//! Terraform matches `errorCode` by substring, so codes are exact constants here, never built
//! from strings at the call site. Where Atlas has a code for a case (see
//! `../shared/reference/atlas-admin-api.md` §5 and the Cloud Manager API error list in
//! mongodb/docs), we use it; the few codes atrest adds are marked in [`codes`].

use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{Value, json};

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
        self.parameters = params.into_iter().map(Into::into).collect();
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
            "detail": self.detail,
            "reason": self.status.canonical_reason().unwrap_or(""),
            "parameters": self.parameters,
        });
        if !self.fields.is_empty() {
            body["badRequestDetail"] = json!({
                "fields": self.fields.iter().map(|(f, d)| json!({"field": f, "description": d})).collect::<Vec<_>>()
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
