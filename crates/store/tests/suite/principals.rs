//! API keys, service accounts, access tokens, role bindings and Digest nonces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use atrest_store::{
    AccessToken, ApiKey, ApiKeyId, ClientId, GroupRole, NonceCheck, OrgId, OrgRole, Principal, Roles, ServiceAccount,
    StoreError,
};

use crate::support::*;

fn api_key(org: &OrgId, public_key: &str, roles: Roles) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new_random(),
        org_id: org.clone(),
        public_key: public_key.into(),
        digest_ha1_ciphertext: b"sealed ha1".to_vec(),
        description: format!("key {public_key}"),
        created_at: t0(),
        roles,
    }
}

pub async fn api_keys_round_trip_with_roles(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let other_group = new_group(&store, &org.id, "ledger").await;
    let owner = api_key(&org.id, "ownerkey", Roles::org_owner());
    let reader = ApiKey {
        created_at: at(1),
        ..api_key(
            &org.id,
            "readerky",
            Roles {
                org: BTreeSet::new(),
                groups: BTreeMap::from([(group.id.clone(), BTreeSet::from([GroupRole::GroupReadOnly]))]),
            },
        )
    };
    store.create_api_key(&owner).await.unwrap();
    store.create_api_key(&reader).await.unwrap();

    assert_eq!(store.get_api_key(&owner.id).await.unwrap(), owner);
    assert_eq!(store.get_api_key_by_public_key("readerky").await.unwrap(), reader);
    assert_eq!(store.list_api_keys(&org.id).await.unwrap(), vec![owner.clone(), reader.clone()]);

    // Replace the roles on one project, add another project, then unbind the first.
    let principal = Principal::ApiKey(reader.id.clone());
    let both = BTreeSet::from([GroupRole::GroupOwner, GroupRole::GroupReadOnly]);
    store.set_group_roles(&principal, &group.id, &both).await.unwrap();
    store.set_group_roles(&principal, &other_group.id, &BTreeSet::from([GroupRole::GroupOwner])).await.unwrap();
    let roles = store.get_api_key(&reader.id).await.unwrap().roles;
    assert_eq!(roles.on_group(&group.id), both);
    assert_eq!(roles.on_group(&other_group.id), BTreeSet::from([GroupRole::GroupOwner]));
    store.set_group_roles(&principal, &group.id, &BTreeSet::new()).await.unwrap();
    store.set_org_roles(&principal, &BTreeSet::from([OrgRole::OrgReadOnly, OrgRole::OrgMember])).await.unwrap();
    let roles = store.get_api_key(&reader.id).await.unwrap().roles;
    assert_eq!(roles.on_group(&group.id), BTreeSet::new());
    assert_eq!(roles.groups.len(), 1);
    assert_eq!(roles.org, BTreeSet::from([OrgRole::OrgMember, OrgRole::OrgReadOnly]));

    store.delete_api_key(&reader.id).await.unwrap();
    assert!(matches!(store.get_api_key(&reader.id).await, Err(StoreError::NotFound { what: "API key" })));
    assert!(matches!(store.get_api_key_by_public_key("readerky").await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.delete_api_key(&reader.id).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(
        store.set_org_roles(&principal, &BTreeSet::new()).await,
        Err(StoreError::NotFound { what: "principal" })
    ));
    assert_eq!(store.list_api_keys(&org.id).await.unwrap(), vec![owner]);
}

pub async fn duplicate_public_key_conflicts_and_leaves_nothing_behind(db: TestDb) {
    let store = db.open().await;
    let (org, _) = org_and_group(&store).await;
    let first = api_key(&org.id, "samepubk", Roles::org_owner());
    store.create_api_key(&first).await.unwrap();
    let second = api_key(&org.id, "samepubk", Roles::org_owner());
    assert!(matches!(store.create_api_key(&second).await, Err(StoreError::Conflict { what: "API key public key" })));
    // The principal row inserted before the conflict was rolled back with it.
    assert!(matches!(store.get_api_key(&second.id).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(
        store.set_org_roles(&Principal::ApiKey(second.id.clone()), &BTreeSet::new()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.list_api_keys(&org.id).await.unwrap(), vec![first]);
    // A key for a missing organization.
    let orphan = api_key(&OrgId::new_random(), "orphanky", Roles::default());
    assert!(matches!(store.create_api_key(&orphan).await, Err(StoreError::NotFound { what: "organization" })));
}

pub async fn roles_cannot_bind_a_project_of_another_organization(db: TestDb) {
    let store = db.open().await;
    let (org, _) = org_and_group(&store).await;
    let foreign_org = new_org(&store, "Globex").await;
    let foreign_group = new_group(&store, &foreign_org.id, "theirs").await;
    let key = api_key(&org.id, "mykey123", Roles::default());
    store.create_api_key(&key).await.unwrap();

    let owner = BTreeSet::from([GroupRole::GroupOwner]);
    let err = store.set_group_roles(&Principal::ApiKey(key.id.clone()), &foreign_group.id, &owner).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "group in the principal's organization" }), "{err}");
    assert_eq!(store.get_api_key(&key.id).await.unwrap().roles, Roles::default());

    // Same rule at creation, for keys and service accounts; nothing is created.
    let sneaky = api_key(
        &org.id,
        "sneakyky",
        Roles { org: BTreeSet::new(), groups: BTreeMap::from([(foreign_group.id.clone(), owner.clone())]) },
    );
    assert!(matches!(store.create_api_key(&sneaky).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get_api_key(&sneaky.id).await, Err(StoreError::NotFound { .. })));
    let account = ServiceAccount {
        client_id: ClientId::new_random(),
        org_id: org.id.clone(),
        name: "sneaky".into(),
        secret_sha256: [7; 32],
        created_at: t0(),
        roles: Roles { org: BTreeSet::new(), groups: BTreeMap::from([(foreign_group.id.clone(), owner)]) },
    };
    assert!(matches!(store.create_service_account(&account).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get_service_account(&account.client_id).await, Err(StoreError::NotFound { .. })));
}

pub async fn service_accounts_and_their_access_tokens(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let account = ServiceAccount {
        client_id: ClientId::new_random(),
        org_id: org.id.clone(),
        name: "terraform".into(),
        secret_sha256: [0xab; 32],
        created_at: t0(),
        roles: Roles {
            org: BTreeSet::new(),
            groups: BTreeMap::from([(group.id.clone(), BTreeSet::from([GroupRole::GroupOwner]))]),
        },
    };
    store.create_service_account(&account).await.unwrap();
    assert_eq!(store.get_service_account(&account.client_id).await.unwrap(), account);
    assert_eq!(store.list_service_accounts(&org.id).await.unwrap(), vec![account.clone()]);
    let duplicate = ServiceAccount { name: "again".into(), ..account.clone() };
    assert!(matches!(
        store.create_service_account(&duplicate).await,
        Err(StoreError::Conflict { what: "service account client id" })
    ));
    let other = ServiceAccount {
        client_id: ClientId::new_random(),
        name: "other".into(),
        created_at: at(1),
        ..account.clone()
    };
    store.create_service_account(&other).await.unwrap();

    let token = AccessToken {
        token_sha256: [1; 32],
        client_id: account.client_id.clone(),
        issued_at: t0(),
        expires_at: at(3600),
        revoked_at: None,
    };
    store.insert_access_token(&token).await.unwrap();
    let stored = store.get_access_token(&[1; 32]).await.unwrap();
    assert_eq!(stored, token);
    assert!(stored.is_active(at(3599)));
    assert!(!stored.is_active(at(3600)), "a token is dead at its expiry instant");
    assert!(matches!(store.insert_access_token(&token).await, Err(StoreError::Conflict { what: "access token" })));
    let orphan = AccessToken { token_sha256: [2; 32], client_id: ClientId::new_random(), ..token.clone() };
    assert!(matches!(store.insert_access_token(&orphan).await, Err(StoreError::NotFound { what: "service account" })));

    // Only the owner can revoke, once.
    assert!(!store.revoke_access_token(&other.client_id, &[1; 32], at(10)).await.unwrap());
    assert!(store.get_access_token(&[1; 32]).await.unwrap().is_active(at(10)));
    assert!(store.revoke_access_token(&account.client_id, &[1; 32], at(10)).await.unwrap());
    assert!(!store.revoke_access_token(&account.client_id, &[1; 32], at(11)).await.unwrap());
    let revoked = store.get_access_token(&[1; 32]).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(at(10)));
    assert!(!revoked.is_active(at(11)));

    // Expired tokens are purged; live ones stay.
    let live = AccessToken { token_sha256: [3; 32], expires_at: at(7200), ..token.clone() };
    store.insert_access_token(&live).await.unwrap();
    assert_eq!(store.purge_expired_access_tokens(at(3600)).await.unwrap(), 1);
    assert!(matches!(store.get_access_token(&[1; 32]).await, Err(StoreError::NotFound { what: "access token" })));

    // Deleting the account takes its tokens with it.
    store.delete_service_account(&account.client_id).await.unwrap();
    assert!(matches!(store.get_access_token(&[3; 32]).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get_service_account(&account.client_id).await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.list_service_accounts(&org.id).await.unwrap(), vec![other]);
}

pub async fn digest_nonce_counts_are_accepted_once(db: TestDb) {
    let store = db.open().await;
    store.issue_digest_nonce("n-1", at(300)).await.unwrap();
    assert!(matches!(
        store.issue_digest_nonce("n-1", at(300)).await,
        Err(StoreError::Conflict { what: "digest nonce" })
    ));
    let check = |nc, when| {
        let store = store.clone();
        async move { store.check_and_bump_nonce_count("n-1", nc, at(when)).await.unwrap() }
    };
    assert_eq!(check(1, 1).await, NonceCheck::Accepted);
    assert_eq!(check(1, 2).await, NonceCheck::Replayed);
    assert_eq!(check(2, 3).await, NonceCheck::Accepted);
    assert_eq!(check(5, 4).await, NonceCheck::Accepted);
    assert_eq!(check(3, 5).await, NonceCheck::Replayed, "counts must increase");
    assert_eq!(check(0, 5).await, NonceCheck::Replayed);
    assert_eq!(check(6, 300).await, NonceCheck::Expired, "a nonce is dead at its expiry instant");
    assert_eq!(store.check_and_bump_nonce_count("never-issued", 1, at(1)).await.unwrap(), NonceCheck::Unknown);
    assert_eq!(check(u32::MAX, 299).await, NonceCheck::Accepted, "the whole 8-hex-digit range works");

    store.issue_digest_nonce("n-2", at(900)).await.unwrap();
    assert_eq!(store.purge_expired_nonces(at(300)).await.unwrap(), 1);
    assert_eq!(check(7, 1).await, NonceCheck::Unknown, "purged");
    assert_eq!(store.check_and_bump_nonce_count("n-2", 1, at(301)).await.unwrap(), NonceCheck::Accepted);
}

pub async fn concurrent_nonce_counts_are_accepted_once_across_stores(db: TestDb) {
    // Eight clients replaying the same request stream through two replicas at once.
    let replicas = [Arc::new(db.open().await), Arc::new(db.open().await)];
    replicas[0].issue_digest_nonce("shared", at(600)).await.unwrap();
    let mut tasks = Vec::new();
    for client in 0..8 {
        let store = replicas[client % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for nc in 1..=30u32 {
                if store.check_and_bump_nonce_count("shared", nc, at(1)).await.unwrap() == NonceCheck::Accepted {
                    accepted.push(nc);
                }
            }
            accepted
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    let unique: BTreeSet<u32> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a nonce count was accepted twice: {all:?}");
    assert!(unique.contains(&30), "the highest count is accepted by exactly one client");
}
