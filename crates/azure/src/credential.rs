//! The platform app's credential, and how it proves itself at Entra's token endpoint.
//!
//! Three kinds (design.md §6):
//! - **Certificate** — the platform signs a client assertion with its private key. Microsoft's
//!   current format is PS256 with `x5t#S256` (SHA-256 thumbprint); the older RS256 with `x5t`
//!   (SHA-1 thumbprint) is still accepted and offered for compatibility
//!   (`shared/reference/azure-protocols.md` §1.2).
//! - **Federated token file** — a token from the platform's own OIDC issuer, sent unchanged as
//!   the assertion. The file is re-read for every token request, because Kubernetes (and other
//!   workload-identity setups) rotate it in place.
//! - **Client secret** — only for the legacy static-credentials mode.
//!
//! Signing uses aws-lc-rs directly rather than a JWT crate: the private key then lives only in
//! aws-lc memory, which is cleansed when freed, and a JWS is two base64url JSON objects and one
//! signature. No `Debug` here prints a key, secret or assertion.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use atrest_domain::AzureUuid;

use crate::error::Error;

/// The environment variable workload-identity webhooks set to the projected token's path.
pub const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Microsoft recommends 5–10 minutes; the longest keeps retries inside one assertion's life.
const ASSERTION_LIFETIME_SECS: i64 = 600;

/// Which JWS algorithm and thumbprint header a certificate assertion uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256 and the `x5t#S256` header: what Microsoft documents today.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and the SHA-1 `x5t` header: the older format.
    Rs256,
}

/// An X.509 certificate and its RSA private key, registered on the platform app.
pub struct CertificateCredential {
    key: RsaKeyPair,
    sha1_thumbprint: [u8; 20],
    sha256_thumbprint: [u8; 32],
    not_after: time::OffsetDateTime,
    algorithm: AssertionAlgorithm,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("thumbprint_sha1", &hex_upper(&self.sha1_thumbprint))
            .field("not_after", &self.not_after)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"[REDACTED]")
            .finish()
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

impl CertificateCredential {
    /// Load from PEM: the certificate (the first `CERTIFICATE` block; a chain may follow) and
    /// its RSA private key (`PRIVATE KEY` PKCS#8 or `RSA PRIVATE KEY` PKCS#1). Fails when the
    /// key does not belong to the certificate, which Entra would otherwise report as a bad
    /// signature (AADSTS700027) far from the cause.
    pub fn from_pem(cert_pem: &str, key_pem: &SecretString) -> Result<Self, Error> {
        let cert_der = x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes())
            .filter_map(Result::ok)
            .find(|p| p.label == "CERTIFICATE")
            .map(|p| p.contents)
            .ok_or_else(|| Error::local("the certificate PEM has no CERTIFICATE block"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| Error::local(format!("the certificate cannot be parsed: {e}")))?;

        let mut key = None;
        for pem in x509_parser::pem::Pem::iter_from_buffer(key_pem.expose_secret().as_bytes()) {
            let Ok(pem) = pem else { continue };
            // The DER of a private key is as secret as the PEM: wipe it once parsed.
            let der = Zeroizing::new(pem.contents);
            key = Some(match pem.label.as_str() {
                "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
                "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
                _ => continue,
            });
            break;
        }
        let key = key
            .ok_or_else(|| Error::local("the private key PEM has no PRIVATE KEY or RSA PRIVATE KEY block"))?
            .map_err(|e| Error::local(format!("the private key is not a usable RSA key: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key().as_ref() {
            return Err(Error::local("the private key does not belong to the certificate (their public keys differ)"));
        }
        let mut sha1_thumbprint = [0u8; 20];
        sha1_thumbprint.copy_from_slice(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &cert_der).as_ref());
        let mut sha256_thumbprint = [0u8; 32];
        sha256_thumbprint.copy_from_slice(digest::digest(&digest::SHA256, &cert_der).as_ref());
        Ok(Self {
            key,
            sha1_thumbprint,
            sha256_thumbprint,
            not_after: cert.validity().not_after.to_datetime(),
            algorithm: AssertionAlgorithm::default(),
        })
    }

    /// Use `algorithm` for assertions (default [`AssertionAlgorithm::Ps256`]).
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The assertion algorithm in use.
    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.algorithm
    }

    /// The SHA-1 thumbprint in the uppercase hex `az ad app credential list` shows.
    pub fn thumbprint_sha1_hex(&self) -> String {
        hex_upper(&self.sha1_thumbprint)
    }

