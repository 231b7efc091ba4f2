//! The Key Vault keys data plane (`https://{vault}.vault.azure.net/keys/...` and its sovereign
//! twins), as `shared/reference/azure-protocols.md` §3 describes it.
//!
//! Every request runs the same pipeline, in this order:
//! 1. **Route** the path by hand ([`route`]): clients send empty version segments
//!    (`/keys/k//wrapkey` from the Rust SDK) and trailing slashes (`/keys/k/` from JS), which a
//!    pattern router would not match. Unknown paths get 404, known paths with the wrong method 405.
//! 2. **api-version**: any 7.x (and previews) or date form (`2016-10-01`, `2025-07-01`,
//!    `2026-03-01-preview`); missing or another shape → 400 `BadParameter`.
//! 3. **Vault** by (cloud of the host name, vault name). Real Azure has no such vault in DNS;
//!    here the answer is 404 `VaultNotFound`, so a test sees a clear reason.
//! 4. **Authentication** (401 with the `WWW-Authenticate` challenge naming the vault's tenant
//!    and the cloud's Key Vault resource): token present, signed by the emulator, in its
//!    lifetime, audience `https://vault.{suffix}` (with or without `/`), issued by the vault's
//!    tenant (AKV10022 / AKV10032).
//! 5. **Network**: `publicNetworkAccess: Disabled` → 403 `ForbiddenByConnection` unless the
//!    request came through a private-endpoint listener for this vault; a private endpoint of
//!    another vault never reaches this one. This runs *after* authentication because Azure's
//!    firewall 403 names the caller (`Caller: appid=..;oid=..`), which it can only know from a
//!    validated token, and because SDKs need the 401 challenge first to learn the tenant.
//! 6. **Authorization**, on every request against the current state, so revoking a grant
//!    affects tokens already issued: RBAC (`ForbiddenByRbac`) or access policies
//!    (`ForbiddenByPolicy`), by the vault's `enableRbacAuthorization`.
//! 7. The **operation** ([`ops`]), which validates the body and the key's state.
//!
//! Every answer carries `x-ms-keyvault-service-version`, `x-ms-keyvault-network-info` and, once
//! the vault is known, `x-ms-keyvault-region`. Nothing here logs tokens, bodies or key material.

mod crypto;
mod model;
mod ops;

pub use crypto::KeyCache;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::Response;

use atrest_domain::AzureEnvironment;

use crate::Ctx;
use crate::errors;
use crate::server::{ListenerKind, RequestInfo, Route};
use crate::state::{State, Vault};
use crate::tokens::{self, AccessClaims, TokenProblem};

/// The service version Key Vault reports; clients only log it.
const SERVICE_VERSION: &str = "1.9.2853.1";

/// Key Vault's first-party application id, which Entra may put in `aud` instead of the URI.
const KEY_VAULT_APP_ID: &str = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093";

/// A finished error response. Boxed so `Result<T, Reject>` stays small on the happy path.
pub(crate) struct Reject(Box<Response>);

impl From<Response> for Reject {
    fn from(r: Response) -> Self {
        Reject(Box::new(r))
    }
}

/// Only [`Ctx::mutate`] produces `anyhow` errors: the state could not be persisted. That is the
/// emulator's fault and retryable, so it is a 503, never a 500.
impl From<anyhow::Error> for Reject {
    fn from(e: anyhow::Error) -> Self {
        errors::persist_failed(errors::Surface::Vault, &e).into()
    }
}

pub(crate) type KvResult<T> = Result<T, Reject>;

pub(crate) fn bad_parameter(message: impl AsRef<str>) -> Reject {
    errors::vault(StatusCode::BAD_REQUEST, "BadParameter", message.as_ref(), None).into()
}

pub(crate) fn forbidden(message: impl AsRef<str>, inner: &str) -> Reject {
    errors::vault(StatusCode::FORBIDDEN, "Forbidden", message.as_ref(), Some(inner)).into()
}

/// A crypto operation on a key (`POST /keys/{name}/{version}/{op}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CryptoOp {
    Encrypt,
    Decrypt,
    WrapKey,
    UnwrapKey,
    Sign,
    Verify,
}

