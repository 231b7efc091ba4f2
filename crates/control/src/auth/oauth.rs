//! OAuth 2 client credentials for service accounts (atlas-admin-api.md §6.2).
//!
//! - `POST /api/oauth/token` with `Authorization: Basic base64(clientId:clientSecret)` and the
//!   form `grant_type=client_credentials` answers `{"access_token", "expires_in", "token_type":
//!   "Bearer"}`. The token is 256 random bits (base64url); the store keeps only its SHA-256, with
//!   the expiry `auth.access_token_lifetime_secs` ahead.
//! - `POST /api/oauth/revoke` with Basic auth and the form `token=…` revokes a token of that
//!   service account and answers 200 whatever happened (RFC 7009 §2.2: an unknown token, or one
//!   of another client, is not an error; the other client's token is left alone).
//! - Failures of these two endpoints have OAuth's shape (`{"error", "error_description"}`,
//!   RFC 6749 §5.2), not Atlas's. A missing or malformed Basic header is answered `400
//!   invalid_request`, as Atlas does; wrong credentials `401 invalid_client` with a Basic
//!   challenge.
//! - [`verify_bearer`] authenticates API calls with such a token.
//!
//! Client ids and secrets are used as sent in the Basic header. RFC 6749 §2.3.1 has clients
//! form-encode both before base64 (Go's x/oauth2 does); ours consist of letters, digits and `_`
//! only, which that encoding leaves unchanged, so both conventions work.

use atrest_store::{AccessToken, ClientId, Principal, ServiceAccount, StoreError};
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use crate::auth::Caller;
use crate::auth::secrets::{random_bytes, sha256};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The Basic challenge of the token endpoints.
const BASIC_CHALLENGE: &str = "Basic realm=\"MMS Public API\"";

/// `POST /api/oauth/token` and `POST /api/oauth/revoke`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/oauth/token", post(token)).route("/api/oauth/revoke", post(revoke))
}

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status, error, description: description.into() }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid credentials provided.")
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => {
                tracing::error!(error = %e, "store unavailable");
                OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "The control plane's store is unavailable; retry shortly.",
                )
            }
            other => {
                tracing::error!(error = %other, "unexpected store error");
                OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "Unexpected error; retry.")
            }
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut response = (self.status, axum::Json(body)).into_response();
        let h = response.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        match self.status {
            StatusCode::UNAUTHORIZED => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

/// The client id and secret of a Basic `Authorization` header. The secret is kept only as long
/// as the request (and is never formatted: no `Debug`).
struct BasicCredentials {
    client_id: String,
    secret: zeroize::Zeroizing<String>,
}

fn basic_credentials(headers: &HeaderMap) -> Result<BasicCredentials, OAuthError> {
    const HOW: &str = "send the service account's client id and secret as HTTP Basic credentials: \
                       Authorization: Basic base64(clientId:clientSecret)";
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (Some(v), None) => v,
        (None, _) => return Err(OAuthError::invalid_request(format!("No client authentication; {HOW}."))),
        (Some(_), Some(_)) => return Err(OAuthError::invalid_request("More than one Authorization header.")),
    };
    let malformed = || OAuthError::invalid_request(format!("Malformed Authorization header; {HOW}."));
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let encoded = encoded.trim();
    let decoded = zeroize::Zeroizing::new(
        STANDARD.decode(encoded).or_else(|_| STANDARD_NO_PAD.decode(encoded)).map_err(|_| malformed())?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| malformed())?;
    let (id, secret) = text.split_once(':').ok_or_else(malformed)?;
    if id.is_empty() {
        return Err(malformed());
    }
    Ok(BasicCredentials { client_id: id.to_owned(), secret: zeroize::Zeroizing::new(secret.to_owned()) })
}

/// The form parameters of a token or revocation request (each at most once, RFC 6749 §3.2).
fn form(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(OAuthError::invalid_request(
            "The request body must be a form: Content-Type: application/x-www-form-urlencoded.",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| OAuthError::invalid_request("The request body is not a valid URL-encoded form."))?;
    for (i, (name, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(OAuthError::invalid_request(format!("The parameter {name} appears more than once.")));
        }
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Checks a client id and secret against the store. Every failure is the same `invalid_client`.
async fn authenticate_client(state: &AppState, creds: &BasicCredentials) -> Result<ServiceAccount, OAuthError> {
    let Ok(client_id) = ClientId::parse(&creds.client_id) else {
        return Err(OAuthError::invalid_client());
    };
    let account = match state.store.get_service_account(&client_id).await {
        Ok(a) => a,
        Err(StoreError::NotFound { .. }) => return Err(OAuthError::invalid_client()),
        Err(e) => return Err(e.into()),
    };
    let given = sha256(creds.secret.as_bytes());
    if aws_lc_rs::constant_time::verify_slices_are_equal(&given, &account.secret_sha256).is_err() {
        return Err(OAuthError::invalid_client());
    }
    Ok(account)
}

async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match issue(&state, &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = e.error, status = e.status.as_u16(), "token request refused");
            e.into_response()
        }
    }
}

