//! Entra ID, as served on `login.microsoftonline.com` and the sovereign login hosts: the token
//! endpoint for the client-credentials grant (client secret, certificate assertion, federated
//! assertion), OIDC discovery, JWKS and MSAL instance discovery.
//!
//! Wire formats and error codes follow `shared/reference/azure-protocols.md` §1–§2. Every error
//! is an AADSTS body from [`errors::aad`]. Checks run in Entra's order as far as it shows from
//! outside: tenant, request shape, scope, application and service principal in that tenant,
//! credential, then the account state. Nothing here logs a request body: it carries secrets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use base64::engine::{DecodePaddingMode, general_purpose};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use atrest_domain::{AzureEnvironment, HostKind};

use crate::Ctx;
use crate::errors;
use crate::http::{body_bytes, is_loopback_host, path_segments, query_pairs, request_info};
use crate::server::RequestInfo;
use crate::state::{Application, ServicePrincipal, State as Model};
use crate::tokens::{GRAPH_APP_ID, arm_resources};

/// Clock skew Entra tolerates on assertion `exp`/`nbf`.
const CLOCK_SKEW_SECS: i64 = 300;
/// How long fetched issuer metadata and keys are reused.
const ISSUER_TTL: Duration = Duration::from_secs(600);
/// A `kid` missing from a cached JWKS triggers a refetch, at most this often per issuer
/// (issuers rotate keys; a flood of bad `kid`s must not turn into a flood of fetches).
const ISSUER_REFETCH_MIN: Duration = Duration::from_secs(5);
/// Largest OIDC metadata or JWKS document accepted from an external issuer.
const ISSUER_DOC_MAX_BYTES: usize = 1024 * 1024;
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Base64url that accepts padded and unpadded input (JWT producers differ).
const B64URL_ANY: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub fn router() -> Router<Ctx> {
    // One dispatcher instead of axum routes: paths carry tenant names and every miss must
    // still answer in AADSTS form, which is simplest when the matching is written out here.
    Router::new().fallback(dispatch)
}

