//! `atrest up` as a user runs it: logs without colour codes when stderr is not a terminal, the
//! control plane configuration it writes (no secret in it) used by `atrest admin --up`, and
//! admin refusing to guess a data directory.

use std::process::Command;

use serde_json::Value;

const ATREST: &str = env!("CARGO_BIN_EXE_atrest");

#[test]
fn up_writes_its_config_for_admin_and_logs_without_colour_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let out = Command::new(ATREST)
        .args(["--log", "debug", "up", "--no-wait", "--data-dir"])
        .arg(&data)
        .env_remove("NO_COLOR")
        .env_remove("ATREST_KEK")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("DEBUG"), "debug logs expected: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escape codes in logs written to a pipe: {stderr:?}");

    let up: Value = serde_json::from_slice(&std::fs::read(data.join("up.json")).unwrap()).unwrap();
    let config_path = data.join("control").join("config.toml");
    assert_eq!(up["control_config"], config_path.to_str().unwrap());
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("platform-key.pem") && config.contains("endpoint_override"), "{config}");
    for secret in ["/api_key/private_key", "/service_account/client_secret"] {
        assert!(!config.contains(up.pointer(secret).unwrap().as_str().unwrap()), "{secret} in config.toml");
    }

    // admin beside up: --up DIR finds the same store.
    let org = up["org_id"].as_str().unwrap();
    let created = Command::new(ATREST)
        .args(["admin", "--up"])
        .arg(&data)
        .args(["create-project", "--org", org, "--name", "second"])
        .env_remove("ATREST_CONFIG")
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let project: Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(project["orgId"], org);

    // Without a target, admin refuses and creates nothing in the working directory.
    let cwd = tempfile::tempdir().unwrap();
    let refused = Command::new(ATREST)
        .args(["admin", "create-project", "--org", org, "--name", "third"])
        .current_dir(cwd.path())
        .env_remove("ATREST_CONFIG")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("atrest admin --up DATA_DIR"));
    assert!(!cwd.path().join(".atrest").exists(), "admin created ./.atrest");
}

fn tenants_in(data: &std::path::Path) -> usize {
    let state: Value =
        serde_json::from_slice(&std::fs::read(data.join("emulator").join("state.json")).unwrap()).unwrap();
    state["tenants"].as_object().expect("tenants in the emulator's state.json").len()
}

/// Killed (abort, as kill -9) after each step of the demo layout in turn, `up` finishes the
/// same layout on the next start: the emulator ends with as many tenants as one clean run
/// makes, and the finished layout is the one the journal started.
#[test]
fn a_demo_layout_killed_at_any_step_is_finished_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let up = |data: &std::path::Path, failpoint: Option<String>| {
        let mut c = Command::new(ATREST);
        c.args(["up", "--no-wait", "--data-dir"]).arg(data).env_remove("ATREST_KEK").env("NO_COLOR", "1");
        match failpoint {
            Some(f) => c.env("ATREST_FAILPOINT", f),
            None => c.env_remove("ATREST_FAILPOINT"),
        };
        c.output().unwrap()
    };
    let clean = dir.path().join("clean");
    let out = up(&clean, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = tenants_in(&clean);

    let data = dir.path().join("killed");
    let mut vault = None;
    for step in 1..=7 {
        let out = up(&data, Some(format!("demo-layout-after-step-{step}")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "step {step}: expected the failpoint to stop up: {stderr}");
        assert!(stderr.contains(&format!("aborting at demo-layout-after-step-{step}")), "{stderr}");
        assert!(!data.join("up.json").exists() && !data.join("demo.json").exists());
        let partial: Value = serde_json::from_slice(&std::fs::read(data.join("demo.partial.json")).unwrap()).unwrap();
        if step > 1 {
            assert!(stderr.contains("finishing the demo layout a previous run started"), "{stderr}");
        }
        if let Some(v) = partial["vault"].as_str() {
            assert_eq!(*vault.get_or_insert(v.to_owned()), v, "the vault name changed on resume");
        }
    }
    let out = up(&data, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!data.join("demo.partial.json").exists(), "the journal is removed once demo.json is written");
    let layout: Value = serde_json::from_slice(&std::fs::read(data.join("demo.json")).unwrap()).unwrap();
    assert_eq!(layout["customer_vault"].as_str(), vault.as_deref());
    assert_eq!(tenants_in(&data), expected, "orphan tenants were left by the killed runs");
}

#[test]
fn an_unreadable_demo_layout_journal_stops_up_instead_of_starting_a_second_layout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    // A journal that exists but cannot be read as a file (tests run as root, so a mode would
    // not stop the read): up must not take it for "no journal" and orphan what it records.
    std::fs::create_dir_all(data.join("demo.partial.json")).unwrap();
    let out = Command::new(ATREST).args(["up", "--no-wait", "--data-dir"]).arg(&data).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot read the demo layout journal") && stderr.contains("delete it"), "{stderr}");
    assert!(!stderr.contains("creating the demo layout"), "{stderr}");
    assert!(!data.join("up.json").exists());
}

