//! A data node end to end, against the real emulator and a real control plane on 127.0.0.1:0:
//! the seeds' flow to a cluster, a node joining it, encrypted documents through the data API,
//! revocation → SHUT_DOWN → restore → SERVING, and the plaintext grep.

mod nodes;
#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use atrest_node::runtime::NodeState;
use atrest_node::server::EmbeddedNode;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Env;

use nodes::{Cluster, fast_checks as options_with_fast_checks, options, wait_state};

/// The seeds' flow, then a one-node cluster on the project's key.
async fn cluster(env: &Env) -> Cluster {
    nodes::cluster(env, "nodes", 1, false).await
}

async fn cluster_with(env: &Env, n: u32, unversioned: bool) -> Cluster {
    nodes::cluster(env, "nodes", n, unversioned).await
}

async fn join_token(env: &Env, c: &Cluster) -> String {
    nodes::join_token(env, &c.group, &c.name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_encrypted_data_shuts_down_on_revocation_and_comes_back() {
    let env = Env::start_with(options_with_fast_checks()).await;
    let c = cluster(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    let token = join_token(&env, &c).await;
    let node = EmbeddedNode::start(options(&env, &node_dir, Some(token.clone())), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let serving = wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    assert_eq!(serving.key_identifier.as_deref(), Some(c.tenant.unversioned_kid().as_str()));
    assert!(serving.key_version.is_some());

    let http = reqwest::Client::new();
    let doc = |id: &str| format!("{}/v1/collections/secrets/documents/{id}", node.url());
    let marker = "PLAINTEXT-MARKER-7f3a9c";
    let r = http.put(doc("a")).bearer_auth(&c.data_credential).json(&json!({"m": marker})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());

    // The join token was spent: a second node cannot use it.
    let other =
        EmbeddedNode::start(options(&env, &dir.path().join("other"), Some(token)), "127.0.0.1:0".parse().unwrap())
            .await;
    assert!(other.is_err(), "a spent join token joined a second node");

    // Revocation: the customer removes Key Vault Crypto User. Within the interval the node
    // drops its keys and refuses, with Azure's code and the fix.
    c.tenant.customer.delete_role_assignment(&c.crypto_assignment).await.unwrap();
    let down = wait_state(&node, NodeState::ShutDown, Duration::from_secs(15)).await;
    assert_eq!(down.last_error.as_ref().unwrap().kind, "DENIED", "{down:?}");
    let r = http.get(doc("a")).bearer_auth(&c.data_credential).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errorCode"], "NODE_SHUT_DOWN", "{v}");
    assert!(v["fix"].as_str().is_some_and(|f| f.contains("az ")), "the fix is an az command: {v}");

    // The control plane shows it.
    let (s, nodes) =
        env.atlas(Method::GET, &format!("/api/atrest/v1/groups/{}/clusters/{}/nodes", c.group, c.name), None).await;
    assert_eq!(s, StatusCode::OK, "{nodes}");
    let ok = env
        .wait_for(Duration::from_secs(10), || async {
            let (_, v) = env
                .atlas(Method::GET, &format!("/api/atrest/v1/groups/{}/clusters/{}/nodes", c.group, c.name), None)
                .await;
            v["results"][0]["state"] == "SHUT_DOWN"
        })
        .await;
    assert!(ok, "the nodes list never showed SHUT_DOWN");
    // The project's validity follows the node's report at once (no background revalidation
    // runs within this test: its interval is an hour, and reads do not revalidate).
    let valid = |want: bool| {
        let env = &env;
        let group = c.group.clone();
        async move {
            env.wait_for(Duration::from_secs(10), || async {
                let (_, v) =
                    env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"), None).await;
                v["azureKeyVault"]["valid"] == want
            })
            .await
        }
    };
    assert!(valid(false).await, "the project stayed valid after its node shut down");

    // Restored: it serves again by itself, with the same data.
    c.tenant
        .customer
        .assign_role(&c.tenant.sp, atrest_emulator::scenario::roles::KEY_VAULT_CRYPTO_USER, &c.tenant.vault_id)
        .await
        .unwrap();
    wait_state(&node, NodeState::Serving, Duration::from_secs(15)).await;
    let v: Value = http.get(doc("a")).bearer_auth(&c.data_credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"m": marker}));
    assert!(valid(true).await, "the project stayed invalid after its node served again");

    // Customer-key rotation: a new key version, PATCHed in. The node re-wraps its master key
    // (32 bytes; no page is rewritten) and reports the new version; disabling the old version
    // afterwards harms nothing.
    let old_version = serving.key_version.clone().unwrap();
    let new_kid = c.tenant.customer.create_key(&c.tenant.vault, "cmk", None).await.unwrap();
    let new_version = new_kid.rsplit('/').next().unwrap().to_string();
    assert_ne!(new_version, old_version);
    let mut block = c.tenant.ear_block(&c.role);
    block["keyIdentifier"] = json!(new_kid);
    let (s, v) = env.patch_ear(&c.group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.handle().gate().status().key_version.as_deref() != Some(new_version.as_str()) {
        assert!(tokio::time::Instant::now() < deadline, "no re-wrap: {:?}", node.handle().gate().status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.tenant
        .customer
        .update_key(&c.tenant.vault, "cmk", &old_version, json!({"attributes": {"enabled": false}}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node.handle().gate().status().state, NodeState::Serving, "disabling the old version harmed the node");

    // Master-key rotation on request: generation 2, same data.
    let id = node.handle().identity().node_id.clone();
    let (s, v) = env
        .atlas(
            Method::POST,
            &format!("/api/atrest/v1/groups/{}/clusters/{}/nodes/{id}:rotateMasterKey", c.group, c.name),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.handle().gate().status().master_key_generation != Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "no master-key rotation: {:?}", node.handle().gate().status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v: Value = http.get(doc("a")).bearer_auth(&c.data_credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"m": marker}));

    // Nothing on disk holds the marker in clear.
    node.shutdown().await;
    for entry in std::fs::read_dir(&node_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds the marker",
                path.display()
            );
        }
    }

    // A restart opens the same data with one decrypt.
    let again = EmbeddedNode::start(options(&env, &node_dir, None), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    wait_state(&again, NodeState::Serving, Duration::from_secs(20)).await;
    let url = format!("{}/v1/collections/secrets/documents/a", again.url());
    let v: Value = http.get(url).bearer_auth(&c.data_credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"m": marker}));
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_key_vault_degrades_but_serves_and_a_revoked_node_stops() {
    let env = Env::start_with(options_with_fast_checks()).await;
    let c = cluster(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let token = join_token(&env, &c).await;
    let mut node =
        EmbeddedNode::start(options(&env, &dir.path().join("n"), Some(token)), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    let http = reqwest::Client::new();
    let doc = format!("{}/v1/collections/c/documents/d", node.url());
    let r = http.put(&doc).bearer_auth(&c.data_credential).json(&json!(1)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Key Vault answers 503 to everything: not a denial. The node keeps its keys and serves.
    let fault = env
        .emulator_admin(
            Method::POST,
            "faults",
            Some(json!({"vault": c.tenant.vault, "kind": {"kind": "server_error", "status": 503}})),
        )
        .await;
    let degraded = wait_state(&node, NodeState::Degraded, Duration::from_secs(20)).await;
    assert_eq!(degraded.last_error.as_ref().unwrap().kind, "UNREACHABLE", "{degraded:?}");
    let r = http.get(&doc).bearer_auth(&c.data_credential).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a degraded node must keep serving");
    let ok = env
        .wait_for(Duration::from_secs(10), || async {
            let (_, v) = env
                .atlas(Method::GET, &format!("/api/atrest/v1/groups/{}/clusters/{}/nodes", c.group, c.name), None)
                .await;
            v["results"][0]["state"] == "DEGRADED"
        })
        .await;
    assert!(ok, "the control plane never saw DEGRADED");
    env.emulator_admin(Method::DELETE, &format!("faults/{}", fault["id"].as_str().unwrap()), None).await;
    wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    let types = env.event_types(&c.group).await;
    assert!(types.iter().any(|t| t == "ENCRYPTION_AT_REST_KMS_NETWORK_ACCESS_DENIED"), "{types:?}");

    // The operator revokes the node: it drops its keys and stops for good.
    let id = node.handle().identity().node_id.clone();
    let (s, v) = env
        .atlas(Method::DELETE, &format!("/api/atrest/v1/groups/{}/clusters/{}/nodes/{id}", c.group, c.name), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let stopped = tokio::time::timeout(Duration::from_secs(40), node.stopped()).await.expect("the node did not stop");
    assert!(matches!(stopped, atrest_node::NodeError::Revoked(_)), "{stopped}");
    let r = http.get(&doc).bearer_auth(&c.data_credential).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_the_control_plane_is_down_stays_locked_and_says_why() {
    let env = Env::start_with(options_with_fast_checks()).await;
    let c = cluster(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("n");
    let token = join_token(&env, &c).await;
    let node =
        EmbeddedNode::start(options(&env, &node_dir, Some(token)), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    node.shutdown().await;
    let opts = options(&env, &node_dir, None);
    let support::Env { control, .. } = env;
    control.shutdown().await;

    // Joined before, so it starts; without the control plane it gets no token, hence no key.
    let node = EmbeddedNode::start(opts, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = node.handle().gate().status();
    assert_eq!(s.state, NodeState::Locked, "{s:?}");
    let e = s.last_error.expect("a locked node says why");
    assert_eq!(e.kind, "UNREACHABLE", "{e:?}");
    assert!(e.message.contains("control plane"), "{e:?}");
    let r = reqwest::get(format!("{}/healthz", node.url())).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_current_version_behind_an_unversioned_identifier_reaches_every_node_after_revalidation() {
    let env = Env::start_with(options_with_fast_checks()).await;
    let c = cluster_with(&env, 3, true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let token = join_token(&env, &c).await;
        let opts = options(&env, &dir.path().join(format!("n{i}")), Some(token));
        nodes.push(EmbeddedNode::start(opts, "127.0.0.1:0".parse().unwrap()).await.unwrap());
    }
    let old_version = c.tenant.kid.rsplit('/').next().unwrap().to_string();
    for n in &nodes {
        let s = wait_state(n, NodeState::Serving, Duration::from_secs(20)).await;
        assert_eq!(s.key_version.as_deref(), Some(old_version.as_str()), "{s:?}");
    }
    let http = reqwest::Client::new();
    let doc = |n: &EmbeddedNode| format!("{}/v1/collections/c/documents/d", n.url());
    for n in &nodes {
        let r = http.put(doc(n)).bearer_auth(&c.data_credential).json(&json!({"v": 1})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    // The customer rotates the key in Key Vault (a new version); the configuration does not
    // change. Several checks later the nodes still use the old version: a check is one decrypt
    // and asks Key Vault nothing else.
    let new_kid = c.tenant.customer.create_key(&c.tenant.vault, "cmk", None).await.unwrap();
    let new_version = new_kid.rsplit('/').next().unwrap().to_string();
    assert_ne!(new_version, old_version);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in &nodes {
        assert_eq!(n.handle().gate().status().key_version.as_deref(), Some(old_version.as_str()));
    }

    // The control plane notices when it revalidates ("Try Again" here; the background job
    // runs the same): the configuration names the new current version, and every node re-wraps.
    let (s, v) = env
        .atlas(
            Method::POST,
            &format!("/api/atlas/v2/groups/{}/encryptionAtRest/azureKeyVault:revalidate", c.group),
            None,
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        while n.handle().gate().status().key_version.as_deref() != Some(new_version.as_str()) {
            assert!(tokio::time::Instant::now() < deadline, "no re-wrap: {:?}", n.handle().gate().status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ok = env
        .wait_for(Duration::from_secs(10), || async {
            let (_, v) = env
                .atlas(Method::GET, &format!("/api/atrest/v1/groups/{}/clusters/{}/nodes", c.group, c.name), None)
                .await;
            v["results"]
                .as_array()
                .is_some_and(|r| r.len() == 3 && r.iter().all(|n| n["keyVersion"] == new_version.as_str()))
        })
        .await;
    assert!(ok, "the nodes list never showed the new version on every node");

    // The old version disabled: the nodes serve on, and a restart opens with the new one.
    c.tenant
        .customer
        .update_key(&c.tenant.vault, "cmk", &old_version, json!({"attributes": {"enabled": false}}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in &nodes {
        assert_eq!(n.handle().gate().status().state, NodeState::Serving, "disabling the old version harmed a node");
    }
    let first = nodes.remove(0);
    first.shutdown().await;
    let again =
        EmbeddedNode::start(options(&env, &dir.path().join("n0"), None), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let s = wait_state(&again, NodeState::Serving, Duration::from_secs(20)).await;
    assert_eq!(s.key_version.as_deref(), Some(new_version.as_str()));
    let v: Value = http.get(doc(&again)).bearer_auth(&c.data_credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"v": 1}));
    again.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_version_older_than_the_threshold_raises_the_rotation_alert_once_and_a_new_one_clears_it() {
    let env = Env::start_with(options_with_fast_checks()).await;
    let c = cluster(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let token = join_token(&env, &c).await;
    let node = EmbeddedNode::start(options(&env, &dir.path().join("n"), Some(token)), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    let count = |types: &[String], t: &str| types.iter().filter(|x| *x == t).count();
    let key_name = c.tenant.kid.rsplit('/').nth(1).unwrap().to_string();
    let reports = |n: u64| async move {
        // A report per check (1 s): wait for a few to pass.
        tokio::time::sleep(Duration::from_secs(n)).await;
    };
    reports(3).await;
    let types = env.event_types(&c.group).await;
    assert_eq!(count(&types, "AZURE_ENCRYPTION_KEY_NEEDS_ROTATION"), 0, "a key made today: {types:?}");
    assert_eq!(count(&types, "AZURE_ENCRYPTION_KEY_ROTATED"), 0, "nothing to clear: {types:?}");

    // A new version, backdated 100 days in the emulator, put in use: the alert is raised once,
    // naming the version and its age.
    let old_kid = c.tenant.customer.create_key(&c.tenant.vault, &key_name, None).await.unwrap();
    let old_version = old_kid.rsplit('/').next().unwrap().to_string();
    env.emulator_admin(
        Method::POST,
        &format!("vaults/{}/keys/{key_name}/versions/{old_version}/backdate", c.tenant.vault),
        Some(json!({"days": 100})),
    )
    .await;
    let (s, v) = env.patch_ear(&c.group, json!({"keyIdentifier": old_kid})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let raised = env
        .wait_for(Duration::from_secs(20), || async {
            count(&env.event_types(&c.group).await, "AZURE_ENCRYPTION_KEY_NEEDS_ROTATION") == 1
        })
        .await;
    assert!(raised, "no AZURE_ENCRYPTION_KEY_NEEDS_ROTATION: {:?}", env.event_types(&c.group).await);
    assert_eq!(node.handle().gate().status().key_version.as_deref(), Some(old_version.as_str()));
    let (_, events) = env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{}/events", c.group), None).await;
    let alert = events["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["eventTypeName"] == "AZURE_ENCRYPTION_KEY_NEEDS_ROTATION")
        .unwrap()
        .to_string();
    assert!(
        alert.contains(&old_version) && alert.contains("100") && alert.contains("az keyvault key rotate"),
        "{alert}"
    );
    reports(3).await;
    assert_eq!(count(&env.event_types(&c.group).await, "AZURE_ENCRYPTION_KEY_NEEDS_ROTATION"), 1, "raised once");

    // A new version in use clears it, once.
    let new_kid = c.tenant.customer.create_key(&c.tenant.vault, &key_name, None).await.unwrap();
    let (s, v) = env.patch_ear(&c.group, json!({"keyIdentifier": new_kid})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cleared = env
        .wait_for(Duration::from_secs(20), || async {
            count(&env.event_types(&c.group).await, "AZURE_ENCRYPTION_KEY_ROTATED") == 1
        })
        .await;
    assert!(cleared, "no AZURE_ENCRYPTION_KEY_ROTATED: {:?}", env.event_types(&c.group).await);
    reports(3).await;
    let types = env.event_types(&c.group).await;
    assert_eq!(
        (count(&types, "AZURE_ENCRYPTION_KEY_NEEDS_ROTATION"), count(&types, "AZURE_ENCRYPTION_KEY_ROTATED")),
        (1, 1),
        "{types:?}"
    );
    node.shutdown().await;
}
