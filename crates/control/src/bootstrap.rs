//! First-start bootstrap: when the store holds no organization, create one with an
//! Organization Owner API key and an Organization Owner service account, write them to
//! `DATA_DIR/bootstrap.json` (mode 0600) and hand them back once for printing.
//!
//! Several replicas may start together on one PostgreSQL: the check-and-create runs under the
//! store lease [`LEASE`], so exactly one of them bootstraps and the others see the organization.
//!
//! Crash safety (issue 10 §4). Before touching the store the bootstrapping process writes
//! `bootstrap.pending` (the new organization's id) into its data directory; it removes it only
//! once bootstrap.json is in place. A start that finds the marker finishes the interrupted
//! bootstrap: it renames a complete `bootstrap.json.tmp` into place, or else gives the
//! organization (created if it is missing) a fresh owner API key and service account. A process
//! killed while holding the lease is waited for with a log line saying so; on the embedded
//! store, whose data directory is locked by this process, its lease is taken over at once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atrest_store::{OrgId, Organization, Roles};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::state::AppState;

/// The store lease taken while bootstrapping.
pub const LEASE: &str = "bootstrap";

/// The file name, inside the data directory.
pub const FILE_NAME: &str = "bootstrap.json";

/// The marker of a bootstrap in progress, inside the data directory.
pub const PENDING_FILE: &str = "bootstrap.pending";

/// What the first start created. The secrets exist only here and in the 0600 file; `Debug`
/// never shows them.
#[derive(Clone)]
pub struct BootstrapInfo {
    /// The new organization.
    pub org_id: OrgId,
    /// Where the credentials were written.
    pub file: PathBuf,
    /// The owner API key's public key.
    pub api_public_key: String,
    api_private_key: SecretString,
    /// The owner service account's client id.
    pub client_id: String,
    client_secret: SecretString,
}

impl std::fmt::Debug for BootstrapInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapInfo")
            .field("org_id", &self.org_id)
            .field("file", &self.file)
            .field("api_public_key", &self.api_public_key)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl BootstrapInfo {
    /// The contents of bootstrap.json, secrets included: write it only to a 0600 file or show
    /// it once to the operator.
    pub fn to_json(&self) -> Value {
        json!({
            "org_id": self.org_id.as_str(),
            "api_key": {
                "public_key": self.api_public_key,
                "private_key": self.api_private_key.expose_secret(),
                "roles": ["ORG_OWNER"],
            },
            "service_account": {
                "client_id": self.client_id,
                "client_secret": self.client_secret.expose_secret(),
                "roles": ["ORG_OWNER"],
            },
        })
    }
}

