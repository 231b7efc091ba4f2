//! Encryption at Rest private endpoints: the private network paths a project asks for, one per
//! region, from the data nodes to its Azure Key Vault, and where each stands.
//!
//! # States
//! A row is created `INITIATING`. The control plane's background job moves it to
//! `PENDING_ACCEPTANCE` (the customer must approve the connection on the vault); the data nodes
//! report `ACTIVE`. A deletion request moves it to `DELETING` (refused while `INITIATING`, as in
//! Atlas), and the background job then removes the row. Which transitions exist is the control
//! plane's business; the store only guarantees that each is applied once.
//!
//! # Concurrency
//! Every status change is one conditional statement, `UPDATE ... WHERE status = <the state it
//! leaves>` (or `DELETE ... WHERE status = 'DELETING'`), so two replicas advancing the same
//! endpoint at the same moment cannot both apply a transition: one statement changes the row and
//! the other finds nothing to change. "One endpoint per region per project" is a unique index, so
//! two concurrent creations for one region cannot both succeed either.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::codec::{Cols, to_millis};
use crate::error::{Meaning, Result, StoreError, corrupt};
use crate::ids::{GroupId, InvalidId};
use crate::model::CloudProvider;
use crate::{Store, with_backend};

/// The id of an Encryption at Rest private endpoint: 24 lowercase hex characters, like every
/// Atlas id (the API's `endpointId`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EarPrivateEndpointId(String);

impl EarPrivateEndpointId {
    /// Parses 24 lowercase hex characters (uppercase is rejected, as for every other id).
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.len() == 24 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidId {
                value: s.to_owned(),
                kind: "private endpoint id",
                expected: "24 lowercase hexadecimal characters, like 5f1d7a2b9c3e4d5f6a7b8c9d",
            })
        }
    }

    /// A fresh random id (96 random bits).
    pub fn new_random() -> Self {
        Self(hex::encode(rand::random::<[u8; 12]>()))
    }

    /// The 24 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EarPrivateEndpointId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for EarPrivateEndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EarPrivateEndpointId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Where a private endpoint stands (Atlas spelling in [`EarPrivateEndpointStatus::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EarPrivateEndpointStatus {
    /// Being created.
    Initiating,
    /// Created; the customer must approve the connection on the vault.
    PendingAcceptance,
    /// Approved and usable.
    Active,
    Failed,
    /// Rejected or removed on the Azure side and being recreated.
    PendingRecreation,
    /// Deletion requested; the row disappears once it is done.
    Deleting,
}

impl EarPrivateEndpointStatus {
    pub const ALL: [EarPrivateEndpointStatus; 6] = [
        EarPrivateEndpointStatus::Initiating,
        EarPrivateEndpointStatus::PendingAcceptance,
        EarPrivateEndpointStatus::Active,
        EarPrivateEndpointStatus::Failed,
        EarPrivateEndpointStatus::PendingRecreation,
        EarPrivateEndpointStatus::Deleting,
    ];

    /// The Atlas spelling, e.g. `PENDING_ACCEPTANCE` (also the stored one).
    pub fn as_str(self) -> &'static str {
        match self {
            EarPrivateEndpointStatus::Initiating => "INITIATING",
            EarPrivateEndpointStatus::PendingAcceptance => "PENDING_ACCEPTANCE",
            EarPrivateEndpointStatus::Active => "ACTIVE",
            EarPrivateEndpointStatus::Failed => "FAILED",
            EarPrivateEndpointStatus::PendingRecreation => "PENDING_RECREATION",
            EarPrivateEndpointStatus::Deleting => "DELETING",
        }
    }

    /// Parses the Atlas spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for EarPrivateEndpointStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private endpoint for Encryption at Rest, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarPrivateEndpoint {
    pub id: EarPrivateEndpointId,
    pub group_id: GroupId,
    pub provider: CloudProvider,
    /// The Atlas region name (e.g. `US_EAST_2`), validated by the control plane. Unique per
    /// project and provider.
    pub region_name: String,
    pub status: EarPrivateEndpointStatus,
    /// Why the endpoint failed or is stuck, for the customer. Never a secret.
    pub error_message: Option<String>,
    /// The name of the private endpoint connection the customer approves on the vault.
    pub private_endpoint_connection_name: Option<String>,
    /// Where the data nodes reach the vault through this endpoint (`host:port`), once the
    /// platform operator recorded it ([`Store::set_ear_private_endpoint_address`]).
    pub private_address: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A status change for [`Store::transition_ear_private_endpoint`]: applied only if the endpoint
