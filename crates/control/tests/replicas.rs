//! Two control-plane replicas on one PostgreSQL: writes through one are read through the other,
//! and background revalidation processes each project once per interval across both replicas.
//! The README's test command starts the throwaway PostgreSQL (scripts/test.sh); without one,
//! `atrest_store::testing` starts its own cluster.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};

use atrest_emulator::scenario::VaultAuth;
use support::{ACCEPT, Env, Options};

/// `atrest_validations_total{trigger="background",...}` summed over results, from /metrics text.
fn background_validations(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("atrest_validations_total{") && l.contains("trigger=\"background\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_writes_and_split_revalidation() {
    let url = atrest_store::testing::fresh_postgres_database().await.expect("a throwaway PostgreSQL");
    let interval = 2u64;
    let env =
        Env::start_with(Options { store_url: Some(url), revalidate_interval_secs: interval, ..Options::default() })
            .await;
    let b = env.replica().await;

    // Projects configured through replica A ...
    let t = env.tenant(VaultAuth::Rbac).await;
    t.grant_rbac().await;
    let mut groups = Vec::new();
    for i in 0..4 {
        let g = env.project(&format!("p{i}")).await;
        let role = env.register(&g, &t).await;
        let (s, v) = env.patch_ear(&g, t.ear_block(&role)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        groups.push(g);
    }
    // ... are visible through replica B, with the same bearer token (tokens live in the store).
    for g in &groups {
        let r = env
            .http
            .get(format!("{}/api/atlas/v2/groups/{g}/encryptionAtRest", b.url()))
            .bearer_auth(&env.token)
            .header("Accept", ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["azureKeyVault"]["valid"], true, "{v}");
    }
    // A write through B is read through A.
    let r = env
        .http
        .patch(format!("{}/api/atlas/v2/groups/{}/encryptionAtRest", b.url(), groups[0]))
        .bearer_auth(&env.token)
        .header("Accept", ACCEPT)
        .json(&serde_json::json!({"azureKeyVault": {"keyIdentifier": t.unversioned_kid()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, v) = env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{}/encryptionAtRest", groups[0]), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["azureKeyVault"]["keyIdentifier"], t.unversioned_kid().as_str(), "{v}");

    // Let background revalidation run for a few intervals on both replicas.
    let a_before = background_validations(&env.control.state().metrics.render());
    let b_before = background_validations(&b.state().metrics.render());
    let window = Duration::from_secs(4 * interval);
    tokio::time::sleep(window).await;
    let a = background_validations(&env.control.state().metrics.render()) - a_before;
    let b_count = background_validations(&b.state().metrics.render()) - b_before;
    let total = a + b_count;
    let n = groups.len() as u64;
    let intervals = window.as_secs() / interval;
    // Once per project per interval, give or take the interval at each edge of the window; if
    // both replicas processed every due project the total would be about twice as high.
    assert!(total >= n * (intervals - 1), "too few revalidations: A {a}, B {b_count}");
    assert!(total <= n * (intervals + 1), "projects were revalidated more than once per interval: A {a}, B {b_count}");
    b.shutdown().await;
}
