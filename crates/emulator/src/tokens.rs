//! Access tokens the emulator issues and later accepts.
//!
//! Tokens are RS256 JWTs in Entra's v1 form (`shared/reference/azure-protocols.md` §2.1), signed
//! by one RSA key that persists in `DIR/token-signing-key.pk8` and is published in the JWKS.
//! Signing uses aws-lc-rs directly: the key is held as PKCS#8 and a JWT is three base64url
//! segments, so a JWT library adds nothing on this side. Incoming bearer tokens are verified
//! once and the verified claims cached by the token string.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use atrest_domain::AzureEnvironment;

/// Microsoft Graph's application id, accepted as a scope resource in place of its URL.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// The ARM resource ids of a cloud: its ARM URL and the classic `management.core` one.
pub(crate) fn arm_resources(cloud: AzureEnvironment) -> [&'static str; 2] {
    match cloud {
        AzureEnvironment::Azure => ["https://management.azure.com", "https://management.core.windows.net"],
        AzureEnvironment::AzureChina => {
            ["https://management.chinacloudapi.cn", "https://management.core.chinacloudapi.cn"]
        }
        AzureEnvironment::AzureUsGovernment => {
            ["https://management.usgovcloudapi.net", "https://management.core.usgovcloudapi.net"]
        }
    }
}

/// The claims of an access token issued by the emulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub aio: String,
    pub appid: String,
    pub appidacr: String,
    pub idp: String,
    pub idtyp: String,
    pub oid: String,
    pub rh: String,
    pub sub: String,
    pub tid: String,
    pub uti: String,
    pub ver: String,
}

impl AccessClaims {
    /// `appid=...;oid=...;iss=...` as Key Vault writes the caller in its 403 messages.
    pub fn caller_string(&self) -> String {
        format!("appid={};oid={};iss={}", self.appid, self.oid, self.iss)
    }
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    Missing,
    /// Not `Bearer <jwt>`, not three segments, bad base64 or bad JSON.
    Malformed,
    /// Not signed by this emulator.
    BadSignature,
    Expired,
    NotYetValid,
}

pub struct TokenSigner {
    key: RsaKeyPair,
    pub kid: String,
    /// Base64url modulus and exponent, for the JWKS.
    pub n: String,
    pub e: String,
    public_der: Vec<u8>,
    verified: Mutex<HashMap<String, Arc<AccessClaims>>>,
}

const VERIFIED_CACHE_MAX: usize = 50_000;

impl TokenSigner {
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("token-signing-key.pk8");
        let pkcs8 = if path.exists() {
            std::fs::read(&path).context("reading token-signing-key.pk8")?
        } else {
            let kp =
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
            let der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
                .map_err(|_| anyhow::anyhow!("PKCS#8 encoding failed"))?;
            let bytes = der.as_ref().to_vec();
            crate::persist::write_private(&path, &bytes)?;
            bytes
        };
        let key = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| anyhow::anyhow!("bad token signing key: {e}"))?;
        let public_der = key.public_key().as_ref().to_vec();
        let components = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public_key());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &public_der);
        Ok(Self {
            kid: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            n: URL_SAFE_NO_PAD.encode(&components.n),
            e: URL_SAFE_NO_PAD.encode(&components.e),
            public_der,
            key,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Sign `claims` as an RS256 JWT with this emulator's key.
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid});
        let mut out = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize")));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key.sign(&signature::RSA_PKCS1_SHA256, &rng, out.as_bytes(), &mut sig).expect("RSA signing cannot fail");
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(&sig));
        out
    }

    /// The public key as a JWK (for `/discovery/v2.0/keys`).
    pub fn jwk(&self, issuer: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid, "n": self.n, "e": self.e,
            "issuer": issuer,
            "x5c": [STANDARD.encode(&self.public_der)],
        })
    }

    /// Verify a token this emulator issued. Time checks use `now` (the emulator clock).
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<AccessClaims>, TokenProblem> {
        if let Some(c) = self.verified.lock().get(token).cloned() {
            return check_times(c, now);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenProblem::Malformed);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenProblem::Malformed)?;
        let claims: AccessClaims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenProblem::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenProblem::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
            return Err(TokenProblem::BadSignature);
        }
        let signed_len = h.len() + 1 + p.len();
        let public = signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.public_der);
        public.verify(&token.as_bytes()[..signed_len], &sig).map_err(|_| TokenProblem::BadSignature)?;
        let claims = Arc::new(claims);
        let mut cache = self.verified.lock();
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(token.to_string(), claims.clone());
        drop(cache);
        check_times(claims, now)
    }
}

