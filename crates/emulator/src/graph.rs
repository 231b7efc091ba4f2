//! Microsoft Graph v1.0, the subset that onboarding a service principal uses (`az ad sp create`,
//! `az role assignment create --assignee <appId>`, `az ad app federated-credential create`,
//! `az ad app credential reset [--cert] --append`): servicePrincipals, applications with their
//! federated identity credentials, password credentials (addPassword/removePassword) and
//! certificate credentials (PATCH keyCredentials), and directoryObjects/getByIds. Shapes follow `shared/reference/azure-protocols.md` §5.
//!
//! Every request needs an emulator-issued token for the Graph resource of the cloud whose host
//! was called; the caller's `tid` scopes every read and write to that tenant, as in Entra. Only
//! a directory admin (`ServicePrincipal::directory_admin`) may write. Errors use Graph's body
//! from [`errors::graph`].

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::Ctx;
use crate::errors::{self, Surface};
use crate::http::{body_bytes, is_loopback_host, path_segments, query_pairs, request_info};
use crate::server::RequestInfo;
use crate::state::{
    Application, CertificateCredential, FederatedCredential, SecretCredential, ServicePrincipal, State as Model,
};
use crate::tokens::{self, GRAPH_APP_ID, TokenProblem};

/// Entra's limit on federated identity credentials per application.
pub const MAX_FEDERATED_CREDENTIALS: usize = 20;
/// Graph's limit on ids in one `getByIds` call.
const MAX_GET_BY_IDS: usize = 1000;

pub fn router() -> Router<Ctx> {
    // Graph addresses entities with OData segments (`servicePrincipals(appId='...')`), which
    // route templates cannot express, so the dispatcher matches segments itself.
    Router::new().fallback(dispatch)
}

/// A handler's early exit. Converts from `anyhow::Error` so it can leave [`Ctx::mutate`].
struct Reject(Box<Response>);

fn reject(r: Response) -> Reject {
    Reject(Box::new(r))
}

impl From<anyhow::Error> for Reject {
    fn from(e: anyhow::Error) -> Self {
        reject(errors::persist_failed(errors::Surface::Graph, &e))
    }
}

impl From<Response> for Reject {
    fn from(r: Response) -> Self {
        reject(r)
    }
}

type Result<T> = std::result::Result<T, Reject>;

fn bad_request(message: &str) -> Reject {
    reject(errors::graph(StatusCode::BAD_REQUEST, "Request_BadRequest", message))
}

fn not_found(id: &str) -> Reject {
    reject(errors::graph(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
    ))
}

fn denied() -> Reject {
    reject(errors::graph(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    ))
}

/// The caller, established from its token.
struct Caller {
    tenant: Uuid,
    admin: bool,
}

fn unauthorized(message: &str) -> Reject {
    let mut resp = errors::graph(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        ),
    );
    reject(resp)
}

fn authenticate(ctx: &Ctx, info: &RequestInfo, headers: &HeaderMap, state: &Model) -> Result<Caller> {
    let claims = tokens::authenticate(ctx, headers).map_err(|p| {
        unauthorized(match p {
            TokenProblem::Missing => "Access token is empty.",
            TokenProblem::Malformed => "CompactToken parsing failed with error code: 80049217",
            TokenProblem::BadSignature => "Access token validation failure. Invalid signature.",
            TokenProblem::Expired => "Lifetime validation failed, the token is expired.",
            TokenProblem::NotYetValid => "Lifetime validation failed, the token is not yet valid.",
        })
    })?;
    let graph = info.cloud.graph_resource();
    let aud = claims.aud.strip_suffix('/').unwrap_or(&claims.aud);
    if !(aud.eq_ignore_ascii_case(&graph) || aud.eq_ignore_ascii_case(GRAPH_APP_ID)) {
        return Err(unauthorized(&format!(
            "Access token validation failure. Invalid audience. The token is for '{}'; request it with the scope '{graph}/.default'.",
            claims.aud
        )));
    }
    let tenant: Uuid =
        claims.tid.parse().map_err(|_| unauthorized("Access token validation failure. Invalid issuer."))?;
    if !state.tenants.contains_key(&tenant) || claims.iss != format!("https://sts.windows.net/{tenant}/") {
        return Err(unauthorized("Access token validation failure. Invalid issuer."));
    }
    // The calling principal must still exist and be enabled: this is checked on every request,
    // so deleting or disabling a principal stops its outstanding tokens here too.
    let sp = claims.oid.parse::<Uuid>().ok().and_then(|id| state.service_principals.get(&id));
    match sp {
        Some(sp) if sp.tenant_id == tenant && sp.account_enabled => Ok(Caller { tenant, admin: sp.directory_admin }),
        _ => Err(unauthorized(
            "Access token validation failure. The calling service principal no longer exists or is disabled in this tenant.",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON shapes
// ---------------------------------------------------------------------------------------------

fn iso(unix: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(f).ok()).unwrap_or_default()
}

fn sign_in_audience(app: &Application) -> &'static str {
    if app.multi_tenant { "AzureADMultipleOrgs" } else { "AzureADMyOrg" }
}

/// `https://graph.microsoft.com/{version}/$metadata#` (the request origin on loopback).
fn metadata_base(info: &RequestInfo, version: &str) -> String {
    let base =
        if is_loopback_host(&info.host) { info.origin.clone() } else { format!("https://{}", info.cloud.graph_host()) };
    format!("{base}/{version}/$metadata#")
}

fn sp_json(state: &Model, sp: &ServicePrincipal) -> Value {
    let app = state.app_by_app_id(sp.app_id);
    json!({
        "id": sp.object_id,
        "deletedDateTime": null,
        "accountEnabled": sp.account_enabled,
        "alternativeNames": [],
        "appDisplayName": app.map(|a| a.display_name.clone()),
        "appDescription": null,
        "appId": sp.app_id,
        "applicationTemplateId": null,
        "appOwnerOrganizationId": app.map(|a| a.home_tenant),
        "appRoleAssignmentRequired": false,
        "createdDateTime": iso(sp.created),
        "description": null,
        "displayName": sp.display_name,
        "homepage": null,
        "loginUrl": null,
        "logoutUrl": null,
        "notes": null,
        "notificationEmailAddresses": [],
        "preferredSingleSignOnMode": null,
        "replyUrls": [],
        "servicePrincipalNames": [sp.app_id.to_string()],
        "servicePrincipalType": "Application",
        "signInAudience": app.map(sign_in_audience),
        "tags": [],
        "tokenEncryptionKeyId": null,
        "addIns": [],
        "appRoles": [],
        "info": {"logoUrl": null, "marketingUrl": null, "privacyStatementUrl": null, "supportUrl": null, "termsOfServiceUrl": null},
        "keyCredentials": [],
        "oauth2PermissionScopes": [],
        "passwordCredentials": [],
    })
}

fn app_json(state: &Model, app: &Application) -> Value {
    let keys: Vec<Value> = app
        .certificates
        .iter()
        .map(|c| {
            json!({
                // Edm.Binary, so base64: the SHA-1 thumbprint's bytes, as Graph computes it.
                "customKeyIdentifier": hex::decode(&c.sha1).map(|b| B64.encode(b)).unwrap_or_default(),
                "displayName": c.display_name,
                "endDateTime": iso(c.not_after),
                "key": null,
                "keyId": c.key_id,
                "startDateTime": iso(c.not_before),
                "type": "AsymmetricX509Cert",
                "usage": "Verify",
            })
        })
        .collect();
    let passwords: Vec<Value> = app
        .secrets
        .iter()
        .map(|s| {
            json!({
                "customKeyIdentifier": null,
                "displayName": s.display_name,
                "endDateTime": iso(s.end_date_time),
                "hint": s.hint,
                "keyId": s.key_id,
                // Graph returns the secret only in addPassword's response.
                "secretText": null,
                "startDateTime": iso(s.start_date_time.unwrap_or(app.created)),
            })
        })
        .collect();
    json!({
        "id": app.object_id,
        "deletedDateTime": null,
        "appId": app.app_id,
        "createdDateTime": iso(app.created),
        "description": null,
        "displayName": app.display_name,
        "identifierUris": [],
        "publisherDomain": state.tenants.get(&app.home_tenant).map(|t| t.default_domain.clone()),
        "signInAudience": sign_in_audience(app),
        "tags": [],
        "keyCredentials": keys,
        "passwordCredentials": passwords,
        "requiredResourceAccess": [],
        "web": {"homePageUrl": null, "logoutUrl": null, "redirectUris": []},
    })
}

fn fic_json(f: &FederatedCredential) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "issuer": f.issuer,
        "subject": f.subject,
        "description": f.description,
        "audiences": f.audiences,
    })
}

