//! The admin API under `/_emulator/`, for what Azure has no API for: creating tenants,
//! registering applications with credentials, tuning time and RBAC propagation, injecting
//! faults and throttles, counting requests, and opening private-endpoint listeners. Documented in
//! `docs/emulator.md`.
//!
//! It is reachable on every host name (and on the loopback address) and authenticated like ARM:
//! a token of the bootstrap principal (`emulator.json`) for the ARM audience. Errors use ARM's
//! body. Request bodies are strict JSON (unknown fields are refused) so that a typo is a 400
//! that names the field, never a silently ignored setting. Faults and throttles are runtime
//! only (a restart clears them); everything else persists through [`Ctx::mutate`].

use std::collections::VecDeque;
use std::str::FromStr;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_domain::{AzureEnvironment, HostKind, VaultName};

use crate::errors::{self, Surface};
use crate::graph::{FicError, new_federated_credential};
use crate::http::{body_bytes, is_loopback_host, path_segments, request_info};
use crate::server::RequestInfo;
use crate::state::{
    Application, CertificateCredential, Fault, FaultKind, FederatedCredential, PeConnection, PeConnectionStatus,
    PrivateEndpoint, SecretCredential, ServicePrincipal, State as Model,
};
use crate::tokens::{self, TokenProblem, arm_resources};
use crate::{Ctx, ThrottleState};

/// Generated client secrets are valid this long (Entra's longest recommended lifetime).
const SECRET_LIFETIME_SECS: i64 = 2 * 365 * 86400;
const MAX_FAULTS: usize = 1000;
const MAX_TRUSTED_CAS: usize = 50;
/// Bounds on settings, so a unit mistake (ms for s) is refused instead of freezing a test.
const MAX_CLOCK_SHIFT_SECS: i64 = 10 * 365 * 86400;
const MAX_PROPAGATION_DELAY_SECS: u64 = 86400;
const MAX_TOKEN_LIFETIME_SECS: u64 = 86400;
const MAX_LATENCY_MILLIS: u64 = 600_000;

pub fn router() -> Router<Ctx> {
    Router::new().fallback(dispatch)
}

/// A handler's early exit (boxed: a `Response` is large). Converts from `anyhow::Error` so it
/// can leave [`Ctx::mutate`].
struct Reject(Box<Response>);

fn reject(r: Response) -> Reject {
    Reject(Box::new(r))
}

impl From<anyhow::Error> for Reject {
    fn from(e: anyhow::Error) -> Self {
        reject(errors::persist_failed(errors::Surface::Admin, &e))
    }
}

impl From<Response> for Reject {
    fn from(r: Response) -> Self {
        reject(r)
    }
}

type Result<T> = std::result::Result<T, Reject>;

fn invalid(message: impl AsRef<str>) -> Reject {
    reject(errors::arm(StatusCode::BAD_REQUEST, "InvalidRequestContent", message.as_ref()))
}

fn not_found(code: &str, message: impl AsRef<str>) -> Reject {
    reject(errors::arm(StatusCode::NOT_FOUND, code, message.as_ref()))
}

