//! Events.
use crate::error::ApiResult;
use axum::response::Response;
pub async fn list() -> ApiResult<Response> {
    todo!()
}
pub async fn get() -> ApiResult<Response> {
    todo!()
}
