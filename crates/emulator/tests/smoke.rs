//! The emulator starts, writes its contract files, serves TLS from its CA, and keeps state
//! across a restart; one emulator per data dir; `emulator.json` only while ready; the
//! bootstrap secret only there; and a failed state write is a 503 that changes nothing.

mod support;

use reqwest::Method;
use serde_json::{Value, json};

use atrest_emulator::{Emulator, EmulatorConfig};

fn config(dir: &std::path::Path) -> EmulatorConfig {
    EmulatorConfig::new("127.0.0.1:0".parse().unwrap(), dir)
}

fn read_json(path: std::path::PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[tokio::test]
async fn start_writes_contract_files_and_state_survives_restart() {
    let t = support::TestEmu::start().await;
    let info = read_json(t.dir.path().join("emulator.json"));
    assert_eq!(info["listen"], t.emu.addr().to_string());
    assert!(std::path::Path::new(info["ca_pem"].as_str().unwrap()).is_absolute());
    for k in ["tenant_id", "subscription_id", "client_id", "client_secret"] {
        assert!(info["bootstrap"][k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
    let before = t.bootstrap().clone();
    let t = t.restart().await;
    assert_eq!(t.bootstrap(), &before);
}

#[tokio::test]
async fn unknown_host_gets_arms_host_not_found() {
    let t = support::TestEmu::start().await;
    // Over TLS the client trusts (the certificate covers 127.0.0.1), with a Host the emulator
    // does not serve: it is routed by that Host and refused in ARM's shape.
    let http = support::http1_client_for(t.emu.addr(), &t.emu.ca_pem());
    let r = http
        .get(format!("https://127.0.0.1:{}/_nope", t.emu.addr().port()))
        .header("host", "www.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "code": "HostNotFound",
            "message": "The host 'www.example.com' is not an Azure host the atrest emulator serves. Use login.microsoftonline.com, management.azure.com, graph.microsoft.com or <vault>.vault.azure.net (or their sovereign-cloud equivalents).",
        }})
    );
}

#[tokio::test]
async fn a_second_emulator_on_the_same_data_dir_is_refused_naming_the_pid() {
    let t = support::TestEmu::start().await;
    let err = match Emulator::start(config(t.dir.path())).await {
        Ok(_) => panic!("a second emulator started on a data dir that is in use"),
        Err(e) => format!("{e:#}"),
    };
    let pid = std::process::id();
    assert!(err.contains(&format!("in use by another emulator (PID {pid} holds")), "{err}");
    assert!(err.contains(&format!("kill {pid}")), "{err}");
    // The first one is untouched: its contract file is still there and it still serves.
    assert_eq!(read_json(t.dir.path().join("emulator.json"))["listen"], t.emu.addr().to_string());
    let r = t.http.get("https://login.microsoftonline.com/common/discovery/keys").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // Once it stops, the dir is free again.
    let t = t.restart().await;
    assert_eq!(read_json(t.dir.path().join("emulator.json"))["pid"], pid);
}

#[tokio::test]
async fn a_stale_emulator_json_is_removed_before_anything_listens() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(config(dir.path())).await.unwrap();
    let stale = emu.info().clone();
    // A kill -9 leaves emulator.json behind; drop the emulator without its shutdown to get
    // the same files, then make the leftover point at a port nothing listens on.
    drop(emu);
    let mut leftover = serde_json::to_value(&stale).unwrap();
    leftover["listen"] = json!("127.0.0.1:9");
    std::fs::write(dir.path().join("emulator.json"), serde_json::to_vec(&leftover).unwrap()).unwrap();
    // Make the next start fail after the lock, so what it leaves behind is visible.
    std::fs::write(dir.path().join("state.json"), b"{ not json").unwrap();
    let err = Emulator::start(config(dir.path())).await.err().expect("a corrupt state.json fails the start");
    assert!(format!("{err:#}").contains("state.json"), "{err:#}");
    assert!(!dir.path().join("emulator.json").exists(), "a failed start left a stale emulator.json behind");
}

#[tokio::test]
async fn the_bootstrap_secret_is_only_in_emulator_json() {
    let t = support::TestEmu::start().await;
    let secret = t.bootstrap().client_secret.clone();
    let state = std::fs::read_to_string(t.dir.path().join("state.json")).unwrap();
    assert!(!state.contains(&secret), "state.json holds the bootstrap secret in clear");
    let stored: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(stored["bootstrap"]["client_secret_sha256"], atrest_emulator::state::sha256_hex(secret.as_bytes()));
    assert!(stored["bootstrap"].get("client_secret").is_none());

    // A restart reads the secret back from emulator.json: the same secret still gets tokens.
    let t = t.restart().await;
    assert_eq!(t.bootstrap().client_secret, secret);
    assert_eq!(bootstrap_token_status(&t).await, 200);

    // Without emulator.json no copy of the secret is left: the principal gets a new one (in the
    // new emulator.json only) and the old one stops working.
    let support::TestEmu { emu, dir, .. } = t;
    emu.shutdown().await;
    std::fs::remove_file(dir.path().join("emulator.json")).unwrap();
    let t = support::TestEmu::start_in(dir).await;
    let fresh = t.bootstrap().client_secret.clone();
    assert_ne!(fresh, secret);
    assert_eq!(read_json(t.dir.path().join("emulator.json"))["bootstrap"]["client_secret"], fresh.as_str());
    assert_eq!(bootstrap_token_status(&t).await, 200);
    let mut old = t.bootstrap().clone();
    old.client_secret = secret;
    assert_eq!(token_status(&t, &old).await, 401);
    let state = std::fs::read_to_string(t.dir.path().join("state.json")).unwrap();
    assert!(!state.contains(&fresh));
}