/// is in `from` when the statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarPrivateEndpointTransition {
    pub from: EarPrivateEndpointStatus,
    pub to: EarPrivateEndpointStatus,
    /// The new `error_message` (`None` clears it).
    pub error_message: Option<String>,
    /// A new connection name; `None` keeps the current one.
    pub private_endpoint_connection_name: Option<String>,
}

/// The outcome of [`Store::request_ear_private_endpoint_deletion`], with the endpoint as it is
/// after the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarPrivateEndpointDeletion {
    /// The endpoint is now `DELETING`.
    Requested(EarPrivateEndpoint),
    /// It already was `DELETING`; nothing changed.
    AlreadyDeleting(EarPrivateEndpoint),
    /// It is still `INITIATING`, when Atlas refuses deletion; nothing changed.
    BlockedWhileInitiating(EarPrivateEndpoint),
}

/// The columns every statement returns, in `RETURNING` and `SELECT` alike.
macro_rules! endpoint_columns {
    () => {
        "id, group_id, cloud_provider, region_name, status, error_message, private_endpoint_connection_name, \
         created_at, updated_at, private_address"
    };
}

const NOT_FOUND: &str = "encryption at rest private endpoint in this group";

// $1 group, $2 id, $3 from, $4 to, $5 error message, $6 connection name (NULL keeps it), $7 now.
const TRANSITION: &str = concat!(
    "UPDATE ear_private_endpoints SET status = $4, error_message = $5, \
     private_endpoint_connection_name = COALESCE($6, private_endpoint_connection_name), updated_at = $7 \
     WHERE group_id = $1 AND id = $2 AND status = $3 RETURNING ",
    endpoint_columns!()
);

// $1 group, $2 id, $3 now, $4 DELETING, $5 INITIATING.
const REQUEST_DELETION: &str = concat!(
    "UPDATE ear_private_endpoints SET status = $4, updated_at = $3 \
     WHERE group_id = $1 AND id = $2 AND status <> $4 AND status <> $5 RETURNING ",
    endpoint_columns!()
);

fn endpoint_from<R: Cols>(row: &R) -> Result<EarPrivateEndpoint> {
    let provider = match row.text("cloud_provider")?.as_str() {
        "AZURE" => CloudProvider::Azure,
        other => return Err(corrupt(format_args!("unknown cloud provider {other}"))),
    };
    let status = row.text("status")?;
    Ok(EarPrivateEndpoint {
        id: EarPrivateEndpointId::parse(&row.text("id")?).map_err(corrupt)?,
        group_id: GroupId::parse(&row.text("group_id")?).map_err(corrupt)?,
        provider,
        region_name: row.text("region_name")?,
        status: EarPrivateEndpointStatus::parse(&status)
            .ok_or_else(|| corrupt(format_args!("private endpoint status {status}")))?,
        error_message: row.opt_text("error_message")?,
        private_endpoint_connection_name: row.opt_text("private_endpoint_connection_name")?,
        private_address: row.opt_text("private_address")?,
        created_at: row.instant("created_at")?,
        updated_at: row.instant("updated_at")?,
    })
}

