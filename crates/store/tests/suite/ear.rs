//! The Encryption at Rest configuration: versions, the migration to secretless, validation
//! results, and the events written with them.

use std::sync::Arc;

use atrest_store::{
    AzureCredentials, EventId, GroupId, Page, StoreError, StoredEarConfig, ValidationState, ValidationStatus,
};

use crate::support::*;

pub async fn ear_config_round_trip_with_versions(db: TestDb) {
    let store = db.open().await;
    let (_, group) = org_and_group(&store).await;
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), None, "unconfigured");

    let write = static_write(t0());
    let v1 = store.put_ear_config(&group.id, None, &write, &[]).await.unwrap();
    assert_eq!(v1.group_id, group.id);
    assert_eq!(v1.azure, write.azure, "every field echoed exactly as set");
    assert_eq!(v1.status, write.status);
    assert_eq!(v1.updated_at, t0());
    assert_eq!(v1.next_validation_at, write.next_validation_at);
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), Some(v1.clone()));

    // Absent optional fields stay absent; a pending status has no validation time.
    let mut sparse = static_write(at(60));
    sparse.azure.subscription_id = None;
    sparse.azure.azure_environment = None;
    sparse.azure.require_private_networking = true;
    sparse.status = ValidationStatus::pending(Some("waiting for data nodes to report".into()));
    let v2 = store.put_ear_config(&group.id, Some(v1.config_version), &sparse, &[]).await.unwrap();
    assert!(v2.config_version > v1.config_version);
    assert!(v2.status_version > v1.status_version);
    assert_eq!(v2.azure, sparse.azure);
    assert_eq!(v2.status, sparse.status);
    assert!(!v2.status.valid);
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), Some(v2.clone()));

    store.schedule_revalidation(&group.id, at(120), secs(30)).await.unwrap();
    assert_eq!(store.get_ear_config(&group.id).await.unwrap().unwrap().next_validation_at, at(150));

    store.delete_ear_config(&group.id, v2.config_version, &[]).await.unwrap();
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), None);
    assert!(matches!(
        store.schedule_revalidation(&group.id, at(120), secs(30)).await,
        Err(StoreError::NotFound { .. })
    ));
    // A project can be configured again after disabling.
    store.put_ear_config(&group.id, None, &write, &[]).await.unwrap();
}

pub async fn stale_ear_writes_change_nothing(db: TestDb) {
    let store = db.open().await;
    let (_, group) = org_and_group(&store).await;
    let v1 = store.put_ear_config(&group.id, None, &static_write(t0()), &[]).await.unwrap();
    let v2 = store.put_ear_config(&group.id, Some(v1.config_version), &static_write(at(1)), &[]).await.unwrap();

    let late = event(&group.id, "ENCRYPTION_AT_REST_CONFIGURATION_UPDATED", at(2));
    // Someone created it first.
    assert!(matches!(
        store.put_ear_config(&group.id, None, &static_write(at(2)), std::slice::from_ref(&late)).await,
        Err(StoreError::StaleWrite)
    ));
    // Someone wrote since version 1 was read.
    assert!(matches!(
        store
            .put_ear_config(&group.id, Some(v1.config_version), &static_write(at(2)), std::slice::from_ref(&late))
            .await,
        Err(StoreError::StaleWrite)
    ));
    assert!(matches!(
        store.delete_ear_config(&group.id, v1.config_version, std::slice::from_ref(&late)).await,
        Err(StoreError::StaleWrite)
    ));
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), Some(v2.clone()), "the previous value is intact");
    assert_eq!(
        store.list_events(&group.id, Page::first()).await.unwrap().total_count,
        0,
        "no event without its change"
    );

    // Someone deleted it since it was read.
    store.delete_ear_config(&group.id, v2.config_version, &[]).await.unwrap();
    assert!(matches!(
        store.put_ear_config(&group.id, Some(v2.config_version), &static_write(at(3)), &[]).await,
        Err(StoreError::StaleWrite)
    ));
    assert!(matches!(store.delete_ear_config(&group.id, v2.config_version, &[]).await, Err(StoreError::StaleWrite)));
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), None);
}

