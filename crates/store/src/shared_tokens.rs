//! The control plane replicas' shared token tier (see `atrest_azure::token_shared`): one sealed
//! access token per cache key. The store keeps bytes only; the control plane seals and opens them.

use time::OffsetDateTime;

use crate::codec::{Cols, to_millis};
use crate::error::Result;
use crate::{Store, with_backend};

/// A token as stored: sealed, with its digest and lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedToken {
    /// The cache key's digest (the row's id).
    pub id: String,
    /// The token sealed with the KEK, bound to `id`.
    pub sealed: Vec<u8>,
    /// SHA-256 of the token, to delete a refused one without opening it.
    pub sha256: [u8; 32],
    pub obtained_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl Store {
    /// The token stored under `id`, if any (it may have expired).
    pub async fn shared_token(&self, id: &str) -> Result<Option<SharedToken>> {
        with_backend!(self, |pool| {
            let row =
                sqlx::query("SELECT id, sealed, sha256, obtained_at, expires_at FROM shared_tokens WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(SharedToken {
                    id: row.text("id")?,
                    sealed: row.bytes("sealed")?,
                    sha256: row.digest("sha256")?,
                    obtained_at: row.instant("obtained_at")?,
                    expires_at: row.instant("expires_at")?,
                })),
            }
        })
    }

    /// Stores `token`, replacing the one under its id, and deletes every token that expired
    /// before `now` (the table holds one row per tenant in use, so this stays small).
    pub async fn put_shared_token(&self, token: &SharedToken, now: OffsetDateTime) -> Result<()> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO shared_tokens (id, sealed, sha256, obtained_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed, sha256 = excluded.sha256, \
                 obtained_at = excluded.obtained_at, expires_at = excluded.expires_at",
            )
            .bind(&token.id)
            .bind(&token.sealed)
            .bind(token.sha256.as_slice())
            .bind(to_millis(token.obtained_at))
            .bind(to_millis(token.expires_at))
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM shared_tokens WHERE expires_at < $1")
                .bind(to_millis(now))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deletes the token under `id` if its digest is `sha256`. Returns whether it did.
    pub async fn delete_shared_token_if(&self, id: &str, sha256: &[u8; 32]) -> Result<bool> {
        let n = with_backend!(self, |pool| {
            sqlx::query("DELETE FROM shared_tokens WHERE id = $1 AND sha256 = $2")
                .bind(id)
                .bind(sha256.as_slice())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }
}
