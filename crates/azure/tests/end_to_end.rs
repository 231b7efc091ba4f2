//! End to end across tenants (issue §4), against the real emulator through the client's own
//! endpoint override:
//!
//! The platform app is registered in tenant P with a certificate. The admin of customer tenant
//! C creates its service principal through Graph (`az ad sp create`), creates a vault and a key,
//! and grants the platform Reader and Key Vault Crypto User on the vault (or an access policy).
//! The platform then works with a certificate-assertion token in tenant C; revoking the grant
//! denies the next unwrap even though the platform still holds a cached token.

mod support;

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::json;

use atrest_azure::{AzureClient, EncryptionAlgorithm, ErrorKind, RetryPolicy, Service, VaultRef};
use atrest_domain::{AzureEnvironment, AzureUuid, KeyIdentifier};
use support::{Admin, KEY_VAULT_CRYPTO_USER, PlatformApp, READER, World, quick_retry};

/// Tenants P and C, the platform app in P, C's admin, and the platform's SP in C (via Graph).
struct Layout {
    world: World,
    platform: PlatformApp,
    admin: Admin,
    sp: AzureUuid,
    client: AzureClient,
}

impl Layout {
    async fn new() -> Self {
        let world = World::start().await;
        let p = world.new_tenant("Platform").await;
        let c = world.new_tenant("Customer").await;
        let platform = world.register_platform_app(&p.tenant_id.parse().unwrap()).await;
        let admin = Admin::new(&world, c);
        let sp = admin.create_service_principal(&platform.app_id).await;
        let client = world.client(platform.credential());
        Self { world, platform, admin, sp, client }
    }

    fn customer(&self) -> AzureUuid {
        self.admin.tenant
    }

    fn vault_ref(&self, rg: &str, vault: &str) -> VaultRef {
        VaultRef::new(self.admin.subscription, rg, vault.parse().unwrap())
    }

    /// An RBAC vault with a key, and the platform granted Reader + Key Vault Crypto User on it.
    /// Returns (unversioned id, versioned id, Crypto User assignment id).
    async fn rbac_vault_with_grants(&self, vault: &str) -> (KeyIdentifier, KeyIdentifier, String) {
        self.admin.create_vault("rg-kms", vault, true, json!([])).await;
        let (key, versioned) = self.admin.create_key(vault, "master").await;
        let scope = self.admin.vault_path("rg-kms", vault);
        self.admin.assign_role(&scope, READER, &self.sp).await;
        let crypto = self.admin.assign_role(&scope, KEY_VAULT_CRYPTO_USER, &self.sp).await;
        (key, versioned, crypto)
    }
}

fn dek() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    key
}