fn with_context(context: String, mut v: Value) -> Value {
    let mut out = Map::new();
    out.insert("@odata.context".into(), Value::String(context));
    if let Some(obj) = v.as_object_mut() {
        out.extend(std::mem::take(obj));
    }
    Value::Object(out)
}

fn ok(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(
            "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
        ),
    );
    resp
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------------------------
// Federated identity credentials (shared with the admin API)
// ---------------------------------------------------------------------------------------------

/// Why a federated identity credential was refused.
pub enum FicError {
    /// Bad input: the message says what to send instead.
    Invalid(String),
    /// Same name, or same issuer and subject, as an existing credential of the app.
    Conflict(String),
}

/// Validate a new federated identity credential against Entra's rules and the app's existing
/// ones: name 3–120 characters of letters, digits, `-` and `_` starting with a letter or digit
/// and unique in the app; issuer an http(s) URL (https outside loopback tests, enforced when the
/// issuer is fetched); subject 1–600 characters; exactly one audience; at most 20 per app.
pub fn new_federated_credential(
    existing: &[FederatedCredential],
    name: &str,
    issuer: &str,
    subject: &str,
    audiences: &[String],
    description: Option<String>,
) -> std::result::Result<FederatedCredential, FicError> {
    let name_ok = (3..=120).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(FicError::Invalid(format!(
            "The federated identity credential name '{name}' is not valid: use 3 to 120 letters, digits, '-' or '_', starting with a letter or digit."
        )));
    }
    match url::Url::parse(issuer) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() && issuer.len() <= 600 => {}
        _ => {
            return Err(FicError::Invalid(format!(
                "The issuer '{issuer}' is not valid: send the external identity provider's issuer URL exactly as its tokens carry it in 'iss' (https, at most 600 characters)."
            )));
        }
    }
    if subject.is_empty() || subject.len() > 600 {
        return Err(FicError::Invalid(
            "The subject is not valid: send the external token's 'sub' exactly (1 to 600 characters).".into(),
        ));
    }
    if audiences.len() != 1 || audiences[0].is_empty() || audiences[0].len() > 600 {
        return Err(FicError::Invalid(
            "The audiences are not valid: send exactly one audience, normally [\"api://AzureADTokenExchange\"].".into(),
        ));
    }
    if existing.len() >= MAX_FEDERATED_CREDENTIALS {
        return Err(FicError::Invalid(format!(
            "The application already has {MAX_FEDERATED_CREDENTIALS} federated identity credentials, the most Entra allows; delete one first."
        )));
    }
    if existing.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
        return Err(FicError::Conflict(format!("FederatedIdentityCredential with name {name} already exists.")));
    }
    if existing.iter().any(|f| f.issuer == issuer && f.subject == subject) {
        return Err(FicError::Conflict(format!(
            "A federated identity credential with issuer '{issuer}' and subject '{subject}' already exists on this application."
        )));
    }
    if description.as_ref().is_some_and(|d| d.len() > 600) {
        return Err(FicError::Invalid("The description is longer than 600 characters.".into()));
    }
    Ok(FederatedCredential {
        id: Uuid::new_v4(),
        name: name.to_string(),
        issuer: issuer.to_string(),
        subject: subject.to_string(),
        audiences: audiences.to_vec(),
        description,
    })
}

// ---------------------------------------------------------------------------------------------
// $filter
// ---------------------------------------------------------------------------------------------

/// The `$filter` forms az and the SDKs send.
#[derive(Debug, PartialEq)]
enum Filter {
    /// `prop eq 'value'`
    Eq(String, String),
    /// `prop/any(x:x eq 'value')`
    Any(String, String),
    /// `startswith(prop,'value')`
    StartsWith(String, String),
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next()? {
                    // OData escapes a quote by doubling it.
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        v.push('\'');
                    }
                    '\'' => break,
                    other => v.push(other),
                }
            }
            out.push(Tok::Str(v));
        } else if "()/:,".contains(c) {
            chars.next();
            out.push(Tok::Punct(c));
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' {
            let mut v = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' {
                    v.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Ident(v));
        } else {
            return None;
        }
    }
    Some(out)
}

