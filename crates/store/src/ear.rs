//! A project's Encryption at Rest configuration (the `azureKeyVault` block), its validation
//! state, and the scheduling of revalidation across replicas.
//!
//! # Concurrency
//! Two counters guard the row:
//! - `config_version` (the etag) is bumped by every configuration write. [`Store::put_ear_config`]
//!   and [`Store::delete_ear_config`] take the version the caller read and fail with
//!   [`StoreError::StaleWrite`] if another write (or delete) came in between, changing nothing.
//! - `status_version` is bumped by every recorded validation result. [`Store::record_validation`]
//!   takes both versions, so a result computed for an older configuration, or racing another
//!   validation of the same configuration, is refused instead of overwriting a newer one. That is
//!   what makes "valid → invalid" transitions (and their events) happen exactly once.
//!
//! A revalidation does not bump `config_version`, so a user's PATCH is never refused merely
//! because a background check finished while it was validating.
//!
//! # The migration to secretless
//! A configuration holds either the secretless role or the static credentials, never both (the
//! [`AzureCredentials`] type and a schema CHECK agree). Writing a secretless configuration over
//! a static one is a single-row `UPDATE`, in one transaction with its events, so the static
//! credentials are gone exactly when the `roleId` is in place; if anything fails (stale version,
//! a role of another project, an event that cannot be written) the transaction rolls back and the
//! static credentials stay in force.
//!
//! # Revalidation across replicas
//! [`Store::claim_due_revalidations`] moves `next_validation_at` forward for the rows it returns,
//! in one statement (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so concurrent claimers skip each
//! other's rows instead of waiting), so each due project is handed to exactly one replica per
//! interval. [`Store::claim_revalidation_on_read`] rate-limits revalidation triggered by reads the
//! same way, across replicas.

use std::time::Duration;

use time::OffsetDateTime;

use crate::codec::{Cols, millis_after, to_millis};
use crate::error::{Meaning, Result, StoreError, corrupt};
use crate::events::insert_events;
use crate::ids::{GroupId, RoleId};
use crate::model::{
    AzureCredentials, AzureKeyVaultConfig, ConfigVersion, EarConfigWrite, Event, StatusVersion, StoredEarConfig,
    ValidationState, ValidationStatus,
};
use crate::{BeginWrite, Store, with_backend, with_dialect};

/// The columns every statement returns, in `RETURNING` and `SELECT` alike.
macro_rules! ear_columns {
    () => {
        "group_id, enabled, role_id, client_id, tenant_id, static_secret_ciphertext, subscription_id, \
         resource_group_name, key_vault_name, key_identifier, azure_environment, require_private_networking, \
         valid, validation_state, validation_detail, key_version_in_use, last_validated_at, config_version, \
         status_version, updated_at, next_validation_at, pending_role_id"
    };
}

const SELECT: &str = concat!("SELECT ", ear_columns!(), " FROM ear_azure_key_vault WHERE group_id = $1");

// $1 group, $2..$17 the configuration and its status, $18 now, $19 next validation, $20 the
// pending role of a migration under private networking.
const INSERT: &str = concat!(
    "INSERT INTO ear_azure_key_vault (group_id, enabled, role_id, client_id, tenant_id, static_secret_ciphertext, \
     subscription_id, resource_group_name, key_vault_name, key_identifier, azure_environment, \
     require_private_networking, valid, validation_state, validation_detail, key_version_in_use, last_validated_at, \
     updated_at, next_validation_at, validation_claimed_at, config_version, status_version, pending_role_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $18, 1, 1, $20) \
     ON CONFLICT (group_id) DO NOTHING RETURNING ",
    ear_columns!()
);

// Same parameters as INSERT, plus $21 the expected configuration version.
const UPDATE: &str = concat!(
    "UPDATE ear_azure_key_vault SET enabled = $2, role_id = $3, client_id = $4, tenant_id = $5, \
     static_secret_ciphertext = $6, subscription_id = $7, resource_group_name = $8, key_vault_name = $9, \
     key_identifier = $10, azure_environment = $11, require_private_networking = $12, valid = $13, \
     validation_state = $14, validation_detail = $15, key_version_in_use = $16, last_validated_at = $17, \
     updated_at = $18, next_validation_at = $19, validation_claimed_at = $18, \
     config_version = config_version + 1, status_version = status_version + 1, \
     pending_role_id = $20 WHERE group_id = $1 AND config_version = $21 RETURNING ",
    ear_columns!()
);

