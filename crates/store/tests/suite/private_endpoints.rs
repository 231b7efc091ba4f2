//! Encryption at Rest private endpoints: one per region per project, status transitions applied
//! once even across replicas, and deletion (refused while initiating).

use std::sync::Arc;

use atrest_store::{
    CloudProvider, EarPrivateEndpoint, EarPrivateEndpointDeletion, EarPrivateEndpointId, EarPrivateEndpointStatus,
    EarPrivateEndpointTransition, GroupId, Store, StoreError,
};

use crate::support::*;

use EarPrivateEndpointStatus::{Active, Deleting, Initiating, PendingAcceptance};

fn endpoint(group: &GroupId, region: &str, created_seconds_after_t0: i64) -> EarPrivateEndpoint {
    EarPrivateEndpoint {
        id: EarPrivateEndpointId::new_random(),
        group_id: group.clone(),
        provider: CloudProvider::Azure,
        region_name: region.into(),
        status: Initiating,
        error_message: None,
        private_endpoint_connection_name: None,
        private_address: None,
        created_at: at(created_seconds_after_t0),
        updated_at: at(created_seconds_after_t0),
    }
}

async fn new_endpoint(
    store: &Store,
    group: &GroupId,
    region: &str,
    created_seconds_after_t0: i64,
) -> EarPrivateEndpoint {
    let ep = endpoint(group, region, created_seconds_after_t0);
    store.create_ear_private_endpoint(&ep).await.expect("create private endpoint");
    ep
}

fn to_pending_acceptance(id: &EarPrivateEndpointId) -> EarPrivateEndpointTransition {
    EarPrivateEndpointTransition {
        from: Initiating,
        to: PendingAcceptance,
        error_message: None,
        private_endpoint_connection_name: Some(format!("atrest-{id}")),
    }
}

fn to_active() -> EarPrivateEndpointTransition {
    EarPrivateEndpointTransition {
        from: PendingAcceptance,
        to: Active,
        error_message: None,
        private_endpoint_connection_name: None,
    }
}

