//! The seeds' flow end to end against the emulator: register the service principal, grant,
//! patch, read `valid: true` (RBAC and access-policy vaults); migrate off static credentials
//! (success and failure); revoke and see revalidation mark the configuration invalid with an
//! event; disable and delete the role.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_emulator::scenario::{self, VaultAuth};
use support::{Env, Options};

fn ear_path(group: &str) -> String {
    format!("/api/atlas/v2/groups/{group}/encryptionAtRest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_path_register_grant_patch_and_valid() {
    let env = Env::start().await;
    let group = env.project("rbac").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;

    // The role echoes exactly what was posted and is not in use yet.
    let (s, r) =
        env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess/{role}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["servicePrincipalId"], t.sp.as_str());
    assert_eq!(r["tenantId"], t.customer.tenant_id());
    assert_eq!(r["atlasAzureAppId"], env.platform.app_id.as_str());
    assert_eq!(r["featureUsages"], json!([]));

    // Without the grant, the PATCH is refused and names the fix; nothing is stored.
    let (s, e) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "INVALID_AZURE_CREDENTIALS");
    let detail = e["detail"].as_str().unwrap();
    assert!(detail.contains("az role assignment create"), "{detail}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"], json!({"enabled": false}));

    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let akv = &v["azureKeyVault"];
    assert_eq!(akv["valid"], true);
    assert_eq!(akv["roleId"], role.as_str());
    assert_eq!(akv["keyIdentifier"], t.kid.as_str());
    assert_eq!(akv["keyVaultName"], t.vault.as_str());
    assert_eq!(akv["resourceGroupName"], t.rg.as_str());
    assert_eq!(akv["subscriptionID"], t.customer.subscription_id());
    assert_eq!(akv["azureEnvironment"], "AZURE");
    assert!(akv.get("secret").is_none() && akv.get("clientID").is_none());
    assert_eq!(v["awsKms"], json!({"enabled": false}));
    assert_eq!(v["googleCloudKms"], json!({"enabled": false}));

    let got = env.get_ear(&group).await;
    assert_eq!(got["azureKeyVault"], *akv);
    let status = env.status(&group).await;
    assert_eq!(status["state"], "VALID");
    assert_eq!(status["keyVersionInUse"], t.kid.as_str());
    assert_eq!(status["credentialMode"], "SECRETLESS");

    let (_, r) = env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess"), None).await;
    assert_eq!(r["azureServicePrincipals"][0]["featureUsages"][0]["featureType"], "ENCRYPTION_AT_REST");
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIGURATION_UPDATED".to_string()));
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIGURATION_VALIDATION_FAILED".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_policy_path_and_unversioned_key_records_the_version_used() {
    let env = Env::start().await;
    let group = env.project("policies").await;
    let t = env.tenant(VaultAuth::AccessPolicies).await;
    let role = env.register(&group, &t).await;
    t.customer
        .set_access_policy(&t.vault_id, &t.sp, &["get", "list", "wrapKey", "unwrapKey", "encrypt", "decrypt"])
        .await
        .unwrap();
    // Reader for the ARM vault read.
    t.customer.assign_role(&t.sp, scenario::roles::READER, &t.vault_id).await.unwrap();
    let mut block = t.ear_block(&role);
    block["keyIdentifier"] = json!(t.unversioned_kid());
    let (s, v) = env.patch_ear(&group, block).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["valid"], true);
    // Echoed exactly as set (unversioned), while the version used is recorded and shown.
    assert_eq!(v["azureKeyVault"]["keyIdentifier"], t.unversioned_kid().as_str());
    assert_eq!(env.status(&group).await["keyVersionInUse"], t.kid.as_str());
}

