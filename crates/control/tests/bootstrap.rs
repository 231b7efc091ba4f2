//! First-start bootstrap: one organization with an owner API key and service account, written
//! once to bootstrap.json (0600) and working over HTTP; a second start creates nothing; replicas
//! starting together on one PostgreSQL bootstrap exactly once.

use reqwest::StatusCode;
use serde_json::Value;

mod support;

use atrest_control::{Config, ControlPlane};

fn config(dir: &std::path::Path, store_url: Option<String>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store_url,
        bootstrap: true,
        ..Config::default()
    }
}

async fn whoami(url: &str, client_id: &str, secret: &str) -> Value {
    let http = reqwest::Client::new();
    let token = support::oauth_token(&http, url, client_id, secret).await;
    let r = http
        .get(format!("{url}/api/atrest/v1/whoami"))
        .bearer_auth(token)
        .header("Accept", "application/vnd.atlas.2023-01-01+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_bootstraps_once_and_the_credentials_work() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(config(dir.path(), None)).await.unwrap();
    let info = cp.bootstrap().expect("the first start bootstraps").clone();
    assert_eq!(info.file, dir.path().join("bootstrap.json"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&info.file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let file: Value = serde_json::from_slice(&std::fs::read(&info.file).unwrap()).unwrap();
    assert_eq!(file, info.to_json());
    assert_eq!(file["org_id"], info.org_id.as_str());
    let secret = file["service_account"]["client_secret"].as_str().unwrap();
    assert!(!format!("{info:?}").contains(secret), "Debug must not show the secret");
    assert!(!format!("{info:?}").contains(file["api_key"]["private_key"].as_str().unwrap()));

    // The service account is an Organization Owner of the new organization.
    let me = whoami(cp.url(), file["service_account"]["client_id"].as_str().unwrap(), secret).await;
    assert_eq!(me["orgId"], info.org_id.as_str(), "{me}");
    assert_eq!(me["orgRoles"], serde_json::json!(["ORG_OWNER"]), "{me}");
    // The API key exists with the same role (its Digest use is covered by tests/auth.rs).
    let key = cp.state().store.get_api_key_by_public_key(&info.api_public_key).await.unwrap();
    assert_eq!(key.org_id, info.org_id);
    assert_eq!(key.roles, atrest_store::Roles::org_owner());
    cp.shutdown().await;

    // A restart on the same data directory creates nothing and leaves the file alone.
    let before = std::fs::read(&info.file).unwrap();
    let cp = ControlPlane::start(config(dir.path(), None)).await.unwrap();
    assert!(cp.bootstrap().is_none());
    assert_eq!(cp.state().store.list_organizations().await.unwrap().len(), 1);
    assert_eq!(std::fs::read(&info.file).unwrap(), before);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_bootstrap_exactly_once() {
    let url = atrest_store::testing::fresh_postgres_database().await.expect("a throwaway PostgreSQL");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Replicas share the KEK; give both the same key file.
    for d in [a.path(), b.path()] {
        atrest_control::files::write_private(&d.join("kek.key"), &[7u8; 32]).unwrap();
    }
    let (ra, rb) = tokio::join!(
        ControlPlane::start(config(a.path(), Some(url.clone()))),
        ControlPlane::start(config(b.path(), Some(url.clone())))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let created = [ra.bootstrap().is_some(), rb.bootstrap().is_some()];
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    assert_eq!(ra.state().store.list_organizations().await.unwrap().len(), 1);
    let winner = if created[0] { &ra } else { &rb };
    let file: Value = serde_json::from_slice(&std::fs::read(&winner.bootstrap().unwrap().file).unwrap()).unwrap();
    // The credentials work through the other replica too.
    let other = if created[0] { &rb } else { &ra };
    whoami(
        other.url(),
        file["service_account"]["client_id"].as_str().unwrap(),
        file["service_account"]["client_secret"].as_str().unwrap(),
    )
    .await;
    ra.shutdown().await;
    rb.shutdown().await;
}
