//! `atrest node` owns its data dir: a second `atrest node` on the same `--data-dir` fails at
//! once, naming the process that runs there, and the first one serves on untouched. The lock
//! is the kernel's, so after kill -9 a new node starts on the same dir at once.

#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Env, Options};

const ATREST: &str = env!("CARGO_BIN_EXE_atrest");

fn command(env: &Env, dir: &Path, token: Option<&str>) -> Command {
    let mut c = Command::new(ATREST);
    c.arg("node")
        .arg("--control-plane")
        .arg(env.url())
        .arg("--data-dir")
        .arg(dir)
        .arg("--azure-endpoint")
        .arg(env.emu.addr().to_string())
        .arg("--azure-ca")
        .arg(&env.emu.info().ca_pem)
        .env("NO_COLOR", "1")
        .env_remove("ATREST_JOIN_TOKEN")
        .env_remove("ATREST_FAILPOINT");
    if let Some(t) = token {
        c.arg("--join-token").arg(t);
    }
    c
}

/// Starts a node; returns it and its data API URL (printed once it listens).
fn spawn(env: &Env, dir: &Path, token: Option<&str>) -> (Child, String) {
    let mut child = command(env, dir, token).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
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
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("the node never printed its data API URL");
    (child, url)
}

async fn wait_serving(http: &reqwest::Client, url: &str, credential: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s: Value = match http.get(format!("{url}/v1/status")).bearer_auth(credential).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if s["state"] == "SERVING" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never SERVING: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_dir_fails_at_once_naming_the_first() {
    let env = Env::start_with(Options { node_check_interval_secs: 1, ..Options::default() }).await;
    let group = env.project("lock").await;
    let tenant = env.tenant(atrest_emulator::scenario::VaultAuth::Rbac).await;
    let role = env.register(&group, &tenant).await;
    tenant.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, tenant.ear_block(&role)).await;
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
    let credential = v["credential"].as_str().unwrap().to_string();
    let token = || {
        let env = &env;
        let path = format!("/api/atrest/v1/groups/{group}/clusters/Cluster0/joinTokens");
        async move {
            let (s, v) = env.atlas(Method::POST, &path, Some(json!({}))).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v["token"].as_str().unwrap().to_string()
        }
    };

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    let http = reqwest::Client::new();
    let (mut first, url) = spawn(&env, &dir, Some(&token().await));
    wait_serving(&http, &url, &credential).await;
    let doc = format!("{url}/v1/collections/c/documents/a");
    let r = http.put(&doc).bearer_auth(&credential).json(&json!({"a": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let node_json = std::fs::read(dir.join("node.json")).unwrap();

    // The second one, with a fresh join token (it would join as another node otherwise): it
    // fails at once, before it joins or touches anything, and names the running one.
    let second_token = token().await;
    let started = std::time::Instant::now();
    let out = command(&env, &dir, Some(&second_token)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second node ran on the same data dir: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "the second node did not fail at once");
    let pid = first.id().to_string();
    assert!(stderr.contains(&format!("process {pid}")) && stderr.contains(&format!("kill {pid}")), "{stderr}");
    assert!(stderr.contains(&dir.display().to_string()) && stderr.contains("atrest node"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("node.json")).unwrap(), node_json, "the second node changed node.json");
    // The join token was not spent: the second one never reached the control plane.
    let r = http
        .post(format!("{}/api/atrest/v1/node/join", env.url()))
        .json(&json!({"joinToken": second_token, "dataUrl": "http://127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "the refused node spent its join token");
    // The first serves on, with its data.
    assert!(first.try_wait().unwrap().is_none(), "the first node stopped");
    let v: Value = http.get(&doc).bearer_auth(&credential).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"a": 1}));

    // kill -9: the lock goes with the process; a new node starts on the dir at once.
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut again, url) = spawn(&env, &dir, None);
    wait_serving(&http, &url, &credential).await;
    let v: Value = http
        .get(format!("{url}/v1/collections/c/documents/a"))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"a": 1}));
    again.kill().unwrap();
    again.wait().unwrap();
}
