//! Clusters and their data nodes: unique names, single-use join tokens (even when two replicas
//! race), revocation, status reports with their derived state and events in one transaction,
//! deletion that waits for the nodes, and data credentials.

use std::sync::Arc;

use atrest_store::{
    Cluster, ClusterDeletion, ClusterEarProvider, ClusterId, ClusterUpdate, DataCredential, DataCredentialId, Event,
    EventId, GroupId, JoinOutcome, JoinToken, JoinTokenId, NewNode, NodeId, NodeReport, Page, Store, StoreError,
};

use crate::support::*;

fn cluster(group: &GroupId, name: &str) -> Cluster {
    Cluster {
        id: ClusterId::new_random(),
        group_id: group.clone(),
        name: name.into(),
        body: r#"{"name":"x","custom":{"nested":[1,2]}}"#.into(),
        encryption_at_rest_provider: ClusterEarProvider::Azure,
        node_count: 3,
        paused: false,
        state_name: "CREATING".into(),
        deleting: false,
        create_date: t0(),
        updated_at: t0(),
        version: 1,
    }
}

fn digest(n: u8) -> [u8; 32] {
    [n; 32]
}

async fn token(store: &Store, c: &Cluster, n: u8, expires_after_secs: i64) -> [u8; 32] {
    let t = JoinToken {
        id: JoinTokenId::new_random(),
        token_sha256: digest(n),
        group_id: c.group_id.clone(),
        cluster_id: c.id.clone(),
        created_by: "owner".into(),
        created_at: t0(),
        expires_at: at(expires_after_secs),
    };
    store.create_join_token(&t).await.expect("create join token");
    t.token_sha256
}

fn new_node(n: u8) -> NewNode {
    NewNode {
        id: NodeId::new_random(),
        credential_sha256: digest(100 + n),
        data_url: format!("http://127.0.0.1:{}", 9000 + u32::from(n)),
    }
}

fn report(state: &str, secs: i64) -> NodeReport {
    NodeReport {
        state: state.into(),
        key_identifier: Some("https://kv.vault.azure.net/keys/k/1".into()),
        key_version: Some("1".into()),
        auth_mode: Some("SERVICE_PRINCIPAL".into()),
        master_key_generation: Some(1),
        config_etag: Some("\"e1\"".into()),
        via: Some("PUBLIC".into()),
        last_error: None,
        last_check_at: Some(at(secs)),
        reported_at: at(secs),
    }
}