/// `atrest up` runs cluster Cluster0 on three data nodes (child processes) in the demo project:
/// up.json names them with the cluster's data credential and the customer tenant's admin, the
/// nodes serve documents to that credential only, and they die with `up` even when it is
/// killed -9.
#[tokio::test(flavor = "multi_thread")]
async fn up_runs_cluster0_on_three_nodes_that_serve_data_and_die_with_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let mut up = Command::new(ATREST)
        .args(["up", "--data-dir"])
        .arg(&data)
        .env_remove("ATREST_KEK")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(dir.path().join("up.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("up.err")).unwrap())
        .spawn()
        .unwrap();
    let up_json = data.join("up.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !up_json.exists() {
        if let Some(status) = up.try_wait().unwrap() {
            panic!("up exited ({status}): {}", std::fs::read_to_string(dir.path().join("up.err")).unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "no up.json after 240 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let v: Value = serde_json::from_slice(&std::fs::read(&up_json).unwrap()).unwrap();

    // The contract: demo.customer_admin and clusters[].
    let admin = &v["demo"]["customer_admin"];
    assert_eq!(admin["tenant_id"], v["demo"]["customer_tenant_id"]);
    assert!(admin["client_id"].as_str().is_some_and(|s| !s.is_empty()), "{admin}");
    assert!(admin["client_secret"].as_str().is_some_and(|s| !s.is_empty()), "{admin}");
    let clusters = v["clusters"].as_array().expect("clusters in up.json");
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    let c = &clusters[0];
    assert_eq!(c["name"], "Cluster0");
    assert_eq!(c["group_id"], v["demo"]["group_id"]);
    let credential = c["data_credential"].as_str().unwrap();
    assert!(credential.starts_with("atrd_"), "{credential}");
    let nodes = c["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let mut ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "node ids must differ: {nodes:?}");
    for n in nodes {
        let d = std::path::Path::new(n["data_dir"].as_str().unwrap());
        for f in ["node.json", "node-credential", "keystore.json"] {
            assert!(d.join(f).exists(), "{} in {}", f, d.display());
        }
    }

    // Each node serves documents to the data credential, and refuses any other.
    let http = reqwest::Client::new();
    for (i, n) in nodes.iter().enumerate() {
        let url = format!("{}/v1/collections/orders/documents/order-{i}", n["data_url"].as_str().unwrap());
        let put = http.put(&url).bearer_auth(credential).body(format!(r#"{{"n":{i}}}"#)).send().await.unwrap();
        assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
        let got = http.get(&url).bearer_auth(credential).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.text().await.unwrap(), format!(r#"{{"n":{i}}}"#));
        let other = http.get(&url).bearer_auth("atrd_000000000000000000000000_wrong").send().await.unwrap();
        assert_eq!(other.status(), 401);
    }

    // Killed -9, up takes its nodes with it.
    up.kill().unwrap();
    up.wait().unwrap();
    for n in nodes {
        let url = format!("{}/healthz", n["data_url"].as_str().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while http.get(&url).send().await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "node {} still answers 10 s after up was killed", n["id"]);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
