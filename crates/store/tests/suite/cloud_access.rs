//! Cloud Provider Access roles (Azure service principals).

use std::collections::BTreeSet;

use atrest_store::{CloudProviderAccessRole, RoleId, StoreError};

use crate::support::*;

const TENANT: &str = "4a1f0a2e-1c1d-4c55-9d3e-6f3f2a9b7c10";
const SP: &str = "0f3c6a52-7a51-4b7e-9d2e-1b2c3d4e5f60";

pub async fn cloud_provider_access_roles_round_trip(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let other_group = new_group(&store, &org.id, "ledger").await;
    let role = azure_role(&group.id, TENANT, SP);
    store.create_cloud_provider_access_role(&role).await.unwrap();
    let second = CloudProviderAccessRole { created_at: at(1), ..azure_role(&group.id, TENANT, &uuid_like(42)) };
    store.create_cloud_provider_access_role(&second).await.unwrap();

    assert_eq!(store.get_cloud_provider_access_role(&group.id, &role.id).await.unwrap(), role);
    assert_eq!(store.list_cloud_provider_access_roles(&group.id).await.unwrap(), vec![role.clone(), second.clone()]);
    assert_eq!(store.list_cloud_provider_access_roles(&other_group.id).await.unwrap(), vec![]);
    // A role is only visible through its own project.
    assert!(matches!(
        store.get_cloud_provider_access_role(&other_group.id, &role.id).await,
        Err(StoreError::NotFound { what: "cloud provider access role in this group" })
    ));
    assert!(matches!(
        store.delete_cloud_provider_access_role(&other_group.id, &role.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(!store.is_role_in_use(&group.id, &role.id).await.unwrap());

    store.delete_cloud_provider_access_role(&group.id, &role.id).await.unwrap();
    assert!(matches!(
        store.get_cloud_provider_access_role(&group.id, &role.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_cloud_provider_access_role(&group.id, &role.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.list_cloud_provider_access_roles(&group.id).await.unwrap(), vec![second]);

    let orphan = azure_role(&atrest_store::GroupId::new_random(), TENANT, SP);
    assert!(matches!(
        store.create_cloud_provider_access_role(&orphan).await,
        Err(StoreError::NotFound { what: "group" })
    ));
}

pub async fn duplicate_service_principal_in_a_project_conflicts(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let role = azure_role(&group.id, TENANT, SP);
    store.create_cloud_provider_access_role(&role).await.unwrap();
    // GUIDs compare case-insensitively; the stored spelling is kept as sent.
    let shouted = azure_role(&group.id, &TENANT.to_uppercase(), &SP.to_uppercase());
    assert!(matches!(
        store.create_cloud_provider_access_role(&shouted).await,
        Err(StoreError::Conflict { what: "Azure service principal in this group" })
    ));
    assert_eq!(store.list_cloud_provider_access_roles(&group.id).await.unwrap(), vec![role]);
    // The same service principal may be registered by another project.
    let other_group = new_group(&store, &org.id, "ledger").await;
    let elsewhere = azure_role(&other_group.id, &TENANT.to_uppercase(), SP);
    store.create_cloud_provider_access_role(&elsewhere).await.unwrap();
    assert_eq!(
        store.get_cloud_provider_access_role(&other_group.id, &elsewhere.id).await.unwrap().tenant_id,
        TENANT.to_uppercase()
    );
}

pub async fn a_role_in_use_cannot_be_deleted(db: TestDb) {
    let store = db.open().await;
    let (_, group) = org_and_group(&store).await;
    let used = new_role(&store, &group.id).await;
    let unused = new_role(&store, &group.id).await;
    let stored = store.put_ear_config(&group.id, None, &secretless_write(&used.id, t0()), &[]).await.unwrap();

    assert!(store.is_role_in_use(&group.id, &used.id).await.unwrap());
    assert!(!store.is_role_in_use(&group.id, &unused.id).await.unwrap());
    assert_eq!(store.roles_in_use(&group.id).await.unwrap(), BTreeSet::from([used.id.clone()]));
    let err = store.delete_cloud_provider_access_role(&group.id, &used.id).await.unwrap_err();
    assert!(matches!(err, StoreError::InUse { what: "Azure service principal used by Encryption at Rest" }), "{err}");
    assert!(store.get_cloud_provider_access_role(&group.id, &used.id).await.is_ok(), "nothing was deleted");
    store.delete_cloud_provider_access_role(&group.id, &unused.id).await.unwrap();

    // Once Encryption at Rest is disabled the role is free again.
    store.delete_ear_config(&group.id, stored.config_version, &[]).await.unwrap();
    assert_eq!(store.roles_in_use(&group.id).await.unwrap(), BTreeSet::<RoleId>::new());
    store.delete_cloud_provider_access_role(&group.id, &used.id).await.unwrap();
}