    /// When the certificate expires; Entra refuses assertions from an expired certificate.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.not_after
    }

    /// A signed client assertion for `client_id` at `token_url` (the exact URL it is posted
    /// to, which Entra checks as `aud`), valid from `now` for ten minutes.
    pub fn assertion(
        &self,
        client_id: &AzureUuid,
        token_url: &str,
        now: time::OffsetDateTime,
    ) -> Result<SecretString, Error> {
        let (alg, header) = match self.algorithm {
            AssertionAlgorithm::Ps256 => (
                &signature::RSA_PSS_SHA256,
                serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": URL_SAFE_NO_PAD.encode(self.sha256_thumbprint)}),
            ),
            AssertionAlgorithm::Rs256 => (
                &signature::RSA_PKCS1_SHA256,
                serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": URL_SAFE_NO_PAD.encode(self.sha1_thumbprint)}),
            ),
        };
        let now = now.unix_timestamp();
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id.to_string(),
            "sub": client_id.to_string(),
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(alg, &SystemRandom::new(), signing_input.as_bytes(), &mut sig)
            .map_err(|_| Error::local("signing the client assertion failed"))?;
        Ok(SecretString::from(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))))
    }
}

/// A federated token (from the platform's OIDC issuer) in a file that is rotated in place.
#[derive(Debug, Clone)]
pub struct FederatedTokenFile {
    path: PathBuf,
}

impl FederatedTokenFile {
    /// A token file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file named by `AZURE_FEDERATED_TOKEN_FILE`, if set.
    pub fn from_env() -> Option<Self> {
        std::env::var_os(FEDERATED_TOKEN_FILE_ENV).filter(|v| !v.is_empty()).map(Self::new)
    }

    /// Where the token is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the current token. Called for every token request, never cached.
    pub async fn read(&self) -> Result<SecretString, Error> {
        let text =
            Zeroizing::new(tokio::fs::read_to_string(&self.path).await.map_err(|e| {
                Error::local(format!("cannot read the federated token file {}: {e}", self.path.display()))
            })?);
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::local(format!("the federated token file {} is empty", self.path.display())));
        }
        Ok(SecretString::from(token.to_string()))
    }
}

/// How the platform app authenticates.
pub enum CredentialKind {
    /// A certificate and its private key: signed client assertions.
    Certificate(CertificateCredential),
    /// A token from the platform's OIDC issuer, re-read for every request.
    FederatedTokenFile(FederatedTokenFile),
    /// Legacy static mode only: a secret the customer created for their own app.
    ClientSecret(SecretString),
}

impl std::fmt::Debug for CredentialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Certificate(c) => f.debug_tuple("Certificate").field(c).finish(),
            Self::FederatedTokenFile(t) => f.debug_tuple("FederatedTokenFile").field(t).finish(),
            Self::ClientSecret(_) => f.write_str("ClientSecret([REDACTED])"),
        }
    }
}

/// An application (client) id with its credential.
#[derive(Debug)]
pub struct ClientCredential {
    client_id: AzureUuid,
    kind: CredentialKind,
}

/// The body of one token request, with what an error message may say about it.
pub(crate) struct TokenForm {
    /// `(name, value)` pairs; values may be secret and are wiped on drop.
    pub fields: Vec<(&'static str, Zeroizing<String>)>,
    /// `iss` and `sub` of a federated assertion, to name them in a remediation.
    pub federated_issuer_subject: Option<(String, String)>,
}

impl std::fmt::Debug for TokenForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Field names only: the values include the assertion or secret.
        let names: Vec<&str> = self.fields.iter().map(|(n, _)| *n).collect();
        f.debug_struct("TokenForm").field("fields", &names).finish_non_exhaustive()
    }
}

impl ClientCredential {
    /// An app id with its credential.
    pub fn new(client_id: AzureUuid, kind: CredentialKind) -> Self {
        Self { client_id, kind }
    }

    /// An app id with a certificate credential.
    pub fn certificate(client_id: AzureUuid, cert: CertificateCredential) -> Self {
        Self::new(client_id, CredentialKind::Certificate(cert))
    }

    /// An app id with a federated token file.
    pub fn federated_token_file(client_id: AzureUuid, file: FederatedTokenFile) -> Self {
        Self::new(client_id, CredentialKind::FederatedTokenFile(file))
    }

    /// An app id with a client secret (legacy static mode only).
    pub fn client_secret(client_id: AzureUuid, secret: SecretString) -> Self {
        Self::new(client_id, CredentialKind::ClientSecret(secret))
    }

