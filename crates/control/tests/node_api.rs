//! The node API over real HTTP (docs/design/node-api-draft.md): join tokens are single use,
//! node credentials are checked and revocable, the configuration long-poll answers 304 on a
//! quiet wait and wakes on a change, the token endpoint hands out a Key Vault token the
//! emulator accepts, and every bad input is refused with its code while nothing changes.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Env;

use support::CLUSTERS_ACCEPT;

async fn cluster(env: &Env) -> (String, support::Tenant) {
    let group = env.project("node-api").await;
    let t = env.tenant(atrest_emulator::scenario::VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.create_cluster(&group, "Cluster0", 1).await;
    (group, t)
}

async fn node_call(
    env: &Env,
    method: Method,
    path: &str,
    cred: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = env.http.request(method, format!("{}/api/atrest/v1/node/{path}", env.url()));
    if let Some(c) = cred {
        rb = rb.bearer_auth(c);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status();
    let text = r.text().await.unwrap();
    (s, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
}

async fn join_token(env: &Env, group: &str) -> String {
    let (s, v) = env
        .atlas(Method::POST, &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/joinTokens"), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let t = v["token"].as_str().unwrap().to_string();
    assert!(t.starts_with("atrj_"), "{t}");
    t
}

async fn join(env: &Env, group: &str) -> (String, String) {
    let token = join_token(env, group).await;
    let (s, v) =
        node_call(env, Method::POST, "join", None, Some(json!({"joinToken": token, "dataUrl": "http://127.0.0.1:1"})))
            .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["nodeId"].as_str().unwrap().to_string(), v["nodeCredential"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_and_node_credentials_are_checked_and_revocable() {
    let env = Env::start().await;
    let (group, _t) = cluster(&env).await;
    let token = join_token(&env, &group).await;
    let body = json!({"joinToken": token, "dataUrl": "http://127.0.0.1:1"});
    let (s, v) = node_call(&env, Method::POST, "join", None, Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let node_id = v["nodeId"].as_str().unwrap().to_string();
    let cred = v["nodeCredential"].as_str().unwrap().to_string();
    assert!(cred.starts_with(&format!("atrn_{node_id}_")));

    // Bad joins: each refused with its code, and no node appears.
    let cases = [
        ("spent token", body.clone(), StatusCode::UNAUTHORIZED, "INVALID_JOIN_TOKEN"),
        (
            "unknown token",
            json!({"joinToken": "atrj_0123456789abcdef01234567_x", "dataUrl": "http://h:1"}),
            StatusCode::UNAUTHORIZED,
            "INVALID_JOIN_TOKEN",
        ),
        (
            "not a join token",
            json!({"joinToken": "hello", "dataUrl": "http://h:1"}),
            StatusCode::UNAUTHORIZED,
            "INVALID_JOIN_TOKEN",
        ),
        ("no token", json!({"dataUrl": "http://h:1"}), StatusCode::BAD_REQUEST, "MISSING_ATTRIBUTE"),
        (
            "bad data URL",
            json!({"joinToken": join_token(&env, &group).await, "dataUrl": "ftp://h"}),
            StatusCode::BAD_REQUEST,
            "INVALID_ATTRIBUTE",
        ),
        (
            "unknown attribute",
            json!({"joinToken": "x", "dataUrl": "http://h:1", "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "INVALID_ATTRIBUTE",
        ),
    ];
    for (what, b, status, code) in cases {
        let (s, v) = node_call(&env, Method::POST, "join", None, Some(b)).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(v["errorCode"], code, "{what}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| d.len() > 20), "{what}: {v}");
    }
    let (_, nodes) =
        env.atlas(Method::GET, &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/nodes"), None).await;
    assert_eq!(nodes["totalCount"], 1, "{nodes}");
    assert_eq!(nodes["results"][0]["state"], "UNREPORTED");

    // The node reads its configuration; a wrong or garbled credential does not.
    let (s, cfg) = node_call(&env, Method::GET, "config?waitSecs=0", Some(&cred), None).await;
    assert_eq!(s, StatusCode::OK, "{cfg}");
    assert_eq!(cfg["nodeId"], node_id.as_str());
    assert_eq!(cfg["encryptionAtRest"]["authMode"], "SERVICE_PRINCIPAL");
    for bad in [None, Some("garbage"), Some(&format!("atrn_{node_id}_wrong")[..])] {
        let (s, v) = node_call(&env, Method::GET, "config?waitSecs=0", bad, None).await;
        assert_eq!((s, v["errorCode"].as_str()), (StatusCode::UNAUTHORIZED, Some("NODE_REVOKED")), "{bad:?}: {v}");
    }

    // Bad reports change nothing.
    for (what, b) in [
        ("unknown state", json!({"state": "HAPPY"})),
        ("no state", json!({"keyVersion": "v"})),
        ("bad time", json!({"state": "SERVING", "lastCheckAt": "yesterday"})),
        ("unknown attribute", json!({"state": "SERVING", "mood": "good"})),
        ("error not an object", json!({"state": "SERVING", "lastError": "oops"})),
    ] {
        let (s, v) = node_call(&env, Method::POST, "status", Some(&cred), Some(b)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        let (_, nodes) =
            env.atlas(Method::GET, &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/nodes"), None).await;
        assert_eq!(nodes["results"][0]["state"], "UNREPORTED", "{what}: the report was stored");
    }
    // A good report sets the node's state and, with every node serving, the cluster's IDLE.
    let (s, v) = node_call(
        &env,
        Method::POST,
        "status",
        Some(&cred),
        Some(json!({"state": "SERVING", "keyVersion": "abc", "via": "PUBLIC"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, c) = env
        .http
        .get(format!("{}/api/atlas/v2/groups/{group}/clusters/Cluster0", env.url()))
        .bearer_auth(&env.token)
        .header("Accept", CLUSTERS_ACCEPT)
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    let c: Value = c.json().await.unwrap();
    assert_eq!(c["stateName"], "IDLE", "{c}");
    let (s, _) = node_call(
        &env,
        Method::POST,
        "status",
        Some(&cred),
        Some(json!({"state": "SHUT_DOWN", "lastError": {"kind": "DENIED", "message": "403"}})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(env.event_types(&group).await.iter().any(|e| e == "ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID"));

    // Revoked: at once, on every endpoint.
    let (s, v) = env
        .atlas(Method::DELETE, &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/nodes/{node_id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    for (m, path, body) in [
        (Method::GET, "config?waitSecs=0", None),
        (Method::POST, "token", Some(json!({}))),
        (Method::POST, "status", Some(json!({"state": "SERVING"}))),
    ] {
        let (s, v) = node_call(&env, m, path, Some(&cred), body).await;
        assert_eq!((s, v["errorCode"].as_str()), (StatusCode::UNAUTHORIZED, Some("NODE_REVOKED")), "{path}: {v}");
    }
    let (s, v) = env
        .atlas(Method::DELETE, &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/nodes/{node_id}"), None)
        .await;
    assert_eq!((s, v["errorCode"].as_str()), (StatusCode::NOT_FOUND, Some("NODE_NOT_FOUND")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_long_poll_waits_and_wakes_and_tokens_work_in_key_vault() {
    let env = Env::start().await;
    let (group, t) = cluster(&env).await;
    let (_, cred) = join(&env, &group).await;
    let url = format!("{}/api/atrest/v1/node/config", env.url());
    let first = env.http.get(format!("{url}?waitSecs=0")).bearer_auth(&cred).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    // Nothing changes: 304 once the wait ends.
    let r = env
        .http
        .get(format!("{url}?waitSecs=1"))
        .bearer_auth(&cred)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    // A new data credential wakes a waiting poll (a functional check: well under the wait).
    let poll = {
        let (http, url, cred, etag) = (env.http.clone(), url.clone(), cred.clone(), etag.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http
                .get(format!("{url}?waitSecs=30"))
                .bearer_auth(&cred)
                .header("If-None-Match", &etag)
                .send()
                .await
                .unwrap();
            (r.status(), started.elapsed(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, v) = env
        .atlas(
            Method::POST,
            &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/dataCredentials"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (status, waited, cfg) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(waited < Duration::from_secs(10), "the change did not wake the poll: {waited:?}");
    assert_eq!(cfg["dataCredentials"].as_array().unwrap().len(), 1, "{cfg}");
    assert!(!cfg.to_string().contains(v["credential"].as_str().unwrap()), "the config holds a credential in clear");
    // Bad waits are refused.
    let r = env.http.get(format!("{url}?waitSecs=61")).bearer_auth(&cred).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The token is a Key Vault token in the customer's tenant: Key Vault accepts it.
    let (s, tok) = node_call(&env, Method::POST, "token", Some(&cred), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{tok}");
    assert_eq!(tok["authMode"], "SERVICE_PRINCIPAL");
    assert_eq!(tok["tenantId"], t.customer.tenant_id().to_string());
    let kv = env
        .az
        .call(
            Method::GET,
            &format!("https://{}.vault.azure.net/keys/cmk?api-version=7.5", t.vault),
            tok["accessToken"].as_str().unwrap(),
            None,
            "get key",
        )
        .await;
    assert!(kv.is_ok(), "Key Vault refused the node's token: {kv:?}");
    let (s, v) = node_call(&env, Method::POST, "token", Some(&cred), Some(json!({"authMode": "STATIC"}))).await;
    assert_eq!((s, v["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_ATTRIBUTE")), "{v}");

    // A cluster being deleted (its node is still active) takes no new node.
    let r = env
        .http
        .delete(format!("{}/api/atlas/v2/groups/{group}/clusters/Cluster0", env.url()))
        .bearer_auth(&env.token)
        .header("Accept", "application/vnd.atlas.2023-02-01+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
    let (s, v) = env
        .atlas(Method::POST, &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/joinTokens"), Some(json!({})))
        .await;
    assert_eq!((s, v["errorCode"].as_str()), (StatusCode::CONFLICT, Some("CLUSTER_DELETING")), "{v}");
}

async fn rotation_nonce(env: &Env, cred: &str) -> u64 {
    let (s, v) = node_call(env, Method::GET, "config?waitSecs=0", Some(cred), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["masterKeyRotationNonce"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_asks_for_its_own_master_key_rotation_and_bad_requests_change_nothing() {
    let env = Env::start().await;
    let (group, _t) = cluster(&env).await;
    let (node_id, cred) = join(&env, &group).await;
    assert_eq!(rotation_nonce(&env, &cred).await, 0);

    // Refused: no credential, someone else's, an attribute the route does not take.
    let other = format!("atrn_{node_id}_{}", "A".repeat(43));
    for (what, c, body, status, code) in [
        ("no credential", None, json!({}), StatusCode::UNAUTHORIZED, "NODE_REVOKED"),
        ("wrong credential", Some(other.as_str()), json!({}), StatusCode::UNAUTHORIZED, "NODE_REVOKED"),
        (
            "unknown attribute",
            Some(cred.as_str()),
            json!({"generation": 5}),
            StatusCode::BAD_REQUEST,
            "INVALID_ATTRIBUTE",
        ),
    ] {
        let (s, v) = node_call(&env, Method::POST, "rotateMasterKey", c, Some(body)).await;
        assert_eq!((s, v["errorCode"].as_str()), (status, Some(code)), "{what}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {v}");
    }
    assert_eq!(rotation_nonce(&env, &cred).await, 0, "a refused request asked for a rotation");

    // The node's own request: the same flag the operator route sets, in the configuration.
    let (s, v) = node_call(&env, Method::POST, "rotateMasterKey", Some(&cred), Some(json!({}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["masterKeyRotationNonce"], 1, "{v}");
    assert_eq!(rotation_nonce(&env, &cred).await, 1);
    let (s, v) = env
        .atlas(
            Method::POST,
            &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/nodes/{node_id}:rotateMasterKey"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(rotation_nonce(&env, &cred).await, 2);

    // A revoked node may not ask.
    let (s, _) = env
        .atlas(Method::DELETE, &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/nodes/{node_id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = node_call(&env, Method::POST, "rotateMasterKey", Some(&cred), Some(json!({}))).await;
    assert_eq!((s, v["errorCode"].as_str()), (StatusCode::UNAUTHORIZED, Some("NODE_REVOKED")), "{v}");
}