const RECORD_VALIDATION: &str = concat!(
    "UPDATE ear_azure_key_vault SET valid = $2, validation_state = $3, validation_detail = $4, \
     key_version_in_use = $5, last_validated_at = $6, status_version = status_version + 1 \
     WHERE group_id = $1 AND config_version = $7 AND status_version = $8 RETURNING ",
    ear_columns!()
);

// $1 now, $2 next validation, $3 limit. The outer `next_validation_at <= $1` re-checks each row,
// so a row another claimer moved forward meanwhile is not claimed twice.
const CLAIM_DUE_SQLITE: &str = concat!(
    "UPDATE ear_azure_key_vault SET next_validation_at = $2, validation_claimed_at = $1 \
     WHERE next_validation_at <= $1 AND group_id IN (SELECT group_id FROM ear_azure_key_vault \
     WHERE next_validation_at <= $1 ORDER BY next_validation_at, group_id LIMIT $3) RETURNING ",
    ear_columns!()
);
const CLAIM_DUE_POSTGRES: &str = concat!(
    "UPDATE ear_azure_key_vault SET next_validation_at = $2, validation_claimed_at = $1 \
     WHERE next_validation_at <= $1 AND group_id IN (SELECT group_id FROM ear_azure_key_vault \
     WHERE next_validation_at <= $1 ORDER BY next_validation_at, group_id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
    ear_columns!()
);

// $1 group, $2 now, $3 claims at or before this instant are old enough to be superseded.
const CLAIM_ON_READ: &str = concat!(
    "UPDATE ear_azure_key_vault SET validation_claimed_at = $2 \
     WHERE group_id = $1 AND (validation_claimed_at IS NULL OR validation_claimed_at <= $3) RETURNING ",
    ear_columns!()
);

/// A role that does not belong to the project (or was deleted meanwhile).
const ROLE_IN_GROUP: &str = "cloud provider access role in this group";

fn ear_from<R: Cols>(row: &R) -> Result<StoredEarConfig> {
    let role_id = row.opt_text("role_id")?;
    let statics = (row.opt_text("client_id")?, row.opt_text("tenant_id")?, row.opt_bytes("static_secret_ciphertext")?);
    let credentials = match (role_id, statics) {
        (Some(role), (None, None, None)) => {
            AzureCredentials::Secretless { role_id: RoleId::parse(&role).map_err(corrupt)? }
        }
        (None, (Some(client_id), Some(tenant_id), Some(secret_ciphertext))) => {
            AzureCredentials::Static { client_id, tenant_id, secret_ciphertext }
        }
        _ => return Err(corrupt("encryption at rest row has neither or both credential modes")),
    };
    let state = row.text("validation_state")?;
    Ok(StoredEarConfig {
        group_id: GroupId::parse(&row.text("group_id")?).map_err(corrupt)?,
        azure: AzureKeyVaultConfig {
            enabled: row.flag("enabled")?,
            credentials,
            subscription_id: row.opt_text("subscription_id")?,
            resource_group_name: row.opt_text("resource_group_name")?,
            key_vault_name: row.opt_text("key_vault_name")?,
            key_identifier: row.opt_text("key_identifier")?,
            azure_environment: row.opt_text("azure_environment")?,
            require_private_networking: row.flag("require_private_networking")?,
            pending_role_id: row
                .opt_text("pending_role_id")?
                .map(|r| RoleId::parse(&r).map_err(corrupt))
                .transpose()?,
        },
        status: ValidationStatus {
            valid: row.flag("valid")?,
            state: ValidationState::parse(&state).ok_or_else(|| corrupt(format_args!("validation state {state}")))?,
            detail: row.opt_text("validation_detail")?,
            key_version_in_use: row.opt_text("key_version_in_use")?,
            last_validated_at: row.opt_instant("last_validated_at")?,
        },
        config_version: ConfigVersion(row.int("config_version")?),
        status_version: StatusVersion(row.int("status_version")?),
        updated_at: row.instant("updated_at")?,
        next_validation_at: row.instant("next_validation_at")?,
    })
}