fn parse_filter(s: &str) -> Option<Filter> {
    use Tok::*;
    let toks = tokenize(s)?;
    match toks.as_slice() {
        [Ident(p), Ident(eq), Str(v)] if eq.eq_ignore_ascii_case("eq") => Some(Filter::Eq(p.clone(), v.clone())),
        [
            Ident(p),
            Punct('/'),
            Ident(any),
            Punct('('),
            Ident(x),
            Punct(':'),
            Ident(x2),
            Ident(eq),
            Str(v),
            Punct(')'),
        ] if any.eq_ignore_ascii_case("any") && x == x2 && eq.eq_ignore_ascii_case("eq") => {
            Some(Filter::Any(p.clone(), v.clone()))
        }
        [Ident(f), Punct('('), Ident(p), Punct(','), Str(v), Punct(')')] if f.eq_ignore_ascii_case("startswith") => {
            Some(Filter::StartsWith(p.clone(), v.clone()))
        }
        _ => None,
    }
}

fn unsupported_filter(property: &str, resource: &str) -> Reject {
    reject(errors::graph(
        StatusCode::BAD_REQUEST,
        "Request_UnsupportedQuery",
        &format!(
            "Unsupported or invalid query filter clause specified for property '{property}' of resource '{resource}'."
        ),
    ))
}

/// The `$filter` of a list request as a predicate over (appId, displayName, id, names).
struct Matcher {
    filter: Option<Filter>,
}

impl Matcher {
    fn from_query(query: &[(String, String)], resource: &str, names_property: &str) -> Result<Self> {
        let Some((_, raw)) = query.iter().find(|(k, _)| k.eq_ignore_ascii_case("$filter")) else {
            return Ok(Self { filter: None });
        };
        let filter = parse_filter(raw).ok_or_else(|| {
            reject(errors::graph(
                StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                &format!("Invalid filter clause: '{raw}'. The emulator supports \"appId eq '...'\", \"displayName eq '...'\", \"id eq '...'\", \"startswith(displayName,'...')\" and \"{names_property}/any(x:x eq '...')\"."),
            ))
        })?;
        let supported = match &filter {
            Filter::Eq(p, _) => ["appId", "displayName", "id"].iter().any(|k| p.eq_ignore_ascii_case(k)),
            Filter::StartsWith(p, _) => p.eq_ignore_ascii_case("displayName"),
            Filter::Any(p, _) => p.eq_ignore_ascii_case(names_property),
        };
        if !supported {
            let p = match &filter {
                Filter::Eq(p, _) | Filter::Any(p, _) | Filter::StartsWith(p, _) => p.clone(),
            };
            return Err(unsupported_filter(&p, resource));
        }
        Ok(Self { filter: Some(filter) })
    }

