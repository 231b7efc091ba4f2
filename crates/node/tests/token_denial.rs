//! A Key Vault token the control plane still counts valid but Key Vault refuses (401), against
//! the real emulator and a real control plane on 127.0.0.1:0. The node re-asks, naming the
//! refused token by its SHA-256; the control plane drops its cached copy and asks Entra again:
//! - with the platform's service principal in place, Entra gives a fresh token and the node
//!   serves on (a skewed clock is not a denial);
//! - with the service principal deleted by the customer, Entra refuses (AADSTS700016) and the
//!   node shuts down saying so, with the fix (`az ad sp create --id <appId>`), where before it
//!   was handed the same refused token back (and shut down with a wrong reason, or served on
//!   until the cached token expired).
//!
//! Key Vault's refusal is made with the emulator's clock: tokens live 300 s here and the clock
//! moves 310 s ahead, so Key Vault (and Entra) see the cached token as expired while the
//! control plane's own clock still counts it fresh.

mod nodes;
#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use atrest_emulator::scenario::roles;
use atrest_node::runtime::NodeState;
use atrest_node::server::EmbeddedNode;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Env;

/// The platform client's Entra token requests so far (the control plane's shared cache).
fn entra_requests(env: &Env) -> u64 {
    env.control.state().platform.secretless().unwrap().token_stats().token_requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_dropped_and_a_deleted_service_principal_shuts_the_node_down_with_the_fix() {
    let env = Env::start_with(nodes::fast_checks()).await;
    // Short-lived tokens (Entra's minimum is 5 min), set before anything is issued.
    env.emulator_admin(Method::PATCH, "settings", Some(json!({"token_lifetime_secs": 300}))).await;
    let nodes::Cluster { group, tenant, data_credential: credential, .. } =
        nodes::cluster(&env, "sp-deleted", 1, false).await;
    let token = nodes::join_token(&env, &group, "Cluster0").await;
    let dir = tempfile::tempdir().unwrap();
    let opts = nodes::options(&env, &dir.path().join("n"), Some(token));
    let node = EmbeddedNode::start(opts, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    nodes::wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    let http = reqwest::Client::new();
    let doc = format!("{}/v1/collections/c/documents/a", node.url());
    let r = http.put(&doc).bearer_auth(&credential).json(&json!({"a": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let before = entra_requests(&env);

    // Key Vault refuses the cached token (expired by its clock): the node re-asks, the control
    // plane drops its copy and gets a fresh one (one Entra request), and the node serves on.
    env.emulator_admin(Method::POST, "clock/shift", Some(json!({"seconds": 310}))).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let s = node.handle().gate().status();
    assert_eq!(s.state, NodeState::Serving, "a token refused as expired shut the node down: {s:?}");
    assert!(s.last_error.is_none(), "{s:?}");
    assert!(time::OffsetDateTime::now_utc() - s.last_check_at.unwrap() < time::Duration::seconds(3), "{s:?}");
    assert_eq!(entra_requests(&env), before + 1, "the refused token was not replaced by exactly one Entra request");

    // The customer deletes the platform's service principal in their tenant (az ad sp delete).
    let graph = tenant.customer.az.token(&tenant.customer.admin, "https://graph.microsoft.com/.default").await.unwrap();
    tenant
        .customer
        .az
        .call(
            Method::DELETE,
            &format!("https://graph.microsoft.com/v1.0/servicePrincipals/{}", tenant.sp),
            &graph,
            None,
            "az ad sp delete",
        )
        .await
        .unwrap();
    // Key Vault accepts the token already issued until it expires; when it refuses it, Entra's
    // refusal reaches the node: shut down, with Entra's code and the fix.
    env.emulator_admin(Method::POST, "clock/shift", Some(json!({"seconds": 310}))).await;
    let down = nodes::wait_state(&node, NodeState::ShutDown, Duration::from_secs(15)).await;
    let err = down.last_error.expect("a shut-down node says why");
    assert_eq!(err.kind, "DENIED", "{err:?}");
    assert_eq!(err.azure_code.as_deref(), Some("AADSTS700016"), "{err:?}");
    let app_id = env.platform.app_id.clone();
    let fix = err.fix.as_deref().expect("a fix");
    assert!(fix.contains(&format!("az ad sp create --id {app_id}")), "{fix}");
    let r = http.get(&doc).bearer_auth(&credential).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errorCode"], "NODE_SHUT_DOWN", "{v}");
    assert!(v["fix"].as_str().is_some_and(|f| f.contains("az ad sp create")), "{v}");
    let path = format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/nodes");
    let listed = env
        .wait_for(Duration::from_secs(10), || async {
            let (_, v) = env.atlas(Method::GET, &path, None).await;
            v["results"][0]["state"] == "SHUT_DOWN" && v["results"][0]["lastError"]["azureCode"] == "AADSTS700016"
        })
        .await;
    assert!(listed, "the nodes list never showed the denial");
    assert!(env.event_types(&group).await.iter().any(|t| t == "ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID"));

    // The fix: the service principal re-created (a new object id) and granted again; the node
    // comes back by itself with its data.
    let sp = tenant.customer.create_service_principal(&app_id).await.unwrap();
    assert_ne!(sp, tenant.sp);
    tenant.customer.assign_role(&sp, roles::KEY_VAULT_CRYPTO_USER, &tenant.vault_id).await.unwrap();
    nodes::wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    let v: Value = http.get(&doc).bearer_auth(&credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"a": 1}));
    node.shutdown().await;
}

/// The token route's new input is checked like every other: a digest that is not a SHA-256 in
/// hex is refused with the field named, and a valid digest of a token the control plane never
/// handed out drops nothing (the node still gets the cached token, at no Entra cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_refused_token_digest_is_refused_and_an_unknown_one_drops_nothing() {
    let env = Env::start_with(nodes::fast_checks()).await;
    let group = nodes::cluster(&env, "digest", 1, false).await.group;
    let token = nodes::join_token(&env, &group, "Cluster0").await;
    let r = env
        .http
        .post(format!("{}/api/atrest/v1/node/join", env.url()))
        .json(&json!({"joinToken": token, "dataUrl": "http://127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let joined: Value = r.json().await.unwrap();
    let node_credential = joined["nodeCredential"].as_str().unwrap().to_string();
    let ask = |body: Value| {
        let (env, node_credential) = (&env, &node_credential);
        async move {
            let r = env
                .http
                .post(format!("{}/api/atrest/v1/node/token", env.url()))
                .bearer_auth(node_credential)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    for (bad, code) in [
        (json!("zz"), "INVALID_ATTRIBUTE"),
        (json!("ab".repeat(31)), "INVALID_ATTRIBUTE"),
        (json!(42), "INVALID_JSON_ATTRIBUTE"),
    ] {
        let (s, v) = ask(json!({"refusedTokenSha256": bad})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["errorCode"], code, "{v}");
        assert!(v.to_string().contains("refusedTokenSha256"), "{v}");
    }
    let (s, first) = ask(json!({})).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let before = entra_requests(&env);
    let (s, again) = ask(json!({"refusedTokenSha256": "00".repeat(32)})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["accessToken"], first["accessToken"], "an unknown digest dropped the cached token");
    assert_eq!(entra_requests(&env), before);
}