    /// The application (client) id.
    pub fn client_id(&self) -> &AzureUuid {
        &self.client_id
    }

    /// The kind of credential.
    pub fn kind(&self) -> &CredentialKind {
        &self.kind
    }

    /// The form fields of a client-credentials request for `scope` at `token_url`
    /// (`shared/reference/azure-protocols.md` §1.1). Reads the federated token file now.
    pub(crate) async fn token_form(&self, token_url: &str, scope: &str) -> Result<TokenForm, Error> {
        let mut fields = vec![
            ("client_id", Zeroizing::new(self.client_id.to_string())),
            ("scope", Zeroizing::new(scope.to_string())),
            ("grant_type", Zeroizing::new("client_credentials".to_string())),
        ];
        let mut federated_issuer_subject = None;
        match &self.kind {
            CredentialKind::Certificate(c) => {
                let a = c.assertion(&self.client_id, token_url, time::OffsetDateTime::now_utc())?;
                fields.push(("client_assertion_type", Zeroizing::new(ASSERTION_TYPE.to_string())));
                fields.push(("client_assertion", Zeroizing::new(a.expose_secret().to_string())));
            }
            CredentialKind::FederatedTokenFile(file) => {
                let a = file.read().await?;
                federated_issuer_subject = jwt_issuer_subject(a.expose_secret());
                fields.push(("client_assertion_type", Zeroizing::new(ASSERTION_TYPE.to_string())));
                fields.push(("client_assertion", Zeroizing::new(a.expose_secret().to_string())));
            }
            CredentialKind::ClientSecret(s) => {
                fields.push(("client_secret", Zeroizing::new(s.expose_secret().to_string())));
            }
        }
        Ok(TokenForm { fields, federated_issuer_subject })
    }
}