impl CryptoOp {
    fn from_segment(s: &str) -> Option<Self> {
        const OPS: [(&str, CryptoOp); 6] = [
            ("encrypt", CryptoOp::Encrypt),
            ("decrypt", CryptoOp::Decrypt),
            ("wrapkey", CryptoOp::WrapKey),
            ("unwrapkey", CryptoOp::UnwrapKey),
            ("sign", CryptoOp::Sign),
            ("verify", CryptoOp::Verify),
        ];
        OPS.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)).map(|(_, op)| *op)
    }

    /// The JWK `key_ops` name, which is also the access-policy permission.
    pub(crate) fn key_op(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::WrapKey => "wrapKey",
            Self::UnwrapKey => "unwrapKey",
            Self::Sign => "sign",
            Self::Verify => "verify",
        }
    }
}

/// One Key Vault keys operation, parsed from method and path. An empty `version` means the
/// latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    ListKeys,
    Create { name: String },
    Import { name: String },
    Get { name: String, version: String },
    Update { name: String, version: String },
    Versions { name: String },
    Rotate { name: String },
    Delete { name: String },
    Crypto { name: String, version: String, op: CryptoOp },
    ListDeleted,
    GetDeleted { name: String },
    Recover { name: String },
    Purge { name: String },
}

impl Op {
    /// The key the operation targets; `None` for vault-wide lists (authorised at vault scope).
    pub(crate) fn key_name(&self) -> Option<&str> {
        match self {
            Op::ListKeys | Op::ListDeleted => None,
            Op::Create { name }
            | Op::Import { name }
            | Op::Get { name, .. }
            | Op::Update { name, .. }
            | Op::Versions { name }
            | Op::Rotate { name }
            | Op::Delete { name }
            | Op::Crypto { name, .. }
            | Op::GetDeleted { name }
            | Op::Recover { name }
            | Op::Purge { name } => Some(name),
        }
    }

    /// (access-policy key permission, RBAC dataAction). The dataActions follow Azure's own
    /// access-policy → RBAC mapping (Azure/KeyVault-AccessPolicyToRBAC-CompareTool): reading a
    /// deleted key is `keys/read`, recover and purge are `keys/recover/action` and
    /// `keys/purge/action`, so Key Vault Crypto Officer (`keys/*`) and Administrator
    /// (`vaults/*`) can do everything here, and Crypto User cannot create, delete or purge.
    fn permission(&self) -> (&'static str, &'static str) {
        match self {
            Op::ListKeys | Op::Versions { .. } | Op::ListDeleted => ("list", "Microsoft.KeyVault/vaults/keys/read"),
            Op::Get { .. } | Op::GetDeleted { .. } => ("get", "Microsoft.KeyVault/vaults/keys/read"),
            Op::Create { .. } => ("create", "Microsoft.KeyVault/vaults/keys/create/action"),
            Op::Import { .. } => ("import", "Microsoft.KeyVault/vaults/keys/import/action"),
            Op::Update { .. } => ("update", "Microsoft.KeyVault/vaults/keys/update/action"),
            Op::Rotate { .. } => ("rotate", "Microsoft.KeyVault/vaults/keys/rotate/action"),
            Op::Delete { .. } => ("delete", "Microsoft.KeyVault/vaults/keys/delete"),
            Op::Recover { .. } => ("recover", "Microsoft.KeyVault/vaults/keys/recover/action"),
            Op::Purge { .. } => ("purge", "Microsoft.KeyVault/vaults/keys/purge/action"),
            Op::Crypto { op, .. } => match op {
                CryptoOp::Encrypt => ("encrypt", "Microsoft.KeyVault/vaults/keys/encrypt/action"),
                CryptoOp::Decrypt => ("decrypt", "Microsoft.KeyVault/vaults/keys/decrypt/action"),
                CryptoOp::WrapKey => ("wrapKey", "Microsoft.KeyVault/vaults/keys/wrap/action"),
                CryptoOp::UnwrapKey => ("unwrapKey", "Microsoft.KeyVault/vaults/keys/unwrap/action"),
                CryptoOp::Sign => ("sign", "Microsoft.KeyVault/vaults/keys/sign/action"),
                CryptoOp::Verify => ("verify", "Microsoft.KeyVault/vaults/keys/verify/action"),
            },
        }
    }
}

fn no_route(method: &Method, path: &str) -> Reject {
    errors::vault(StatusCode::NOT_FOUND, "NotFound", &format!("No route for {method} {path} on this service."), None)
        .into()
}

fn wrong_method(method: &Method, path: &str) -> Reject {
    errors::vault(
        StatusCode::METHOD_NOT_ALLOWED,
        "BadParameter",
        &format!("The method {method} is not allowed on {path}."),
        None,
    )
    .into()
}

