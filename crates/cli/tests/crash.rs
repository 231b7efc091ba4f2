//! Bootstrap survives a crash at every step: `atrest serve` is aborted (as kill -9 would stop
//! it: no destructor, no flush) between each pair of its writes, and the next start finishes
//! the bootstrap promptly, with working owner credentials in bootstrap.json and one organization.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ATREST: &str = env!("CARGO_BIN_EXE_atrest");

fn serve(config: &std::path::Path, failpoint: Option<&str>) -> Command {
    let mut c = Command::new(ATREST);
    c.arg("serve").arg("--config").arg(config).env_remove("ATREST_KEK").env("NO_COLOR", "1");
    match failpoint {
        Some(f) => c.env("ATREST_FAILPOINT", f),
        None => c.env_remove("ATREST_FAILPOINT"),
    };
    c
}

async fn whoami(url: &str, client_id: &str, secret: &str) -> Value {
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{url}/api/oauth/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .get(format!("{url}/api/atrest/v1/whoami"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("Accept", "application/vnd.atlas.2023-01-01+json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "whoami: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_bootstrap_step_is_finished_by_the_next_start() {
    for step in [
        "bootstrap-before-org",
        "bootstrap-after-org",
        "bootstrap-after-api-key",
        "bootstrap-after-service-account",
        "bootstrap-after-tmp",
        "bootstrap-after-rename",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("control");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n", data.display())).unwrap();

        let crashed = serve(&config, Some(step)).stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
        let stderr = String::from_utf8_lossy(&crashed.stderr);
        assert!(!crashed.status.success() && stderr.contains(&format!("aborting at {step}")), "{step}: {stderr}");

        let started = Instant::now();
        let mut child = serve(&config, None).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().unwrap_or_else(|| panic!("{step}: serve exited before listening")).unwrap();
            if let Some(u) = line.strip_prefix("atrest control plane listening on ") {
                break u.to_owned();
            }
        };
        // No silent 30 s wait for the dead process's lease (a loaded machine stays far below this).
        assert!(started.elapsed() < Duration::from_secs(20), "{step}: restart took {:?}", started.elapsed());
        assert!(!data.join("bootstrap.pending").exists(), "{step}: the marker is left");
        assert!(!data.join("bootstrap.json.tmp").exists(), "{step}: the temporary file is left");
        let file: Value = serde_json::from_slice(&std::fs::read(data.join("bootstrap.json")).unwrap()).unwrap();
        let me = whoami(
            &url,
            file["service_account"]["client_id"].as_str().unwrap(),
            file["service_account"]["client_secret"].as_str().unwrap(),
        )
        .await;
        assert_eq!(me["orgId"], file["org_id"], "{step}: {me}");
        assert_eq!(me["orgRoles"], serde_json::json!(["ORG_OWNER"]), "{step}: {me}");
        child.kill().unwrap();
        child.wait().unwrap();

        // Exactly one organization: the crashed start's, not a second one.
        let store =
            atrest_store::Store::open(&format!("sqlite://{}", data.join("control.db").display())).await.unwrap();
        let orgs = store.list_organizations().await.unwrap();
        assert_eq!(orgs.len(), 1, "{step}: {orgs:?}");
        assert_eq!(orgs[0].id.as_str(), file["org_id"].as_str().unwrap(), "{step}");
        store.close().await;
    }
}
