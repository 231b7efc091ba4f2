//! HTTP Digest (RFC 7616 subset that Atlas speaks: MD5, qop=auth).
//!
//! The challenge is Atlas's, byte for byte but for the nonce:
//! `Digest realm="MMS Public API", domain="", nonce="…", algorithm=MD5, qop="auth", stale=false`.
//!
//! - Nonces are 128 random bits (hex), recorded in the store with an expiry of
//!   `auth.nonce_lifetime_secs`, so any replica accepts a nonce any replica issued.
//! - A request is accepted when its response hash is right and then its nonce count `nc` is
//!   higher than any accepted before for that nonce (one atomic store update, so a replay is
//!   refused even when it reaches another replica at the same moment). The hash is checked
//!   first, so that nobody without the key can use up someone else's nonce counts.
//! - An expired nonce with a correct hash is answered with a new challenge with `stale=true`, so
//!   clients retry without asking for the password again; an unknown nonce gets a fresh challenge.
//! - The HA1 of each key is stored sealed with the KEK ([`crate::kek`]); the private key itself is
//!   never stored.
//!
//! Why hand-written: the Rust Digest crates are client-side (`digest_auth` says it is "intended
//! for HTTP clients" and leaves nonce management and verification to the server; `http-auth`
//! answers challenges only; `digest-access` is unmaintained on md-5 0.9 and http 0.2), and what a
//! server needs beyond parsing and two MD5s — nonces shared by replicas, replay refusal by `nc`,
//! `stale`, HA1 sealed at rest, constant-time comparison — is ours to write in any case. The
//! parameter parser below follows RFC 7235 §2.1 (tokens or quoted strings with backslash
//! escapes, any order, case-insensitive names, empty list elements allowed).

use std::collections::HashMap;

use atrest_store::{NonceCheck, Principal, StoreError};
use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Method, Uri};
use md5::{Digest, Md5};
use secrecy::ExposeSecret;

use atrest_store::ApiKeyId;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Atlas's Digest realm. Part of every key's HA1, so it can never change.
pub const REALM: &str = "MMS Public API";

/// What every refusal for bad credentials says (the same whether the key is unknown or the
/// private key is wrong).
pub const INVALID_CREDENTIALS: &str = "Invalid API key credentials: the Digest username must be the public key of an \
     API key and the password its private key (curl --digest --user PUBLIC_KEY:PRIVATE_KEY).";

/// The KEK purpose (additional authenticated data) of API key `id`'s sealed Digest HA1. The
/// Digest verifier opens it with the same string.
pub fn ha1_purpose(id: &ApiKeyId) -> String {
    format!("digest-ha1:{id}")
}

/// The Digest HA1 of an API key: `MD5(public:MMS Public API:private)` (RFC 7616 §3.4.2, MD5).
/// Password-equivalent: never log it, store it only sealed.
pub fn ha1(public_key: &str, private_key: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(public_key.as_bytes());
    h.update(b":");
    h.update(REALM.as_bytes());
    h.update(b":");
    h.update(private_key.as_bytes());
    h.finalize().into()
}

/// A new nonce: 128 random bits in hex.
fn new_nonce() -> String {
    hex::encode(crate::auth::secrets::random_bytes::<16>())
}

/// Issues a nonce through the store and returns the `WWW-Authenticate` value carrying it.
pub async fn challenge(state: &AppState, stale: bool) -> ApiResult<HeaderValue> {
    crate::auth::housekeeping(state);
    let expires_at = state.now() + time::Duration::seconds(state.config.auth.nonce_lifetime_secs.min(86_400) as i64);
    let mut nonce = new_nonce();
    // A collision of 128 random bits does not happen; one retry covers a broken generator's
    // single repeat without looping forever on a store that answers Conflict for another reason.
    match state.store.issue_digest_nonce(&nonce, expires_at).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            nonce = new_nonce();
            state.store.issue_digest_nonce(&nonce, expires_at).await?;
        }
        Err(e) => return Err(e.into()),
    }
    let value =
        format!("Digest realm=\"{REALM}\", domain=\"\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\", stale={stale}");
    Ok(HeaderValue::from_str(&value).expect("hex nonce and a fixed realm make a valid header value"))
}

/// A 401 in Atlas's shape with a fresh challenge. If the store cannot issue a nonce, that
/// failure (503) is answered instead: a challenge without a usable nonce would only fail later.
pub async fn unauthorized(state: &AppState, detail: impl Into<String>, stale: bool) -> ApiError {
    match challenge(state, stale).await {
        Ok(h) => ApiError::unauthorized(detail).with_header(WWW_AUTHENTICATE, h),
        Err(e) => e,
    }
}