    fn matches(&self, app_id: Uuid, display_name: &str, id: Uuid, names: &[String]) -> bool {
        match &self.filter {
            None => true,
            Some(Filter::Eq(p, v)) => match p.to_ascii_lowercase().as_str() {
                "appid" => v.eq_ignore_ascii_case(&app_id.to_string()),
                "displayname" => v == display_name,
                _ => v.eq_ignore_ascii_case(&id.to_string()),
            },
            Some(Filter::StartsWith(_, v)) => display_name.to_lowercase().starts_with(&v.to_lowercase()),
            Some(Filter::Any(_, v)) => names.iter().any(|n| n.eq_ignore_ascii_case(v)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// `servicePrincipals(appId='x')` → ("servicePrincipals", Some(("appId", "x"))).
fn split_key(seg: &str) -> Option<(&str, Option<(&str, String)>)> {
    let Some(open) = seg.find('(') else { return Some((seg, None)) };
    let inner = seg[open + 1..].strip_suffix(')')?;
    let (key, value) = match inner.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => ("id", inner.trim()),
    };
    let value = value.strip_prefix('\'')?.strip_suffix('\'')?.replace("''", "'");
    Some((&seg[..open], Some((key, value))))
}

fn method_not_allowed() -> Response {
    errors::graph(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request_BadRequest",
        "Specified HTTP method is not allowed for the request target.",
    )
}

async fn dispatch(State(ctx): State<Ctx>, req: Request) -> Response {
    match handle(&ctx, req).await {
        Ok(r) => r,
        Err(Reject(r)) => *r,
    }
}

async fn handle(ctx: &Ctx, req: Request) -> Result<Response> {
    let info = request_info(&req);
    let segs = path_segments(req.uri().path()).ok_or_else(|| bad_request("The request path is not valid."))?;
    let Some((version, rest)) = segs.split_first() else {
        return Err(reject(errors::graph(StatusCode::BAD_REQUEST, "BadRequest", "Invalid version.")));
    };
    if version != "v1.0" && version != "beta" {
        return Err(reject(errors::graph(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Invalid version: '{version}'. Use v1.0."),
        )));
    }
    let version = version.clone();
    let state = ctx.snapshot();
    let caller = authenticate(ctx, &info, req.headers(), &state)?;
    let query = query_pairs(&req).ok_or_else(|| bad_request("The query string is not valid."))?;
    let method = req.method().clone();
    let body = body_bytes(req.into_body()).await;
    let meta = metadata_base(&info, &version);

    let Some(first) = rest.first() else {
        return Err(reject(errors::graph(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Resource not found for the segment ''.",
        )));
    };
    // Every token the emulator issues is app-only (client credentials), and Graph refuses
    // `/me` (and everything under it) for those, after authentication.
    if first.eq_ignore_ascii_case("me") || split_key(first).is_some_and(|(c, _)| c.eq_ignore_ascii_case("me")) {
        return Err(reject(errors::graph(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "/me request is only valid with delegated authentication flow.",
        )));
    }
    let (collection, key) = split_key(first).ok_or_else(|| {
        bad_request(&format!(
            "Bad request: the segment '{first}' is not a valid key expression; use servicePrincipals(appId='...')."
        ))
    })?;
    let tail: Vec<&str> = rest[1..].iter().map(String::as_str).collect();

    match (collection.to_ascii_lowercase().as_str(), key, tail.as_slice()) {
        ("serviceprincipals", None, []) => match method {
            Method::GET => list_service_principals(&state, &caller, &query, &meta),
            Method::POST => create_service_principal(ctx, &caller, &body, &meta),
            _ => Ok(method_not_allowed()),
        },
        ("serviceprincipals", None, [id]) => {
            service_principal_item(ctx, &state, &caller, &method, SpKey::Id(id), &body, &meta)
        }
        ("serviceprincipals", Some((k, v)), []) if k.eq_ignore_ascii_case("appId") => {
            service_principal_item(ctx, &state, &caller, &method, SpKey::AppId(&v), &body, &meta)
        }
        ("serviceprincipals", Some((_, v)), []) => {
            service_principal_item(ctx, &state, &caller, &method, SpKey::Id(&v), &body, &meta)
        }
        ("applications", None, []) => match method {
            Method::GET => list_applications(&state, &caller, &query, &meta),
            Method::POST => create_application(ctx, &caller, &body, &meta),
            _ => Ok(method_not_allowed()),
        },
        ("applications", key, tail) => {
            let (app_key, tail) = match (key, tail) {
                (None, [id, tail @ ..]) => (AppKey::Id((*id).to_string()), tail),
                (Some((k, v)), tail) if k.eq_ignore_ascii_case("appId") => (AppKey::AppId(v), tail),
                (Some((_, v)), tail) => (AppKey::Id(v), tail),
                (None, []) => unreachable_route()?,
            };
            application_routes(ctx, &state, &caller, &method, app_key, tail, &body, &meta)
        }
        ("directoryobjects", None, ["getByIds"]) if method == Method::POST => get_by_ids(&state, &caller, &body, &meta),
        ("directoryobjects", None, ["getByIds"]) => Ok(method_not_allowed()),
        _ => Err(reject(errors::graph(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Resource not found for the segment '{first}'."),
        ))),
    }
}

/// A match arm that cannot be reached (kept as an error, not a panic).
fn unreachable_route<T>() -> Result<T> {
    Err(reject(errors::graph(StatusCode::BAD_REQUEST, "BadRequest", "Resource not found for the segment ''.")))
}

// ---------------------------------------------------------------------------------------------
// servicePrincipals
// ---------------------------------------------------------------------------------------------

enum SpKey<'a> {
    Id(&'a str),
    AppId(&'a str),
}

fn find_sp<'s>(state: &'s Model, caller: &Caller, key: &SpKey) -> Result<&'s ServicePrincipal> {
    match key {
        SpKey::Id(id) => {
            let uuid: Uuid = id.parse().map_err(|_| bad_request(&format!("Invalid object identifier '{id}'.")))?;
            state.service_principals.get(&uuid).filter(|sp| sp.tenant_id == caller.tenant).ok_or_else(|| not_found(id))
        }
        SpKey::AppId(app_id) => app_id
            .parse::<Uuid>()
            .ok()
            .and_then(|a| state.sp_in_tenant(a, caller.tenant))
            .ok_or_else(|| not_found(app_id)),
    }
}

fn list_service_principals(state: &Model, caller: &Caller, query: &[(String, String)], meta: &str) -> Result<Response> {
    let m = Matcher::from_query(query, "servicePrincipal", "servicePrincipalNames")?;
    let value: Vec<Value> = state
        .service_principals
        .values()
        .filter(|sp| sp.tenant_id == caller.tenant)
        .filter(|sp| m.matches(sp.app_id, &sp.display_name, sp.object_id, &[sp.app_id.to_string()]))
        .map(|sp| sp_json(state, sp))
        .collect();
    Ok(ok(StatusCode::OK, json!({"@odata.context": format!("{meta}servicePrincipals"), "value": value})))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateSp {
    app_id: Option<Value>,
    account_enabled: Option<bool>,
    // Other properties (displayName, tags) are accepted and ignored: Graph takes the display
    // name from the application.
}

fn create_service_principal(ctx: &Ctx, caller: &Caller, body: &[u8], meta: &str) -> Result<Response> {
    let req: CreateSp = errors::parse_json(Surface::Graph, body)?;
    if !caller.admin {
        return Err(denied());
    }
    let app_id_raw = match req.app_id {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(bad_request(
                "Invalid value specified for property 'appId' of resource 'ServicePrincipal': send the application (client) id as a string.",
            ));
        }
        None => {
            return Err(bad_request(
                "Property 'appId' is required when creating a servicePrincipal: send {\"appId\": \"<application (client) id>\"}.",
            ));
        }
    };
    let no_backing = || {
        bad_request(&format!(
            "The appId '{app_id_raw}' of the service principal does not reference a valid application object."
        ))
    };
    let app_id: Uuid = app_id_raw.parse().map_err(|_| no_backing())?;
    let tenant = caller.tenant;
    let enabled = req.account_enabled.unwrap_or(true);
    let created = ctx.mutate(|s| -> Result<ServicePrincipal> {
        let app = s.app_by_app_id(app_id).ok_or_else(no_backing)?;
        if !app.multi_tenant && app.home_tenant != tenant {
            return Err(no_backing());
        }
        if s.sp_in_tenant(app_id, tenant).is_some() {
            return Err(reject(errors::graph(
                StatusCode::CONFLICT,
                "Request_MultipleObjectsWithSameKeyValue",
                "Another object with the same value for property servicePrincipalNames already exists.",
            )));
        }
        let sp = ServicePrincipal {
            object_id: Uuid::new_v4(),
            tenant_id: tenant,
            app_id,
            display_name: app.display_name.clone(),
            account_enabled: enabled,
            directory_admin: false,
            created: ctx.now(),
        };
        s.service_principals.insert(sp.object_id, sp.clone());
        Ok(sp)
    })?;
    let state = ctx.snapshot();
    Ok(ok(StatusCode::CREATED, with_context(format!("{meta}servicePrincipals/$entity"), sp_json(&state, &created))))
}

fn service_principal_item(
    ctx: &Ctx,
    state: &Model,
    caller: &Caller,
    method: &Method,
    key: SpKey,
    body: &[u8],
    meta: &str,
) -> Result<Response> {
    let sp = find_sp(state, caller, &key)?;
    let id = sp.object_id;
    match *method {
        Method::GET => {
            Ok(ok(StatusCode::OK, with_context(format!("{meta}servicePrincipals/$entity"), sp_json(state, sp))))
        }
        Method::PATCH => {
            let patch: Map<String, Value> = errors::parse_json(Surface::Graph, body)?;
            let mut enabled = None;
            let mut name = None;
            for (k, v) in &patch {
                match k.as_str() {
                    "accountEnabled" => {
                        enabled = Some(v.as_bool().ok_or_else(|| {
                            bad_request("Invalid value specified for property 'accountEnabled' of resource 'ServicePrincipal': send true or false.")
                        })?)
                    }
                    "displayName" => {
                        let n = v.as_str().filter(|s| !s.trim().is_empty() && s.len() <= 256).ok_or_else(|| {
                            bad_request("Invalid value specified for property 'displayName' of resource 'ServicePrincipal': send a non-empty string of at most 256 characters.")
                        })?;
                        name = Some(n.to_string());
                    }
                    // Accepted and not modelled.
                    "tags" | "notes" | "description" => {}
                    other => {
                        return Err(bad_request(&format!(
                            "Property '{other}' cannot be updated through the emulator's Graph (it supports accountEnabled, displayName, tags, notes and description)."
                        )));
                    }
                }
            }
            if !caller.admin {
                return Err(denied());
            }
            ctx.mutate(|s| -> Result<()> {
                let sp = s.service_principals.get_mut(&id).ok_or_else(|| not_found(&id.to_string()))?;
                if let Some(e) = enabled {
                    sp.account_enabled = e;
                }
                if let Some(n) = name {
                    sp.display_name = n;
                }
                Ok(())
            })?;
            Ok(no_content())
        }
        Method::DELETE => {
            if !caller.admin {
                return Err(denied());
            }
            ctx.mutate(|s| -> Result<()> {
                s.service_principals.remove(&id).map(|_| ()).ok_or_else(|| not_found(&id.to_string()))
            })?;
            Ok(no_content())
        }
        _ => Ok(method_not_allowed()),
    }
}

// ---------------------------------------------------------------------------------------------
// applications
// ---------------------------------------------------------------------------------------------

enum AppKey {
    Id(String),
    AppId(String),
}

/// An application of the caller's tenant. Applications registered in another tenant are not
/// visible, as in Entra (az relies on this: it then treats the id as a foreign appId).
fn find_app<'s>(state: &'s Model, caller: &Caller, key: &AppKey) -> Result<&'s Application> {
    let found = match key {
        AppKey::Id(id) => {
            let uuid: Uuid = id.parse().map_err(|_| bad_request(&format!("Invalid object identifier '{id}'.")))?;
            state.applications.get(&uuid)
        }
        AppKey::AppId(a) => a.parse::<Uuid>().ok().and_then(|a| state.app_by_app_id(a)),
    };
    let label = match key {
        AppKey::Id(s) | AppKey::AppId(s) => s,
    };
    found.filter(|a| a.home_tenant == caller.tenant).ok_or_else(|| not_found(label))
}

