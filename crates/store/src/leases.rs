//! Named leases shared between replicas: at most one holder at a time, taken over once expired.
//!
//! Acquiring is one atomic upsert: insert the lease, or take it over if it has expired, or renew
//! it if the caller already holds it, and report whether the caller holds it afterwards. On
//! PostgreSQL, `INSERT ... ON CONFLICT DO UPDATE ... WHERE` locks the conflicting row and
//! re-evaluates the condition against its latest version, so two replicas racing for the same
//! lease cannot both win; on SQLite, writers are serialized.

use std::time::Duration;

use time::OffsetDateTime;

use crate::codec::{Cols, millis_after, to_millis};
use crate::error::Result;
use crate::model::Lease;
use crate::{Store, with_backend};

// $1 name, $2 holder, $3 now, $4 new expiry. A renewal keeps the original acquisition time.
const ACQUIRE: &str = "INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, \
     acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at ELSE excluded.acquired_at END \
     WHERE leases.expires_at <= $3 OR leases.holder = excluded.holder \
     RETURNING holder";

impl Store {
    /// Acquires lease `name` for `holder` until `now + ttl` if it is free, expired, or already
    /// held by `holder` (then it is renewed). Returns whether `holder` holds it now.
    ///
    /// `holder` should be unique per replica (e.g. a random id chosen at start). Choose `ttl`
    /// well above the clock skew between replicas and renew well before it runs out.
    pub async fn try_acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let acquired = with_backend!(self, |pool| {
            sqlx::query(ACQUIRE)
                .bind(name)
                .bind(holder)
                .bind(to_millis(now))
                .bind(millis_after(now, ttl))
                .fetch_optional(pool)
                .await?
                .is_some()
        });
        Ok(acquired)
    }

    /// Releases lease `name` if `holder` holds it (whether or not it expired). Returns whether it
    /// did; releasing someone else's lease does nothing.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<bool> {
        let released = with_backend!(self, |pool| {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(released > 0)
    }

    /// The lease as stored (it may have expired: compare `expires_at` with your `now`), or `None`.
    pub async fn get_lease(&self, name: &str) -> Result<Option<Lease>> {
        with_backend!(self, |pool| {
            let row = sqlx::query("SELECT name, holder, acquired_at, expires_at FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(Lease {
                    name: row.text("name")?,
                    holder: row.text("holder")?,
                    acquired_at: row.instant("acquired_at")?,
                    expires_at: row.instant("expires_at")?,
                })),
            }
        })
    }
}
