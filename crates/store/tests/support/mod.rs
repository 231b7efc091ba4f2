//! What every suite test gets: a fresh, empty database on one backend that it can open as many
//! `Store`s on as it likes (several `Store`s on one database stand for several replicas), and
//! fixtures in the domain's words.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use atrest_store::{
    AzureCredentials, AzureKeyVaultConfig, CloudProvider, CloudProviderAccessRole, EarConfigWrite, Event, EventId,
    Group, GroupId, OrgId, Organization, RoleId, Store, ValidationState, ValidationStatus,
};
use time::OffsetDateTime;
use time::macros::datetime;

/// A fresh database for one test.
pub struct TestDb {
    url: String,
    /// Keeps the SQLite file's directory alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new SQLite file in a temp dir.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("nested/dir/atrest.db").display());
        TestDb { url, _dir: Some(dir) }
    }

    /// A new database in the throwaway cluster this test binary shares (see
    /// `atrest_store::testing`). Fails the test, with install instructions, if PostgreSQL is
    /// not installed.
    pub async fn postgres() -> TestDb {
        let url = atrest_store::testing::fresh_postgres_database().await.unwrap_or_else(|e| panic!("{e}"));
        TestDb { url, _dir: None }
    }

    /// Opens one more `Store` on this database (another "replica").
    pub async fn open(&self) -> Store {
        Store::open(&self.url).await.unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The tests' "now": a fixed instant on a whole millisecond, so values round-trip exactly.
pub fn t0() -> OffsetDateTime {
    datetime!(2026-01-15 09:30:00.125 UTC)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn at(seconds_after_t0: i64) -> OffsetDateTime {
    t0() + time::Duration::seconds(seconds_after_t0)
}

pub async fn new_org(store: &Store, name: &str) -> Organization {
    let org = Organization { id: OrgId::new_random(), name: name.into(), created_at: t0() };
    store.create_organization(&org).await.expect("create organization");
    org
}

pub async fn new_group(store: &Store, org: &OrgId, name: &str) -> Group {
    let group = Group { id: GroupId::new_random(), org_id: org.clone(), name: name.into(), created_at: t0() };
    store.create_group(&group).await.expect("create group");
    group
}

/// An org with one project, the usual starting point.
pub async fn org_and_group(store: &Store) -> (Organization, Group) {
    let org = new_org(store, "Acme").await;
    let group = new_group(store, &org.id, "payments").await;
    (org, group)
}

pub fn azure_role(group: &GroupId, tenant: &str, service_principal: &str) -> CloudProviderAccessRole {
    CloudProviderAccessRole {
        id: RoleId::new_random(),
        group_id: group.clone(),
        provider: CloudProvider::Azure,
        atlas_azure_app_id: "9efedfcc-2eca-4b27-a613-0cad1e114cb7".into(),
        service_principal_id: service_principal.into(),
        tenant_id: tenant.into(),
        created_at: t0(),
        last_updated_at: t0(),
    }
}

pub async fn new_role(store: &Store, group: &GroupId) -> CloudProviderAccessRole {
    let role = azure_role(group, "4a1f0a2e-1c1d-4c55-9d3e-6f3f2a9b7c10", &uuid_like(rand_u32()));
    store.create_cloud_provider_access_role(&role).await.expect("create role");
    role
}

fn rand_u32() -> u32 {
    // Distinct enough for fixtures without another dependency.
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn uuid_like(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

pub fn valid_at(now: OffsetDateTime) -> ValidationStatus {
    ValidationStatus {
        valid: true,
        state: ValidationState::Valid,
        detail: Some("wrap and unwrap succeeded".into()),
        key_version_in_use: Some("0123456789abcdef0123456789abcdef".into()),
        last_validated_at: Some(now),
    }
}

fn vault_config(credentials: AzureCredentials) -> AzureKeyVaultConfig {
    AzureKeyVaultConfig {
        enabled: true,
        credentials,
        subscription_id: Some("5d3f1c2b-0000-4000-8000-00000000aaaa".into()),
        resource_group_name: Some("rg-atrest".into()),
        key_vault_name: Some("atrest-kv".into()),
        key_identifier: Some("https://atrest-kv.vault.azure.net/keys/cmk".into()),
        azure_environment: Some("AZURE".into()),
        require_private_networking: false,
        pending_role_id: None,
    }
}

/// A legacy configuration with static credentials, validated at `now`.
pub fn static_write(now: OffsetDateTime) -> EarConfigWrite {
    EarConfigWrite {
        azure: vault_config(AzureCredentials::Static {
            client_id: "C1A2B3C4-0000-4000-8000-000000000001".into(),
            tenant_id: "4a1f0a2e-1c1d-4c55-9d3e-6f3f2a9b7c10".into(),
            secret_ciphertext: b"\x00sealed-by-the-control-plane".to_vec(),
        }),
        status: valid_at(now),
        now,
        next_validation_at: now + time::Duration::minutes(15),
    }
}

/// A secretless configuration using `role`, validated at `now`.
pub fn secretless_write(role: &RoleId, now: OffsetDateTime) -> EarConfigWrite {
    EarConfigWrite {
        azure: vault_config(AzureCredentials::Secretless { role_id: role.clone() }),
        status: valid_at(now),
        now,
        next_validation_at: now + time::Duration::minutes(15),
    }
}

pub fn event(group: &GroupId, event_type_name: &str, created_at: OffsetDateTime) -> Event {
    Event {
        id: EventId::new_random(),
        group_id: group.clone(),
        event_type_name: event_type_name.into(),
        created_at,
        payload: format!(r#"{{"eventTypeName":"{event_type_name}"}}"#),
    }
}
