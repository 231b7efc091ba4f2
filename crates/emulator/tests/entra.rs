//! Entra ID surface against a real emulator: the token endpoint with client secrets, certificate
//! assertions (RS256/PS256, every `x5t` spelling) and federated assertions from an OIDC issuer
//! this test serves over https; AADSTS errors; OIDC discovery, JWKS and instance discovery.
//!
//! Applications and service principals are set up directly in the emulator's state so that
//! these tests depend on the token endpoint only; the admin API and Graph have their own tests.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_domain::AzureEnvironment;
use atrest_emulator::state::{
    Application, CertificateCredential, FederatedCredential, SecretCredential, ServicePrincipal,
};
use support::TestEmu;

const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
const FIC_AUDIENCE: &str = "api://AzureADTokenExchange";

// ------------------------------------------------------------------------------------------
// Setup helpers
// ------------------------------------------------------------------------------------------

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sha(alg: &'static aws_lc_rs::digest::Algorithm, data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(alg, data).as_ref().to_vec()
}

/// An RSA key with a self-signed certificate, as a platform app would hold.
struct TestCert {
    der: Vec<u8>,
    key: EncodingKey,
}

impl TestCert {
    fn new() -> Self {
        let (key_pem, _) = rsa_key();
        let key = rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "entra test app");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        Self { der: cert.der().to_vec(), key: EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap() }
    }
    fn sha1(&self) -> Vec<u8> {
        sha(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der)
    }
    fn sha256(&self) -> Vec<u8> {
        sha(&aws_lc_rs::digest::SHA256, &self.der)
    }
    fn credential(&self) -> CertificateCredential {
        let (_, parsed) = x509_parser::parse_x509_certificate(&self.der).unwrap();
        CertificateCredential {
            key_id: Uuid::new_v4(),
            sha1: hex::encode(self.sha1()),
            sha256: hex::encode(self.sha256()),
            spki_der_b64: STANDARD.encode(parsed.public_key().raw),
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
            display_name: None,
        }
    }
}

/// A fresh RSA-2048 key: (PKCS#8 PEM, (n, e) base64url).
fn rsa_key() -> (String, (String, String)) {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = AsDer::<Pkcs8V1Der>::as_der(&kp).unwrap();
    let pem = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der.as_ref().to_vec().into(), &rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    let comps = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(aws_lc_rs::signature::KeyPair::public_key(&kp));
    (pem, (URL_SAFE_NO_PAD.encode(&comps.n), URL_SAFE_NO_PAD.encode(&comps.e)))
}

fn new_tenant(t: &TestEmu) -> Uuid {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<Uuid> {
            Ok(s.create_tenant_with_admin("Second", AzureEnvironment::Azure, now()).tenant_id.parse()?)
        })
        .unwrap()
}

fn add_app(t: &TestEmu, home: Uuid, multi_tenant: bool) -> Uuid {
    let app = Application {
        object_id: Uuid::new_v4(),
        app_id: Uuid::new_v4(),
        home_tenant: home,
        display_name: "test app".into(),
        multi_tenant,
        secrets: vec![],
        certificates: vec![],
        federated: vec![],
        created: now(),
    };
    let app_id = app.app_id;
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.applications.insert(app.object_id, app);
            Ok(())
        })
        .unwrap();
    app_id
}

fn edit_app(t: &TestEmu, app_id: Uuid, f: impl FnOnce(&mut Application)) {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            f(s.applications.values_mut().find(|a| a.app_id == app_id).unwrap());
            Ok(())
        })
        .unwrap();
}

fn add_secret(t: &TestEmu, app_id: Uuid) -> String {
    let secret = atrest_emulator::state::new_client_secret();
    let cred = SecretCredential {
        key_id: Uuid::new_v4(),
        hint: secret[..3].to_string(),
        sha256: atrest_emulator::state::sha256_hex(secret.as_bytes()),
        end_date_time: now() + 86400,
        start_date_time: None,
        display_name: None,
    };
    edit_app(t, app_id, |a| a.secrets.push(cred));
    secret
}

fn add_sp(t: &TestEmu, app_id: Uuid, tenant: Uuid) -> Uuid {
    let sp = ServicePrincipal {
        object_id: Uuid::new_v4(),
        tenant_id: tenant,
        app_id,
        display_name: "test app".into(),
        account_enabled: true,
        directory_admin: false,
        created: now(),
    };
    let id = sp.object_id;
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.service_principals.insert(id, sp);
            Ok(())
        })
        .unwrap();
    id
}

fn edit_sp(t: &TestEmu, sp: Uuid, f: impl FnOnce(&mut atrest_emulator::state::State, Uuid)) {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            f(s, sp);
            Ok(())
        })
        .unwrap();
}

fn tenant_of(t: &TestEmu) -> Uuid {
    t.bootstrap().tenant_id.parse().unwrap()
}

fn token_url(tenant: impl std::fmt::Display) -> String {
    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
}