fn json_ok(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

fn stamp(unix: i64) -> String {
    let f = time::macros::format_description!("[month]/[day]/[year] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(f).ok())
        .unwrap_or_else(|| unix.to_string())
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

async fn dispatch(State(ctx): State<Ctx>, req: Request) -> Response {
    let info = request_info(&req);
    let Some(segs) = path_segments(req.uri().path()) else {
        return errors::aad(StatusCode::BAD_REQUEST, "invalid_request", 900144, "The request path is not valid.");
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let query = query_pairs(&req).unwrap_or_default();
    match lower.as_slice() {
        [_, "oauth2", "v2.0", "token"] | [_, "oauth2", "token"] => {
            if method != Method::POST {
                return only_post(&method);
            }
            let v1 = lower.len() == 3;
            let body = body_bytes(req.into_body()).await;
            token_endpoint(&ctx, &info, segs[0], v1, &body).await
        }
        ["common", "discovery", "instance"] if method == Method::GET => instance_discovery(&info, &query),
        [_, "v2.0", ".well-known", "openid-configuration"] if method == Method::GET => {
            openid_configuration(&ctx, &info, segs[0], true)
        }
        [_, ".well-known", "openid-configuration"] if method == Method::GET => {
            openid_configuration(&ctx, &info, segs[0], false)
        }
        [_, "discovery", "v2.0", "keys"] if method == Method::GET => jwks(&ctx, &info, segs[0], true),
        [_, "discovery", "keys"] if method == Method::GET => jwks(&ctx, &info, segs[0], false),
        ["common", "discovery", "instance"]
        | [_, "v2.0", ".well-known", "openid-configuration"]
        | [_, ".well-known", "openid-configuration"]
        | [_, "discovery", "v2.0", "keys"]
        | [_, "discovery", "keys"] => crate::server::method_not_allowed(req).await,
        _ => crate::server::not_found(req).await,
    }
}

fn only_post(method: &Method) -> Response {
    errors::aad(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        900561,
        &format!("The endpoint only accepts POST requests. Received a {method} request."),
    )
}

// ---------------------------------------------------------------------------------------------
// Tenants and URLs
// ---------------------------------------------------------------------------------------------

/// A tenant path segment as Entra reads it.
enum TenantRef {
    /// `common`, `organizations` or `consumers`.
    Generic(String),
    Known(Uuid),
}

fn tenant_not_found(tenant: &str) -> Response {
    errors::aad(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
        ),
    )
}

#[allow(clippy::result_large_err)]
fn resolve_tenant(state: &Model, segment: &str) -> Result<TenantRef, Response> {
    let lower = segment.to_ascii_lowercase();
    if matches!(lower.as_str(), "common" | "organizations" | "consumers") {
        return Ok(TenantRef::Generic(lower));
    }
    match state.find_tenant(segment) {
        Some(t) => Ok(TenantRef::Known(t.id)),
        None => Err(tenant_not_found(segment)),
    }
}

/// Where endpoints live (`https://{Host as sent}`), and the issuer base: Entra's own login host
/// for real host names, the request origin when the client reached us by a loopback address
/// (so every URL in a discovery document is usable from that client).
fn bases(info: &RequestInfo) -> (String, String) {
    let endpoint = info.origin.trim_end_matches('/').to_string();
    let issuer = if is_loopback_host(&info.host) { endpoint.clone() } else { info.cloud.authority_url() };
    (endpoint, issuer)
}

fn cloud_instance_name(cloud: AzureEnvironment) -> &'static str {
    match cloud {
        AzureEnvironment::Azure => "microsoftonline.com",
        AzureEnvironment::AzureChina => "partner.microsoftonline.cn",
        AzureEnvironment::AzureUsGovernment => "microsoftonline.us",
    }
}

fn cloud_graph_host_name(cloud: AzureEnvironment) -> &'static str {
    match cloud {
        AzureEnvironment::Azure | AzureEnvironment::AzureUsGovernment => "graph.windows.net",
        AzureEnvironment::AzureChina => "graph.chinacloudapi.cn",
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

fn openid_configuration(ctx: &Ctx, info: &RequestInfo, tenant: &str, v2: bool) -> Response {
    let state = ctx.snapshot();
    let tid = match resolve_tenant(&state, tenant) {
        Ok(TenantRef::Known(id)) => id.to_string(),
        // Entra's documents for the multi-tenant endpoints carry this literal template.
        Ok(TenantRef::Generic(_)) => "{tenantid}".to_string(),
        Err(resp) => return resp,
    };
    let (ep, iss) = bases(info);
    let cloud = info.cloud;
    let graph = cloud.graph_host();
    let mut doc = if v2 {
        json!({
            "token_endpoint": format!("{ep}/{tid}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{ep}/{tid}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{iss}/{tid}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": format!("https://{graph}/oidc/userinfo"),
            "authorization_endpoint": format!("{ep}/{tid}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{ep}/{tid}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{ep}/{tid}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": format!("{ep}/{tid}/kerberos"),
        })
    } else {
        // The v1 document: issuer in the sts.windows.net form that v1 access tokens carry.
        let v1_iss = if is_loopback_host(&info.host) {
            format!("{iss}/{tid}/")
        } else {
            format!("https://sts.windows.net/{tid}/")
        };
        json!({
            "token_endpoint": format!("{ep}/{tid}/oauth2/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{ep}/common/discovery/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": v1_iss,
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{ep}/{tid}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{ep}/{tid}/oauth2/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{ep}/{tid}/oauth2/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
            "check_session_iframe": format!("{ep}/{tid}/oauth2/checksession"),
            "userinfo_endpoint": format!("{ep}/{tid}/openid/userinfo"),
            "kerberos_endpoint": format!("{ep}/{tid}/kerberos"),
        })
    };
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("tenant_region_scope".into(), json!("WW"));
        obj.insert("cloud_instance_name".into(), json!(cloud_instance_name(cloud)));
        obj.insert("cloud_graph_host_name".into(), json!(cloud_graph_host_name(cloud)));
        obj.insert("msgraph_host".into(), json!(graph));
        obj.insert("rbac_url".into(), json!("https://pas.windows.net"));
    }
    let mut resp = json_ok(StatusCode::OK, doc);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=86400, private"));
    resp
}

fn jwks(ctx: &Ctx, info: &RequestInfo, tenant: &str, v2: bool) -> Response {
    let state = ctx.snapshot();
    let tid = match resolve_tenant(&state, tenant) {
        Ok(TenantRef::Known(id)) => id.to_string(),
        Ok(TenantRef::Generic(_)) => "{tenantid}".to_string(),
        Err(resp) => return resp,
    };
    let (_, iss) = bases(info);
    let issuer = if v2 { format!("{iss}/{tid}/v2.0") } else { format!("https://sts.windows.net/{tid}/") };
    let mut key = ctx.signer.jwk(&issuer);
    if let Some(obj) = key.as_object_mut() {
        obj.insert("cloud_instance_name".into(), json!(cloud_instance_name(info.cloud)));
    }
    let mut resp = json_ok(StatusCode::OK, json!({ "keys": [key] }));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=86400, private"));
    resp
}

/// Entra's public-cloud alias table, as instance discovery returns it.
fn instance_metadata() -> Value {
    json!([
        {"preferred_network": "login.microsoftonline.com", "preferred_cache": "login.windows.net",
         "aliases": ["login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"]},
        {"preferred_network": "login.partner.microsoftonline.cn", "preferred_cache": "login.partner.microsoftonline.cn",
         "aliases": ["login.partner.microsoftonline.cn", "login.chinacloudapi.cn"]},
        {"preferred_network": "login.microsoftonline.de", "preferred_cache": "login.microsoftonline.de",
         "aliases": ["login.microsoftonline.de"]},
        {"preferred_network": "login.microsoftonline.us", "preferred_cache": "login.microsoftonline.us",
         "aliases": ["login.microsoftonline.us", "login.usgovcloudapi.net"]},
        {"preferred_network": "login-us.microsoftonline.com", "preferred_cache": "login-us.microsoftonline.com",
         "aliases": ["login-us.microsoftonline.com"]}
    ])
}

fn instance_discovery(info: &RequestInfo, query: &[(String, String)]) -> Response {
    let get = |k: &str| query.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
    let api_version = get("api-version").unwrap_or("1.1").to_string();
    let mut metadata = instance_metadata();
    let (authority, tenant) = match get("authorization_endpoint") {
        None => (info.origin.trim_end_matches('/').to_string(), "common".to_string()),
        Some(ep) => {
            let invalid = || {
                errors::aad(
                    StatusCode::BAD_REQUEST,
                    "invalid_instance",
                    50049,
                    &format!(
                        "Unknown or invalid instance. The authority in '{ep}' is not an Entra ID instance this emulator serves (use https://login.microsoftonline.com, a sovereign login host, or the emulator's own loopback address)."
                    ),
                )
            };
            let Ok(url) = url::Url::parse(ep) else { return invalid() };
            let Some(host) =
                url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
            else {
                return invalid();
            };
            let known = matches!(AzureEnvironment::classify_host(&host), Some((_, HostKind::Login)))
                || host == "login.partner.microsoftonline.cn"
                || host == "login-us.microsoftonline.com";
            if url.scheme() != "https" || !(known || is_loopback_host(&host)) {
                return invalid();
            }
            let authority = match url.port() {
                Some(p) => format!("https://{}:{p}", url.host_str().unwrap_or(&host)),
                None => format!("https://{}", url.host_str().unwrap_or(&host)),
            };
            if !known && let Some(list) = metadata.as_array_mut() {
                // The emulator's own address is an instance too, aliased to nothing else.
                let name = authority.trim_start_matches("https://").to_string();
                list.push(json!({"preferred_network": name, "preferred_cache": name, "aliases": [name]}));
            }
            let tenant = url.path_segments().and_then(|mut s| s.next()).filter(|s| !s.is_empty()).unwrap_or("common");
            (authority, tenant.to_string())
        }
    };
    json_ok(
        StatusCode::OK,
        json!({
            "tenant_discovery_endpoint": format!("{authority}/{tenant}/v2.0/.well-known/openid-configuration"),
            "api-version": api_version,
            "metadata": metadata,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------------------

fn missing_param(name: &str) -> Response {
    errors::aad(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
    )
}

fn invalid_client(code: u32, message: &str) -> Response {
    errors::aad(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
}

fn app_not_found(client_id: &str, tenant: &str) -> Response {
    errors::aad(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700016,
        &format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
        ),
    )
}

fn malformed(detail: &str) -> Response {
    errors::aad(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
        &format!("JWT token is invalid or malformed. {detail}"),
    )
}

fn invalid_scope(code: u32, message: &str) -> Response {
    errors::aad(StatusCode::BAD_REQUEST, "invalid_scope", code, message)
}

/// The token audience for `resource` (a scope without `/.default`, or a v1 `resource`), or
/// `None` when the cloud has no such resource. The audience keeps a trailing slash when the
/// caller sent one, as Entra does (`https://management.core.windows.net/`).
fn audience_for(cloud: AzureEnvironment, resource: &str) -> Option<String> {
    let slash = resource.ends_with('/');
    let bare = resource.strip_suffix('/').unwrap_or(resource).to_ascii_lowercase();
    let vault = cloud.vault_resource();
    let graph = cloud.graph_resource();
    let known: Vec<&str> =
        [vault.as_str(), graph.as_str(), GRAPH_APP_ID].into_iter().chain(arm_resources(cloud)).collect();
    let canonical = known.into_iter().find(|k| *k == bare)?;
    Some(if slash { format!("{canonical}/") } else { canonical.to_string() })
}

#[allow(clippy::result_large_err)]
fn audience_from_scope(cloud: AzureEnvironment, scope: &str) -> Result<String, Response> {
    // MSAL may add the OIDC scopes; they carry no resource and Entra drops them here.
    let parts: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| !matches!(s.to_ascii_lowercase().as_str(), "openid" | "profile" | "offline_access" | "email"))
        .collect();
    let not_valid = |s: &str| {
        invalid_scope(
            70011,
            &format!("The provided value for the input parameter 'scope' is not valid. The scope {s} is not valid."),
        )
    };
    let is_default = |s: &str| s.to_ascii_lowercase().ends_with("/.default") || s.eq_ignore_ascii_case(".default");
    match parts.as_slice() {
        [] => Err(not_valid(scope)),
        [one] => {
            if one.eq_ignore_ascii_case(".default") || one.eq_ignore_ascii_case("/.default") {
                return Err(invalid_scope(
                    700023,
                    &format!(
                        "The provided value for the input parameter 'scope' is not valid. The scope {one} names no resource: send '{{resource}}/.default', e.g. 'https://vault.azure.net/.default'."
                    ),
                ));
            }
            if !is_default(one) {
                return Err(invalid_scope(
                    70011,
                    &format!(
                        "The provided value for the input parameter 'scope' is not valid. The scope {one} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                ));
            }
            let resource = &one[..one.len() - "/.default".len()];
            audience_for(cloud, resource).ok_or_else(|| not_valid(one))
        }
        many if many.iter().all(|s| is_default(s)) => Err(invalid_scope(
            700022,
            &format!(
                "The provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid. Request a token for one resource at a time."
            ),
        )),
        _ => Err(invalid_scope(
            70011,
            &format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid. Client credential flows must have exactly one scope of the form '{{resource}}/.default'."
            ),
        )),
    }
}

async fn token_endpoint(ctx: &Ctx, info: &RequestInfo, tenant_seg: &str, v1: bool, body: &[u8]) -> Response {
    let state = ctx.snapshot();
    let tid = match resolve_tenant(&state, tenant_seg) {
        Ok(TenantRef::Known(id)) => id,
        Ok(TenantRef::Generic(name)) => {
            return errors::aad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50059,
                &format!(
                    "No tenant-identifying information found in either the request or implied by any provided credentials. The client-credentials grant needs a tenant: use /{{tenant-id}}/oauth2/v2.0/token instead of /{name}/."
                ),
            );
        }
        Err(resp) => return resp,
    };
    let form: Vec<(String, String)> = match serde_urlencoded::from_bytes(body) {
        Ok(f) => f,
        Err(_) => {
            return errors::aad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'. The body is not valid application/x-www-form-urlencoded.",
            );
        }
    };
    let param = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());

    let Some(grant_type) = param("grant_type") else { return missing_param("grant_type") };
    if grant_type != "client_credentials" {
        return errors::aad(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!(
                "The app requested an unsupported grant type '{grant_type}'. This emulator supports 'client_credentials' only."
            ),
        );
    }
    let Some(client_id) = param("client_id") else { return missing_param("client_id") };
    let audience = if v1 {
        let Some(resource) = param("resource") else { return missing_param("resource") };
        match audience_for(info.cloud, resource) {
            Some(a) => a,
            None => {
                return errors::aad(
                    StatusCode::BAD_REQUEST,
                    "invalid_resource",
                    500011,
                    &format!(
                        "The resource principal named {resource} was not found in the tenant named {tenant_seg}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                    ),
                );
            }
        }
    } else {
        let Some(scope) = param("scope") else { return missing_param("scope") };
        match audience_from_scope(info.cloud, scope) {
            Ok(a) => a,
            Err(resp) => return resp,
        }
    };

    // The application, and its service principal in the tenant the request names.
    let Some(app) = client_id.parse::<Uuid>().ok().and_then(|id| state.app_by_app_id(id)) else {
        return app_not_found(client_id, tenant_seg);
    };
    if !app.multi_tenant && app.home_tenant != tid {
        return app_not_found(client_id, tenant_seg);
    }
    let Some(sp) = state.sp_in_tenant(app.app_id, tid) else {
        return app_not_found(client_id, tenant_seg);
    };

    let appidacr = match (param("client_secret"), param("client_assertion")) {
        (Some(_), Some(_)) => {
            return errors::aad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain only one of the following parameters: 'client_assertion' or 'client_secret'.",
            );
        }
        (None, None) => {
            return invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
        (Some(secret), None) => match check_secret(app, secret, ctx.now()) {
            Ok(()) => "1",
            Err(resp) => return resp,
        },
        (None, Some(assertion)) => {
            match param("client_assertion_type") {
                Some(JWT_BEARER) => {}
                Some(other) => {
                    return errors::aad(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        900144,
                        &format!(
                            "The request body must contain the following parameter: 'client_assertion_type' with the value '{JWT_BEARER}' (got '{other}')."
                        ),
                    );
                }
                None => return missing_param("client_assertion_type"),
            }
            match check_assertion(ctx, info, &state, app, tid, assertion).await {
                Ok(()) => "2",
                Err(resp) => return resp,
            }
        }
    };

    if !sp.account_enabled {
        return errors::aad(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            7000112,
            &format!("Application '{}'({}) is disabled.", app.app_id, sp.display_name),
        );
    }
    token_response(ctx, sp, &audience, appidacr)
}

fn token_response(ctx: &Ctx, sp: &ServicePrincipal, audience: &str, appidacr: &str) -> Response {
    let (token, lifetime) = crate::tokens::issue_access_token(ctx, sp, audience, appidacr);
    let mut resp = json_ok(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
    );
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

#[allow(clippy::result_large_err)]
fn check_secret(app: &Application, secret: &str, now: i64) -> Result<(), Response> {
    let presented = crate::state::sha256_hex(secret.as_bytes());
    let mut expired = false;
    for cred in &app.secrets {
        // Constant time: the comparison must not tell how much of a hash matched.
        if aws_lc_rs::constant_time::verify_slices_are_equal(cred.sha256.as_bytes(), presented.as_bytes()).is_ok() {
            // A secret whose startDateTime is still ahead does not work yet, as in Entra.
            if cred.end_date_time > now && cred.start_date_time.is_none_or(|start| start <= now) {
                return Ok(());
            }
            expired = true;
        }
    }
    if expired {
        return Err(invalid_client(
            7000222,
            &format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.app_id
            ),
        ));
    }
    Err(invalid_client(
        7000215,
        &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
            app.app_id
        ),
    ))
}

/// A JWT split into its parts. Claims are kept as JSON: assertions from different producers
/// differ in which claims they carry and in their types (`aud` string or array).
struct Jwt {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signed: String,
    signature: Vec<u8>,
}

fn parse_jwt(token: &str) -> Option<Jwt> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let header: Map<String, Value> = serde_json::from_slice(&B64URL_ANY.decode(h).ok()?).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&B64URL_ANY.decode(p).ok()?).ok()?;
    let signature = B64URL_ANY.decode(s).ok()?;
    Some(Jwt { header, claims, signed: format!("{h}.{p}"), signature })
}

impl Jwt {
    fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }
    fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
    /// A NumericDate claim; `Err` when present but not a number.
    fn claim_time(&self, name: &str) -> Result<Option<i64>, ()> {
        match self.claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)).map(Some).ok_or(()),
        }
    }
    /// `aud` as a list (a JWT may carry one string or an array).
    fn audiences(&self) -> Option<Vec<&str>> {
        match self.claims.get("aud")? {
            Value::String(s) => Some(vec![s.as_str()]),
            Value::Array(a) => a.iter().map(Value::as_str).collect(),
            _ => None,
        }
    }
}

/// Certificate thumbprint bytes from a JWT header value: hex, or base64 in the standard or
/// url-safe alphabet, padded or not (producers differ, see protocols §1.2).
fn thumbprint_bytes(value: &str) -> Option<Vec<u8>> {
    let v = value.trim();
    if (v.len() == 40 || v.len() == 64) && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(v).ok();
    }
    let normalized: String = v
        .trim_end_matches('=')
        .chars()
        .map(|c| {
            if c == '-' {
                '+'
            } else if c == '_' {
                '/'
            } else {
                c
            }
        })
        .collect();
    STANDARD_NO_PAD.decode(normalized).ok()
}

