//! Replicas must share the key-encryption key (issue 10 §4): the first start seals a canary into
//! the store, and a control plane whose KEK does not open it refuses to start, naming the KEK
//! expected (its fingerprint) and the fix, instead of serving 500s and sealing secrets the other
//! replicas cannot open.

use atrest_control::{Config, ControlPlane};

fn config(dir: &std::path::Path, store_url: Option<String>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store_url,
        bootstrap: false,
        ..Config::default()
    }
}

fn kek_file(dir: &std::path::Path, byte: u8) {
    atrest_control::files::write_private(&dir.join("kek.key"), &[byte; 32]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_kek_refuses_to_start_on_postgres() {
    let url = atrest_store::testing::fresh_postgres_database().await.expect("a throwaway PostgreSQL");
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    kek_file(a.path(), 7);
    kek_file(b.path(), 7);
    let ra = ControlPlane::start(config(a.path(), Some(url.clone()))).await.unwrap();
    let expected = ra.state().kek.fingerprint().to_string();
    assert!(expected.starts_with("kek:") && expected.len() == 20, "{expected}");
    // The same KEK: starts.
    let rb = ControlPlane::start(config(b.path(), Some(url.clone()))).await.unwrap();
    assert_eq!(rb.state().kek.fingerprint(), expected);

    // A third replica without ATREST_KEK or a copied kek.key makes its own KEK: refused.
    let err = match ControlPlane::start(config(c.path(), Some(url.clone()))).await {
        Ok(_) => panic!("a replica with another KEK started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&format!("({expected}, used since")), "names the KEK expected: {err}");
    assert!(err.contains("Refusing to start"), "{err}");
    assert!(err.contains("set ATREST_KEK to the value they use") && err.contains("copy their kek.key"), "{err}");
    assert!(err.contains(&format!("the key file {}", c.path().join("kek.key").display())), "{err}");
    // The KEK itself is never shown (base64 or hex of the 0x07 bytes).
    assert!(!err.contains("BwcHBwcH") && !err.contains("07070707"), "{err}");

    // Given the same KEK, it starts.
    kek_file(c.path(), 7);
    let rc = ControlPlane::start(config(c.path(), Some(url.clone()))).await.unwrap();
    rc.shutdown().await;
    rb.shutdown().await;
    ra.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_kek_file_is_refused_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(config(dir.path(), None)).await.unwrap();
    let first = cp.state().kek.fingerprint().to_string();
    cp.shutdown().await;
    // A restart with the same key file starts.
    let cp = ControlPlane::start(config(dir.path(), None)).await.unwrap();
    cp.shutdown().await;

    kek_file(dir.path(), 9);
    let err = match ControlPlane::start(config(dir.path(), None)).await {
        Ok(_) => panic!("a control plane with another KEK started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&first) && err.contains("ATREST_KEK"), "{err}");
}
