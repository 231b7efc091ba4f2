//! First-start bootstrap: when the store holds no organization, create one with an
//! Organization Owner API key and an Organization Owner service account, write them to
//! `DATA_DIR/bootstrap.json` (mode 0600) and hand them back once for printing.
//!
//! Several replicas may start together on one PostgreSQL: the check-and-create runs under the
//! store lease [`LEASE`], so exactly one of them bootstraps and the others see the organization.

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

/// Bootstraps if the store has no organization yet. Returns what it created, or `None` when an
/// organization already exists (a later start, or another replica got there first).
pub async fn ensure(state: &AppState) -> anyhow::Result<Option<BootstrapInfo>> {
    let holder = &state.replica_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if state
            .store
            .try_acquire_lease(LEASE, holder, Duration::from_secs(30), state.now())
            .await
            .context("taking the bootstrap lease in the store")?
        {
            break;
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

async fn create_if_empty(state: &AppState) -> anyhow::Result<Option<BootstrapInfo>> {
    let orgs = state.store.list_organizations().await.context("listing organizations")?;
    if !orgs.is_empty() {
        return Ok(None);
    }
    let org = Organization { id: OrgId::new_random(), name: "atrest".into(), created_at: state.now() };
    state.store.create_organization(&org).await.context("creating the bootstrap organization")?;
    let (key, private) =
        crate::auth::provision::create_api_key(state, &org.id, "bootstrap owner key", Roles::org_owner()).await?;
    let (sa, secret) =
        crate::auth::provision::create_service_account(state, &org.id, "bootstrap", Roles::org_owner()).await?;
    let info = BootstrapInfo {
        org_id: org.id.clone(),
        file: state.config.data_dir.join(FILE_NAME),
        api_public_key: key.public_key,
        api_private_key: private,
        client_id: sa.client_id.as_str().to_owned(),
        client_secret: secret,
    };
    let body = zeroize::Zeroizing::new(serde_json::to_vec_pretty(&info.to_json())?);
    // Written beside and renamed into place, so a crash never leaves a half-written file.
    let tmp = info.file.with_extension("json.tmp");
    crate::files::write_private(&tmp, &body).and_then(|()| std::fs::rename(&tmp, &info.file)).with_context(|| {
        format!(
            "organization {org} was created, but its credentials could not be written to {}; they are lost. \
                 Create new ones with `atrest admin create-api-key --org {org} --role ORG_OWNER` and \
                 `atrest admin create-service-account --org {org} --name owner --role ORG_OWNER`",
            info.file.display(),
            org = org.id
        )
    })?;
    tracing::info!(org = %org.id, file = %info.file.display(), "bootstrap: created the first organization, an owner API key and a service account");
    Ok(Some(info))
}
