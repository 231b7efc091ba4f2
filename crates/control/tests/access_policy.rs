//! The seeds' grants, exactly as written (issue 10 §1): each of them validates, and a policy
//! missing `decrypt` is INVALID naming `decrypt`. The platform uses the customer key with
//! encrypt/decrypt (RSA-OAEP-256), so the minimum is the key permissions get, encrypt and
//! decrypt, and Reader (vault metadata through ARM) is optional.

mod support;

use reqwest::StatusCode;
use serde_json::Value;

use atrest_emulator::scenario::{self, VaultAuth};
use support::{Env, Tenant};

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check '{name}' in {report}"))
}

/// PATCHes `t`'s key into a new project and returns (project, role id, PATCH status, body).
async fn configure(env: &Env, t: &Tenant, name: &str) -> (String, String, StatusCode, Value) {
    let group = env.project(name).await;
    let role = env.register(&group, t).await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    (group, role, s, v)
}

/// Without Reader, ARM answers 403: the vault check is a warning naming the two checks it
/// skipped and the exact Reader command.
fn assert_reader_warning(r: &Value, t: &Tenant) {
    let vault = check(r, "vault");
    assert_eq!(vault["status"], "WARNING", "{r}");
    let message = vault["message"].as_str().unwrap();
    assert!(
        message.contains("skipped")
            && message.contains(&format!("belongs to tenant {}", t.customer.tenant_id()))
            && message.contains("purge protection"),
        "{message}"
    );
    assert_eq!(
        vault["fix"].as_str().unwrap(),
        format!("az role assignment create --assignee {} --role Reader --scope {}", t.sp, t.vault_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_reader_and_crypto_user_validate() {
    let env = Env::start().await;
    let t = env.tenant(VaultAuth::Rbac).await;
    t.grant_rbac().await;
    let (group, role, s, v) = configure(&env, &t, "rbac").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true);
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    for name in ["vault", "key", "encrypt_decrypt", "permissions"] {
        assert_eq!(check(&r, name)["status"], "PASSED", "{r}");
    }
    assert!(check(&r, "encrypt_decrypt")["message"].as_str().unwrap().contains("RSA-OAEP-256"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_set_policy_command_alone_validates_without_reader() {
    let env = Env::start().await;
    let t = env.tenant(VaultAuth::AccessPolicies).await;
    // `az keyvault set-policy ... --object-id $SP --key-permissions get encrypt decrypt wrapKey unwrapKey`
    t.customer
        .set_access_policy(&t.vault_id, &t.sp, &["get", "encrypt", "decrypt", "wrapKey", "unwrapKey"])
        .await
        .unwrap();
    let (group, role, s, v) = configure(&env, &t, "set-policy").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true);
    // The status says which checks were skipped, and how to enable them.
    let status = env.status(&group).await;
    assert!(status["detail"].as_str().unwrap().contains("no Reader role"), "{status}");

    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    assert_reader_warning(&r, &t);
    assert_eq!(check(&r, "encrypt_decrypt")["status"], "PASSED", "{r}");
    let perms = check(&r, "permissions");
    assert_eq!(perms["status"], "PASSED", "{r}");
    assert!(perms["message"].as_str().unwrap().contains("Key Vault allowed get, encrypt and decrypt"), "{perms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimum_get_encrypt_decrypt_validates_with_or_without_reader() {
    let env = Env::start().await;
    let t = env.tenant(VaultAuth::AccessPolicies).await;
    t.customer.set_access_policy(&t.vault_id, &t.sp, &["get", "encrypt", "decrypt"]).await.unwrap();
    let (group, role, s, v) = configure(&env, &t, "minimum").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true);
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    assert_reader_warning(&r, &t);

    // With Reader too (the case that failed on "does not have keys wrapKey permission").
    t.customer.assign_role(&t.sp, scenario::roles::READER, &t.vault_id).await.unwrap();
    let (group, role, s, v) = configure(&env, &t, "minimum-reader").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "VALID", "{r}");
    for name in ["vault", "key", "encrypt_decrypt", "permissions"] {
        assert_eq!(check(&r, name)["status"], "PASSED", "{r}");
    }
    assert!(check(&r, "permissions")["message"].as_str().unwrap().contains("get, encrypt, decrypt"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_missing_decrypt_is_invalid_naming_decrypt() {
    let env = Env::start().await;
    let t = env.tenant(VaultAuth::AccessPolicies).await;
    t.customer.set_access_policy(&t.vault_id, &t.sp, &["get", "encrypt", "wrapKey", "unwrapKey"]).await.unwrap();
    let (group, role, s, e) = configure(&env, &t, "no-decrypt").await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_AZURE_CREDENTIALS")), "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("Check 'encrypt_decrypt' failed") && detail.contains("does not have keys decrypt permission"),
        "{detail}"
    );
    assert!(detail.contains("az keyvault set-policy"), "{detail}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"], serde_json::json!({"enabled": false}));

    // The dry run names it too, without Reader (from Key Vault's answers) and with it (from the
    // access policy).
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    assert_eq!(r["outcome"], "INVALID", "{r}");
    let perms = check(&r, "permissions");
    assert_eq!(perms["status"], "FAILED", "{r}");
    assert!(perms["message"].as_str().unwrap().contains("Key Vault refused decrypt"), "{perms}");
    t.customer.assign_role(&t.sp, scenario::roles::READER, &t.vault_id).await.unwrap();
    let (_, r) = env.dry_run(&group, t.ear_block(&role)).await;
    let perms = check(&r, "permissions");
    assert!(perms["message"].as_str().unwrap().contains("lacks the key permissions decrypt"), "{perms}");
    assert!(
        perms["fix"].as_str().unwrap().ends_with("--key-permissions get encrypt wrapKey unwrapKey decrypt"),
        "{perms}"
    );
}