fn list_applications(state: &Model, caller: &Caller, query: &[(String, String)], meta: &str) -> Result<Response> {
    let m = Matcher::from_query(query, "application", "identifierUris")?;
    let value: Vec<Value> = state
        .applications
        .values()
        .filter(|a| a.home_tenant == caller.tenant)
        .filter(|a| m.matches(a.app_id, &a.display_name, a.object_id, &[]))
        .map(|a| app_json(state, a))
        .collect();
    Ok(ok(StatusCode::OK, json!({"@odata.context": format!("{meta}applications"), "value": value})))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateApp {
    display_name: Option<String>,
    sign_in_audience: Option<String>,
}

fn create_application(ctx: &Ctx, caller: &Caller, body: &[u8], meta: &str) -> Result<Response> {
    let req: CreateApp = errors::parse_json(Surface::Graph, body)?;
    if !caller.admin {
        return Err(denied());
    }
    let name = req.display_name.filter(|n| !n.trim().is_empty() && n.len() <= 256).ok_or_else(|| {
        bad_request("Property 'displayName' is required: send a non-empty string of at most 256 characters.")
    })?;
    let multi_tenant = match req.sign_in_audience.as_deref() {
        None | Some("AzureADMyOrg") => false,
        Some("AzureADMultipleOrgs") => true,
        Some(other) => {
            return Err(bad_request(&format!(
                "Invalid value specified for property 'signInAudience': '{other}'. The emulator supports AzureADMyOrg and AzureADMultipleOrgs."
            )));
        }
    };
    let tenant = caller.tenant;
    let app = ctx.mutate(|s| -> Result<Application> {
        let app = Application {
            object_id: Uuid::new_v4(),
            app_id: Uuid::new_v4(),
            home_tenant: tenant,
            display_name: name,
            multi_tenant,
            secrets: vec![],
            certificates: vec![],
            federated: vec![],
            created: ctx.now(),
        };
        s.applications.insert(app.object_id, app.clone());
        Ok(app)
    })?;
    let state = ctx.snapshot();
    Ok(ok(StatusCode::CREATED, with_context(format!("{meta}applications/$entity"), app_json(&state, &app))))
}

#[allow(clippy::too_many_arguments)]
fn application_routes(
    ctx: &Ctx,
    state: &Model,
    caller: &Caller,
    method: &Method,
    key: AppKey,
    tail: &[&str],
    body: &[u8],
    meta: &str,
) -> Result<Response> {
    let app = find_app(state, caller, &key)?;
    let object_id = app.object_id;
    let fic_context = format!("{meta}applications('{object_id}')/federatedIdentityCredentials");
    match tail {
        [] => match *method {
            Method::GET => {
                Ok(ok(StatusCode::OK, with_context(format!("{meta}applications/$entity"), app_json(state, app))))
            }
            Method::PATCH => patch_application(ctx, caller, app, body),
            _ => Ok(method_not_allowed()),
        },
        [seg] if is_action(seg, "addPassword") => match *method {
            Method::POST => add_password(ctx, caller, object_id, body, meta),
            _ => Ok(method_not_allowed()),
        },
        [seg] if is_action(seg, "removePassword") => match *method {
            Method::POST => remove_password(ctx, caller, object_id, body),
            _ => Ok(method_not_allowed()),
        },
        [seg] if seg.eq_ignore_ascii_case("federatedIdentityCredentials") => match *method {
            Method::GET => {
                let value: Vec<Value> = app.federated.iter().map(fic_json).collect();
                Ok(ok(StatusCode::OK, json!({"@odata.context": fic_context, "value": value})))
            }
            Method::POST => create_fic(ctx, caller, object_id, body, &fic_context),
            _ => Ok(method_not_allowed()),
        },
        [seg, id] if seg.eq_ignore_ascii_case("federatedIdentityCredentials") => {
            // Addressed by id or by name, as Graph allows.
            let fic = app
                .federated
                .iter()
                .find(|f| f.id.to_string().eq_ignore_ascii_case(id) || f.name.eq_ignore_ascii_case(id))
                .ok_or_else(|| not_found(id))?;
            let fic_id = fic.id;
            match *method {
                Method::GET => Ok(ok(StatusCode::OK, with_context(format!("{fic_context}/$entity"), fic_json(fic)))),
                Method::DELETE => {
                    if !caller.admin {
                        return Err(denied());
                    }
                    ctx.mutate(|s| -> Result<()> {
                        let app =
                            s.applications.get_mut(&object_id).ok_or_else(|| not_found(&object_id.to_string()))?;
                        app.federated.retain(|f| f.id != fic_id);
                        Ok(())
                    })?;
                    Ok(no_content())
                }
                _ => Ok(method_not_allowed()),
            }
        }
        [other, ..] => Err(reject(errors::graph(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Resource not found for the segment '{other}'."),
        ))),
    }
}

/// `addPassword` or its qualified form `microsoft.graph.addPassword` (what the SDKs send).
fn is_action(seg: &str, action: &str) -> bool {
    seg.eq_ignore_ascii_case(action)
        || seg.strip_prefix("microsoft.graph.").is_some_and(|rest| rest.eq_ignore_ascii_case(action))
}

/// Graph's default lifetime of a password credential added without `endDateTime`: two years.
const DEFAULT_PASSWORD_LIFETIME_SECS: i64 = 2 * 365 * 86400;
/// Longest `displayName` of a password or key credential.
const MAX_CREDENTIAL_NAME: usize = 1024;

/// An Edm.DateTimeOffset property: `null`/absent → `None`, an RFC 3339 string → unix seconds.
fn date_time(v: Option<&Value>, property: &str, resource: &str) -> Result<Option<i64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| Some(t.unix_timestamp()))
                .map_err(|_| {
                    bad_request(&format!(
                        "Invalid value specified for property '{property}' of resource '{resource}': send an ISO 8601 date and time such as '2030-01-31T00:00:00Z'."
                    ))
                })
        }
        Some(_) => Err(bad_request(&format!(
            "Invalid value specified for property '{property}' of resource '{resource}': send an ISO 8601 date and time string."
        ))),
    }
}

