//! Organizations and projects.

use std::collections::{BTreeMap, BTreeSet};

use atrest_store::{
    ApiKey, ApiKeyId, Group, GroupId, GroupRole, OrgId, Organization, Page, Principal, Roles, StoreError,
};

use crate::support::*;

pub async fn organizations_and_groups_round_trip(db: TestDb) {
    let store = db.open().await;
    let org = new_org(&store, "Acme").await;
    assert_eq!(store.get_organization(&org.id).await.unwrap(), org);
    let other = Organization { id: OrgId::new_random(), name: "Globex".into(), created_at: at(5) };
    store.create_organization(&other).await.unwrap();
    assert_eq!(store.list_organizations().await.unwrap(), vec![org.clone(), other.clone()]);

    let first = new_group(&store, &org.id, "payments").await;
    let second = Group { id: GroupId::new_random(), org_id: org.id.clone(), name: "ledger".into(), created_at: at(60) };
    store.create_group(&second).await.unwrap();
    assert_eq!(store.get_group(&first.id).await.unwrap(), first);
    assert_eq!(store.get_group_by_name(&org.id, "ledger").await.unwrap(), second);
    assert_eq!(store.list_groups(&org.id).await.unwrap(), vec![first.clone(), second]);
    assert_eq!(store.list_groups(&other.id).await.unwrap(), vec![]);

    assert!(matches!(
        store.get_organization(&OrgId::new_random()).await,
        Err(StoreError::NotFound { what: "organization" })
    ));
    assert!(matches!(store.get_group(&GroupId::new_random()).await, Err(StoreError::NotFound { what: "group" })));
    assert!(matches!(store.get_group_by_name(&other.id, "payments").await, Err(StoreError::NotFound { .. })));
    store.ping().await.unwrap();
}

pub async fn group_names_are_unique_per_organization(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let duplicate = Group { id: GroupId::new_random(), ..group.clone() };
    assert!(matches!(
        store.create_group(&duplicate).await,
        Err(StoreError::Conflict { what: "group name in this organization" })
    ));
    // The same name in another organization is fine.
    let other = new_org(&store, "Globex").await;
    new_group(&store, &other.id, &group.name).await;
    // A project needs an existing organization.
    let orphan = Group { id: GroupId::new_random(), org_id: OrgId::new_random(), name: "x".into(), created_at: t0() };
    assert!(matches!(store.create_group(&orphan).await, Err(StoreError::NotFound { what: "organization" })));
    assert_eq!(store.list_groups(&org.id).await.unwrap(), vec![group]);
}

pub async fn deleting_a_group_removes_everything_it_owns(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let keep = new_group(&store, &org.id, "keep").await;
    let role = new_role(&store, &group.id).await;
    store
        .put_ear_config(&group.id, None, &secretless_write(&role.id, t0()), &[event(&group.id, "X", t0())])
        .await
        .unwrap();
    let key = ApiKey {
        id: ApiKeyId::new_random(),
        org_id: org.id.clone(),
        public_key: "abcdefgh".into(),
        digest_ha1_ciphertext: vec![1, 2, 3],
        description: "ci".into(),
        created_at: t0(),
        roles: Roles {
            org: BTreeSet::new(),
            groups: BTreeMap::from([
                (group.id.clone(), BTreeSet::from([GroupRole::GroupOwner])),
                (keep.id.clone(), BTreeSet::from([GroupRole::GroupReadOnly])),
            ]),
        },
    };
    store.create_api_key(&key).await.unwrap();

    store.delete_group(&group.id).await.unwrap();

    assert!(matches!(store.get_group(&group.id).await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), None);
    assert_eq!(store.list_cloud_provider_access_roles(&group.id).await.unwrap(), vec![]);
    assert_eq!(store.list_events(&group.id, Page::first()).await.unwrap().total_count, 0);
    let roles = store.get_api_key(&key.id).await.unwrap().roles;
    assert_eq!(roles.groups.keys().collect::<Vec<_>>(), vec![&keep.id], "only the binding on the deleted group goes");
    assert!(matches!(store.delete_group(&group.id).await, Err(StoreError::NotFound { what: "group" })));
    // The principal itself is untouched.
    let principal = Principal::ApiKey(key.id.clone());
    store.set_group_roles(&principal, &keep.id, &BTreeSet::new()).await.unwrap();
}
