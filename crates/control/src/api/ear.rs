//! Encryption at Rest.
use crate::error::ApiResult;
use axum::response::Response;
pub async fn get() -> ApiResult<Response> {
    todo!()
}
pub async fn patch() -> ApiResult<Response> {
    todo!()
}
pub async fn validate_dry_run() -> ApiResult<Response> {
    todo!()
}