/// A credential's `displayName`: `null`/absent or a string of at most 1024 characters.
fn credential_name(v: Option<&Value>, resource: &str) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= MAX_CREDENTIAL_NAME => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(&format!(
            "Invalid value specified for property 'displayName' of resource '{resource}': send a string of at most {MAX_CREDENTIAL_NAME} characters."
        ))),
    }
}

/// `POST applications/{id}/addPassword`: a new client secret, returned once (its hash is kept).
fn add_password(ctx: &Ctx, caller: &Caller, object_id: Uuid, body: &[u8], meta: &str) -> Result<Response> {
    // Graph accepts an empty body (all of passwordCredential's properties are optional).
    let req: Map<String, Value> =
        if body.iter().all(u8::is_ascii_whitespace) { Map::new() } else { errors::parse_json(Surface::Graph, body)? };
    let cred = match req.get("passwordCredential") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => {
            return Err(bad_request(
                "Invalid value specified for property 'passwordCredential': send an object such as {\"passwordCredential\": {\"displayName\": \"...\"}}.",
            ));
        }
    };
    let resource = "PasswordCredential";
    let display_name = credential_name(cred.get("displayName"), resource)?;
    let now = ctx.now();
    let start = date_time(cred.get("startDateTime"), "startDateTime", resource)?.unwrap_or(now);
    let end =
        date_time(cred.get("endDateTime"), "endDateTime", resource)?.unwrap_or(start + DEFAULT_PASSWORD_LIFETIME_SECS);
    if end <= start {
        return Err(bad_request(
            "Invalid value specified for property 'endDateTime' of resource 'PasswordCredential': it must be later than startDateTime.",
        ));
    }
    if !caller.admin {
        return Err(denied());
    }
    let secret = crate::state::new_client_secret();
    let stored = SecretCredential {
        key_id: Uuid::new_v4(),
        hint: secret.chars().take(3).collect(),
        sha256: crate::state::sha256_hex(secret.as_bytes()),
        end_date_time: end,
        start_date_time: Some(start),
        display_name,
    };
    let saved = stored.clone();
    ctx.mutate(move |s| -> Result<()> {
        let app = s.applications.get_mut(&object_id).ok_or_else(|| not_found(&object_id.to_string()))?;
        app.secrets.push(saved);
        Ok(())
    })?;
    Ok(ok(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{meta}microsoft.graph.passwordCredential"),
            "customKeyIdentifier": null,
            "displayName": stored.display_name,
            "endDateTime": iso(stored.end_date_time),
            "hint": stored.hint,
            "keyId": stored.key_id,
            "secretText": secret,
            "startDateTime": iso(start),
        }),
    ))
}

