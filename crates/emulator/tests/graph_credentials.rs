//! Application credentials through Microsoft Graph against a real emulator, as
//! `az ad app credential reset --append` (with and without `--cert`) drives them: addPassword
//! gives a secret the token endpoint accepts, removePassword takes it away, PATCH keyCredentials
//! registers a certificate whose client assertions the token endpoint accepts. Listed credentials
//! never carry the secret, and every refused request leaves the application as it was.

mod support;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use support::TestEmu;

const GRAPH: &str = "https://graph.microsoft.com";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn iso(unix: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap().format(f).unwrap()
}

fn token_url(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
}

async fn post_form(t: &TestEmu, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = t.http.post(url).form(form).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn secret_token(t: &TestEmu, tenant: &str, client: &str, secret: &str, scope: &str) -> (u16, Value) {
    post_form(
        t,
        &token_url(tenant),
        &[("grant_type", "client_credentials"), ("client_id", client), ("client_secret", secret), ("scope", scope)],
    )
    .await
}

struct Reply {
    status: u16,
    body: Value,
}

async fn graph(t: &TestEmu, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
    let mut rb = t.http.request(method, format!("{GRAPH}{path}")).bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
}

#[track_caller]
fn assert_graph_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert!(r.body["error"]["message"].is_string(), "{}", r.body);
    assert!(r.body["error"]["innerError"]["request-id"].is_string(), "{}", r.body);
}

/// The tenant admin's Graph token, from the token endpoint with its client secret.
async fn admin_token(t: &TestEmu) -> (String, String) {
    let b = t.bootstrap().clone();
    let (s, body) = secret_token(t, &b.tenant_id, &b.client_id, &b.client_secret, GRAPH_SCOPE).await;
    assert_eq!(s, 200, "{body}");
    (b.tenant_id.clone(), body["access_token"].as_str().unwrap().to_string())
}

