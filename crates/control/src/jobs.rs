//! Background work: revalidation, and moving Encryption at Rest private endpoints forward.
//!
//! Every `poll_interval_ms`, each replica claims the configurations whose revalidation is due
//! (`Store::claim_due_revalidations` moves their next check one interval ahead atomically, so
//! each due project is handed to exactly one replica per interval, whichever asks first) and
//! revalidates a few at a time. Results and their events are recorded by
//! [`crate::ear::revalidate`]. A replica that dies mid-check loses nothing but that check: the
//! project comes due again one interval later.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::state::AppState;

/// How many projects one replica checks at once.
const CONCURRENCY: usize = 8;
/// How many due projects one claim takes.
const BATCH: u32 = 32;

pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let poll = Duration::from_millis(state.config.validation.poll_interval_ms.max(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // Private endpoints move on with the same poll (each change applied by one replica).
        crate::api::private_endpoints::advance(&state).await;
        loop {
            let now = state.now();
            let next = now + state.config.revalidate_interval();
            let claimed = match state.store.claim_due_revalidations(now, next, BATCH).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim due revalidations; retrying at the next poll");
                    break;
                }
            };
            let n = claimed.len();
            futures::stream::iter(claimed)
                .for_each_concurrent(CONCURRENCY, |stored| {
                    let state = state.clone();
                    async move {
                        let group = stored.group_id.clone();
                        match crate::ear::revalidate(&state, stored, "background").await {
                            Ok(s) => tracing::debug!(group = %group, state = s.status.state.as_str(), "revalidated"),
                            Err(e) => tracing::warn!(group = %group, error = %e, "revalidation could not be recorded"),
                        }
                    }
                })
                .await;
            if n < BATCH as usize || *shutdown.borrow() {
                break;
            }
        }
    }
}