/// `POST applications/{id}/removePassword` with `{"keyId": "..."}`: 204.
fn remove_password(ctx: &Ctx, caller: &Caller, object_id: Uuid, body: &[u8]) -> Result<Response> {
    let req: Map<String, Value> = errors::parse_json(Surface::Graph, body)?;
    let key_id = match req.get("keyId") {
        Some(Value::String(k)) => k
            .parse::<Uuid>()
            .map_err(|_| bad_request(&format!("Invalid value specified for property 'keyId': '{k}' is not a GUID.")))?,
        _ => {
            return Err(bad_request(
                "Property 'keyId' is required: send {\"keyId\": \"<keyId of the password credential>\"}.",
            ));
        }
    };
    if !caller.admin {
        return Err(denied());
    }
    ctx.mutate(|s| -> Result<()> {
        let app = s.applications.get_mut(&object_id).ok_or_else(|| not_found(&object_id.to_string()))?;
        let before = app.secrets.len();
        app.secrets.retain(|c| c.key_id != key_id);
        if app.secrets.len() == before {
            return Err(reject(errors::graph(
                StatusCode::NOT_FOUND,
                "Request_ResourceNotFound",
                &format!("No password credential with keyId '{key_id}' exists on application '{object_id}'."),
            )));
        }
        Ok(())
    })?;
    Ok(no_content())
}

fn invalid_key(message: &str) -> Reject {
    reject(errors::graph(StatusCode::BAD_REQUEST, "KeyCredentialsInvalidValue", message))
}

/// One entry of a PATCHed `keyCredentials` collection, resolved against the app's certificates:
/// an existing credential (named by keyId, `key` null or the same certificate) or a new one.
fn key_credential(v: &Value, existing: &[CertificateCredential], now: i64) -> Result<CertificateCredential> {
    let resource = "KeyCredential";
    let obj = v.as_object().ok_or_else(|| {
        bad_request("Invalid value specified for property 'keyCredentials' of resource 'Application': send an array of keyCredential objects.")
    })?;
    let key_id = match obj.get("keyId") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.parse::<Uuid>().map_err(|_| {
            bad_request(&format!(
                "Invalid value specified for property 'keyId' of resource 'KeyCredential': '{k}' is not a GUID."
            ))
        })?),
        Some(_) => {
            return Err(bad_request(
                "Invalid value specified for property 'keyId' of resource 'KeyCredential': send a GUID string.",
            ));
        }
    };
    let known = key_id.and_then(|k| existing.iter().find(|c| c.key_id == k));
    let key = match obj.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if k.is_empty() => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => {
            return Err(invalid_key(
                "Key credential value is invalid: send 'key' as the base64 DER of an X.509 certificate.",
            ));
        }
    };
    let Some(key) = key else {
        // Keeping an existing credential: Graph returns `key` as null, so clients send it back so.
        return known.cloned().ok_or_else(|| invalid_key("KeyValue cannot be null or empty."));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("AsymmetricX509Cert") => {}
        _ => {
            return Err(bad_request(
                "The value for the property \"type\" in one of your credentials is invalid. Acceptable values are AsymmetricX509Cert, X509CertAndPassword.",
            ));
        }
    }
    match obj.get("usage").and_then(Value::as_str) {
        Some(u) if u.eq_ignore_ascii_case("Verify") => {}
        // "Sign" holds a private key for SAML token signing, which the emulator does not model.
        _ => {
            return Err(bad_request(
                "The value for the property \"usage\" in one of your credentials is invalid. The emulator accepts Verify (a certificate that signs client assertions).",
            ));
        }
    }
    // A PEM body pasted as is carries line breaks; base64 ignores them.
    let compact: String = key.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = B64.decode(compact).map_err(|_| {
        invalid_key("Key credential value is invalid: 'key' is not base64. Send the base64 DER of an X.509 certificate (a PEM without its header lines).")
    })?;
    let mut cred = crate::admin::certificate_credential_from_der(&der, now)
        .map_err(|e| invalid_key(&format!("Key credential value is invalid: the certificate {e}.")))?;
    if let Some(k) = known {
        if k.sha1 != cred.sha1 {
            return Err(bad_request(&format!(
                "Update to existing credential with KeyId '{}' is not allowed.",
                k.key_id
            )));
        }
        return Ok(k.clone());
    }
    let start = date_time(obj.get("startDateTime"), "startDateTime", resource)?.unwrap_or(cred.not_before);
    let end = date_time(obj.get("endDateTime"), "endDateTime", resource)?.unwrap_or(cred.not_after);
    if end > cred.not_after || end <= start {
        return Err(reject(errors::graph(
            StatusCode::BAD_REQUEST,
            "KeyCredentialsInvalidEndDate",
            "Key credential end date is invalid.",
        )));
    }
    if start < cred.not_before {
        return Err(reject(errors::graph(
            StatusCode::BAD_REQUEST,
            "KeyCredentialsInvalidStartDate",
            "Key credential start date is invalid.",
        )));
    }
    cred.not_before = start;
    cred.not_after = end;
    cred.key_id = key_id.unwrap_or_else(Uuid::new_v4);
    cred.display_name = credential_name(obj.get("displayName"), resource)?;
    Ok(cred)
}

/// A PATCHed `keyCredentials` collection as the app's new certificate list.
fn resolve_key_credentials(
    items: &[Value],
    existing: &[CertificateCredential],
    now: i64,
) -> Result<Vec<CertificateCredential>> {
    let mut out: Vec<CertificateCredential> = Vec::with_capacity(items.len());
    for item in items {
        let cred = key_credential(item, existing, now)?;
        if out.iter().any(|c| c.key_id == cred.key_id) {
            return Err(bad_request(&format!(
                "The keyId '{}' appears more than once in keyCredentials: each credential needs its own keyId.",
                cred.key_id
            )));
        }
        out.push(cred);
    }
    Ok(out)
}

