//! TODO(surface): admin.

use axum::Router;

use crate::Ctx;

pub fn router() -> Router<Ctx> {
    Router::new().fallback(crate::server::not_found).method_not_allowed_fallback(crate::server::method_not_allowed)
}

/// Re-open the private-endpoint listeners recorded in the state.
pub async fn restore_private_endpoints(_ctx: &Ctx) -> anyhow::Result<()> {
    Ok(())
}