/// Binds `$1..$20` of [`INSERT`] / [`UPDATE`] onto query `$q`.
macro_rules! bind_write {
    ($q:expr, $group:expr, $w:expr) => {{
        let w: &EarConfigWrite = $w;
        let (role_id, client_id, tenant_id, secret) = match &w.azure.credentials {
            AzureCredentials::Secretless { role_id } => (Some(role_id.as_str()), None, None, None),
            AzureCredentials::Static { client_id, tenant_id, secret_ciphertext } => {
                (None, Some(client_id.as_str()), Some(tenant_id.as_str()), Some(secret_ciphertext.as_slice()))
            }
        };
        $q.bind($group.as_str())
            .bind(w.azure.enabled)
            .bind(role_id)
            .bind(client_id)
            .bind(tenant_id)
            .bind(secret)
            .bind(w.azure.subscription_id.as_deref())
            .bind(w.azure.resource_group_name.as_deref())
            .bind(w.azure.key_vault_name.as_deref())
            .bind(w.azure.key_identifier.as_deref())
            .bind(w.azure.azure_environment.as_deref())
            .bind(w.azure.require_private_networking)
            .bind(w.status.valid)
            .bind(w.status.state.as_str())
            .bind(w.status.detail.as_deref())
            .bind(w.status.key_version_in_use.as_deref())
            .bind(w.status.last_validated_at.map(to_millis))
            .bind(to_millis(w.now))
            .bind(to_millis(w.next_validation_at))
            .bind(w.azure.pending_role_id.as_ref().map(|r| r.as_str()))
    }};
}

impl Store {
    /// The project's Azure Key Vault configuration, or `None` if it has none (Atlas then shows
    /// `{enabled: false}`).
    pub async fn get_ear_config(&self, group: &GroupId) -> Result<Option<StoredEarConfig>> {
        with_backend!(self, |pool| {
            let row = sqlx::query(SELECT).bind(group.as_str()).fetch_optional(pool).await?;
            row.as_ref().map(ear_from).transpose()
        })
    }