/// `iss` and `sub` of a JWT, read without verifying it (only to name them in an error message;
/// neither is secret).
pub(crate) fn jwt_issuer_subject(jwt: &str) -> Option<(String, String)> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((v.get("iss")?.as_str()?.to_string(), v.get("sub")?.as_str()?.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed RSA-2048 certificate and its key (PKCS#8 PEM).
    pub(crate) fn test_cert() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["atrest-platform".into()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn decode_part(jwt: &str, i: usize) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(i).unwrap()).unwrap()).unwrap()
    }

    /// Verify with jsonwebtoken, an implementation independent of the signing code above.
    fn verify(jwt: &str, cert_pem: &str, alg: jsonwebtoken::Algorithm, aud: &str) -> serde_json::Value {
        let pem = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap().1;
        let cert = pem.parse_x509().unwrap();
        let spki = cert.public_key().subject_public_key.data.to_vec();
        let key = jsonwebtoken::DecodingKey::from_rsa_der(&spki);
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v).unwrap().claims
    }

    #[test]
    fn ps256_assertion_round_trips_with_sha256_thumbprint() {
        let (cert_pem, key_pem) = test_cert();
        let cred = CertificateCredential::from_pem(&cert_pem, &SecretString::from(key_pem)).unwrap();
        assert_eq!(cred.algorithm(), AssertionAlgorithm::Ps256);
        let client: AzureUuid = "11111111-2222-3333-4444-555555555555".parse().unwrap();
        let aud = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let now = time::OffsetDateTime::now_utc();
        let jwt = cred.assertion(&client, aud, now).unwrap();
        let jwt = jwt.expose_secret();

        let header = decode_part(jwt, 0);
        let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap().1.contents;
        let want = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &der));
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], want.as_str());
        assert!(header.get("x5t").is_none());

        let claims = verify(jwt, &cert_pem, jsonwebtoken::Algorithm::PS256, aud);
        assert_eq!(claims["iss"], client.to_string());
        assert_eq!(claims["sub"], client.to_string());
        assert_eq!(claims["aud"], aud);
        assert_eq!(claims["nbf"], now.unix_timestamp());
        assert_eq!(claims["iat"], now.unix_timestamp());
        assert_eq!(claims["exp"], now.unix_timestamp() + 600);
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        // A fresh jti every time: Entra may reject a replayed assertion.
        let again = cred.assertion(&client, aud, now).unwrap();
        assert_ne!(decode_part(again.expose_secret(), 1)["jti"], claims["jti"]);
    }

    #[test]
    fn rs256_assertion_uses_sha1_x5t() {
        let (cert_pem, key_pem) = test_cert();
        let cred = CertificateCredential::from_pem(&cert_pem, &SecretString::from(key_pem))
            .unwrap()
            .with_algorithm(AssertionAlgorithm::Rs256);
        let client = AzureUuid::new_v4();
        let jwt = cred
            .assertion(&client, "https://login.microsoftonline.us/t/oauth2/v2.0/token", time::OffsetDateTime::now_utc())
            .unwrap();
        let header = decode_part(jwt.expose_secret(), 0);
        let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap().1.contents;
        assert_eq!(header["alg"], "RS256");
        assert_eq!(
            header["x5t"],
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der)).as_str()
        );
        assert!(header.get("x5t#S256").is_none());
        verify(
            jwt.expose_secret(),
            &cert_pem,
            jsonwebtoken::Algorithm::RS256,
            "https://login.microsoftonline.us/t/oauth2/v2.0/token",
        );
        assert_eq!(cred.thumbprint_sha1_hex().len(), 40);
    }

    #[test]
    fn mismatched_key_and_garbage_are_refused() {
        let (cert_pem, _) = test_cert();
        let (_, other_key) = test_cert();
        let e = CertificateCredential::from_pem(&cert_pem, &SecretString::from(other_key)).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        let e = CertificateCredential::from_pem("nope", &SecretString::from(String::new())).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let e = CertificateCredential::from_pem(&cert_pem, &SecretString::from("junk".to_string())).unwrap_err();
        assert!(e.to_string().contains("no PRIVATE KEY"), "{e}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let (cert_pem, key_pem) = test_cert();
        let marker = key_pem.lines().nth(1).unwrap().to_string();
        let cert = CertificateCredential::from_pem(&cert_pem, &SecretString::from(key_pem)).unwrap();
        let cred = ClientCredential::certificate(AzureUuid::new_v4(), cert);
        let s = format!("{cred:?}");
        assert!(s.contains("[REDACTED]") && !s.contains(&marker), "{s}");

        let secret = "abc8Q~verysecretvalue0123456789012345678";
        let cred = ClientCredential::client_secret(AzureUuid::new_v4(), SecretString::from(secret.to_string()));
        let s = format!("{cred:?}");
        assert!(s.contains("[REDACTED]") && !s.contains(secret), "{s}");
    }

    #[tokio::test]
    async fn federated_file_is_reread_for_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let jwt = |sub: &str| {
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
                URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"https://issuer.example","sub":"{sub}"}}"#))
            )
        };
        std::fs::write(&path, format!("{}\n", jwt("one"))).unwrap();
        let cred = ClientCredential::federated_token_file(AzureUuid::new_v4(), FederatedTokenFile::new(&path));
        let form = cred.token_form("https://login.microsoftonline.com/t/oauth2/v2.0/token", "s").await.unwrap();
        let get = |f: &TokenForm, k: &str| f.fields.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(get(&form, "client_assertion").unwrap(), jwt("one"));
        assert_eq!(get(&form, "client_assertion_type").unwrap(), ASSERTION_TYPE);
        assert_eq!(form.federated_issuer_subject, Some(("https://issuer.example".into(), "one".into())));

        std::fs::write(&path, jwt("two")).unwrap();
        let form = cred.token_form("u", "s").await.unwrap();
        assert_eq!(get(&form, "client_assertion").unwrap(), jwt("two"));

        std::fs::write(&path, "  \n").unwrap();
        assert!(cred.token_form("u", "s").await.unwrap_err().to_string().contains("empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(cred.token_form("u", "s").await.unwrap_err().to_string().contains("cannot read"));
    }

    #[tokio::test]
    async fn form_fields_are_exactly_the_documented_ones() {
        let cred = ClientCredential::client_secret(AzureUuid::new_v4(), SecretString::from("s3cret".to_string()));
        let form = cred.token_form("u", "https://vault.azure.net/.default").await.unwrap();
        let names: Vec<&str> = form.fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["client_id", "scope", "grant_type", "client_secret"]);

        let (cert_pem, key_pem) = test_cert();
        let cert = CertificateCredential::from_pem(&cert_pem, &SecretString::from(key_pem)).unwrap();
        let cred = ClientCredential::certificate(AzureUuid::new_v4(), cert);
        let form = cred.token_form("u", "https://vault.azure.net/.default").await.unwrap();
        let names: Vec<&str> = form.fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["client_id", "scope", "grant_type", "client_assertion_type", "client_assertion"]);
    }
}