/// Check a client assertion: a certificate assertion when `iss` is the client id, otherwise a
/// federated one (an external issuer's token matched against the app's federated credentials).
async fn check_assertion(
    ctx: &Ctx,
    info: &RequestInfo,
    state: &Model,
    app: &Application,
    tid: Uuid,
    assertion: &str,
) -> Result<(), Response> {
    let Some(jwt) = parse_jwt(assertion) else {
        return Err(malformed(
            "The client_assertion is not a JWT: it must be three base64url segments (header.payload.signature) whose first two are JSON objects.",
        ));
    };
    let Some(iss) = jwt.claim_str("iss") else {
        return Err(malformed("The client_assertion has no 'iss' claim."));
    };
    if iss.eq_ignore_ascii_case(&app.app_id.to_string()) {
        check_certificate_assertion(ctx, info, state, app, tid, &jwt)
    } else {
        check_federated_assertion(ctx, app, &jwt).await
    }
}

#[allow(clippy::result_large_err)]
fn check_times(jwt: &Jwt, now: i64, certificate: bool) -> Result<(), Response> {
    let Ok(Some(exp)) = jwt.claim_time("exp") else {
        return Err(malformed("The client_assertion has no numeric 'exp' claim."));
    };
    let Ok(nbf) = jwt.claim_time("nbf") else {
        return Err(malformed("The client_assertion's 'nbf' claim is not a number."));
    };
    if jwt.claim_time("iat").is_err() {
        return Err(malformed("The client_assertion's 'iat' claim is not a number."));
    }
    let expired = now > exp + CLOCK_SKEW_SECS;
    let early = nbf.is_some_and(|n| now + CLOCK_SKEW_SECS < n);
    if expired || early {
        let doc = if certificate {
            " Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials ."
        } else {
            ""
        };
        return Err(invalid_client(
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}.{doc}",
                stamp(now),
                nbf.map(stamp).unwrap_or_else(|| "(no nbf)".into()),
                stamp(exp)
            ),
        ));
    }
    Ok(())
}