fn conflict(message: impl AsRef<str>) -> Reject {
    reject(errors::arm(StatusCode::CONFLICT, "Conflict", message.as_ref()))
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

/// Parse a strict JSON body; an empty body counts as `{}` for requests whose fields are all
/// optional.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    Ok(errors::parse_json(Surface::Admin, body)?)
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

fn unauthorized(code: &str, message: &str) -> Reject {
    let mut resp = errors::arm(StatusCode::UNAUTHORIZED, code, message);
    let challenge = format!(
        "Bearer authorization_uri=\"https://login.microsoftonline.com/\", error=\"invalid_token\", error_description=\"{}\"",
        message.replace('"', "'")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    reject(resp)
}

/// Only the bootstrap principal, with a token for the ARM audience of the cloud called.
fn authenticate(ctx: &Ctx, info: &RequestInfo, headers: &HeaderMap, state: &Model, action: &str) -> Result<()> {
    let claims = tokens::authenticate(ctx, headers).map_err(|p| match p {
        TokenProblem::Missing => unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing. Send a bootstrap-principal token for https://management.azure.com/.default.",
        ),
        TokenProblem::Malformed => {
            unauthorized("InvalidAuthenticationToken", "The access token is invalid: it is not a Bearer JWT.")
        }
        TokenProblem::BadSignature => unauthorized(
            "InvalidAuthenticationToken",
            "The access token is invalid: it was not issued by this emulator.",
        ),
        TokenProblem::Expired => unauthorized("ExpiredAuthenticationToken", "The access token has expired."),
        TokenProblem::NotYetValid => unauthorized("InvalidAuthenticationToken", "The access token is not yet valid."),
    })?;
    let aud = claims.aud.strip_suffix('/').unwrap_or(&claims.aud);
    let allowed = arm_resources(info.cloud);
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(aud)) {
        return Err(unauthorized(
            "InvalidAuthenticationTokenAudience",
            &format!(
                "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences '{}/', '{}/'.",
                claims.aud, allowed[0], allowed[1]
            ),
        ));
    }
    let bootstrap = state.bootstrap.as_ref();
    let bootstrap_sp = bootstrap.and_then(|b| state.sp_in_tenant(b.client_id, b.tenant_id)).map(|sp| sp.object_id);
    let is_bootstrap = bootstrap.is_some_and(|b| claims.tid == b.tenant_id.to_string())
        && bootstrap_sp.is_some_and(|oid| claims.oid == oid.to_string())
        && claims.iss == format!("https://sts.windows.net/{}/", claims.tid);
    if !is_bootstrap {
        return Err(reject(errors::arm(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            &format!(
                "The client '{}' with object id '{}' does not have authorization to perform action '{action}'. Only the bootstrap principal of emulator.json may use the /_emulator/ admin API.",
                claims.appid, claims.oid
            ),
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

fn method_not_allowed(method: &Method, path: &str) -> Response {
    errors::arm(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!("The method {method} is not allowed on {path}. See docs/emulator.md for the admin API."),
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
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segs = path_segments(&path).ok_or_else(|| invalid("The request path is not valid percent-encoded UTF-8."))?;
    let state = ctx.snapshot();
    authenticate(ctx, &info, req.headers(), &state, &format!("{method} {path}"))?;
    let body = body_bytes(req.into_body()).await;
    let rest: Vec<&str> = segs.iter().skip(1).map(String::as_str).collect();
    let nope = || Ok(method_not_allowed(&method, &path));
    match (rest.as_slice(), &method) {
        ([], &Method::GET) => Ok(index()),
        ([], _) => nope(),
        (["tenants"], &Method::POST) => create_tenant(ctx, &body),
        (["tenants"], &Method::GET) => Ok(list_tenants(&state)),
        (["tenants"], _) => nope(),
        (["applications"], &Method::POST) => create_application(ctx, &body),
        (["applications"], &Method::GET) => Ok(list_applications(&state)),
        (["applications"], _) => nope(),
        (["applications", id], &Method::GET) => get_application(&state, id),
        (["applications", _], _) => nope(),
        (["applications", id, "credentials"], &Method::POST) => add_credentials(ctx, id, &body),
        (["applications", _, "credentials"], _) => nope(),
        (["service-principals"], &Method::POST) => create_service_principal(ctx, &body),
        (["service-principals"], _) => nope(),
        (["service-principals", id], &Method::PATCH) => patch_service_principal(ctx, id, &body),
        (["service-principals", _], _) => nope(),
        (["settings"], &Method::GET) => Ok(settings_response(ctx)),
        (["settings"], &Method::PUT | &Method::PATCH) => put_settings(ctx, &body),
        (["settings"], _) => nope(),
        (["clock", "shift"], &Method::POST) => shift_clock(ctx, &body),
        (["clock", "shift"], _) => nope(),
        (["faults"], &Method::POST) => create_fault(ctx, &body),
        (["faults"], &Method::GET) => Ok(json_response(StatusCode::OK, json!({"value": *ctx.faults.lock()}))),
        (["faults"], &Method::DELETE) => {
            let removed = std::mem::take(&mut *ctx.faults.lock()).len();
            Ok(json_response(StatusCode::OK, json!({"removed": removed})))
        }
        (["faults"], _) => nope(),
        (["requests"], &Method::GET) => Ok(json_response(StatusCode::OK, ctx.requests.to_json())),
        (["requests"], &Method::DELETE) => Ok(json_response(StatusCode::OK, json!({"removed": ctx.requests.reset()}))),
        (["requests"], _) => nope(),
        (["faults", id], &Method::GET) => get_fault(ctx, id),
        (["faults", id], &Method::DELETE) => delete_fault(ctx, id),
        (["faults", _], _) => nope(),
        (["vaults", vault, "throttle"], &Method::PUT) => put_throttle(ctx, vault, &body),
        (["vaults", vault, "throttle"], &Method::GET) => get_throttle(ctx, vault),
        (["vaults", vault, "throttle"], &Method::DELETE) => delete_throttle(ctx, vault),
        (["vaults", _, "throttle"], _) => nope(),
        (["vaults", vault, "keys", name, "versions", version, "backdate"], &Method::POST) => {
            backdate_key_version(ctx, vault, name, version, &body)
        }
        (["vaults", _, "keys", _, "versions", _, "backdate"], _) => nope(),
        (["private-endpoints"], &Method::POST) => create_private_endpoint(ctx, &body).await,
        (["private-endpoints"], &Method::GET) => Ok(list_private_endpoints(ctx)),
        (["private-endpoints"], _) => nope(),
        (["private-endpoints", id], &Method::GET) => get_private_endpoint(ctx, id),
        (["private-endpoints", id], &Method::DELETE) => delete_private_endpoint(ctx, id),
        (["private-endpoints", _], _) => nope(),
        _ => Err(not_found(
            "NotFound",
            format!(
                "No admin route {method} {path}. GET /_emulator/ lists the routes; docs/emulator.md documents them."
            ),
        )),
    }
}

fn index() -> Response {
    json_response(
        StatusCode::OK,
        json!({
            "description": "atrest emulator admin API (docs/emulator.md). Authenticate with a bootstrap-principal token for https://management.azure.com/.default.",
            "routes": [
                "POST /_emulator/tenants", "GET /_emulator/tenants",
                "POST /_emulator/applications", "GET /_emulator/applications", "GET /_emulator/applications/{appId}",
                "POST /_emulator/applications/{appId}/credentials",
                "POST /_emulator/service-principals", "PATCH /_emulator/service-principals/{objectId}",
                "GET /_emulator/settings", "PUT /_emulator/settings",
                "POST /_emulator/clock/shift",
                "POST /_emulator/faults", "GET /_emulator/faults", "GET /_emulator/faults/{id}",
                "DELETE /_emulator/faults/{id}", "DELETE /_emulator/faults",
                "GET /_emulator/requests", "DELETE /_emulator/requests",
                "PUT /_emulator/vaults/{vault}/throttle", "GET /_emulator/vaults/{vault}/throttle",
                "DELETE /_emulator/vaults/{vault}/throttle",
                "POST /_emulator/vaults/{vault}/keys/{name}/versions/{version}/backdate",
                "POST /_emulator/private-endpoints", "GET /_emulator/private-endpoints",
                "GET /_emulator/private-endpoints/{id}", "DELETE /_emulator/private-endpoints/{id}"
            ]
        }),
    )
}

fn parse_uuid(raw: &str, what: &str) -> Result<Uuid> {
    raw.parse().map_err(|_| {
        invalid(format!("'{raw}' is not a valid {what}: send a GUID such as 00000000-0000-0000-0000-000000000000."))
    })
}

fn check_display_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 256 {
        return Err(invalid("display_name must be 1 to 256 characters."));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    display_name: Option<String>,
    /// `AZURE`, `AZURE_CHINA` or `AZURE_US_GOVERNMENT`.
    cloud: Option<String>,
}

fn create_tenant(ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let req: NewTenant = parse(body)?;
    let name = req.display_name.unwrap_or_else(|| "Emulated tenant".to_string());
    check_display_name(&name)?;
    let cloud = match req.cloud.as_deref() {
        None => AzureEnvironment::Azure,
        Some(c) => AzureEnvironment::from_str(c).map_err(|e| invalid(format!("cloud: {e}")))?,
    };
    let now = ctx.now();
    let (info, sp, domain) = ctx.mutate(|s| -> Result<_> {
        let info = s.create_tenant_with_admin(&name, cloud, now);
        let tenant: Uuid = info.tenant_id.parse().map_err(anyhow::Error::from)?;
        let client: Uuid = info.client_id.parse().map_err(anyhow::Error::from)?;
        let sp = s.sp_in_tenant(client, tenant).map(|sp| sp.object_id);
        let domain = s.tenants.get(&tenant).map(|t| t.default_domain.clone());
        Ok((info, sp, domain))
    })?;
    let mut body = serde_json::to_value(&info).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("service_principal_id".into(), json!(sp));
        obj.insert("default_domain".into(), json!(domain));
        obj.insert("display_name".into(), json!(name));
        obj.insert("cloud".into(), json!(cloud));
    }
    Ok(json_response(StatusCode::CREATED, body))
}

fn list_tenants(state: &Model) -> Response {
    let value: Vec<Value> = state
        .tenants
        .values()
        .map(|t| {
            let subs: Vec<Uuid> = state.subscriptions.values().filter(|s| s.tenant_id == t.id).map(|s| s.id).collect();
            json!({"tenant_id": t.id, "display_name": t.display_name, "default_domain": t.default_domain, "subscription_ids": subs})
        })
        .collect();
    json_response(StatusCode::OK, json!({"value": value}))
}

// ---------------------------------------------------------------------------------------------
// Applications and credentials
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFederated {
    issuer: String,
    subject: String,
    audiences: Option<Vec<String>>,
    name: Option<String>,
    description: Option<String>,
}

/// Credentials to add, when registering an app or later.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewCredentials {
    certificate_pem: Option<String>,
    #[serde(default)]
    generate_secret: bool,
    federated: Option<NewFederated>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApplication {
    home_tenant_id: String,
    display_name: String,
    #[serde(default)]
    multi_tenant: bool,
    certificate_pem: Option<String>,
    #[serde(default)]
    generate_secret: bool,
    federated: Option<NewFederated>,
    /// Also create the app's service principal in its home tenant (as the portal does).
    #[serde(default)]
    create_service_principal: bool,
}

/// A certificate credential from a PEM (the first `CERTIFICATE` block; a private key in the same
/// file is ignored). Entra certificate credentials sign RS256/PS256 assertions, so RSA only.
pub fn certificate_credential_from_pem(pem: &str, now: i64) -> std::result::Result<CertificateCredential, String> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(|p| p.ok())
        .find(|p| p.label == "CERTIFICATE")
        .ok_or(
            "certificate_pem contains no '-----BEGIN CERTIFICATE-----' block: send the PEM of an X.509 certificate",
        )?;
    certificate_credential_from_der(&block.contents, now).map_err(|e| format!("certificate_pem {e}"))
}

/// A certificate credential from the DER of an X.509 certificate (RSA only, not expired), valid
/// for the certificate's whole validity. Errors read after "the certificate ...".
pub fn certificate_credential_from_der(der: &[u8], now: i64) -> std::result::Result<CertificateCredential, String> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("is not a valid X.509 certificate ({e})"))?;
    if !rest.is_empty() {
        return Err("is not a valid X.509 certificate (trailing bytes after the DER)".into());
    }
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
        return Err("has a key that is not RSA: Entra certificate credentials sign RS256 or PS256 assertions, so register an RSA (2048 bits or more) certificate".into());
    }
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if not_after <= now {
        return Err(format!(
            "expired at {} (unix {not_after}); register a certificate that is still valid",
            cert.validity().not_after
        ));
    }
    Ok(CertificateCredential {
        key_id: Uuid::new_v4(),
        sha1: hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)),
        sha256: hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)),
        spki_der_b64: base64::engine::general_purpose::STANDARD.encode(spki.raw),
        not_before,
        not_after,
        display_name: None,
    })
}