impl Store {
    /// Records a new private endpoint. `Conflict` if the project already has one for the same
    /// provider and region (whatever its status, `DELETING` included); `NotFound` if the project
    /// does not exist.
    pub async fn create_ear_private_endpoint(&self, endpoint: &EarPrivateEndpoint) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO ear_private_endpoints (id, group_id, cloud_provider, region_name, status, error_message, \
                 private_endpoint_connection_name, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(endpoint.id.as_str())
            .bind(endpoint.group_id.as_str())
            .bind(endpoint.provider.as_str())
            .bind(&endpoint.region_name)
            .bind(endpoint.status.as_str())
            .bind(endpoint.error_message.as_deref())
            .bind(endpoint.private_endpoint_connection_name.as_deref())
            .bind(to_millis(endpoint.created_at))
            .bind(to_millis(endpoint.updated_at))
            .execute(pool)
            .await
            .map_err(|e| Meaning::conflict("private endpoint in this region").and_missing("group").classify(e))?;
        });
        Ok(())
    }

    /// The private endpoint `id` of `group`. `NotFound` if absent (or removed, or in another
    /// project).
    pub async fn get_ear_private_endpoint(
        &self,
        group: &GroupId,
        id: &EarPrivateEndpointId,
    ) -> Result<EarPrivateEndpoint> {
        with_backend!(self, |pool| {
            let row = sqlx::query(concat!(
                "SELECT ",
                endpoint_columns!(),
                " FROM ear_private_endpoints WHERE group_id = $1 AND id = $2"
            ))
            .bind(group.as_str())
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(endpoint_from).transpose()?.ok_or(StoreError::NotFound { what: NOT_FOUND })
        })
    }

    /// Every private endpoint of a project, whatever its status, oldest first. At most one per
    /// region, so a short list. This is also what refuses turning `requirePrivateNetworking` off
    /// while endpoints exist.
    pub async fn list_ear_private_endpoints(&self, group: &GroupId) -> Result<Vec<EarPrivateEndpoint>> {
        with_backend!(self, |pool| {
            sqlx::query(concat!(
                "SELECT ",
                endpoint_columns!(),
                " FROM ear_private_endpoints WHERE group_id = $1 ORDER BY created_at, id"
            ))
            .bind(group.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(endpoint_from)
            .collect()
        })
    }

    /// Up to `limit` private endpoints in `status`, across every project, least recently changed
    /// first: the background job's work list. Reading is not claiming: apply changes with
    /// [`Store::transition_ear_private_endpoint`] or [`Store::remove_deleting_ear_private_endpoint`],
    /// which act only if the endpoint is still in the state read here.
    pub async fn list_ear_private_endpoints_in_status(
        &self,
        status: EarPrivateEndpointStatus,
        limit: u32,
    ) -> Result<Vec<EarPrivateEndpoint>> {
        with_backend!(self, |pool| {
            sqlx::query(concat!(
                "SELECT ",
                endpoint_columns!(),
                " FROM ear_private_endpoints WHERE status = $1 ORDER BY updated_at, id LIMIT $2"
            ))
            .bind(status.as_str())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(endpoint_from)
            .collect()
        })
    }

    /// Records where the data nodes reach the vault through endpoint `id` of `group`
    /// (`host:port`), or clears it (`None`). `NotFound` if there is no such endpoint.
    pub async fn set_ear_private_endpoint_address(
        &self,
        group: &GroupId,
        id: &EarPrivateEndpointId,
        address: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<EarPrivateEndpoint> {
        const SET_ADDRESS: &str = concat!(
            "UPDATE ear_private_endpoints SET private_address = $3, updated_at = $4 WHERE group_id = $1 AND id = $2 \
             RETURNING ",
            endpoint_columns!()
        );
        with_backend!(self, |pool| {
            let row = sqlx::query(SET_ADDRESS)
                .bind(group.as_str())
                .bind(id.as_str())
                .bind(address)
                .bind(to_millis(now))
                .fetch_optional(pool)
                .await?;
            match row {
                Some(r) => endpoint_from(&r),
                None => Err(StoreError::NotFound { what: NOT_FOUND }),
            }
        })
    }

    /// Applies `change` to endpoint `id` of `group` if it is in `change.from`, in one statement.
    /// Returns the endpoint as changed, or `None` if it is not in `change.from` (another replica
    /// applied this or another transition first) or does not exist.
    pub async fn transition_ear_private_endpoint(
        &self,
        group: &GroupId,
        id: &EarPrivateEndpointId,
        change: &EarPrivateEndpointTransition,
        now: OffsetDateTime,
    ) -> Result<Option<EarPrivateEndpoint>> {
        with_backend!(self, |pool| {
            let row = sqlx::query(TRANSITION)
                .bind(group.as_str())
                .bind(id.as_str())
                .bind(change.from.as_str())
                .bind(change.to.as_str())
                .bind(change.error_message.as_deref())
                .bind(change.private_endpoint_connection_name.as_deref())
                .bind(to_millis(now))
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(endpoint_from).transpose()
        })
    }

    /// Asks for endpoint `id` of `group` to be deleted: moves it to `DELETING` unless it is
    /// `INITIATING` (refused) or already `DELETING` (nothing to do). `NotFound` if absent.
    pub async fn request_ear_private_endpoint_deletion(
        &self,
        group: &GroupId,
        id: &EarPrivateEndpointId,
        now: OffsetDateTime,
    ) -> Result<EarPrivateEndpointDeletion> {
        // The conditional UPDATE decides; when it changes nothing, a read says why. Statuses only
        // move forward, so a row that changed between the two statements is retried, and that
        // happens at most a few times.
        for _ in 0..EarPrivateEndpointStatus::ALL.len() {
            let updated = with_backend!(self, |pool| {
                sqlx::query(REQUEST_DELETION)
                    .bind(group.as_str())
                    .bind(id.as_str())
                    .bind(to_millis(now))
                    .bind(EarPrivateEndpointStatus::Deleting.as_str())
                    .bind(EarPrivateEndpointStatus::Initiating.as_str())
                    .fetch_optional(pool)
                    .await?
                    .as_ref()
                    .map(endpoint_from)
                    .transpose()?
            });
            if let Some(endpoint) = updated {
                return Ok(EarPrivateEndpointDeletion::Requested(endpoint));
            }
            let current = self.get_ear_private_endpoint(group, id).await?;
            match current.status {
                EarPrivateEndpointStatus::Initiating => {
                    return Ok(EarPrivateEndpointDeletion::BlockedWhileInitiating(current));
                }
                EarPrivateEndpointStatus::Deleting => return Ok(EarPrivateEndpointDeletion::AlreadyDeleting(current)),
                _ => continue,
            }
        }
        Err(StoreError::Backend("a private endpoint kept changing status while its deletion was requested".into()))
    }

    /// Removes endpoint `id` of `group` if it is `DELETING` (the last step of a deletion).
    /// Returns whether this call removed it.
    pub async fn remove_deleting_ear_private_endpoint(
        &self,
        group: &GroupId,
        id: &EarPrivateEndpointId,
    ) -> Result<bool> {
        let removed = with_backend!(self, |pool| {
            sqlx::query("DELETE FROM ear_private_endpoints WHERE group_id = $1 AND id = $2 AND status = $3")
                .bind(group.as_str())
                .bind(id.as_str())
                .bind(EarPrivateEndpointStatus::Deleting.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_are_24_lowercase_hex() {
        let id = EarPrivateEndpointId::new_random();
        assert_eq!(EarPrivateEndpointId::parse(id.as_str()).unwrap(), id);
        for bad in ["", "5f1d7a2b9c3e4d5f6a7b8c9", "5F1D7A2B9C3E4D5F6A7B8C9D", "zf1d7a2b9c3e4d5f6a7b8c9d"] {
            let err = EarPrivateEndpointId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "private endpoint id");
        }
    }

    #[test]
    fn statuses_use_the_atlas_spelling() {
        for s in EarPrivateEndpointStatus::ALL {
            assert_eq!(EarPrivateEndpointStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(EarPrivateEndpointStatus::PendingAcceptance.as_str(), "PENDING_ACCEPTANCE");
        assert_eq!(EarPrivateEndpointStatus::parse("pending_acceptance"), None);
    }
}
