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