async fn post_form(t: &TestEmu, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = t.http.post(url).form(form).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn secret_token(
    t: &TestEmu,
    tenant: impl std::fmt::Display,
    client: &str,
    secret: &str,
    scope: &str,
) -> (u16, Value) {
    post_form(
        t,
        &token_url(tenant),
        &[("grant_type", "client_credentials"), ("client_id", client), ("client_secret", secret), ("scope", scope)],
    )
    .await
}

async fn assertion_token(t: &TestEmu, url: &str, client: &str, assertion: &str) -> (u16, Value) {
    post_form(
        t,
        url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion),
            ("scope", VAULT_SCOPE),
        ],
    )
    .await
}

/// The claims of a JWT, unverified (the test checks the signature separately where it matters).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Assert an AADSTS error body: status, `error`, and `AADSTS{code}` in `error_codes` and text.
#[track_caller]
fn assert_aad(got: &(u16, Value), status: u16, error: &str, code: u64) {
    let (s, b) = got;
    assert_eq!(*s, status, "{b}");
    assert_eq!(b["error"], error, "{b}");
    assert_eq!(b["error_codes"], json!([code]), "{b}");
    let desc = b["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    assert!(desc.contains("Trace ID: ") && desc.contains("Correlation ID: "), "{desc}");
    for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(b[k].is_string(), "{k} in {b}");
    }
}

fn cert_claims(client: Uuid, aud: &str) -> Value {
    let n = now();
    json!({"aud": aud, "iss": client, "sub": client, "jti": Uuid::new_v4(), "nbf": n, "exp": n + 600, "iat": n})
}

fn sign(alg: Algorithm, header_fields: &[(&str, String)], claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    for (k, v) in header_fields {
        match *k {
            "x5t" => h.x5t = Some(v.clone()),
            "x5t#S256" => h.x5t_s256 = Some(v.clone()),
            "kid" => h.kid = Some(v.clone()),
            other => panic!("unknown header field {other}"),
        }
    }
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

// ------------------------------------------------------------------------------------------
// Client secret and issued-token claims
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_secret_issues_v1_token_with_the_tenants_service_principal() {
    let t = TestEmu::start().await;
    let b = t.bootstrap().clone();
    let (s, body) = secret_token(&t, &b.tenant_id, &b.client_id, &b.client_secret, VAULT_SCOPE).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].is_i64() && body["ext_expires_in"].is_i64(), "numbers, not strings: {body}");
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["aud"], "https://vault.azure.net");
    assert_eq!(c["iss"], format!("https://sts.windows.net/{}/", b.tenant_id));
    assert_eq!(c["tid"], b.tenant_id);
    assert_eq!(c["oid"], t.bootstrap_sp());
    assert_eq!(c["appid"], b.client_id);
    assert_eq!(c["appidacr"], "1");
    assert_eq!(c["idtyp"], "app");
    assert_eq!(c["ver"], "1.0");
    assert!(c["exp"].as_i64().unwrap() > now());

    // The token verifies against the published JWKS.
    let jwks: Value = t
        .http
        .get(format!("https://login.microsoftonline.com/{}/discovery/v2.0/keys", b.tenant_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.kid.as_deref(), key["kid"].as_str());
    let dk =
        jsonwebtoken::DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), key["e"].as_str().unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
    v.set_audience(&["https://vault.azure.net"]);
    v.set_issuer(&[format!("https://sts.windows.net/{}/", b.tenant_id)]);
    jsonwebtoken::decode::<Value>(token, &dk, &v).unwrap();

    // Audiences keep the resource as given, trailing slash included (az sends `...windows.net//.default`).
    for (scope, aud) in [
        ("https://management.core.windows.net//.default", "https://management.core.windows.net/"),
        ("https://management.azure.com/.default", "https://management.azure.com"),
        ("https://management.azure.com//.default", "https://management.azure.com/"),
        ("https://graph.microsoft.com/.default", "https://graph.microsoft.com"),
        ("00000003-0000-0000-c000-000000000000/.default", "00000003-0000-0000-c000-000000000000"),
        ("https://vault.azure.net//.default", "https://vault.azure.net/"),
    ] {
        let (s, body) = secret_token(&t, &b.tenant_id, &b.client_id, &b.client_secret, scope).await;
        assert_eq!(s, 200, "{scope}: {body}");
        assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], aud, "{scope}");
    }

    // The tenant's domain works in place of its GUID; MSAL's extra fields are ignored.
    let domain = t.emu.ctx().read(|s| s.tenants[&tenant_of(&t)].default_domain.clone());
    let (s, body) = post_form(
        &t,
        &token_url(&domain),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &b.client_id),
            ("client_secret", &b.client_secret),
            ("scope", VAULT_SCOPE),
            ("client_info", "1"),
            ("claims", r#"{"access_token":{"xms_cc":{"values":["CP1"]}}}"#),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["tid"], b.tenant_id);

    // The v1 endpoint takes `resource` instead of `scope`.
    let (s, body) = post_form(
        &t,
        &format!("https://login.microsoftonline.com/{}/oauth2/token", b.tenant_id),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &b.client_id),
            ("client_secret", &b.client_secret),
            ("resource", "https://management.core.windows.net/"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], "https://management.core.windows.net/");

    // Sovereign login host: that cloud's resources only.
    let (s, body) = post_form(
        &t,
        &format!("https://login.chinacloudapi.cn/{}/oauth2/v2.0/token", b.tenant_id),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &b.client_id),
            ("client_secret", &b.client_secret),
            ("scope", "https://vault.azure.cn/.default"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], "https://vault.azure.cn");
    let got = post_form(
        &t,
        &format!("https://login.chinacloudapi.cn/{}/oauth2/v2.0/token", b.tenant_id),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &b.client_id),
            ("client_secret", &b.client_secret),
            ("scope", VAULT_SCOPE),
        ],
    )
    .await;
    assert_aad(&got, 400, "invalid_scope", 70011);
}