/// Does an assertion `aud` name this token endpoint? Entra accepts its token URL with the
/// tenant as GUID or domain, on any of the cloud's login host names (with or without a port),
/// and the v1 token URL.
fn audience_is_token_endpoint(aud: &str, info: &RequestInfo, state: &Model, tid: Uuid) -> bool {
    let Ok(url) = url::Url::parse(aud) else { return false };
    let Some(host) = url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
    else {
        return false;
    };
    let host_ok = host == info.host
        || matches!(AzureEnvironment::classify_host(&host), Some((c, HostKind::Login)) if c == info.cloud)
        || (is_loopback_host(&host) && is_loopback_host(&info.host));
    if url.scheme() != "https" || !host_ok {
        return false;
    }
    let segs: Vec<String> =
        url.path().trim_end_matches('/').split('/').filter(|s| !s.is_empty()).map(|s| s.to_ascii_lowercase()).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let tenant = match segs.as_slice() {
        [t, "oauth2", "v2.0", "token"] | [t, "oauth2", "token"] => *t,
        _ => return false,
    };
    state.find_tenant(tenant).is_some_and(|t| t.id == tid)
}

#[allow(clippy::result_large_err)]
fn check_certificate_assertion(
    ctx: &Ctx,
    info: &RequestInfo,
    state: &Model,
    app: &Application,
    tid: Uuid,
    jwt: &Jwt,
) -> Result<(), Response> {
    let alg = jwt.header_str("alg").unwrap_or("");
    let params: &'static aws_lc_rs::signature::RsaParameters = match alg {
        "RS256" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        "PS256" => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        other => {
            return Err(invalid_client(
                700027,
                &format!(
                    "Client assertion failed signature validation. [Reason - The signing algorithm '{other}' is not supported; sign the assertion with RS256 or PS256.]"
                ),
            ));
        }
    };
    // Which certificate signed it: x5t#S256 (SHA-256), x5t (SHA-1) or kid (either).
    let hints: Vec<Vec<u8>> =
        ["x5t#S256", "x5t", "kid"].iter().filter_map(|h| jwt.header_str(h)).filter_map(thumbprint_bytes).collect();
    let Some(first) = hints.first() else {
        return Err(invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found: the assertion header carries no 'x5t', 'x5t#S256' or 'kid' naming the certificate.]",
        ));
    };
    let presented = hex::encode_upper(first);
    let cert = app.certificates.iter().find(|c| {
        hints.iter().any(|h| {
            let hx = hex::encode(h);
            c.sha1.eq_ignore_ascii_case(&hx) || c.sha256.eq_ignore_ascii_case(&hx)
        })
    });
    let Some(cert) = cert else {
        return Err(invalid_client(
            700027,
            &format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{presented}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                app.app_id
            ),
        ));
    };
    let now = ctx.now();
    if now > cert.not_after || now < cert.not_before {
        return Err(invalid_client(
            700027,
            &format!(
                "Client assertion contains an invalid signature. [Reason - The key used is expired or not yet valid., Thumbprint of key used by client: '{presented}', Found key 'Start={}, End={}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                stamp(cert.not_before),
                stamp(cert.not_after),
                app.app_id
            ),
        ));
    }
    let spki = general_purpose::STANDARD.decode(&cert.spki_der_b64).unwrap_or_default();
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(params, spki);
    if key.verify(jwt.signed.as_bytes(), &jwt.signature).is_err() {
        return Err(invalid_client(700027, "Client assertion failed signature validation."));
    }
    let client_id = app.app_id.to_string();
    if !jwt.claim_str("sub").is_some_and(|s| s.eq_ignore_ascii_case(&client_id)) {
        return Err(invalid_client(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter: 'iss' and 'sub' must both be the client id. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
        ));
    }
    let Some(auds) = jwt.audiences() else {
        return Err(malformed("The client_assertion has no 'aud' claim."));
    };
    if !auds.iter().any(|a| audience_is_token_endpoint(a, info, state, tid)) {
        let expected = format!("{}/{tid}/oauth2/v2.0/token", info.cloud.authority_url());
        return Err(invalid_client(
            700027,
            &format!(
                "Client assertion failed validation. [Reason - The audience '{}' is not this token endpoint; set 'aud' to '{expected}'.]",
                auds.join(" ")
            ),
        ));
    }
    check_times(jwt, now, true)
}

