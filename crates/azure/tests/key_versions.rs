//! Key versions against the real emulator: an unversioned key identifier resolves to the most
//! recently created version that is enabled and inside its `nbf`/`exp` window
//! (`KeyVaultClient::resolve_key`), through the versions list and its `nextLink` pages
//! (`KeyVaultClient::list_key_versions`); a versioned identifier is taken as it is.
//!
//! Versions are created with the customer admin's `POST /keys/{name}/create` (a new version of
//! an existing key) and changed with `PATCH /keys/{name}/{version}`, as the admin would. Where
//! "most recently created" must be unambiguous, the emulator's clock is moved forward between
//! creations (`created` has a one-second resolution).

mod support;

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use atrest_azure::{AzureClient, EncryptionAlgorithm, ErrorKind, RetryPolicy};
use atrest_domain::{AzureUuid, KeyIdentifier};
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

    /// An RBAC vault with the platform granted Reader + Key Vault Crypto User (the product's
    /// grant: its `keys/read` covers the versions list).
    async fn rbac_vault(&self, vault: &str) {
        self.admin.create_vault("rg-kms", vault, true, json!([])).await;
        let scope = self.admin.vault_path("rg-kms", vault);
        self.admin.assign_role(&scope, READER, &self.sp).await;
        self.admin.assign_role(&scope, KEY_VAULT_CRYPTO_USER, &self.sp).await;
    }

    /// A new version of `name` (created, enabled); returns its versioned identifier.
    async fn new_version(&self, vault: &str, name: &str) -> KeyIdentifier {
        self.admin.create_key(vault, name).await.1
    }

    /// `PATCH /keys/{name}/{version}` with `attributes` (`az keyvault key set-attributes`).
    async fn set_attributes(&self, version: &KeyIdentifier, attributes: Value) {
        let (s, b) = self
            .admin
            .vault(
                reqwest::Method::PATCH,
                &format!("{version}?api-version=7.5"),
                Some(json!({"attributes": attributes})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    /// The emulator's clock (Unix seconds): the one Key Vault judges `nbf`/`exp` by.
    async fn now(&self) -> i64 {
        let b = self.world.admin_api(reqwest::Method::GET, "settings", None).await;
        b["now"].as_i64().expect("now in settings")
    }

    /// Move the emulator's clock forward, so that the next version is created strictly later.
    async fn advance_clock(&self, seconds: i64) {
        self.world.admin_api(reqwest::Method::POST, "clock/shift", Some(json!({"seconds": seconds}))).await;
    }
}

fn unversioned(k: &KeyIdentifier) -> KeyIdentifier {
    k.unversioned()
}

#[tokio::test]
async fn current_version_disabled_resolves_to_the_latest_enabled_version() {
    let l = Layout::new().await;
    l.rbac_vault("kv-disabled").await;
    let v0 = l.new_version("kv-disabled", "master").await;
    l.advance_clock(10).await;
    let v1 = l.new_version("kv-disabled", "master").await;
    l.advance_clock(10).await;
    let v2 = l.new_version("kv-disabled", "master").await;
    let key = unversioned(&v2);
    l.set_attributes(&v2, json!({"enabled": false})).await;
    let kv = l.client.key_vault(l.customer());
    let now = l.now().await;

    // get_key keeps meaning "the current version", whatever its state.
    let current = kv.get_key(&key).await.unwrap();
    assert_eq!(current.id, v2);
    assert!(!current.enabled);

    // resolve_key skips it and takes the most recently created enabled version (v1, not v0).
    let resolved = kv.resolve_key(&key, now).await.unwrap();
    assert_eq!(resolved.id, v1, "v0 = {v0}");
    assert!(resolved.enabled && resolved.unusable_reason(now).is_none());
    assert_eq!(resolved.key_size_bits(), 2048);

    // Its versioned id is what the operations then use, and what they report.
    let secret = [7u8; 32];
    let wrapped = kv.wrap_key(&resolved.id, EncryptionAlgorithm::RsaOaep256, &secret).await.unwrap();
    assert_eq!(wrapped.key_id, v1);
    let unwrapped = kv.unwrap_key(&wrapped.key_id, EncryptionAlgorithm::RsaOaep256, &wrapped.value).await.unwrap();
    assert_eq!((unwrapped.key_id, unwrapped.value.expose_secret()), (v1.clone(), secret.as_slice()));

    // Re-enabling the current version makes it the answer again.
    l.set_attributes(&v2, json!({"enabled": true})).await;
    assert_eq!(kv.resolve_key(&key, l.now().await).await.unwrap().id, v2);
}

#[tokio::test]
async fn current_version_expired_or_not_yet_valid_resolves_to_the_previous_version() {
    let l = Layout::new().await;
    l.rbac_vault("kv-window").await;
    let v1 = l.new_version("kv-window", "master").await;
    l.advance_clock(10).await;
    let v2 = l.new_version("kv-window", "master").await;
    let key = unversioned(&v2);
    let kv = l.client.key_vault(l.customer());
    let now = l.now().await;

    l.set_attributes(&v2, json!({"exp": now - 60})).await;
    let current = kv.get_key(&key).await.unwrap();
    assert_eq!(current.id, v2);
    assert!(current.unusable_reason(now).unwrap().contains("expired"));
    let resolved = kv.resolve_key(&key, now).await.unwrap();
    assert_eq!(resolved.id, v1);
    assert!(resolved.unusable_reason(now).is_none());

    l.set_attributes(&v2, json!({"nbf": now + 3600, "exp": now + 7200})).await;
    let resolved = kv.resolve_key(&key, now).await.unwrap();
    assert_eq!(resolved.id, v1);

    // The caller's clock decides: at a time inside v2's window, v2 is the answer.
    assert_eq!(kv.resolve_key(&key, now + 3700).await.unwrap().id, v2);

    // With v1 expired too, nothing is usable: the current version comes back with its reason.
    l.set_attributes(&v1, json!({"exp": now - 30})).await;
    let resolved = kv.resolve_key(&key, now).await.unwrap();
    assert_eq!(resolved.id, v2);
    let why = resolved.unusable_reason(now).unwrap();
    assert!(why.contains("not valid before") && why.contains(&v2.to_string()), "{why}");
}

#[tokio::test]
async fn all_versions_disabled_returns_the_current_version_with_its_reason() {
    let l = Layout::new().await;
    l.rbac_vault("kv-alloff").await;
    let v1 = l.new_version("kv-alloff", "master").await;
    let v2 = l.new_version("kv-alloff", "master").await;
    l.set_attributes(&v1, json!({"enabled": false})).await;
    l.set_attributes(&v2, json!({"enabled": false})).await;
    let kv = l.client.key_vault(l.customer());
    let now = l.now().await;

    let resolved = kv.resolve_key(&unversioned(&v2), now).await.unwrap();
    assert_eq!(resolved.id, v2);
    assert!(!resolved.enabled);
    let why = resolved.unusable_reason(now).unwrap();
    assert_eq!(why, format!("key {v2} is disabled"));

    // The list shows both, disabled.
    let versions = kv.list_key_versions(&unversioned(&v2)).await.unwrap();
    let mut ids: Vec<_> = versions.iter().map(|v| (v.id.clone(), v.enabled)).collect();
    ids.sort_by_key(|(id, _)| id.to_string());
    let mut expected = vec![(v1.clone(), false), (v2.clone(), false)];
    expected.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(ids, expected);
    assert!(versions.iter().all(|v| v.created.is_some() && v.unusable_reason(now).is_some()));
}

#[tokio::test]
async fn versioned_identifier_resolves_to_exactly_that_version() {
    let l = Layout::new().await;
    l.rbac_vault("kv-pinned").await;
    let v1 = l.new_version("kv-pinned", "master").await;
    l.advance_clock(10).await;
    let v2 = l.new_version("kv-pinned", "master").await;
    let kv = l.client.key_vault(l.customer());
    let now = l.now().await;

    assert_eq!(kv.resolve_key(&v1, now).await.unwrap().id, v1);
    assert_eq!(kv.resolve_key(&v2, now).await.unwrap().id, v2);
    assert_eq!(kv.resolve_key(&unversioned(&v1), now).await.unwrap().id, v2);

    // A pinned version is never replaced, even when unusable and another version is usable.
    l.set_attributes(&v1, json!({"enabled": false})).await;
    let pinned = kv.resolve_key(&v1, now).await.unwrap();
    assert_eq!(pinned.id, v1);
    assert!(pinned.unusable_reason(now).unwrap().contains("disabled"));
}

#[tokio::test]
async fn usable_current_version_is_resolved_without_listing_versions() {
    let l = Layout::new().await;
    l.rbac_vault("kv-onetrip").await;
    let v1 = l.new_version("kv-onetrip", "master").await;
    let v2 = l.new_version("kv-onetrip", "master").await;
    // Every versions-list request fails from now on.
    l.world
        .admin_api(
            reqwest::Method::POST,
            "faults",
            Some(json!({"vault": "kv-onetrip", "path_prefix": "/keys/master/versions",
                        "kind": {"kind": "server_error", "status": 500}})),
        )
        .await;
    let no_retry = RetryPolicy { max_attempts: 1, ..quick_retry() };
    let client = AzureClient::new(&l.world.config(no_retry), l.platform.credential()).unwrap();
    let kv = client.key_vault(l.customer());
    let now = l.now().await;

    // The current version is usable: one GET, no list.
    assert_eq!(kv.resolve_key(&unversioned(&v2), now).await.unwrap().id, v2);

    // Once it is not, the list is needed, and the fault shows that it is asked for.
    l.set_attributes(&v2, json!({"enabled": false})).await;
    let e = kv.resolve_key(&unversioned(&v2), now).await.unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Unreachable, Some(500)), "{e}");
    l.world.clear_faults().await;
    assert_eq!(kv.resolve_key(&unversioned(&v2), now).await.unwrap().id, v1);
}