/// Prepared credentials: validated before the state is touched, applied inside `mutate`.
struct PreparedCredentials {
    certificate: Option<CertificateCredential>,
    secret: Option<(String, SecretCredential)>,
    federated: Option<NewFederated>,
}

fn prepare_credentials(creds: NewCredentials, now: i64) -> Result<PreparedCredentials> {
    let certificate = match creds.certificate_pem {
        Some(pem) => Some(certificate_credential_from_pem(&pem, now).map_err(invalid)?),
        None => None,
    };
    let secret = creds.generate_secret.then(|| {
        let secret = crate::state::new_client_secret();
        let cred = SecretCredential {
            key_id: Uuid::new_v4(),
            hint: secret.chars().take(3).collect(),
            sha256: crate::state::sha256_hex(secret.as_bytes()),
            end_date_time: now + SECRET_LIFETIME_SECS,
            start_date_time: Some(now),
            display_name: None,
        };
        (secret, cred)
    });
    Ok(PreparedCredentials { certificate, secret, federated: creds.federated })
}

/// Add prepared credentials to `app`; returns what the response reports about them.
fn apply_credentials(
    app: &mut Application,
    creds: PreparedCredentials,
    out: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    if let Some(cert) = creds.certificate {
        if app.certificates.iter().any(|c| c.sha1 == cert.sha1) {
            return Err(conflict(format!(
                "The application already has the certificate with thumbprint {}.",
                cert.sha1.to_ascii_uppercase()
            )));
        }
        out.insert("certificate_thumbprint_sha1".into(), json!(cert.sha1.to_ascii_uppercase()));
        out.insert("certificate_thumbprint_sha256".into(), json!(cert.sha256.to_ascii_uppercase()));
        out.insert("certificate_key_id".into(), json!(cert.key_id));
        app.certificates.push(cert);
    }
    if let Some((secret, cred)) = creds.secret {
        // The only time the secret is visible; the state keeps its SHA-256.
        out.insert("client_secret".into(), json!(secret));
        out.insert("secret_key_id".into(), json!(cred.key_id));
        app.secrets.push(cred);
    }
    if let Some(f) = creds.federated {
        let name = f.name.unwrap_or_else(|| format!("fic-{}", &Uuid::new_v4().simple().to_string()[..12]));
        let audiences = f.audiences.unwrap_or_else(|| vec![AzureEnvironment::Azure.fic_audience().to_string()]);
        let fic: FederatedCredential =
            new_federated_credential(&app.federated, &name, &f.issuer, &f.subject, &audiences, f.description).map_err(
                |e| match e {
                    FicError::Invalid(m) => invalid(format!("federated: {m}")),
                    FicError::Conflict(m) => conflict(m),
                },
            )?;
        out.insert("federated_credential_id".into(), json!(fic.id));
        out.insert("federated_credential_name".into(), json!(fic.name));
        app.federated.push(fic);
    }
    Ok(())
}

