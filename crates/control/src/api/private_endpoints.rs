//! EAR private endpoints.
use crate::error::ApiResult;
use axum::response::Response;
pub async fn list() -> ApiResult<Response> {
    todo!()
}
pub async fn create() -> ApiResult<Response> {
    todo!()
}
pub async fn get() -> ApiResult<Response> {
    todo!()
}
pub async fn delete() -> ApiResult<Response> {
    todo!()
}
