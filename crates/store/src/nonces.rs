//! HTTP Digest nonces shared by every replica.
//!
//! A nonce is recorded when a replica issues it in a challenge. Each authenticated request then
//! presents `(nonce, nc)`; the count is accepted only if it is higher than every count accepted
//! before for that nonce, in one atomic `UPDATE ... WHERE highest_nc < $nc`, so a replayed request
//! is refused even when the replay reaches a different replica at the same instant.

use time::OffsetDateTime;

use crate::codec::{Cols, to_millis};
use crate::error::{Meaning, Result};
use crate::model::NonceCheck;
use crate::{Store, with_backend};

impl Store {
    /// Records a nonce the caller is about to send in a challenge, valid until `expires_at`.
    /// `Conflict` if the same nonce was already issued (nonces must be random).
    pub async fn issue_digest_nonce(&self, nonce: &str, expires_at: OffsetDateTime) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query("INSERT INTO digest_nonces (nonce, highest_nc, expires_at) VALUES ($1, 0, $2)")
                .bind(nonce)
                .bind(to_millis(expires_at))
                .execute(pool)
                .await
                .map_err(|e| Meaning::conflict("digest nonce").classify(e))?;
        });
        Ok(())
    }

    /// Accepts nonce count `nc` for `nonce` at `now` only if it is higher than any count accepted
    /// before and the nonce has not expired. Exactly one of several concurrent calls with the same
    /// `(nonce, nc)` gets [`NonceCheck::Accepted`], whatever replica they arrive at.
    pub async fn check_and_bump_nonce_count(&self, nonce: &str, nc: u32, now: OffsetDateTime) -> Result<NonceCheck> {
        let now = to_millis(now);
        with_backend!(self, |pool| {
            let bumped = sqlx::query(
                "UPDATE digest_nonces SET highest_nc = $2 WHERE nonce = $1 AND highest_nc < $2 AND expires_at > $3",
            )
            .bind(nonce)
            .bind(i64::from(nc))
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected();
            if bumped == 1 {
                return Ok(NonceCheck::Accepted);
            }
            // Refused; find out why. The decision above was atomic, this read only names it.
            let row = sqlx::query("SELECT expires_at FROM digest_nonces WHERE nonce = $1")
                .bind(nonce)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                None => NonceCheck::Unknown,
                Some(row) if row.int("expires_at")? <= now => NonceCheck::Expired,
                Some(_) => NonceCheck::Replayed,
            })
        })
    }

    /// Deletes nonces that expired before `now`; returns how many.
    pub async fn purge_expired_nonces(&self, now: OffsetDateTime) -> Result<u64> {
        Ok(with_backend!(self, |pool| {
            sqlx::query("DELETE FROM digest_nonces WHERE expires_at <= $1")
                .bind(to_millis(now))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
