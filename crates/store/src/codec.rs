//! Reading columns and converting instants, identically for both backends.
//!
//! The operations are written once and expanded per backend (see `with_backend!` in `lib.rs`), so
//! the row type differs between expansions. [`Cols`] gives both row types the same small set of
//! typed getters, which lets each record decoder be written once as a generic function.

use std::time::Duration;

use sqlx::Row;
use time::OffsetDateTime;

use crate::error::{Result, StoreError, corrupt};

/// Typed column access shared by `SqliteRow` and `PgRow`.
pub(crate) trait Cols {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;

    fn instant(&self, col: &str) -> Result<OffsetDateTime> {
        from_millis(self.int(col)?)
    }

    fn opt_instant(&self, col: &str) -> Result<Option<OffsetDateTime>> {
        self.opt_int(col)?.map(from_millis).transpose()
    }

    fn digest(&self, col: &str) -> Result<[u8; 32]> {
        let bytes = self.bytes(col)?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| corrupt(format_args!("{col} is not 32 bytes")))
    }
}

fn column_error(col: &str, err: sqlx::Error) -> StoreError {
    StoreError::Backend(format!("cannot read column {col}: {err}"))
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, col: &str) -> Result<String> {
                self.try_get::<String, _>(col).map_err(|e| column_error(col, e))
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>> {
                self.try_get::<Option<String>, _>(col).map_err(|e| column_error(col, e))
            }
            fn int(&self, col: &str) -> Result<i64> {
                self.try_get::<i64, _>(col).map_err(|e| column_error(col, e))
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                self.try_get::<Option<i64>, _>(col).map_err(|e| column_error(col, e))
            }
            fn flag(&self, col: &str) -> Result<bool> {
                self.try_get::<bool, _>(col).map_err(|e| column_error(col, e))
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>> {
                self.try_get::<Vec<u8>, _>(col).map_err(|e| column_error(col, e))
            }
            fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
                self.try_get::<Option<Vec<u8>>, _>(col).map_err(|e| column_error(col, e))
            }
        }
    };
}

impl_cols!(sqlx::sqlite::SqliteRow);
impl_cols!(sqlx::postgres::PgRow);

/// Milliseconds since the Unix epoch, the stored form of every instant. Truncates toward the
/// past, so ordering is preserved.
pub(crate) fn to_millis(t: OffsetDateTime) -> i64 {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    // Saturate rather than fail: instants beyond ±292 million years are not meaningful here.
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn from_millis(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| corrupt(format_args!("instant {ms} ms is out of range")))
}

/// A duration in whole milliseconds (saturating), for "now + ttl" arithmetic in SQL parameters.
pub(crate) fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `now + d` in stored milliseconds, saturating instead of overflowing.
pub(crate) fn millis_after(now: OffsetDateTime, d: Duration) -> i64 {
    to_millis(now).saturating_add(duration_millis(d))
}

/// A count from `SELECT COUNT(*)` or a rows-affected figure, as the `u64` callers expect.
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_at_millisecond_precision() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let back = from_millis(to_millis(t)).unwrap();
        assert_eq!(back.unix_timestamp_nanos(), 1_700_000_000_123_000_000);
        let before_epoch = OffsetDateTime::from_unix_timestamp_nanos(-1_500_000).unwrap();
        assert_eq!(to_millis(before_epoch), -2);
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(duration_millis(Duration::from_secs(2)), 2000);
        assert_eq!(duration_millis(Duration::MAX), i64::MAX);
        assert_eq!(millis_after(OffsetDateTime::UNIX_EPOCH, Duration::MAX), i64::MAX);
    }
}
