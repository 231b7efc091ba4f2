//! Two control-plane replicas on one PostgreSQL: writes through one are read through the other,
//! and background revalidation processes each project once per interval across both replicas.
//! The README's test command starts the throwaway PostgreSQL (scripts/test.sh); without one,
//! `atrest_store::testing` starts its own cluster.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};

use atrest_emulator::scenario::VaultAuth;
use support::{ACCEPT, Env, Options, eventually, validations};

/// PATCHes the key identifier of `group`'s configuration through `replica`.
async fn patch_key_through(
    env: &Env,
    replica: &atrest_control::ControlPlane,
    group: &str,
    kid: &str,
) -> (StatusCode, serde_json::Value) {
    let r = env
        .http
        .patch(format!("{}/api/atlas/v2/groups/{group}/encryptionAtRest", replica.url()))
        .bearer_auth(&env.token)
        .header("Accept", ACCEPT)
        .json(&serde_json::json!({"azureKeyVault": {"keyIdentifier": kid}}))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

fn background_validations(metrics: &str) -> u64 {
    validations(metrics, "background")
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
    let (s, v) = patch_key_through(&env, &b, &groups[0], &t.unversioned_kid()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{}/encryptionAtRest", groups[0]), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["azureKeyVault"]["keyIdentifier"], t.unversioned_kid().as_str(), "{v}");

    // Background revalidation on both replicas, until each has done some of it and together
    // they have done `rounds` per project. Waiting for that (not for a guessed time) keeps the
    // test right on a loaded machine; the window it took is measured and bounds the count.
    let count = |cp: &atrest_control::ControlPlane| background_validations(&cp.state().metrics.render());
    let n = groups.len() as u64;
    let rounds = 6u64;
    let started = std::time::Instant::now();
    let (a_before, b_before) = (count(&env.control), count(&b));
    let done = eventually(Duration::from_secs(120), || async {
        let (a, b_count) = (count(&env.control) - a_before, count(&b) - b_before);
        a > 0 && b_count > 0 && a + b_count >= n * rounds
    })
    .await;
    let window = started.elapsed().as_secs_f64();
    let (a, b_count) = (count(&env.control) - a_before, count(&b) - b_before);
    assert!(
        done,
        "after {window:.1} s: A revalidated {a} times and B {b_count} times (want both > 0, total >= {})",
        n * rounds
    );
    // Each project is claimed at most once per interval (whichever replica asks first), so a
    // window of W seconds holds at most W / interval + 1 claims per project, plus one claimed
    // before the window and finished inside it. If both replicas processed every due project
    // the total would reach its target in half the time and break this bound.
    let bound = (n as f64 * (window / interval as f64 + 2.0)).floor() as u64;
    assert!(
        a + b_count <= bound,
        "projects were revalidated more than once per interval: A {a}, B {b_count} in {window:.1} s (at most {bound})"
    );

    // B alone keeps the schedule: with A shut down, every project's last check moves on, and
    // only B is left to have made it.
    let http = env.http.clone();
    let token = env.token.clone();
    let Env { control: a_plane, .. } = env;
    a_plane.shutdown().await;
    let last_checked = |g: String| {
        let (http, token, url) = (http.clone(), token.clone(), b.url().to_string());
        async move {
            let r = http
                .get(format!("{url}/api/atrest/v1/groups/{g}/encryptionAtRest/azureKeyVault/status"))
                .bearer_auth(&token)
                .header("Accept", ACCEPT)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<serde_json::Value>().await.unwrap()["lastValidatedDate"].clone()
        }
    };
    let mut before = Vec::new();
    for g in &groups {
        before.push(last_checked(g.clone()).await);
    }
    let b_alone = count(&b);
    let moved = eventually(Duration::from_secs(60), || async {
        for (g, old) in groups.iter().zip(&before) {
            if last_checked(g.clone()).await == *old {
                return false;
            }
        }
        true
    })
    .await;
    assert!(moved, "with A shut down, B did not revalidate every project (B's count went {b_alone} -> {})", count(&b));
    assert!(count(&b) >= b_alone + n, "B's own metrics count each of its revalidations");
    b.shutdown().await;
}

/// design.md §10: one Entra request per tenant per token lifetime whatever the number of
/// replicas. Replica B validates a configuration with the token replica A fetched (through the
/// store's shared tier) instead of asking Entra itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_platform_apps_tokens_through_the_store() {
    let url = atrest_store::testing::fresh_postgres_database().await.expect("a throwaway PostgreSQL");
    let env = Env::start_with(Options { store_url: Some(url), ..Options::default() }).await;
    let b = env.replica().await;
    let t = env.tenant(VaultAuth::Rbac).await;
    t.grant_rbac().await;
    let g = env.project("shared").await;
    let role = env.register(&g, &t).await;
    let (s, v) = env.patch_ear(&g, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let stats = |cp: &atrest_control::ControlPlane| cp.state().platform.cache.stats();
    let a_requests = stats(&env.control).token_requests;
    assert!(a_requests >= 1, "A asked Entra for its tokens: {:?}", stats(&env.control));

    // B validates the same vault (a PATCH through B checks the key): with A's tokens.
    let (status, v) = patch_key_through(&env, &b, &g, &t.unversioned_kid()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true, "{v}");
    let on_b = stats(&b);
    assert_eq!(on_b.token_requests, 0, "B asked Entra although A's token was in the store: {on_b:?}");
    assert!(on_b.shared_hits >= 1, "{on_b:?}");
    assert_eq!(stats(&env.control).token_requests, a_requests, "A did not ask again either");

    // The store holds the token sealed: its bytes are nowhere in the row.
    let state = env.control.state();
    let tokens = state.platform.secretless().unwrap().tokens();
    let tenant: atrest_domain::AzureUuid = t.customer.tenant_id().parse().unwrap();
    let environment = atrest_domain::AzureEnvironment::Azure;
    let token = tokens.key_vault_token(environment, &tenant).await.unwrap();
    let key = tokens.cache_key(environment, &tenant, &format!("{}/.default", environment.vault_resource()));
    let row =
        state.store.shared_token(&atrest_control::shared_tokens::row_id(&key)).await.unwrap().expect("a stored row");
    let secret = token.expose_secret().as_bytes();
    assert!(!row.sealed.windows(secret.len()).any(|w| w == secret), "the token is stored in clear");
    assert_eq!(row.sha256, token.sha256());
    b.shutdown().await;
}