#[tokio::test]
async fn an_older_state_json_with_the_secret_in_clear_is_migrated_to_the_hash() {
    let t = support::TestEmu::start().await;
    let secret = t.bootstrap().client_secret.clone();
    let support::TestEmu { emu, dir, .. } = t;
    emu.shutdown().await;
    // What earlier versions wrote: the clear secret in state.json, no hash.
    let mut state = read_json(dir.path().join("state.json"));
    state["bootstrap"]["client_secret"] = json!(secret);
    state["bootstrap"].as_object_mut().unwrap().remove("client_secret_sha256");
    std::fs::write(dir.path().join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    std::fs::remove_file(dir.path().join("emulator.json")).unwrap();

    let t = support::TestEmu::start_in(dir).await;
    assert_eq!(t.bootstrap().client_secret, secret);
    let raw = std::fs::read_to_string(t.dir.path().join("state.json")).unwrap();
    assert!(!raw.contains(&secret), "the migrated state.json still holds the secret");
    assert_eq!(bootstrap_token_status(&t).await, 200);
}

async fn bootstrap_token_status(t: &support::TestEmu) -> u16 {
    token_status(t, &t.bootstrap().clone()).await
}

async fn token_status(t: &support::TestEmu, p: &atrest_emulator::PrincipalInfo) -> u16 {
    t.http
        .post(format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", p.tenant_id))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", p.client_id.as_str()),
            ("client_secret", p.client_secret.as_str()),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// docs/emulator.md: "if the state cannot be written, every surface answers 503 in its own
/// error shape and nothing changes". A directory where the temp file goes makes the write
/// fail for root too (permissions would not).
#[tokio::test]
async fn a_failed_state_write_is_a_503_in_each_surfaces_shape_and_changes_nothing() {
    let t = support::TestEmu::start().await;
    let b = t.bootstrap().clone();
    let arm_token = t.bootstrap_token("https://management.azure.com/");
    let graph_token = t.bootstrap_token("https://graph.microsoft.com");
    let vault_token = t.bootstrap_token("https://vault.azure.net");
    let rg = format!("https://management.azure.com/subscriptions/{}/resourcegroups/rg1", b.subscription_id);
    let vault = format!("{rg}/providers/Microsoft.KeyVault/vaults/persistkv");
    let send = |method: Method, url: String, token: &str, body: Value| {
        t.http.request(method, url).bearer_auth(token).json(&body).send()
    };
    let r = send(Method::PUT, format!("{rg}?api-version=2022-09-01"), &arm_token, json!({"location": "eastus"}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let vault_body = json!({"location": "eastus", "properties": {
        "tenantId": b.tenant_id, "sku": {"family": "A", "name": "standard"}, "enableRbacAuthorization": true,
    }});
    let r = send(Method::PUT, format!("{vault}?api-version=2023-07-01"), &arm_token, vault_body.clone()).await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let before = std::fs::read(t.dir.path().join("state.json")).unwrap();
    let blocker = t.dir.path().join("state.tmp");
    std::fs::create_dir(&blocker).unwrap();

    let message =
        "The emulator could not persist the change; nothing was changed. See the emulator log and retry the request.";
    // ARM and the admin API: {"error":{"code","message"}}.
    let r = send(
        Method::PUT,
        format!(
            "https://management.azure.com/subscriptions/{}/resourcegroups/rg2?api-version=2022-09-01",
            b.subscription_id
        ),
        &arm_token,
        json!({"location": "eastus"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"error": {"code": "ServiceUnavailable", "message": message}}));
    let r = send(Method::POST, "https://management.azure.com/_emulator/tenants".into(), &arm_token, json!({}))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"error": {"code": "ServiceUnavailable", "message": message}}));
    // Key Vault: {"error":{"code","message"}} from the vault host.
    let r = send(
        Method::POST,
        "https://persistkv.vault.azure.net/keys/k1/create?api-version=7.5".into(),
        &vault_token,
        json!({"kty": "RSA", "key_size": 2048}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"error": {"code": "ServiceUnavailable", "message": message}}));
    // Graph: {"error":{"code","message","innerError":{...}}}.
    let r = send(
        Method::POST,
        "https://graph.microsoft.com/v1.0/applications".into(),
        &graph_token,
        json!({"displayName": "never stored"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!((&body["error"]["code"], &body["error"]["message"]), (&json!("serviceNotAvailable"), &json!(message)));
    assert!(body["error"]["innerError"]["request-id"].is_string(), "{body}");

    // Nothing changed, on disk or in memory.
    assert_eq!(std::fs::read(t.dir.path().join("state.json")).unwrap(), before);
    let s = t.emu.ctx().snapshot();
    assert_eq!(s.tenants.len(), 1);
    assert!(s.applications.values().all(|a| a.display_name != "never stored"));
    assert!(s.vaults.values().all(|v| v.keys.is_empty()));
    assert_eq!(s.resource_groups.len(), 1);

    // Once the disk is writable again, the same request succeeds.
    std::fs::remove_dir(&blocker).unwrap();
    let r = send(
        Method::POST,
        "https://persistkv.vault.azure.net/keys/k1/create?api-version=7.5".into(),
        &vault_token,
        json!({"kty": "RSA", "key_size": 2048}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
