//! Cloud Provider Access roles.
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
pub async fn authorize() -> ApiResult<Response> {
    todo!()
}
pub async fn deauthorize() -> ApiResult<Response> {
    todo!()
}
