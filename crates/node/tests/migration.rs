//! Static credentials → roleId with no downtime (issue 8 §7), under write load, against the
//! real emulator and a real control plane on 127.0.0.1:0: a project on the legacy static
//! credentials (the customer's own app and secret) with a cluster of nodes serving; a client
//! writes and reads back a document every ~10 ms for the whole migration; the operator
//! registers the platform's service principal and PATCHes `roleId`. Afterwards: 0 errors, every
//! acknowledged write readable, and the nodes get their tokens on the roleId path (they report
//! `SERVICE_PRINCIPAL`, the store holds no secret, and removing the legacy app's grant changes
//! nothing). Without private networking the PATCH validates at once (and the way back, roleId →
//! static, is validated the same way: refused without a grant, followed by the nodes with one);
//! with it the role waits in `pendingRoleId` until every node validated it, and the static path
//! stays in force until then. A crash during the switch is covered by
//! crates/cli/tests/node_crash.rs (failpoint `node-auth-mode-switched`).

mod nodes;
#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atrest_emulator::scenario::{VaultAuth, roles};
use atrest_node::runtime::NodeState;
use atrest_node::server::EmbeddedNode;
use atrest_store::{AzureCredentials, GroupId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Env, Tenant};

/// A project on the legacy static credentials, with a cluster on its key.
struct Project {
    group: String,
    tenant: Tenant,
    /// The legacy app's Key Vault Crypto User assignment on the vault.
    legacy_crypto: String,
    /// The legacy app's service principal, id and secret.
    legacy_sp: String,
    legacy_app_id: String,
    legacy_secret: String,
    data_credential: String,
}

/// The customer's own app with a secret, granted Reader and Key Vault Crypto User (the legacy
/// static credentials); the project PATCHed to them (validated by the control plane), then a
/// cluster of `nodes` nodes on the project's key and a data credential.
async fn static_project(env: &Env, nodes: u32) -> Project {
    let group = env.project("migrate").await;
    let tenant = env.tenant(VaultAuth::Rbac).await;
    let app = env
        .az
        .register_app(
            &env.emu.info().bootstrap,
            json!({"home_tenant_id": tenant.customer.tenant_id(), "display_name": "legacy", "generate_secret": true, "create_service_principal": true}),
        )
        .await
        .unwrap();
    let sp = app["service_principal_id"].as_str().unwrap();
    tenant.customer.assign_role(sp, roles::READER, &tenant.vault_id).await.unwrap();
    let legacy_crypto = tenant.customer.assign_role(sp, roles::KEY_VAULT_CRYPTO_USER, &tenant.vault_id).await.unwrap();
    let (s, v) = env
        .patch_ear(
            &group,
            json!({
                "enabled": true,
                "clientID": app["app_id"],
                "tenantID": tenant.customer.tenant_id(),
                "secret": app["client_secret"],
                "subscriptionID": tenant.customer.subscription_id(),
                "resourceGroupName": tenant.rg,
                "keyVaultName": tenant.vault,
                "keyIdentifier": tenant.kid,
                "azureEnvironment": "AZURE",
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.status(&group).await["credentialMode"], "STATIC_CREDENTIALS");
    env.create_cluster(&group, "Cluster0", nodes).await;
    let data_credential = nodes::data_credential(env, &group, "Cluster0").await;
    Project {
        group,
        tenant,
        legacy_crypto,
        legacy_sp: sp.to_string(),
        legacy_app_id: app["app_id"].as_str().unwrap().to_string(),
        legacy_secret: app["client_secret"].as_str().unwrap().to_string(),
        data_credential,
    }
}

/// `n` nodes joined to Cluster0, each serving.
async fn start_nodes(env: &Env, p: &Project, dir: &std::path::Path, n: usize) -> Vec<EmbeddedNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let token = nodes::join_token(env, &p.group, "Cluster0").await;
        let opts = nodes::options(env, &dir.join(format!("n{i}")), Some(token));
        nodes.push(EmbeddedNode::start(opts, "127.0.0.1:0".parse().unwrap()).await.unwrap());
    }
    for node in &nodes {
        nodes::wait_state(node, NodeState::Serving, Duration::from_secs(30)).await;
    }
    nodes
}