#[tokio::test]
async fn versions_list_follows_next_link_across_pages() {
    let l = Layout::new().await;
    l.rbac_vault("kv-paging").await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(l.new_version("kv-paging", "master").await);
    }
    // The expected answer is created strictly later than the first five, so that it is the
    // only right one; the emulator lists oldest first, so with two per page it is on page 3.
    l.advance_clock(120).await;
    let target = l.new_version("kv-paging", "master").await;
    created.push(target.clone());
    l.advance_clock(10).await;
    let current = l.new_version("kv-paging", "master").await;
    created.push(current.clone());
    l.set_attributes(&current, json!({"enabled": false})).await;
    let key = unversioned(&current);
    let now = l.now().await;

    let paged = l.client.key_vault(l.customer()).with_page_size(2);
    let versions = paged.list_key_versions(&key).await.unwrap();
    let mut listed: Vec<String> = versions.iter().map(|v| v.id.to_string()).collect();
    listed.sort();
    let mut expected: Vec<String> = created.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(listed, expected, "all 7 versions across 4 pages of 2, each once");
    let listed_current = versions.iter().find(|v| v.id == current).unwrap();
    assert!(!listed_current.enabled);
    // A versioned identifier lists the same key's versions.
    assert_eq!(paged.list_key_versions(&target).await.unwrap().len(), 7);

    assert_eq!(paged.resolve_key(&key, now).await.unwrap().id, target);

    // The default page size (25) gets the same answer in one page.
    let kv = l.client.key_vault(l.customer());
    assert_eq!(kv.list_key_versions(&key).await.unwrap().len(), 7);
    assert_eq!(kv.resolve_key(&key, now).await.unwrap().id, target);
}

