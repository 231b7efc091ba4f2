//! `atrest admin create-org` creates an organization that the other admin commands then use.

use std::process::Command;

use serde_json::Value;

const ATREST: &str = env!("CARGO_BIN_EXE_atrest");

fn admin(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(ATREST)
        .arg("admin")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("ATREST_KEK")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn create_org_prints_an_id_that_create_project_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("control");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n", data.display())).unwrap();

    let out = admin(&config, &["create-org", "--name", "Second org"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let org: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(org["name"], "Second org");
    let id = org["id"].as_str().unwrap();
    assert!(id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    let out = admin(&config, &["create-project", "--org", id, "--name", "p1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let project: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(project["orgId"], id);

    let out = admin(&config, &["create-org", "--name", "  "]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 64 characters"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_and_data_credentials_are_made_for_an_existing_cluster_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("control");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n", data.display())).unwrap();
    let org: Value = serde_json::from_slice(&admin(&config, &["create-org", "--name", "o"]).stdout).unwrap();
    let out = admin(&config, &["create-project", "--org", org["id"].as_str().unwrap(), "--name", "p"]);
    let group: Value = serde_json::from_slice(&out.stdout).unwrap();
    let group = group["id"].as_str().unwrap().to_string();

    // No such cluster: refused, saying where to look.
    let out = admin(&config, &["create-join-token", "--group", &group, "--cluster", "Cluster0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no cluster named 'Cluster0'"), "{out:?}");
    let out = admin(&config, &["create-join-token", "--group", &group, "--cluster", "Cluster0", "--ttl-secs", "5"]);
    assert!(!out.status.success(), "a 5 s token is below the 60 s minimum");

    // A cluster (as POST /clusters stores it), then both credentials.
    let store = atrest_store::Store::open(&format!("sqlite://{}", data.join("control.db").display())).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    store
        .create_cluster(&atrest_store::Cluster {
            id: atrest_store::ClusterId::new_random(),
            group_id: atrest_store::GroupId::parse(&group).unwrap(),
            name: "Cluster0".into(),
            body: "{}".into(),
            encryption_at_rest_provider: atrest_store::ClusterEarProvider::None,
            node_count: 1,
            paused: false,
            state_name: "CREATING".into(),
            deleting: false,
            create_date: now,
            updated_at: now,
            version: 1,
        })
        .await
        .unwrap();
    store.close().await;
    let out = admin(&config, &["create-join-token", "--group", &group, "--cluster", "Cluster0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(t["token"].as_str().unwrap().starts_with("atrj_"), "{t}");
    assert_eq!(t["clusterName"], "Cluster0");
    let out = admin(&config, &["create-data-credential", "--group", &group, "--cluster", "Cluster0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(c["credential"].as_str().unwrap().starts_with("atrd_"), "{c}");
    // Only hashes are stored.
    let db = std::fs::read(data.join("control.db")).unwrap();
    for secret in [t["token"].as_str().unwrap(), c["credential"].as_str().unwrap()] {
        assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()), "a credential is stored in clear");
    }
}
