//! Revalidation semantics (issue 10 §6, §4): "Try Again" (`POST .../azureKeyVault:revalidate`)
//! validates and records now, and the dry run points at it when the stored configuration passes
//! but is stored INVALID; events are stamped when the check finished; a shortened
//! `revalidate_interval_secs` reschedules at start; a failure inside the control plane is never
//! the customer's INVALID.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_control::ControlPlane;
use atrest_emulator::scenario::VaultAuth;
use atrest_store::{AzureCredentials, EarConfigWrite, GroupId, Page};
use support::{Env, Options, Tenant};

async fn try_again(env: &Env, group: &str) -> (StatusCode, Value) {
    env.atlas(Method::POST, &format!("/api/atlas/v2/groups/{group}/encryptionAtRest/azureKeyVault:revalidate"), None)
        .await
}

/// A project with `t`'s key configured (secretless) and valid.
async fn configured(env: &Env, t: &Tenant, name: &str) -> String {
    let group = env.project(name).await;
    let role = env.register(&group, t).await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    group
}

async fn set_enabled(t: &Tenant, enabled: bool) {
    let version = t.kid.rsplit('/').next().unwrap();
    t.customer.update_key(&t.vault, "cmk", version, json!({"attributes": {"enabled": enabled}})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_again_records_the_result_now_and_the_dry_run_points_at_it() {
    // The background check is an hour away: only the trigger can record anything.
    let env = Env::start().await;
    let t = env.tenant(VaultAuth::Rbac).await;
    t.grant_rbac().await;
    let group = configured(&env, &t, "try-again").await;

    set_enabled(&t, false).await;
    let (s, v) = try_again(&env, &group).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], false, "{v}");
    assert_eq!(v["azureKeyVault"]["keyIdentifier"], t.kid.as_str(), "the EncryptionAtRest document, as GET answers");
    assert_eq!(v, env.get_ear(&group).await);
    assert_eq!(env.status(&group).await["state"], "INVALID");
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID".to_string()));

    // The key is back: the dry run of the stored configuration passes but records nothing, and
    // says how to record it.
    set_enabled(&t, true).await;
    let (_, r) = env.dry_run(&group, json!({})).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    assert_eq!(r["storedState"], "INVALID", "{r}");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.contains("still INVALID")
            && summary
                .contains(&format!("POST /api/atlas/v2/groups/{group}/encryptionAtRest/azureKeyVault:revalidate")),
        "{summary}"
    );
    assert_eq!(env.status(&group).await["state"], "INVALID", "a dry run records nothing");

    let (s, v) = try_again(&env, &group).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true, "{v}");
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIG_IS_VALID".to_string()));
    let (_, r) = env.dry_run(&group, json!({})).await;
    assert!(r.get("storedState").is_none(), "no hint once the stored state is valid: {r}");

    // Project Owner only; a project without a configuration says what to do.
    let other = env.project("unconfigured").await;
    let (s, e) = try_again(&env, &other).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::NOT_FOUND, Some("RESOURCE_NOT_FOUND")), "{e}");
    assert!(e["detail"].as_str().unwrap().contains("PATCH"), "{e}");
    let (s, _) = env
        .atlas_as(
            "not-a-token",
            Method::POST,
            &format!("/api/atlas/v2/groups/{group}/encryptionAtRest/azureKeyVault:revalidate"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stamped_when_the_check_finished_not_when_it_started() {
    let env = Env::start().await;
    let t = env.tenant(VaultAuth::Rbac).await;
    t.grant_rbac().await;
    let group = configured(&env, &t, "stamps").await;
    set_enabled(&t, false).await;
    let (s, _) = try_again(&env, &group).await;
    assert_eq!(s, StatusCode::OK);
    set_enabled(&t, true).await;

    // Every request to the vault now takes 1.5 s: a check takes at least two of them in turn.
    env.emulator_admin(
        Method::POST,
        "faults",
        Some(json!({"vault": t.vault, "kind": {"kind": "latency", "millis": 1500}})),
    )
    .await;
    let started = time::OffsetDateTime::now_utc();
    let (s, v) = try_again(&env, &group).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true, "{v}");
    let events =
        env.control.state().store.list_events(&GroupId::parse(&group).unwrap(), Page::first()).await.unwrap().events;
    let restored = events.iter().find(|e| e.event_type_name == "ENCRYPTION_AT_REST_CONFIG_IS_VALID").unwrap();
    assert!(
        restored.created_at >= started + Duration::from_millis(3000),
        "stamped {} but the check started at {started} and took two 1.5 s round trips",
        restored.created_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_revalidate_interval_reschedules_at_start() {
    let env = Env::start().await; // revalidate_interval_secs = 3600
    let t = env.tenant(VaultAuth::Rbac).await;
    t.grant_rbac().await;
    let group = configured(&env, &t, "interval").await;
    let id = GroupId::parse(&group).unwrap();
    let before = env.control.state().store.get_ear_config(&id).await.unwrap().unwrap().next_validation_at;
    assert!(before > time::OffsetDateTime::now_utc() + Duration::from_secs(3000), "{before}");

    // Another control plane on the same store (same KEK), started with a 60 s interval.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(env.config.data_dir.join("kek.key"), dir.path().join("kek.key")).unwrap();
    let mut config = env.config.clone();
    config.store_url = Some(env.config.store_url());
    config.data_dir = dir.path().to_path_buf();
    config.validation.revalidate_interval_secs = 60;
    let started = time::OffsetDateTime::now_utc();
    let short = ControlPlane::start(config).await.unwrap();
    let after = short.state().store.get_ear_config(&id).await.unwrap().unwrap().next_validation_at;
    assert!(after <= time::OffsetDateTime::now_utc() + Duration::from_secs(60), "{after} (was {before})");
    assert!(after >= started + Duration::from_secs(59), "moved to now + 60 s, not earlier: {after}");
    short.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_failure_is_recorded_as_such_and_keeps_the_last_verdict() {
    let env = Env::start_with(Options { revalidate_interval_secs: 1, ..Options::default() }).await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let (client_id, secret, _) = env.static_app(&t).await;
    let group = env.project("internal").await;
    let block = json!({
        "enabled": true, "clientID": client_id, "tenantID": t.customer.tenant_id(), "secret": secret,
        "subscriptionID": t.customer.subscription_id(), "resourceGroupName": t.rg, "keyVaultName": t.vault,
        "keyIdentifier": t.kid, "azureEnvironment": "AZURE",
    });
    let (s, v) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The sealed secret in the store no longer opens (as after a KEK change or a corrupted row).
    let store = &env.control.state().store;
    let id = GroupId::parse(&group).unwrap();
    let stored = store.get_ear_config(&id).await.unwrap().unwrap();
    let mut azure = stored.azure.clone();
    let AzureCredentials::Static { secret_ciphertext, .. } = &mut azure.credentials else { panic!("static") };
    *secret_ciphertext = vec![1u8; 60];
    let write = EarConfigWrite {
        azure,
        status: stored.status.clone(),
        now: time::OffsetDateTime::now_utc(),
        next_validation_at: time::OffsetDateTime::now_utc(),
    };
    store.put_ear_config(&id, Some(stored.config_version), &write, &[]).await.unwrap();

    let (s, e) = try_again(&env, &group).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::INTERNAL_SERVER_ERROR, Some("UNEXPECTED_ERROR")), "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("failure inside the control plane, not because of Azure")
            && detail.contains("does not open under this control plane's key-encryption key")
            && detail.contains("The last result (VALID) is kept"),
        "{detail}"
    );

    // The background check hits the same failure: recorded, counted, and the verdict stays.
    let metrics =
        || async { env.http.get(format!("{}/metrics", env.url())).send().await.unwrap().text().await.unwrap() };
    let counted = env
        .wait_for(Duration::from_secs(30), || async {
            metrics().await.contains("atrest_validations_total{trigger=\"background\",result=\"internal_error\"}")
        })
        .await;
    assert!(counted, "{}", metrics().await);
    assert!(metrics().await.contains("atrest_validations_total{trigger=\"try_again\",result=\"internal_error\"} 1"));
    let status = env.status(&group).await;
    assert_eq!((status["state"].as_str(), status["valid"].as_bool()), (Some("VALID"), Some(true)), "{status}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"]["valid"], true);
    let events = env.event_types(&group).await;
    assert!(events.contains(&"ENCRYPTION_AT_REST_VALIDATION_INTERNAL_ERROR".to_string()), "{events:?}");
    assert!(!events.contains(&"ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID".to_string()), "{events:?}");
}