/// `PATCH applications/{id}`: `displayName` and the `keyCredentials` collection (replaced as a
/// whole, as Graph does: existing credentials are kept by sending them back with `key` null).
/// Everything is validated before anything is stored.
fn patch_application(ctx: &Ctx, caller: &Caller, app: &Application, body: &[u8]) -> Result<Response> {
    let patch: Map<String, Value> = errors::parse_json(Surface::Graph, body)?;
    let now = ctx.now();
    let mut name = None;
    let mut key_items: Option<Vec<Value>> = None;
    for (k, v) in &patch {
        match k.as_str() {
            "displayName" => {
                let n = v.as_str().filter(|s| !s.trim().is_empty() && s.len() <= 256).ok_or_else(|| {
                    bad_request("Invalid value specified for property 'displayName' of resource 'Application': send a non-empty string of at most 256 characters.")
                })?;
                name = Some(n.to_string());
            }
            "keyCredentials" => {
                let items = v.as_array().ok_or_else(|| {
                    bad_request("Invalid value specified for property 'keyCredentials' of resource 'Application': send an array of keyCredential objects.")
                })?;
                // Checked here against the snapshot, and again inside `mutate` against the state
                // it writes (a concurrent change may have added or removed a certificate).
                resolve_key_credentials(items, &app.certificates, now)?;
                key_items = Some(items.clone());
            }
            "passwordCredentials" => {
                return Err(bad_request("New password credentials must be generated using service actions."));
            }
            // Accepted and not modelled.
            "tags" | "notes" | "description" => {}
            other => {
                return Err(bad_request(&format!(
                    "Property '{other}' cannot be updated through the emulator's Graph (it supports displayName, keyCredentials, tags, notes and description)."
                )));
            }
        }
    }
    if !caller.admin {
        return Err(denied());
    }
    let object_id = app.object_id;
    ctx.mutate(move |s| -> Result<()> {
        let app = s.applications.get_mut(&object_id).ok_or_else(|| not_found(&object_id.to_string()))?;
        if let Some(n) = name {
            app.display_name = n;
        }
        if let Some(items) = &key_items {
            app.certificates = resolve_key_credentials(items, &app.certificates, now)?;
        }
        Ok(())
    })?;
    Ok(no_content())
}

#[derive(serde::Deserialize)]
struct CreateFic {
    name: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    audiences: Option<Vec<String>>,
    description: Option<String>,
}

fn create_fic(ctx: &Ctx, caller: &Caller, object_id: Uuid, body: &[u8], context: &str) -> Result<Response> {
    let req: CreateFic = errors::parse_json(Surface::Graph, body)?;
    if !caller.admin {
        return Err(denied());
    }
    let required = |v: Option<String>, name: &str| {
        v.ok_or_else(|| bad_request(&format!("Property '{name}' is required for a federatedIdentityCredential.")))
    };
    let name = required(req.name, "name")?;
    let issuer = required(req.issuer, "issuer")?;
    let subject = required(req.subject, "subject")?;
    let audiences = req.audiences.unwrap_or_else(|| vec!["api://AzureADTokenExchange".into()]);
    let fic = ctx.mutate(|s| -> Result<FederatedCredential> {
        let app = s.applications.get_mut(&object_id).ok_or_else(|| not_found(&object_id.to_string()))?;
        let fic = new_federated_credential(&app.federated, &name, &issuer, &subject, &audiences, req.description)
            .map_err(|e| match e {
                FicError::Invalid(m) => bad_request(&m),
                FicError::Conflict(m) => {
                    reject(errors::graph(StatusCode::CONFLICT, "Request_MultipleObjectsWithSameKeyValue", &m))
                }
            })?;
        app.federated.push(fic.clone());
        Ok(fic)
    })?;
    Ok(ok(StatusCode::CREATED, with_context(format!("{context}/$entity"), fic_json(&fic))))
}

// ---------------------------------------------------------------------------------------------
// directoryObjects/getByIds
// ---------------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct GetByIds {
    ids: Option<Vec<String>>,
    types: Option<Vec<String>>,
}

fn get_by_ids(state: &Model, caller: &Caller, body: &[u8], meta: &str) -> Result<Response> {
    let req: GetByIds = errors::parse_json(Surface::Graph, body)?;
    let ids =
        req.ids.ok_or_else(|| bad_request("Property 'ids' is required: send {\"ids\": [\"<object id>\", ...]}."))?;
    if ids.len() > MAX_GET_BY_IDS {
        return Err(bad_request(&format!("Too many ids: send at most {MAX_GET_BY_IDS} per request.")));
    }
    let wants = |t: &str| {
        req.types.as_ref().is_none_or(|types| {
            types.iter().any(|x| x.eq_ignore_ascii_case(t) || x.eq_ignore_ascii_case(&format!("microsoft.graph.{t}")))
        })
    };
    let mut value = Vec::new();
    for id in &ids {
        let Ok(uuid) = id.parse::<Uuid>() else { continue };
        if wants("servicePrincipal")
            && let Some(sp) = state.service_principals.get(&uuid).filter(|sp| sp.tenant_id == caller.tenant)
        {
            let mut v = sp_json(state, sp);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("@odata.type".into(), json!("#microsoft.graph.servicePrincipal"));
            }
            value.push(v);
        } else if wants("application")
            && let Some(app) = state.applications.get(&uuid).filter(|a| a.home_tenant == caller.tenant)
        {
            let mut v = app_json(state, app);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("@odata.type".into(), json!("#microsoft.graph.application"));
            }
            value.push(v);
        }
    }
    Ok(ok(StatusCode::OK, json!({"@odata.context": format!("{meta}directoryObjects"), "value": value})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_az_sends() {
        assert_eq!(parse_filter("appId eq 'abc'"), Some(Filter::Eq("appId".into(), "abc".into())));
        assert_eq!(
            parse_filter("servicePrincipalNames/any(c:c eq 'x-y')"),
            Some(Filter::Any("servicePrincipalNames".into(), "x-y".into()))
        );
        assert_eq!(
            parse_filter("servicePrincipalNames/any(x: x eq 'it''s')"),
            Some(Filter::Any("servicePrincipalNames".into(), "it's".into()))
        );
        assert_eq!(
            parse_filter("startswith(displayName,'My app')"),
            Some(Filter::StartsWith("displayName".into(), "My app".into()))
        );
        assert_eq!(parse_filter("servicePrincipalNames/any(c:d eq 'x')"), None);
        assert_eq!(parse_filter("appId eq"), None);
        assert_eq!(parse_filter("appId eq 'unterminated"), None);
        assert_eq!(parse_filter("appId ne 'x'"), None);
        assert_eq!(parse_filter("appId eq 'a' or appId eq 'b'"), None);
    }

    #[test]
    fn key_segments() {
        let (c, k) = split_key("servicePrincipals(appId='abc')").unwrap();
        assert_eq!(c, "servicePrincipals");
        assert_eq!(k, Some(("appId", "abc".to_string())));
        assert_eq!(split_key("applications('x')").unwrap().1, Some(("id", "x".to_string())));
        assert!(split_key("applications(appId=abc)").is_none());
        assert_eq!(split_key("applications").unwrap(), ("applications", None));
    }
}