#[tokio::test]
async fn token_endpoint_errors_are_aadsts_bodies() {
    let t = TestEmu::start().await;
    let b = t.bootstrap().clone();
    let tid = &b.tenant_id;
    let url = token_url(tid);
    let cid = b.client_id.as_str();
    let sec = b.client_secret.as_str();
    let gt = ("grant_type", "client_credentials");

    assert_aad(&secret_token(&t, tid, cid, "wrong-secret", VAULT_SCOPE).await, 401, "invalid_client", 7000215);
    let unknown = Uuid::new_v4();
    let got = secret_token(&t, unknown, cid, sec, VAULT_SCOPE).await;
    assert_aad(&got, 400, "invalid_request", 90002);
    assert!(got.1["error_description"].as_str().unwrap().contains(&format!("Tenant '{unknown}' not found")));
    assert_aad(&secret_token(&t, "nosuch.onmicrosoft.com", cid, sec, VAULT_SCOPE).await, 400, "invalid_request", 90002);
    assert_aad(&secret_token(&t, "common", cid, sec, VAULT_SCOPE).await, 400, "invalid_request", 50059);
    let stranger = Uuid::new_v4().to_string();
    let got = secret_token(&t, tid, &stranger, sec, VAULT_SCOPE).await;
    assert_aad(&got, 400, "unauthorized_client", 700016);
    assert!(got.1["error_description"].as_str().unwrap().contains(&format!(
        "Application with identifier '{stranger}' was not found in the directory '{tid}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
    )));
    assert_aad(&secret_token(&t, tid, "not-a-guid", sec, VAULT_SCOPE).await, 400, "unauthorized_client", 700016);

    let missing = |name: &'static str| {
        let mut form = vec![gt, ("client_id", cid), ("client_secret", sec), ("scope", VAULT_SCOPE)];
        form.retain(|(k, _)| *k != name);
        form
    };
    for name in ["grant_type", "client_id", "scope"] {
        let got = post_form(&t, &url, &missing(name)).await;
        assert_aad(&got, 400, "invalid_request", 900144);
        assert!(got.1["error_description"].as_str().unwrap().contains(&format!("'{name}'")), "{name}");
    }
    assert_aad(&post_form(&t, &url, &missing("client_secret")).await, 401, "invalid_client", 7000218);
    let got = post_form(&t, &url, &[("grant_type", "password"), ("client_id", cid), ("scope", VAULT_SCOPE)]).await;
    assert_aad(&got, 400, "unsupported_grant_type", 70003);

    for (scope, code) in [
        ("https://foo.microsoft.com/.default", 70011),
        ("https://vault.azure.net/user_impersonation", 70011),
        ("https://vault.azure.net/.default https://graph.microsoft.com/.default", 700022),
        ("https://vault.azure.net/.default something", 70011),
        ("/.default", 700023),
        (".default", 700023),
        ("openid", 70011),
    ] {
        let got = secret_token(&t, tid, cid, sec, scope).await;
        assert_aad(&got, 400, "invalid_scope", code);
    }

    // Both credentials at once, and an assertion with the wrong type.
    let got = post_form(
        &t,
        &url,
        &[gt, ("client_id", cid), ("client_secret", sec), ("client_assertion", "x.y.z"), ("scope", VAULT_SCOPE)],
    )
    .await;
    assert_aad(&got, 400, "invalid_request", 900144);
    let got =
        post_form(&t, &url, &[gt, ("client_id", cid), ("client_assertion", "x.y.z"), ("scope", VAULT_SCOPE)]).await;
    assert_aad(&got, 400, "invalid_request", 900144);
    let got = post_form(
        &t,
        &url,
        &[
            gt,
            ("client_id", cid),
            ("client_assertion_type", "urn:other"),
            ("client_assertion", "x.y.z"),
            ("scope", VAULT_SCOPE),
        ],
    )
    .await;
    assert_aad(&got, 400, "invalid_request", 900144);

    // Bodies that are not forms: binary garbage, JSON.
    let r = t
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![0xffu8, 0xfe, 0x00, b'='])
        .send()
        .await
        .unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_aad(&got, 400, "invalid_request", 900144);
    let r = t.http.post(&url).json(&json!({"grant_type": "client_credentials"})).send().await.unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_aad(&got, 400, "invalid_request", 900144);

    // Oversized body: 413 in AADSTS form, never a 500.
    let big = "a".repeat(300 * 1024);
    let r = t.http.post(&url).form(&[("grant_type", big.as_str())]).send().await.unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_aad(&got, 413, "invalid_request", 90020);

    // Wrong method and unknown routes.
    let r = t.http.get(&url).send().await.unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_aad(&got, 405, "invalid_request", 900561);
    let r = t.http.get(format!("https://login.microsoftonline.com/{tid}/oauth2/v2.0/authorize")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error_codes"].is_array());
    let r = t.http.get("https://login.microsoftonline.com/a/%zz/token").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error_codes"].is_array());
}

