//! No secret, token or key material ever reaches the logs. Runs the secret-bearing flows
//! (service-account token issue and use, static-credential PATCH with its secret, secretless
//! PATCH with the platform certificate, dry run, revalidation) with every atrest crate logging
//! at TRACE and everything else at DEBUG, then greps the captured output.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::json;

use atrest_emulator::scenario::VaultAuth;
use support::{Env, Options, eventually, validations};

/// How long background work may take on a loaded machine before the test gives up.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_secrets_tokens_or_key_material() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,atrest_control=trace,atrest_azure=trace,atrest_store=trace,atrest_emulator=trace",
        ))
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // Reads revalidate when no check (background ones included) ran in the last second, so the
    // background interval must be longer than that for a read ever to be due.
    let env =
        Env::start_with(Options { revalidate_interval_secs: 3, on_read_min_interval_secs: 1, ..Options::default() })
            .await;
    let metrics = || env.control.state().metrics.render();
    let background = || validations(&metrics(), "background");
    // The "revalidated" line jobs.rs logs once a background result is recorded, for `group`.
    let recorded = |group: &str| {
        let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
        logs.lines().filter(|l| l.contains("revalidated") && l.contains(group)).count()
    };
    let group = env.project("logs").await;
    let t = env.tenant(VaultAuth::Rbac).await;

    // Static credentials with a secret.
    let (app_id, static_secret, _) = env.static_app(&t).await;
    let (s, v) = env
        .patch_ear(
            &group,
            json!({
                "enabled": true, "clientID": app_id, "tenantID": t.customer.tenant_id(), "secret": static_secret,
                "subscriptionID": t.customer.subscription_id(), "resourceGroupName": t.rg, "keyVaultName": t.vault,
                "keyIdentifier": t.kid, "azureEnvironment": "AZURE",
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A background revalidation with the static secret (unsealed, sent to Entra) runs and is
    // recorded before the grep: wait for it rather than for a guessed time.
    let (before, lines) = (background(), recorded(&group));
    let ran = eventually(LIMIT, || async { background() > before && recorded(&group) > lines }).await;
    assert!(ran, "no background revalidation of the static credentials was recorded: {}", metrics());
    assert_eq!(env.status(&group).await["credentialMode"], "STATIC_CREDENTIALS");

    // Migrate to the secretless mode, run a dry run, then a background and an on-read check.
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, json!({"roleId": role})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = env
        .atlas(
            reqwest::Method::POST,
            &format!("/api/atrest/v1/groups/{group}/encryptionAtRest/azureKeyVault:validate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (before, lines) = (background(), recorded(&group));
    let ran = eventually(LIMIT, || async { background() > before && recorded(&group) > lines }).await;
    assert!(ran, "no background revalidation of the secretless configuration was recorded: {}", metrics());
    assert_eq!(env.status(&group).await["credentialMode"], "SECRETLESS");
    // A GET revalidates when the last check is over a second old: keep reading until one did.
    let read = eventually(LIMIT, || async {
        env.get_ear(&group).await;
        validations(&metrics(), "read") > 0
    })
    .await;
    assert!(read, "no GET revalidated the configuration: {}", metrics());
    // A refused token request and a refused bearer token.
    let r = env
        .http
        .post(format!("{}/api/oauth/token", env.url()))
        .basic_auth(&env.client_id, Some("wrong-secret-value-1234"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.len() > 1000, "the capture should hold the run's logs ({} bytes)", logs.len());
    let key_body: String = env.platform.key_pem.lines().filter(|l| !l.starts_with("-----")).take(2).collect();
    let secrets = [
        ("service account secret", env.client_secret.as_str()),
        ("service account bearer token", env.token.as_str()),
        ("static Azure client secret", static_secret.as_str()),
        ("platform private key", key_body.as_str()),
        ("emulator bootstrap secret", env.emu.info().bootstrap.client_secret.as_str()),
        ("customer admin secret", t.customer.admin.client_secret.as_str()),
        ("wrong secret attempt", "wrong-secret-value-1234"),
    ];
    for (what, secret) in secrets {
        assert!(secret.len() >= 16, "{what} is long enough to grep for");
        assert!(!logs.contains(secret), "the logs contain the {what}");
    }
    // No Entra access token (JWT) appears either.
    assert!(!logs.contains("eyJ0eX") && !logs.contains("eyJhbGci"), "the logs contain a JWT");
}