pub async fn concurrent_ear_writes_exactly_one_wins(db: TestDb) {
    let replicas = [Arc::new(db.open().await), Arc::new(db.open().await)];
    let (_, group) = org_and_group(&replicas[0]).await;
    let v1 = replicas[0].put_ear_config(&group.id, None, &static_write(t0()), &[]).await.unwrap();

    let mut tasks = Vec::new();
    for writer in 0..12 {
        let store = replicas[writer % 2].clone();
        let group = group.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut write = static_write(at(writer as i64 + 1));
            write.azure.key_vault_name = Some(format!("vault-{writer}"));
            let events = [event(&group, "ENCRYPTION_AT_REST_CONFIGURATION_UPDATED", at(1))];
            store.put_ear_config(&group, Some(v1.config_version), &write, &events).await.map(|s| (writer, s))
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(won) => winners.push(won),
            Err(StoreError::StaleWrite) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one concurrent writer of version 1 wins");
    let (writer, stored) = winners.pop().unwrap();
    let now = replicas[1].get_ear_config(&group.id).await.unwrap().unwrap();
    assert_eq!(now, stored);
    assert_eq!(now.azure.key_vault_name, Some(format!("vault-{writer}")));
    assert_eq!(
        replicas[1].list_events(&group.id, Page::first()).await.unwrap().total_count,
        1,
        "only the winner's event"
    );
}

fn assert_static(stored: &StoredEarConfig) {
    assert!(
        matches!(&stored.azure.credentials, AzureCredentials::Static { secret_ciphertext, .. } if !secret_ciphertext.is_empty()),
        "static credentials should still be in force: {:?}",
        stored.azure.credentials
    );
}

pub async fn migration_to_secretless_removes_static_credentials_in_the_same_transaction(db: TestDb) {
    let store = db.open().await;
    let (_, group) = org_and_group(&store).await;
    let role = new_role(&store, &group.id).await;
    let legacy = store.put_ear_config(&group.id, None, &static_write(t0()), &[]).await.unwrap();
    assert_static(&legacy);

    let updated = event(&group.id, "ENCRYPTION_AT_REST_CONFIGURATION_UPDATED", at(30));
    let migrated = store
        .put_ear_config(
            &group.id,
            Some(legacy.config_version),
            &secretless_write(&role.id, at(30)),
            std::slice::from_ref(&updated),
        )
        .await
        .unwrap();
    assert_eq!(migrated.azure.credentials, AzureCredentials::Secretless { role_id: role.id.clone() });
    let reread = store.get_ear_config(&group.id).await.unwrap().unwrap();
    assert_eq!(reread, migrated);
    assert_eq!(reread.azure.credentials.role_id(), Some(&role.id), "roleId is the source of truth");
    assert!(store.is_role_in_use(&group.id, &role.id).await.unwrap());
    assert_eq!(store.get_event(&group.id, &updated.id).await.unwrap(), updated, "the event committed with the change");
}

pub async fn failed_migration_keeps_static_credentials(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let role = new_role(&store, &group.id).await;
    let other_group = new_group(&store, &org.id, "ledger").await;
    let foreign_role = new_role(&store, &other_group.id).await;
    let earlier = event(&group.id, "ENCRYPTION_AT_REST_CONFIG_IS_VALID", t0());
    let legacy =
        store.put_ear_config(&group.id, None, &static_write(t0()), std::slice::from_ref(&earlier)).await.unwrap();
    let secretless = secretless_write(&role.id, at(30));

    // 1. The row update succeeds inside the transaction, then the event insert fails: all of it
    //    rolls back.
    let err = store
        .put_ear_config(&group.id, Some(legacy.config_version), &secretless, std::slice::from_ref(&earlier))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { what: "event id" }), "{err}");
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), Some(legacy.clone()));

    // 2. A role of another project.
    let err = store
        .put_ear_config(&group.id, Some(legacy.config_version), &secretless_write(&foreign_role.id, at(31)), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "cloud provider access role in this group" }), "{err}");
    // 3. A role that does not exist at all.
    let err = store
        .put_ear_config(
            &group.id,
            Some(legacy.config_version),
            &secretless_write(&atrest_store::RoleId::new_random(), at(32)),
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "cloud provider access role in this group" }), "{err}");
    // 4. Another replica rotated the static secret since this migration read version 1.
    let rotated =
        store.put_ear_config(&group.id, Some(legacy.config_version), &static_write(at(33)), &[]).await.unwrap();
    let err = store.put_ear_config(&group.id, Some(legacy.config_version), &secretless, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleWrite), "{err}");
    let still = store.get_ear_config(&group.id).await.unwrap().unwrap();
    assert_eq!(still, rotated);
    assert_static(&still);

    // After all that, migrating from the current version works.
    let migrated = store.put_ear_config(&group.id, Some(rotated.config_version), &secretless, &[]).await.unwrap();
    assert_eq!(migrated.azure.credentials.role_id(), Some(&role.id));

    // A project that does not exist is named as such.
    let err = store.put_ear_config(&GroupId::new_random(), None, &static_write(t0()), &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "group" }), "{err}");

    // Only the first event exists: none of the failed attempts left one.
    let events = store.list_events(&group.id, Page::first()).await.unwrap();
    assert_eq!(events.events, vec![earlier]);
}