/// Splits the auth-params of a Digest `Authorization` header (the part after `Digest `) into
/// lowercase names and unescaped values. Errors name the problem (never echo values).
pub fn parse_params(input: &str) -> Result<HashMap<String, String>, String> {
    fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }
    fn is_ows(b: u8) -> bool {
        b == b' ' || b == b'\t'
    }
    let b = input.as_bytes();
    let mut i = 0;
    let mut out = HashMap::new();
    loop {
        // Separators: whitespace and (possibly empty) list elements.
        while i < b.len() && (is_ows(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(format!("expected a parameter name at character {}", start + 1));
        }
        let name = input[start..i].to_ascii_lowercase();
        while i < b.len() && is_ows(b[i]) {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return Err(format!("parameter {name} has no '=' and value"));
        }
        i += 1;
        while i < b.len() && is_ows(b[i]) {
            i += 1;
        }
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(format!("the quoted value of {name} is not terminated")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => match b.get(i + 1) {
                        Some(&c) => {
                            v.push(c);
                            i += 2;
                        }
                        None => return Err(format!("the quoted value of {name} ends with a lone backslash")),
                    },
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            // Only ASCII bytes were consumed as escapes, so the bytes are still valid UTF-8.
            String::from_utf8(v).map_err(|_| format!("the value of {name} is not UTF-8"))?
        } else {
            let start = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            if i == start {
                return Err(format!("parameter {name} has an empty or invalid value"));
            }
            input[start..i].to_owned()
        };
        while i < b.len() && is_ows(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            return Err(format!("expected ',' after the value of {name}"));
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("parameter {name} appears twice"));
        }
    }
    Ok(out)
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The expected `response` for qop=auth: `MD5(HA1:nonce:nc:cnonce:qop:MD5(method:uri))`, with
/// HA1 given raw (16 bytes) and every hash rendered as lowercase hex.
pub fn expected_response(ha1: &[u8], nonce: &str, nc: &str, cnonce: &str, method: &str, digest_uri: &str) -> String {
    let ha1_hex = zeroize::Zeroizing::new(hex::encode(ha1));
    let ha2 = md5_hex(&[method.as_bytes(), digest_uri.as_bytes()]);
    md5_hex(&[ha1_hex.as_bytes(), nonce.as_bytes(), nc.as_bytes(), cnonce.as_bytes(), b"auth", ha2.as_bytes()])
}

