//! Validation against the emulator, check by check: the dry run (every check with its status,
//! Azure's code and the `az` fix; the missing role or access-policy permission named; RBAC
//! propagation told apart from a missing grant), key states (disabled, key_ops, unversioned ids
//! whose current version is unusable), purge protection, key binding, and an unreachable vault
//! told apart from a denial in revalidation and events.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_emulator::scenario::{self, VaultAuth};
use support::{Env, Options};

/// The check named `name` in a dry-run report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check '{name}' in {report}"))
}

fn statuses(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["status"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_without_grants_names_each_missing_role_and_stores_nothing() {
    let env = Env::start().await;
    let group = env.project("dry").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;

    let (s, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["outcome"], "INVALID", "{r}");
    assert_eq!(
        statuses(&r),
        [
            ("shape", "PASSED"),
            ("token", "PASSED"),
            ("vault", "WARNING"),
            ("key", "FAILED"),
            ("encrypt_decrypt", "FAILED"),
            ("permissions", "FAILED")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Without Reader, ARM's 403 only skips the checks that need the vault's metadata.
    let vault = check(&r, "vault");
    assert_eq!(vault["azureErrorCode"], "AuthorizationFailed");
    let message = vault["message"].as_str().unwrap();
    assert!(message.contains("two checks were skipped") && message.contains("purge protection"), "{message}");
    assert_eq!(
        vault["fix"].as_str().unwrap(),
        format!("az role assignment create --assignee {} --role Reader --scope {}", t.sp, t.vault_id)
    );
    let key = check(&r, "key");
    assert_eq!(key["azureErrorCode"], "ForbiddenByRbac");
    assert!(key["fix"].as_str().unwrap().contains("Key Vault Crypto User"), "{key}");
    // The grants cannot be read without Reader: Key Vault's refusals name what is missing.
    let perms = check(&r, "permissions");
    assert!(perms["message"].as_str().unwrap().contains("Key Vault refused get, encrypt"), "{perms}");
    assert!(perms["fix"].as_str().unwrap().contains("--role \"Key Vault Crypto User\""), "{perms}");
    assert!(r.get("keyVersionInUse").is_none(), "{r}");
    assert!(r["summary"].as_str().unwrap().starts_with("Check 'key' failed"), "{r}");

    // Nothing stored, no event recorded.
    assert_eq!(env.get_ear(&group).await["azureKeyVault"], json!({"enabled": false}));
    assert!(env.event_types(&group).await.is_empty());

    // With the grants, every check passes and the version is reported.
    t.grant_rbac().await;
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    assert!(statuses(&r).iter().all(|(_, s)| s == "PASSED"), "{r}");
    assert_eq!(r["keyVersionInUse"], t.kid.as_str());
    assert!(check(&r, "permissions")["message"].as_str().unwrap().contains("Key Vault Crypto User"), "{r}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"], json!({"enabled": false}), "a dry run stores nothing");

    // The dry run accepts an EncryptionAtRest body too, and needs Project Owner like a PATCH.
    let (s, r) = env.dry_run(&group, json!({"azureKeyVault": t.ear_block(&role)})).await;
    assert_eq!((s, r["outcome"].clone()), (StatusCode::OK, json!("VALID")), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_says_when_a_role_assignment_has_not_propagated_yet() {
    let env = Env::start().await;
    let group = env.project("propagation").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.customer.assign_role(&t.sp, scenario::roles::READER, &t.vault_id).await.unwrap();
    env.emulator_admin(Method::PUT, "settings", Some(json!({"rbac_propagation_delay_secs": 8}))).await;
    t.customer.assign_role(&t.sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &t.vault_id).await.unwrap();

    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "INVALID", "{r}");
    let key = check(&r, "key");
    assert_eq!(key["azureErrorCode"], "ForbiddenByRbac", "{r}");
    let message = key["message"].as_str().unwrap();
    assert!(message.contains("already has 'Key Vault Crypto User'") && message.contains("minutes"), "{message}");
    assert!(key["fix"].as_str().unwrap().starts_with("az role assignment list"), "{key}");
    assert_eq!(check(&r, "permissions")["status"], "PASSED", "{r}");

    // A PATCH is refused meanwhile, and nothing is stored.
    let (s, e) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_AZURE_CREDENTIALS")), "{e}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"], json!({"enabled": false}));

    // Once propagated (8 s after the assignment), the same PATCH passes.
    let propagated = env
        .wait_for(Duration::from_secs(30), || async {
            env.dry_run(&group, t.ear_block(&role)).await.1["outcome"] == "VALID"
        })
        .await;
    assert!(propagated);
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_policy_missing_a_permission_is_named_with_the_set_policy_fix() {
    let env = Env::start().await;
    let group = env.project("policy").await;
    let t = env.tenant(VaultAuth::AccessPolicies).await;
    let role = env.register(&group, &t).await;
    t.customer.assign_role(&t.sp, scenario::roles::READER, &t.vault_id).await.unwrap();
    t.customer.set_access_policy(&t.vault_id, &t.sp, &["get", "wrapKey", "unwrapKey"]).await.unwrap();

    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "INVALID", "{r}");
    assert_eq!(check(&r, "vault")["status"], "PASSED", "{r}");
    assert_eq!(check(&r, "key")["status"], "PASSED", "{r}");
    let crypto = check(&r, "encrypt_decrypt");
    assert_eq!(
        (crypto["status"].as_str(), crypto["azureErrorCode"].as_str()),
        (Some("FAILED"), Some("ForbiddenByPolicy"))
    );
    assert!(crypto["message"].as_str().unwrap().contains("keys encrypt permission"), "{crypto}");
    let perms = check(&r, "permissions");
    assert_eq!(perms["status"], "FAILED");
    assert!(perms["message"].as_str().unwrap().contains("lacks the key permissions encrypt, decrypt"), "{perms}");
    // set-policy replaces the key permissions: the fix keeps what is granted.
    assert_eq!(
        perms["fix"].as_str().unwrap(),
        format!(
            "az keyvault set-policy --name {} --resource-group {} --object-id {} --key-permissions get wrapKey unwrapKey encrypt decrypt",
            t.vault, t.rg, t.sp
        )
    );

    // No access policy at all.
    t.customer.remove_access_policy(&t.vault_id, &t.sp).await.unwrap();
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(check(&r, "key")["azureErrorCode"], "ForbiddenByPolicy", "{r}");
    assert!(check(&r, "permissions")["message"].as_str().unwrap().contains("has none for service principal"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_keys_are_refused_with_the_fix_and_nothing_changes() {
    let env = Env::start().await;
    let group = env.project("keys").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let version = t.kid.rsplit('/').next().unwrap().to_string();

    // Disabled: the wrap still works in Azure, so only the server-side unwrap and the key GET
    // catch it.
    t.customer.update_key(&t.vault, "cmk", &version, json!({"attributes": {"enabled": false}})).await.unwrap();
    let (s, e) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "INVALID_AZURE_CREDENTIALS");
    let detail = e["detail"].as_str().unwrap();
    assert!(detail.contains("Check 'key' failed") && detail.contains("is disabled"), "{detail}");
    assert!(
        detail.contains(&format!(
            "az keyvault key set-attributes --vault-name {} --name cmk --version {version} --enabled true",
            t.vault
        )),
        "{detail}"
    );
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(check(&r, "key")["azureErrorCode"], "KeyDisabled", "{r}");
    assert_eq!(check(&r, "encrypt_decrypt")["status"], "SKIPPED", "{r}");

    // Enabled, but key_ops without decrypt.
    t.customer
        .update_key(
            &t.vault,
            "cmk",
            &version,
            json!({"attributes": {"enabled": true}, "key_ops": ["encrypt", "wrapKey"]}),
        )
        .await
        .unwrap();
    let (s, e) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("does not allow decrypt") && detail.contains("--ops encrypt decrypt wrapKey unwrapKey"),
        "{detail}"
    );

    // A key that does not exist.
    let mut block = t.ear_block(&role);
    block["keyIdentifier"] = json!(format!("https://{}.vault.azure.net/keys/nope", t.vault));
    let (s, e) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("KeyNotFound"), "{e}");

    assert_eq!(env.get_ear(&group).await["azureKeyVault"], json!({"enabled": false}));
    let events = env.event_types(&group).await;
    assert!(events.iter().all(|e| e == "ENCRYPTION_AT_REST_CONFIGURATION_VALIDATION_FAILED"), "{events:?}");
    assert_eq!(events.len(), 3, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unversioned_key_uses_its_latest_usable_version() {
    let env = Env::start().await;
    let group = env.project("versions").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    // Rotate (a second version), then disable the new current version.
    let newer = t.customer.create_key(&t.vault, "cmk", None).await.unwrap();
    assert_ne!(newer, t.kid);
    let newer_version = newer.rsplit('/').next().unwrap();
    t.customer.update_key(&t.vault, "cmk", newer_version, json!({"attributes": {"enabled": false}})).await.unwrap();

    let mut block = t.ear_block(&role);
    block["keyIdentifier"] = json!(t.unversioned_kid());
    let (s, v) = env.patch_ear(&group, block.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["keyIdentifier"], t.unversioned_kid().as_str());
    assert_eq!(env.status(&group).await["keyVersionInUse"], t.kid.as_str(), "the older, enabled version");

    // Enable the newer one: the dry run now resolves to it.
    t.customer.update_key(&t.vault, "cmk", newer_version, json!({"attributes": {"enabled": true}})).await.unwrap();
    let (_, r) = env.dry_run(&group, block).await;
    assert_eq!(r["keyVersionInUse"], newer.as_str(), "{r}");
    assert!(check(&r, "key")["message"].as_str().unwrap().contains("resolved to version"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_protection_off_is_a_warning_shown_in_the_status() {
    let env = Env::start().await;
    let group = env.project("purge").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    let vault = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let vault_id = t.customer.create_vault(&t.rg, &vault, VaultAuth::Rbac, false).await.unwrap();
    let kid = t.customer.create_key(&vault, "cmk", None).await.unwrap();
    t.customer.assign_role(&t.sp, scenario::roles::READER, &vault_id).await.unwrap();
    t.customer.assign_role(&t.sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &vault_id).await.unwrap();
    let mut block = t.ear_block(&role);
    block["keyVaultName"] = json!(vault);
    block["keyIdentifier"] = json!(kid);

    let (_, r) = env.dry_run(&group, block.clone()).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    let v = check(&r, "vault");
    assert_eq!(v["status"], "WARNING");
    assert!(v["fix"].as_str().unwrap().contains("--enable-purge-protection true"), "{v}");

    let (s, body) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["azureKeyVault"]["valid"], true);
    let status = env.status(&group).await;
    assert!(status["detail"].as_str().unwrap().contains("purge protection off"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_binding_requires_the_project_tag_when_the_platform_asks_for_it() {
    let env = Env::start_with(Options { require_key_binding: true, ..Options::default() }).await;
    let group = env.project("bound").await;
    let other = env.project("other").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;

    // The untagged key is refused with atrest's code and the tagging command.
    let (s, e) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT");
    assert!(e["detail"].as_str().unwrap().contains(&format!("--tags atrest-project={group}")), "{e}");

    // A key bound to another project is refused too: the confused deputy of design.md §6.
    let foreign = t.customer.create_key(&t.vault, "foreign", Some(json!({"atrest-project": other}))).await.unwrap();
    let mut block = t.ear_block(&role);
    block["keyIdentifier"] = json!(foreign);
    let (s, e) = env.patch_ear(&group, block).await;
    assert_eq!(
        (s, e["errorCode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ENCRYPTION_AT_REST_KEY_NOT_BOUND_TO_PROJECT"))
    );
    assert!(e["detail"].as_str().unwrap().contains("bound to another project"), "{e}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"], json!({"enabled": false}));

    // Tagged with this project: accepted.
    let bound = t.customer.create_key(&t.vault, "bound", Some(json!({"atrest-project": group}))).await.unwrap();
    let mut block = t.ear_block(&role);
    block["keyIdentifier"] = json!(bound);
    let (s, v) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_vault_is_not_a_denial() {
    let env =
        Env::start_with(Options { revalidate_interval_secs: 1, retry_budget_secs: 1, ..Options::default() }).await;
    let group = env.project("outage").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The vault answers 503 to everything: revalidation reports UNREACHABLE, keeps valid=true.
    let fault = env
        .emulator_admin(
            Method::POST,
            "faults",
            Some(json!({"vault": t.vault, "kind": {"kind": "server_error", "status": 503}})),
        )
        .await;
    let unreachable =
        env.wait_for(Duration::from_secs(30), || async { env.status(&group).await["state"] == "UNREACHABLE" }).await;
    assert!(unreachable, "{}", env.status(&group).await);
    let status = env.status(&group).await;
    assert_eq!(status["valid"], true, "{status}");
    assert!(status["detail"].as_str().unwrap().contains("unreachable"), "{status}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"]["valid"], true);
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_KMS_NETWORK_ACCESS_DENIED".to_string()));
    assert!(!env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID".to_string()));

    // A PATCH while Azure is unreachable is refused and says so; the stored one stays.
    let mut block = t.ear_block(&role);
    block["keyIdentifier"] = json!(t.unversioned_kid());
    let (s, e) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("could not be reached"), "{e}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"]["keyIdentifier"], t.kid.as_str());

    // The vault is back: VALID again with a restored event.
    env.emulator_admin(Method::DELETE, &format!("faults/{}", fault["id"].as_str().unwrap()), None).await;
    let back = env.wait_for(Duration::from_secs(30), || async { env.status(&group).await["state"] == "VALID" }).await;
    assert!(back, "{}", env.status(&group).await);
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_KMS_NETWORK_ACCESS_RESTORED".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_metrics() {
    let env = Env::start().await;
    let group = env.project("ops").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, _) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK);

    for path in ["/healthz", "/readyz"] {
        let r = env.http.get(format!("{}{path}", env.url())).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let metrics = env.http.get(format!("{}/metrics", env.url())).send().await.unwrap().text().await.unwrap();
    for needle in [
        "atrest_validations_total{trigger=\"patch\",result=\"valid\"} 1",
        "atrest_azure_calls_total{operation=\"keyvault.encrypt\",outcome=\"ok\"}",
        "atrest_azure_calls_total{operation=\"keyvault.decrypt\",outcome=\"ok\"}",
        "atrest_azure_calls_total{operation=\"arm.get_vault\",outcome=\"ok\"}",
        "atrest_http_requests_total{",
        "atrest_token_cache_",
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_that_azure_calls_expired_is_replaced_not_reported_as_a_denial() {
    let env = Env::start().await;
    // Five-minute tokens: the cache uses one for its first 200 s (refresh at a third left).
    env.emulator_admin(Method::PUT, "settings", Some(json!({"token_lifetime_secs": 300}))).await;
    let group = env.project("skew").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let requests_before = env.control.state().platform.cache.stats().token_requests;

    // Azure's clock runs 310 s ahead of ours: the cached tokens have expired for Azure while the
    // cache still counts them fresh (the platform's 10-minute certificate assertion is still
    // valid). ARM and Key Vault answer 401; the client drops the cached tokens, gets fresh ones,
    // and the validation passes instead of reading as a denial.
    env.emulator_admin(Method::POST, "clock/shift", Some(json!({"seconds": 310}))).await;
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    let requests_after = env.control.state().platform.cache.stats().token_requests;
    assert_eq!(requests_after - requests_before, 2, "one fresh token per audience (ARM, Key Vault)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_secret_is_checked_by_entra_every_time_not_taken_from_another_projects_cache() {
    let env = Env::start().await;
    let victim = env.project("victim").await;
    let attacker = env.project("attacker").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let (client_id, secret, _) = env.static_app(&t).await;
    let mut block = json!({
        "enabled": true, "clientID": client_id, "tenantID": t.customer.tenant_id(), "secret": secret,
        "subscriptionID": t.customer.subscription_id(), "resourceGroupName": t.rg, "keyVaultName": t.vault,
        "keyIdentifier": t.kid, "azureEnvironment": "AZURE",
    });
    let (s, v) = env.patch_ear(&victim, block.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Another project names the same app and tenant with a wrong secret: Entra refuses it
    // (AADSTS7000215), whatever tokens the first project's validation obtained.
    block["secret"] = json!("not-the-secret");
    let (s, e) = env.patch_ear(&attacker, block.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("7000215"), "{e}");
    assert_eq!(env.get_ear(&attacker).await["azureKeyVault"], json!({"enabled": false}));

    // Static credentials cannot name the platform's own application.
    block["clientID"] = json!(env.platform.app_id);
    let (s, e) = env.patch_ear(&attacker, block).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_ATTRIBUTE")), "{e}");
    assert!(e["detail"].as_str().unwrap().contains("roleId"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unversioned_key_with_a_staged_future_version_uses_the_current_usable_one() {
    let env = Env::start().await;
    let group = env.project("staged").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    // The next version is staged: created now, not valid before tomorrow. Key Vault refuses to
    // wrap with it, so the probe must be wrapped with the version resolve picked.
    let staged = t.customer.create_key(&t.vault, "cmk", None).await.unwrap();
    let tomorrow = time::OffsetDateTime::now_utc().unix_timestamp() + 86400;
    t.customer
        .update_key(&t.vault, "cmk", staged.rsplit('/').next().unwrap(), json!({"attributes": {"nbf": tomorrow}}))
        .await
        .unwrap();
    let mut block = t.ear_block(&role);
    block["keyIdentifier"] = json!(t.unversioned_kid());
    let (s, v) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.status(&group).await["keyVersionInUse"], t.kid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_on_the_key_itself_is_valid_and_a_wrap_only_role_is_named() {
    let env = Env::start().await;
    let group = env.project("key-scope").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    // Key Vault Crypto Service Encryption User allows wrapKey/unwrapKey only: the platform uses
    // encrypt/decrypt, and the diagnosis says so.
    t.customer.assign_role(&t.sp, scenario::roles::READER, &t.vault_id).await.unwrap();
    t.customer
        .assign_role(&t.sp, scenario::roles::KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER, &t.vault_id)
        .await
        .unwrap();
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "INVALID", "{r}");
    assert_eq!(check(&r, "encrypt_decrypt")["azureErrorCode"], "ForbiddenByRbac", "{r}");
    let perms = check(&r, "permissions");
    assert_eq!(perms["status"], "FAILED", "{r}");
    assert!(perms["message"].as_str().unwrap().contains("allows only wrapKey and unwrapKey"), "{perms}");

    // Least privilege, as Microsoft recommends: the data role on the key itself.
    t.customer
        .assign_role(&t.sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &format!("{}/keys/cmk", t.vault_id))
        .await
        .unwrap();
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    let perms = check(&r, "permissions");
    assert_eq!(perms["status"], "WARNING", "{r}");
    assert!(perms["message"].as_str().unwrap().contains("nevertheless encrypted and decrypted"), "{perms}");
}