// ------------------------------------------------------------------------------------------
// Certificate assertions
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn certificate_assertions_rs256_and_ps256_with_every_thumbprint_spelling() {
    let t = TestEmu::start().await;
    let tid = tenant_of(&t);
    let app = add_app(&t, tid, false);
    let sp = add_sp(&t, app, tid);
    let cert = TestCert::new();
    edit_app(&t, app, |a| a.certificates.push(cert.credential()));
    let client = app.to_string();
    let url = token_url(tid);
    let sha1 = cert.sha1();
    let sha256 = cert.sha256();
    let headers: Vec<(&str, Vec<(&str, String)>)> = vec![
        // Rust azure_identity: standard base64, padded.
        ("x5t std padded", vec![("x5t", STANDARD.encode(&sha1))]),
        ("x5t std unpadded", vec![("x5t", STANDARD_NO_PAD.encode(&sha1))]),
        // azure-identity Python: url-safe, padded.
        ("x5t url padded", vec![("x5t", URL_SAFE.encode(&sha1))]),
        // MSAL: url-safe, unpadded.
        ("x5t url unpadded", vec![("x5t", URL_SAFE_NO_PAD.encode(&sha1))]),
        ("x5t#S256", vec![("x5t#S256", URL_SAFE_NO_PAD.encode(&sha256))]),
        ("kid hex sha1", vec![("kid", hex::encode_upper(&sha1))]),
    ];
    for (what, h) in &headers {
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            let assertion = sign(alg, h, &cert_claims(app, &url), &cert.key);
            let (s, body) = assertion_token(&t, &url, &client, &assertion).await;
            assert_eq!(s, 200, "{what} {alg:?}: {body}");
            let c = claims(body["access_token"].as_str().unwrap());
            assert_eq!(c["appidacr"], "2");
            assert_eq!(c["oid"], sp.to_string());
            assert_eq!(c["appid"], client);
        }
    }

    // Accepted audiences: domain tenant, explicit port, v1 URL, a login alias; iat/nbf optional.
    let domain = t.emu.ctx().read(|s| s.tenants[&tid].default_domain.clone());
    let x5t = vec![("x5t", URL_SAFE_NO_PAD.encode(&sha1))];
    for aud in [
        format!("https://login.microsoftonline.com/{domain}/oauth2/v2.0/token"),
        format!("https://login.microsoftonline.com:443/{tid}/oauth2/v2.0/token"),
        format!("https://login.microsoftonline.com/{tid}/oauth2/token"),
        format!("https://login.microsoftonline.com/{tid}/oauth2/v2.0/token/"),
        format!("https://login.windows.net/{tid}/oauth2/v2.0/token"),
    ] {
        let assertion = sign(Algorithm::RS256, &x5t, &cert_claims(app, &aud), &cert.key);
        let (s, body) = assertion_token(&t, &url, &client, &assertion).await;
        assert_eq!(s, 200, "{aud}: {body}");
    }
    let n = now();
    let minimal = json!({"aud": url, "iss": client, "sub": client, "exp": n + 300});
    let (s, body) = assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &minimal, &cert.key)).await;
    assert_eq!(s, 200, "{body}");
    let aud_array = json!({"aud": [url], "iss": client, "sub": client, "exp": n + 300});
    let (s, body) = assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &aud_array, &cert.key)).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn certificate_assertion_failures() {
    let t = TestEmu::start().await;
    let tid = tenant_of(&t);
    let app = add_app(&t, tid, false);
    add_sp(&t, app, tid);
    let cert = TestCert::new();
    let other = TestCert::new();
    edit_app(&t, app, |a| a.certificates.push(cert.credential()));
    let client = app.to_string();
    let url = token_url(tid);
    let x5t = vec![("x5t", URL_SAFE_NO_PAD.encode(cert.sha1()))];
    let n = now();

    // A certificate the app does not have: the thumbprint is named in the message.
    let other_x5t = vec![("x5t", URL_SAFE_NO_PAD.encode(other.sha1()))];
    let got =
        assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &other_x5t, &cert_claims(app, &url), &other.key))
            .await;
    assert_aad(&got, 401, "invalid_client", 700027);
    let desc = got.1["error_description"].as_str().unwrap();
    assert!(desc.contains(&hex::encode_upper(other.sha1())), "{desc}");
    // The registered thumbprint, but signed by another key.
    let got =
        assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &cert_claims(app, &url), &other.key)).await;
    assert_aad(&got, 401, "invalid_client", 700027);
    // No key hint at all.
    let got =
        assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &[], &cert_claims(app, &url), &cert.key)).await;
    assert_aad(&got, 401, "invalid_client", 700027);
    // HS256 "signed" with a guessable secret is refused.
    let hs = jsonwebtoken::encode(
        &Header { x5t: Some(URL_SAFE_NO_PAD.encode(cert.sha1())), ..Header::new(Algorithm::HS256) },
        &cert_claims(app, &url),
        &EncodingKey::from_secret(b"k"),
    )
    .unwrap();
    assert_aad(&assertion_token(&t, &url, &client, &hs).await, 401, "invalid_client", 700027);

    // Time: expired, not yet valid (beyond the 5-minute skew).
    let expired = json!({"aud": url, "iss": client, "sub": client, "nbf": n - 7200, "exp": n - 3600});
    let got = assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &expired, &cert.key)).await;
    assert_aad(&got, 401, "invalid_client", 700024);
    let early = json!({"aud": url, "iss": client, "sub": client, "nbf": n + 3600, "exp": n + 7200});
    let got = assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &early, &cert.key)).await;
    assert_aad(&got, 401, "invalid_client", 700024);
    let no_exp = json!({"aud": url, "iss": client, "sub": client});
    let got = assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &no_exp, &cert.key)).await;
    assert_aad(&got, 400, "invalid_request", 50027);

    // Audience: another tenant's endpoint, another host, not a URL.
    let other_tenant = new_tenant(&t);
    for aud in [
        token_url(other_tenant),
        format!("https://evil.example/{tid}/oauth2/v2.0/token"),
        format!("https://management.azure.com/{tid}/oauth2/v2.0/token"),
        format!("https://login.microsoftonline.com/{tid}/oauth2/v2.0/authorize"),
        "token endpoint".to_string(),
    ] {
        let got =
            assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &cert_claims(app, &aud), &cert.key)).await;
        assert_aad(&got, 401, "invalid_client", 700027);
    }
    // `sub` must be the client id too.
    let bad_sub = json!({"aud": url, "iss": client, "sub": Uuid::new_v4(), "exp": n + 300});
    let got = assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &bad_sub, &cert.key)).await;
    assert_aad(&got, 401, "invalid_client", 700021);

    // Malformed JWTs.
    for bad in ["abc", "a.b.c", "a.b", "e30.e30.e30.e30", "!!!.???.###", "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln"] {
        let got = assertion_token(&t, &url, &client, bad).await;
        assert_aad(&got, 400, "invalid_request", 50027);
    }

    // An expired certificate credential no longer signs in.
    edit_app(&t, app, |a| a.certificates[0].not_after = n - 60);
    let got =
        assertion_token(&t, &url, &client, &sign(Algorithm::RS256, &x5t, &cert_claims(app, &url), &cert.key)).await;
    assert_aad(&got, 401, "invalid_client", 700027);
    assert!(got.1["error_description"].as_str().unwrap().contains("expired"));

    // Expired secrets give 7000222.
    let secret = add_secret(&t, app);
    edit_app(&t, app, |a| a.secrets[0].end_date_time = n - 60);
    assert_aad(&secret_token(&t, tid, &client, &secret, VAULT_SCOPE).await, 401, "invalid_client", 7000222);
}

