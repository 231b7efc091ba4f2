//! HTTP helpers every surface uses: the [`RequestInfo`] the server attached, path segments and
//! query pairs decoded, the buffered body, and the loopback test. They live here, not in one
//! surface, so that no surface imports another to parse a request.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::Request;

use atrest_domain::AzureEnvironment;

use crate::server::{ListenerKind, RequestInfo, Route};

/// The [`RequestInfo`] the server attached. It is always present behind the real listener; the
/// fallback only keeps a handler called some other way from failing.
pub(crate) fn request_info(req: &Request) -> RequestInfo {
    req.extensions().get::<RequestInfo>().cloned().unwrap_or_else(|| RequestInfo {
        cloud: AzureEnvironment::Azure,
        host: "localhost".into(),
        route: Route::Login,
        listener: ListenerKind::Public,
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        origin: "https://localhost".into(),
    })
}

/// The path split into percent-decoded segments (empty segments dropped). `None` when a segment
/// is not valid percent-encoded UTF-8.
pub(crate) fn path_segments(path: &str) -> Option<Vec<String>> {
    path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect()
}

/// Strict percent-decoding of one path segment: `+` stays `+` (it is not a space in a path) and
/// a malformed escape is an error rather than passed through, which is why the form decoders of
/// `serde_urlencoded`/`url` are not used here.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Query parameters, decoded. `None` when the query string is not valid form encoding.
pub(crate) fn query_pairs(req: &Request) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_str(req.uri().query().unwrap_or("")).ok()
}

/// Is `host` (lowercase, no port) a loopback name or address?
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The buffered request body (the server has already enforced the size limit).
pub(crate) async fn body_bytes(body: Body) -> bytes::Bytes {
    axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(path_segments("/a%20b//c%27").unwrap(), vec!["a b", "c'"]);
        assert_eq!(path_segments("/a+b").unwrap(), vec!["a+b"]);
        assert!(path_segments("/%zz").is_none());
        assert!(path_segments("/%ff").is_none());
        assert!(path_segments("/%4").is_none());
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("::1"));
        assert!(!is_loopback_host("10.0.0.1"));
        assert!(!is_loopback_host("login.microsoftonline.com"));
    }
}
