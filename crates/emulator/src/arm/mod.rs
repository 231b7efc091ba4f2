//! The Azure Resource Manager subset: cloud metadata, subscriptions, tenants, resource groups,
//! `Microsoft.KeyVault/vaults` (with access policies) and `Microsoft.Authorization` role
//! definitions and role assignments — what `az login`, `az group`, `az keyvault` and
//! `az role assignment` send on the wire (`shared/reference/azure-protocols.md` §4, §5).
//!
//! Every call goes through the same pipeline, in ARM's order: parse the path ([`path`]),
//! authenticate the bearer token for the ARM audience of the host's cloud, require a
//! well-formed `api-version`, check the subscription and the token's tenant, then authorise
//! the action at the scope with [`crate::authz::rbac_check`] (so Reader reads, Contributor
//! writes resources, and only Owner / User Access Administrator write role assignments),
//! and only then look at the resource itself. Writes run inside [`crate::Ctx::mutate`], so a
//! rejected request never leaves a partial change behind.
//!
//! Choices where the emulator simplifies Azure (documented in `docs/emulator.md`):
//! - a vault `PUT` on an existing vault keeps the properties the body omits;
//! - deleting a vault or a resource group removes the role assignments at and below it
//!   (Azure leaves them orphaned; here a re-created vault of the same name must not silently
//!   inherit old grants), and the vault record with its keys (no soft-deleted vaults);
//! - `networkAcls` is accepted and echoed in the write response, not stored or enforced.

mod filter;
mod path;
mod rbac;
mod resources;
mod vaults;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use uuid::Uuid;

use atrest_domain::AzureEnvironment;

use crate::Ctx;
use crate::errors::{self, Surface};
use crate::server::RequestInfo;
use crate::state::{State, Subscription};
use crate::tokens::{self, AccessClaims, TokenProblem};
use path::ArmRoute;

pub fn router() -> Router<Ctx> {
    // One handler for every path: ARM scopes nest arbitrarily deep, so `path::parse` decides.
    Router::new().fallback(handle)
}

/// An ARM error response (`{"error":{"code","message"}}`), boxed because a `Response` is large.
pub struct ArmError(Box<Response>);

pub type ArmResult<T> = Result<T, ArmError>;

impl ArmError {
    pub fn new(status: StatusCode, code: &str, message: impl AsRef<str>) -> Self {
        Self(Box::new(errors::arm(status, code, message.as_ref())))
    }

    fn with_challenge(mut self, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.0.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status()
    }
}

impl std::fmt::Debug for ArmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ArmError").field(&self.0.status()).finish()
    }
}

impl From<Response> for ArmError {
    fn from(r: Response) -> Self {
        Self(Box::new(r))
    }
}

/// Only a failed write of `state.json` gets here: the change was not applied.
impl From<anyhow::Error> for ArmError {
    fn from(e: anyhow::Error) -> Self {
        Self(Box::new(errors::persist_failed(errors::Surface::Arm, &e)))
    }
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A JSON response with ARM's content type.
pub(crate) fn json(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

pub(crate) fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// `2024-01-01T00:00:00.0000000Z`, the timestamp shape ARM uses.
pub(crate) fn arm_time(unix: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].0000000Z");
    time::OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(f).ok()).unwrap_or_default()
}

/// `10/20/2020 9:04:55 PM`, as ARM writes times in `ExpiredAuthenticationToken`.
fn us_time(unix: i64) -> String {
    let f = time::macros::format_description!(
        "[month padding:none]/[day padding:none]/[year] [hour repr:12 padding:none]:[minute]:[second] [period]"
    );
    time::OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(f).ok()).unwrap_or_default()
}

/// An authenticated request, after the pipeline's common checks.
pub(crate) struct Call {
    pub ctx: Ctx,
    /// The cloud of the ARM host the request used.
    pub cloud: AzureEnvironment,
    pub method: Method,
    pub query: Vec<(String, String)>,
    pub claims: Arc<AccessClaims>,
    pub body: Bytes,
}

impl Call {
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `$filter` query parameter, if it is there and not blank.
    pub fn filter(&self) -> Option<&str> {
        self.query("$filter").map(str::trim).filter(|f| !f.is_empty())
    }