fn create_application(ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let req: NewApplication = parse(body)?;
    let home = parse_uuid(&req.home_tenant_id, "home_tenant_id")?;
    check_display_name(&req.display_name)?;
    let now = ctx.now();
    let creds = prepare_credentials(
        NewCredentials {
            certificate_pem: req.certificate_pem,
            generate_secret: req.generate_secret,
            federated: req.federated,
        },
        now,
    )?;
    let out = ctx.mutate(|s| -> Result<serde_json::Map<String, Value>> {
        if !s.tenants.contains_key(&home) {
            return Err(not_found(
                "TenantNotFound",
                format!("The tenant '{home}' does not exist. Create one with POST /_emulator/tenants or use the bootstrap tenant."),
            ));
        }
        let mut app = Application {
            object_id: Uuid::new_v4(),
            app_id: Uuid::new_v4(),
            home_tenant: home,
            display_name: req.display_name.clone(),
            multi_tenant: req.multi_tenant,
            secrets: vec![],
            certificates: vec![],
            federated: vec![],
            created: now,
        };
        let mut out = serde_json::Map::new();
        out.insert("app_id".into(), json!(app.app_id));
        out.insert("object_id".into(), json!(app.object_id));
        out.insert("home_tenant_id".into(), json!(home));
        out.insert("display_name".into(), json!(app.display_name));
        out.insert("multi_tenant".into(), json!(app.multi_tenant));
        apply_credentials(&mut app, creds, &mut out)?;
        if req.create_service_principal {
            let sp = ServicePrincipal {
                object_id: Uuid::new_v4(),
                tenant_id: home,
                app_id: app.app_id,
                display_name: app.display_name.clone(),
                account_enabled: true,
                directory_admin: false,
                created: now,
            };
            out.insert("service_principal_id".into(), json!(sp.object_id));
            s.service_principals.insert(sp.object_id, sp);
        }
        s.applications.insert(app.object_id, app);
        Ok(out)
    })?;
    Ok(json_response(StatusCode::CREATED, Value::Object(out)))
}

/// An application by app id or object id.
fn find_app_key(state: &Model, raw: &str) -> Result<Uuid> {
    let id = parse_uuid(raw, "application id")?;
    state
        .applications
        .values()
        .find(|a| a.app_id == id || a.object_id == id)
        .map(|a| a.object_id)
        .ok_or_else(|| not_found("ApplicationNotFound", format!("No application has the app id or object id '{raw}'.")))
}

fn application_view(state: &Model, app: &Application) -> Value {
    let sps: Vec<Value> = state
        .service_principals
        .values()
        .filter(|sp| sp.app_id == app.app_id)
        .map(|sp| {
            json!({"object_id": sp.object_id, "tenant_id": sp.tenant_id, "account_enabled": sp.account_enabled, "directory_admin": sp.directory_admin})
        })
        .collect();
    json!({
        "app_id": app.app_id,
        "object_id": app.object_id,
        "home_tenant_id": app.home_tenant,
        "display_name": app.display_name,
        "multi_tenant": app.multi_tenant,
        "secrets": app.secrets.iter().map(|s| json!({"key_id": s.key_id, "hint": s.hint, "end_date_time": s.end_date_time})).collect::<Vec<_>>(),
        "certificates": app.certificates.iter().map(|c| json!({"key_id": c.key_id, "thumbprint_sha1": c.sha1.to_ascii_uppercase(), "thumbprint_sha256": c.sha256.to_ascii_uppercase(), "not_before": c.not_before, "not_after": c.not_after})).collect::<Vec<_>>(),
        "federated": app.federated,
        "service_principals": sps,
    })
}

fn list_applications(state: &Model) -> Response {
    let value: Vec<Value> = state.applications.values().map(|a| application_view(state, a)).collect();
    json_response(StatusCode::OK, json!({"value": value}))
}