fn not_implemented(what: &str) -> Reject {
    bad_parameter(format!(
        "The {what} operation is part of Key Vault but not implemented by the atrest emulator. Supported: create, import, get, update, list, versions, rotate, delete, deleted keys (get, list, recover, purge), encrypt, decrypt, wrapkey, unwrapkey, sign, verify."
    ))
}

/// Parse method and path into an [`Op`].
pub(crate) fn route(method: &Method, path: &str) -> KvResult<Op> {
    let mut segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let collection = segs.first().copied().unwrap_or("");
    // A trailing slash after a full operation path means nothing; `/keys/{name}/` (two
    // segments after `keys`) does carry meaning (empty version = latest), so it stays.
    if segs.len() > 3 && segs.last() == Some(&"") {
        segs.pop();
    }
    let rest = &segs[1.min(segs.len())..];
    let owned = |s: &str| s.to_string();
    let m = method.clone();
    if collection.eq_ignore_ascii_case("keys") {
        return match rest {
            [] | [""] => match m {
                Method::GET => Ok(Op::ListKeys),
                _ => Err(wrong_method(method, path)),
            },
            ["restore"] | ["restore", ""] if m == Method::POST => Err(not_implemented("restore")),
            [name] => match m {
                Method::GET => Ok(Op::Get { name: owned(name), version: String::new() }),
                Method::PATCH => Ok(Op::Update { name: owned(name), version: String::new() }),
                Method::DELETE => Ok(Op::Delete { name: owned(name) }),
                Method::PUT => Ok(Op::Import { name: owned(name) }),
                _ => Err(wrong_method(method, path)),
            },
            [name, sub] => {
                let sub_l = sub.to_ascii_lowercase();
                match (m, sub_l.as_str()) {
                    (Method::POST, "create") => Ok(Op::Create { name: owned(name) }),
                    (Method::POST, "rotate") => Ok(Op::Rotate { name: owned(name) }),
                    (Method::POST, "backup") => Err(not_implemented("backup")),
                    (Method::GET, "versions") => Ok(Op::Versions { name: owned(name) }),
                    (Method::GET | Method::PUT, "rotationpolicy") => Err(not_implemented("rotation policy")),
                    (Method::GET, _) => Ok(Op::Get { name: owned(name), version: owned(sub) }),
                    (Method::PATCH, _) => Ok(Op::Update { name: owned(name), version: owned(sub) }),
                    (Method::DELETE, "") => Ok(Op::Delete { name: owned(name) }),
                    _ => Err(wrong_method(method, path)),
                }
            }
            [name, version, op] => {
                if op.eq_ignore_ascii_case("release") {
                    return Err(not_implemented("release"));
                }
                let Some(op) = CryptoOp::from_segment(op) else { return Err(no_route(method, path)) };
                if m != Method::POST {
                    return Err(wrong_method(method, path));
                }
                Ok(Op::Crypto { name: owned(name), version: owned(version), op })
            }
            _ => Err(no_route(method, path)),
        };
    }
    if collection.eq_ignore_ascii_case("deletedkeys") {
        return match rest {
            [] | [""] => match m {
                Method::GET => Ok(Op::ListDeleted),
                _ => Err(wrong_method(method, path)),
            },
            [name] | [name, ""] => match m {
                Method::GET => Ok(Op::GetDeleted { name: owned(name) }),
                Method::DELETE => Ok(Op::Purge { name: owned(name) }),
                _ => Err(wrong_method(method, path)),
            },
            [name, sub] if sub.eq_ignore_ascii_case("recover") => match m {
                Method::POST => Ok(Op::Recover { name: owned(name) }),
                _ => Err(wrong_method(method, path)),
            },
            _ => Err(no_route(method, path)),
        };
    }
    Err(no_route(method, path))
}

/// The query parameters Key Vault reads.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub api_version: Option<String>,
    pub maxresults: Option<String>,
    pub skiptoken: Option<String>,
}