async fn check_federated_assertion(ctx: &Ctx, app: &Application, jwt: &Jwt) -> Result<(), Response> {
    let iss = jwt.claim_str("iss").unwrap_or_default();
    let help = "Check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
    // Issuer and subject match exactly and case-sensitively, as Entra does.
    let by_issuer: Vec<_> = app.federated.iter().filter(|f| f.issuer == iss).collect();
    if by_issuer.is_empty() {
        return Err(invalid_client(
            700211,
            &format!("No matching federated identity record found for presented assertion issuer '{iss}'. {help}"),
        ));
    }
    let Some(sub) = jwt.claim_str("sub") else {
        return Err(malformed("The client_assertion has no 'sub' claim."));
    };
    let by_subject: Vec<_> = by_issuer.into_iter().filter(|f| f.subject == sub).collect();
    if by_subject.is_empty() {
        return Err(invalid_client(
            700213,
            &format!("No matching federated identity record found for presented assertion subject '{sub}'. {help}"),
        ));
    }
    let Some(auds) = jwt.audiences() else {
        return Err(malformed("The client_assertion has no 'aud' claim."));
    };
    if !by_subject.iter().any(|f| f.audiences.iter().any(|fa| auds.contains(&fa.as_str()))) {
        let expected: Vec<&str> = by_subject.iter().flat_map(|f| f.audiences.iter().map(String::as_str)).collect();
        return Err(invalid_client(
            70021,
            &format!(
                "No matching federated identity record found for presented assertion. The assertion audience '{}' is not an audience of the matching federated identity credential (expected one of: {}). {help}",
                auds.join(" "),
                expected.join(", ")
            ),
        ));
    }
    if jwt.header_str("alg") != Some("RS256") {
        return Err(invalid_client(
            700027,
            &format!(
                "Client assertion failed signature validation. [Reason - The signing algorithm '{}' is not supported for federated assertions; the issuer must sign with RS256.]",
                jwt.header_str("alg").unwrap_or("")
            ),
        ));
    }
    let kid = jwt.header_str("kid");
    let key = match ctx.issuers.signing_key(ctx, iss, kid).await {
        Ok(Some(k)) => k,
        Ok(None) => {
            return Err(invalid_client(
                700027,
                &format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not found: kid '{}' is not in the JWKS of issuer '{iss}'.]",
                    kid.unwrap_or("(none)")
                ),
            ));
        }
        Err(reason) => {
            return Err(errors::aad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50166,
                &format!("Request to External OIDC endpoint failed. [Issuer '{iss}': {reason}]"),
            ));
        }
    };
    let public = aws_lc_rs::signature::RsaPublicKeyComponents { n: &key.n, e: &key.e };
    if public.verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, jwt.signed.as_bytes(), &jwt.signature).is_err()
    {
        return Err(invalid_client(700027, "Client assertion failed signature validation."));
    }
    check_times(jwt, ctx.now(), false)
}

