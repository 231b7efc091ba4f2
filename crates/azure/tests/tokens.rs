//! Tokens from the real emulator's Entra ID through the client: certificate assertions (PS256
//! and RS256), client secrets, federated token files with an OIDC issuer this test serves, the
//! AADSTS errors with their remediations, the single-flight cache, and retries on faults.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use atrest_azure::{
    AssertionAlgorithm, AzureClient, CertificateCredential, ClientCredential, ErrorKind, FederatedTokenFile,
    RetryPolicy, Service,
};
use atrest_domain::{AzureEnvironment, AzureUuid};
use support::{World, quick_retry};

const LOGIN: &str = "login.microsoftonline.com";

/// The claims of a JWT, unverified.
fn claims(token: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

#[tokio::test]
async fn certificate_assertion_gets_a_token_in_the_customer_tenant_with_both_algorithms() {
    let w = World::start().await;
    let p = w.new_tenant("Platform").await;
    let c = w.new_tenant("Customer").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let customer: AzureUuid = c.tenant_id.parse().unwrap();
    let sp = w.add_service_principal(&platform.app_id, &customer).await;

    for alg in [AssertionAlgorithm::Ps256, AssertionAlgorithm::Rs256] {
        let cert =
            CertificateCredential::from_pem(&platform.cert_pem, &SecretString::from(platform.key_pem.clone())).unwrap();
        let client = w.client(ClientCredential::certificate(platform.app_id, cert.with_algorithm(alg)));
        let t = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
        let cl = claims(t.expose_secret());
        // The token is the platform app's, issued in the customer tenant for that tenant's SP.
        assert_eq!(cl["tid"], customer.to_string(), "{alg:?}");
        assert_eq!(cl["oid"], sp.to_string());
        assert_eq!(cl["appid"], platform.app_id.to_string());
        assert_eq!(cl["appidacr"], "2");
        assert_eq!(cl["aud"], "https://vault.azure.net");
        assert!(t.expires_in() > Duration::from_secs(3000));
        assert_eq!(client.token_stats().token_requests, 1);

        // Nothing secret in any Debug output: not the cached token, not the private key.
        let key_line = platform.key_pem.lines().nth(1).unwrap();
        let signature = t.expose_secret().rsplit('.').next().unwrap();
        for shown in [format!("{client:?}"), format!("{t:?}"), format!("{:?}", client.tokens())] {
            assert!(!shown.contains(signature) && !shown.contains(key_line), "{shown}");
        }
    }
}

#[tokio::test]
async fn missing_service_principal_is_denied_with_the_az_ad_sp_create_fix() {
    let w = World::start().await;
    let p = w.new_tenant("Platform").await;
    let c = w.new_tenant("Customer").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let client = w.client(platform.credential());
    let customer: AzureUuid = c.tenant_id.parse().unwrap();

    let e = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert_eq!(e.service(), Service::Entra);
    assert_eq!(e.aadsts_code(), Some(700016), "{e}");
    assert_eq!(e.attempts(), 1, "a denial is never retried");
    let fix = e.remediation().unwrap();
    assert!(fix.contains(&format!("`az ad sp create --id {}` in tenant {customer}", platform.app_id)), "{fix}");
    // The whole message a user sees names the code and the command.
    assert!(e.to_string().contains("AADSTS700016") && e.to_string().contains("az ad sp create"), "{e}");
}

#[tokio::test]
async fn unknown_tenant_disabled_sp_unregistered_cert_and_wrong_secret_are_classified() {
    let w = World::start().await;
    let p = w.new_tenant("Platform").await;
    let c = w.new_tenant("Customer").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let customer: AzureUuid = c.tenant_id.parse().unwrap();
    let sp = w.add_service_principal(&platform.app_id, &customer).await;
    let client = w.client(platform.credential());

    let e = client.tokens().key_vault_token(AzureEnvironment::Azure, &AzureUuid::new_v4()).await.unwrap_err();
    assert_eq!((e.kind(), e.aadsts_code()), (ErrorKind::Misconfigured, Some(90002)), "{e}");

    w.set_sp_enabled(&sp, false).await;
    let e = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!((e.kind(), e.aadsts_code()), (ErrorKind::Denied, Some(7000112)), "{e}");
    assert!(
        e.remediation()
            .unwrap()
            .contains(&format!("az ad sp update --id {} --set accountEnabled=true", platform.app_id))
    );
    w.set_sp_enabled(&sp, true).await;

    // Another certificate than the registered one.
    let other = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let cert = CertificateCredential::from_pem(&other.cert_pem, &SecretString::from(other.key_pem.clone())).unwrap();
    let impostor = w.client(ClientCredential::certificate(platform.app_id, cert));
    let e = impostor.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!((e.kind(), e.aadsts_code()), (ErrorKind::Denied, Some(700027)), "{e}");
    assert!(
        e.remediation()
            .unwrap()
            .contains(&format!("az ad app credential reset --id {} --cert @cert.pem --append", platform.app_id))
    );

    // Legacy static mode: the customer's own app with a secret.
    let admin = support::Admin::new(&w, c.clone());
    let t = admin.client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
    assert_eq!(claims(t.expose_secret())["appidacr"], "1");
    let wrong = w.client(ClientCredential::client_secret(
        c.client_id.parse().unwrap(),
        SecretString::from("abc8Q~not-the-secret-at-all-0123456789abc".to_string()),
    ));
    let e = wrong.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!((e.kind(), e.aadsts_code()), (ErrorKind::Denied, Some(7000215)), "{e}");
}

#[tokio::test]
async fn concurrent_callers_cause_one_token_request_per_tenant() {
    let w = World::start().await;
    let p = w.new_tenant("Platform").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let mut tenants = Vec::new();
    for i in 0..8 {
        let c = w.new_tenant(&format!("Customer {i}")).await;
        let t: AzureUuid = c.tenant_id.parse().unwrap();
        w.add_service_principal(&platform.app_id, &t).await;
        tenants.push(t);
    }
    let client = w.client(platform.credential());
    let mut tasks = Vec::new();
    for i in 0..400 {
        let client = client.clone();
        let tenant = tenants[i % tenants.len()];
        tasks.push(tokio::spawn(async move {
            let t = client.tokens().key_vault_token(AzureEnvironment::Azure, &tenant).await.unwrap();
            (tenant, t.expose_secret().to_string())
        }));
    }
    let mut per_tenant: std::collections::HashMap<AzureUuid, std::collections::HashSet<String>> = Default::default();
    for t in tasks {
        let (tenant, token) = t.await.unwrap();
        assert_eq!(claims(&token)["tid"], tenant.to_string());
        per_tenant.entry(tenant).or_default().insert(token);
    }
    // Everyone asking for one tenant got the same token, and each tenant cost one request.
    assert!(
        per_tenant.values().all(|s| s.len() == 1),
        "{:?}",
        per_tenant.values().map(|s| s.len()).collect::<Vec<_>>()
    );
    let stats = client.token_stats();
    assert_eq!(stats.token_requests, tenants.len() as u64, "{stats:?}");
    assert_eq!(stats.cache_hits + stats.cache_misses, 400);

    // Another scope in the same tenant is another cache entry.
    client.tokens().arm_token(AzureEnvironment::Azure, &tenants[0]).await.unwrap();
    assert_eq!(client.token_stats().token_requests, tenants.len() as u64 + 1);
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_ahead_of_expiry() {
    let w = World::start().await;
    // Tokens issued from now on live 60 s: the client refreshes them once 20 s (a third) is
    // left, that is 40 s after they were issued.
    w.settings(json!({"token_lifetime_secs": 60})).await;
    let p = w.new_tenant("Platform").await;
    let c = w.new_tenant("Customer").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let customer: AzureUuid = c.tenant_id.parse().unwrap();
    w.add_service_principal(&platform.app_id, &customer).await;
    let client = w.client(platform.credential());

    let first = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
    assert!(first.expires_in() <= Duration::from_secs(60));
    // Well inside the first 40 s, however slow the machine: the cached token.
    let again = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
    assert_eq!(again.expose_secret(), first.expose_secret());
    assert_eq!(client.token_stats().token_requests, 1);

    // 45 s pass on both sides of the wire, without waiting for them: the emulator's clock
    // moves with its admin clock shift (so the next token's iat and exp are 45 s later), the
    // client's with tokio's test clock, paused only for the jump so that no request runs on
    // a frozen clock.
    w.admin_api(reqwest::Method::POST, "clock/shift", Some(json!({"seconds": 45}))).await;
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(45)).await;
    tokio::time::resume();
    assert!(first.expires_in() <= Duration::from_secs(15), "{:?}", first.expires_in());

    let refreshed = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
    assert_ne!(refreshed.expose_secret(), first.expose_secret());
    assert_eq!(client.token_stats().token_requests, 2);
    assert!(refreshed.expires_in() > Duration::from_secs(40), "{:?}", refreshed.expires_in());
    assert!(claims(refreshed.expose_secret())["exp"].as_i64() > claims(first.expose_secret())["exp"].as_i64());
}

// ------------------------------------------------------------------------------------------
// Federated credentials, with an OIDC issuer served here
// ------------------------------------------------------------------------------------------

/// An OIDC issuer on http://127.0.0.1:PORT: discovery document and JWKS for one RSA key.
struct Issuer {
    url: String,
    key: aws_lc_rs::rsa::KeyPair,
    kid: String,
}

impl Issuer {
    async fn start() -> Self {
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let comps = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public_key());
        let kid = "issuer-key-1".to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("http://127.0.0.1:{}", addr.port());
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys"), "id_token_signing_alg_values_supported": ["RS256"]});
        let jwks = json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&comps.n), "e": URL_SAFE_NO_PAD.encode(&comps.e)}]});
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route("/keys", axum::routing::get(move || async move { axum::Json(jwks) }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, key, kid }
    }

    /// A token for `sub` with audience `aud`, RS256-signed.
    fn token(&self, sub: &str, aud: &str) -> String {
        let now = support::now();
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let claims = json!({"iss": self.url, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + 3600, "jti": Uuid::new_v4()});
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

#[tokio::test]
async fn federated_token_file_flow_rereads_the_rotated_file_and_explains_mismatches() {
    let w = World::start().await;
    let issuer = Issuer::start().await;
    // The issuer is served over plain http on loopback; Entra itself requires https.
    w.settings(json!({"allow_http_issuers": true})).await;
    let p = w.new_tenant("Platform").await;
    let c = w.new_tenant("Customer").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let subject = "system:serviceaccount:atrest:control-plane";
    w.add_federated_credential(&platform.app_id, &issuer.url, subject).await;
    let customer: AzureUuid = c.tenant_id.parse().unwrap();
    w.add_service_principal(&platform.app_id, &customer).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, issuer.token(subject, "api://AzureADTokenExchange")).unwrap();
    let client = w.client(ClientCredential::federated_token_file(platform.app_id, FederatedTokenFile::new(&file)));

    let t = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
    assert_eq!(claims(t.expose_secret())["tid"], customer.to_string());

    // Rotated in place with a token for another subject: the next request reads the new file
    // (an ARM token is a new cache entry, so it is fetched now), and Entra names the mismatch.
    std::fs::write(&file, issuer.token("system:serviceaccount:other:sa", "api://AzureADTokenExchange")).unwrap();
    let e = client.tokens().arm_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!((e.kind(), e.aadsts_code()), (ErrorKind::Denied, Some(700213)), "{e}");
    let fix = e.remediation().unwrap();
    assert!(fix.contains(&format!("az ad app federated-credential create --id {}", platform.app_id)), "{fix}");
    assert!(
        fix.contains(&format!(r#""issuer":"{}""#, issuer.url)) && fix.contains("system:serviceaccount:other:sa"),
        "{fix}"
    );

    // Wrong audience: AADSTS70021.
    std::fs::write(&file, issuer.token(subject, "api://SomethingElse")).unwrap();
    let e = client.tokens().arm_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!((e.kind(), e.aadsts_code()), (ErrorKind::Denied, Some(70021)), "{e}");

    // Rotated back to a good token: works again without restarting anything.
    std::fs::write(&file, issuer.token(subject, "api://AzureADTokenExchange")).unwrap();
    client.tokens().arm_token(AzureEnvironment::Azure, &customer).await.unwrap();
}

// ------------------------------------------------------------------------------------------
// Faults at the token endpoint
// ------------------------------------------------------------------------------------------

async fn platform_in_customer(w: &World) -> (AzureClient, AzureUuid) {
    let p = w.new_tenant("Platform").await;
    let c = w.new_tenant("Customer").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let customer: AzureUuid = c.tenant_id.parse().unwrap();
    w.add_service_principal(&platform.app_id, &customer).await;
    (w.client(platform.credential()), customer)
}

#[tokio::test]
async fn throttled_token_endpoint_is_retried_after_retry_after() {
    let w = World::start().await;
    let (client, customer) = platform_in_customer(&w).await;
    w.host_fault(LOGIN, json!({"kind": "throttle", "retry_after_secs": 1}), Some(2)).await;
    let started = Instant::now();
    client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
    // Two 429s, each honoured for its full second, then success.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(client.token_stats().token_requests, 3);
}

#[tokio::test]
async fn server_errors_and_resets_are_retried() {
    let w = World::start().await;
    let (client, customer) = platform_in_customer(&w).await;
    w.host_fault(LOGIN, json!({"kind": "server_error", "status": 503}), Some(2)).await;
    w.host_fault(LOGIN, json!({"kind": "reset"}), Some(1)).await;
    client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
    assert_eq!(client.token_stats().token_requests, 4);
}

#[tokio::test]
async fn persistent_faults_give_up_within_the_bound_with_the_right_class() {
    let w = World::start().await;
    let p = w.new_tenant("Platform").await;
    let c = w.new_tenant("Customer").await;
    let platform = w.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let customer: AzureUuid = c.tenant_id.parse().unwrap();
    w.add_service_principal(&platform.app_id, &customer).await;
    let retry = RetryPolicy { total: Duration::from_secs(2), ..quick_retry() };
    let mut config = w.config(retry);
    config.transport.request_timeout = Duration::from_millis(500);
    let client = AzureClient::new(&config, platform.credential()).unwrap();

    // The 2 s budget is checked by the number of attempts, which a loaded machine can only
    // lower, not by a stopwatch, which it can always overrun. Backoffs are at least 50, 100,
    // 200, 400, 400, ... ms (jitter only adds), so 2 s hold at most 8 attempts, where
    // max_attempts alone would allow 10.
    w.host_fault(LOGIN, json!({"kind": "server_error", "status": 500}), None).await;
    let e = client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!((2..=8).contains(&e.attempts()), "the 2 s budget holds 2 to 8 attempts, not {}: {e}", e.attempts());

    w.clear_faults().await;
    w.host_fault(LOGIN, json!({"kind": "throttle", "retry_after_secs": 1}), None).await;
    let e = client.tokens().arm_token(AzureEnvironment::Azure, &customer).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));

    w.clear_faults().await;
    // Each blackholed attempt but the last burns its full 500 ms timeout and sleeps at least
    // 50 ms after it: 2 s hold at most 4 attempts (10 without the budget).
    w.host_fault(LOGIN, json!({"kind": "blackhole"}), None).await;
    let e = client
        .tokens()
        .token(AzureEnvironment::Azure, &customer, "https://graph.microsoft.com/.default")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.message().contains("timed out"), "{e}");
    assert!((1..=4).contains(&e.attempts()), "the 2 s budget holds at most 4 attempts, not {}: {e}", e.attempts());

    // Once the fault is gone the same client recovers.
    w.clear_faults().await;
    client.tokens().key_vault_token(AzureEnvironment::Azure, &customer).await.unwrap();
}