fn get_application(state: &Model, raw: &str) -> Result<Response> {
    let key = find_app_key(state, raw)?;
    let app = state.applications.get(&key).ok_or_else(|| not_found("ApplicationNotFound", raw))?;
    Ok(json_response(StatusCode::OK, application_view(state, app)))
}

fn add_credentials(ctx: &Ctx, raw: &str, body: &[u8]) -> Result<Response> {
    let req: NewCredentials = parse(body)?;
    if req.certificate_pem.is_none() && !req.generate_secret && req.federated.is_none() {
        return Err(invalid(
            "Send at least one credential: certificate_pem, generate_secret: true, or federated: {issuer, subject}.",
        ));
    }
    let now = ctx.now();
    let creds = prepare_credentials(req, now)?;
    let out = ctx.mutate(|s| -> Result<serde_json::Map<String, Value>> {
        let key = find_app_key(s, raw)?;
        let app = s.applications.get_mut(&key).ok_or_else(|| not_found("ApplicationNotFound", raw))?;
        let mut out = serde_json::Map::new();
        out.insert("app_id".into(), json!(app.app_id));
        out.insert("object_id".into(), json!(app.object_id));
        apply_credentials(app, creds, &mut out)?;
        Ok(out)
    })?;
    Ok(json_response(StatusCode::CREATED, Value::Object(out)))
}

// ---------------------------------------------------------------------------------------------
// Service principals
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServicePrincipal {
    tenant_id: String,
    app_id: String,
    #[serde(default)]
    directory_admin: bool,
    account_enabled: Option<bool>,
}

fn sp_view(sp: &ServicePrincipal) -> Value {
    json!({
        "object_id": sp.object_id, "tenant_id": sp.tenant_id, "app_id": sp.app_id,
        "display_name": sp.display_name, "account_enabled": sp.account_enabled, "directory_admin": sp.directory_admin,
    })
}

fn create_service_principal(ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let req: NewServicePrincipal = parse(body)?;
    let tenant = parse_uuid(&req.tenant_id, "tenant_id")?;
    let app_id = parse_uuid(&req.app_id, "app_id")?;
    let now = ctx.now();
    let sp = ctx.mutate(|s| -> Result<ServicePrincipal> {
        if !s.tenants.contains_key(&tenant) {
            return Err(not_found("TenantNotFound", format!("The tenant '{tenant}' does not exist.")));
        }
        let app = s.app_by_app_id(app_id).ok_or_else(|| {
            not_found("ApplicationNotFound", format!("No application has the app id '{app_id}'. Register it with POST /_emulator/applications."))
        })?;
        if !app.multi_tenant && app.home_tenant != tenant {
            return Err(invalid(format!(
                "The application '{app_id}' is single-tenant (home tenant {}); it can have a service principal only there. Register it with multi_tenant: true to use it in other tenants.",
                app.home_tenant
            )));
        }
        if let Some(existing) = s.sp_in_tenant(app_id, tenant) {
            return Err(conflict(format!(
                "The application '{app_id}' already has the service principal '{}' in tenant '{tenant}'.",
                existing.object_id
            )));
        }
        let sp = ServicePrincipal {
            object_id: Uuid::new_v4(),
            tenant_id: tenant,
            app_id,
            display_name: app.display_name.clone(),
            account_enabled: req.account_enabled.unwrap_or(true),
            directory_admin: req.directory_admin,
            created: now,
        };
        s.service_principals.insert(sp.object_id, sp.clone());
        Ok(sp)
    })?;
    Ok(json_response(StatusCode::CREATED, sp_view(&sp)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchServicePrincipal {
    directory_admin: Option<bool>,
    account_enabled: Option<bool>,
}

fn patch_service_principal(ctx: &Ctx, raw: &str, body: &[u8]) -> Result<Response> {
    let req: PatchServicePrincipal = parse(body)?;
    let id = parse_uuid(raw, "service principal object id")?;
    let sp = ctx.mutate(|s| -> Result<ServicePrincipal> {
        let sp = s.service_principals.get_mut(&id).ok_or_else(|| {
            not_found("ServicePrincipalNotFound", format!("No service principal has the object id '{id}'."))
        })?;
        if let Some(v) = req.directory_admin {
            sp.directory_admin = v;
        }
        if let Some(v) = req.account_enabled {
            sp.account_enabled = v;
        }
        Ok(sp.clone())
    })?;
    Ok(json_response(StatusCode::OK, sp_view(&sp)))
}

// ---------------------------------------------------------------------------------------------
// Settings and clock
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    rbac_propagation_delay_secs: Option<u64>,
    clock_shift_secs: Option<i64>,
    token_lifetime_secs: Option<u64>,
    trusted_issuer_ca_pems: Option<Vec<String>>,
    allow_http_issuers: Option<bool>,
}

fn settings_response(ctx: &Ctx) -> Response {
    let s = ctx.read(|s| s.settings.clone());
    json_response(
        StatusCode::OK,
        json!({
            "rbac_propagation_delay_secs": s.rbac_propagation_delay_secs,
            "clock_shift_secs": s.clock_shift_secs,
            "token_lifetime_secs": s.token_lifetime_secs,
            "trusted_issuer_ca_pems": s.trusted_issuer_ca_pems,
            "allow_http_issuers": s.allow_http_issuers,
            "now": ctx.now(),
        }),
    )
}

fn check_clock_shift(v: i64) -> Result<()> {
    if v.abs() > MAX_CLOCK_SHIFT_SECS {
        return Err(invalid(format!(
            "clock_shift_secs {v} is out of range: the shift must be within ±{MAX_CLOCK_SHIFT_SECS} seconds (10 years)."
        )));
    }
    Ok(())
}

/// Every entry must hold at least one parsable X.509 certificate.
fn check_ca_pems(pems: &[String]) -> Result<()> {
    if pems.len() > MAX_TRUSTED_CAS {
        return Err(invalid(format!("trusted_issuer_ca_pems: send at most {MAX_TRUSTED_CAS} entries.")));
    }
    for (i, pem) in pems.iter().enumerate() {
        let mut found = false;
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| invalid(format!("trusted_issuer_ca_pems[{i}] is not valid PEM ({e}).")))?;
            if block.label == "CERTIFICATE" {
                x509_parser::parse_x509_certificate(&block.contents).map_err(|e| {
                    invalid(format!("trusted_issuer_ca_pems[{i}] holds a certificate that does not parse ({e})."))
                })?;
                found = true;
            }
        }
        if !found {
            return Err(invalid(format!(
                "trusted_issuer_ca_pems[{i}] contains no '-----BEGIN CERTIFICATE-----' block: send the PEM of the issuer's CA certificate."
            )));
        }
    }
    Ok(())
}