pub async fn validation_results_are_recorded_once_per_status_version(db: TestDb) {
    let store = db.open().await;
    let (_, group) = org_and_group(&store).await;
    let mut write = static_write(t0());
    write.status = ValidationStatus::pending(None);
    let v1 = store.put_ear_config(&group.id, None, &write, &[]).await.unwrap();

    // Two validations of the same configuration race; the first to record wins.
    let no_longer_valid = ValidationStatus {
        valid: false,
        state: ValidationState::Invalid,
        detail: Some("unwrapKey: Forbidden (ForbiddenByRbac); grant Key Vault Crypto User".into()),
        key_version_in_use: None,
        last_validated_at: Some(at(60)),
    };
    let e1 = event(&group.id, "ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID", at(60));
    let recorded = store
        .record_validation(&group.id, v1.config_version, v1.status_version, &no_longer_valid, std::slice::from_ref(&e1))
        .await
        .unwrap();
    assert_eq!(recorded.status, no_longer_valid);
    assert_eq!(recorded.config_version, v1.config_version, "a validation is not a configuration change");
    assert!(recorded.status_version > v1.status_version);
    assert_eq!(recorded.azure, v1.azure);

    let e2 = event(&group.id, "ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID", at(61));
    assert!(matches!(
        store
            .record_validation(
                &group.id,
                v1.config_version,
                v1.status_version,
                &no_longer_valid,
                std::slice::from_ref(&e2)
            )
            .await,
        Err(StoreError::StaleWrite)
    ));

    // A user's PATCH read before the validation still succeeds (the etag did not move) ...
    let v2 = store.put_ear_config(&group.id, Some(v1.config_version), &static_write(at(70)), &[]).await.unwrap();
    // ... and a validation of the older configuration can no longer record.
    let restored = valid_at(at(80));
    assert!(matches!(
        store.record_validation(&group.id, v1.config_version, recorded.status_version, &restored, &[]).await,
        Err(StoreError::StaleWrite)
    ));
    let unreachable = ValidationStatus {
        valid: true,
        state: ValidationState::Unreachable,
        detail: Some("timeout".into()),
        key_version_in_use: v2.status.key_version_in_use.clone(),
        last_validated_at: Some(at(90)),
    };
    let after =
        store.record_validation(&group.id, v2.config_version, v2.status_version, &unreachable, &[]).await.unwrap();
    assert_eq!(store.get_ear_config(&group.id).await.unwrap(), Some(after.clone()));
    assert_eq!(after.status, unreachable);

    let events = store.list_events(&group.id, Page::first()).await.unwrap();
    assert_eq!(events.events, vec![e1], "the losing validation's event was not written");
    // Recording for a project without configuration is stale too.
    assert!(matches!(
        store.record_validation(&GroupId::new_random(), v2.config_version, v2.status_version, &unreachable, &[]).await,
        Err(StoreError::StaleWrite)
    ));
}

pub async fn events_are_listed_newest_first_with_paging(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let other = new_group(&store, &org.id, "ledger").await;
    // Inserted out of order, with two ties at second 20.
    let seconds = [10, 30, 20, 20, 50, 40, 0];
    let mut written = Vec::new();
    for (i, s) in seconds.iter().enumerate() {
        let e = event(&group.id, &format!("E{i}"), at(*s));
        store.insert_event(&e).await.unwrap();
        written.push(e);
    }
    store.insert_event(&event(&other.id, "ELSEWHERE", at(100))).await.unwrap();

    // Newest first; of the two at second 20, the later insert (E3) first.
    let expected: Vec<&str> = vec!["E4", "E5", "E1", "E3", "E2", "E0", "E6"];
    let mut seen = Vec::new();
    for page_num in 1..=3 {
        let page = store.list_events(&group.id, Page { page_num, items_per_page: 3 }).await.unwrap();
        assert_eq!(page.total_count, 7);
        seen.extend(page.events.into_iter().map(|e| e.event_type_name));
    }
    assert_eq!(seen, expected);
    let beyond = store.list_events(&group.id, Page { page_num: 4, items_per_page: 3 }).await.unwrap();
    assert!(beyond.events.is_empty());
    assert_eq!(beyond.total_count, 7);

    assert_eq!(store.get_event(&group.id, &written[4].id).await.unwrap(), written[4]);
    assert!(matches!(store.get_event(&other.id, &written[4].id).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get_event(&group.id, &EventId::new_random()).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.insert_event(&written[0]).await, Err(StoreError::Conflict { what: "event id" })));
    let orphan = event(&GroupId::new_random(), "X", t0());
    assert!(matches!(store.insert_event(&orphan).await, Err(StoreError::NotFound { what: "group" })));
    for bad in [
        Page { page_num: 0, items_per_page: 10 },
        Page { page_num: 1, items_per_page: 0 },
        Page { page_num: 1, items_per_page: 501 },
    ] {
        assert!(matches!(store.list_events(&group.id, bad).await, Err(StoreError::Invalid(_))));
    }

    assert_eq!(store.purge_events_before(at(20)).await.unwrap(), 2);
    assert_eq!(store.list_events(&group.id, Page::first()).await.unwrap().total_count, 5);
}