/// Verifies `Authorization: Digest <credentials>` for a request with `method` and `uri` (the
/// request target as the client sent it).
pub async fn verify(state: &AppState, method: &Method, uri: &Uri, credentials: &str) -> ApiResult<Caller> {
    let malformed = |why: String| {
        format!(
            "The Authorization header is not valid HTTP Digest: {why}. Send the API key's public key as the \
             username and its private key as the password (curl --digest --user PUBLIC_KEY:PRIVATE_KEY)."
        )
    };
    let params = match parse_params(credentials) {
        Ok(p) => p,
        Err(why) => return Err(unauthorized(state, malformed(why), false).await),
    };
    let get = |name: &str| params.get(name).map(String::as_str);
    let mut missing = Vec::new();
    let mut need = |name: &'static str| match get(name) {
        Some(v) => v,
        None => {
            missing.push(name);
            ""
        }
    };
    let (username, realm, nonce, digest_uri, response) =
        (need("username"), need("realm"), need("nonce"), need("uri"), need("response"));
    let (qop, nc, cnonce) = (need("qop"), need("nc"), need("cnonce"));
    if !missing.is_empty() {
        let why = format!("missing parameter(s) {} (qop=auth with nc and cnonce is required)", missing.join(", "));
        return Err(unauthorized(state, malformed(why), false).await);
    }
    if realm != REALM {
        return Err(
            unauthorized(state, format!("The Digest realm must be \"{REALM}\", as in the challenge."), false).await
        );
    }
    if qop != "auth" {
        return Err(unauthorized(state, "The Digest qop must be \"auth\", the only one offered.", false).await);
    }
    if let Some(alg) = get("algorithm")
        && !alg.eq_ignore_ascii_case("MD5")
    {
        return Err(unauthorized(state, "The Digest algorithm must be MD5, the only one offered.", false).await);
    }
    if get("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(unauthorized(
            state,
            "Digest userhash is not supported; send the public key as the username.",
            false,
        )
        .await);
    }
    let nc_value = match u32::from_str_radix(nc, 16) {
        Ok(n) if n > 0 && nc.len() <= 8 => n,
        _ => {
            let why = "nc must be 8 hexadecimal digits from 00000001 up".to_owned();
            return Err(unauthorized(state, malformed(why), false).await);
        }
    };
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if digest_uri != target && (uri.scheme().is_none() || *uri != *digest_uri) {
        return Err(unauthorized(
            state,
            format!(
                "The Digest uri parameter does not match this request: it must be the request's path and query \
                 ({target}) exactly as sent."
            ),
            false,
        )
        .await);
    }

    let key = match state.store.get_api_key_by_public_key(username).await {
        Ok(k) => k,
        Err(StoreError::NotFound { .. }) => {
            tracing::debug!("digest authentication refused: invalid credentials");
            return Err(unauthorized(state, INVALID_CREDENTIALS, false).await);
        }
        Err(e) => return Err(e.into()),
    };
    let ha1 = match state.kek.open(&ha1_purpose(&key.id), &key.digest_ha1_ciphertext) {
        Ok(h) => h,
        Err(_) => {
            tracing::error!(
                api_key = %key.id,
                "cannot open the Digest HA1 of an API key: the KEK differs from the one it was sealed with \
                 (ATREST_KEK or <data_dir>/kek.key changed?)"
            );
            return Err(ApiError::internal());
        }
    };
    let expected = expected_response(ha1.expose_secret(), nonce, nc, cnonce, method.as_str(), digest_uri);
    let given = response.to_ascii_lowercase();
    if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes()).is_err() {
        tracing::debug!("digest authentication refused: invalid credentials");
        return Err(unauthorized(state, INVALID_CREDENTIALS, false).await);
    }

    match state.store.check_and_bump_nonce_count(nonce, nc_value, state.now()).await? {
        NonceCheck::Accepted => Ok(Caller {
            principal: Principal::ApiKey(key.id.clone()),
            org_id: key.org_id.clone(),
            roles: key.roles.clone(),
            label: key.public_key.clone(),
        }),
        NonceCheck::Expired => Err(unauthorized(
            state,
            "The Digest nonce has expired; repeat the request with the new nonce of this challenge (stale=true).",
            true,
        )
        .await),
        NonceCheck::Unknown => Err(unauthorized(
            state,
            "The Digest nonce was not issued by this service (or is long expired); repeat the request with the \
             nonce of this challenge.",
            false,
        )
        .await),
        NonceCheck::Replayed => Err(unauthorized(
            state,
            format!(
                "Replayed nonce count: nc={nc} was already used with this nonce. Each request must send a higher \
                 nc, or use the new nonce of this challenge."
            ),
            false,
        )
        .await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_tokens_escapes_any_order_and_case() {
        let p = parse_params(concat!(
            r#"USERNAME="abc", Realm="MMS Public API",nonce="n1",  uri="/a?b=c,d", algorithm=MD5,"#,
            r#"	qop=auth, nc=00000001, cnonce="x\"y\\z", response="0123abcd",, opaque="""#
        ))
        .unwrap();
        assert_eq!(p["username"], "abc");
        assert_eq!(p["realm"], "MMS Public API");
        assert_eq!(p["uri"], "/a?b=c,d");
        assert_eq!(p["algorithm"], "MD5");
        assert_eq!(p["qop"], "auth");
        assert_eq!(p["nc"], "00000001");
        assert_eq!(p["cnonce"], "x\"y\\z");
        assert_eq!(p["opaque"], "");
        assert_eq!(p.len(), 10);
    }

    #[test]
    fn rejects_malformed_headers() {
        for bad in [
            r#"username="abc"#,
            r#"username"#,
            r#"username="a" realm="b""#,
            r#"username="a", username="b""#,
            r#"=x"#,
            r#"nc="#,
            r#"cnonce="a\"#,
            r#"a=b c"#,
        ] {
            assert!(parse_params(bad).is_err(), "{bad}");
        }
        assert!(parse_params("").unwrap().is_empty());
    }

    #[test]
    fn absolute_form_targets_compare_whole() {
        // verify() accepts a digest-uri equal to an absolute-form request target.
        let uri = Uri::from_static("http://h:1/p?q=1");
        assert!(uri == *"http://h:1/p?q=1");
        assert!(uri != *"http://h:1/p?q=2");
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/p?q=1");
    }

    #[test]
    fn response_matches_rfc_2617_example() {
        // RFC 2617 §3.5 (with qop=auth): Mufasa, "Circle Of Life", GET /dir/index.html.
        let ha1 = {
            let mut h = Md5::new();
            h.update(b"Mufasa:testrealm@host.com:Circle Of Life");
            h.finalize()
        };
        let r = expected_response(
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }
}