fn put_settings(ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let req: SettingsPatch = parse(body)?;
    if let Some(d) = req.rbac_propagation_delay_secs
        && d > MAX_PROPAGATION_DELAY_SECS
    {
        return Err(invalid(format!(
            "rbac_propagation_delay_secs {d} is out of range: use 0 to {MAX_PROPAGATION_DELAY_SECS} seconds."
        )));
    }
    if let Some(c) = req.clock_shift_secs {
        check_clock_shift(c)?;
    }
    if let Some(l) = req.token_lifetime_secs
        && !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&l)
    {
        return Err(invalid(format!(
            "token_lifetime_secs {l} is out of range: use 1 to {MAX_TOKEN_LIFETIME_SECS} seconds."
        )));
    }
    if let Some(p) = &req.trusted_issuer_ca_pems {
        check_ca_pems(p)?;
    }
    let cas_changed = req.trusted_issuer_ca_pems.is_some();
    ctx.mutate(|s| -> Result<()> {
        let st = &mut s.settings;
        if let Some(v) = req.rbac_propagation_delay_secs {
            st.rbac_propagation_delay_secs = v;
        }
        if let Some(v) = req.clock_shift_secs {
            st.clock_shift_secs = v;
        }
        if let Some(v) = req.token_lifetime_secs {
            st.token_lifetime_secs = v;
        }
        if let Some(v) = req.trusted_issuer_ca_pems {
            st.trusted_issuer_ca_pems = v;
        }
        if let Some(v) = req.allow_http_issuers {
            st.allow_http_issuers = v;
        }
        Ok(())
    })?;
    if cas_changed {
        ctx.issuers.clear();
    }
    Ok(settings_response(ctx))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockShift {
    seconds: i64,
}

fn shift_clock(ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let req: ClockShift = parse(body)?;
    let shift = ctx.mutate(|s| -> Result<i64> {
        let next = s
            .settings
            .clock_shift_secs
            .checked_add(req.seconds)
            .ok_or_else(|| invalid("seconds overflows the clock shift."))?;
        check_clock_shift(next)?;
        s.settings.clock_shift_secs = next;
        Ok(next)
    })?;
    Ok(json_response(StatusCode::OK, json!({"clock_shift_secs": shift, "now": ctx.now()})))
}

// ---------------------------------------------------------------------------------------------
// Faults and throttles (runtime only)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFault {
    host: Option<String>,
    vault: Option<String>,
    path_prefix: Option<String>,
    kind: FaultKind,
    count: Option<u64>,
}

fn vault_name(raw: &str) -> Result<String> {
    VaultName::from_str(raw).map(|v| v.as_str().to_string()).map_err(|e| invalid(e.to_string()))
}

fn create_fault(ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let req: NewFault = parse(body)?;
    match &req.kind {
        FaultKind::Latency { millis } if *millis > MAX_LATENCY_MILLIS => {
            return Err(invalid(format!("kind.millis {millis} is out of range: use 0 to {MAX_LATENCY_MILLIS}.")));
        }
        FaultKind::Throttle { retry_after_secs } if *retry_after_secs > 86400 => {
            return Err(invalid(format!("kind.retry_after_secs {retry_after_secs} is out of range: use 0 to 86400.")));
        }
        FaultKind::ServerError { status } if !(500..=599).contains(status) => {
            return Err(invalid(format!("kind.status {status} is not a 5xx status: use 500 to 599 (e.g. 503).")));
        }
        _ => {}
    }
    let host = match req.host {
        Some(h) => {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let served = is_loopback_host(&h) || AzureEnvironment::classify_host(&h).is_some();
            if !served {
                return Err(invalid(format!(
                    "host '{h}' is not a host the emulator serves: use e.g. login.microsoftonline.com, management.azure.com, graph.microsoft.com or <vault>.vault.azure.net (no scheme, no port)."
                )));
            }
            Some(h)
        }
        None => None,
    };
    let vault = req.vault.as_deref().map(vault_name).transpose()?;
    if let Some(p) = &req.path_prefix
        && !p.starts_with('/')
    {
        return Err(invalid(format!("path_prefix '{p}' must start with '/', e.g. /keys/.")));
    }
    if req.count == Some(0) {
        return Err(invalid("count must be at least 1 (omit it for a fault that stays until deleted)."));
    }
    // A vault fault on a non-vault host could never match; say so instead of waiting forever.
    if let (Some(h), Some(v)) = (&host, &vault)
        && !matches!(AzureEnvironment::classify_host(h), Some((_, HostKind::Vault(hv))) if hv == *v)
    {
        return Err(invalid(format!("host '{h}' is not the host of vault '{v}': send only one of them.")));
    }
    let fault =
        Fault { id: Uuid::new_v4(), host, vault, path_prefix: req.path_prefix, kind: req.kind, remaining: req.count };
    {
        let mut faults = ctx.faults.lock();
        if faults.len() >= MAX_FAULTS {
            return Err(conflict(format!("There are already {MAX_FAULTS} faults; delete some first.")));
        }
        faults.push(fault.clone());
    }
    Ok(json_response(StatusCode::CREATED, json!(fault)))
}