    pub fn oid(&self) -> &str {
        &self.claims.oid
    }

    pub fn now(&self) -> i64 {
        self.ctx.now()
    }

    pub fn parse_body<T: serde::de::DeserializeOwned>(&self) -> ArmResult<T> {
        errors::parse_json(Surface::Arm, &self.body).map_err(ArmError::from)
    }

    /// The subscription `id` in this cloud, seen with this token: 404 when there is no such
    /// subscription, 401 when the token was issued by another tenant.
    pub fn subscription(&self, state: &State, id: Uuid) -> ArmResult<Subscription> {
        let sub = state.subscriptions.get(&id).filter(|s| s.cloud == self.cloud).ok_or_else(|| {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "SubscriptionNotFound",
                format!("The subscription '{id}' could not be found."),
            )
        })?;
        if !sub.tenant_id.to_string().eq_ignore_ascii_case(&self.claims.tid) {
            let login = self.cloud.authority_url();
            let t = sub.tenant_id;
            return Err(ArmError::new(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationTokenTenant",
                format!(
                    "The access token is from the wrong issuer '{}'. It must match the tenant 'https://sts.windows.net/{t}/' associated with this subscription. Please use the authority (URL) '{login}/{t}' to get the token. Note, if the subscription is transferred to another tenant there is no impact to the services, but information about new tenant could take time to propagate (up to an hour). If you just transferred your subscription and see this error message, please try back later.",
                    self.claims.iss
                ),
            )
            .with_challenge(&challenge(
                self.cloud,
                Some(t),
                "The access token is from the wrong issuer. It must match the tenant associated with this subscription.",
            )));
        }
        Ok(sub.clone())
    }

    /// May the caller perform the management `action` at `scope` now?
    pub fn can(&self, state: &State, scope: &str, action: &str) -> bool {
        crate::authz::rbac_check(state, self.oid(), scope, action, false, self.now()).allowed
    }

    /// 403 `AuthorizationFailed` unless the caller may perform `action` at `scope`.
    pub fn authorize(&self, state: &State, scope: &str, action: &str) -> ArmResult<()> {
        if self.can(state, scope, action) {
            return Ok(());
        }
        Err(authorization_failed(self.oid(), action, if scope.is_empty() { "/" } else { scope }))
    }
}

pub(crate) fn authorization_failed(oid: &str, action: &str, scope: &str) -> ArmError {
    ArmError::new(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        format!(
            "The client '{oid}' with object id '{oid}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
        ),
    )
}

/// The `WWW-Authenticate` value ARM sends with a 401.
fn challenge(cloud: AzureEnvironment, tenant: Option<Uuid>, description: &str) -> String {
    let tenant = tenant.map(|t| t.to_string()).unwrap_or_else(|| "common".into());
    format!(
        "Bearer authorization_uri=\"{}/{tenant}\", error=\"invalid_token\", error_description=\"{description}\"",
        cloud.authority_url()
    )
}

/// The `https://management.core.*/` audience each cloud still accepts (the classic one
/// azure-cli's `active_directory_resource_id` names).
fn management_core(cloud: AzureEnvironment) -> &'static str {
    match cloud {
        AzureEnvironment::Azure => "https://management.core.windows.net/",
        AzureEnvironment::AzureChina => "https://management.core.chinacloudapi.cn/",
        AzureEnvironment::AzureUsGovernment => "https://management.core.usgovcloudapi.net/",
    }
}

/// Token audiences ARM accepts in `cloud`, with and without the trailing slash.
fn arm_audiences(cloud: AzureEnvironment) -> [String; 4] {
    let core = management_core(cloud);
    [
        core.to_string(),
        core.trim_end_matches('/').to_string(),
        format!("{}/", cloud.arm_resource()),
        cloud.arm_resource().to_string(),
    ]
}

