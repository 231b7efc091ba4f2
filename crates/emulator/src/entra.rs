//! Entra ID: the v2.0 token endpoint, OIDC discovery, JWKS and instance discovery.

use axum::Router;

use crate::Ctx;

/// Cached OIDC metadata and JWKS of external (federated) issuers.
#[derive(Default)]
pub struct IssuerCache {}

pub fn router() -> Router<Ctx> {
    Router::new().fallback(crate::server::not_found).method_not_allowed_fallback(crate::server::method_not_allowed)
}