/// Waits until every node reports `mode` and serves with no error.
async fn wait_auth_mode(nodes: &[EmbeddedNode], mode: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for node in nodes {
        loop {
            let s = node.handle().gate().status();
            if s.state == NodeState::Serving && s.auth_mode.as_deref() == Some(mode) && s.last_error.is_none() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "a node never checked with {mode}: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The client under load: a document written every ~10 ms, each to the next node in turn and
/// read back from it at once. Every failure is recorded with what failed.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Outcome>,
}

/// The acknowledged writes (URL, value) and the failures.
type Outcome = (Vec<(String, u64)>, Vec<String>);

fn start_load(urls: Vec<String>, credential: String) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let mut acked = Vec::new();
        let mut errors = Vec::new();
        let mut i = 0u64;
        while !flag.load(Ordering::Relaxed) {
            let url = format!("{}/v1/collections/load/documents/d{i}", urls[i as usize % urls.len()]);
            match http.put(&url).bearer_auth(&credential).json(&json!({"i": i})).send().await {
                Ok(r) if r.status() == StatusCode::OK => {
                    acked.push((url.clone(), i));
                    match http.get(&url).bearer_auth(&credential).send().await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            if v != json!({"i": i}) {
                                errors.push(format!("read of {url} gave {v}"));
                            }
                        }
                        Ok(r) => {
                            errors.push(format!("read of {url}: {} {}", r.status(), r.text().await.unwrap_or_default()))
                        }
                        Err(e) => errors.push(format!("read of {url}: {e}")),
                    }
                }
                Ok(r) => errors.push(format!("write of {url}: {} {}", r.status(), r.text().await.unwrap_or_default())),
                Err(e) => errors.push(format!("write of {url}: {e}")),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (acked, errors)
    });
    Load { stop, task }
}

impl Load {
    /// Stops the client; checks that nothing failed and that every acknowledged write reads
    /// back. Returns how many writes were acknowledged.
    async fn finish(self, credential: &str) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (acked, errors) = self.task.await.unwrap();
        assert!(errors.is_empty(), "{} errors under load during the migration: {errors:#?}", errors.len());
        let http = reqwest::Client::new();
        for (url, i) in &acked {
            let r = http.get(url).bearer_auth(credential).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "acknowledged write {url} lost");
            assert_eq!(r.json::<Value>().await.unwrap(), json!({"i": i}));
        }
        acked.len()
    }
}

async fn stored_credentials(env: &Env, group: &str) -> (AzureCredentials, Option<String>) {
    let stored =
        env.control.state().store.get_ear_config(&GroupId::parse(group).unwrap()).await.unwrap().expect("configured");
    (stored.azure.credentials, stored.azure.pending_role_id.map(|r| r.as_str().to_string()))
}