fn check_times(c: Arc<AccessClaims>, now: i64) -> Result<Arc<AccessClaims>, TokenProblem> {
    // Entra allows five minutes of clock skew on nbf; keep the same tolerance.
    if now >= c.exp {
        Err(TokenProblem::Expired)
    } else if now + 300 < c.nbf {
        Err(TokenProblem::NotYetValid)
    } else {
        Ok(c)
    }
}

/// Extract the bearer token from an `Authorization` header value.
pub fn bearer(headers: &http::HeaderMap) -> Result<&str, TokenProblem> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Err(TokenProblem::Missing);
    };
    let v = v.to_str().map_err(|_| TokenProblem::Malformed)?;
    let (scheme, rest) = v.split_once(' ').ok_or(TokenProblem::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
        return Err(TokenProblem::Malformed);
    }
    Ok(rest.trim())
}

/// Issue a v1 access token for service principal `sp` (in its tenant) and `audience`.
/// `appidacr` is `"1"` for a secret, `"2"` for a certificate or federated assertion.
/// Returns the token and its lifetime in seconds.
pub fn issue_access_token(
    ctx: &crate::Ctx,
    sp: &crate::state::ServicePrincipal,
    audience: &str,
    appidacr: &str,
) -> (String, i64) {
    let now = ctx.now();
    let lifetime = ctx.read(|s| s.settings.token_lifetime_secs) as i64;
    let iss = format!("https://sts.windows.net/{}/", sp.tenant_id);
    let claims = AccessClaims {
        aud: audience.to_string(),
        iss: iss.clone(),
        iat: now,
        nbf: now,
        exp: now + lifetime,
        aio: URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()),
        appid: sp.app_id.to_string(),
        appidacr: appidacr.to_string(),
        idp: iss,
        idtyp: "app".into(),
        oid: sp.object_id.to_string(),
        rh: format!("0.{}.", URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())),
        sub: sp.object_id.to_string(),
        tid: sp.tenant_id.to_string(),
        uti: URL_SAFE_NO_PAD.encode(&uuid::Uuid::new_v4().as_bytes()[..12]),
        ver: "1.0".into(),
    };
    (ctx.signer.sign(&claims), lifetime)
}

/// Verify the bearer token on a request: present, well-formed, signed by this emulator and
/// within its lifetime. Audience and issuer are each surface's own check.
pub fn authenticate(ctx: &crate::Ctx, headers: &http::HeaderMap) -> Result<Arc<AccessClaims>, TokenProblem> {
    let token = bearer(headers)?;
    ctx.signer.verify(token, ctx.now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            aud: "https://vault.azure.net".into(),
            iss: "https://sts.windows.net/t/".into(),
            iat: 0,
            nbf: 0,
            exp,
            aio: String::new(),
            appid: "a".into(),
            appidacr: "2".into(),
            idp: String::new(),
            idtyp: "app".into(),
            oid: "o".into(),
            rh: String::new(),
            sub: "o".into(),
            tid: "t".into(),
            uti: String::new(),
            ver: "1.0".into(),
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenSigner::load_or_create(dir.path()).unwrap();
        let t = s.sign(&claims(1000));
        assert_eq!(s.verify(&t, 10).unwrap().oid, "o");
        assert_eq!(s.verify(&t, 1000).unwrap_err(), TokenProblem::Expired);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(99999)).unwrap());
        parts[1] = &forged;
        assert_eq!(s.verify(&parts.join("."), 10).unwrap_err(), TokenProblem::BadSignature);
        assert_eq!(s.verify("a.b", 10).unwrap_err(), TokenProblem::Malformed);
        // Same key after a restart.
        let s2 = TokenSigner::load_or_create(dir.path()).unwrap();
        assert_eq!(s2.kid, s.kid);
        assert!(s2.verify(&t, 10).is_ok());
    }
}