async fn issue(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
    let creds = basic_credentials(headers)?;
    let pairs = form(headers, body)?;
    match param(&pairs, "grant_type") {
        None => {
            return Err(OAuthError::invalid_request(
                "The parameter grant_type is missing; send grant_type=client_credentials.",
            ));
        }
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Only grant_type=client_credentials is supported.",
            ));
        }
    }
    let account = authenticate_client(state, &creds).await?;
    crate::auth::housekeeping(state);

    let token = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(random_bytes::<32>()));
    let lifetime = state.config.auth.access_token_lifetime_secs;
    let now = state.now();
    let record = AccessToken {
        token_sha256: sha256(token.as_bytes()),
        client_id: account.client_id.clone(),
        issued_at: now,
        expires_at: now + time::Duration::seconds(lifetime.min(i64::MAX as u64) as i64),
        revoked_at: None,
    };
    state.store.insert_access_token(&record).await?;
    tracing::info!(client_id = %account.client_id, "access token issued");
    let body = json!({"access_token": token.as_str(), "expires_in": lifetime, "token_type": "Bearer"});
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

async fn revoke(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match revoke_token(&state, &headers, &body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::info!(error = e.error, status = e.status.as_u16(), "revocation request refused");
            e.into_response()
        }
    }
}

async fn revoke_token(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), OAuthError> {
    let creds = basic_credentials(headers)?;
    let pairs = form(headers, body)?;
    // token_type_hint is only a hint (RFC 7009 §2.1): access tokens are the only kind there is.
    let token = match param(&pairs, "token") {
        Some(t) if !t.is_empty() => t,
        _ => return Err(OAuthError::invalid_request("The parameter token is missing.")),
    };
    let account = authenticate_client(state, &creds).await?;
    let revoked = state.store.revoke_access_token(&account.client_id, &sha256(token.as_bytes()), state.now()).await?;
    if revoked {
        tracing::info!(client_id = %account.client_id, "access token revoked");
    }
    Ok(())
}

/// Authenticates an API call's bearer token: known (by SHA-256), issued to a service account
/// that still exists, not revoked, not expired. Otherwise 401 with
/// `WWW-Authenticate: Bearer error="invalid_token"`.
pub async fn verify_bearer(state: &AppState, token: &str) -> ApiResult<Caller> {
    let invalid = |detail: &str| {
        ApiError::unauthorized(detail.to_owned())
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""))
    };
    const UNKNOWN: &str = "The bearer token is not valid: it was not issued by this service, has expired or was \
         revoked. Request a new one with POST /api/oauth/token (HTTP Basic with the service account's client id \
         and secret, form grant_type=client_credentials).";
    let token = token.trim();
    if token.is_empty() || token.len() > 4096 {
        return Err(invalid(UNKNOWN));
    }
    let digest = sha256(token.as_bytes());
    let record = match state.store.get_access_token(&digest).await {
        Ok(r) => r,
        Err(StoreError::NotFound { .. }) => return Err(invalid(UNKNOWN)),
        Err(e) => return Err(e.into()),
    };
    // The store found the row by this digest; comparing again costs nothing and does not depend
    // on how the database compares keys.
    if aws_lc_rs::constant_time::verify_slices_are_equal(&record.token_sha256, &digest).is_err()
        || !record.is_active(state.now())
    {
        return Err(invalid(UNKNOWN));
    }
    let account = match state.store.get_service_account(&record.client_id).await {
        Ok(a) => a,
        Err(StoreError::NotFound { .. }) => return Err(invalid(UNKNOWN)),
        Err(e) => return Err(e.into()),
    };
    Ok(Caller {
        principal: Principal::ServiceAccount(account.client_id.clone()),
        org_id: account.org_id,
        roles: account.roles,
        label: account.client_id.as_str().to_owned(),
    })
}
