//! What the node tests share: a node's options against a test [`Env`], waiting for its state or
//! for a JSON answer, the operator's join tokens and data credentials, and the seeds'
//! private-networking steps. Each test file declares `mod support;` (the control plane's test
//! support) before `mod nodes;`.

#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::time::Duration;

use atrest_node::runtime::{NodeOptions, NodeState, node_retry};
use atrest_node::server::EmbeddedNode;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::{Env, Options};

/// Control-plane options with the nodes checking every second.
pub fn fast_checks() -> Options {
    Options { node_check_interval_secs: 1, ..Options::default() }
}

/// A node in `dir` against `env`'s control plane and emulator; `token` to join, `None` when
/// `dir` holds a joined node.
pub fn options(env: &Env, dir: &Path, token: Option<String>) -> NodeOptions {
    NodeOptions {
        data_dir: dir.to_path_buf(),
        control_plane: env.url().to_string(),
        control_plane_ca_pem: None,
        join_token: token.map(SecretString::from),
        data_url: String::new(),
        azure: atrest_azure::TransportConfig::with_override(env.emu.addr(), env.emu.ca_pem()),
        retry: node_retry(),
    }
}

/// Waits until `node` is in `want` (polling its published status every 50 ms), up to `limit`.
pub async fn wait_state(node: &EmbeddedNode, want: NodeState, limit: Duration) -> atrest_node::Status {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = node.handle().gate().status();
        if s.state == want {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "not {want:?} within {limit:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `path` (Atlas auth) every 100 ms until `ok` holds, up to 20 s; `what` names it.
pub async fn wait_json<F: Fn(&Value) -> bool>(env: &Env, path: &str, what: &str, ok: F) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = env.atlas(Method::GET, path, None).await;
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A join token for `cluster` (Project Owner).
pub async fn join_token(env: &Env, group: &str, cluster: &str) -> String {
    let (s, v) = env
        .atlas(Method::POST, &format!("/api/atrest/v1/groups/{group}/clusters/{cluster}/joinTokens"), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// A data credential for `cluster`.
pub async fn data_credential(env: &Env, group: &str, cluster: &str) -> String {
    let (s, v) = env
        .atlas(
            Method::POST,
            &format!("/api/atrest/v1/groups/{group}/clusters/{cluster}/dataCredentials"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["credential"].as_str().unwrap().to_string()
}

/// An EAR private endpoint requested through the Atlas API and waiting for Azure.
pub struct RequestedEndpoint {
    pub id: String,
    /// Its Atlas path, `/api/atlas/v2/groups/{g}/encryptionAtRest/AZURE/privateEndpoints/{id}`.
    pub path: String,
    /// The connection the vault's owner approves in Azure.
    pub connection: String,
}

/// `POST .../encryptionAtRest/AZURE/privateEndpoints`, waited until `PENDING_ACCEPTANCE`.
pub async fn request_private_endpoint(env: &Env, group: &str) -> RequestedEndpoint {
    let (s, ep) = env
        .atlas(
            Method::POST,
            &format!("/api/atlas/v2/groups/{group}/encryptionAtRest/AZURE/privateEndpoints"),
            Some(json!({"regionName": "US_EAST_2"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{ep}");
    let id = ep["id"].as_str().unwrap().to_string();
    let path = format!("/api/atlas/v2/groups/{group}/encryptionAtRest/AZURE/privateEndpoints/{id}");
    let ep = wait_json(env, &path, "PENDING_ACCEPTANCE", |v| v["status"] == "PENDING_ACCEPTANCE").await;
    let connection = ep["privateEndpointConnectionName"].as_str().unwrap().to_string();
    RequestedEndpoint { id, path, connection }
}

/// The platform's side of `ep` in Azure: the emulator's listener for `vault`, whose connection
/// waits for the owner's approval. Returns the emulator's answer (`address`, `connectionStatus`).
pub async fn create_azure_endpoint(env: &Env, ep: &RequestedEndpoint, vault: &str) -> Value {
    env.emulator_admin(
        Method::POST,
        "private-endpoints",
        Some(json!({"vault": vault, "connectionName": ep.connection})),
    )
    .await
}

/// `PATCH /api/atrest/v1/.../privateEndpoints/{id}` `{"privateAddress": address}`.
pub async fn record_private_address(
    env: &Env,
    group: &str,
    ep: &RequestedEndpoint,
    address: &Value,
) -> (StatusCode, Value) {
    env.atlas(
        Method::PATCH,
        &format!("/api/atrest/v1/groups/{group}/encryptionAtRest/AZURE/privateEndpoints/{}", ep.id),
        Some(json!({"privateAddress": address})),
    )
    .await
}

/// A project through the seeds' flow (register, grant Reader + Key Vault Crypto User, PATCH)
/// with cluster `Cluster0` on its key and a data credential.
pub struct Cluster {
    pub group: String,
    pub role: String,
    pub name: String,
    pub tenant: crate::support::Tenant,
    /// The Key Vault Crypto User assignment: delete it to revoke.
    pub crypto_assignment: String,
    pub data_credential: String,
}

/// [`Cluster`] with `nodes` nodes in project `project`; `unversioned`: the key identifier is
/// PATCHed without its version (the key's current version is used, whichever it is).
pub async fn cluster(env: &Env, project: &str, nodes: u32, unversioned: bool) -> Cluster {
    let group = env.project(project).await;
    let tenant = env.tenant(atrest_emulator::scenario::VaultAuth::Rbac).await;
    let role = env.register(&group, &tenant).await;
    let (_, crypto_assignment) = tenant.grant_rbac().await;
    let mut block = tenant.ear_block(&role);
    if unversioned {
        block["keyIdentifier"] = json!(tenant.unversioned_kid());
    }
    let (s, v) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.create_cluster(&group, "Cluster0", nodes).await;
    let data_credential = data_credential(env, &group, "Cluster0").await;
    Cluster { group, role, name: "Cluster0".into(), tenant, crypto_assignment, data_credential }
}