// ---------------------------------------------------------------------------------------------
// External issuers (workload identity federation)
// ---------------------------------------------------------------------------------------------

/// One RSA signing key from an external issuer's JWKS.
#[derive(Clone)]
pub struct IssuerKey {
    kid: Option<String>,
    n: Vec<u8>,
    e: Vec<u8>,
}

struct CachedIssuer {
    keys: Vec<IssuerKey>,
    fetched: Instant,
}

/// Cached OIDC metadata and JWKS of external (federated) issuers, and the HTTP client that
/// fetches them (rebuilt when the trusted CA list changes).
#[derive(Default)]
pub struct IssuerCache {
    entries: Mutex<HashMap<String, CachedIssuer>>,
    client: Mutex<Option<(String, reqwest::Client)>>,
}

/// Entra fetches only https metadata. Plain http is allowed for loopback issuers when the admin
/// setting `allow_http_issuers` is on, for tests that serve an issuer without TLS.
fn check_fetch_url(raw: &str, allow_http: bool, what: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("the {what} '{raw}' is not a URL ({e})"))?;
    let host = url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase());
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http && host.as_deref().is_some_and(is_loopback_host) => Ok(url),
        "http" => Err(format!(
            "the {what} '{raw}' is plain http; Entra requires https (the emulator allows http only for loopback issuers with the admin setting allow_http_issuers)"
        )),
        other => Err(format!("the {what} '{raw}' has scheme '{other}'; use https")),
    }
}

