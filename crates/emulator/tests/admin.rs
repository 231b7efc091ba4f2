//! The `/_emulator/` admin API against a real emulator: who may call it, every endpoint, input
//! validation, and that what it creates works on the real surfaces (tokens from new tenants and
//! applications, faults and throttles seen by clients, private-endpoint listeners that survive
//! a restart).

mod support;

use std::time::{Duration, Instant};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_domain::AzureEnvironment;
use atrest_emulator::state::{Vault, VaultProperties};
use support::TestEmu;

const ARM_SCOPE: &str = "https://management.azure.com/.default";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

struct Reply {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

async fn call(t: &TestEmu, method: reqwest::Method, url: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let mut rb = t.http.request(method, url);
    if let Some(tok) = token {
        rb = rb.bearer_auth(tok);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), headers }
}

/// The bootstrap principal's ARM token, from the real token endpoint.
async fn admin_token(t: &TestEmu) -> String {
    let b = t.bootstrap().clone();
    let (s, v) = token(t, &b.tenant_id, &b.client_id, &b.client_secret, ARM_SCOPE).await;
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

async fn token(t: &TestEmu, tenant: &str, client: &str, secret: &str, scope: &str) -> (u16, Value) {
    let r = t
        .http
        .post(format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn admin(t: &TestEmu, tok: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
    call(t, method, &format!("https://management.azure.com/_emulator/{path}"), Some(tok), body).await
}

#[track_caller]
fn assert_arm_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.body);
}

fn claims(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// A self-signed RSA certificate and its key: (cert PEM, signing key, SHA-1 of the DER).
fn rsa_certificate(days: i64) -> (String, EncodingKey, Vec<u8>) {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = AsDer::<Pkcs8V1Der>::as_der(&kp).unwrap();
    let key =
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der.as_ref().to_vec().into(), &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "admin test");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let cert = params.self_signed(&key).unwrap();
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der()).as_ref().to_vec();
    (cert.pem(), EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(), sha1)
}

use reqwest::Method;

#[tokio::test]
async fn only_the_bootstrap_principal_with_an_arm_token_may_call_it() {
    let t = TestEmu::start().await;
    let b = t.bootstrap().clone();

    let r = call(&t, Method::GET, "https://management.azure.com/_emulator/settings", None, None).await;
    assert_arm_error(&r, 401, "AuthenticationFailed");
    assert!(r.headers.get("www-authenticate").is_some());
    let r = call(&t, Method::GET, "https://management.azure.com/_emulator/settings", Some("not.a.jwt"), None).await;
    assert_arm_error(&r, 401, "InvalidAuthenticationToken");
    let (_, v) = token(&t, &b.tenant_id, &b.client_id, &b.client_secret, VAULT_SCOPE).await;
    let r = call(&t, Method::GET, "https://management.azure.com/_emulator/settings", v["access_token"].as_str(), None)
        .await;
    assert_arm_error(&r, 401, "InvalidAuthenticationTokenAudience");

    // Every ARM audience spelling of the bootstrap principal works, with or without api-version,
    // on the ARM host, any Azure host and the loopback address.
    let classic =
        token(&t, &b.tenant_id, &b.client_id, &b.client_secret, "https://management.core.windows.net//.default").await;
    let classic = classic.1["access_token"].as_str().unwrap().to_string();
    let tok = admin_token(&t).await;
    for (url, tok) in [
        ("https://management.azure.com/_emulator/settings".to_string(), &tok),
        ("https://management.azure.com/_emulator/settings?api-version=2023-07-01".to_string(), &tok),
        ("https://management.azure.com/_emulator/settings".to_string(), &classic),
        ("https://login.microsoftonline.com/_emulator/settings".to_string(), &tok),
        (format!("https://127.0.0.1:{}/_emulator/settings", t.emu.addr().port()), &tok),
    ] {
        let r = call(&t, Method::GET, &url, Some(tok), None).await;
        assert_eq!(r.status, 200, "{url}: {}", r.body);
    }

    // Another tenant's admin (Owner of its own subscription) is not the bootstrap principal.
    let r = admin(&t, &tok, Method::POST, "tenants", Some(json!({"display_name": "Contoso"}))).await;
    let other = r.body.clone();
    let (_, v) = token(
        &t,
        other["tenant_id"].as_str().unwrap(),
        other["client_id"].as_str().unwrap(),
        other["client_secret"].as_str().unwrap(),
        ARM_SCOPE,
    )
    .await;
    let r = call(&t, Method::GET, "https://management.azure.com/_emulator/settings", v["access_token"].as_str(), None)
        .await;
    assert_arm_error(&r, 403, "AuthorizationFailed");
    // Nor is a bootstrap-tenant principal other than the bootstrap one.
    let r = admin(
        &t,
        &tok,
        Method::POST,
        "applications",
        Some(json!({"home_tenant_id": b.tenant_id, "display_name": "x", "generate_secret": true, "create_service_principal": true})),
    )
    .await;
    let (_, v) = token(
        &t,
        &b.tenant_id,
        r.body["app_id"].as_str().unwrap(),
        r.body["client_secret"].as_str().unwrap(),
        ARM_SCOPE,
    )
    .await;
    let r = call(&t, Method::GET, "https://management.azure.com/_emulator/", v["access_token"].as_str(), None).await;
    assert_arm_error(&r, 403, "AuthorizationFailed");

    // Index, unknown routes and wrong methods.
    let r = admin(&t, &tok, Method::GET, "", None).await;
    assert!(r.body["routes"].as_array().unwrap().len() > 10);
    let r = admin(&t, &tok, Method::GET, "nope", None).await;
    assert_arm_error(&r, 404, "NotFound");
    let r = admin(&t, &tok, Method::DELETE, "tenants", None).await;
    assert_arm_error(&r, 405, "MethodNotAllowed");
    let r = admin(&t, &tok, Method::PUT, "clock/shift", Some(json!({"seconds": 1}))).await;
    assert_arm_error(&r, 405, "MethodNotAllowed");
}