#[tokio::test]
async fn rbac_vault_round_trip_then_revocation_denies_even_with_the_cached_token() {
    let l = Layout::new().await;
    let (key, versioned, crypto_assignment) = l.rbac_vault_with_grants("custkv-rbac").await;
    let kv = l.client.key_vault(l.customer());

    // Key metadata, resolved from the unversioned identifier to the current version.
    let props = kv.get_key(&key).await.unwrap();
    assert_eq!(props.id, versioned);
    assert!(props.enabled && props.unusable_reason(support::now()).is_none());
    assert_eq!(props.kty, "RSA");
    assert_eq!(props.key_size_bits(), 2048);
    assert!(props.allows("wrapKey") && props.allows("unwrapKey"));

    // Wrap under the unversioned id: the result names the version used; unwrap with it.
    let secret = dek();
    for alg in [EncryptionAlgorithm::RsaOaep256, EncryptionAlgorithm::RsaOaep, EncryptionAlgorithm::Rsa1_5] {
        let wrapped = kv.wrap_key(&key, alg, &secret).await.unwrap();
        assert_eq!(wrapped.key_id, versioned, "{alg:?}");
        assert_eq!(wrapped.value.len(), 256);
        let unwrapped = kv.unwrap_key(&wrapped.key_id, alg, &wrapped.value).await.unwrap();
        assert_eq!(unwrapped.key_id, versioned);
        assert_eq!(unwrapped.value.expose_secret(), secret.as_slice(), "{alg:?}");
    }
    let sealed = kv.encrypt(&versioned, EncryptionAlgorithm::RsaOaep256, b"hello").await.unwrap();
    let opened = kv.decrypt(&versioned, EncryptionAlgorithm::RsaOaep256, &sealed.value).await.unwrap();
    assert_eq!(opened.value.expose_secret(), b"hello");

    // ARM reads with the same credential: vault properties and the platform's grants.
    let arm = l.client.arm(AzureEnvironment::Azure, l.customer());
    let vault = arm.get_vault(&l.vault_ref("rg-kms", "custkv-rbac")).await.unwrap();
    assert!(vault.enable_rbac_authorization);
    assert_eq!(vault.tenant_id, Some(l.customer()));
    assert_eq!(vault.vault_uri.as_deref(), Some("https://custkv-rbac.vault.azure.net/"));
    assert!(!vault.public_network_disabled());
    let scope = l.admin.vault_path("rg-kms", "custkv-rbac");
    let mut roles: Vec<String> =
        arm.role_assignments(&scope, &l.sp).await.unwrap().into_iter().filter_map(|r| r.role_name).collect();
    roles.sort();
    assert_eq!(roles, ["Key Vault Crypto User", "Reader"]);

    // Revoke the data role. The platform keeps its cached token; Key Vault re-checks the grant.
    let wrapped = kv.wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();
    let requests_before = l.client.token_stats().token_requests;
    l.admin.delete_role_assignment(&crypto_assignment).await;
    let e = kv.unwrap_key(&wrapped.key_id, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert_eq!((e.service(), e.status(), e.code()), (Service::KeyVault, Some(403), Some("ForbiddenByRbac")), "{e}");
    assert_eq!(e.attempts(), 1, "a denial is never retried");
    let fix = e.remediation().unwrap();
    assert!(
        fix.contains(&format!(
            "az role assignment create --assignee-object-id {} --assignee-principal-type ServicePrincipal --role \"Key Vault Crypto User\" --scope",
            l.sp
        )),
        "{fix}"
    );
    assert_eq!(l.client.token_stats().token_requests, requests_before, "the cached token was used");
    let roles: Vec<String> =
        arm.role_assignments(&scope, &l.sp).await.unwrap().into_iter().filter_map(|r| r.role_name).collect();
    assert_eq!(roles, ["Reader"]);

    // Granting again restores access.
    l.admin.assign_role(&scope, KEY_VAULT_CRYPTO_USER, &l.sp).await;
    let back = kv.unwrap_key(&wrapped.key_id, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap();
    assert_eq!(back.value.expose_secret(), secret.as_slice());
}

#[tokio::test]
async fn access_policy_vault_round_trip_then_policy_removal_denies() {
    let l = Layout::new().await;
    let c = l.customer().to_string();
    let admin_oid = l.admin.object_id().await;
    let platform_policy = json!({"tenantId": c, "objectId": l.sp.to_string(),
        "permissions": {"keys": ["get", "wrapKey", "unwrapKey"], "secrets": [], "certificates": []}});
    let policies = json!([
        {"tenantId": c, "objectId": admin_oid.to_string(),
         "permissions": {"keys": ["get", "list", "create", "update", "delete", "wrapKey", "unwrapKey"], "secrets": [], "certificates": []}},
        platform_policy.clone(),
    ]);
    l.admin.create_vault("rg-kms", "custkv-policy", false, policies).await;
    let (key, versioned) = l.admin.create_key("custkv-policy", "master").await;
    let vault_scope = l.admin.vault_path("rg-kms", "custkv-policy");
    // ARM reads are authorised by RBAC whatever the vault's data-plane mode.
    l.admin.assign_role(&vault_scope, READER, &l.sp).await;

    let kv = l.client.key_vault(l.customer());
    let arm = l.client.arm(AzureEnvironment::Azure, l.customer());
    let vault = arm.get_vault(&l.vault_ref("rg-kms", "custkv-policy")).await.unwrap();
    assert!(!vault.enable_rbac_authorization);
    let policy = vault.access_policy_for(&l.customer(), &l.sp).expect("the platform's access policy");
    assert!(policy.allows_key("wrapKey") && policy.allows_key("unwrapKey") && !policy.allows_key("decrypt"));

    let secret = dek();
    let wrapped = kv.wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();
    assert_eq!(wrapped.key_id, versioned);
    let unwrapped = kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap();
    assert_eq!(unwrapped.value.expose_secret(), secret.as_slice());
    // decrypt is not in the policy.
    let e = kv.decrypt(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Denied, Some("ForbiddenByPolicy")), "{e}");

    let (s, b) = l
        .admin
        .arm(
            reqwest::Method::PUT,
            &format!("{vault_scope}/accessPolicies/remove?api-version=2023-07-01"),
            Some(json!({"properties": {"accessPolicies": [platform_policy]}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let e = kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
    assert_eq!((e.kind(), e.status(), e.code()), (ErrorKind::Denied, Some(403), Some("ForbiddenByPolicy")), "{e}");
    let fix = e.remediation().unwrap();
    assert!(fix.contains(&format!("az keyvault set-policy --name custkv-policy --object-id {}", l.sp)), "{fix}");
    let vault = arm.get_vault(&l.vault_ref("rg-kms", "custkv-policy")).await.unwrap();
    assert!(vault.access_policy_for(&l.customer(), &l.sp).is_none());
}

#[tokio::test]
async fn disabled_and_deleted_keys_are_classified() {
    let l = Layout::new().await;
    let (key, versioned, _) = l.rbac_vault_with_grants("custkv-life").await;
    let kv = l.client.key_vault(l.customer());
    let secret = dek();
    let wrapped = kv.wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();

    let (s, b) = l
        .admin
        .vault(
            reqwest::Method::PATCH,
            &format!("{}?api-version=7.5", versioned),
            Some(json!({"attributes": {"enabled": false}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let e = kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disabled, "{e}");
    assert_eq!(e.status(), Some(403));
    assert!(e.remediation().unwrap().contains("--enabled true"), "{e}");
    assert!(e.kind().revokes_access());
    // As in Azure, a disabled key still wraps (that is why validation must also unwrap).
    kv.wrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();
    let props = kv.get_key(&key).await.unwrap();
    assert!(!props.enabled);
    assert!(props.unusable_reason(support::now()).unwrap().contains("disabled"));

    let (s, b) = l.admin.vault(reqwest::Method::DELETE, &format!("{key}?api-version=7.5"), None).await;
    assert_eq!(s, 200, "{b}");
    for id in [&key, &versioned] {
        let e = kv.unwrap_key(id, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
        assert_eq!((e.kind(), e.status()), (ErrorKind::NotFound, Some(404)), "{e}");
        assert_eq!(e.code(), Some("KeyNotFound"));
        assert!(e.remediation().unwrap().contains("az keyvault key recover --vault-name custkv-life --name master"));
    }
    let e = kv.get_key(&key).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn expired_keys_and_forbidden_operations_are_disabled_errors() {
    let l = Layout::new().await;
    let (key, versioned, _) = l.rbac_vault_with_grants("custkv-window").await;
    let kv = l.client.key_vault(l.customer());
    let secret = dek();
    let wrapped = kv.wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();
    let patch = |body: serde_json::Value| {
        let admin = &l.admin;
        let url = format!("{versioned}?api-version=7.5");
        async move {
            let (s, b) = admin.vault(reqwest::Method::PATCH, &url, Some(body)).await;
            assert_eq!(s, 200, "{b}");
        }
    };

    // Expired: no new wraps, but what was wrapped before still unwraps (Key Vault's rule).
    patch(json!({"attributes": {"exp": support::now() - 60}})).await;
    let e = kv.wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Disabled, Some(403)), "{e}");
    assert!(e.remediation().unwrap().contains("--expires"), "{e}");
    let p = kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap();
    assert_eq!(p.value.expose_secret(), secret.as_slice());
    assert!(kv.get_key(&key).await.unwrap().unusable_reason(support::now()).unwrap().contains("expired"));

    // Back in its window but without unwrapKey in key_ops.
    patch(json!({"attributes": {"exp": support::now() + 3600}, "key_ops": ["wrapKey", "encrypt"]})).await;
    let e = kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disabled, "{e}");
    assert!(e.remediation().unwrap().contains("--ops encrypt decrypt wrapKey unwrapKey"), "{e}");
    assert!(!kv.get_key(&key).await.unwrap().allows("unwrapKey"));
}

#[tokio::test]
async fn key_operations_without_a_service_principal_fail_with_700016() {
    let world = World::start().await;
    let p = world.new_tenant("Platform").await;
    let c = world.new_tenant("Customer").await;
    let platform = world.register_platform_app(&p.tenant_id.parse().unwrap()).await;
    let admin = Admin::new(&world, c);
    admin.create_vault("rg-kms", "custkv-nosp", true, json!([])).await;
    let (key, _) = admin.create_key("custkv-nosp", "master").await;

    let client = world.client(platform.credential());
    let e = client.key_vault(admin.tenant).wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &dek()).await.unwrap_err();
    assert_eq!((e.kind(), e.service(), e.aadsts_code()), (ErrorKind::Denied, Service::Entra, Some(700016)), "{e}");
    assert!(
        e.remediation()
            .unwrap()
            .contains(&format!("`az ad sp create --id {}` in tenant {}", platform.app_id, admin.tenant)),
        "{e}"
    );

    // After `az ad sp create` (and no grant yet), Entra issues the token and Key Vault denies.
    let sp = admin.create_service_principal(&platform.app_id).await;
    let e = client.key_vault(admin.tenant).wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &dek()).await.unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Denied, Some("ForbiddenByRbac")), "{e}");
    assert!(e.remediation().unwrap().contains(&format!("--assignee-object-id {sp}")), "{e}");
}

#[tokio::test]
async fn vault_throttling_and_faults_are_retried_within_the_bound() {
    let l = Layout::new().await;
    let (key, versioned, _) = l.rbac_vault_with_grants("custkv-faults").await;
    let retry = RetryPolicy { total: Duration::from_secs(3), ..quick_retry() };
    let mut config = l.world.config(retry);
    config.transport.request_timeout = Duration::from_millis(700);
    let client = AzureClient::new(&config, l.platform.credential()).unwrap();
    let kv = client.key_vault(l.customer());
    let secret = dek();
    let wrapped = kv.wrap_key(&key, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();

    // Two 429s with Retry-After: 1, then success after both waits. (A client with a roomy
    // budget: this step is about honouring Retry-After, and a 3 s budget would leave a loaded
    // machine only 1 s of slack for the three attempts.)
    let patient = AzureClient::new(
        &l.world.config(RetryPolicy { total: Duration::from_secs(60), ..quick_retry() }),
        l.platform.credential(),
    )
    .unwrap();
    l.world.vault_fault("custkv-faults", json!({"kind": "throttle", "retry_after_secs": 1}), Some(2)).await;
    let started = Instant::now();
    let p = patient
        .key_vault(l.customer())
        .unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value)
        .await
        .unwrap();
    assert_eq!(p.value.expose_secret(), secret.as_slice());
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());

    // A 503 and a reset, then success.
    l.world.vault_fault("custkv-faults", json!({"kind": "server_error", "status": 503}), Some(1)).await;
    l.world.vault_fault("custkv-faults", json!({"kind": "reset"}), Some(1)).await;
    kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap();

    // Persistent throttling: Throttled, within the 3 s budget. The budget is checked by the
    // number of attempts, not by a stopwatch (which a loaded machine can always overrun): each
    // retry waits at least the 1 s Retry-After, so a 3 s budget allows at most 3 attempts,
    // where the policy's max_attempts alone would allow 10.
    l.world.vault_fault("custkv-faults", json!({"kind": "throttle", "retry_after_secs": 1}), None).await;
    let started = Instant::now();
    let e = kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
    assert!(e.attempts() >= 2 && !e.kind().revokes_access(), "{e}");
    assert!(e.attempts() <= 3, "the 3 s budget allows 3 attempts 1 s apart, not {}: {e}", e.attempts());
    let waited = Duration::from_secs(u64::from(e.attempts()) - 1);
    assert!(started.elapsed() >= waited, "each retry honoured Retry-After: {:?}", started.elapsed());
    l.world.clear_faults().await;

    // Persistent 5xx: Unreachable.
    l.world.vault_fault("custkv-faults", json!({"kind": "server_error", "status": 500}), None).await;
    let e = kv.get_key(&key).await.unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Unreachable, Some(500)), "{e}");
    assert!(e.attempts() > 1);
    l.world.clear_faults().await;

    // Blackhole: each attempt times out, the whole call within the budget. Every attempt but
    // the last burns its full 700 ms timeout and sleeps at least 50 ms after it, so a 3 s budget
    // holds at most 5 attempts (4 × 750 ms = 3 s), where max_attempts alone would allow 10.
    l.world.vault_fault("custkv-faults", json!({"kind": "blackhole"}), None).await;
    let e = kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.message().contains("timed out"), "{e}");
    assert!((1..=5).contains(&e.attempts()), "the 3 s budget holds at most 5 attempts, not {}: {e}", e.attempts());
    l.world.clear_faults().await;

    kv.unwrap_key(&versioned, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap();
}