impl IssuerCache {
    /// The HTTP client for issuer discovery: system roots plus the admin-configured CAs.
    fn http(&self, pems: &[String]) -> Result<reqwest::Client, String> {
        let fingerprint = crate::state::sha256_hex(pems.join("\n").as_bytes());
        if let Some((fp, client)) = self.client.lock().as_ref()
            && *fp == fingerprint
        {
            return Ok(client.clone());
        }
        let mut certs = Vec::new();
        for pem in pems {
            certs.extend(
                reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|e| format!("a trusted_issuer_ca_pems entry is not a PEM certificate ({e})"))?,
            );
        }
        let base = || {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::limited(3))
        };
        // The platform verifier trusts the system roots; if it cannot start (no system store),
        // trust at least the configured CAs.
        let client = base()
            .tls_certs_merge(certs.clone())
            .build()
            .or_else(|_| base().tls_certs_only(certs).build())
            .map_err(|e| format!("building the HTTP client failed ({e})"))?;
        *self.client.lock() = Some((fingerprint, client.clone()));
        Ok(client)
    }

    /// The issuer's signing key named `kid` (or its only key when the assertion names none).
    /// `Ok(None)`: the JWKS has no such key. `Err`: discovery failed (the reason says where).
    async fn signing_key(&self, ctx: &Ctx, issuer: &str, kid: Option<&str>) -> Result<Option<IssuerKey>, String> {
        let pick = |keys: &[IssuerKey]| -> Option<IssuerKey> {
            match kid {
                Some(k) => keys.iter().find(|key| key.kid.as_deref() == Some(k)).cloned(),
                None if keys.len() == 1 => keys.first().cloned(),
                None => None,
            }
        };
        let cached = {
            let entries = self.entries.lock();
            entries.get(issuer).map(|c| (pick(&c.keys), c.fetched.elapsed()))
        };
        match cached {
            Some((Some(key), age)) if age < ISSUER_TTL => return Ok(Some(key)),
            Some((None, age)) if age < ISSUER_REFETCH_MIN => return Ok(None),
            _ => {}
        }
        let keys = self.fetch(ctx, issuer).await?;
        let found = pick(&keys);
        let mut entries = self.entries.lock();
        // Bound the cache: issuers come from admin-configured credentials, so this is a backstop.
        if entries.len() >= 1000 {
            entries.clear();
        }
        entries.insert(issuer.to_string(), CachedIssuer { keys, fetched: Instant::now() });
        Ok(found)
    }

    async fn fetch(&self, ctx: &Ctx, issuer: &str) -> Result<Vec<IssuerKey>, String> {
        let (pems, allow_http) =
            ctx.read(|s| (s.settings.trusted_issuer_ca_pems.clone(), s.settings.allow_http_issuers));
        let base = check_fetch_url(issuer, allow_http, "issuer")?;
        let client = self.http(&pems)?;
        let config_url = format!("{}/.well-known/openid-configuration", base.as_str().trim_end_matches('/'));
        let config = get_json(&client, &config_url).await?;
        let jwks_uri = config
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{config_url} has no 'jwks_uri'"))?
            .to_string();
        let jwks_url = check_fetch_url(&jwks_uri, allow_http, "jwks_uri")?;
        let jwks = get_json(&client, jwks_url.as_str()).await?;
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{jwks_uri} has no 'keys' array"))?
            .iter()
            .filter(|k| k.get("kty").and_then(Value::as_str) == Some("RSA"))
            // Entra caches at most 100 keys per issuer.
            .take(100)
            .filter_map(|k| {
                Some(IssuerKey {
                    kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
                    n: B64URL_ANY.decode(k.get("n")?.as_str()?).ok()?,
                    e: B64URL_ANY.decode(k.get("e")?.as_str()?).ok()?,
                })
            })
            .collect();
        Ok(keys)
    }

    /// Forget cached issuer documents (used when the trusted CAs change).
    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let mut resp = client.get(url).send().await.map_err(|e| format!("GET {url} failed ({})", error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url} answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading {url} failed ({e})"))? {
        if body.len() + chunk.len() > ISSUER_DOC_MAX_BYTES {
            return Err(format!("{url} is larger than {ISSUER_DOC_MAX_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON ({e})"))
}

/// An error with its sources, so "certificate unknown" is not hidden behind "error sending request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_in_every_encoding() {
        let raw: Vec<u8> = (0u8..20).collect();
        for s in [
            general_purpose::STANDARD.encode(&raw),
            general_purpose::STANDARD_NO_PAD.encode(&raw),
            general_purpose::URL_SAFE.encode(&raw),
            general_purpose::URL_SAFE_NO_PAD.encode(&raw),
            hex::encode(&raw),
            hex::encode_upper(&raw),
        ] {
            assert_eq!(thumbprint_bytes(&s).as_deref(), Some(raw.as_slice()), "{s}");
        }
    }

    #[test]
    fn scopes_map_to_audiences() {
        let c = AzureEnvironment::Azure;
        assert_eq!(
            audience_from_scope(c, "https://vault.azure.net/.default").ok().as_deref(),
            Some("https://vault.azure.net")
        );
        assert_eq!(
            audience_from_scope(c, "https://management.core.windows.net//.default").ok().as_deref(),
            Some("https://management.core.windows.net/")
        );
        assert_eq!(
            audience_from_scope(c, "https://graph.microsoft.com/.default openid profile offline_access")
                .ok()
                .as_deref(),
            Some("https://graph.microsoft.com")
        );
        assert!(audience_from_scope(c, "https://vault.azure.cn/.default").is_err());
        assert!(audience_from_scope(AzureEnvironment::AzureChina, "https://vault.azure.cn/.default").is_ok());
    }
}