// ------------------------------------------------------------------------------------------
// Multi-tenant apps and service principal state
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn multi_tenant_app_needs_a_service_principal_in_each_tenant() {
    let t = TestEmu::start().await;
    let home = tenant_of(&t);
    let customer = new_tenant(&t);
    let app = add_app(&t, home, true);
    let secret = add_secret(&t, app);
    add_sp(&t, app, home);
    let client = app.to_string();

    let got = secret_token(&t, customer, &client, &secret, VAULT_SCOPE).await;
    assert_aad(&got, 400, "unauthorized_client", 700016);
    assert!(
        got.1["error_description"].as_str().unwrap().contains(&format!("was not found in the directory '{customer}'"))
    );

    let sp_c = add_sp(&t, app, customer);
    let (s, body) = secret_token(&t, customer, &client, &secret, VAULT_SCOPE).await;
    assert_eq!(s, 200, "{body}");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["tid"], customer.to_string());
    assert_eq!(c["oid"], sp_c.to_string());
    assert_eq!(c["iss"], format!("https://sts.windows.net/{customer}/"));
    assert_eq!(c["appid"], client);

    // A single-tenant app never gets a token outside its home tenant, even with an SP there.
    let single = add_app(&t, home, false);
    let single_secret = add_secret(&t, single);
    add_sp(&t, single, customer);
    let got = secret_token(&t, customer, &single.to_string(), &single_secret, VAULT_SCOPE).await;
    assert_aad(&got, 400, "unauthorized_client", 700016);

    // Disabled: 7000112 with Entra's message; enabled again: tokens again; deleted: 700016.
    edit_sp(&t, sp_c, |s, id| s.service_principals.get_mut(&id).unwrap().account_enabled = false);
    let got = secret_token(&t, customer, &client, &secret, VAULT_SCOPE).await;
    assert_aad(&got, 400, "unauthorized_client", 7000112);
    assert!(
        got.1["error_description"].as_str().unwrap().contains(&format!("Application '{app}'(test app) is disabled."))
    );
    edit_sp(&t, sp_c, |s, id| s.service_principals.get_mut(&id).unwrap().account_enabled = true);
    assert_eq!(secret_token(&t, customer, &client, &secret, VAULT_SCOPE).await.0, 200);
    edit_sp(&t, sp_c, |s, id| {
        s.service_principals.remove(&id);
    });
    assert_aad(&secret_token(&t, customer, &client, &secret, VAULT_SCOPE).await, 400, "unauthorized_client", 700016);
    // Home tenant unaffected.
    assert_eq!(secret_token(&t, home, &client, &secret, VAULT_SCOPE).await.0, 200);
}