/// Verify the bearer token for ARM in `cloud`. `tenant` (from the path's subscription) names
/// the authority in the challenge, as ARM does.
fn authenticate(
    ctx: &Ctx,
    headers: &HeaderMap,
    cloud: AzureEnvironment,
    tenant: Option<Uuid>,
) -> ArmResult<Arc<AccessClaims>> {
    let unauthorized = |code: &str, message: String, description: &str| {
        ArmError::new(StatusCode::UNAUTHORIZED, code, message).with_challenge(&challenge(cloud, tenant, description))
    };
    // A header that is there but is not `Bearer <token>` is a different failure from a bad token.
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let bearer = v
            .to_str()
            .ok()
            .and_then(|s| s.split_once(' '))
            .is_some_and(|(scheme, rest)| scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty());
        if !bearer {
            return Err(unauthorized(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.".into(),
                "The authentication failed because of an invalid 'Authorization' header.",
            ));
        }
    }
    let claims = tokens::authenticate(ctx, headers).map_err(|problem| match problem {
        TokenProblem::Missing => unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.".into(),
            "The authentication failed because of missing 'Authorization' header.",
        ),
        TokenProblem::Expired => {
            // The signature verified before the time check failed, so the payload is ours.
            let exp = token_exp(headers);
            unauthorized(
                "ExpiredAuthenticationToken",
                format!(
                    "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                    exp.map(us_time).unwrap_or_default(),
                    us_time(ctx.now())
                ),
                "The access token expiry UTC time is earlier than current UTC time.",
            )
        }
        TokenProblem::NotYetValid => unauthorized(
            "InvalidAuthenticationToken",
            "The access token is not yet valid: its 'nbf' time is later than the current UTC time.".into(),
            "The access token is not yet valid.",
        ),
        TokenProblem::Malformed | TokenProblem::BadSignature => unauthorized(
            "InvalidAuthenticationToken",
            "The access token is invalid.".into(),
            "The access token is invalid.",
        ),
    })?;
    let allowed = arm_audiences(cloud);
    if !allowed.iter().any(|a| *a == claims.aud) {
        return Err(unauthorized(
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences '{}'.",
                claims.aud,
                allowed.join("','")
            ),
            "The access token has been obtained for wrong audience or resource.",
        ));
    }
    Ok(claims)
}

/// The `exp` claim of the bearer token, read without verifying (for the expiry message).
fn token_exp(headers: &HeaderMap) -> Option<i64> {
    use base64::Engine;
    let payload = tokens::bearer(headers).ok()?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?.get("exp")?.as_i64()
}

/// `YYYY-MM-DD` or `YYYY-MM-DD-preview` with a real month and day.
fn well_formed_api_version(v: &str) -> bool {
    let date = v.strip_suffix("-preview").unwrap_or(v);
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num =
        |r: std::ops::Range<usize>| date.get(r).filter(|s| s.bytes().all(|c| c.is_ascii_digit()))?.parse::<u32>().ok();
    matches!((num(0..4), num(5..7), num(8..10)), (Some(y), Some(m), Some(d)) if y >= 2014 && (1..=12).contains(&m) && (1..=31).contains(&d))
}

fn api_version(query: &[(String, String)]) -> ArmResult<String> {
    let Some((_, v)) = query.iter().find(|(k, _)| k.eq_ignore_ascii_case("api-version")) else {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    if !well_formed_api_version(v) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{v}' is invalid. The supported versions are any 'YYYY-MM-DD' or 'YYYY-MM-DD-preview' version of this emulator's resource types."
            ),
        ));
    }
    Ok(v.clone())
}

fn method_not_allowed(method: &Method, path: &str) -> ArmError {
    ArmError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("The method '{method}' is not allowed on '{path}'."),
    )
}