impl Query {
    fn parse(q: Option<&str>) -> Self {
        let mut out = Query::default();
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            let slot = match k.as_ref() {
                "api-version" => &mut out.api_version,
                "maxresults" | "$maxresults" => &mut out.maxresults,
                "$skiptoken" | "skiptoken" => &mut out.skiptoken,
                _ => continue,
            };
            // The first occurrence wins, as ASP.NET binds it.
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
        out
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Is `v` an api-version shape Key Vault has used? `7.N`, `7.N-preview`, `7.N-preview.M`, and
/// dates `YYYY-MM-DD` with an optional `-preview` (2015-06-01 and 2016-10-01 before 7.0, and the
/// date versions from 2025 on that the Rust SDK sends). Newer versions are accepted, not refused.
pub(crate) fn api_version_supported(v: &str) -> bool {
    if let Some(rest) = v.strip_prefix("7.") {
        let (minor, pre) = match rest.split_once('-') {
            Some((m, p)) => (m, Some(p)),
            None => (rest, None),
        };
        return all_digits(minor)
            && pre.is_none_or(|p| p == "preview" || p.strip_prefix("preview.").is_some_and(all_digits));
    }
    let date = v.strip_suffix("-preview").unwrap_or(v);
    let parts: Vec<&str> = date.split('-').collect();
    matches!(parts.as_slice(), [y, m, d]
        if y.len() == 4 && m.len() == 2 && d.len() == 2 && all_digits(y) && all_digits(m) && all_digits(d)
            && y.parse::<u32>().is_ok_and(|y| y >= 2015)
            && m.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m))
            && d.parse::<u32>().is_ok_and(|d| (1..=31).contains(&d)))
}

fn check_api_version(q: &Query) -> KvResult<()> {
    match q.api_version.as_deref() {
        None | Some("") => {
            Err(bad_parameter("The api-version query parameter (?api-version=) is required for all requests."))
        }
        Some(v) if api_version_supported(v) => Ok(()),
        Some(v) => Err(bad_parameter(format!(
            "The specified version ({v}) is not recognized. Consider using the latest supported version (7.6)."
        ))),
    }
}

