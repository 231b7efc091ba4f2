//! Authentication and authorization of Atlas API calls.
//!
//! Two ways in, as in Atlas (atlas-admin-api.md §6):
//! - HTTP Digest with programmatic API keys (realm `MMS Public API`, MD5, `qop="auth"`), nonces
//!   issued and checked through the store so any replica accepts any replica's nonce, expired
//!   nonces answered with `stale=true`, replayed nonce counts refused ([`digest`]);
//! - OAuth 2 client credentials for service accounts: `POST /api/oauth/token` and
//!   `POST /api/oauth/revoke`, one-hour bearer tokens known to the store only by digest
//!   ([`oauth`]).
//!
//! Authorization is per project: [`Caller::group`] loads the project and checks the caller's
//! roles on it (`ORG_OWNER` implies project ownership in its organization).

pub mod digest;
pub mod oauth;
pub mod provision;
pub mod secrets;

use atrest_store::{Group, GroupRole, OrgId, OrgRole, Principal, Roles};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub org_id: OrgId,
    pub roles: Roles,
    /// The API key's public key or the service account's client id (for logs and events; not secret).
    pub label: String,
}

/// What a handler needs on a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `GROUP_READ_ONLY` or better.
    Read,
    /// `GROUP_OWNER`.
    Write,
}

impl Caller {
    /// Is the caller an owner of its organization?
    pub fn is_org_owner(&self) -> bool {
        self.roles.org.contains(&OrgRole::OrgOwner)
    }

    /// Checks the caller may `access` `group` (already loaded): 401 when the caller holds no role
    /// on it (Atlas answers 401 there), 403 when the role is not enough.
    pub fn authorize(&self, group: &Group, access: Access) -> ApiResult<()> {
        if group.org_id != self.org_id {
            return Err(ApiError::unauthorized(
                "You are not authorized for this resource: the credentials belong to another organization.",
            ));
        }
        let org_owner = self.is_org_owner();
        let org_read = org_owner || self.roles.org.contains(&OrgRole::OrgReadOnly);
        let on_group = self.roles.on_group(&group.id);
        let owner = org_owner || on_group.contains(&GroupRole::GroupOwner);
        let reader = owner || org_read || on_group.contains(&GroupRole::GroupReadOnly);
        match access {
            Access::Read if reader => Ok(()),
            Access::Write if owner => Ok(()),
            _ if !reader => Err(ApiError::unauthorized(format!(
                "You are not authorized for this resource: {} has no role on project {}. \
                 Give it GROUP_READ_ONLY to read or GROUP_OWNER to change it.",
                self.label, group.id
            ))),
            _ => Err(ApiError::forbidden(format!(
                "Current user is not authorized to perform this action: changing project {} needs GROUP_OWNER, \
                 and {} holds only read access.",
                group.id, self.label
            ))),
        }
    }

    /// Loads project `group_id` and checks access. A malformed id is `404 INVALID_GROUP_ID`; a
    /// project that does not exist or belongs to another organization is `404 GROUP_NOT_FOUND`
    /// (the same answer either way, so ids of other organizations' projects cannot be probed).
    pub async fn group(&self, state: &AppState, group_id: &str, access: Access) -> ApiResult<Group> {
        let id = atrest_store::GroupId::parse(group_id).map_err(|_| {
            ApiError::new(
                http::StatusCode::NOT_FOUND,
                crate::error::codes::INVALID_GROUP_ID,
                format!(
                    "An invalid group ID {} was specified: project ids are 24 lowercase hex characters \
                     (list yours with GET /api/atlas/v2/groups).",
                    crate::error::echo(group_id)
                ),
            )
            .with_params([group_id])
        })?;
        let group = match state.store.get_group(&id).await {
            Ok(g) if g.org_id == self.org_id => g,
            Ok(_) | Err(atrest_store::StoreError::NotFound { .. }) => return Err(ApiError::group_not_found(group_id)),
            Err(e) => return Err(e.into()),
        };
        self.authorize(&group, access)?;
        Ok(group)
    }
}

/// Middleware for every authenticated route: authenticates with Digest or a bearer token and
/// inserts the [`Caller`] as a request extension; otherwise answers 401 with a Digest challenge.
pub async fn require_caller(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // The request target as the client sent it (Digest signs it), not as a nested router sees it.
    let uri = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| request.uri().clone());
    let (method, headers) = (request.method().clone(), request.headers().clone());
    match authenticate(&state, &method, &uri, &headers).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// What a 401 without usable credentials says.
pub const HOW_TO_AUTHENTICATE: &str = "This API needs credentials. Use HTTP Digest with a programmatic API key \
     (the public key as the username, the private key as the password: curl --digest --user PUBLIC_KEY:PRIVATE_KEY), \
     or a service account's bearer token: get one with POST /api/oauth/token (HTTP Basic with the client id and \
     secret, form grant_type=client_credentials) and send Authorization: Bearer <access_token>.";

/// Authenticates a request (Digest or Bearer) from its method, URI and headers.
///
/// `Authorization: Digest …` is checked by [`digest::verify`], `Authorization: Bearer …` by
/// [`oauth::verify_bearer`]; no credentials or another scheme is a 401 with a fresh Digest
/// challenge and a body that says how to authenticate.
pub async fn authenticate(
    state: &AppState,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> ApiResult<Caller> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(digest::unauthorized(state, HOW_TO_AUTHENTICATE, false).await),
        (Some(v), None) => v,
        (Some(_), Some(_)) => {
            let detail = format!("Send one Authorization header, not several. {HOW_TO_AUTHENTICATE}");
            return Err(digest::unauthorized(state, detail, false).await);
        }
    };
    let Ok(value) = value.to_str() else {
        let detail = format!("The Authorization header is not visible ASCII. {HOW_TO_AUTHENTICATE}");
        return Err(digest::unauthorized(state, detail, false).await);
    };
    let value = value.trim_start();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("digest") {
        digest::verify(state, method, uri, rest).await
    } else if scheme.eq_ignore_ascii_case("bearer") {
        oauth::verify_bearer(state, rest).await
    } else {
        let detail = format!("The Authorization scheme is not supported here. {HOW_TO_AUTHENTICATE}");
        Err(digest::unauthorized(state, detail, false).await)
    }
}

/// Deletes expired Digest nonces and access tokens from the store, at most once a minute per
/// process, in the background. Called where rows are added (challenges, token issuance), so the
/// tables stay bounded by what one lifetime produces without a job of their own.
pub(crate) fn housekeeping(state: &AppState) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = state.now();
    let last = LAST.load(Ordering::Relaxed);
    if now.unix_timestamp() - last < 60
        || LAST.compare_exchange(last, now.unix_timestamp(), Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let nonces = state.store.purge_expired_nonces(now).await;
        let tokens = state.store.purge_expired_access_tokens(now).await;
        match (nonces, tokens) {
            (Ok(n), Ok(t)) if n + t > 0 => tracing::debug!(nonces = n, tokens = t, "purged expired credentials"),
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "could not purge expired nonces and tokens"),
            _ => {}
        }
    });
}