async fn handle(AxState(ctx): AxState<Ctx>, req: Request<Body>) -> Response {
    match serve(ctx, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(ctx: Ctx, req: Request<Body>) -> ArmResult<Response> {
    let cloud = req.extensions().get::<RequestInfo>().map(|i| i.cloud).unwrap_or(AzureEnvironment::Azure);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let route = path::parse(&path)?;
    let query: Vec<(String, String)> = match parts.uri.query() {
        None => Vec::new(),
        Some(q) => serde_urlencoded::from_str(q).map_err(|_| {
            ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidQueryParameterValue",
                "The query string could not be decoded.",
            )
        })?,
    };
    if route == ArmRoute::MetadataEndpoints {
        // Anonymous, as in Azure: clients read it before they can get a token.
        if parts.method != Method::GET {
            return Err(method_not_allowed(&parts.method, &path));
        }
        return Ok(resources::metadata(cloud, &api_version(&query)?));
    }
    let tenant = route.subscription().and_then(|s| ctx.read(|st| st.subscriptions.get(&s).map(|x| x.tenant_id)));
    let claims = authenticate(&ctx, &parts.headers, cloud, tenant)?;
    // Validated for every call; the shapes served do not differ between versions.
    api_version(&query)?;
    let body = axum::body::to_bytes(body, ctx.max_body)
        .await
        .map_err(|_| ArmError::from(errors::too_large(Surface::Arm, ctx.max_body)))?;
    let call = Call { ctx, cloud, method: parts.method, query, claims, body };
    dispatch(&call, route, &path)
}

fn dispatch(call: &Call, route: ArmRoute, path: &str) -> ArmResult<Response> {
    use ArmRoute as R;
    let m = call.method.as_str();
    match (route, m) {
        (R::Subscriptions, "GET") => resources::list_subscriptions(call),
        (R::Tenants, "GET") => resources::list_tenants(call),
        (R::Subscription(sub), "GET") => resources::get_subscription(call, sub),
        (R::ResourceGroups(sub), "GET") => resources::list_resource_groups(call, sub),
        (R::ResourceGroup { sub, rg }, "PUT") => resources::put_resource_group(call, sub, &rg),
        (R::ResourceGroup { sub, rg }, "PATCH") => resources::patch_resource_group(call, sub, &rg),
        (R::ResourceGroup { sub, rg }, "GET" | "HEAD") => resources::get_resource_group(call, sub, &rg),
        (R::ResourceGroup { sub, rg }, "DELETE") => resources::delete_resource_group(call, sub, &rg),
        (R::Resources { sub, rg }, "GET") => resources::list_resources(call, sub, rg.as_deref()),
        (R::Vaults { sub, rg }, "GET") => vaults::list(call, sub, rg.as_deref()),
        (R::Vault { sub, rg, vault }, "PUT") => vaults::put(call, sub, &rg, &vault),
        (R::Vault { sub, rg, vault }, "PATCH") => vaults::patch(call, sub, &rg, &vault),
        (R::Vault { sub, rg, vault }, "GET") => vaults::get(call, sub, &rg, &vault),
        (R::Vault { sub, rg, vault }, "DELETE") => vaults::delete(call, sub, &rg, &vault),
        (R::AccessPolicies { sub, rg, vault, operation }, "PUT") => {
            vaults::update_access_policies(call, sub, &rg, &vault, &operation)
        }
        (R::PrivateEndpointConnections { sub, rg, vault, name: None }, "GET") => {
            vaults::list_connections(call, sub, &rg, &vault)
        }
        (R::PrivateEndpointConnections { sub, rg, vault, name: Some(name) }, "GET" | "PUT" | "DELETE") => {
            vaults::connection(call, sub, &rg, &vault, &name)
        }
        (R::RoleDefinitions(scope), "GET") => rbac::list_role_definitions(call, &scope),
        (R::RoleDefinition(scope, id), "GET") => rbac::get_role_definition(call, &scope, &id),
        (R::RoleAssignments(scope), "GET") => rbac::list_role_assignments(call, &scope),
        (R::RoleAssignment(scope, name), "PUT") => rbac::put_role_assignment(call, &scope, &name),
        (R::RoleAssignment(scope, name), "GET") => rbac::get_role_assignment(call, &scope, &name),
        (R::RoleAssignment(scope, name), "DELETE") => rbac::delete_role_assignment(call, &scope, &name),
        _ => Err(method_not_allowed(&call.method, path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in ["2022-09-01", "2023-07-01", "2015-11-01", "2024-05-01-preview"] {
            assert!(well_formed_api_version(ok), "{ok}");
        }
        for bad in ["", "2022-9-01", "2022-13-01", "latest", "2022-09-01-beta", "２０２２-09-01", "2022-09-0a"] {
            assert!(!well_formed_api_version(bad), "{bad}");
        }
    }

    #[test]
    fn times_render_like_arm() {
        assert_eq!(arm_time(0), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(us_time(1_603_227_895), "10/20/2020 9:04:55 PM");
    }
}
