//! TODO(surface): graph.

use axum::Router;

use crate::Ctx;

pub fn router() -> Router<Ctx> {
    Router::new().fallback(crate::server::not_found).method_not_allowed_fallback(crate::server::method_not_allowed)
}
