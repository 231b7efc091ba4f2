//! `atrest node --engine mariadb` as a process: a kill -9 of the node leaves no mariadbd behind
//! (its parent-death signal), the node started again brings mariadbd back with its rows, and a
//! kill -9 of mariadbd alone is restarted by the node. Real Debian MariaDB, real emulator and
//! control plane.

#[path = "../../node/tests/nodes/mod.rs"]
mod nodes;
#[path = "../../control/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Env;

const ATREST: &str = env!("CARGO_BIN_EXE_atrest");
const LIMIT: Duration = Duration::from_secs(40);

struct NodeProc {
    child: Child,
    url: String,
}

fn spawn(env: &Env, dir: &Path, token: Option<&str>) -> NodeProc {
    let mut c = Command::new(ATREST);
    c.args(["node", "--engine", "mariadb", "--control-plane", env.url()])
        .arg("--data-dir")
        .arg(dir)
        .arg("--azure-endpoint")
        .arg(env.emu.addr().to_string())
        .arg("--azure-ca")
        .arg(&env.emu.info().ca_pem)
        .env("NO_COLOR", "1")
        .env_remove("ATREST_JOIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.with_extension("stderr")).unwrap());
    if let Some(t) = token {
        c.arg("--join-token").arg(t);
    }
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.trim_start().strip_prefix("status:") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                sent = true;
            }
        }
    });
    let url = rx.recv_timeout(LIMIT).expect("the node printed its status URL");
    NodeProc { child, url }
}

async fn wait_serving(node: &NodeProc, credential: &str, stderr: &Path) -> Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        let v = match http.get(format!("{}/v1/status", node.url)).bearer_auth(credential).send().await {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if v["state"] == "SERVING" && v["engine"]["health"]["state"] == "SERVING" {
            return v;
        }
        let log = std::fs::read_to_string(stderr).unwrap_or_default();
        assert!(Instant::now() < deadline, "not serving: {v}; stderr:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

async fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

fn sql(dir: &Path, q: &str) -> String {
    let out = Command::new("mariadb")
        .arg(format!("--socket={}", dir.join("mariadb/mariadbd.sock").display()))
        .args(["-u", "root", "--batch", "--skip-column-names", "-e", q])
        .output()
        .expect("the mariadb client: sudo apt-get install mariadb-client");
    assert!(out.status.success(), "{q}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pid_of(status: &Value) -> u32 {
    status["engine"]["mariadbd"]["pid"].as_u64().expect("mariadbd's pid in the status") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mariadbd_outlives_a_killed_node_and_a_killed_mariadbd_is_restarted() {
    let env = Env::start_with(nodes::fast_checks()).await;
    let c = nodes::cluster(&env, "maria-proc", 1, false).await;
    let token = nodes::join_token(&env, &c.group, &c.name).await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    let stderr = dir.with_extension("stderr");

    let mut node = spawn(&env, &dir, Some(&token));
    let status = wait_serving(&node, &c.data_credential, &stderr).await;
    let first = pid_of(&status);
    sql(
        &dir,
        "CREATE DATABASE demo; CREATE TABLE demo.t (id INT PRIMARY KEY, v TEXT); INSERT INTO demo.t VALUES (1, 'kept')",
    );

    // kill -9 of the node: mariadbd dies with it (PR_SET_PDEATHSIG), holding no keys.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    assert!(gone_within(first, Duration::from_secs(10)).await, "mariadbd {first} outlived its node");

    // Started again: mariadbd comes back (after the key server) with the row.
    let mut node = spawn(&env, &dir, None);
    let status = wait_serving(&node, &c.data_credential, &stderr).await;
    let second = pid_of(&status);
    assert_ne!(second, first);
    assert_eq!(sql(&dir, "SELECT v FROM demo.t WHERE id = 1"), "kept");

    // kill -9 of mariadbd alone: the node starts it again and says so.
    unsafe { libc::kill(second as i32, libc::SIGKILL) };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + LIMIT;
    let restarted = loop {
        let v: Value = http
            .get(format!("{}/v1/status", node.url))
            .bearer_auth(&c.data_credential)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["engine"]["mariadbd"]["restarts"] == 1 && v["engine"]["health"]["state"] == "SERVING" {
            break v;
        }
        assert!(Instant::now() < deadline, "mariadbd was not restarted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let third = pid_of(&restarted);
    assert_ne!(third, second);
    assert_eq!(sql(&dir, "SELECT v FROM demo.t WHERE id = 1"), "kept");

    node.child.kill().unwrap();
    node.child.wait().unwrap();
    assert!(gone_within(third, Duration::from_secs(10)).await, "mariadbd {third} outlived its node");
}