fn get_fault(ctx: &Ctx, raw: &str) -> Result<Response> {
    let id = parse_uuid(raw, "fault id")?;
    let fault = ctx.faults.lock().iter().find(|f| f.id == id).cloned();
    let fault = fault
        .ok_or_else(|| not_found("FaultNotFound", format!("No fault has the id '{id}' (it may have run out).")))?;
    Ok(json_response(StatusCode::OK, json!(fault)))
}

fn delete_fault(ctx: &Ctx, raw: &str) -> Result<Response> {
    let id = parse_uuid(raw, "fault id")?;
    let mut faults = ctx.faults.lock();
    let before = faults.len();
    faults.retain(|f| f.id != id);
    if faults.len() == before {
        return Err(not_found("FaultNotFound", format!("No fault has the id '{id}' (it may have run out).")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleRequest {
    limit: Option<u64>,
    window_secs: Option<u64>,
    /// `azure`: Key Vault's documented limit, 4,000 transactions per 10 seconds per vault.
    preset: Option<String>,
}

fn put_throttle(ctx: &Ctx, raw: &str, body: &[u8]) -> Result<Response> {
    let vault = vault_name(raw)?;
    let req: ThrottleRequest = parse(body)?;
    let (limit, window_secs) = match (req.preset.as_deref(), req.limit, req.window_secs) {
        (Some(p), None, None) if p.eq_ignore_ascii_case("azure") => (4000, 10),
        (Some(p), None, None) => {
            return Err(invalid(format!("preset '{p}' is unknown: the only preset is \"azure\" (4000 per 10 s).")));
        }
        (Some(_), _, _) => return Err(invalid("Send either preset or limit and window_secs, not both.")),
        (None, Some(l), Some(w)) => (l, w),
        (None, _, _) => {
            return Err(invalid("Send {\"limit\": N, \"window_secs\": S} or {\"preset\": \"azure\"}."));
        }
    };
    if !(1..=1_000_000).contains(&limit) || !(1..=3600).contains(&window_secs) {
        return Err(invalid("limit must be 1 to 1000000 and window_secs 1 to 3600."));
    }
    ctx.throttles
        .lock()
        .insert(vault.clone(), ThrottleState { limit, window_ms: (window_secs * 1000) as i64, hits: VecDeque::new() });
    Ok(json_response(StatusCode::OK, json!({"vault": vault, "limit": limit, "window_secs": window_secs})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Backdate {
    days: u32,
}

/// Moves a key version's `attributes.created` and `updated` back by `days`, as if it had been
/// made then: the only way to test policies on a key's age (a rotation alert) without waiting,
/// since Key Vault sets `created` itself. Moving the whole clock back instead would make every
/// credential made since look not yet valid.
fn backdate_key_version(ctx: &Ctx, raw: &str, name: &str, version: &str, body: &[u8]) -> Result<Response> {
    let vault = vault_name(raw)?;
    let req: Backdate = parse(body)?;
    if !(1..=3650).contains(&req.days) {
        return Err(invalid("days must be 1 to 3650."));
    }
    let secs = i64::from(req.days) * 86_400;
    let (created, updated) = ctx.mutate(|s| -> Result<(i64, i64)> {
        let v = s.vaults.values_mut().find(|v| v.name.eq_ignore_ascii_case(&vault)).ok_or_else(|| {
            not_found("VaultNotFound", format!("No vault is named '{vault}'. GET /_emulator/ lists the admin routes."))
        })?;
        let key = v.keys.get_mut(&name.to_ascii_lowercase()).ok_or_else(|| {
            not_found(
                "KeyNotFound",
                format!("Vault '{vault}' has no key named '{name}' (a deleted key cannot be backdated)."),
            )
        })?;
        let rec = key.versions.iter_mut().find(|r| r.version.eq_ignore_ascii_case(version)).ok_or_else(|| {
            not_found("KeyNotFound", format!("Key '{name}' in vault '{vault}' has no version '{version}'."))
        })?;
        rec.created -= secs;
        rec.updated -= secs;
        Ok((rec.created, rec.updated))
    })?;
    Ok(json_response(
        StatusCode::OK,
        json!({"vault": vault, "key": name, "version": version, "created": created, "updated": updated}),
    ))
}

fn get_throttle(ctx: &Ctx, raw: &str) -> Result<Response> {
    let vault = vault_name(raw)?;
    let throttles = ctx.throttles.lock();
    let t = throttles
        .get(&vault)
        .ok_or_else(|| not_found("ThrottleNotFound", format!("Vault '{vault}' is not throttled.")))?;
    Ok(json_response(StatusCode::OK, json!({"vault": vault, "limit": t.limit, "window_secs": t.window_ms / 1000})))
}

fn delete_throttle(ctx: &Ctx, raw: &str) -> Result<Response> {
    let vault = vault_name(raw)?;
    if ctx.throttles.lock().remove(&vault).is_none() {
        return Err(not_found("ThrottleNotFound", format!("Vault '{vault}' is not throttled.")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// Private endpoints
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPrivateEndpoint {
    vault: String,
    port: Option<u16>,
    /// Request a connection that the vault's owner must approve in ARM (Azure's
    /// `--manual-request`), under this name. Absent: auto-approved.
    #[serde(rename = "connectionName")]
    connection_name: Option<String>,
    /// The requester's message shown to the approver.
    #[serde(rename = "requestMessage")]
    request_message: Option<String>,
}

fn endpoint_view(ctx: &Ctx, pe: &PrivateEndpoint) -> Value {
    let listening = ctx.private_listeners.lock().contains_key(&pe.id);
    let mut v = json!({
        "id": pe.id, "vault": pe.vault, "port": pe.port,
        "address": format!("127.0.0.1:{}", pe.port), "listening": listening,
        "connectionStatus": pe.connection.as_ref().map(|c| c.status.as_str()).unwrap_or("Approved"),
    });
    if let Some(c) = &pe.connection {
        v["connectionName"] = json!(c.name);
    }
    v
}

/// A private endpoint connection name as ARM accepts it: 1..80 of letters, digits, `-`, `_`, `.`.
fn connection_name(raw: &str) -> Result<String> {
    let ok = (1..=80).contains(&raw.len()) && raw.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(invalid(format!(
            "connectionName '{raw}' is not a valid private endpoint connection name: use 1 to 80 letters, digits, '-', '_' or '.'."
        )));
    }
    Ok(raw.to_string())
}

async fn create_private_endpoint(ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let req: NewPrivateEndpoint = parse(body)?;
    let vault = vault_name(&req.vault)?;
    if !ctx.read(|s| s.vaults.values().any(|v| v.name.eq_ignore_ascii_case(&vault))) {
        return Err(not_found(
            "VaultNotFound",
            format!(
                "No vault is named '{vault}'. Create the vault through ARM first; a private endpoint connects to an existing vault."
            ),
        ));
    }
    let port = req.port.unwrap_or(0);
    if port != 0 && port < 1024 {
        return Err(invalid(format!("port {port} is privileged: use 0 (any free port) or 1024 to 65535.")));
    }
    let connection = match &req.connection_name {
        None => None,
        Some(raw) => Some(PeConnection {
            name: connection_name(raw)?,
            status: PeConnectionStatus::Pending,
            description: req.request_message.clone().unwrap_or_default(),
        }),
    };
    let id = Uuid::new_v4();
    let (port, handle) = crate::server::spawn_private_listener(ctx, id, &vault, port)
        .await
        .map_err(|e| conflict(format!("Cannot listen on 127.0.0.1:{port} ({e}); choose another port or send 0.")))?;
    let pe = PrivateEndpoint { id, vault: vault.clone(), port, connection };
    let saved = ctx.mutate(|s| -> Result<()> {
        if let Some(c) = &pe.connection {
            // A connection name is unique on its vault while the vault still lists it.
            let taken = s.settings.private_endpoints.iter().any(|p| {
                p.vault.eq_ignore_ascii_case(&vault)
                    && p.connection.as_ref().is_some_and(|o| {
                        o.name.eq_ignore_ascii_case(&c.name) && o.status != PeConnectionStatus::Disconnected
                    })
            });
            if taken {
                return Err(conflict(format!(
                    "Vault '{vault}' already has a private endpoint connection named '{}'. Delete it on the vault \
                     (ARM DELETE .../privateEndpointConnections/{}) or choose another name.",
                    c.name, c.name
                )));
            }
        }
        s.settings.private_endpoints.push(pe.clone());
        Ok(())
    });
    if let Err(e) = saved {
        handle.abort();
        return Err(e);
    }
    ctx.private_listeners.lock().insert(id, (port, handle));
    Ok(json_response(StatusCode::CREATED, endpoint_view(ctx, &pe)))
}

fn list_private_endpoints(ctx: &Ctx) -> Response {
    let pes = ctx.read(|s| s.settings.private_endpoints.clone());
    let value: Vec<Value> = pes.iter().map(|pe| endpoint_view(ctx, pe)).collect();
    json_response(StatusCode::OK, json!({"value": value}))
}

fn find_endpoint(ctx: &Ctx, raw: &str) -> Result<PrivateEndpoint> {
    let id = parse_uuid(raw, "private endpoint id")?;
    ctx.read(|s| s.settings.private_endpoints.iter().find(|p| p.id == id).cloned())
        .ok_or_else(|| not_found("PrivateEndpointNotFound", format!("No private endpoint has the id '{id}'.")))
}

fn get_private_endpoint(ctx: &Ctx, raw: &str) -> Result<Response> {
    let pe = find_endpoint(ctx, raw)?;
    Ok(json_response(StatusCode::OK, endpoint_view(ctx, &pe)))
}

fn delete_private_endpoint(ctx: &Ctx, raw: &str) -> Result<Response> {
    let pe = find_endpoint(ctx, raw)?;
    ctx.mutate(|s| -> Result<()> {
        s.settings.private_endpoints.retain(|p| p.id != pe.id);
        Ok(())
    })?;
    if let Some((_, handle)) = ctx.private_listeners.lock().remove(&pe.id) {
        handle.abort();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Re-open the private-endpoint listeners recorded in the state, on the same port when it is
/// free; otherwise on a new port, which is written back to the state (and shown by
/// `GET /_emulator/private-endpoints`).
pub async fn restore_private_endpoints(ctx: &Ctx) -> anyhow::Result<()> {
    let endpoints = ctx.read(|s| s.settings.private_endpoints.clone());
    let mut moved = Vec::new();
    for pe in endpoints {
        let (port, handle) = match crate::server::spawn_private_listener(ctx, pe.id, &pe.vault, pe.port).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(port = pe.port, vault = %pe.vault, error = %e, "private endpoint port taken; using a new port");
                crate::server::spawn_private_listener(ctx, pe.id, &pe.vault, 0).await?
            }
        };
        if port != pe.port {
            moved.push((pe.id, port));
        }
        ctx.private_listeners.lock().insert(pe.id, (port, handle));
    }
    if !moved.is_empty() {
        ctx.mutate(|s| -> anyhow::Result<()> {
            for (id, port) in &moved {
                if let Some(p) = s.settings.private_endpoints.iter_mut().find(|p| p.id == *id) {
                    p.port = *port;
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}