    /// Writes a project's whole configuration and its validation result, with `events`, in one
    /// transaction, and returns what is now stored.
    ///
    /// - `expected = None` creates the configuration: `StaleWrite` if one exists (someone else
    ///   created it since the caller saw none).
    /// - `expected = Some(v)` replaces version `v`: `StaleWrite` if the stored version differs
    ///   or the configuration was deleted meanwhile.
    /// - `NotFound` if the project does not exist, or a secretless role is not one of this
    ///   project's Cloud Provider Access roles.
    ///
    /// This is also the migration step from static credentials to the secretless mode: writing
    /// [`AzureCredentials::Secretless`] over a static configuration removes the static
    /// credentials in the same transaction (see the module docs). On any error nothing changes.
    pub async fn put_ear_config(
        &self,
        group: &GroupId,
        expected: Option<ConfigVersion>,
        write: &EarConfigWrite,
        events: &[Event],
    ) -> Result<StoredEarConfig> {
        let outcome: Result<StoredEarConfig> = with_backend!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let row = match expected {
                    None => bind_write!(sqlx::query(INSERT), group, write).fetch_optional(&mut *tx).await,
                    Some(v) => bind_write!(sqlx::query(UPDATE), group, write).bind(v.0).fetch_optional(&mut *tx).await,
                }
                .map_err(|e| Meaning::missing(ROLE_IN_GROUP).classify(e))?;
                let stored = ear_from(&row.ok_or(StoreError::StaleWrite)?)?;
                insert_events!(events, &mut *tx);
                tx.commit().await?;
                Ok(stored)
            }
            .await
        });
        match outcome {
            // The same foreign-key error covers a missing project and a foreign role; name the
            // right one (the transaction has rolled back, so this read is outside it).
            Err(StoreError::NotFound { what: ROLE_IN_GROUP }) => {
                self.get_group(group).await?;
                Err(StoreError::NotFound { what: ROLE_IN_GROUP })
            }
            other => other,
        }
    }

    /// Removes a project's configuration (`{enabled: false}`), with `events`, in one transaction.
    /// `StaleWrite` if the stored version is not `expected` or there is no configuration.
    pub async fn delete_ear_config(&self, group: &GroupId, expected: ConfigVersion, events: &[Event]) -> Result<()> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let deleted = sqlx::query("DELETE FROM ear_azure_key_vault WHERE group_id = $1 AND config_version = $2")
                .bind(group.as_str())
                .bind(expected.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err(StoreError::StaleWrite);
            }
            insert_events!(events, &mut *tx);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records the result of validating configuration version `config` whose status the caller
    /// read at version `status`, with `events`, in one transaction. `StaleWrite` (nothing
    /// written) if the configuration changed, or another result was recorded since: the caller
    /// should drop its result and its events.
    pub async fn record_validation(
        &self,
        group: &GroupId,
        config: ConfigVersion,
        status: StatusVersion,
        result: &ValidationStatus,
        events: &[Event],
    ) -> Result<StoredEarConfig> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query(RECORD_VALIDATION)
                .bind(group.as_str())
                .bind(result.valid)
                .bind(result.state.as_str())
                .bind(result.detail.as_deref())
                .bind(result.key_version_in_use.as_deref())
                .bind(result.last_validated_at.map(to_millis))
                .bind(config.0)
                .bind(status.0)
                .fetch_optional(&mut *tx)
                .await?;
            let stored = ear_from(&row.ok_or(StoreError::StaleWrite)?)?;
            insert_events!(events, &mut *tx);
            tx.commit().await?;
            Ok(stored)
        })
    }

    /// Claims up to `limit` configurations whose background revalidation is due at `now`, moving
    /// their next revalidation to `next_at`, and returns them. Each due configuration is returned
    /// to exactly one caller, across every replica sharing the database; call again until it
    /// returns fewer than `limit` to drain the backlog.
    pub async fn claim_due_revalidations(
        &self,
        now: OffsetDateTime,
        next_at: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<StoredEarConfig>> {
        with_dialect!(self, sql = (CLAIM_DUE_SQLITE, CLAIM_DUE_POSTGRES), |pool| {
            sqlx::query(sql)
                .bind(to_millis(now))
                .bind(to_millis(next_at))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(ear_from)
                .collect()
        })
    }

    /// Claims a revalidation of `group` triggered by a read, at most once per `min_interval`
    /// across all replicas (a background claim counts too). Returns the configuration if this
    /// caller should revalidate now, `None` if someone did within `min_interval` or there is no
    /// configuration.
    pub async fn claim_revalidation_on_read(
        &self,
        group: &GroupId,
        now: OffsetDateTime,
        min_interval: Duration,
    ) -> Result<Option<StoredEarConfig>> {
        let superseded_before = to_millis(now).saturating_sub(crate::codec::duration_millis(min_interval));
        with_backend!(self, |pool| {
            let row = sqlx::query(CLAIM_ON_READ)
                .bind(group.as_str())
                .bind(to_millis(now))
                .bind(superseded_before)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(ear_from).transpose()
        })
    }

    /// Moves every next revalidation later than `latest` back to `latest` (the interval was
    /// shortened since they were scheduled). Returns how many were moved. Earlier ones stay.
    pub async fn cap_next_validations(&self, latest: OffsetDateTime) -> Result<u64> {
        let moved = with_backend!(self, |pool| {
            sqlx::query("UPDATE ear_azure_key_vault SET next_validation_at = $1 WHERE next_validation_at > $1")
                .bind(to_millis(latest))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(moved)
    }

    /// Postpones a project's next background revalidation to `now + delay` (e.g. after a PATCH
    /// validated it, or to back off). `NotFound` if it has no configuration.
    pub async fn schedule_revalidation(&self, group: &GroupId, now: OffsetDateTime, delay: Duration) -> Result<()> {
        let updated = with_backend!(self, |pool| {
            sqlx::query("UPDATE ear_azure_key_vault SET next_validation_at = $2 WHERE group_id = $1")
                .bind(group.as_str())
                .bind(millis_after(now, delay))
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::NotFound { what: "encryption at rest configuration" });
        }
        Ok(())
    }
}
