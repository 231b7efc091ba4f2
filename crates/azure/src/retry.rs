//! Retries: 429, 5xx and connection failures, with jittered exponential backoff, honouring
//! `Retry-After`, inside a bounded total time.
//!
//! The backoff schedule comes from `backon` (exponential with jitter). What backon does not know
//! is Azure's: the server's `Retry-After` replaces the computed delay when it is longer (capped,
//! so a hostile or broken server cannot park us), and the *total* time — attempts included, not
//! only sleeps — is bounded, because a blackholed request burns its whole timeout. Each attempt
//! therefore gets the time left as its timeout, and a retry whose sleep would cross the deadline
//! is not made. Denials and other 4xx are never retried: retrying a 403 only delays the news.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use crate::error::Error;

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The first backoff; each next one doubles, plus up to 100 % jitter.
    pub initial_backoff: Duration,
    /// The largest computed backoff (before jitter).
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; longer values are cut to this.
    pub max_retry_after: Duration,
    /// Total time for all attempts and sleeps. No attempt starts after it and each attempt's
    /// timeout is cut to what is left.
    pub total: Duration,
    /// The most attempts, first one included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(20),
            total: Duration::from_secs(30),
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: one attempt.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Run `attempt` until it succeeds, fails with a non-retryable error, or the policy is
    /// exhausted. `attempt` receives the time left in the budget, to use as its timeout. The
    /// returned error records how many attempts were made.
    pub(crate) async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = Instant::now() + self.total;
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        let result = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            attempt(deadline.saturating_duration_since(Instant::now()))
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &Error| e.retryable)
        .adjust(|e: &Error, computed: Option<Duration>| {
            if attempts.load(Ordering::Relaxed) >= self.max_attempts {
                return None;
            }
            let delay = self.delay_after(e, computed?);
            // A retry that could not even start before the deadline is not worth the wait.
            if Instant::now() + delay >= deadline {
                return None;
            }
            tracing::debug!(
                kind = %e.kind(), status = ?e.status(), delay_ms = delay.as_millis() as u64,
                attempt = attempts.load(Ordering::Relaxed), "retrying Azure request"
            );
            Some(delay)
        })
        .await;
        result.map_err(|mut e| {
            e.set_attempts(attempts.load(Ordering::Relaxed));
            e
        })
    }

    /// The sleep before the next attempt: the computed backoff, or the server's `Retry-After`
    /// (capped) when that is longer.
    fn delay_after(&self, err: &Error, computed: Duration) -> Duration {
        match err.retry_after {
            Some(ra) => ra.min(self.max_retry_after).max(computed.min(self.max_retry_after)),
            None => computed,
        }
    }
}

/// Parse the server's retry hint from response headers: `retry-after-ms` / `x-ms-retry-after-ms`
/// (milliseconds, used by some Azure services) first, then `Retry-After` as delta-seconds or an
/// HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now)
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT` (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(when.unix_timestamp()).ok()?);
    // A date in the past means "now".
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::error::{ErrorKind, Service};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
            total: Duration::from_secs(10),
            max_attempts: 50,
        }
    }

    fn err(kind: ErrorKind) -> Error {
        Error::new(kind, Service::KeyVault, "x")
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 2015-10-21 07:27:50Z
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);

        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert("x-ms-retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn denial_is_never_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy()
            .run(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(err(ErrorKind::Denied)) }
            })
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied);
        assert_eq!(e.attempts(), 1);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_then_success_backs_off_exponentially_with_jitter() {
        let start = Instant::now();
        let times = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let r = policy()
            .run(|_| {
                let n = {
                    let mut t = times.lock();
                    t.push(start.elapsed());
                    t.len()
                };
                async move { if n < 4 { Err(err(ErrorKind::Unreachable)) } else { Ok(n) } }
            })
            .await;
        assert_eq!(r.unwrap(), 4);
        let t = times.lock().clone();
        let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
        // Base 100, 200, 400 ms, each plus up to 100 % jitter.
        for (gap, base) in gaps.iter().zip([100u64, 200, 400]) {
            let base = Duration::from_millis(base);
            assert!(*gap >= base && *gap <= base * 2, "gap {gap:?} outside [{base:?}, {:?}]", base * 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_and_capped() {
        let start = Instant::now();
        let times = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let _ = policy()
            .run(|_| {
                let n = {
                    let mut t = times.lock();
                    t.push(start.elapsed());
                    t.len()
                };
                async move {
                    match n {
                        1 => Err(err(ErrorKind::Throttled).with_retry_after(Some(Duration::from_secs(3)))),
                        2 => Err(err(ErrorKind::Throttled).with_retry_after(Some(Duration::from_secs(3600)))),
                        _ => Ok(()),
                    }
                }
            })
            .await;
        let t = times.lock().clone();
        assert_eq!(t.len(), 3);
        // Retry-After 3 s beats the ~100 ms backoff; 3600 s is cut to the 5 s cap.
        assert_eq!(t[1] - t[0], Duration::from_secs(3));
        assert_eq!(t[2] - t[1], Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_within_the_total_budget_and_keeps_the_last_kind() {
        let start = Instant::now();
        let budgets = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let r: Result<(), _> = policy()
            .run(|left| {
                budgets.lock().push(left);
                async { Err(err(ErrorKind::Throttled).with_retry_after(Some(Duration::from_secs(4)))) }
            })
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Throttled);
        // Attempts at 0, 4 and 8 s; a fourth at 12 s would cross the 10 s budget.
        assert_eq!(e.attempts(), 3);
        assert!(start.elapsed() <= Duration::from_secs(10));
        let b = budgets.lock().clone();
        assert_eq!(b, vec![Duration::from_secs(10), Duration::from_secs(6), Duration::from_secs(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_attempts_count_against_the_budget() {
        let start = Instant::now();
        let p = RetryPolicy { total: Duration::from_secs(3), ..policy() };
        let r: Result<(), _> = p
            .run(|left| async move {
                // A blackholed request: it burns its whole timeout.
                tokio::time::sleep(left.min(Duration::from_secs(1))).await;
                Err(err(ErrorKind::Unreachable))
            })
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unreachable);
        assert!(e.attempts() >= 2, "{}", e.attempts());
        assert!(start.elapsed() <= Duration::from_secs(3), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn max_attempts_bounds_retries() {
        let p = RetryPolicy { max_attempts: 3, ..policy() };
        let r: Result<(), _> = p.run(|_| async { Err(err(ErrorKind::Unreachable)) }).await;
        assert_eq!(r.unwrap_err().attempts(), 3);
        let r: Result<(), _> = RetryPolicy::none().run(|_| async { Err(err(ErrorKind::Unreachable)) }).await;
        assert_eq!(r.unwrap_err().attempts(), 1);
    }
}
