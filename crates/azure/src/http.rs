//! One authenticated attempt against Key Vault or ARM: send, read the whole body, map failures.
//!
//! Shared by [`crate::keyvault`] and [`crate::arm`] so both time out, read bodies and report
//! transport failures the same way; each classifies its own error bodies.

use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use crate::error::{Error, Service, from_transport};
use crate::token_cache::AccessToken;
use crate::transport::Transport;

/// A response read in full. The body may hold key material (an unwrap result), so it is wiped
/// on drop. (reqwest's and hyper's own buffers are outside our reach: this is best effort.)
pub(crate) struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The server's retry hint, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        crate::retry::retry_after(&self.headers, SystemTime::now())
    }
}

/// Send `request` with `token`, giving it at most `time_left`.
pub(crate) async fn send(
    transport: &Transport,
    service: Service,
    request: reqwest::RequestBuilder,
    token: &AccessToken,
    time_left: Duration,
) -> Result<Response, Error> {
    let resp = request
        .bearer_auth(token.expose_secret())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(time_left.min(transport.request_timeout()))
        .send()
        .await
        .map_err(|e| from_transport(service, &e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = Zeroizing::new(resp.bytes().await.map_err(|e| from_transport(service, &e))?.to_vec());
    Ok(Response { status, headers, body })
}

/// The `{"error":{"code","message","innererror":{"code"}}}` body Key Vault and ARM share.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AzureErrorBody {
    #[serde(default)]
    pub error: AzureErrorDetail,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AzureErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, alias = "innerError")]
    pub innererror: Option<InnerError>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct InnerError {
    #[serde(default)]
    pub code: String,
}

impl AzureErrorBody {
    /// Parse an error body; an unparseable one yields empty fields (the status still classifies).
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// `innererror.code` when present (the specific one), else `error.code`.
    pub fn specific_code(&self) -> Option<&str> {
        let inner = self.error.innererror.as_ref().map(|i| i.code.as_str()).filter(|c| !c.is_empty());
        inner.or(Some(self.error.code.as_str()).filter(|c| !c.is_empty()))
    }
}

/// The text between `start` and the next `end` in `text`, e.g. `oid=` … `;`.
pub(crate) fn between<'a>(text: &'a str, start: &str, end: &[char]) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let rest = &text[from..];
    let to = rest.find(end).unwrap_or(rest.len());
    Some(rest[..to].trim()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_prefers_the_inner_code() {
        let b = AzureErrorBody::parse(
            br#"{"error":{"code":"Forbidden","message":"m","innererror":{"code":"ForbiddenByRbac"}}}"#,
        );
        assert_eq!(b.specific_code(), Some("ForbiddenByRbac"));
        let b = AzureErrorBody::parse(br#"{"error":{"code":"KeyNotFound","message":"m"}}"#);
        assert_eq!(b.specific_code(), Some("KeyNotFound"));
        assert_eq!(AzureErrorBody::parse(b"<html>").specific_code(), None);
    }

    #[test]
    fn between_extracts_fields() {
        let m = "Caller: appid=a;oid=66666666-7777-8888-9999-000000000000;iss=x\r\nResource: '/subscriptions/s/x'\r\n";
        assert_eq!(between(m, "oid=", &[';', '\'', '\r', '\n']), Some("66666666-7777-8888-9999-000000000000"));
        assert_eq!(between(m, "Resource: '", &['\'']), Some("/subscriptions/s/x"));
        assert_eq!(between(m, "nothing", &[';']), None);
    }
}
