//! Private networking through the data nodes (issue 8 §6), against the real emulator and a
//! real control plane on 127.0.0.1:0.

mod nodes;
#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use atrest_node::runtime::NodeState;
use atrest_node::server::EmbeddedNode;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Env, Options};

use nodes::{Cluster, fast_checks as options_with_fast_checks, options, wait_json, wait_state};

/// The seeds' flow (register, grant, PATCH), then a one-node cluster on the project's key.
async fn cluster(env: &Env) -> Cluster {
    nodes::cluster(env, "nodes", 1, false).await
}

async fn join_token(env: &Env, c: &Cluster) -> String {
    nodes::join_token(env, &c.group, &c.name).await
}

/// The seeds' private-networking flow: the EAR private endpoint created with the Atlas API,
/// its connection approved by the customer in Azure (emulator ARM), public access to the vault
/// disabled, `requirePrivateNetworking: true` accepted as pending, then the node validates over
/// the private endpoint and the project becomes valid, the endpoint ACTIVE, the cluster IDLE.
/// The customer rejecting the connection shuts the node down with the reason and the fix;
/// approving it again brings it back with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_networking_validates_through_the_nodes_private_endpoint() {
    let env = Env::start_with(options_with_fast_checks()).await;
    let c = cluster(&env).await;
    let g = c.group.clone();

    // requirePrivateNetworking: accepted as pending.
    let (s, v) = env.patch_ear(&g, json!({"requirePrivateNetworking": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], false, "{v}");
    assert_eq!(env.status(&g).await["state"], "PENDING");

    // The EAR private endpoint, through the Atlas API; it waits for the customer's approval.
    let requested = nodes::request_private_endpoint(&env, &g).await;
    let (ep_path, connection) = (requested.path.clone(), requested.connection.clone());

    // The platform's side: the endpoint in Azure (the emulator's listener, manual approval),
    // and its address recorded for the nodes.
    let pe = nodes::create_azure_endpoint(&env, &requested, &c.tenant.vault).await;
    assert_eq!(pe["connectionStatus"], "Pending", "{pe}");
    let (s, v) = nodes::record_private_address(&env, &g, &requested, &json!("nowhere")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["errorCode"], "INVALID_ATTRIBUTE", "{v}");
    let (s, v) = nodes::record_private_address(&env, &g, &requested, &pe["address"]).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The customer closes the vault's public access.
    c.tenant.customer.update_vault(&c.tenant.vault_id, json!({"publicNetworkAccess": "Disabled"})).await.unwrap();

    // A node: the connection is not approved yet, so the vault refuses it (Azure's rule).
    let dir = tempfile::tempdir().unwrap();
    let token = join_token(&env, &c).await;
    let node = EmbeddedNode::start(options(&env, &dir.path().join("n1"), Some(token)), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let s = node.handle().gate().status();
        if s.last_error.as_ref().is_some_and(|e| e.azure_code.as_deref() == Some("ForbiddenByConnection")) {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused by the vault: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!refused.state.serves(), "{refused:?}");
    assert_eq!(refused.via, "PRIVATE_ENDPOINT");
    let v = wait_json(&env, &ep_path, "FAILED", |v| v["status"] == "FAILED").await;
    assert!(v["errorMessage"].as_str().unwrap().contains(&connection), "{v}");

    // The customer approves the connection in Azure: the node unlocks through it.
    let approved =
        c.tenant.customer.set_private_endpoint_connection(&c.tenant.vault_id, &connection, "Approved").await.unwrap();
    assert_eq!(approved["properties"]["privateLinkServiceConnectionState"]["status"], "Approved");
    let serving = wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    assert_eq!(serving.via, "PRIVATE_ENDPOINT");
    wait_json(&env, &ep_path, "ACTIVE", |v| v["status"] == "ACTIVE").await;
    let st =
        wait_json(&env, &format!("/api/atrest/v1/groups/{g}/encryptionAtRest/azureKeyVault/status"), "valid", |v| {
            v["valid"] == true
        })
        .await;
    assert_eq!(st["state"], "VALID", "{st}");
    assert_eq!(env.get_ear(&g).await["azureKeyVault"]["valid"], true);
    let idle = env
        .wait_for(Duration::from_secs(20), || async {
            let r = env
                .http
                .get(format!("{}/api/atlas/v2/groups/{g}/clusters/Cluster0", env.url()))
                .bearer_auth(&env.token)
                .header("Accept", support::CLUSTERS_ACCEPT)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["stateName"] == "IDLE"
        })
        .await;
    assert!(idle, "the cluster never became IDLE");
    assert!(env.event_types(&g).await.iter().any(|t| t == "ENCRYPTION_AT_REST_CONFIG_IS_VALID"));

    let http = reqwest::Client::new();
    let doc = format!("{}/v1/collections/c/documents/a", node.url());
    let r = http.put(&doc).bearer_auth(&c.data_credential).json(&json!({"x": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The same call over the public listener is refused with Azure's error.
    let vault_token = env.az.token(&c.tenant.customer.admin, "https://vault.azure.net/.default").await.unwrap();
    let public = env
        .az
        .http
        .get(format!("https://{}.vault.azure.net/keys?api-version=7.5", c.tenant.vault))
        .bearer_auth(&vault_token)
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::FORBIDDEN);
    let v: Value = public.json().await.unwrap();
    assert_eq!(v["error"]["innererror"]["code"], "ForbiddenByConnection", "{v}");

    // The customer rejects the connection: the node shuts down, says why and how to fix it.
    c.tenant.customer.set_private_endpoint_connection(&c.tenant.vault_id, &connection, "Rejected").await.unwrap();
    let down = wait_state(&node, NodeState::ShutDown, Duration::from_secs(15)).await;
    let err = down.last_error.unwrap();
    assert_eq!(err.kind, "DENIED");
    assert_eq!(err.azure_code.as_deref(), Some("ForbiddenByConnection"));
    let r = http.get(&doc).bearer_auth(&c.data_credential).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errorCode"], "NODE_SHUT_DOWN", "{v}");
    assert!(v["fix"].as_str().is_some(), "{v}");
    wait_json(&env, &format!("/api/atrest/v1/groups/{g}/encryptionAtRest/azureKeyVault/status"), "invalid", |v| {
        v["valid"] == false
    })
    .await;
    wait_json(&env, &ep_path, "FAILED", |v| v["status"] == "FAILED").await;

    // Approved again: back, with the data.
    c.tenant.customer.set_private_endpoint_connection(&c.tenant.vault_id, &connection, "Approved").await.unwrap();
    wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    let v: Value = http.get(&doc).bearer_auth(&c.data_credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"x": 1}));
    wait_json(&env, &format!("/api/atrest/v1/groups/{g}/encryptionAtRest/azureKeyVault/status"), "valid again", |v| {
        v["valid"] == true
    })
    .await;

    // The customer deletes the connection: disconnected for good, the node shuts down.
    c.tenant.customer.delete_private_endpoint_connection(&c.tenant.vault_id, &connection).await.unwrap();
    let down = wait_state(&node, NodeState::ShutDown, Duration::from_secs(15)).await;
    assert_eq!(down.last_error.unwrap().azure_code.as_deref(), Some("ForbiddenByConnection"));
    node.shutdown().await;
}

/// The key binding (confused-deputy guard) on the node-report path: under private networking
/// only the nodes can read the key's tags, so they enforce `atrest-project=<groupId>` and the
/// control plane flags the project from their reports with the PATCH path's code. A new key
/// without the tag, then one tagged for another project, is refused (the project `valid:
/// false` with ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT, the event, the node's error with the
/// `az` fix) while the node keeps serving under the key its data is already wrapped under;
/// tagged for this project, the node re-wraps to it and the project is valid again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_private_networking_the_nodes_refuse_a_key_not_bound_to_the_project() {
    let env = Env::start_with(Options { require_key_binding: true, ..options_with_fast_checks() }).await;
    let g = env.project("bound").await;
    let tenant = env.tenant(atrest_emulator::scenario::VaultAuth::Rbac).await;
    let role = env.register(&g, &tenant).await;
    let (_, crypto_assignment) = tenant.grant_rbac().await;
    let tag = "atrest-project";
    let bound_kid = tenant.customer.create_key(&tenant.vault, "bound", Some(json!({tag: g}))).await.unwrap();
    let mut block = tenant.ear_block(&role);
    block["keyIdentifier"] = json!(bound_kid);
    let (s, v) = env.patch_ear(&g, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.create_cluster(&g, "Cluster0", 1).await;
    let data_credential = nodes::data_credential(&env, &g, "Cluster0").await;
    let c = Cluster { group: g.clone(), role, name: "Cluster0".into(), tenant, crypto_assignment, data_credential };

    // Private networking as the seeds describe it, approved up front.
    let (s, v) = env.patch_ear(&g, json!({"requirePrivateNetworking": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let requested = nodes::request_private_endpoint(&env, &g).await;
    let connection = requested.connection.clone();
    let pe = nodes::create_azure_endpoint(&env, &requested, &c.tenant.vault).await;
    let (s, v) = nodes::record_private_address(&env, &g, &requested, &pe["address"]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    c.tenant.customer.set_private_endpoint_connection(&c.tenant.vault_id, &connection, "Approved").await.unwrap();
    // The second key, made while the customer still reaches the vault publicly.
    let unbound_kid = c.tenant.customer.create_key(&c.tenant.vault, "unbound", None).await.unwrap();
    c.tenant.customer.update_vault(&c.tenant.vault_id, json!({"publicNetworkAccess": "Disabled"})).await.unwrap();
    // The customer's later tag edits: public access opened for the edit and closed again (the
    // nodes go through the private endpoint either way).
    let set_tag = |value: String| {
        let (c, unbound_kid) = (&c, &unbound_kid);
        async move {
            let version = unbound_kid.rsplit('/').next().unwrap().to_string();
            c.tenant
                .customer
                .update_vault(&c.tenant.vault_id, json!({"publicNetworkAccess": "Enabled"}))
                .await
                .unwrap();
            c.tenant
                .customer
                .update_key(&c.tenant.vault, "unbound", &version, json!({"tags": {"atrest-project": value}}))
                .await
                .unwrap();
            c.tenant
                .customer
                .update_vault(&c.tenant.vault_id, json!({"publicNetworkAccess": "Disabled"}))
                .await
                .unwrap();
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let token = join_token(&env, &c).await;
    let node = EmbeddedNode::start(options(&env, &dir.path().join("n1"), Some(token)), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let serving = wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    assert_eq!(serving.via, "PRIVATE_ENDPOINT");
    let bound_version = bound_kid.rsplit('/').next().unwrap().to_string();
    assert_eq!(serving.key_version.as_deref(), Some(bound_version.as_str()));
    let status_path = format!("/api/atrest/v1/groups/{g}/encryptionAtRest/azureKeyVault/status");
    wait_json(&env, &status_path, "valid", |v| v["valid"] == true).await;
    let http = reqwest::Client::new();
    let doc = format!("{}/v1/collections/c/documents/a", node.url());
    let r = http.put(&doc).bearer_auth(&c.data_credential).json(&json!({"x": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A new key without the tag: the PATCH is pending (the control plane cannot read the
    // key), the node refuses it and the project becomes invalid with the binding code.
    let (s, v) = env.patch_ear(&g, json!({"keyIdentifier": unbound_kid})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let refused = |node: &EmbeddedNode, needle: &str| {
        let s = node.handle().gate().status();
        let e = s.last_error.clone();
        e.filter(|e| {
            e.azure_code.as_deref() == Some("ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT") && e.message.contains(needle)
        })
        .map(|e| (s, e))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (s, err) = loop {
        if let Some(found) = refused(&node, &format!("has no tag {tag}")) {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never refused the untagged key: {:?}",
            node.handle().gate().status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(err.kind, "DENIED");
    let fix = err.fix.as_deref().unwrap();
    assert!(fix.starts_with("az keyvault key set-attributes") && fix.contains(&format!("--tags {tag}={g}")), "{fix}");
    // Still serving under the key its master key is wrapped under: nothing re-wrapped.
    assert_eq!(s.state, NodeState::Serving, "{s:?}");
    assert_eq!(s.key_version.as_deref(), Some(bound_version.as_str()), "{s:?}");
    let v: Value = http.get(&doc).bearer_auth(&c.data_credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"x": 1}));
    let st = wait_json(&env, &status_path, "invalid", |v| v["valid"] == false && v["state"] == "INVALID").await;
    let detail = st["detail"].as_str().unwrap();
    assert!(detail.starts_with("ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT"), "{st}");
    assert!(detail.contains("az keyvault key set-attributes"), "{st}");
    assert_eq!(env.get_ear(&g).await["azureKeyVault"]["valid"], false);
    let (_, events) = env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{g}/events"), None).await;
    let flagged = events["results"].as_array().unwrap().iter().any(|e| {
        e["eventTypeName"] == "ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID"
            && e.to_string().contains("ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT")
    });
    assert!(flagged, "no CONFIG_NO_LONGER_VALID event naming the binding: {events}");
    let listed =
        wait_json(&env, &format!("/api/atrest/v1/groups/{g}/clusters/Cluster0/nodes"), "the node's error", |v| {
            v["results"][0]["lastError"]["azureCode"] == "ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT"
        })
        .await;
    assert_eq!(listed["results"][0]["state"], "SERVING", "{listed}");

    // Tagged for another project: refused the same way, saying whose it is.
    let unbound_version = unbound_kid.rsplit('/').next().unwrap().to_string();
    let other = "0123456789abcdef01234567";
    set_tag(other.to_string()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while refused(&node, &format!("carries {tag}={other}")).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key of another project was not refused: {:?}",
            node.handle().gate().status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.status(&g).await["valid"], false);
    assert_eq!(node.handle().gate().status().key_version.as_deref(), Some(bound_version.as_str()));

    // Tagged for this project: the node re-wraps to it and the project is valid again.
    set_tag(g.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.handle().gate().status().key_version.as_deref() != Some(unbound_version.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-wrap to the bound key: {:?}",
            node.handle().gate().status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = wait_json(&env, &status_path, "valid again", |v| v["valid"] == true).await;
    assert_eq!(st["state"], "VALID", "{st}");
    assert!(env.event_types(&g).await.iter().any(|t| t == "ENCRYPTION_AT_REST_CONFIG_IS_VALID"));
    let v: Value = http.get(&doc).bearer_auth(&c.data_credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"x": 1}));
    node.shutdown().await;
}