pub async fn ear_private_endpoints_round_trip(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let other_group = new_group(&store, &org.id, "ledger").await;
    assert_eq!(store.list_ear_private_endpoints(&group.id).await.unwrap(), vec![]);

    let mut west = endpoint(&group.id, "EUROPE_WEST", 5);
    west.error_message = Some("kept exactly".into());
    west.private_endpoint_connection_name = Some("conn-west".into());
    store.create_ear_private_endpoint(&west).await.unwrap();
    let east = new_endpoint(&store, &group.id, "US_EAST_2", 1).await;

    assert_eq!(store.get_ear_private_endpoint(&group.id, &west.id).await.unwrap(), west);
    assert_eq!(store.get_ear_private_endpoint(&group.id, &east.id).await.unwrap(), east);
    assert_eq!(
        store.list_ear_private_endpoints(&group.id).await.unwrap(),
        vec![east.clone(), west.clone()],
        "oldest first"
    );
    // An endpoint is only visible through its own project.
    assert_eq!(store.list_ear_private_endpoints(&other_group.id).await.unwrap(), vec![]);
    assert!(matches!(
        store.get_ear_private_endpoint(&other_group.id, &west.id).await,
        Err(StoreError::NotFound { what: "encryption at rest private endpoint in this group" })
    ));
    assert!(matches!(
        store.get_ear_private_endpoint(&group.id, &EarPrivateEndpointId::new_random()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.request_ear_private_endpoint_deletion(&other_group.id, &west.id, at(10)).await,
        Err(StoreError::NotFound { .. })
    ));

    let orphan = endpoint(&GroupId::new_random(), "US_EAST_2", 0);
    assert!(matches!(store.create_ear_private_endpoint(&orphan).await, Err(StoreError::NotFound { what: "group" })));

    // Deleting the project takes its endpoints with it.
    store.delete_group(&group.id).await.unwrap();
    assert_eq!(store.list_ear_private_endpoints(&group.id).await.unwrap(), vec![]);
    assert_eq!(store.list_ear_private_endpoints_in_status(Initiating, 10).await.unwrap(), vec![]);
    assert!(matches!(store.get_ear_private_endpoint(&group.id, &east.id).await, Err(StoreError::NotFound { .. })));
}

pub async fn one_private_endpoint_per_region_per_project(db: TestDb) {
    let store = db.open().await;
    let (org, group) = org_and_group(&store).await;
    let first = new_endpoint(&store, &group.id, "US_EAST_2", 0).await;
    assert!(matches!(
        store.create_ear_private_endpoint(&endpoint(&group.id, "US_EAST_2", 1)).await,
        Err(StoreError::Conflict { what: "private endpoint in this region" })
    ));
    assert_eq!(store.list_ear_private_endpoints(&group.id).await.unwrap(), vec![first.clone()], "nothing added");
    // Another region, or the same region in another project, is fine.
    new_endpoint(&store, &group.id, "US_WEST_2", 1).await;
    let other_group = new_group(&store, &org.id, "ledger").await;
    new_endpoint(&store, &other_group.id, "US_EAST_2", 1).await;

    // The region stays taken while its endpoint is being deleted, and is free once it is gone.
    store
        .transition_ear_private_endpoint(&group.id, &first.id, &to_pending_acceptance(&first.id), at(2))
        .await
        .unwrap();
    store.request_ear_private_endpoint_deletion(&group.id, &first.id, at(3)).await.unwrap();
    assert!(matches!(
        store.create_ear_private_endpoint(&endpoint(&group.id, "US_EAST_2", 4)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.remove_deleting_ear_private_endpoint(&group.id, &first.id).await.unwrap());
    new_endpoint(&store, &group.id, "US_EAST_2", 5).await;
}

pub async fn private_endpoint_transitions_apply_only_from_their_state(db: TestDb) {
    let store = db.open().await;
    let (_, group) = org_and_group(&store).await;
    let ep = new_endpoint(&store, &group.id, "US_EAST_2", 0).await;
    let later = new_endpoint(&store, &group.id, "EUROPE_NORTH", 1).await;
    assert_eq!(
        store.list_ear_private_endpoints_in_status(Initiating, 10).await.unwrap(),
        vec![ep.clone(), later.clone()],
        "least recently changed first"
    );
    assert_eq!(store.list_ear_private_endpoints_in_status(Initiating, 1).await.unwrap(), vec![ep.clone()]);

    // Skipping a state is refused: the endpoint is not PENDING_ACCEPTANCE yet.
    assert_eq!(store.transition_ear_private_endpoint(&group.id, &ep.id, &to_active(), at(2)).await.unwrap(), None);

    let pending = store
        .transition_ear_private_endpoint(&group.id, &ep.id, &to_pending_acceptance(&ep.id), at(3))
        .await
        .unwrap()
        .expect("INITIATING -> PENDING_ACCEPTANCE");
    assert_eq!(pending.status, PendingAcceptance);
    assert_eq!(pending.private_endpoint_connection_name, Some(format!("atrest-{}", ep.id)));
    assert_eq!((pending.created_at, pending.updated_at), (at(0), at(3)));
    assert_eq!(store.get_ear_private_endpoint(&group.id, &ep.id).await.unwrap(), pending);
    // The same transition again finds nothing to change.
    assert_eq!(
        store.transition_ear_private_endpoint(&group.id, &ep.id, &to_pending_acceptance(&ep.id), at(4)).await.unwrap(),
        None
    );
    assert_eq!(store.list_ear_private_endpoints_in_status(Initiating, 10).await.unwrap(), vec![later]);
    assert_eq!(store.list_ear_private_endpoints_in_status(PendingAcceptance, 10).await.unwrap(), vec![pending.clone()]);

    // An error message can be set and cleared; no connection name keeps the current one.
    let failing = EarPrivateEndpointTransition {
        from: PendingAcceptance,
        to: PendingAcceptance,
        error_message: Some("the connection was not approved yet".into()),
        private_endpoint_connection_name: None,
    };
    let noted = store.transition_ear_private_endpoint(&group.id, &ep.id, &failing, at(5)).await.unwrap().unwrap();
    assert_eq!(noted.error_message.as_deref(), Some("the connection was not approved yet"));
    let active = store.transition_ear_private_endpoint(&group.id, &ep.id, &to_active(), at(6)).await.unwrap().unwrap();
    assert_eq!(active.status, Active);
    assert_eq!(active.error_message, None);
    assert_eq!(active.private_endpoint_connection_name, pending.private_endpoint_connection_name);
    assert_eq!(
        store
            .transition_ear_private_endpoint(&group.id, &EarPrivateEndpointId::new_random(), &to_active(), at(7))
            .await
            .unwrap(),
        None,
        "a missing endpoint changes nothing"
    );
}

pub async fn private_endpoint_deletion_is_refused_while_initiating(db: TestDb) {
    let store = db.open().await;
    let (_, group) = org_and_group(&store).await;
    let ep = new_endpoint(&store, &group.id, "US_EAST_2", 0).await;

    match store.request_ear_private_endpoint_deletion(&group.id, &ep.id, at(1)).await.unwrap() {
        EarPrivateEndpointDeletion::BlockedWhileInitiating(current) => assert_eq!(current, ep),
        other => panic!("deleting an INITIATING endpoint must be refused, got {other:?}"),
    }
    assert!(!store.remove_deleting_ear_private_endpoint(&group.id, &ep.id).await.unwrap(), "not DELETING");
    assert_eq!(store.get_ear_private_endpoint(&group.id, &ep.id).await.unwrap(), ep, "nothing changed");

    store.transition_ear_private_endpoint(&group.id, &ep.id, &to_pending_acceptance(&ep.id), at(2)).await.unwrap();
    let deleting = match store.request_ear_private_endpoint_deletion(&group.id, &ep.id, at(3)).await.unwrap() {
        EarPrivateEndpointDeletion::Requested(current) => current,
        other => panic!("expected the deletion to be requested, got {other:?}"),
    };
    assert_eq!((deleting.status, deleting.updated_at), (Deleting, at(3)));
    assert_eq!(
        store.request_ear_private_endpoint_deletion(&group.id, &ep.id, at(4)).await.unwrap(),
        EarPrivateEndpointDeletion::AlreadyDeleting(deleting.clone()),
        "asking again changes nothing"
    );
    assert_eq!(store.list_ear_private_endpoints_in_status(Deleting, 10).await.unwrap(), vec![deleting]);
    // A DELETING endpoint does not move to another state.
    assert_eq!(store.transition_ear_private_endpoint(&group.id, &ep.id, &to_active(), at(5)).await.unwrap(), None);

    assert!(store.remove_deleting_ear_private_endpoint(&group.id, &ep.id).await.unwrap());
    assert!(!store.remove_deleting_ear_private_endpoint(&group.id, &ep.id).await.unwrap(), "removed once");
    assert!(matches!(store.get_ear_private_endpoint(&group.id, &ep.id).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(
        store.request_ear_private_endpoint_deletion(&group.id, &ep.id, at(6)).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn private_endpoint_changes_apply_once_across_stores(db: TestDb) {
    let replicas = [Arc::new(db.open().await), Arc::new(db.open().await)];
    let (_, group) = org_and_group(&replicas[0]).await;

    // Two replicas racing to create the same region: exactly one wins.
    let mut creations = Vec::new();
    for worker in 0..8 {
        let store = replicas[worker % 2].clone();
        let group = group.id.clone();
        creations.push(tokio::spawn(async move {
            store.create_ear_private_endpoint(&endpoint(&group, "US_EAST_2", 0)).await
        }));
    }
    let mut created = 0;
    for task in creations {
        match task.await.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 1);

    // Both replicas read the same work list and advance it at the same time: each endpoint moves
    // once, and each DELETING endpoint is removed once.
    for (i, region) in ["US_WEST", "US_WEST_2", "EUROPE_WEST", "EUROPE_NORTH", "UK_SOUTH"].iter().enumerate() {
        new_endpoint(&replicas[0], &group.id, region, i as i64 + 1).await;
    }
    let work = replicas[1].list_ear_private_endpoints_in_status(Initiating, 100).await.unwrap();
    assert_eq!(work.len(), 6);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = replicas[worker % 2].clone();
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut moved = 0;
            for ep in &work {
                let change = to_pending_acceptance(&ep.id);
                if store.transition_ear_private_endpoint(&ep.group_id, &ep.id, &change, at(10)).await.unwrap().is_some()
                {
                    moved += 1;
                }
            }
            moved
        }));
    }
    let mut moved = 0;
    for task in tasks {
        moved += task.await.unwrap();
    }
    assert_eq!(moved, work.len(), "every endpoint moved exactly once");

    for ep in &work {
        replicas[0].request_ear_private_endpoint_deletion(&group.id, &ep.id, at(11)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = replicas[worker % 2].clone();
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut removed = 0;
            for ep in &work {
                if store.remove_deleting_ear_private_endpoint(&ep.group_id, &ep.id).await.unwrap() {
                    removed += 1;
                }
            }
            removed
        }));
    }
    let mut removed = 0;
    for task in tasks {
        removed += task.await.unwrap();
    }
    assert_eq!(removed, work.len(), "every endpoint removed exactly once");
    assert_eq!(replicas[1].list_ear_private_endpoints(&group.id).await.unwrap(), vec![]);
}