/// A 401 with Key Vault's challenge: the vault's tenant on the cloud's login host, and the
/// cloud's Key Vault resource (which SDKs check against the request host).
fn unauthorized(vault: &Vault, message: &str) -> Reject {
    let mut resp = errors::vault(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let challenge = format!(
        "Bearer authorization=\"{}/{}\", resource=\"{}\"",
        vault.cloud.authority_url(),
        vault.properties.tenant_id,
        vault.cloud.vault_resource()
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp.into()
}

/// The issuers Key Vault accepts for tokens of `tenant` (v1 and v2 forms).
fn accepted_issuers(cloud: AzureEnvironment, tenant: &str) -> Vec<String> {
    let mut v = vec![
        format!("https://sts.windows.net/{tenant}/"),
        format!("{}/{tenant}/v2.0", cloud.authority_url()),
        format!("{}/{tenant}/", cloud.authority_url()),
    ];
    match cloud {
        AzureEnvironment::Azure => {
            v.push(format!("https://login.windows.net/{tenant}/"));
            v.push(format!("https://login.microsoft.com/{tenant}/"));
        }
        AzureEnvironment::AzureChina => v.push(format!("https://sts.chinacloudapi.cn/{tenant}/")),
        AzureEnvironment::AzureUsGovernment => v.push(format!("https://login.usgovcloudapi.net/{tenant}/")),
    }
    v
}

/// Step 4: who is calling, or the 401 explaining why that is not known.
fn authenticate(ctx: &Ctx, headers: &http::HeaderMap, vault: &Vault) -> KvResult<Arc<AccessClaims>> {
    // A header that is not `Bearer <something>` is, to Key Vault, no token at all.
    let token = tokens::bearer(headers)
        .map_err(|_| unauthorized(vault, "AKV10000: Request is missing a Bearer or PoP token."))?;
    // The texts for malformed and not-yet-valid tokens are the emulator's choice (Azure's are not
    // published); AKV10046 is what Key Vault says for a token signed by a key it does not know,
    // which is what a token not signed by this emulator is.
    let claims = ctx.signer.verify(token, ctx.now()).map_err(|p| {
        let msg = match p {
            TokenProblem::Missing => "AKV10000: Request is missing a Bearer or PoP token.",
            TokenProblem::Malformed => "AKV10020: Invalid token format. The bearer token is not a well-formed JWT.",
            TokenProblem::BadSignature => "AKV10046: Unable to resolve the key used for signature validation.",
            TokenProblem::Expired => "[TokenExpired] Error validating token: 'S2S12086'.",
            TokenProblem::NotYetValid => "Token not yet valid.",
        };
        unauthorized(vault, msg)
    })?;
    let expected = vault.cloud.vault_resource();
    let aud = claims.aud.trim_end_matches('/');
    if !aud.eq_ignore_ascii_case(&expected) && !aud.eq_ignore_ascii_case(KEY_VAULT_APP_ID) {
        return Err(unauthorized(
            vault,
            &format!("AKV10022: Invalid audience. Expected {expected}, found: {}.", claims.aud),
        ));
    }
    let tenant = vault.properties.tenant_id.to_string();
    let issuers = accepted_issuers(vault.cloud, &tenant);
    if !claims.tid.eq_ignore_ascii_case(&tenant) || !issuers.iter().any(|i| i.eq_ignore_ascii_case(&claims.iss)) {
        return Err(unauthorized(
            vault,
            &format!("AKV10032: Invalid issuer. Expected one of {}, found {}.", issuers.join(", "), claims.iss),
        ));
    }
    Ok(claims)
}

/// Step 5: may this connection reach the vault at all?
fn check_network(state: &State, vault: &Vault, listener: &ListenerKind, claims: &AccessClaims) -> KvResult<()> {
    let reason = match listener {
        ListenerKind::PrivateEndpoint { id, vault: pe_vault } => {
            let endpoint = state.settings.private_endpoints.iter().find(|p| p.id == *id);
            match endpoint {
                _ if !pe_vault.eq_ignore_ascii_case(&vault.name) => {
                    "The request came through a private endpoint that is not connected to this vault.".to_string()
                }
                Some(pe) if pe.approved() => return Ok(()),
                Some(pe) => {
                    let c = pe.connection.as_ref().expect("not approved implies a connection");
                    format!(
                        "The request came through private endpoint connection '{}', which is {} on this vault: only an \
                         approved private link reaches it.",
                        c.name,
                        c.status.as_str()
                    )
                }
                None => "The request came through a private endpoint that no longer exists.".to_string(),
            }
        }
        ListenerKind::Public if !vault.properties.public_network_access.eq_ignore_ascii_case("Disabled") => {
            return Ok(());
        }
        ListenerKind::Public => "Public network access is disabled and request is not from a trusted service nor via an approved private link.".to_string(),
    };
    Err(forbidden(
        format!("{reason}\r\nCaller: {}\r\nVault: {};location={}", claims.caller_string(), vault.name, vault.location),
        "ForbiddenByConnection",
    ))
}

/// Step 6: does the current state let this caller do `op`?
fn authorize(state: &State, vault: &Vault, claims: &AccessClaims, op: &Op, now: i64) -> KvResult<()> {
    let (perm, action) = op.permission();
    if vault.properties.enable_rbac_authorization {
        let vault_scope = vault.resource_id();
        let scope = match op.key_name() {
            Some(name) => format!("{vault_scope}/keys/{name}"),
            None => vault_scope,
        };
        if crate::authz::rbac_check(state, &claims.oid, &scope, action, true, now).allowed {
            return Ok(());
        }
        return Err(forbidden(
            format!(
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: {}\r\nAction: '{action}'\r\nResource: '{}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: {};location={}\r\n",
                claims.caller_string(),
                scope.to_ascii_lowercase(),
                vault.name,
                vault.location
            ),
            "ForbiddenByRbac",
        ));
    }
    if crate::authz::access_policy_allows(vault, &claims.tid, &claims.oid, perm) {
        return Ok(());
    }
    Err(forbidden(
        format!(
            "The user, group or application 'appid={};oid={};numgroups=0;iss={}' does not have keys {perm} permission on key vault '{};location={}'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
            claims.appid, claims.oid, claims.iss, vault.name, vault.location
        ),
        "ForbiddenByPolicy",
    ))
}

pub fn router() -> Router<Ctx> {
    Router::new().fallback(handle)
}

async fn handle(AxumState(ctx): AxumState<Ctx>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let Some(info) = parts.extensions.get::<RequestInfo>().cloned() else {
        return *no_route(&parts.method, parts.uri.path()).0;
    };
    let mut region: Option<String> = None;
    let mut resp = match serve(&ctx, &info, &parts, body, &mut region).await {
        Ok(r) => r,
        Err(Reject(r)) => *r,
    };
    let h = resp.headers_mut();
    h.insert("x-ms-keyvault-service-version", HeaderValue::from_static(SERVICE_VERSION));
    let (conn, fam) = if info.peer.is_ipv4() { ("Ipv4", "InterNetwork") } else { ("Ipv6", "InterNetworkV6") };
    if let Ok(v) = HeaderValue::from_str(&format!("conn_type={conn};addr={};act_addr_fam={fam};", info.peer.ip())) {
        h.insert("x-ms-keyvault-network-info", v);
    }
    if let Some(v) = region.and_then(|r| HeaderValue::from_str(&r).ok()) {
        h.insert("x-ms-keyvault-region", v);
    }
    resp
}

async fn serve(
    ctx: &Ctx,
    info: &RequestInfo,
    parts: &http::request::Parts,
    body: Body,
    region: &mut Option<String>,
) -> KvResult<Response> {
    let Route::Vault(vault_name) = &info.route else {
        return Err(no_route(&parts.method, parts.uri.path()));
    };
    let op = route(&parts.method, parts.uri.path())?;
    let query = Query::parse(parts.uri.query());
    check_api_version(&query)?;

    // One snapshot per request: every decision below sees the same state, and it is an Arc clone.
    let state = ctx.snapshot();
    let Some(vault) = state.vault(info.cloud, vault_name) else {
        return Err(errors::vault(
            StatusCode::NOT_FOUND,
            "VaultNotFound",
            &format!(
                "The vault '{vault_name}' does not exist in the {} cloud of this emulator. (Azure would fail the DNS lookup of {}.)",
                info.cloud.cli_cloud_name(),
                info.host
            ),
            None,
        )
        .into());
    };
    *region = Some(vault.location.clone());

    let claims = authenticate(ctx, &parts.headers, vault)?;
    check_network(&state, vault, &info.listener, &claims)?;
    let now = ctx.now();
    authorize(&state, vault, &claims, &op, now)?;

    // The server already buffered the body under its size limit; this only takes it back out.
    let body = axum::body::to_bytes(body, ctx.max_body)
        .await
        .map_err(|_| errors::too_large(errors::Surface::Vault, ctx.max_body))?;
    ops::execute(ctx, info, vault, op, &query, &body, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in
            ["7.0", "7.4", "7.6", "7.6-preview.2", "7.3-preview", "2016-10-01", "2025-07-01", "2026-03-01-preview"]
        {
            assert!(api_version_supported(ok), "{ok}");
        }
        for bad in
            ["", "7", "7.", "8.0", "7.x", "7.4-beta", "2025-13-01", "1999-01-01", "latest", "2025-07-01-previewx"]
        {
            assert!(!api_version_supported(bad), "{bad}");
        }
    }

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| route(&m, p).ok();
        assert_eq!(r(Method::GET, "/keys"), Some(Op::ListKeys));
        assert_eq!(r(Method::GET, "/keys/"), Some(Op::ListKeys));
        assert_eq!(r(Method::GET, "/keys/k"), Some(Op::Get { name: "k".into(), version: "".into() }));
        assert_eq!(r(Method::GET, "/keys/k/"), Some(Op::Get { name: "k".into(), version: "".into() }));
        assert_eq!(r(Method::GET, "/keys/k/abc"), Some(Op::Get { name: "k".into(), version: "abc".into() }));
        assert_eq!(
            r(Method::POST, "/keys/k//wrapkey"),
            Some(Op::Crypto { name: "k".into(), version: "".into(), op: CryptoOp::WrapKey })
        );
        assert_eq!(
            r(Method::POST, "/keys/k/v/unwrapKey/"),
            Some(Op::Crypto { name: "k".into(), version: "v".into(), op: CryptoOp::UnwrapKey })
        );
        assert_eq!(r(Method::POST, "/keys/k/create"), Some(Op::Create { name: "k".into() }));
        assert_eq!(r(Method::GET, "/keys/k/versions"), Some(Op::Versions { name: "k".into() }));
        assert_eq!(r(Method::DELETE, "/deletedkeys/k"), Some(Op::Purge { name: "k".into() }));
        assert_eq!(r(Method::POST, "/deletedkeys/k/recover"), Some(Op::Recover { name: "k".into() }));
        assert_eq!(r(Method::GET, "/secrets/x"), None);
        assert_eq!(r(Method::POST, "/keys/k/v/fly"), None);
        assert_eq!(r(Method::GET, "/keys/k/v/wrapkey"), None);
        assert_eq!(r(Method::GET, "/keys/a/b/c/d"), None);
    }
}
