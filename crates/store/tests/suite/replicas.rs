//! Several control-plane replicas on one database: leases, revalidation claims, visibility of
//! writes, and migrations run by whichever replica opens first.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use atrest_store::{GroupId, SharedToken, Store};

use crate::support::*;

pub async fn lease_is_exclusive_renewable_and_taken_over_when_expired(db: TestDb) {
    let store = db.open().await;
    let lease = "revalidation-scheduler";
    assert_eq!(store.get_lease(lease).await.unwrap(), None);
    assert!(store.try_acquire_lease(lease, "replica-a", secs(10), t0()).await.unwrap(), "free");
    assert!(!store.try_acquire_lease(lease, "replica-b", secs(10), at(5)).await.unwrap(), "held by a");
    assert!(store.try_acquire_lease(lease, "replica-a", secs(10), at(8)).await.unwrap(), "renewed by its holder");
    let held = store.get_lease(lease).await.unwrap().unwrap();
    assert_eq!((held.holder.as_str(), held.acquired_at, held.expires_at), ("replica-a", t0(), at(18)));
    assert!(!store.try_acquire_lease(lease, "replica-b", secs(10), at(17)).await.unwrap(), "renewal extended it");
    assert!(store.try_acquire_lease(lease, "replica-b", secs(10), at(18)).await.unwrap(), "expired: taken over");
    let held = store.get_lease(lease).await.unwrap().unwrap();
    assert_eq!((held.holder.as_str(), held.acquired_at, held.expires_at), ("replica-b", at(18), at(28)));
    assert!(!store.try_acquire_lease(lease, "replica-a", secs(10), at(19)).await.unwrap(), "a lost it");
    assert!(!store.release_lease(lease, "replica-a").await.unwrap(), "cannot release someone else's lease");
    assert!(store.release_lease(lease, "replica-b").await.unwrap());
    assert!(!store.release_lease(lease, "replica-b").await.unwrap());
    assert!(store.try_acquire_lease(lease, "replica-a", secs(10), at(20)).await.unwrap(), "free after release");
    // Leases are independent of each other.
    assert!(store.try_acquire_lease("other", "replica-b", secs(10), at(20)).await.unwrap());
}