// ------------------------------------------------------------------------------------------
// Federated credentials with an issuer served by this test
// ------------------------------------------------------------------------------------------

/// An OIDC issuer: discovery document and JWKS, over https (its own CA) or plain http.
struct TestIssuer {
    url: String,
    ca_pem: String,
    key: EncodingKey,
    kid: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_issuer(tls: bool) -> TestIssuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let url = format!("{}://127.0.0.1:{}", if tls { "https" } else { "http" }, addr.port());
    let (key_pem, (n, e)) = rsa_key();
    let kid = "test-key-1".to_string();
    let config =
        json!({"issuer": url, "jwks_uri": format!("{url}/keys"), "id_token_signing_alg_values_supported": ["RS256"]});
    let jwks = json!({"keys": [
        {"kty": "EC", "kid": "ignored", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e},
    ]});
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", axum::routing::get(move || async move { axum::Json(config) }))
        .route("/keys", axum::routing::get(move || async move { axum::Json(jwks) }));

    // CA and server certificate for 127.0.0.1.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test issuer CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), &ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let server_cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));

    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let app = app.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                if tls {
                    if let Ok(s) = acceptor.accept(tcp).await {
                        let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
                    }
                } else {
                    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
                }
            });
        }
    });
    TestIssuer { url, ca_pem: ca_cert.pem(), key: EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap(), kid, task }
}

impl TestIssuer {
    fn token(&self, subject: &str, aud: &str, exp_in: i64) -> String {
        let n = now();
        let claims = json!({"iss": self.url, "sub": subject, "aud": aud, "iat": n, "nbf": n, "exp": n + exp_in});
        sign(Algorithm::RS256, &[("kid", self.kid.clone())], &claims, &self.key)
    }
}

fn fic(issuer: &str, subject: &str) -> FederatedCredential {
    FederatedCredential {
        id: Uuid::new_v4(),
        name: format!("fic-{}", Uuid::new_v4().simple()),
        issuer: issuer.into(),
        subject: subject.into(),
        audiences: vec![FIC_AUDIENCE.into()],
        description: None,
    }
}

