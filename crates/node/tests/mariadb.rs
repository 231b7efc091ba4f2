//! The MariaDB engine against Debian's real MariaDB (the README's test command installs
//! `mariadb-server`, `mariadb-client` and `mariadb-plugin-hashicorp-key-management`): a real
//! client writes marked rows, and no file MariaDB wrote holds them in clear; the server stops
//! with the engine and comes back with its data; a kill -9 is restarted; other engines' tables
//! are refused; and a MariaDB node in a cluster keeps mariadbd running while Key Vault is
//! unreachable, stops it when the customer revokes the key and starts it again, data intact,
//! when access is restored.

mod nodes;
#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atrest_node::engine::mariadb::{MariaDbEngine, MariaDbOptions};
use atrest_node::runtime::NodeState;
use atrest_node::server::MariaDbNode;
use atrest_node::{DataKeys, Engine, Health, KeyBytes};
use serde_json::Value;

const MARKER: &str = "ATREST_PLAINTEXT_MARKER_7f3c";

/// Runs `sql` with the `mariadb` client as root over the server's socket: (success, stdout+stderr).
fn sql(o: &MariaDbOptions, sql: &str) -> (bool, String) {
    let out = Command::new("mariadb")
        .arg(format!("--socket={}", o.socket().display()))
        .args(["-u", "root", "--batch", "--skip-column-names", "-e", sql])
        .output()
        .expect("the mariadb client: sudo apt-get install mariadb-client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_string())
}

fn ok(o: &MariaDbOptions, q: &str) -> String {
    let (success, text) = sql(o, q);
    assert!(success, "{q}: {text}");
    text
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

async fn open(engine: &std::sync::Arc<MariaDbEngine>, keys: std::sync::Arc<DataKeys>) -> Result<(), String> {
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.open(&keys).map_err(|e| e.to_string())).await.unwrap()
}

async fn close(engine: &std::sync::Arc<MariaDbEngine>) {
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.close().unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_keeps_rows_encrypted_stops_with_the_engine_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let o = MariaDbOptions::new(dir.path());
    let engine = std::sync::Arc::new(MariaDbEngine::new(o.clone()));
    let key = KeyBytes::random().unwrap();
    let key_bytes = *key.expose();
    let keys = std::sync::Arc::new(DataKeys::single(key));
    let started = Instant::now();
    open(&engine, keys.clone()).await.expect("MariaDB starts with the node's keys");
    eprintln!("install-db and first start: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(engine.health(), Health::Serving);

    ok(&o, "CREATE DATABASE demo");
    ok(&o, "CREATE TABLE demo.t (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB");
    ok(&o, &format!("INSERT INTO demo.t SELECT seq, CONCAT('{MARKER}-bulk-', seq) FROM demo.seq_1_to_2000"));
    for i in 0..20 {
        ok(&o, &format!("INSERT INTO demo.t VALUES ({}, '{MARKER}-single-{i}')", 10_000 + i));
    }
    ok(&o, &format!("CREATE TEMPORARY TABLE demo.tmp (v VARCHAR(200)); INSERT INTO demo.tmp VALUES ('{MARKER}-temp')"));
    // Other engines' tables are refused: their files, and the Aria log, are not encrypted.
    for engine_name in ["Aria", "MyISAM"] {
        let (success, text) = sql(&o, &format!("CREATE TABLE demo.other (v TEXT) ENGINE={engine_name}"));
        assert!(!success, "an {engine_name} table was created: {text}");
        // MariaDB's own words for enforce_storage_engine (it has no other): ERROR 1290.
        assert!(text.contains("ERROR 1290") && text.contains("NO_ENGINE_SUBSTITUTION"), "{engine_name}: {text}");
    }
    // Every tablespace is encrypted.
    let clear =
        ok(&o, "SELECT COUNT(*) FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE ENCRYPTION_SCHEME = 0");
    assert_eq!(clear, "0", "unencrypted tablespaces");
    let encrypted =
        ok(&o, "SELECT COUNT(*) FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE ENCRYPTION_SCHEME = 1");
    assert!(encrypted.parse::<u32>().unwrap() >= 2, "{encrypted}");
    // Pages, redo log and binlog on disk; then no file holds a marked row or a key in clear.
    ok(&o, "SET GLOBAL innodb_max_dirty_pages_pct = 0; FLUSH TABLES; FLUSH BINARY LOGS");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok(
        &o,
        "SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'INNODB_BUFFER_POOL_PAGES_DIRTY'",
    ) != "0"
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(files_containing(dir.path(), MARKER.as_bytes()), Vec::<String>::new(), "marked rows in clear");
    assert_eq!(files_containing(dir.path(), &key_bytes), Vec::<String>::new(), "the data key in clear");
    assert_eq!(files_containing(dir.path(), hex::encode(key_bytes).as_bytes()), Vec::<String>::new());

    // A kill -9 of mariadbd while the engine is open: started again, data intact.
    let pid = engine.pid().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while (engine.restarts() == 0 || engine.health() != Health::Serving) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(engine.restarts(), 1);
    assert_ne!(engine.pid(), Some(pid));
    assert_eq!(ok(&o, "SELECT COUNT(*) FROM demo.t"), "2020");

    // Closing stops mariadbd before the keys go: no process, no listener.
    let pid = engine.pid().unwrap();
    let port = engine.port().unwrap();
    let (key_server, _) = engine.key_server().unwrap();
    let t = Instant::now();
    close(&engine).await;
    eprintln!("close (mariadbd stopped, keys dropped): {:.2} s", t.elapsed().as_secs_f64());
    assert!(!alive(pid), "mariadbd {pid} is still running");
    let log = std::fs::read_to_string(o.error_log()).unwrap();
    assert!(
        log.trim_end().ends_with("Shutdown complete"),
        "not a clean shutdown: {}",
        &log[log.len().saturating_sub(600)..]
    );
    assert_eq!(engine.health(), Health::Closed);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "mariadbd still listens");
    assert!(std::net::TcpStream::connect(key_server).is_err(), "the key server still listens");
    let (success, _) = sql(&o, "SELECT 1");
    assert!(!success, "a client reached a closed engine");

    // Opened again with the same keys: every row is there and writable.
    open(&engine, keys.clone()).await.expect("MariaDB starts again");
    assert_eq!(engine.port(), Some(port), "the same port after a restart, for the clients");
    assert_eq!(ok(&o, "SELECT COUNT(*) FROM demo.t"), "2020");
    ok(&o, "INSERT INTO demo.t VALUES (20000, 'after reopen')");
    assert_eq!(ok(&o, "SELECT v FROM demo.t WHERE id = 10019"), format!("{MARKER}-single-19"));
    close(&engine).await;

    // Another node's keys do not open this data: mariadbd fails to start and the error says so.
    let other = std::sync::Arc::new(DataKeys::single(KeyBytes::random().unwrap()));
    let t = Instant::now();
    let e = open(&engine, other).await.expect_err("MariaDB started with the wrong keys");
    eprintln!("wrong keys refused in {:.2} s: {e}", t.elapsed().as_secs_f64());
    assert!(e.contains("mariadbd did not start") && e.contains("error log"), "{e}");
    assert_eq!(engine.health(), Health::Closed);
    // The data is untouched: the right keys still open it.
    open(&engine, keys).await.expect("MariaDB starts with its own keys after a wrong-key attempt");
    assert_eq!(ok(&o, "SELECT COUNT(*) FROM demo.t"), "2021");
    close(&engine).await;
}

async fn wait_state(node: &MariaDbNode, want: NodeState, limit: Duration) -> atrest_node::Status {
    let deadline = Instant::now() + limit;
    loop {
        let s = node.handle().gate().status();
        if s.state == want {
            return s;
        }
        assert!(Instant::now() < deadline, "not {want:?} within {limit:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_node_keeps_mariadbd_while_degraded_stops_it_on_revocation_and_starts_it_on_restore() {
    let env = support::Env::start_with(nodes::fast_checks()).await;
    let c = nodes::cluster(&env, "maria", 1, false).await;
    let dir = tempfile::tempdir().unwrap();
    let token = nodes::join_token(&env, &c.group, &c.name).await;
    let o = MariaDbOptions::new(dir.path());
    let node =
        MariaDbNode::start(nodes::options(&env, dir.path(), Some(token)), "127.0.0.1:0".parse().unwrap(), o.clone())
            .await
            .unwrap();
    wait_state(&node, NodeState::Serving, Duration::from_secs(30)).await;
    ok(&o, "CREATE DATABASE demo; CREATE TABLE demo.t (id INT PRIMARY KEY, v TEXT)");
    ok(&o, &format!("INSERT INTO demo.t VALUES (1, '{MARKER}')"));
    let port = node.engine().port().unwrap();
    let pid = node.engine().pid().unwrap();

    // The status API shows the engine and its server.
    let http = reqwest::Client::new();
    let status = || async {
        let r = http.get(format!("{}/v1/status", node.url())).bearer_auth(&c.data_credential).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    };
    let v = status().await;
    assert_eq!((v["state"].as_str(), v["engine"]["kind"].as_str()), (Some("SERVING"), Some("mariadb")), "{v}");
    assert_eq!(v["engine"]["mariadbd"]["pid"], pid, "{v}");
    assert_eq!(v["engine"]["mariadbd"]["port"], port, "{v}");
    assert_eq!(v["engine"]["health"]["state"], "SERVING", "{v}");
    // Every tablespace encrypted, with key id 1 at the data key's version (2·1).
    let ts = &v["engine"]["tablespaces"];
    assert!(ts["total"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(ts["unencrypted"], 0, "{v}");
    assert_eq!(ts["byKeyId"][0]["keyId"], 1, "{v}");
    assert_eq!(ts["byKeyId"][0]["versions"][0]["minKeyVersion"], 2, "{v}");

    // Key Vault unreachable (503 to everything): not a denial. mariadbd keeps running, the same
    // process, and keeps taking writes.
    let fault = env
        .emulator_admin(
            reqwest::Method::POST,
            "faults",
            Some(serde_json::json!({"vault": c.tenant.vault, "kind": {"kind": "server_error", "status": 503}})),
        )
        .await;
    wait_state(&node, NodeState::Degraded, Duration::from_secs(20)).await;
    assert_eq!(node.engine().pid(), Some(pid), "mariadbd was restarted while DEGRADED");
    ok(&o, "INSERT INTO demo.t VALUES (3, 'while degraded')");
    env.emulator_admin(reqwest::Method::DELETE, &format!("faults/{}", fault["id"].as_str().unwrap()), None).await;
    wait_state(&node, NodeState::Serving, Duration::from_secs(20)).await;
    assert_eq!(node.engine().pid(), Some(pid));

    // Revocation: within the interval and grace, mariadbd is stopped and clients are refused.
    let revoked = Instant::now();
    c.tenant.customer.delete_role_assignment(&c.crypto_assignment).await.unwrap();
    let down = wait_state(&node, NodeState::ShutDown, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(35);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid), "mariadbd still runs after the node shut down");
    eprintln!("revocation to mariadbd gone: {:.2} s", revoked.elapsed().as_secs_f64());
    assert_eq!(down.last_error.as_ref().unwrap().kind, "DENIED", "{down:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "mariadbd still listens");
    let (success, _) = sql(&o, "SELECT 1");
    assert!(!success, "a client reached mariadbd after the revocation");
    let v = status().await;
    assert_eq!(
        (v["state"].as_str(), v["engine"]["health"]["state"].as_str()),
        (Some("SHUT_DOWN"), Some("CLOSED")),
        "{v}"
    );

    // Restored: mariadbd is started again on the same port, with every row.
    c.tenant
        .customer
        .assign_role(&c.tenant.sp, atrest_emulator::scenario::roles::KEY_VAULT_CRYPTO_USER, &c.tenant.vault_id)
        .await
        .unwrap();
    wait_state(&node, NodeState::Serving, Duration::from_secs(30)).await;
    assert_eq!(node.engine().port(), Some(port));
    assert_ne!(node.engine().pid(), Some(pid));
    assert_eq!(ok(&o, "SELECT v FROM demo.t WHERE id = 1"), MARKER);
    assert_eq!(ok(&o, "SELECT v FROM demo.t WHERE id = 3"), "while degraded");
    ok(&o, "INSERT INTO demo.t VALUES (2, 'after restore')");

    let pid = node.engine().pid().unwrap();
    node.shutdown().await;
    assert!(!alive(pid), "mariadbd outlived the node's shutdown");
}