#[tokio::test]
async fn access_policy_without_list_permission_names_the_missing_permission() {
    let l = Layout::new().await;
    let c = l.customer().to_string();
    let admin_oid = l.admin.object_id().await;
    let policies = json!([
        {"tenantId": c, "objectId": admin_oid.to_string(),
         "permissions": {"keys": ["get", "list", "create", "update"], "secrets": [], "certificates": []}},
        {"tenantId": c, "objectId": l.sp.to_string(),
         "permissions": {"keys": ["get", "wrapKey", "unwrapKey"], "secrets": [], "certificates": []}},
    ]);
    l.admin.create_vault("rg-kms", "kv-policy", false, policies).await;
    let _v1 = l.new_version("kv-policy", "master").await;
    let v2 = l.new_version("kv-policy", "master").await;
    let kv = l.client.key_vault(l.customer());
    let now = l.now().await;

    // A usable current version needs only `get`.
    assert_eq!(kv.resolve_key(&unversioned(&v2), now).await.unwrap().id, v2);

    l.set_attributes(&v2, json!({"enabled": false})).await;
    let e = kv.resolve_key(&unversioned(&v2), now).await.unwrap_err();
    assert_eq!((e.kind(), e.status(), e.code()), (ErrorKind::Denied, Some(403), Some("ForbiddenByPolicy")), "{e}");
    let fix = e.remediation().unwrap();
    assert!(
        fix.contains(&format!(
            "az keyvault set-policy --name kv-policy --object-id {} --key-permissions get list",
            l.sp
        )),
        "{fix}"
    );
}