pub async fn lease_has_one_holder_at_a_time_across_stores(db: TestDb) {
    let replicas = [Arc::new(db.open().await), Arc::new(db.open().await)];
    let inside = Arc::new(AtomicUsize::new(0));
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let store = replicas[worker % 2].clone();
        let (inside, acquisitions) = (inside.clone(), acquisitions.clone());
        tasks.push(tokio::spawn(async move {
            let me = format!("worker-{worker}");
            for _ in 0..25 {
                // A long TTL at a fixed "now": only a release frees the lease.
                if store.try_acquire_lease("exclusive", &me, secs(3600), t0()).await.unwrap() {
                    let others = inside.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(others, 0, "{me} acquired the lease while someone else held it");
                    acquisitions.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert!(store.release_lease("exclusive", &me).await.unwrap());
                } else {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(acquisitions.load(Ordering::SeqCst) > 1, "the lease changed hands");
    // And an expired lease is taken over by exactly one of many contenders.
    replicas[0].try_acquire_lease("crashed-holder", "gone", secs(10), t0()).await.unwrap();
    let mut contenders = Vec::new();
    for worker in 0..16 {
        let store = replicas[worker % 2].clone();
        contenders.push(tokio::spawn(async move {
            store.try_acquire_lease("crashed-holder", &format!("worker-{worker}"), secs(10), at(10)).await.unwrap()
        }));
    }
    let mut winners = 0;
    for c in contenders {
        winners += usize::from(c.await.unwrap());
    }
    assert_eq!(winners, 1, "exactly one replica takes over an expired lease");
}

async fn configured_groups(store: &Store, n: usize) -> BTreeSet<GroupId> {
    let org = new_org(store, "Acme").await;
    let mut groups = BTreeSet::new();
    for i in 0..n {
        let group = new_group(store, &org.id, &format!("project-{i}")).await;
        let mut write = static_write(t0());
        write.next_validation_at = t0();
        store.put_ear_config(&group.id, None, &write, &[]).await.unwrap();
        groups.insert(group.id);
    }
    groups
}

pub async fn due_revalidations_are_claimed_by_exactly_one_store(db: TestDb) {
    let replicas = [Arc::new(db.open().await), Arc::new(db.open().await)];
    let groups = configured_groups(&replicas[0], 12).await;
    let interval = time::Duration::minutes(15);

    // Both replicas drain the backlog at once, a few at a time.
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let store = replicas[worker % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.claim_due_revalidations(t0(), t0() + interval, 2).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                for config in claimed {
                    assert_eq!(config.next_validation_at, t0() + interval, "returned as claimed");
                    mine.push(config.group_id);
                }
            }
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    let unique: BTreeSet<GroupId> = claimed.iter().cloned().collect();
    assert_eq!(claimed.len(), unique.len(), "a project was handed to two replicas");
    assert_eq!(unique, groups, "every due project was handed out");

    // Nothing is due again until the interval has passed.
    assert!(
        replicas[1]
            .claim_due_revalidations(t0() + interval - time::Duration::seconds(1), t0() + interval * 2, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let next_round = replicas[1].claim_due_revalidations(t0() + interval, t0() + interval * 2, 100).await.unwrap();
    assert_eq!(next_round.iter().map(|c| c.group_id.clone()).collect::<BTreeSet<_>>(), groups);
}

pub async fn revalidation_on_read_is_rate_limited_across_stores(db: TestDb) {
    let replicas = [Arc::new(db.open().await), Arc::new(db.open().await)];
    let (_, group) = org_and_group(&replicas[0]).await;
    assert_eq!(
        replicas[0].claim_revalidation_on_read(&group.id, t0(), secs(30)).await.unwrap(),
        None,
        "no configuration"
    );
    // The PATCH that wrote the configuration validated it at t0.
    replicas[0].put_ear_config(&group.id, None, &static_write(t0()), &[]).await.unwrap();
    assert_eq!(replicas[0].claim_revalidation_on_read(&group.id, at(29), secs(30)).await.unwrap(), None);
    assert!(replicas[1].claim_revalidation_on_read(&group.id, at(30), secs(30)).await.unwrap().is_some());
    assert_eq!(replicas[0].claim_revalidation_on_read(&group.id, at(31), secs(30)).await.unwrap(), None);

    // Many concurrent GETs through both replicas: one revalidation.
    let mut readers = Vec::new();
    for reader in 0..12 {
        let store = replicas[reader % 2].clone();
        let group = group.id.clone();
        readers.push(tokio::spawn(async move {
            store.claim_revalidation_on_read(&group, at(75), secs(30)).await.unwrap().is_some()
        }));
    }
    let mut claims = 0;
    for r in readers {
        claims += usize::from(r.await.unwrap());
    }
    assert_eq!(claims, 1);
    // A background claim counts as a recent validation too.
    let due = replicas[0].claim_due_revalidations(at(15 * 60), at(30 * 60), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(replicas[1].claim_revalidation_on_read(&group.id, at(15 * 60 + 10), secs(30)).await.unwrap(), None);
}

pub async fn writes_through_one_store_are_visible_through_another(db: TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let (org, group) = org_and_group(&a).await;
    assert_eq!(b.get_group(&group.id).await.unwrap(), group);
    assert_eq!(b.get_organization(&org.id).await.unwrap(), org);

    let role = new_role(&b, &group.id).await;
    let v1 = a.put_ear_config(&group.id, None, &static_write(t0()), &[]).await.unwrap();
    assert_eq!(b.get_ear_config(&group.id).await.unwrap(), Some(v1.clone()));
    let v2 =
        b.put_ear_config(&group.id, Some(v1.config_version), &secretless_write(&role.id, at(1)), &[]).await.unwrap();
    assert_eq!(a.get_ear_config(&group.id).await.unwrap(), Some(v2.clone()));
    // The replica that read version 1 is told its view is stale.
    assert!(matches!(
        a.put_ear_config(&group.id, Some(v1.config_version), &static_write(at(2)), &[]).await,
        Err(atrest_store::StoreError::StaleWrite)
    ));
    assert!(a.is_role_in_use(&group.id, &role.id).await.unwrap());
    a.insert_event(&event(&group.id, "FROM_A", at(3))).await.unwrap();
    assert_eq!(
        b.list_events(&group.id, atrest_store::Page::first()).await.unwrap().events[0].event_type_name,
        "FROM_A"
    );
}

pub async fn reopening_and_concurrent_opens_apply_migrations_once(db: TestDb) {
    let first = db.open().await;
    let (org, group) = org_and_group(&first).await;
    first.put_ear_config(&group.id, None, &static_write(t0()), &[]).await.unwrap();
    first.close().await;

    // Reopen sequentially, then several replicas starting at the same moment.
    let again = db.open().await;
    assert_eq!(again.get_group(&group.id).await.unwrap(), group);
    let url = db.url().to_string();
    let opens: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    for open in opens {
        let store = open.await.unwrap().expect("a concurrent open succeeds");
        assert_eq!(store.list_groups(&org.id).await.unwrap(), vec![group.clone()]);
        assert!(store.get_ear_config(&group.id).await.unwrap().is_some());
    }
}

pub async fn shared_tokens_are_replaced_deleted_by_their_digest_and_purged_when_expired(db: TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let token = |id: &str, sha: u8, expires: i64| SharedToken {
        id: id.into(),
        sealed: vec![1, 2, 3, sha],
        sha256: [sha; 32],
        obtained_at: t0(),
        expires_at: at(expires),
    };
    assert_eq!(a.shared_token("k").await.unwrap(), None);
    a.put_shared_token(&token("k", 1, 3600), t0()).await.unwrap();
    assert_eq!(b.shared_token("k").await.unwrap(), Some(token("k", 1, 3600)), "another replica reads it");
    b.put_shared_token(&token("k", 2, 3600), at(1)).await.unwrap();
    assert_eq!(a.shared_token("k").await.unwrap().unwrap().sha256, [2; 32], "replaced");
    // The replaced token's digest deletes nothing; the current one's deletes it, once.
    assert!(!a.delete_shared_token_if("k", &[1; 32]).await.unwrap());
    assert!(b.shared_token("k").await.unwrap().is_some());
    assert!(a.delete_shared_token_if("k", &[2; 32]).await.unwrap());
    assert!(!b.delete_shared_token_if("k", &[2; 32]).await.unwrap());
    assert_eq!(b.shared_token("k").await.unwrap(), None);
    // An expired token is purged by the next write of any key.
    a.put_shared_token(&token("old", 3, 10), t0()).await.unwrap();
    b.put_shared_token(&token("new", 4, 3600), at(11)).await.unwrap();
    assert_eq!(a.shared_token("old").await.unwrap(), None);
    assert!(a.shared_token("new").await.unwrap().is_some());
}
