//! What docs/control-plane.md promises and no other test checked, each over real HTTP against
//! a real control plane (and the emulator where Azure is involved):
//! - a paginated list under `?envelope=true`;
//! - `requirePrivateNetworking: true` is accepted as pending (`valid: false`) without reaching
//!   Azure, and background revalidation leaves it pending;
//! - the control plane over its own TLS (`[tls]`);
//! - revalidation on GET (`on_read_min_interval_secs`) with the background job parked;
//! - `PATCH cloudProviderAccess/{roleId}` proves the principal again;
//! - private endpoints moved forward by the background job, with no direct call.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_control::config::TlsConfig;
use atrest_control::{Config, ControlPlane};
use atrest_emulator::scenario::VaultAuth;
use support::{ACCEPT, Env, Options, eventually, validations};

/// How long background work may take on a loaded machine before a test gives up.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_list_under_envelope_keeps_its_page_and_adds_the_status() {
    let env = Env::start().await;
    for name in ["e1", "e2", "e3"] {
        env.project(name).await;
    }
    let (s, plain) = env.atlas(Method::GET, "/api/atlas/v2/groups?itemsPerPage=2&pageNum=2", None).await;
    assert_eq!(s, StatusCode::OK, "{plain}");
    assert!(plain.get("status").is_none(), "no envelope unless asked: {plain}");

    let (s, v) = env.atlas(Method::GET, "/api/atlas/v2/groups?itemsPerPage=2&pageNum=2&envelope=true", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A list is its own envelope: `status` beside `results`, the page and count unchanged.
    assert_eq!(v["status"], 200, "{v}");
    assert!(v.get("content").is_none(), "a list is not wrapped in content: {v}");
    assert_eq!(v["totalCount"], 3, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "page 2 of 2-per-page holds the third: {v}");
    assert_eq!(v["results"], plain["results"]);
    assert_eq!(v["links"], plain["links"]);

    // includeCount=false under the envelope: still a list envelope, without totalCount.
    let (s, v) = env.atlas(Method::GET, "/api/atlas/v2/groups?includeCount=false&envelope=TRUE", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["status"].clone(), v["results"].as_array().unwrap().len()), (json!(200), 3), "{v}");
    assert!(v.get("totalCount").is_none(), "{v}");

    // A single resource is wrapped as {status, content}.
    let id = plain["results"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{id}?envelope=true"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["content"]["id"], id.as_str(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_private_networking_is_pending_and_not_valid_and_stays_so() {
    let env = Env::start_with(Options { revalidate_interval_secs: 1, ..Options::default() }).await;
    let group = env.project("private").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    // Registered but never granted: any validation against Azure would fail this.
    let role = env.register(&group, &t).await;
    let mut block = t.ear_block(&role);
    block["requirePrivateNetworking"] = json!(true);
    let (s, v) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], false, "{v}");
    assert_eq!(v["azureKeyVault"]["requirePrivateNetworking"], true, "{v}");
    let status = env.status(&group).await;
    assert_eq!(status["state"], "PENDING", "{status}");
    assert_eq!(status["valid"], false, "{status}");
    assert!(status["detail"].as_str().unwrap().contains("data nodes"), "{status}");
    let metrics = env.control.state().metrics.render();
    assert_eq!(validations(&metrics, "patch"), 1, "{metrics}");
    assert!(metrics.contains("atrest_validations_total{trigger=\"patch\",result=\"pending\"} 1"), "{metrics}");

    // The background job claims it (its next date moves) and leaves it pending: only the data
    // nodes, over the private endpoint, can validate it.
    let first_next = status["nextValidationDate"].clone();
    let claimed = env.wait_for(LIMIT, || async { env.status(&group).await["nextValidationDate"] != first_next }).await;
    assert!(claimed, "the background job never claimed the configuration: {}", env.status(&group).await);
    let status = env.status(&group).await;
    assert_eq!((status["state"].clone(), status["valid"].clone()), (json!("PENDING"), json!(false)), "{status}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"]["valid"], false);
    let events = env.event_types(&group).await;
    assert!(
        !events.iter().any(|e| e.contains("NO_LONGER_VALID") || e.contains("VALIDATION_FAILED")),
        "a pending configuration is never reported invalid: {events:?}"
    );
    assert_eq!(validations(&env.control.state().metrics.render(), "background"), 0, "nothing reached Azure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_https_with_its_tls_config() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls-cert.pem"), dir.path().join("tls-key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("control"),
        bootstrap: false,
        tls: Some(TlsConfig { cert_path, key_path }),
        ..Config::default()
    };
    let cp = ControlPlane::start(config).await.unwrap();
    assert!(cp.url().starts_with("https://127.0.0.1:"), "{}", cp.url());

    // A client that trusts this certificate, and only it, gets answers over TLS.
    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = trusting.get(format!("{}/healthz", cp.url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = trusting.get(format!("{}/api/atlas/v2/groups", cp.url())).header("Accept", ACCEPT).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the API answers (and authenticates) over TLS");
    let localhost = cp.url().replace("127.0.0.1", "localhost");
    assert_eq!(trusting.get(format!("{localhost}/healthz")).send().await.unwrap().status(), StatusCode::OK);

    // Plain HTTP on the same port gets no HTTP answer, and a client that does not trust the
    // certificate refuses the handshake.
    let plain = cp.url().replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err(), "plain HTTP must not be served");
    let untrusting = reqwest::Client::builder().tls_certs_only([]).build().unwrap();
    assert!(untrusting.get(format!("{}/healthz", cp.url())).send().await.is_err());
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_revalidates_once_the_last_check_is_older_than_the_on_read_interval() {
    // The background job is parked (an hour): only reads can notice the revocation.
    let env =
        Env::start_with(Options { revalidate_interval_secs: 3600, on_read_min_interval_secs: 1, ..Options::default() })
            .await;
    let group = env.project("on-read").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    let (_, crypto) = t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true);

    t.customer.delete_role_assignment(&crypto).await.unwrap();
    // The status endpoint does not revalidate; GET encryptionAtRest does, at most once a second.
    let invalid = env.wait_for(LIMIT, || async { env.get_ear(&group).await["azureKeyVault"]["valid"] == false }).await;
    assert!(invalid, "no GET revalidated the configuration: {}", env.status(&group).await);
    let metrics = env.control.state().metrics.render();
    assert!(validations(&metrics, "read") > 0, "{metrics}");
    assert_eq!(validations(&metrics, "background"), 0, "the background job was parked: {metrics}");
    let status = env.status(&group).await;
    assert_eq!(status["state"], "INVALID", "{status}");
    assert!(status["detail"].as_str().unwrap().contains("ForbiddenByRbac"), "{status}");
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_cloud_provider_access_role_proves_the_principal_again() {
    // A second replica needs a shared PostgreSQL store.
    let url = atrest_store::testing::fresh_postgres_database().await.expect("a throwaway PostgreSQL");
    let env = Env::start_with(Options { store_url: Some(url), ..Options::default() }).await;
    let group = env.project("authorize").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    let path = format!("/api/atlas/v2/groups/{group}/cloudProviderAccess/{role}");
    let body = t.cpa_body(&env.platform.app_id);

    let (s, v) = env.atlas(Method::PATCH, &path, Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["_id"].as_str(), v["servicePrincipalId"].as_str()), (Some(role.as_str()), Some(t.sp.as_str())));

    // The customer disables the service principal. A replica whose token cache holds no token
    // for the tenant (a fresh one) must ask Entra again, and Entra now refuses.
    env.emulator_admin(Method::PATCH, &format!("service-principals/{}", t.sp), Some(json!({"account_enabled": false})))
        .await;
    // The replica that proved it a moment ago holds a cached token for the tenant: the proof
    // must still come from Entra, which now refuses.
    let (s, e) = env.atlas(Method::PATCH, &path, Some(body.clone())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a cached token passed for a disabled principal: {e}");
    assert_eq!(e["errorCode"], "CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL", "{e}");
    let fresh = env.replica().await;
    let on_fresh = |method: Method, body: Option<Value>| {
        let rb =
            env.http.request(method, format!("{}{path}", fresh.url())).bearer_auth(&env.token).header("Accept", ACCEPT);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        async move {
            let r = rb.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, e) = on_fresh(Method::PATCH, Some(body.clone())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL", "{e}");
    assert_eq!(e["parameters"], json!([t.sp]), "{e}");
    // Reading the role proves nothing and still works.
    let (s, v) = on_fresh(Method::GET, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Enabled again: the PATCH passes.
    env.emulator_admin(Method::PATCH, &format!("service-principals/{}", t.sp), Some(json!({"account_enabled": true})))
        .await;
    let (s, v) = on_fresh(Method::PATCH, Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The ids of a role cannot be changed by a PATCH.
    let mut other = body.clone();
    other["servicePrincipalId"] = json!(uuid::Uuid::new_v4().to_string());
    let (s, e) = env.atlas(Method::PATCH, &path, Some(other)).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_ATTRIBUTE")), "{e}");
    fresh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_endpoints_are_moved_forward_by_the_background_job() {
    // Nothing here calls private_endpoints::advance: only the background job (every 100 ms)
    // can move the endpoint.
    let env = Env::start().await;
    let group = env.project("private-endpoints").await;
    let (s, v) = env
        .patch_ear(
            &group,
            json!({
                "enabled": true,
                "clientID": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "tenantID": "4a1f0a2e-1c1d-4c55-9d3e-6f3f2a9b7c10",
                "secret": "not-a-real-secret",
                "subscriptionID": "5d3f1c2b-0000-4000-8000-00000000aaaa",
                "resourceGroupName": "rg-atrest",
                "keyVaultName": "atrestkv",
                "keyIdentifier": "https://atrestkv.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef",
                "azureEnvironment": "AZURE",
                "requirePrivateNetworking": true,
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let endpoints = format!("/api/atlas/v2/groups/{group}/encryptionAtRest/AZURE/privateEndpoints");
    let (s, v) = env.atlas(Method::POST, &endpoints, Some(json!({"regionName": "US_EAST_2"}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let endpoint = format!("{endpoints}/{id}");
    let status = || async { env.atlas(Method::GET, &endpoint, None).await };

    let pending = eventually(LIMIT, || async { status().await.1["status"] == "PENDING_ACCEPTANCE" }).await;
    assert!(pending, "the background job never moved the endpoint on: {}", status().await.1);
    assert_eq!(status().await.1["privateEndpointConnectionName"], format!("atrest-{id}"));

    let (s, v) = env.atlas(Method::DELETE, &endpoint, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let gone = eventually(LIMIT, || async { status().await.0 == StatusCode::NOT_FOUND }).await;
    assert!(gone, "the background job never removed the deleted endpoint: {}", status().await.1);
}