/// After the migration the legacy app loses its Key Vault grant: nodes on the roleId path do
/// not notice (several checks later they still serve with no error); a node still on the
/// static path would be refused by Key Vault (ForbiddenByRbac) and shut down.
async fn legacy_grant_removed_changes_nothing(nodes: &[EmbeddedNode], p: &Project) {
    p.tenant.customer.delete_role_assignment(&p.legacy_crypto).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for node in nodes {
        let s = node.handle().gate().status();
        assert_eq!(s.state, NodeState::Serving, "{s:?}");
        assert_eq!(s.auth_mode.as_deref(), Some("SERVICE_PRINCIPAL"), "{s:?}");
        assert!(s.last_error.is_none(), "{s:?}");
        let checked = s.last_check_at.expect("checked");
        assert!(time::OffsetDateTime::now_utc() - checked < time::Duration::seconds(3), "no check lately: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_to_role_id_and_back_under_write_load_has_no_downtime() {
    let env = Env::start_with(nodes::fast_checks()).await;
    let p = static_project(&env, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&env, &p, dir.path(), 3).await;
    wait_auth_mode(&nodes, "STATIC", Duration::from_secs(10)).await;

    let load = start_load(nodes.iter().map(|n| n.url()).collect(), p.data_credential.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The operator registers the platform's service principal, the customer grants it, and
    // the project moves to roleId: validated at once by the control plane, the secret deleted.
    let role = env.register(&p.group, &p.tenant).await;
    p.tenant.grant_rbac().await;
    let (s, v) = env.patch_ear(&p.group, json!({"roleId": role})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["roleId"], role.as_str(), "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true, "{v}");
    let (creds, pending) = stored_credentials(&env, &p.group).await;
    assert!(matches!(creds, AzureCredentials::Secretless { .. }), "the static secret is still stored");
    assert_eq!(pending, None);

    // Each node switches to the role's tokens on its next configuration read, serving throughout.
    wait_auth_mode(&nodes, "SERVICE_PRINCIPAL", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes = load.finish(&p.data_credential).await;
    assert!(writes > 50, "the client made only {writes} writes");

    let (_, listed) =
        env.atlas(Method::GET, &format!("/api/atrest/v1/groups/{}/clusters/Cluster0/nodes", p.group), None).await;
    let results = listed["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{listed}");
    assert!(results.iter().all(|n| n["authMode"] == "SERVICE_PRINCIPAL" && n["state"] == "SERVING"), "{listed}");
    legacy_grant_removed_changes_nothing(&nodes, &p).await;

    // And back (roleId → static credentials, outside private networking): validated by the
    // control plane like any PATCH. Refused while the legacy app has no grant, changing nothing;
    // accepted once it has one, and the nodes follow, under load again.
    let static_block = json!({
        "clientID": p.legacy_app_id, "tenantID": p.tenant.customer.tenant_id(), "secret": p.legacy_secret,
    });
    let before = env.get_ear(&p.group).await;
    let (s, e) = env.patch_ear(&p.group, static_block.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "INVALID_AZURE_CREDENTIALS", "{e}");
    assert!(e["detail"].as_str().unwrap().contains("ForbiddenByRbac"), "{e}");
    assert_eq!(env.get_ear(&p.group).await, before, "a refused PATCH changed the configuration");
    assert!(matches!(stored_credentials(&env, &p.group).await.0, AzureCredentials::Secretless { .. }));
    let load = start_load(nodes.iter().map(|n| n.url()).collect(), p.data_credential.clone());
    p.tenant.customer.assign_role(&p.legacy_sp, roles::KEY_VAULT_CRYPTO_USER, &p.tenant.vault_id).await.unwrap();
    let (s, v) = env.patch_ear(&p.group, static_block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["clientID"], p.legacy_app_id.as_str(), "{v}");
    assert_eq!(env.status(&p.group).await["credentialMode"], "STATIC_CREDENTIALS");
    wait_auth_mode(&nodes, "STATIC", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load.finish(&p.data_credential).await;
    for n in nodes {
        n.shutdown().await;
    }
}

/// The seeds' private networking for `p`: `requirePrivateNetworking: true` (pending), the EAR
/// private endpoint created with the Atlas API, the platform's endpoint in Azure (the
/// emulator's listener) with its address recorded, the connection approved by the customer, and
/// the vault's public access disabled. Returns the endpoint's Atlas path.
async fn private_networking(env: &Env, p: &Project) -> String {
    let g = &p.group;
    let (s, v) = env.patch_ear(g, json!({"requirePrivateNetworking": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let requested = nodes::request_private_endpoint(env, g).await;
    let pe = nodes::create_azure_endpoint(env, &requested, &p.tenant.vault).await;
    let (s, v) = nodes::record_private_address(env, g, &requested, &pe["address"]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    p.tenant
        .customer
        .set_private_endpoint_connection(&p.tenant.vault_id, &requested.connection, "Approved")
        .await
        .unwrap();
    p.tenant.customer.update_vault(&p.tenant.vault_id, json!({"publicNetworkAccess": "Disabled"})).await.unwrap();
    requested.path
}

/// Under private networking the control plane cannot validate the role: the PATCH is accepted
/// with the role pending, the static credentials stay stored and in force, and the nodes keep
/// the static path while they try the role (refused here: the role is not granted yet). Once
/// the customer grants it, every node validates it over the private endpoint, and only then is
/// the migration completed and the static secret deleted. The client under load sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_to_role_id_under_private_networking_waits_for_the_nodes_under_write_load() {
    let env = Env::start_with(nodes::fast_checks()).await;
    let p = static_project(&env, 3).await;
    let g = p.group.clone();
    let ep_path = private_networking(&env, &p).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&env, &p, dir.path(), 3).await;
    wait_auth_mode(&nodes, "STATIC", Duration::from_secs(10)).await;
    for n in &nodes {
        assert_eq!(n.handle().gate().status().via, "PRIVATE_ENDPOINT");
    }
    let status_path = format!("/api/atrest/v1/groups/{g}/encryptionAtRest/azureKeyVault/status");
    nodes::wait_json(&env, &status_path, "valid through the nodes", |v| v["valid"] == true).await;
    nodes::wait_json(&env, &ep_path, "ACTIVE", |v| v["status"] == "ACTIVE").await;

    let load = start_load(nodes.iter().map(|n| n.url()).collect(), p.data_credential.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The role registered but not granted yet: accepted, pending on the nodes.
    let role = env.register(&g, &p.tenant).await;
    let (s, v) = env.patch_ear(&g, json!({"roleId": role})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["roleId"], role.as_str(), "{v}");
    let (creds, pending) = stored_credentials(&env, &g).await;
    assert!(
        matches!(creds, AzureCredentials::Static { .. }),
        "the static credentials were dropped before the nodes validated the role"
    );
    assert_eq!(pending.as_deref(), Some(role.as_str()));

    // Each node tries the role, is refused, says so, and keeps serving on the static path.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for n in &nodes {
        loop {
            let s = n.handle().gate().status();
            let tried = s.last_error.as_ref().is_some_and(|e| {
                e.message.contains("pending migration") && e.azure_code.as_deref() == Some("ForbiddenByRbac")
            });
            if tried {
                assert_eq!(s.state, NodeState::Serving, "{s:?}");
                assert_eq!(s.auth_mode.as_deref(), Some("STATIC"), "{s:?}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the node never tried the pending role: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let st = nodes::wait_json(&env, &status_path, "the pending migration in the status", |v| {
        v["detail"].as_str().is_some_and(|d| d.contains("Migration to roleId pending: 0 of 3"))
    })
    .await;
    assert_eq!(st["credentialMode"], "STATIC_CREDENTIALS", "{st}");
    assert_eq!(st["pendingRoleId"], role.as_str(), "{st}");
    assert_eq!(st["valid"], true, "the static path still validates: {st}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (creds, _) = stored_credentials(&env, &g).await;
    assert!(matches!(creds, AzureCredentials::Static { .. }), "migrated while every node was refused the role");

    // The customer grants the platform's service principal: the nodes validate the role, the
    // migration completes and the secret is deleted.
    p.tenant.grant_rbac().await;
    wait_auth_mode(&nodes, "SERVICE_PRINCIPAL", Duration::from_secs(15)).await;
    let st =
        nodes::wait_json(&env, &status_path, "the migration complete", |v| v["credentialMode"] == "SECRETLESS").await;
    assert_eq!(st["pendingRoleId"], Value::Null, "{st}");
    assert_eq!(st["valid"], true, "{st}");
    let (creds, pending) = stored_credentials(&env, &g).await;
    assert!(matches!(creds, AzureCredentials::Secretless { .. }), "the static secret is still stored");
    assert_eq!(pending, None);
    let (_, events) = env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{g}/events"), None).await;
    let migrated = events["results"].as_array().unwrap().iter().any(|e| {
        e["eventTypeName"] == "ENCRYPTION_AT_REST_CONFIGURATION_UPDATED"
            && e.to_string().contains("migratedFromStaticCredentials\":true")
            && e.to_string().contains("data nodes")
    });
    assert!(migrated, "no migration event from the nodes: {events}");
    // The configuration the nodes get now has the role in force and nothing pending.
    wait_auth_mode(&nodes, "SERVICE_PRINCIPAL", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes = load.finish(&p.data_credential).await;
    assert!(writes > 50, "the client made only {writes} writes");
    legacy_grant_removed_changes_nothing(&nodes, &p).await;
    assert_eq!(env.status(&g).await["valid"], true);
    for n in nodes {
        n.shutdown().await;
    }
}