/// Bootstraps if the store has no organization yet, or finishes a bootstrap a crash interrupted.
/// Returns what it created, or `None` when an organization already exists (a later start, or
/// another replica got there first).
pub async fn ensure(state: &AppState) -> anyhow::Result<Option<BootstrapInfo>> {
    let holder = &state.replica_id;
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut last_said = None::<String>;
    loop {
        if state
            .store
            .try_acquire_lease(LEASE, holder, Duration::from_secs(30), state.now())
            .await
            .context("taking the bootstrap lease in the store")?
        {
            break;
        }
        let lease = state.store.get_lease(LEASE).await.ok().flatten();
        if let Some(l) = &lease
            && state.config.store_url().starts_with("sqlite://")
        {
            // The embedded store's data directory is locked by this process (server.rs), so the
            // holder is a process that died while bootstrapping: take its lease over.
            tracing::warn!(holder = %l.holder, "taking over the bootstrap lease of a control plane that stopped while bootstrapping");
            let _ = state.store.release_lease(LEASE, &l.holder).await;
            continue;
        }
        if let Some(l) = lease
            && last_said.as_deref() != Some(l.holder.as_str())
        {
            tracing::warn!(
                holder = %l.holder,
                expires_at = %l.expires_at,
                "waiting for the bootstrap lease: another replica is bootstrapping (or stopped while doing so; \
                 its lease then expires at expires_at)"
            );
            last_said = Some(l.holder);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "another replica has held the bootstrap lease for over a minute; check the other replicas' logs, \
                 or wait 30 s for the lease to expire and start again"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = create_if_empty(state).await;
    let _ = state.store.release_lease(LEASE, holder).await;
    result
}

/// Stops the process at a named step when `ATREST_FAILPOINT` names it: the crash tests kill
/// bootstrap between each pair of writes this way (an abort skips every destructor and flush,
/// as kill -9 does). Hand-written rather than the `fail` crate: one env lookup per step of a
/// once-per-data-dir operation needs no registry or feature flag.
pub fn failpoint(step: &str) {
    if std::env::var("ATREST_FAILPOINT").is_ok_and(|v| v == step) {
        eprintln!("ATREST_FAILPOINT: aborting at {step}");
        std::process::abort();
    }
}

async fn create_if_empty(state: &AppState) -> anyhow::Result<Option<BootstrapInfo>> {
    let dir = &state.config.data_dir;
    let file = dir.join(FILE_NAME);
    let tmp = file.with_extension("json.tmp");
    let pending_path = dir.join(PENDING_FILE);
    let orgs = state.store.list_organizations().await.context("listing organizations")?;
    let org_id = match std::fs::read_to_string(&pending_path) {
        Ok(text) => {
            let id = OrgId::parse(text.trim()).map_err(|e| {
                anyhow::anyhow!(
                    "{} does not hold an organization id ({e}); delete it and start again",
                    pending_path.display()
                )
            })?;
            let names_it = |p: &std::path::Path| {
                std::fs::read(p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .is_some_and(|v| v["org_id"] == id.as_str())
            };
            // Interrupted after the rename: only the marker is left.
            if names_it(&file) {
                std::fs::remove_file(&pending_path).with_context(|| format!("removing {}", pending_path.display()))?;
                return Ok(None);
            }
            // Interrupted after the credentials file was complete: finish the rename.
            if names_it(&tmp) {
                std::fs::rename(&tmp, &file)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
                std::fs::remove_file(&pending_path).with_context(|| format!("removing {}", pending_path.display()))?;
                tracing::warn!(org = %id, file = %file.display(), "bootstrap: finished a bootstrap that was interrupted after writing its credentials");
                return Ok(None);
            }
            tracing::warn!(org = %id, "bootstrap: an earlier bootstrap was interrupted; creating the organization's owner credentials again");
            id
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !orgs.is_empty() {
                return Ok(None);
            }
            let id = OrgId::new_random();
            crate::files::write_private(&pending_path, id.as_str().as_bytes())
                .with_context(|| format!("writing {}", pending_path.display()))?;
            id
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", pending_path.display())),
    };
    failpoint("bootstrap-before-org");
    if !orgs.iter().any(|o| o.id == org_id) {
        let org = Organization { id: org_id.clone(), name: "atrest".into(), created_at: state.now() };
        state.store.create_organization(&org).await.context("creating the bootstrap organization")?;
    }
    failpoint("bootstrap-after-org");
    let (key, private) =
        crate::auth::provision::create_api_key(state, &org_id, "bootstrap owner key", Roles::org_owner()).await?;
    failpoint("bootstrap-after-api-key");
    let (sa, secret) =
        crate::auth::provision::create_service_account(state, &org_id, "bootstrap", Roles::org_owner()).await?;
    failpoint("bootstrap-after-service-account");
    let info = BootstrapInfo {
        org_id: org_id.clone(),
        file,
        api_public_key: key.public_key,
        api_private_key: private,
        client_id: sa.client_id.as_str().to_owned(),
        client_secret: secret,
    };
    let body = zeroize::Zeroizing::new(serde_json::to_vec_pretty(&info.to_json())?);
    // Written beside and renamed into place, so a crash never leaves a half-written file.
    crate::files::write_private(&tmp, &body)
        .and_then(|()| {
            failpoint("bootstrap-after-tmp");
            std::fs::rename(&tmp, &info.file)
        })
        .with_context(|| {
            format!(
                "organization {org} was created, but its credentials could not be written to {}; they are lost. \
                 Create new ones with `atrest admin create-api-key --org {org} --role ORG_OWNER` and \
                 `atrest admin create-service-account --org {org} --name owner --role ORG_OWNER`",
                info.file.display(),
                org = org_id
            )
        })?;
    failpoint("bootstrap-after-rename");
    std::fs::remove_file(&pending_path).with_context(|| format!("removing {}", pending_path.display()))?;
    tracing::info!(org = %org_id, file = %info.file.display(), "bootstrap: created the first organization, an owner API key and a service account");
    Ok(Some(info))
}