fn static_block(t: &support::Tenant, client_id: &str, secret: &str) -> Value {
    json!({
        "enabled": true,
        "clientID": client_id,
        "tenantID": t.customer.tenant_id(),
        "secret": secret,
        "subscriptionID": t.customer.subscription_id(),
        "resourceGroupName": t.rg,
        "keyVaultName": t.vault,
        "keyIdentifier": t.kid,
        "azureEnvironment": "AZURE",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_static_credentials_succeeds_and_deletes_them() {
    let env = Env::start().await;
    let group = env.project("migrate-ok").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let (client_id, secret, _) = env.static_app(&t).await;
    let (s, v) = env.patch_ear(&group, static_block(&t, &client_id, &secret)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["clientID"], client_id.as_str());
    assert!(v["azureKeyVault"].get("secret").is_none(), "secret is never returned");
    assert_eq!(env.status(&group).await["credentialMode"], "STATIC_CREDENTIALS");

    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, json!({"roleId": role})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["roleId"], role.as_str());
    assert!(v["azureKeyVault"].get("clientID").is_none() && v["azureKeyVault"].get("tenantID").is_none());
    assert_eq!(v["azureKeyVault"]["valid"], true);
    assert_eq!(env.status(&group).await["credentialMode"], "SECRETLESS");
    // The static secret is gone from the store, not just hidden.
    let stored = env
        .control
        .state()
        .store
        .get_ear_config(&atrest_store::GroupId::parse(&group).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(stored.azure.credentials, atrest_store::AzureCredentials::Secretless { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_failure_keeps_static_credentials_in_force() {
    let env = Env::start().await;
    let group = env.project("migrate-fail").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let (client_id, secret, _) = env.static_app(&t).await;
    let (s, _) = env.patch_ear(&group, static_block(&t, &client_id, &secret)).await;
    assert_eq!(s, StatusCode::OK);
    let before = env.get_ear(&group).await;

    let role = env.register(&group, &t).await; // registered, but never granted
    let (s, e) = env.patch_ear(&group, json!({"roleId": role})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "INVALID_AZURE_CREDENTIALS");
    assert!(e["detail"].as_str().unwrap().contains("keeps using its current static credentials"), "{e}");
    assert_eq!(env.get_ear(&group).await, before);
    assert_eq!(env.status(&group).await["credentialMode"], "STATIC_CREDENTIALS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_grant_is_detected_by_revalidation_with_an_event() {
    let env = Env::start_with(Options { revalidate_interval_secs: 1, ..Options::default() }).await;
    let group = env.project("revoke").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    let (_, crypto) = t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    t.customer.delete_role_assignment(&crypto).await.unwrap();
    let invalid =
        env.wait_for(Duration::from_secs(30), || async { env.status(&group).await["state"] == "INVALID" }).await;
    assert!(invalid, "revalidation never marked the configuration invalid: {}", env.status(&group).await);
    let status = env.status(&group).await;
    assert!(status["detail"].as_str().unwrap().contains("ForbiddenByRbac"), "{status}");
    assert_eq!(env.get_ear(&group).await["azureKeyVault"]["valid"], false);
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID".to_string()));

    // Restoring the grant brings it back, with the matching event.
    t.customer.assign_role(&t.sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &t.vault_id).await.unwrap();
    let valid = env.wait_for(Duration::from_secs(30), || async { env.status(&group).await["state"] == "VALID" }).await;
    assert!(valid, "never valid again: {}", env.status(&group).await);
    assert!(env.event_types(&group).await.contains(&"ENCRYPTION_AT_REST_CONFIG_IS_VALID".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_removes_the_configuration_and_frees_the_role() {
    let env = Env::start().await;
    let group = env.project("disable").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, _) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK);

    let delete = format!("/api/atlas/v2/groups/{group}/cloudProviderAccess/AZURE/{role}");
    let (s, e) = env.atlas(Method::DELETE, &delete, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["errorCode"], "AZURE_SERVICE_PRINCIPAL_IN_USE");

    // Terraform's destroy: every provider disabled at once.
    let (s, v) = env
        .atlas(
            Method::PATCH,
            &ear_path(&group),
            Some(json!({"awsKms": {"enabled": false}, "azureKeyVault": {"enabled": false}, "googleCloudKms": {"enabled": false}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"], json!({"enabled": false}));
    assert_eq!(env.get_ear(&group).await["azureKeyVault"], json!({"enabled": false}));
    let (s, _) = env.atlas(Method::DELETE, &delete, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, e) =
        env.atlas(Method::GET, &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess/{role}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["errorCode"], "CLOUD_PROVIDER_ACCESS_ROLE_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_update_sends_the_get_body_back_and_nothing_changes() {
    let env = Env::start().await;
    let group = env.project("tf").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, _) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK);
    let got = env.get_ear(&group).await;
    let events_before = env.event_types(&group).await.len();
    // The whole GET body, read-only `valid` and disabled blocks included.
    let (s, v) = env.atlas(Method::PATCH, &ear_path(&group), Some(got.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, got);
    assert_eq!(env.event_types(&group).await.len(), events_before, "an unchanged PATCH is not a change");
    // A partial update (merge semantics): only the key changes.
    let (s, v) = env.patch_ear(&group, json!({"keyIdentifier": t.unversioned_kid()})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["azureKeyVault"]["keyIdentifier"], t.unversioned_kid().as_str());
    assert_eq!(v["azureKeyVault"]["roleId"], role.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_provider_access_refusals_name_the_fix() {
    let env = Env::start().await;
    let group = env.project("cpa").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let path = format!("/api/atlas/v2/groups/{group}/cloudProviderAccess");

    // A tenant where `az ad sp create` was never run.
    let bare = atrest_emulator::scenario::Customer::create(&env.az, &env.emu.info().bootstrap, "no sp").await.unwrap();
    let body = json!({"providerName": "AZURE", "atlasAzureAppId": env.platform.app_id, "servicePrincipalId": uuid::Uuid::new_v4().to_string(), "tenantId": bare.tenant_id()});
    let (s, e) = env.atlas(Method::POST, &path, Some(body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL");
    assert!(e["detail"].as_str().unwrap().contains(&format!("az ad sp create --id {}", env.platform.app_id)), "{e}");

    // The right tenant, the wrong object id.
    let mut body = t.cpa_body(&env.platform.app_id);
    body["servicePrincipalId"] = json!(uuid::Uuid::new_v4().to_string());
    let (s, e) = env.atlas(Method::POST, &path, Some(body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "CLOUD_PROVIDER_ACCESS_AZURE_SERVICE_PRINCIPAL_INVALID");
    assert!(e["detail"].as_str().unwrap().contains(&t.sp), "the detail gives the right object id: {e}");

    // atlasAzureAppId is derived when absent; a duplicate is 409.
    let mut body = t.cpa_body(&env.platform.app_id);
    body.as_object_mut().unwrap().remove("atlasAzureAppId");
    let (s, v) = env.atlas(Method::POST, &path, Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["atlasAzureAppId"], env.platform.app_id.as_str());
    let (s, e) = env.atlas(Method::POST, &path, Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["errorCode"], "DUPLICATE_AZURE_SERVICE_PRINCIPAL");

    // Another app id, bad UUIDs, other providers.
    let mut body = t.cpa_body(&uuid::Uuid::new_v4().to_string());
    let (s, e) = env.atlas(Method::POST, &path, Some(body.clone())).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_ATTRIBUTE")), "{e}");
    body["atlasAzureAppId"] = json!(env.platform.app_id);
    body["tenantId"] = json!("not-a-uuid");
    let (s, e) = env.atlas(Method::POST, &path, Some(body)).await;
    assert_eq!(
        (s, e["errorCode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("CLOUD_PROVIDER_ACCESS_AZURE_SERVICE_PRINCIPAL_INVALID"))
    );
    let (s, e) = env.atlas(Method::POST, &path, Some(json!({"providerName": "AWS"}))).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("CLOUD_PROVIDER_NOT_SUPPORTED")));
    let (s, e) = env.atlas(Method::DELETE, &format!("{path}/GCP/0123456789abcdef01234567"), None).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("CLOUD_PROVIDER_NOT_SUPPORTED")));
}
