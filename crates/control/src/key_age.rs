//! Atlas's `AZURE_ENCRYPTION_KEY_NEEDS_ROTATION` alert and its clearing event
//! `AZURE_ENCRYPTION_KEY_ROTATED`, from the data nodes' reports.
//!
//! The age that counts is that of the oldest key version a cluster's serving nodes report using:
//! Key Vault's `attributes.created` for that version, read once per version per replica with
//! the project's credential (a version's creation time never changes). Atlas counts "the elapsed
//! time since the last rotation" (reference/data-nodes.md); a version's creation time is that
//! rotation, and it cannot be reset by re-saving the same key identifier.
//!
//! Invariants:
//! - The project's newest event of the two types is the alert's state: a restart, or another
//!   replica, raises neither again. Two replicas deciding the same change at the same instant
//!   can each record it once; nothing else duplicates it.
//! - A report costs a map lookup unless the decision changes. Nothing here can fail a report.
//! - Under private networking the control plane cannot reach the vault, so the creation time is
//!   unknown and no alert is raised; this is logged once per version.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde_json::json;

use atrest_store::{GroupId, Page};

use crate::ear;
use crate::state::AppState;
use crate::validate::Credential;

pub const KEY_NEEDS_ROTATION: &str = "AZURE_ENCRYPTION_KEY_NEEDS_ROTATION";
pub const KEY_ROTATED: &str = "AZURE_ENCRYPTION_KEY_ROTATED";

/// What one replica remembers for the alert.
#[derive(Default)]
pub struct KeyAges {
    /// Versioned key identifier → `attributes.created` (Unix seconds); `None` once a read failed,
    /// so an unreachable vault is asked again only after [`RETRY_SECS`].
    created: Mutex<HashMap<String, Known>>,
    /// Per project, the decision last recorded or seen (true = the alert is raised).
    raised: Mutex<HashMap<GroupId, bool>>,
    /// Serializes the read-then-insert of the events on this replica.
    insert: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy)]
enum Known {
    Created(i64),
    /// The read failed at this Unix time.
    Failed(i64),
}

/// How long a failed read of a version's creation time is remembered before it is tried again.
const RETRY_SECS: i64 = 300;

impl KeyAges {
    /// The decision last recorded for `group` on this replica, if any.
    pub fn raised(&self, group: &GroupId) -> Option<bool> {
        self.raised.lock().get(group).copied()
    }
}

async fn created(state: &AppState, group: &GroupId, versioned: &str) -> Option<i64> {
    let now = state.now().unix_timestamp();
    match state.key_ages.created.lock().get(versioned) {
        Some(Known::Created(c)) => return Some(*c),
        Some(Known::Failed(at)) if now - at < RETRY_SECS => return None,
        _ => {}
    }
    let read = async {
        let stored = state.store.get_ear_config(group).await.ok()??;
        let target = ear::target(state, group, &stored.azure, None).await.ok()?;
        let client = match &target.credential {
            Credential::Secretless { .. } => state.platform.secretless().ok()?.clone(),
            Credential::Static { client_id, secret } => state.platform.static_client(*client_id, secret.clone()),
        };
        let kid: atrest_domain::KeyIdentifier = versioned.parse().ok()?;
        match client.key_vault(target.tenant_id).get_key(&kid).await {
            Ok(props) => props.created,
            Err(e) => {
                tracing::info!(
                    group = %group, key = versioned, error = %e,
                    "cannot read the key version's creation time (under private networking the control plane cannot reach the vault): no key rotation alert for it"
                );
                None
            }
        }
    };
    let got = read.await;
    state.key_ages.created.lock().insert(versioned.to_string(), got.map(Known::Created).unwrap_or(Known::Failed(now)));
    got
}

/// Decides the alert for `group` from the versioned key identifiers (`kid/version`) that the
/// cluster's serving nodes use, and records `AZURE_ENCRYPTION_KEY_NEEDS_ROTATION` or
/// `AZURE_ENCRYPTION_KEY_ROTATED` when the decision changes.
pub async fn observe(state: AppState, group: GroupId, cluster: String, versions: Vec<String>) {
    let mut oldest: Option<(i64, &str)> = None;
    for v in &versions {
        let Some(created) = created(&state, &group, v).await else { return };
        if oldest.is_none_or(|(c, _)| created < c) {
            oldest = Some((created, v));
        }
    }
    let Some((created, version)) = oldest else { return };
    let age_days = (state.now().unix_timestamp() - created).max(0) / 86_400;
    let threshold = state.config.validation.key_rotation_alert_days;
    let needs = age_days as u64 > threshold;
    if state.key_ages.raised(&group) == Some(needs) {
        return;
    }
    let _one = state.key_ages.insert.lock().await;
    let page = Page { page_num: 1, items_per_page: Page::MAX_ITEMS_PER_PAGE };
    let events = match state.store.list_events(&group, page).await {
        Ok(e) => e.events,
        Err(e) => {
            tracing::warn!(group = %group, error = %e, "could not read the project's events for the key rotation alert; the next report tries again");
            return;
        }
    };
    let last = events.iter().find(|e| e.event_type_name == KEY_NEEDS_ROTATION || e.event_type_name == KEY_ROTATED);
    let was_raised = last.is_some_and(|e| e.event_type_name == KEY_NEEDS_ROTATION);
    // A project that never raised the alert has nothing to clear.
    if was_raised != needs {
        let (type_name, detail) = if needs {
            (
                KEY_NEEDS_ROTATION,
                format!(
                    "the key version in use was created {age_days} days ago, more than {threshold}: make a new version (az keyvault key rotate --vault-name <vault> --name <key>); the nodes re-wrap to it at the next revalidation, and no data is rewritten"
                ),
            )
        } else {
            (KEY_ROTATED, format!("the key version in use was created {age_days} days ago (at most {threshold})"))
        };
        let payload = json!({
            "clusterName": cluster,
            "keyVersion": version,
            "ageDays": age_days,
            "thresholdDays": threshold,
            "detail": detail,
        });
        if let Err(e) = state.store.insert_event(&ear::event(&group, type_name, payload, state.now())).await {
            tracing::warn!(group = %group, error = %e, "could not record the key rotation alert; the next report tries again");
            return;
        }
    }
    state.key_ages.raised.lock().insert(group, needs);
}