/// An application with its service principal, created through Graph: (appId, object id).
async fn new_app(t: &TestEmu, admin: &str, name: &str) -> (String, String) {
    let r = graph(t, Method::POST, "/v1.0/applications", admin, Some(json!({"displayName": name}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let app_id = r.body["appId"].as_str().unwrap().to_string();
    let object_id = r.body["id"].as_str().unwrap().to_string();
    let r = graph(t, Method::POST, "/v1.0/servicePrincipals", admin, Some(json!({"appId": app_id}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    (app_id, object_id)
}

async fn get_app(t: &TestEmu, admin: &str, object_id: &str) -> Value {
    let r = graph(t, Method::GET, &format!("/v1.0/applications/{object_id}"), admin, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// An RSA key and a self-signed certificate for it.
struct TestCert {
    der: Vec<u8>,
    key: EncodingKey,
    not_before: i64,
    not_after: i64,
}

impl TestCert {
    fn new(days: i64) -> Self {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<Pkcs8V1Der>::as_der(&kp).unwrap();
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der.as_ref().to_vec().into(), &rcgen::PKCS_RSA_SHA256)
            .unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "graph credentials test");
        let not_before = now() - 86400;
        let not_after = now() + days * 86400;
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().to_vec(),
            key: EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
            not_before,
            not_after,
        }
    }

    fn sha1(&self) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der).as_ref().to_vec()
    }

    /// The keyCredential az sends for this certificate (`key` = base64 DER).
    fn key_credential(&self, display_name: &str) -> Value {
        json!({
            "@odata.type": "#microsoft.graph.keyCredential",
            "displayName": display_name,
            "endDateTime": iso(self.not_after),
            "key": STANDARD.encode(&self.der),
            "keyId": Uuid::new_v4(),
            "startDateTime": iso(self.not_before),
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
        })
    }

    /// A client assertion for `client` at `tenant`'s token endpoint, signed by this key.
    fn assertion(&self, tenant: &str, client: &str) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.x5t = Some(URL_SAFE_NO_PAD.encode(self.sha1()));
        let n = now();
        let claims = json!({"aud": token_url(tenant), "iss": client, "sub": client, "jti": Uuid::new_v4(), "nbf": n, "exp": n + 600});
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

async fn assertion_token(t: &TestEmu, tenant: &str, client: &str, cert: &TestCert) -> (u16, Value) {
    let assertion = cert.assertion(tenant, client);
    post_form(
        t,
        &token_url(tenant),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", &assertion),
            ("scope", VAULT_SCOPE),
        ],
    )
    .await
}

#[tokio::test]
async fn add_password_gives_a_working_secret_that_is_never_listed_and_remove_password_revokes_it() {
    let t = TestEmu::start().await;
    let (tenant, admin) = admin_token(&t).await;
    let (app_id, object_id) = new_app(&t, &admin, "credential reset").await;

    // az's body: displayName null, start now, end in a year.
    let start = now();
    let body = json!({"passwordCredential": {"displayName": null, "startDateTime": iso(start), "endDateTime": iso(start + 365 * 86400)}});
    let r = graph(&t, Method::POST, &format!("/v1.0/applications/{object_id}/addPassword"), &admin, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.body.clone();
    let secret = first["secretText"].as_str().unwrap().to_string();
    assert!(secret.len() >= 40, "{first}");
    assert_eq!(first["hint"], secret[..3]);
    assert_eq!(first["customKeyIdentifier"], Value::Null);
    assert_eq!(first["displayName"], Value::Null);
    assert_eq!(first["startDateTime"], iso(start));
    assert_eq!(first["endDateTime"], iso(start + 365 * 86400));
    assert!(first["@odata.context"].as_str().unwrap().ends_with("$metadata#microsoft.graph.passwordCredential"));
    let key_id: Uuid = first["keyId"].as_str().unwrap().parse().unwrap();

    // The secret works at the token endpoint.
    let (s, b) = secret_token(&t, &tenant, &app_id, &secret, VAULT_SCOPE).await;
    assert_eq!(s, 200, "{b}");

    // A second one through the appId key form, with a display name and Graph's defaults.
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications(appId='{app_id}')/microsoft.graph.addPassword"),
        &admin,
        Some(json!({"passwordCredential": {"displayName": "rotation"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = r.body.clone();
    let secret2 = second["secretText"].as_str().unwrap().to_string();
    assert_ne!(secret, secret2);
    assert_eq!(second["displayName"], "rotation");
    let s2 = time::OffsetDateTime::parse(
        second["startDateTime"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    let e2 = time::OffsetDateTime::parse(
        second["endDateTime"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    assert_eq!(e2 - s2, 2 * 365 * 86400, "Graph's default lifetime is two years: {second}");
    // Both secrets work (appended, not replaced).
    for s in [&secret, &secret2] {
        let (st, b) = secret_token(&t, &tenant, &app_id, s, VAULT_SCOPE).await;
        assert_eq!(st, 200, "{b}");
    }

    // GET lists both without the secret.
    let app = get_app(&t, &admin, &object_id).await;
    let listed = app["passwordCredentials"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{app}");
    for p in listed {
        assert_eq!(p["secretText"], Value::Null, "{p}");
    }
    let text = app.to_string();
    assert!(!text.contains(&secret) && !text.contains(&secret2));
    let l1 = listed.iter().find(|p| p["keyId"] == json!(key_id.to_string())).unwrap();
    assert_eq!(l1["hint"], secret[..3]);
    assert_eq!(l1["startDateTime"], iso(start));
    assert_eq!(l1["endDateTime"], iso(start + 365 * 86400));
    let list = graph(&t, Method::GET, &format!("/v1.0/applications?$filter=appId eq '{app_id}'"), &admin, None).await;
    assert!(!list.body.to_string().contains(&secret));

    // A secret that starts in the future does not work yet.
    let later = now() + 3600;
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications/{object_id}/addPassword"),
        &admin,
        Some(json!({"passwordCredential": {"startDateTime": iso(later)}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let future = r.body["secretText"].as_str().unwrap().to_string();
    let future_key = r.body["keyId"].as_str().unwrap().to_string();
    let (s, b) = secret_token(&t, &tenant, &app_id, &future, VAULT_SCOPE).await;
    assert_eq!((s, b["error"].clone()), (401, json!("invalid_client")), "{b}");

    // removePassword revokes the first secret; the second still works.
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications/{object_id}/removePassword"),
        &admin,
        Some(json!({"keyId": key_id})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (s, b) = secret_token(&t, &tenant, &app_id, &secret, VAULT_SCOPE).await;
    assert_eq!((s, b["error"].clone()), (401, json!("invalid_client")), "{b}");
    assert!(b["error_codes"].to_string().contains("7000215"), "{b}");
    let (s, b) = secret_token(&t, &tenant, &app_id, &secret2, VAULT_SCOPE).await;
    assert_eq!(s, 200, "{b}");
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications/{object_id}/removePassword"),
        &admin,
        Some(json!({"keyId": future_key})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let app = get_app(&t, &admin, &object_id).await;
    assert_eq!(app["passwordCredentials"].as_array().unwrap().len(), 1, "{app}");
}

#[tokio::test]
async fn password_credential_bad_input_changes_nothing() {
    let t = TestEmu::start().await;
    let (tenant, admin) = admin_token(&t).await;
    let (app_id, object_id) = new_app(&t, &admin, "bad input").await;
    let before = get_app(&t, &admin, &object_id).await;
    let add = format!("/v1.0/applications/{object_id}/addPassword");
    let remove = format!("/v1.0/applications/{object_id}/removePassword");

    // Unknown application: Graph's 404, by object id and by appId.
    let missing = Uuid::new_v4();
    for path in [
        format!("/v1.0/applications/{missing}/addPassword"),
        format!("/v1.0/applications(appId='{missing}')/addPassword"),
        format!("/v1.0/applications/{missing}/removePassword"),
    ] {
        let r = graph(&t, Method::POST, &path, &admin, Some(json!({"passwordCredential": {}}))).await;
        assert_graph_error(&r, 404, "Request_ResourceNotFound");
        assert!(r.body["error"]["message"].as_str().unwrap().contains(&missing.to_string()), "{}", r.body);
    }
    let r = graph(&t, Method::POST, "/v1.0/applications/not-a-guid/addPassword", &admin, Some(json!({}))).await;
    assert_graph_error(&r, 400, "Request_BadRequest");

    // Bad bodies.
    for body in [
        json!({"passwordCredential": 5}),
        json!({"passwordCredential": {"endDateTime": "next year"}}),
        json!({"passwordCredential": {"startDateTime": 17}}),
        json!({"passwordCredential": {"displayName": 3}}),
        json!({"passwordCredential": {"displayName": "x".repeat(1025)}}),
        json!({"passwordCredential": {"startDateTime": iso(now()), "endDateTime": iso(now() - 60)}}),
        json!([1, 2]),
    ] {
        let r = graph(&t, Method::POST, &add, &admin, Some(body.clone())).await;
        assert_graph_error(&r, 400, "Request_BadRequest");
    }
    let r = graph(&t, Method::GET, &add, &admin, None).await;
    assert_graph_error(&r, 405, "Request_BadRequest");
    for body in [json!({}), json!({"keyId": "nope"}), json!({"keyId": 7})] {
        let r = graph(&t, Method::POST, &remove, &admin, Some(body)).await;
        assert_graph_error(&r, 400, "Request_BadRequest");
    }
    let r = graph(&t, Method::POST, &remove, &admin, Some(json!({"keyId": Uuid::new_v4()}))).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    // Password credentials are not PATCHed in: Graph says to use the actions.
    let r = graph(
        &t,
        Method::PATCH,
        &format!("/v1.0/applications/{object_id}"),
        &admin,
        Some(json!({"passwordCredentials": [{"secretText": "chosen-by-the-caller"}]})),
    )
    .await;
    assert_graph_error(&r, 400, "Request_BadRequest");

    // A principal that is not a directory admin cannot add a secret, not even to itself.
    let r = graph(&t, Method::POST, &add, &admin, Some(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let own_secret = r.body["secretText"].as_str().unwrap().to_string();
    let own_key = r.body["keyId"].clone();
    let (s, b) = secret_token(&t, &tenant, &app_id, &own_secret, GRAPH_SCOPE).await;
    assert_eq!(s, 200, "{b}");
    let worker = b["access_token"].as_str().unwrap().to_string();
    let with_own = get_app(&t, &admin, &object_id).await;
    let r = graph(&t, Method::POST, &add, &worker, Some(json!({}))).await;
    assert_graph_error(&r, 403, "Authorization_RequestDenied");
    let r = graph(&t, Method::POST, &remove, &worker, Some(json!({"keyId": own_key}))).await;
    assert_graph_error(&r, 403, "Authorization_RequestDenied");
    assert_eq!(get_app(&t, &admin, &object_id).await, with_own);

    // Nothing but the one successful addPassword changed the app.
    let r = graph(&t, Method::POST, &remove, &admin, Some(json!({"keyId": own_key}))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(get_app(&t, &admin, &object_id).await, before);
}

#[tokio::test]
async fn patch_key_credentials_registers_a_certificate_for_client_assertions() {
    let t = TestEmu::start().await;
    let (tenant, admin) = admin_token(&t).await;
    let (app_id, object_id) = new_app(&t, &admin, "cert reset").await;
    let path = format!("/v1.0/applications/{object_id}");
    let cert = TestCert::new(30);

    // Before: no certificate, so the assertion is refused.
    let (s, b) = assertion_token(&t, &tenant, &app_id, &cert).await;
    assert_eq!(s, 401, "{b}");

    // az --cert --append: the existing keyCredentials (none) plus the new one.
    let r =
        graph(&t, Method::PATCH, &path, &admin, Some(json!({"keyCredentials": [cert.key_credential("first")]}))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (s, b) = assertion_token(&t, &tenant, &app_id, &cert).await;
    assert_eq!(s, 200, "{b}");

    let app = get_app(&t, &admin, &object_id).await;
    let keys = app["keyCredentials"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1, "{app}");
    let k = &keys[0];
    assert_eq!(k["customKeyIdentifier"], STANDARD.encode(cert.sha1()));
    assert_eq!(k["key"], Value::Null);
    assert_eq!(k["type"], "AsymmetricX509Cert");
    assert_eq!(k["usage"], "Verify");
    assert_eq!(k["displayName"], "first");
    assert_eq!(k["startDateTime"], iso(cert.not_before));
    assert_eq!(k["endDateTime"], iso(cert.not_after));

    // Append a second certificate, sending the first back as GET returned it (key null).
    let second = TestCert::new(60);
    let mut listed = keys.clone();
    listed.push(second.key_credential("second"));
    let r = graph(&t, Method::PATCH, &path, &admin, Some(json!({"keyCredentials": listed}))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    for c in [&cert, &second] {
        let (s, b) = assertion_token(&t, &tenant, &app_id, c).await;
        assert_eq!(s, 200, "{b}");
    }
    let app = get_app(&t, &admin, &object_id).await;
    let keys = app["keyCredentials"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{app}");
    assert_eq!(keys[0]["keyId"], k["keyId"], "the kept credential keeps its keyId");

    // Malformed or refused keyCredentials: Graph's 400, and nothing stored changes.
    let before = get_app(&t, &admin, &object_id).await;
    let expired_window = {
        let mut c = TestCert::new(10).key_credential("too long");
        c["endDateTime"] = json!(iso(now() + 20 * 86400));
        c
    };
    let with_key = |f: &dyn Fn(&mut Value)| {
        let mut c = TestCert::new(10).key_credential("bad");
        f(&mut c);
        let mut all = keys.clone();
        all.push(c);
        json!({"keyCredentials": all})
    };
    let cases: Vec<(Value, &str)> = vec![
        (with_key(&|c| c["key"] = json!("not base64 at all!")), "KeyCredentialsInvalidValue"),
        (with_key(&|c| c["key"] = json!(STANDARD.encode(b"certainly not DER"))), "KeyCredentialsInvalidValue"),
        (with_key(&|c| c["key"] = Value::Null), "KeyCredentialsInvalidValue"),
        (with_key(&|c| c["key"] = json!(42)), "KeyCredentialsInvalidValue"),
        (json!({"keyCredentials": [expired_window]}), "KeyCredentialsInvalidEndDate"),
        (with_key(&|c| c["type"] = json!("Symmetric")), "Request_BadRequest"),
        (with_key(&|c| c["usage"] = json!("Encrypt")), "Request_BadRequest"),
        (with_key(&|c| c["keyId"] = json!("not-a-guid")), "Request_BadRequest"),
        (with_key(&|c| c["endDateTime"] = json!("soon")), "Request_BadRequest"),
        (with_key(&|c| c["keyId"] = keys[0]["keyId"].clone()), "Request_BadRequest"),
        (json!({"keyCredentials": "all of them"}), "Request_BadRequest"),
        (json!({"keyCredentials": [1]}), "Request_BadRequest"),
        (json!({"keyCredentials": [keys[0].clone(), keys[0].clone()]}), "Request_BadRequest"),
        (json!({"identifierUris": ["api://x"]}), "Request_BadRequest"),
        (json!({"displayName": ""}), "Request_BadRequest"),
    ];
    for (body, code) in cases {
        let r = graph(&t, Method::PATCH, &path, &admin, Some(body.clone())).await;
        assert_graph_error(&r, 400, code);
        assert_eq!(get_app(&t, &admin, &object_id).await, before, "after {body}");
    }
    // Unknown application: 404 with Graph's body.
    let missing = Uuid::new_v4();
    let r = graph(
        &t,
        Method::PATCH,
        &format!("/v1.0/applications/{missing}"),
        &admin,
        Some(json!({"keyCredentials": [TestCert::new(5).key_credential("x")]})),
    )
    .await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    // Not a directory admin: 403, nothing changes.
    let r = graph(&t, Method::POST, &format!("{path}/addPassword"), &admin, Some(json!({}))).await;
    let own = r.body["secretText"].as_str().unwrap().to_string();
    let own_key = r.body["keyId"].clone();
    let (s, b) = secret_token(&t, &tenant, &app_id, &own, GRAPH_SCOPE).await;
    assert_eq!(s, 200, "{b}");
    let worker = b["access_token"].as_str().unwrap().to_string();
    let with_own = get_app(&t, &admin, &object_id).await;
    let r = graph(&t, Method::PATCH, &path, &worker, Some(json!({"keyCredentials": []}))).await;
    assert_graph_error(&r, 403, "Authorization_RequestDenied");
    assert_eq!(get_app(&t, &admin, &object_id).await, with_own);
    let r = graph(&t, Method::POST, &format!("{path}/removePassword"), &admin, Some(json!({"keyId": own_key}))).await;
    assert_eq!(r.status, 204);
    for c in [&cert, &second] {
        let (s, b) = assertion_token(&t, &tenant, &app_id, c).await;
        assert_eq!(s, 200, "{b}");
    }

    // Replacing the collection drops the certificates left out.
    let r = graph(&t, Method::PATCH, &path, &admin, Some(json!({"keyCredentials": [keys[1].clone()]}))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (s, b) = assertion_token(&t, &tenant, &app_id, &cert).await;
    assert_eq!(s, 401, "{b}");
    let (s, b) = assertion_token(&t, &tenant, &app_id, &second).await;
    assert_eq!(s, 200, "{b}");
}
