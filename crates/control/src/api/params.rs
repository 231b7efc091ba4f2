//! Path and query extractors whose rejections are Atlas error bodies.
//!
//! axum's own `Path` and `Query` answer a bad request with a `text/plain` line ("Failed to
//! deserialize query string: duplicate field `pageNum`"), which the Go SDK and Terraform cannot
//! read (they decode only JSON errors). These two wrap axum's and answer with [`ApiError`]
//! instead. Handlers use them in place of axum's; [`crate::media`] turns any other non-JSON error
//! (an extractor a handler still takes from axum, say) into an `ApiError` as a last resort.
//!
//! **A repeated query parameter takes its first value.** Atlas's API is served by JAX-RS, and a
//! JAX-RS `@QueryParam` bound to a single value takes the first of several
//! (`MultivaluedMap.getFirst`); the reference names no error code for repeated parameters, so we
//! do the same rather than invent one. `?pageNum=1&pageNum=2` is page 1.

use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use http::StatusCode;
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, codes, echo};

/// Query parameters deserialized into `T`; the first of repeated parameters wins.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        from_query(parts.uri.query().unwrap_or("")).map(Query)
    }
}

/// Parses a query string into `T`, keeping the first value of each repeated name.
pub fn from_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let mut first: Vec<(String, String)> = Vec::new();
    for (name, value) in form_pairs(query) {
        if !first.iter().any(|(n, _)| *n == name) {
            first.push((name, value));
        }
    }
    let deduplicated = serde_urlencoded::to_string(&first).map_err(|e| {
        tracing::error!(error = %e, "re-encoding query parameters failed");
        ApiError::internal()
    })?;
    serde_urlencoded::from_str::<T>(&deduplicated).map_err(|e| {
        ApiError::bad_request(
            codes::INVALID_ATTRIBUTE,
            format!(
                "Invalid query string: {}. Send each parameter as name=value (for example ?pageNum=1&itemsPerPage=100).",
                echo(&e.to_string())
            ),
        )
    })
}

/// `name=value` pairs of a query string, percent-decoded (`+` is a space), in order. Decoding
/// never fails: bytes that are not UTF-8 become U+FFFD, as in the URL standard.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

/// Path parameters deserialized into `T`.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => Err(path_rejection(parts.uri.path(), rejection)),
        }
    }
}

/// A path whose parameters cannot be read names no resource: 404, as for a well-formed id
/// that does not exist (a malformed project id is `INVALID_GROUP_ID`, as in [`crate::auth`]).
/// A route whose parameters do not fit its handler is our bug: 500.
fn path_rejection(path: &str, rejection: PathRejection) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        tracing::error!(error = %rejection, "path parameters missing: the route and its handler disagree");
        return ApiError::internal();
    };
    let (key, why) = match e.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => (key.clone(), "is not valid UTF-8 once percent-decoded"),
        ErrorKind::ParseErrorAtKey { key, .. } => (key.clone(), "has the wrong format"),
        ErrorKind::ParseErrorAtIndex { index, .. } => (format!("#{}", index + 1), "has the wrong format"),
        _ => {
            tracing::error!(error = %e.body_text(), "path parameters do not fit the handler");
            return ApiError::internal();
        }
    };
    let path = echo(path).into_owned();
    if key == "groupId" {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            codes::INVALID_GROUP_ID,
            format!("An invalid group ID was specified in {path}: the groupId segment {why}; project ids are 24 lowercase hex characters."),
        )
        .with_params([path]);
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::RESOURCE_NOT_FOUND,
        format!("Cannot find resource {path}: the {key} segment {why}. Use the id exactly as the API returned it."),
    )
    .with_params([path])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        page_num: Option<String>,
        items_per_page: Option<String>,
    }

    #[test]
    fn the_first_of_repeated_parameters_wins() {
        let p: Page = from_query("pageNum=1&pageNum=2&itemsPerPage=5&itemsPerPage=x").unwrap();
        assert_eq!(p, Page { page_num: Some("1".into()), items_per_page: Some("5".into()) });
        let p: Page = from_query("").unwrap();
        assert_eq!(p, Page { page_num: None, items_per_page: None });
        let p: Page = from_query("pageNum=%31+&other=1").unwrap();
        assert_eq!(p.page_num.as_deref(), Some("1 "));
    }
}
