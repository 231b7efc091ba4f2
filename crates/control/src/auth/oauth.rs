//! OAuth 2 client credentials for service accounts.

use crate::state::AppState;
use axum::Router;

/// `POST /api/oauth/token` and `POST /api/oauth/revoke`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
