//! The key-encryption-key canary: one row that lets every control plane check, at start, that it
//! holds the same KEK as the first one that used this store.
//!
//! The store only keeps the bytes (the control plane seals and opens them): a sealed fixed value
//! and the KEK's fingerprint, which is not secret. The first writer wins with one
//! `INSERT ... ON CONFLICT DO NOTHING`, so replicas starting together on an empty store agree.

use time::OffsetDateTime;

use crate::codec::{Cols, to_millis};
use crate::error::{Result, corrupt};
use crate::{Store, with_backend};

/// The canary as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekCanary {
    /// A fixed value sealed with the KEK of the first control plane (ciphertext).
    pub sealed: Vec<u8>,
    /// That KEK's fingerprint, shown in errors so an operator can tell KEKs apart.
    pub fingerprint: String,
    pub created_at: OffsetDateTime,
}

impl Store {
    /// Stores `sealed` and `fingerprint` as the canary if there is none yet, and returns the
    /// canary that is stored afterwards (this one, or the one written before).
    pub async fn kek_canary_or_insert(
        &self,
        sealed: &[u8],
        fingerprint: &str,
        now: OffsetDateTime,
    ) -> Result<KekCanary> {
        with_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO kek_canary (id, sealed, fingerprint, created_at) VALUES (1, $1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(sealed)
            .bind(fingerprint)
            .bind(to_millis(now))
            .execute(pool)
            .await?;
            let row = sqlx::query("SELECT sealed, fingerprint, created_at FROM kek_canary WHERE id = 1")
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| corrupt("the KEK canary row is missing right after it was written"))?;
            Ok(KekCanary {
                sealed: row.bytes("sealed")?,
                fingerprint: row.text("fingerprint")?,
                created_at: row.instant("created_at")?,
            })
        })
    }
}