fn set_settings(t: &TestEmu, f: impl FnOnce(&mut atrest_emulator::state::Settings)) {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            f(&mut s.settings);
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn federated_assertion_from_an_https_issuer_the_test_serves() {
    let t = TestEmu::start().await;
    let home = tenant_of(&t);
    let customer = new_tenant(&t);
    let issuer = start_issuer(true).await;
    let app = add_app(&t, home, true);
    let subject = "system:serviceaccount:atrest:data-node";
    edit_app(&t, app, |a| a.federated.push(fic(&issuer.url, subject)));
    let sp = add_sp(&t, app, customer);
    let client = app.to_string();
    let url = token_url(customer);

    // The issuer's CA is not trusted yet: discovery fails, with the reason.
    let got = assertion_token(&t, &url, &client, &issuer.token(subject, FIC_AUDIENCE, 600)).await;
    assert_aad(&got, 400, "invalid_request", 50166);
    set_settings(&t, |s| s.trusted_issuer_ca_pems = vec![issuer.ca_pem.clone()]);

    let (s, body) = assertion_token(&t, &url, &client, &issuer.token(subject, FIC_AUDIENCE, 600)).await;
    assert_eq!(s, 200, "{body}");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["tid"], customer.to_string());
    assert_eq!(c["oid"], sp.to_string());
    assert_eq!(c["appidacr"], "2");
    assert_eq!(c["aud"], "https://vault.azure.net");

    // Issuer, subject and audience must match a credential exactly (case-sensitive).
    let wrong_issuer = {
        let n = now();
        let claims = json!({"iss": "https://token.actions.githubusercontent.com", "sub": subject, "aud": FIC_AUDIENCE, "exp": n + 600});
        sign(Algorithm::RS256, &[("kid", issuer.kid.clone())], &claims, &issuer.key)
    };
    let got = assertion_token(&t, &url, &client, &wrong_issuer).await;
    assert_aad(&got, 401, "invalid_client", 700211);
    assert!(
        got.1["error_description"]
            .as_str()
            .unwrap()
            .contains("assertion issuer 'https://token.actions.githubusercontent.com'")
    );
    let got = assertion_token(&t, &url, &client, &issuer.token(&subject.to_uppercase(), FIC_AUDIENCE, 600)).await;
    assert_aad(&got, 401, "invalid_client", 700213);
    assert!(got.1["error_description"].as_str().unwrap().contains(&format!("subject '{}'", subject.to_uppercase())));
    let got = assertion_token(&t, &url, &client, &issuer.token(subject, "api://SomethingElse", 600)).await;
    assert_aad(&got, 401, "invalid_client", 70021);

    // Signature: a key the issuer does not publish under that kid, or an unknown kid.
    let (rogue_pem, _) = rsa_key();
    let rogue = EncodingKey::from_rsa_pem(rogue_pem.as_bytes()).unwrap();
    let n = now();
    let forged_claims = json!({"iss": issuer.url, "sub": subject, "aud": FIC_AUDIENCE, "exp": n + 600});
    let forged = sign(Algorithm::RS256, &[("kid", issuer.kid.clone())], &forged_claims, &rogue);
    assert_aad(&assertion_token(&t, &url, &client, &forged).await, 401, "invalid_client", 700027);
    let unknown_kid = sign(Algorithm::RS256, &[("kid", "nope".into())], &forged_claims, &issuer.key);
    assert_aad(&assertion_token(&t, &url, &client, &unknown_kid).await, 401, "invalid_client", 700027);
    // Time.
    let got = assertion_token(&t, &url, &client, &issuer.token(subject, FIC_AUDIENCE, -3600)).await;
    assert_aad(&got, 401, "invalid_client", 700024);

    // The app's SP in the home tenant does not exist: 700016 before any assertion check.
    let got = assertion_token(&t, &token_url(home), &client, &issuer.token(subject, FIC_AUDIENCE, 600)).await;
    assert_aad(&got, 400, "unauthorized_client", 700016);
}

#[tokio::test]
async fn federated_issuer_over_plain_http_needs_the_loopback_switch() {
    let t = TestEmu::start().await;
    let tid = tenant_of(&t);
    let issuer = start_issuer(false).await;
    let app = add_app(&t, tid, false);
    edit_app(&t, app, |a| a.federated.push(fic(&issuer.url, "sub-1")));
    add_sp(&t, app, tid);
    let url = token_url(tid);
    let got = assertion_token(&t, &url, &app.to_string(), &issuer.token("sub-1", FIC_AUDIENCE, 600)).await;
    assert_aad(&got, 400, "invalid_request", 50166);
    assert!(got.1["error_description"].as_str().unwrap().contains("allow_http_issuers"));
    set_settings(&t, |s| s.allow_http_issuers = true);
    let (s, body) = assertion_token(&t, &url, &app.to_string(), &issuer.token("sub-1", FIC_AUDIENCE, 600)).await;
    assert_eq!(s, 200, "{body}");
}

// ------------------------------------------------------------------------------------------
// Discovery
// ------------------------------------------------------------------------------------------

