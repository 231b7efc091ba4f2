//! Key Vault keys data plane.

use axum::Router;

use crate::Ctx;

/// Parsed private keys, so the hot path does not re-parse PKCS#8.
#[derive(Default)]
pub struct KeyCache {}

pub fn router() -> Router<Ctx> {
    Router::new().fallback(crate::server::not_found).method_not_allowed_fallback(crate::server::method_not_allowed)
}
