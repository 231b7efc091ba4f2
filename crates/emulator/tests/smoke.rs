//! The emulator starts, writes its contract files, serves TLS from its CA, and keeps state
//! across a restart.

mod support;

#[tokio::test]
async fn start_writes_contract_files_and_state_survives_restart() {
    let t = support::TestEmu::start().await;
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.dir.path().join("emulator.json")).unwrap()).unwrap();
    assert_eq!(info["listen"], t.emu.addr().to_string());
    assert!(std::path::Path::new(info["ca_pem"].as_str().unwrap()).is_absolute());
    for k in ["tenant_id", "subscription_id", "client_id", "client_secret"] {
        assert!(info["bootstrap"][k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
    let before = t.bootstrap().clone();
    // An unknown host gets an Azure-shaped 404, over TLS that the client trusts.
    let r = t.http.get("https://login.microsoftonline.com/_nope").send().await.unwrap();
    assert!(r.status().is_client_error());
    let t = t.restart().await;
    assert_eq!(t.bootstrap(), &before);
}
