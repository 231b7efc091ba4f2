//! A data node survives kill -9 at every step of its key handling. The real `atrest node` is
//! started with `ATREST_FAILPOINT=<step>` and aborts there (no destructor, no flush, as kill -9);
//! then it is started again without it, and must open its data with the right key (SERVING),
//! keep every write acknowledged before the crash, and finish what the crash interrupted
//! (a re-wrap to the new key version, exactly one master-key rotation, the new auth mode).
//!
//! One emulator, one control plane and one project (static credentials, migrated to a roleId
//! at the end) serve every step. The end also covers `atrest node rotate-master-key`, against
//! a running node and a stopped one.

#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Env, Options};

const ATREST: &str = env!("CARGO_BIN_EXE_atrest");
const LIMIT: Duration = Duration::from_secs(30);
/// Written in every document; no file the nodes leave (data dirs, keystores, their stderr at
/// debug level) may hold it.
const MARKER: &str = "PLAINTEXT-MARKER-node-crash-5d1e9b";

struct World {
    env: Env,
    group: String,
    tenant: support::Tenant,
    data_credential: String,
    http: reqwest::Client,
}

/// A running `atrest node` child and its data API URL.
struct NodeProc {
    child: Child,
    url: String,
    stderr: PathBuf,
}

impl World {
    async fn join_token(&self) -> String {
        let (s, v) = self
            .env
            .atlas(
                Method::POST,
                &format!("/api/atrest/v1/groups/{}/clusters/Cluster0/joinTokens", self.group),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    fn command(&self, dir: &Path, token: Option<&str>, failpoint: Option<&str>) -> Command {
        let mut c = Command::new(ATREST);
        c.arg("node")
            .arg("--control-plane")
            .arg(self.env.url())
            .arg("--data-dir")
            .arg(dir)
            .arg("--azure-endpoint")
            .arg(self.env.emu.addr().to_string())
            .arg("--azure-ca")
            .arg(&self.env.emu.info().ca_pem)
            .env("NO_COLOR", "1")
            // Everything the node logs, so that the plaintext check covers it.
            .env("ATREST_LOG", "debug")
            .env_remove("ATREST_JOIN_TOKEN");
        if let Some(t) = token {
            c.arg("--join-token").arg(t);
        }
        match failpoint {
            Some(f) => c.env("ATREST_FAILPOINT", f),
            None => c.env_remove("ATREST_FAILPOINT"),
        };
        c
    }

    /// Starts a node and waits for its data API URL (printed once it listens).
    fn spawn(&self, dir: &Path, token: Option<&str>, failpoint: Option<&str>, log: &str) -> NodeProc {
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let stderr = dir.with_file_name(format!("{log}.stderr"));
        let mut child = self
            .command(dir, token, failpoint)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.trim_start().strip_prefix("data API:") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                    sent = true;
                }
            }
        });
        let url = rx.recv_timeout(LIMIT).unwrap_or_default();
        NodeProc { child, url, stderr }
    }

    async fn status(&self, node: &NodeProc) -> Value {
        match self.http.get(format!("{}/v1/status", node.url)).bearer_auth(&self.data_credential).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Waits until the node's status satisfies `ok`; returns it.
    async fn wait_status(&self, node: &NodeProc, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let s = self.status(node).await;
            if ok(&s) {
                return s;
            }
            let log = std::fs::read_to_string(&node.stderr).unwrap_or_default();
            assert!(tokio::time::Instant::now() < deadline, "{what}: last status {s}; stderr:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn serving(&self, node: &NodeProc, what: &str) -> Value {
        self.wait_status(node, what, |s| s["state"] == "SERVING").await
    }

    /// An acknowledged write: 200 from the data API.
    async fn put(&self, node: &NodeProc, id: &str) {
        let r = self
            .http
            .put(format!("{}/v1/collections/crash/documents/{id}", node.url))
            .bearer_auth(&self.data_credential)
            .json(&json!({"id": id, "m": MARKER}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "writing {id}: {}", r.text().await.unwrap());
    }

    async fn assert_docs(&self, node: &NodeProc, ids: &[String], what: &str) {
        for id in ids {
            let r = self
                .http
                .get(format!("{}/v1/collections/crash/documents/{id}", node.url))
                .bearer_auth(&self.data_credential)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{what}: acknowledged write {id} is lost");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v, json!({"id": id, "m": MARKER}), "{what}");
        }
    }
}

/// Waits for the child to end at `step`'s failpoint (it aborts, as kill -9 would stop it).
async fn crashed_at(node: &mut NodeProc, step: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = node.child.kill();
            let log = std::fs::read_to_string(&node.stderr).unwrap_or_default();
            panic!("{step}: the node never reached its failpoint; stderr:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&node.stderr).unwrap();
    assert!(!status.success() && log.contains(&format!("aborting at {step}")), "{step}: {status}; stderr:\n{log}");
}

/// SIGKILL (kill -9) and reap.
fn kill9(mut node: NodeProc) {
    node.child.kill().unwrap();
    node.child.wait().unwrap();
}

async fn world() -> World {
    let env = Env::start_with(Options { node_check_interval_secs: 1, ..Options::default() }).await;
    let group = env.project("crash").await;
    let tenant = env.tenant(atrest_emulator::scenario::VaultAuth::Rbac).await;
    // Static credentials first: the last step migrates the project to a roleId.
    let (app_id, secret, _) = env.static_app(&tenant).await;
    let (s, v) = env
        .patch_ear(
            &group,
            json!({
                "enabled": true, "clientID": app_id, "tenantID": tenant.customer.tenant_id(), "secret": secret,
                "subscriptionID": tenant.customer.subscription_id(), "resourceGroupName": tenant.rg,
                "keyVaultName": tenant.vault, "keyIdentifier": tenant.kid, "azureEnvironment": "AZURE",
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.create_cluster(&group, "Cluster0", 1).await;
    let (s, v) = env
        .atlas(
            Method::POST,
            &format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/dataCredentials"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let data_credential = v["credential"].as_str().unwrap().to_string();
    World { env, group, tenant, data_credential, http: reqwest::Client::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_any_key_step_starts_again_with_its_data() {
    let w = world().await;
    let root = tempfile::tempdir().unwrap();

    // First start: a fresh data dir and join token per step.
    for step in [
        "keystore-create-generated",
        "keystore-create-encrypted",
        "keystore-create-tmp-written",
        "keystore-create-renamed",
        "node-engine-opened",
        "node-before-first-report",
    ] {
        let dir = root.path().join(step).join("data");
        let token = w.join_token().await;
        let mut crashed = w.spawn(&dir, Some(&token), Some(step), "crash");
        crashed_at(&mut crashed, step).await;
        let again = w.spawn(&dir, None, None, "restart");
        let s = w.serving(&again, step).await;
        assert_eq!(s["keyVersion"].as_str(), w.tenant.kid.rsplit('/').next(), "{step}: {s}");
        w.put(&again, step).await;
        kill9(again);
        // A write acknowledged after the crash survives a kill -9 as well.
        let third = w.spawn(&dir, None, None, "third");
        w.serving(&third, step).await;
        w.assert_docs(&third, &[step.to_string()], step).await;
        kill9(third);
    }

    // One long-lived data dir for the rotations.
    let dir = root.path().join("rotations").join("data");
    let token = w.join_token().await;
    let mut node = w.spawn(&dir, Some(&token), None, "first");
    w.serving(&node, "rotations: first start").await;
    let mut written: Vec<String> = Vec::new();

    // Customer-key rotation (a new key version PATCHed in): decrypt with the old version,
    // encrypt with the new, the durable write, the old blob dropped.
    for step in [
        "keystore-rewrap-decrypted",
        "keystore-rewrap-encrypted",
        "keystore-rewrap-tmp-written",
        "keystore-rewrap-renamed",
    ] {
        kill9(node);
        let mut armed = w.spawn(&dir, None, Some(step), step);
        w.serving(&armed, step).await;
        w.put(&armed, step).await;
        written.push(step.to_string());
        let new_kid = w.tenant.customer.create_key(&w.tenant.vault, "cmk", None).await.unwrap();
        let new_version = new_kid.rsplit('/').next().unwrap().to_string();
        let (s, v) = w.env.patch_ear(&w.group, json!({"keyIdentifier": new_kid})).await;
        assert_eq!(s, StatusCode::OK, "{step}: {v}");
        crashed_at(&mut armed, step).await;
        node = w.spawn(&dir, None, None, "restart");
        w.wait_status(&node, step, |s| s["state"] == "SERVING" && s["keyVersion"] == new_version.as_str()).await;
        w.assert_docs(&node, &written, step).await;
    }

    // Master-key rotation on request: new master key, data keys re-sealed, written. After the
    // restart the request is carried out exactly once (generation + 1, not + 2).
    let node_id = w.status(&node).await["nodeId"].as_str().unwrap().to_string();
    for step in [
        "keystore-rotate-generated",
        "keystore-rotate-resealed",
        "keystore-rotate-encrypted",
        "keystore-rotate-tmp-written",
        "keystore-rotate-renamed",
    ] {
        kill9(node);
        let mut armed = w.spawn(&dir, None, Some(step), step);
        let before = w.serving(&armed, step).await["masterKeyGeneration"].as_u64().unwrap();
        w.put(&armed, step).await;
        written.push(step.to_string());
        let (s, v) = w
            .env
            .atlas(
                Method::POST,
                &format!("/api/atrest/v1/groups/{}/clusters/Cluster0/nodes/{node_id}:rotateMasterKey", w.group),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{step}: {v}");
        crashed_at(&mut armed, step).await;
        node = w.spawn(&dir, None, None, "restart");
        let s = w.wait_status(&node, step, |s| s["state"] == "SERVING" && s["masterKeyGeneration"] == before + 1).await;
        w.assert_docs(&node, &written, step).await;
        // Another check later it is still generation + 1: the request is not repeated.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let later = w.status(&node).await;
        assert_eq!(later["masterKeyGeneration"], s["masterKeyGeneration"], "{step}: rotated twice: {later}");
    }

    // The auth-mode switch a static → roleId migration causes: the node's token path changes.
    let step = "node-auth-mode-switched";
    kill9(node);
    let mut armed = w.spawn(&dir, None, Some(step), step);
    let s = w.serving(&armed, step).await;
    assert_eq!(s["authMode"], "STATIC", "{s}");
    w.put(&armed, step).await;
    written.push(step.to_string());
    let role = w.env.register(&w.group, &w.tenant).await;
    w.tenant.grant_rbac().await;
    let (s, v) = w.env.patch_ear(&w.group, json!({"roleId": role})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    crashed_at(&mut armed, step).await;
    let node = w.spawn(&dir, None, None, "restart");
    w.wait_status(&node, step, |s| s["state"] == "SERVING" && s["authMode"] == "SERVICE_PRINCIPAL").await;
    w.assert_docs(&node, &written, step).await;

    // `atrest node rotate-master-key --data-dir DIR`, with the node's own credential: a running
    // node rotates on its next configuration read ...
    let rotate =
        |dir: &Path| Command::new(ATREST).args(["node", "rotate-master-key", "--data-dir"]).arg(dir).output().unwrap();
    let generation = w.status(&node).await["masterKeyGeneration"].as_u64().unwrap();
    let out = rotate(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&node_id), "{}", String::from_utf8_lossy(&out.stdout));
    w.wait_status(&node, "rotate-master-key (running)", |s| s["masterKeyGeneration"] == generation + 1).await;
    w.assert_docs(&node, &written, "rotate-master-key (running)").await;
    // ... and a stopped one at its next start.
    kill9(node);
    let out = rotate(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = w.spawn(&dir, None, None, "restart");
    w.wait_status(&node, "rotate-master-key (stopped)", |s| {
        s["state"] == "SERVING" && s["masterKeyGeneration"] == generation + 2
    })
    .await;
    w.assert_docs(&node, &written, "rotate-master-key (stopped)").await;
    kill9(node);
    // A data dir that never joined has no master key: a clear refusal, nothing written.
    let empty = root.path().join("never-joined");
    std::fs::create_dir_all(&empty).unwrap();
    let out = rotate(&empty);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("has not joined a cluster"), "{stderr}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "rotate-master-key wrote into a dir that never joined");

    // Nothing the nodes left holds a document, a credential or a token in clear: every file of
    // every data dir (db, -wal, -shm, keystore.json, node.json, node-credential) and every
    // node's stderr at debug level, across every crash, restart and rotation above.
    let mut files = Vec::new();
    let mut stack = vec![root.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let stderrs = files.iter().filter(|p| p.extension().is_some_and(|e| e == "stderr")).count();
    assert!(stderrs >= 20 && files.len() > stderrs, "{} files, {stderrs} stderr logs", files.len());
    let debug_lines = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "stderr"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default().lines().filter(|l| l.contains("DEBUG")).count())
        .sum::<usize>();
    assert!(debug_lines > 100, "the nodes did not log at debug level ({debug_lines} lines)");
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!has(MARKER.as_bytes()), "{} holds a document in clear", path.display());
        assert!(!has(w.data_credential.as_bytes()), "{} holds the data credential", path.display());
        if path.extension().is_some_and(|e| e == "stderr") {
            // Access tokens are JWTs (base64url of `{"`); the node credential sits in its own
            // 0600 file and nowhere else.
            assert!(!has(b"eyJ"), "{} holds a token", path.display());
        }
    }
}