pub async fn clusters_round_trip_with_unique_names(db: TestDb) {
    let store = db.open().await;
    let (_, g) = org_and_group(&store).await;
    let c = cluster(&g.id, "Cluster0");
    store.create_cluster(&c).await.unwrap();
    assert_eq!(store.get_cluster(&g.id, "Cluster0").await.unwrap(), c);
    assert_eq!(store.get_cluster_by_id(&c.id).await.unwrap(), c);
    let dup = cluster(&g.id, "Cluster0");
    assert!(matches!(store.create_cluster(&dup).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.list_clusters(&g.id).await.unwrap(), vec![c.clone()]);
    assert_eq!(store.clusters_using_azure_key(&g.id).await.unwrap(), vec!["Cluster0".to_string()]);

    let update = ClusterUpdate {
        body: "{}".into(),
        encryption_at_rest_provider: ClusterEarProvider::Azure,
        node_count: 5,
        paused: true,
        state_name: "UPDATING".into(),
        now: at(5),
    };
    let updated = store.update_cluster(&c.id, 1, &update).await.unwrap();
    assert_eq!((updated.version, updated.node_count, updated.paused), (2, 5, true));
    assert!(matches!(store.update_cluster(&c.id, 1, &update).await, Err(StoreError::StaleWrite)));
    assert!(matches!(store.get_cluster(&g.id, "Other").await, Err(StoreError::NotFound { .. })));
}

pub async fn join_tokens_are_single_use_and_expire(db: TestDb) {
    let store = db.open().await;
    let (_, g) = org_and_group(&store).await;
    let c = cluster(&g.id, "Cluster0");
    store.create_cluster(&c).await.unwrap();
    let t = token(&store, &c, 1, 3600).await;

    let JoinOutcome::Joined { node, cluster: joined } = store.join_cluster(&t, &new_node(1), at(1)).await.unwrap()
    else {
        panic!("the first join must succeed")
    };
    assert_eq!(joined.id, c.id);
    assert_eq!(node.report, None);
    assert_eq!(store.join_cluster(&t, &new_node(2), at(2)).await.unwrap(), JoinOutcome::UsedToken(at(1)));
    assert_eq!(store.join_cluster(&digest(9), &new_node(3), at(2)).await.unwrap(), JoinOutcome::UnknownToken);
    let short = token(&store, &c, 2, 10).await;
    assert_eq!(store.join_cluster(&short, &new_node(4), at(10)).await.unwrap(), JoinOutcome::ExpiredToken(at(10)));
    assert_eq!(store.list_nodes(&c.id).await.unwrap().len(), 1);
}

pub async fn concurrent_joins_with_one_token_exactly_one_succeeds(db: TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let (_, g) = org_and_group(&a).await;
    let c = cluster(&g.id, "Cluster0");
    a.create_cluster(&c).await.unwrap();
    for round in 0..5u8 {
        let t = Arc::new(token(&a, &c, 10 + round, 3600).await);
        let (ta, tb) = (t.clone(), t.clone());
        let (sa, sb) = (a.clone(), b.clone());
        let ja = tokio::spawn(async move { sa.join_cluster(&ta, &new_node(2 * round), at(1)).await.unwrap() });
        let jb = tokio::spawn(async move { sb.join_cluster(&tb, &new_node(2 * round + 1), at(1)).await.unwrap() });
        let outcomes = [ja.await.unwrap(), jb.await.unwrap()];
        let joined = outcomes.iter().filter(|o| matches!(o, JoinOutcome::Joined { .. })).count();
        let used = outcomes.iter().filter(|o| matches!(o, JoinOutcome::UsedToken(_))).count();
        assert_eq!((joined, used), (1, 1), "round {round}: {outcomes:?}");
    }
    assert_eq!(a.list_nodes(&c.id).await.unwrap().len(), 5);
}

pub async fn reports_derive_the_cluster_state_with_events_in_one_transaction(db: TestDb) {
    let store = db.open().await;
    let (_, g) = org_and_group(&store).await;
    let c = cluster(&g.id, "Cluster0");
    store.create_cluster(&c).await.unwrap();
    let t = token(&store, &c, 1, 3600).await;
    let JoinOutcome::Joined { node, .. } = store.join_cluster(&t, &new_node(1), at(1)).await.unwrap() else {
        panic!("join")
    };
    let (n, cl) = store
        .record_node_report(&node.id, &report("SHUT_DOWN", 2), |cluster, previous, nodes| {
            assert_eq!(cluster.state_name, "CREATING");
            assert!(previous.is_none());
            assert_eq!(nodes.len(), 1);
            let ev = Event {
                id: EventId::new_random(),
                group_id: cluster.group_id.clone(),
                event_type_name: "ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID".into(),
                created_at: at(2),
                payload: "{}".into(),
            };
            ("SHUT_DOWN".into(), vec![ev])
        })
        .await
        .unwrap();
    assert_eq!(n.report.as_ref().unwrap().state, "SHUT_DOWN");
    assert_eq!(cl.state_name, "SHUT_DOWN");
    assert_eq!(store.get_cluster(&g.id, "Cluster0").await.unwrap().state_name, "SHUT_DOWN");
    let events = store.list_events(&g.id, Page::first()).await.unwrap();
    assert_eq!(events.total_count, 1);

    // An event that cannot be written (its id is taken) rolls the report back.
    let taken = events.events[0].clone();
    let failed = store
        .record_node_report(&node.id, &report("SERVING", 3), |_, previous, _| {
            assert_eq!(previous.unwrap().state, "SHUT_DOWN");
            ("IDLE".into(), vec![taken])
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(store.get_node(&node.id).await.unwrap().report.unwrap().state, "SHUT_DOWN");
    assert_eq!(store.get_cluster(&g.id, "Cluster0").await.unwrap().state_name, "SHUT_DOWN");
}

pub async fn deletion_waits_for_the_last_node_and_revoked_nodes_are_refused(db: TestDb) {
    let store = db.open().await;
    let (_, g) = org_and_group(&store).await;
    let empty = cluster(&g.id, "Empty");
    store.create_cluster(&empty).await.unwrap();
    assert_eq!(store.request_cluster_deletion(&empty.id, at(1)).await.unwrap(), ClusterDeletion::Removed);
    assert!(store.get_cluster(&g.id, "Empty").await.is_err());

    let c = cluster(&g.id, "Cluster0");
    store.create_cluster(&c).await.unwrap();
    let t = token(&store, &c, 1, 3600).await;
    let JoinOutcome::Joined { node, .. } = store.join_cluster(&t, &new_node(1), at(1)).await.unwrap() else {
        panic!("join")
    };
    let rotated = store.request_master_key_rotation(&c.id, &node.id).await.unwrap();
    assert_eq!(rotated.master_key_rotation_nonce, 1);
    assert_eq!(store.request_node_checks(&g.id).await.unwrap(), 1);
    assert_eq!(store.get_node(&node.id).await.unwrap().check_nonce, 1);

    let ClusterDeletion::Deleting(d) = store.request_cluster_deletion(&c.id, at(2)).await.unwrap() else {
        panic!("a cluster with nodes waits for them")
    };
    assert!(d.deleting);
    assert_eq!(d.state_name, "DELETING");
    let late = token(&store, &c, 2, 3600).await;
    assert_eq!(store.join_cluster(&late, &new_node(2), at(3)).await.unwrap(), JoinOutcome::ClusterDeleting);
    assert!(store.revoke_node(&c.id, &node.id, at(4)).await.unwrap(), "the last node's revocation removes the cluster");
    assert!(store.get_cluster(&g.id, "Cluster0").await.is_err());
    assert!(store.get_node(&node.id).await.is_err());
}

pub async fn revoked_nodes_cannot_report_and_data_credentials_round_trip(db: TestDb) {
    let store = db.open().await;
    let (_, g) = org_and_group(&store).await;
    let c = cluster(&g.id, "Cluster0");
    store.create_cluster(&c).await.unwrap();
    let t = token(&store, &c, 1, 3600).await;
    let JoinOutcome::Joined { node, .. } = store.join_cluster(&t, &new_node(1), at(1)).await.unwrap() else {
        panic!("join")
    };
    assert!(!store.revoke_node(&c.id, &node.id, at(2)).await.unwrap());
    assert!(store.get_node(&node.id).await.unwrap().revoked_at.is_some());
    assert!(matches!(store.revoke_node(&c.id, &node.id, at(3)).await, Err(StoreError::NotFound { .. })));
    let r = store.record_node_report(&node.id, &report("SERVING", 3), |_, _, _| ("IDLE".into(), vec![])).await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })));
    assert!(store.list_nodes(&c.id).await.unwrap().is_empty());

    let before = store.get_cluster_by_id(&c.id).await.unwrap().version;
    let cred = DataCredential {
        id: DataCredentialId::new_random(),
        cluster_id: c.id.clone(),
        credential_sha256: digest(7),
        created_at: at(4),
    };
    store.create_data_credential(&cred).await.unwrap();
    assert_eq!(store.list_data_credentials(&c.id).await.unwrap(), vec![cred.clone()]);
    store.revoke_data_credential(&c.id, &cred.id, at(5)).await.unwrap();
    assert!(store.list_data_credentials(&c.id).await.unwrap().is_empty());
    assert!(matches!(store.revoke_data_credential(&c.id, &cred.id, at(6)).await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.get_cluster_by_id(&c.id).await.unwrap().version, before + 2);
}
