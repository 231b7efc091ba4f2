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