async fn get_json(t: &TestEmu, url: &str) -> (u16, Value) {
    let r = t.http.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn discovery_documents_jwks_and_instance_discovery() {
    let t = TestEmu::start().await;
    let tid = tenant_of(&t);
    let domain = t.emu.ctx().read(|s| s.tenants[&tid].default_domain.clone());
    for tenant in [tid.to_string(), domain] {
        let (s, doc) =
            get_json(&t, &format!("https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"))
                .await;
        assert_eq!(s, 200, "{doc}");
        assert_eq!(doc["issuer"], format!("https://login.microsoftonline.com/{tid}/v2.0"));
        assert_eq!(doc["token_endpoint"], format!("https://login.microsoftonline.com/{tid}/oauth2/v2.0/token"));
        assert_eq!(doc["jwks_uri"], format!("https://login.microsoftonline.com/{tid}/discovery/v2.0/keys"));
        assert_eq!(
            doc["token_endpoint_auth_methods_supported"],
            json!(["client_secret_post", "private_key_jwt", "client_secret_basic"])
        );
        assert_eq!(doc["msgraph_host"], "graph.microsoft.com");
        assert_eq!(doc["tenant_region_scope"], "WW");
    }
    let (s, doc) =
        get_json(&t, &format!("https://login.microsoftonline.com/{tid}/.well-known/openid-configuration")).await;
    assert_eq!(s, 200);
    assert_eq!(doc["issuer"], format!("https://sts.windows.net/{tid}/"));
    let (s, doc) = get_json(&t, "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration").await;
    assert_eq!(s, 200);
    assert_eq!(doc["issuer"], "https://login.microsoftonline.com/{tenantid}/v2.0");
    let (s, doc) = get_json(&t, "https://login.chinacloudapi.cn/common/v2.0/.well-known/openid-configuration").await;
    assert_eq!(s, 200);
    assert_eq!(doc["issuer"], "https://login.chinacloudapi.cn/{tenantid}/v2.0");
    assert_eq!(doc["msgraph_host"], "microsoftgraph.chinacloudapi.cn");
    let got = get_json(
        &t,
        &format!("https://login.microsoftonline.com/{}/v2.0/.well-known/openid-configuration", Uuid::new_v4()),
    )
    .await;
    assert_aad(&got, 400, "invalid_request", 90002);

    let (s, keys) = get_json(&t, "https://login.microsoftonline.com/common/discovery/v2.0/keys").await;
    assert_eq!(s, 200);
    let k = &keys["keys"][0];
    assert_eq!(k["kty"], "RSA");
    assert_eq!(k["issuer"], "https://login.microsoftonline.com/{tenantid}/v2.0");
    assert_eq!(k["kid"], t.emu.ctx().signer.kid);
    assert!(k["x5c"][0].is_string() && k["n"].is_string() && k["e"] == "AQAB");
    let got = get_json(&t, &format!("https://login.microsoftonline.com/{}/discovery/v2.0/keys", Uuid::new_v4())).await;
    assert_aad(&got, 400, "invalid_request", 90002);

    let (s, inst) = get_json(
        &t,
        "https://login.microsoftonline.com/common/discovery/instance?api-version=1.1&authorization_endpoint=https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
    )
    .await;
    assert_eq!(s, 200, "{inst}");
    assert_eq!(
        inst["tenant_discovery_endpoint"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"
    );
    assert_eq!(inst["api-version"], "1.1");
    assert!(inst["metadata"][0]["aliases"].as_array().unwrap().contains(&json!("login.windows.net")));
    let got = get_json(
        &t,
        "https://login.microsoftonline.com/common/discovery/instance?api-version=1.1&authorization_endpoint=https://login.example.org/t/oauth2/v2.0/authorize",
    )
    .await;
    assert_aad(&got, 400, "invalid_instance", 50049);
    let got = get_json(
        &t,
        "https://login.microsoftonline.com/common/discovery/instance?authorization_endpoint=not%20a%20url",
    )
    .await;
    assert_aad(&got, 400, "invalid_instance", 50049);
}

#[tokio::test]
async fn loopback_clients_get_usable_urls_and_tokens() {
    let t = TestEmu::start().await;
    let tid = tenant_of(&t);
    let origin = format!("https://127.0.0.1:{}", t.emu.addr().port());
    let (s, doc) = get_json(&t, &format!("{origin}/{tid}/v2.0/.well-known/openid-configuration")).await;
    assert_eq!(s, 200, "{doc}");
    let token_endpoint = doc["token_endpoint"].as_str().unwrap().to_string();
    assert_eq!(token_endpoint, format!("{origin}/{tid}/oauth2/v2.0/token"));
    assert_eq!(doc["issuer"], format!("{origin}/{tid}/v2.0"));
    let (s, inst) = get_json(
        &t,
        &format!("{origin}/common/discovery/instance?api-version=1.0&authorization_endpoint={origin}/{tid}/oauth2/v2.0/authorize"),
    )
    .await;
    assert_eq!(s, 200, "{inst}");
    assert_eq!(inst["tenant_discovery_endpoint"], format!("{origin}/{tid}/v2.0/.well-known/openid-configuration"));

    // A certificate assertion whose `aud` is the loopback token endpoint, as MSAL builds it
    // from the discovered token_endpoint.
    let app = add_app(&t, tid, false);
    add_sp(&t, app, tid);
    let cert = TestCert::new();
    edit_app(&t, app, |a| a.certificates.push(cert.credential()));
    let x5t = vec![("x5t", URL_SAFE_NO_PAD.encode(cert.sha1()))];
    let assertion = sign(Algorithm::RS256, &x5t, &cert_claims(app, &token_endpoint), &cert.key);
    let (s, body) = assertion_token(&t, &token_endpoint, &app.to_string(), &assertion).await;
    assert_eq!(s, 200, "{body}");
}