#[tokio::test]
async fn tenants_applications_and_service_principals() {
    let t = TestEmu::start().await;
    let tok = admin_token(&t).await;
    let b = t.bootstrap().clone();

    // A tenant, in the bootstrap shape, whose admin gets tokens there at once.
    let r = admin(&t, &tok, Method::POST, "tenants", Some(json!({"display_name": "Contoso"}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let c = r.body.clone();
    for k in ["tenant_id", "subscription_id", "client_id", "client_secret", "service_principal_id", "default_domain"] {
        assert!(c[k].as_str().is_some_and(|v| !v.is_empty()), "{k}: {c}");
    }
    let c_tid = c["tenant_id"].as_str().unwrap().to_string();
    let (s, v) =
        token(&t, &c_tid, c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap(), VAULT_SCOPE).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(claims(v["access_token"].as_str().unwrap())["oid"], c["service_principal_id"]);
    // Defaults and clouds.
    let r = admin(&t, &tok, Method::POST, "tenants", None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin(&t, &tok, Method::POST, "tenants", Some(json!({"cloud": "AZURE_CHINA"}))).await;
    assert_eq!((r.status, r.body["cloud"].clone()), (201, json!("AZURE_CHINA")));
    let sub: Uuid = r.body["subscription_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(t.emu.ctx().read(|s| s.subscriptions[&sub].cloud), AzureEnvironment::AzureChina);
    let r = admin(&t, &tok, Method::POST, "tenants", Some(json!({"cloud": "AzureCloud"}))).await;
    assert_arm_error(&r, 400, "InvalidRequestContent");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("AZURE_CHINA"));
    let r = admin(&t, &tok, Method::POST, "tenants", Some(json!({"displayname": "typo"}))).await;
    assert_arm_error(&r, 400, "InvalidRequestContent");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("displayname"));
    let r = admin(&t, &tok, Method::GET, "tenants", None).await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 4);

    // A multi-tenant app with every kind of credential.
    let (cert_pem, cert_key, sha1) = rsa_certificate(30);
    let r = admin(
        &t,
        &tok,
        Method::POST,
        "applications",
        Some(json!({
            "home_tenant_id": b.tenant_id, "display_name": "platform", "multi_tenant": true,
            "certificate_pem": cert_pem, "generate_secret": true,
            "federated": {"issuer": "https://issuer.example", "subject": "workload-1"},
        })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let app = r.body.clone();
    let app_id = app["app_id"].as_str().unwrap().to_string();
    assert_eq!(app["certificate_thumbprint_sha1"], hex::encode_upper(&sha1));
    assert!(app["client_secret"].as_str().unwrap().len() >= 40);
    assert!(app["federated_credential_id"].is_string());
    assert!(app.get("service_principal_id").is_none());
    // Its service principal in the customer tenant, then tokens there with the secret and the
    // certificate.
    let r =
        admin(&t, &tok, Method::POST, "service-principals", Some(json!({"tenant_id": c_tid, "app_id": app_id}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sp = r.body["object_id"].as_str().unwrap().to_string();
    let r2 =
        admin(&t, &tok, Method::POST, "service-principals", Some(json!({"tenant_id": c_tid, "app_id": app_id}))).await;
    assert_arm_error(&r2, 409, "Conflict");
    let (s, v) = token(&t, &c_tid, &app_id, app["client_secret"].as_str().unwrap(), VAULT_SCOPE).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(claims(v["access_token"].as_str().unwrap())["oid"], sp);
    let url = format!("https://login.microsoftonline.com/{c_tid}/oauth2/v2.0/token");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let assertion = jsonwebtoken::encode(
        &Header { x5t: Some(URL_SAFE_NO_PAD.encode(&sha1)), ..Header::new(Algorithm::RS256) },
        &json!({"aud": url, "iss": app_id, "sub": app_id, "exp": now + 300, "nbf": now, "jti": Uuid::new_v4()}),
        &cert_key,
    )
    .unwrap();
    let r = t
        .http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", app_id.as_str()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion.as_str()),
            ("scope", VAULT_SCOPE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // More credentials later; a new secret works alongside the first.
    let r = admin(
        &t,
        &tok,
        Method::POST,
        &format!("applications/{app_id}/credentials"),
        Some(json!({"generate_secret": true})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (s, _) = token(&t, &c_tid, &app_id, r.body["client_secret"].as_str().unwrap(), VAULT_SCOPE).await;
    assert_eq!(s, 200);
    let r = admin(
        &t,
        &tok,
        Method::POST,
        &format!("applications/{app_id}/credentials"),
        Some(json!({"certificate_pem": cert_pem})),
    )
    .await;
    assert_arm_error(&r, 409, "Conflict");
    let r = admin(&t, &tok, Method::POST, &format!("applications/{app_id}/credentials"), Some(json!({}))).await;
    assert_arm_error(&r, 400, "InvalidRequestContent");
    let r = admin(
        &t,
        &tok,
        Method::POST,
        &format!("applications/{}/credentials", Uuid::new_v4()),
        Some(json!({"generate_secret": true})),
    )
    .await;
    assert_arm_error(&r, 404, "ApplicationNotFound");
    let r = admin(
        &t,
        &tok,
        Method::POST,
        &format!("applications/{app_id}/credentials"),
        Some(json!({"federated": {"issuer": "https://issuer.example", "subject": "workload-1"}})),
    )
    .await;
    assert_arm_error(&r, 409, "Conflict");

    // The app as the admin API shows it: no secret values.
    let r = admin(&t, &tok, Method::GET, &format!("applications/{app_id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["secrets"].as_array().unwrap().len(), 2);
    assert!(!r.body.to_string().contains(app["client_secret"].as_str().unwrap()));
    assert_eq!(r.body["service_principals"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["federated"][0]["audiences"], json!(["api://AzureADTokenExchange"]));
    let r = admin(&t, &tok, Method::GET, "applications", None).await;
    assert!(r.body["value"].as_array().unwrap().len() >= 4);

    // Disable through the admin API: no new tokens.
    let r =
        admin(&t, &tok, Method::PATCH, &format!("service-principals/{sp}"), Some(json!({"account_enabled": false})))
            .await;
    assert_eq!((r.status, r.body["account_enabled"].clone()), (200, json!(false)));
    let (s, v) = token(&t, &c_tid, &app_id, app["client_secret"].as_str().unwrap(), VAULT_SCOPE).await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (400, Some(7000112)));

    // Single-tenant apps stay home; created with its home SP in one call.
    let r = admin(
        &t,
        &tok,
        Method::POST,
        "applications",
        Some(json!({"home_tenant_id": b.tenant_id, "display_name": "local", "create_service_principal": true})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["service_principal_id"].is_string());
    let local = r.body["app_id"].as_str().unwrap().to_string();
    let r =
        admin(&t, &tok, Method::POST, "service-principals", Some(json!({"tenant_id": c_tid, "app_id": local}))).await;
    assert_arm_error(&r, 400, "InvalidRequestContent");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("single-tenant"));

    // Bad input.
    let (ec_pem, _) = {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = rcgen::CertificateParams::new(vec![]).unwrap().self_signed(&k).unwrap();
        (c.pem(), ())
    };
    let (expired_pem, _, _) = rsa_certificate(-1);
    for (body, status, code) in [
        (
            json!({"home_tenant_id": b.tenant_id, "display_name": "x", "certificate_pem": ec_pem}),
            400,
            "InvalidRequestContent",
        ),
        (
            json!({"home_tenant_id": b.tenant_id, "display_name": "x", "certificate_pem": expired_pem}),
            400,
            "InvalidRequestContent",
        ),
        (
            json!({"home_tenant_id": b.tenant_id, "display_name": "x", "certificate_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}),
            400,
            "InvalidRequestContent",
        ),
        (
            json!({"home_tenant_id": b.tenant_id, "display_name": "x", "certificate_pem": "hello"}),
            400,
            "InvalidRequestContent",
        ),
        (json!({"home_tenant_id": Uuid::new_v4(), "display_name": "x"}), 404, "TenantNotFound"),
        (json!({"home_tenant_id": "contoso", "display_name": "x"}), 400, "InvalidRequestContent"),
        (json!({"home_tenant_id": b.tenant_id}), 400, "InvalidRequestContent"),
        (json!({"home_tenant_id": b.tenant_id, "display_name": ""}), 400, "InvalidRequestContent"),
        (
            json!({"home_tenant_id": b.tenant_id, "display_name": "x", "multitenant": true}),
            400,
            "InvalidRequestContent",
        ),
        (
            json!({"home_tenant_id": b.tenant_id, "display_name": "x", "federated": {"issuer": "nope", "subject": "s"}}),
            400,
            "InvalidRequestContent",
        ),
        (
            json!({"home_tenant_id": b.tenant_id, "display_name": "x", "federated": {"issuer": "https://i", "subject": "s", "audiences": []}}),
            400,
            "InvalidRequestContent",
        ),
        (json!([1, 2]), 400, "InvalidRequestContent"),
    ] {
        let r = admin(&t, &tok, Method::POST, "applications", Some(body.clone())).await;
        assert_arm_error(&r, status, code);
    }
    let r = t
        .http
        .post("https://management.azure.com/_emulator/applications")
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for body in [
        json!({"tenant_id": Uuid::new_v4(), "app_id": app_id}),
        json!({"tenant_id": c_tid, "app_id": Uuid::new_v4()}),
        json!({"tenant_id": "x", "app_id": app_id}),
    ] {
        let r = admin(&t, &tok, Method::POST, "service-principals", Some(body)).await;
        assert!(r.status == 400 || r.status == 404, "{}", r.body);
    }
    // Nothing half-created by the failed requests.
    let apps = t.emu.ctx().read(|s| s.applications.len());
    assert_eq!(apps, 6, "bootstrap + 3 tenant admins + platform + local");
}

#[tokio::test]
async fn settings_clock_and_token_lifetime() {
    let t = TestEmu::start().await;
    let tok = admin_token(&t).await;
    let b = t.bootstrap().clone();
    let r = admin(&t, &tok, Method::GET, "settings", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["rbac_propagation_delay_secs"], 0);
    assert_eq!(r.body["clock_shift_secs"], 0);
    assert_eq!(r.body["allow_http_issuers"], false);

    let r = admin(
        &t,
        &tok,
        Method::PUT,
        "settings",
        Some(json!({"token_lifetime_secs": 120, "rbac_propagation_delay_secs": 5})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["token_lifetime_secs"], 120);
    assert_eq!(r.body["rbac_propagation_delay_secs"], 5);
    let (_, v) = token(&t, &b.tenant_id, &b.client_id, &b.client_secret, VAULT_SCOPE).await;
    assert_eq!(v["expires_in"], 120);
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);

    for body in [
        json!({"token_lifetime_secs": 0}),
        json!({"token_lifetime_secs": 999999}),
        json!({"rbac_propagation_delay_secs": 10_000_000}),
        json!({"clock_shift_secs": 999_999_999_999i64}),
        json!({"trusted_issuer_ca_pems": ["not a pem"]}),
        json!({"trusted_issuer_ca_pems": "x"}),
        json!({"allow_http_issuers": "yes"}),
        json!({"token_lifetime": 5}),
    ] {
        let r = admin(&t, &tok, Method::PUT, "settings", Some(body.clone())).await;
        assert_arm_error(&r, 400, "InvalidRequestContent");
    }
    let ca = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
        .unwrap()
        .pem();
    let r = admin(
        &t,
        &tok,
        Method::PUT,
        "settings",
        Some(json!({"trusted_issuer_ca_pems": [ca], "allow_http_issuers": true})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["trusted_issuer_ca_pems"].as_array().unwrap().len(), 1);
    // A rejected update changed nothing.
    let r = admin(&t, &tok, Method::GET, "settings", None).await;
    assert_eq!(r.body["token_lifetime_secs"], 120);

    // Clock shift: tokens issued before the jump expire; new tokens carry the shifted time.
    let before = r.body["now"].as_i64().unwrap();
    let r = admin(&t, &tok, Method::POST, "clock/shift", Some(json!({"seconds": 3600}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["clock_shift_secs"], 3600);
    assert!(r.body["now"].as_i64().unwrap() >= before + 3600);
    let r = admin(&t, &tok, Method::GET, "settings", None).await;
    assert_arm_error(&r, 401, "ExpiredAuthenticationToken");
    let tok = admin_token(&t).await;
    assert!(claims(&tok)["iat"].as_i64().unwrap() >= before + 3600);
    let r = admin(&t, &tok, Method::POST, "clock/shift", Some(json!({"seconds": -3600}))).await;
    assert_eq!(r.body["clock_shift_secs"], 0);
    // That token was issued an hour "ahead": it is not valid yet on the restored clock.
    let r = admin(&t, &tok, Method::GET, "settings", None).await;
    assert_arm_error(&r, 401, "InvalidAuthenticationToken");
    let tok = admin_token(&t).await;
    for body in [json!({"seconds": "1"}), json!({}), json!({"seconds": 999_999_999_999i64})] {
        let r = admin(&t, &tok, Method::POST, "clock/shift", Some(body)).await;
        assert_arm_error(&r, 400, "InvalidRequestContent");
    }

    // Settings persist across a restart.
    let t = t.restart().await;
    let tok = admin_token(&t).await;
    let r = admin(&t, &tok, Method::GET, "settings", None).await;
    assert_eq!(r.body["token_lifetime_secs"], 120);
    assert_eq!(r.body["allow_http_issuers"], true);
}

#[tokio::test]
async fn faults_reach_clients_and_admin_is_never_faulted() {
    let t = TestEmu::start().await;
    let tok = admin_token(&t).await;
    let b = t.bootstrap().clone();
    let login = |t: &TestEmu| {
        let b = b.clone();
        let http = t.http.clone();
        async move {
            http.post(format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", b.tenant_id))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", b.client_id.as_str()),
                    ("client_secret", b.client_secret.as_str()),
                    ("scope", VAULT_SCOPE),
                ])
                .send()
                .await
        }
    };

    // 429 with Retry-After, once.
    let r = admin(
        &t,
        &tok,
        Method::POST,
        "faults",
        Some(json!({"host": "login.microsoftonline.com", "kind": {"kind": "throttle", "retry_after_secs": 7}, "count": 1})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["id"].is_string());
    assert_eq!(r.body["remaining"], 1);
    let resp = login(&t).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert!(resp.json::<Value>().await.unwrap()["error_codes"].is_array());
    assert_eq!(login(&t).await.unwrap().status(), 200);

    // 5xx by path prefix on Graph, in Graph's shape.
    let r = admin(
        &t,
        &tok,
        Method::POST,
        "faults",
        Some(json!({"host": "graph.microsoft.com", "path_prefix": "/v1.0/servicePrincipals", "kind": {"kind": "server_error", "status": 503}})),
    )
    .await;
    let graph_fault = r.body["id"].as_str().unwrap().to_string();
    let r = call(&t, Method::GET, "https://graph.microsoft.com/v1.0/servicePrincipals", None, None).await;
    assert_eq!(r.status, 503);
    assert!(r.body["error"]["code"].is_string());
    let r = call(&t, Method::GET, "https://graph.microsoft.com/v1.0/applications", None, None).await;
    assert_eq!(r.status, 401, "other paths unaffected");
    let r = admin(&t, &tok, Method::GET, &format!("faults/{graph_fault}"), None).await;
    assert_eq!(r.body["kind"], json!({"kind": "server_error", "status": 503}));
    let r = admin(&t, &tok, Method::DELETE, &format!("faults/{graph_fault}"), None).await;
    assert_eq!(r.status, 204);
    let r = admin(&t, &tok, Method::DELETE, &format!("faults/{graph_fault}"), None).await;
    assert_arm_error(&r, 404, "FaultNotFound");

    // Latency, then a reset.
    admin(
        &t,
        &tok,
        Method::POST,
        "faults",
        Some(json!({"host": "login.microsoftonline.com", "kind": {"kind": "latency", "millis": 400}, "count": 1})),
    )
    .await;
    let started = Instant::now();
    assert_eq!(login(&t).await.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
    admin(
        &t,
        &tok,
        Method::POST,
        "faults",
        Some(json!({"host": "login.microsoftonline.com", "kind": {"kind": "reset"}, "count": 1})),
    )
    .await;
    assert!(login(&t).await.is_err(), "connection reset");
    assert_eq!(login(&t).await.unwrap().status(), 200);

    // A fault on every request leaves the admin API alone; DELETE /faults removes them all.
    admin(&t, &tok, Method::POST, "faults", Some(json!({"kind": {"kind": "server_error", "status": 500}}))).await;
    admin(&t, &tok, Method::POST, "faults", Some(json!({"vault": "kv1", "kind": {"kind": "blackhole"}}))).await;
    assert_eq!(login(&t).await.unwrap().status(), 500);
    let r = admin(&t, &tok, Method::GET, "faults", None).await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 2);
    let r = admin(&t, &tok, Method::DELETE, "faults", None).await;
    assert_eq!(r.body["removed"], 2);
    assert_eq!(login(&t).await.unwrap().status(), 200);

    for body in [
        json!({"kind": {"kind": "server_error", "status": 404}}),
        json!({"kind": {"kind": "explode"}}),
        json!({"kind": "throttle"}),
        json!({}),
        json!({"host": "example.com", "kind": {"kind": "reset"}}),
        json!({"host": "https://login.microsoftonline.com", "kind": {"kind": "reset"}}),
        json!({"vault": "-bad-", "kind": {"kind": "reset"}}),
        json!({"path_prefix": "keys", "kind": {"kind": "reset"}}),
        json!({"count": 0, "kind": {"kind": "reset"}}),
        json!({"kind": {"kind": "latency", "millis": 10_000_000}}),
        json!({"host": "graph.microsoft.com", "vault": "kv1", "kind": {"kind": "reset"}}),
        json!({"kind": {"kind": "reset"}, "extra": 1}),
    ] {
        let r = admin(&t, &tok, Method::POST, "faults", Some(body.clone())).await;
        assert_arm_error(&r, 400, "InvalidRequestContent");
    }
    let r = admin(&t, &tok, Method::GET, "faults/not-a-guid", None).await;
    assert_arm_error(&r, 400, "InvalidRequestContent");
}

#[tokio::test]
async fn vault_throttles_limit_requests_per_window() {
    let t = TestEmu::start().await;
    let tok = admin_token(&t).await;
    let r =
        admin(&t, &tok, Method::PUT, "vaults/ThrottledKv/throttle", Some(json!({"limit": 2, "window_secs": 60}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"vault": "throttledkv", "limit": 2, "window_secs": 60}));
    let url = "https://throttledkv.vault.azure.net/keys?api-version=7.5";
    for _ in 0..2 {
        assert_ne!(call(&t, Method::GET, url, None, None).await.status, 429);
    }
    let r = call(&t, Method::GET, url, None, None).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.get("retry-after").is_some());
    // Another vault is not affected.
    assert_ne!(
        call(&t, Method::GET, "https://otherkv.vault.azure.net/keys?api-version=7.5", None, None).await.status,
        429
    );

    let r = admin(&t, &tok, Method::PUT, "vaults/throttledkv/throttle", Some(json!({"preset": "azure"}))).await;
    assert_eq!(r.body, json!({"vault": "throttledkv", "limit": 4000, "window_secs": 10}));
    assert_ne!(call(&t, Method::GET, url, None, None).await.status, 429);
    let r = admin(&t, &tok, Method::GET, "vaults/throttledkv/throttle", None).await;
    assert_eq!(r.body["limit"], 4000);
    let r = admin(&t, &tok, Method::DELETE, "vaults/throttledkv/throttle", None).await;
    assert_eq!(r.status, 204);
    let r = admin(&t, &tok, Method::DELETE, "vaults/throttledkv/throttle", None).await;
    assert_arm_error(&r, 404, "ThrottleNotFound");
    let r = admin(&t, &tok, Method::GET, "vaults/throttledkv/throttle", None).await;
    assert_arm_error(&r, 404, "ThrottleNotFound");

    for (vault, body) in [
        ("kv1", json!({"preset": "azure", "limit": 5})),
        ("kv1", json!({"preset": "aws"})),
        ("kv1", json!({"limit": 0, "window_secs": 10})),
        ("kv1", json!({"limit": 5})),
        ("kv1", json!({})),
        ("k", json!({"preset": "azure"})),
        ("kv_1", json!({"preset": "azure"})),
    ] {
        let r = admin(&t, &tok, Method::PUT, &format!("vaults/{vault}/throttle"), Some(body.clone())).await;
        assert_arm_error(&r, 400, "InvalidRequestContent");
    }
}

fn insert_vault(t: &TestEmu, name: &str) {
    let b = t.bootstrap().clone();
    let vault = Vault {
        cloud: AzureEnvironment::Azure,
        subscription_id: b.subscription_id.parse().unwrap(),
        resource_group: "rg".into(),
        name: name.into(),
        location: "eastus".into(),
        tags: Default::default(),
        properties: VaultProperties {
            tenant_id: b.tenant_id.parse().unwrap(),
            sku_family: "A".into(),
            sku_name: "standard".into(),
            enable_rbac_authorization: true,
            access_policies: vec![],
            enable_soft_delete: true,
            soft_delete_retention_in_days: 90,
            enable_purge_protection: None,
            public_network_access: "Disabled".into(),
        },
        keys: Default::default(),
        deleted_keys: Default::default(),
        created: 0,
    };
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.vaults.insert(Vault::key(AzureEnvironment::Azure, name), vault);
            Ok(())
        })
        .unwrap();
}

/// Does an HTTPS request for `vault` through `port` get any HTTP answer?
async fn answers_through(t: &TestEmu, port: u16, vault: &str) -> bool {
    let client = support::client_for(([127, 0, 0, 1], port).into(), &t.emu.ca_pem());
    let fut = client.get(format!("https://{vault}.vault.azure.net/keys?api-version=7.5")).send();
    matches!(tokio::time::timeout(Duration::from_secs(5), fut).await, Ok(Ok(_)))
}

#[tokio::test]
async fn private_endpoints_listen_and_survive_a_restart() {
    let t = TestEmu::start().await;
    insert_vault(&t, "privkv");
    let tok = admin_token(&t).await;

    let r = admin(&t, &tok, Method::POST, "private-endpoints", Some(json!({"vault": "PrivKV"}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let port = r.body["port"].as_u64().unwrap() as u16;
    assert_eq!(r.body["vault"], "privkv");
    assert_eq!(r.body["address"], format!("127.0.0.1:{port}"));
    assert_eq!(r.body["listening"], true);
    assert!(answers_through(&t, port, "privkv").await);

    for (body, status, code) in [
        (json!({"vault": "nosuchvault"}), 404, "VaultNotFound"),
        (json!({"vault": "privkv", "port": 80}), 400, "InvalidRequestContent"),
        (json!({"vault": "privkv", "port": port}), 409, "Conflict"),
        (json!({"vault": "-x"}), 400, "InvalidRequestContent"),
        (json!({"vault": "privkv", "port": 70000}), 400, "InvalidRequestContent"),
        (json!({}), 400, "InvalidRequestContent"),
    ] {
        let r = admin(&t, &tok, Method::POST, "private-endpoints", Some(body.clone())).await;
        assert_arm_error(&r, status, code);
    }
    let r = admin(&t, &tok, Method::GET, "private-endpoints", None).await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 1, "failed requests left nothing behind");

    // Same port after a restart.
    let t = t.restart().await;
    let tok = admin_token(&t).await;
    let r = admin(&t, &tok, Method::GET, &format!("private-endpoints/{id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["port"], port);
    assert_eq!(r.body["listening"], true);
    assert!(answers_through(&t, port, "privkv").await);

    // Port taken while the emulator was down: a new port, recorded in the state.
    let TestEmu { emu, dir, .. } = t;
    emu.shutdown().await;
    let mut blocker = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => {
                blocker = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(blocker.is_some(), "the old listener released its port");
    let t = TestEmu::start_in(dir).await;
    let tok = admin_token(&t).await;
    let r = admin(&t, &tok, Method::GET, &format!("private-endpoints/{id}"), None).await;
    let new_port = r.body["port"].as_u64().unwrap() as u16;
    assert_ne!(new_port, port);
    assert_eq!(r.body["listening"], true);
    assert!(answers_through(&t, new_port, "privkv").await);
    drop(blocker);

    let r = admin(&t, &tok, Method::DELETE, &format!("private-endpoints/{id}"), None).await;
    assert_eq!(r.status, 204);
    let r = admin(&t, &tok, Method::DELETE, &format!("private-endpoints/{id}"), None).await;
    assert_arm_error(&r, 404, "PrivateEndpointNotFound");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!answers_through(&t, new_port, "privkv").await);
    let r = admin(&t, &tok, Method::GET, "private-endpoints", None).await;
    assert_eq!(r.body["value"], json!([]));
}

#[tokio::test]
async fn a_pending_connection_is_listed_on_the_vault_and_approved_rejected_or_deleted_in_arm() {
    let t = TestEmu::start().await;
    insert_vault(&t, "connkv");
    let tok = admin_token(&t).await;
    let sub = t.bootstrap().subscription_id.clone();
    let vault = format!(
        "https://management.azure.com/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/connkv"
    );
    let arm = |path: &str| format!("{vault}{path}?api-version=2023-07-01");
    let state = |r: &Reply| r.body["properties"]["privateLinkServiceConnectionState"]["status"].clone();

    let rg = format!("https://management.azure.com/subscriptions/{sub}/resourcegroups/rg?api-version=2021-04-01");
    let r = call(&t, Method::PUT, &rg, Some(&tok), Some(json!({"location": "eastus"}))).await;
    assert!(matches!(r.status, 200 | 201), "{}", r.body);

    // No connection yet: the vault lists none.
    let r = call(&t, Method::GET, &arm(""), Some(&tok), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["properties"].get("privateEndpointConnections").is_none(), "{}", r.body);

    let r = admin(
        &t,
        &tok,
        Method::POST,
        "private-endpoints",
        Some(json!({"vault": "connkv", "connectionName": "nodes-pe"})),
    )
    .await;
    assert_eq!((r.status, r.body["connectionStatus"].as_str()), (201, Some("Pending")), "{}", r.body);
    let endpoint = r.body["id"].as_str().unwrap().to_string();

    // The vault shows it as Azure does (PrivateEndpointConnectionItem), and so do the list and GET.
    let r = call(&t, Method::GET, &arm(""), Some(&tok), None).await;
    let items = r.body["properties"]["privateEndpointConnections"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", r.body);
    assert_eq!(
        items[0]["id"],
        format!(
            "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/connkv/privateEndpointConnections/nodes-pe"
        )
    );
    assert_eq!(items[0]["properties"]["privateLinkServiceConnectionState"]["status"], "Pending");
    assert!(items[0]["properties"]["privateEndpoint"]["id"].as_str().unwrap().ends_with(&endpoint), "{}", items[0]);
    let r = call(&t, Method::GET, &arm("/privateEndpointConnections"), Some(&tok), None).await;
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(1), "{}", r.body);
    let r = call(&t, Method::GET, &arm("/privateEndpointConnections/nodes-pe"), Some(&tok), None).await;
    assert_eq!((r.status, state(&r)), (200, json!("Pending")), "{}", r.body);

    // Bad input: a clear error, and the connection stays Pending.
    for (body, status, code) in [
        (json!({"properties": {"privateLinkServiceConnectionState": {"status": "Maybe"}}}), 400, "BadRequest"),
        (json!({"properties": {}}), 400, "BadRequest"),
    ] {
        let r =
            call(&t, Method::PUT, &arm("/privateEndpointConnections/nodes-pe"), Some(&tok), Some(body.clone())).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    }
    let r = call(&t, Method::GET, &arm("/privateEndpointConnections/nosuch"), Some(&tok), None).await;
    assert_arm_error(&r, 404, "PrivateEndpointConnectionNotFound");
    let r = admin(&t, &tok, Method::GET, &format!("private-endpoints/{endpoint}"), None).await;
    assert_eq!(r.body["connectionStatus"], "Pending");

    // Approved, then rejected: the vault and the endpoint follow.
    for status in ["Approved", "Rejected"] {
        let body = json!({"properties": {"privateLinkServiceConnectionState": {"status": status, "description": "by the owner"}}});
        let r = call(&t, Method::PUT, &arm("/privateEndpointConnections/nodes-pe"), Some(&tok), Some(body)).await;
        assert_eq!((r.status, state(&r)), (200, json!(status)), "{}", r.body);
        let r = call(&t, Method::GET, &arm(""), Some(&tok), None).await;
        assert_eq!(
            r.body["properties"]["privateEndpointConnections"][0]["properties"]["privateLinkServiceConnectionState"]["status"],
            status
        );
        let r = admin(&t, &tok, Method::GET, &format!("private-endpoints/{endpoint}"), None).await;
        assert_eq!(r.body["connectionStatus"], status);
    }

    // Deleted: the vault lists none, and the endpoint is Disconnected.
    let r = call(&t, Method::DELETE, &arm("/privateEndpointConnections/nodes-pe"), Some(&tok), None).await;
    assert!(matches!(r.status, 200 | 202 | 204), "{}", r.body);
    let r = call(&t, Method::GET, &arm(""), Some(&tok), None).await;
    assert!(r.body["properties"].get("privateEndpointConnections").is_none(), "{}", r.body);
    let r = admin(&t, &tok, Method::GET, &format!("private-endpoints/{endpoint}"), None).await;
    assert_eq!(r.body["connectionStatus"], "Disconnected");
}

#[tokio::test]
async fn requests_are_counted_by_service_operation_tenant_scope_and_vault() {
    use atrest_emulator::scenario::{Azure, Customer, VaultAuth};
    use reqwest::Method;
    let t = TestEmu::start().await;
    let tok = admin_token(&t).await;
    let az = Azure::new(t.http.clone());
    let customer = Customer::create(&az, t.bootstrap(), "Counted").await.unwrap();
    customer.create_resource_group("rg").await.unwrap();
    customer.create_vault("rg", "countedkv", VaultAuth::Rbac, true).await.unwrap();
    let kid = customer.create_key("countedkv", "cmk", None).await.unwrap();

    // Reset: the setup's requests were counted (tokens, ARM, Key Vault); the admin API's are not.
    let r = admin(&t, &tok, Method::DELETE, "requests", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["removed"].as_u64().unwrap() >= 4, "{}", r.body);
    let r = admin(&t, &tok, Method::GET, "requests", None).await;
    assert_eq!((r.body["total"].clone(), r.body["value"].clone()), (json!(0), json!([])), "{}", r.body);

    let admin_id = customer.admin.client_id.to_ascii_lowercase();
    let (s, v) = token(&t, customer.tenant_id(), &admin_id, &customer.admin.client_secret, VAULT_SCOPE).await;
    assert_eq!(s, 200, "{v}");
    let vtok = v["access_token"].as_str().unwrap().to_string();
    let mut ciphertext = Value::Null;
    for _ in 0..3 {
        let body = json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([7u8; 32])});
        let r = call(&t, Method::POST, &format!("{kid}/encrypt?api-version=7.5"), Some(&vtok), Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        ciphertext = r.body["value"].clone();
    }
    let good = json!({"alg": "RSA-OAEP-256", "value": ciphertext});
    let r = call(&t, Method::POST, &format!("{kid}/decrypt?api-version=7.5"), Some(&vtok), Some(good)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bad = json!({"alg": "RSA-OAEP-256", "value": "not base64url!"});
    let r = call(&t, Method::POST, &format!("{kid}/decrypt?api-version=7.5"), Some(&vtok), Some(bad)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = call(&t, Method::GET, &format!("{kid}?api-version=7.5"), Some(&vtok), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A request an injected fault answers is counted too, as an error.
    let f = admin(
        &t,
        &tok,
        Method::POST,
        "faults",
        Some(json!({"vault": "countedkv", "kind": {"kind": "server_error", "status": 503}, "count": 1})),
    )
    .await;
    assert_eq!(f.status, 201, "{}", f.body);
    let r = call(&t, Method::GET, &format!("{kid}?api-version=7.5"), Some(&vtok), None).await;
    assert_eq!(r.status, 503, "{}", r.body);

    let r = admin(&t, &tok, Method::GET, "requests", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["total"], 8, "{}", r.body);
    assert_eq!(
        r.body["value"],
        json!([
            {"service": "entra", "operation": "token", "tenant": customer.tenant_id(), "scope": VAULT_SCOPE, "client_id": admin_id, "count": 1, "errors": 0},
            {"service": "keyvault", "operation": "decrypt", "vault": "countedkv", "count": 2, "errors": 1},
            {"service": "keyvault", "operation": "encrypt", "vault": "countedkv", "count": 3, "errors": 0},
            {"service": "keyvault", "operation": "get-key", "vault": "countedkv", "count": 2, "errors": 1},
        ]),
        "{}",
        r.body
    );
    assert!(r.body["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{}", r.body);

    // ARM operations are named by method and resource type (the customer's call fetches its
    // ARM token first).
    admin(&t, &tok, Method::DELETE, "requests", None).await;
    customer.create_resource_group("rg2").await.unwrap();
    let r = admin(&t, &tok, Method::GET, "requests", None).await;
    assert_eq!(
        r.body["value"],
        json!([
            {"service": "arm", "operation": "PUT resourcegroups", "count": 1, "errors": 0},
            {"service": "entra", "operation": "token", "tenant": customer.tenant_id(), "scope": ARM_SCOPE, "client_id": admin_id, "count": 1, "errors": 0},
        ]),
        "{}",
        r.body
    );

    // Reset answers how many were counted; the admin API's own calls never are.
    let r = admin(&t, &tok, Method::DELETE, "requests", None).await;
    assert_eq!(r.body, json!({"removed": r.body["removed"].as_u64().filter(|n| *n >= 1).unwrap()}));
    for _ in 0..3 {
        admin(&t, &tok, Method::GET, "requests", None).await;
    }
    let r = admin(&t, &tok, Method::GET, "requests", None).await;
    assert_eq!(r.body["total"], 0, "{}", r.body);

    // Who may call it and which methods it has, like every admin route.
    let r = call(&t, Method::GET, "https://management.azure.com/_emulator/requests", None, None).await;
    assert_arm_error(&r, 401, "AuthenticationFailed");
    let r = admin(&t, &tok, Method::PUT, "requests", Some(json!({}))).await;
    assert_arm_error(&r, 405, "MethodNotAllowed");
    let r = admin(&t, &tok, Method::GET, "", None).await;
    let routes = r.body["routes"].as_array().unwrap();
    assert!(
        routes.contains(&json!("GET /_emulator/requests")) && routes.contains(&json!("DELETE /_emulator/requests"))
    );
}
