//! The control plane's data directory on the embedded store: private (0700, every file 0600,
//! SQLite's -wal and -shm included) and owned by one control plane at a time.

use atrest_control::{Config, ControlPlane};

fn config(dir: &std::path::Path) -> Config {
    Config { listen: "127.0.0.1:0".parse().unwrap(), data_dir: dir.to_path_buf(), bootstrap: true, ..Config::default() }
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_every_file_in_it_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("control");
    let cp = ControlPlane::start(config(&dir)).await.unwrap();
    // A write, so SQLite has its WAL and shared-memory files open.
    cp.state().store.list_organizations().await.unwrap();
    assert_eq!(mode(&dir), 0o700, "the data directory");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    for expected in ["control.db", "control.db-wal", "control.db-shm", "bootstrap.json", "kek.key", "atrest.lock"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    for name in &names {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    cp.shutdown().await;

    // A directory left world-readable by an older version is tightened on the next start.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("control.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let cp = ControlPlane::start(config(&dir)).await.unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("control.db")), 0o600);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_control_plane_on_the_same_sqlite_directory_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = ControlPlane::start(config(dir.path())).await.unwrap();
    let err = ControlPlane::start(config(dir.path())).await.err().expect("the second start must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains(&format!("process {} holds", std::process::id())), "{msg}");
    assert!(msg.contains("atrest.lock") && msg.contains("another data directory"), "{msg}");
    first.shutdown().await;
    // Released on shutdown: the next start gets it.
    let again = ControlPlane::start(config(dir.path())).await.unwrap();
    again.shutdown().await;
}
