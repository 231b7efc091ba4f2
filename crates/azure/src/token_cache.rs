//! Access tokens cached per (authority, tenant, client, scope), fetched by one request at a time.
//!
//! design.md §7 targets at most one Entra request per (tenant, client, scope) per token lifetime
//! whatever the concurrency. Three rules get there:
//! - **Single flight.** The first caller that needs a token starts one fetch and parks it in the
//!   slot as a shared future; everyone else who needs a token awaits that same future, so N
//!   concurrent callers cause one request — and, if it fails, one failure, not N retry cycles.
//! - **Refresh ahead.** A token is refreshed once less than min(5 min, ⅓ of its lifetime) is
//!   left. While that refresh runs, other callers keep getting the still-valid token at once.
//! - **Keep the old token on a failed refresh.** If the refresh fails while the old token is
//!   still usable, the caller gets the old one; the next call tries again.
//!
//! Time is `tokio::time::Instant`, so tests drive expiry with a paused clock. The fetch itself is
//! a closure, so this module knows nothing of HTTP (see [`crate::token`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use atrest_domain::AzureUuid;

use crate::error::Error;
use crate::token_shared::{Outcome, SharedTokens, fetch_through};

/// The longest a token is refreshed ahead of expiry.
const MAX_REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// The longest safety margin before expiry after which a token is no longer handed out: a
/// token that expires while the request is in flight is refused by the service.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<SecretString>,
    obtained_at: Instant,
    expires_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[REDACTED]")
            .field("expires_in", &self.expires_at.saturating_duration_since(Instant::now()))
            .finish()
    }
}

impl AccessToken {
    /// A token obtained at `obtained_at` (when the request was sent: the conservative end)
    /// that Entra said lives `lifetime`.
    pub fn new(secret: SecretString, obtained_at: Instant, lifetime: Duration) -> Self {
        Self { secret: Arc::new(secret), obtained_at, expires_at: obtained_at + lifetime }
    }

    /// The bearer token itself. Send it; never log it.
    pub fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// When the token expires.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// The SHA-256 of the bearer token: how a holder of a copy (a data node) names the token it
    /// was refused without sending the token back.
    pub fn sha256(&self) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.expose_secret().as_bytes());
        d.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// Time left before expiry.
    pub fn expires_in(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    pub(crate) fn lifetime(&self) -> Duration {
        self.expires_at.saturating_duration_since(self.obtained_at)
    }

    /// Whether it is before its refresh-ahead point, so a holder may pass it on as it is.
    pub(crate) fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at()
    }

    /// From this instant on, a refresh is due.
    fn refresh_at(&self) -> Instant {
        self.expires_at - MAX_REFRESH_AHEAD.min(self.lifetime() / 3)
    }

    /// Until this instant, the token may still be handed out.
    fn usable_until(&self) -> Instant {
        self.expires_at - MAX_EXPIRY_MARGIN.min(self.lifetime() / 10)
    }
}

/// What a cached token is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The Entra host (`login.microsoftonline.com`, ...).
    pub authority: String,
    /// The tenant the token is issued in (the customer's, for Key Vault).
    pub tenant: AzureUuid,
    /// The application (client) id.
    pub client_id: AzureUuid,
    /// `{resource}/.default`.
    pub scope: String,
}

type SharedFetch = Shared<BoxFuture<'static, Result<AccessToken, Error>>>;

#[derive(Default)]
struct SlotState {
    token: Option<AccessToken>,
    inflight: Option<SharedFetch>,
    /// The SHA-256 of the last token of this key a service refused: never taken from the
    /// shared tier again.
    refused: Option<[u8; 32]>,
    /// The next fetch must come from Entra, not from the shared tier ([`TokenCache::invalidate`]).
    from_entra: bool,
}

#[derive(Default)]
struct Slot {
    state: parking_lot::Mutex<SlotState>,
}

/// Counters for metrics and benchmarks, since the cache was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCacheStats {
    /// HTTP requests sent to Entra's token endpoint (retries included).
    pub token_requests: u64,
    /// Calls answered from the cache (including those served a still-valid token while a
    /// refresh was in flight).
    pub cache_hits: u64,
    /// Calls that had to wait for a fetch (their own or a shared one).
    pub cache_misses: u64,
    /// Fetches answered with another process's token from the shared tier, not by Entra.
    pub shared_hits: u64,
    /// Refreshes that failed while the old token was still usable (it was served instead).
    pub refresh_failures: u64,
}

/// The token cache. Share one per process (behind an `Arc`) between every [`crate::TokenProvider`].
#[derive(Default)]
pub struct TokenCache {
    slots: parking_lot::Mutex<HashMap<CacheKey, Arc<Slot>>>,
    token_requests: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    shared_hits: Arc<AtomicU64>,
    refresh_failures: AtomicU64,
    shared: std::sync::OnceLock<Arc<dyn SharedTokens>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("entries", &self.slots.lock().len()).field("stats", &self.stats()).finish()
    }
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TokenCacheStats {
        TokenCacheStats {
            token_requests: self.token_requests.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
            shared_hits: self.shared_hits.load(Ordering::Relaxed),
            refresh_failures: self.refresh_failures.load(Ordering::Relaxed),
        }
    }

    /// Puts the shared tier behind this cache (see [`crate::token_shared`]); once only, before
    /// the first token is asked for. Returns `false` if a tier was set already.
    pub fn set_shared(&self, shared: Arc<dyn SharedTokens>) -> bool {
        self.shared.set(shared).is_ok()
    }

    /// Count one HTTP request to the token endpoint (called by the fetcher, per attempt).
    pub(crate) fn count_request(&self) {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Forget the token for `key`, so that the next call asks Entra: not the shared tier either,
    /// since what a caller proves with a token fresh from Entra (that the service principal
    /// still exists and is enabled) a stored one issued earlier does not prove.
    pub fn invalidate(&self, key: &CacheKey) {
        let slot = self.slots.lock().entry(key.clone()).or_default().clone();
        let mut st = slot.state.lock();
        st.token = None;
        st.from_entra = true;
    }

    /// Forget the token for `key` only if it is still `refused`: when several callers are refused
    /// the same token at once, the first one's replacement is not thrown away by the others.
    pub fn invalidate_if(&self, key: &CacheKey, refused: &AccessToken) {
        if let Some(slot) = self.slots.lock().get(key) {
            let mut st = slot.state.lock();
            if st.token.as_ref().is_some_and(|t| Arc::ptr_eq(&t.secret, &refused.secret)) {
                st.token = None;
                st.refused = Some(refused.sha256());
            }
        }
    }

    /// Forget the token for `key` only if its SHA-256 is `refused_sha256` (a copy of it was
    /// refused elsewhere: a data node's Key Vault answered 401 to it). Only a caller that holds
    /// the cached token can name it, so nobody can empty the cache at will, and N holders
    /// refused the same token drop it once: the first one's replacement has another digest.
    /// Returns whether it was dropped.
    pub fn invalidate_if_sha256(&self, key: &CacheKey, refused_sha256: &[u8]) -> bool {
        let Some(slot) = self.slots.lock().get(key).cloned() else { return false };
        let mut st = slot.state.lock();
        let matches = st
            .token
            .as_ref()
            .is_some_and(|t| aws_lc_rs::constant_time::verify_slices_are_equal(&t.sha256(), refused_sha256).is_ok());
        if matches {
            st.refused = st.token.take().map(|t| t.sha256());
        }
        matches
    }

    /// The token for `key`: from the cache when fresh, else from `fetch` — started at most once
    /// however many callers ask at the same time.
    pub async fn get_or_fetch<F>(&self, key: &CacheKey, fetch: F) -> Result<AccessToken, Error>
    where
        F: FnOnce() -> BoxFuture<'static, Result<AccessToken, Error>>,
    {
        let slot = self.slots.lock().entry(key.clone()).or_default().clone();
        let now = Instant::now();
        let (shared, fallback) = {
            let mut st = slot.state.lock();
            let usable = st.token.as_ref().filter(|t| now < t.usable_until()).cloned();
            if let Some(t) = &usable
                && (now < t.refresh_at() || st.inflight.is_some())
            {
                // Fresh, or due for refresh but someone is already refreshing: the old token
                // is still good, so nobody waits.
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(t.clone());
            }
            self.cache_misses.fetch_add(1, Ordering::Relaxed);
            let shared = match &st.inflight {
                Some(f) => f.clone(),
                None => {
                    let slot_for_fetch = slot.clone();
                    let fut = fetch();
                    let tier = self.shared.get().cloned();
                    let (key, refused, from_entra) = (key.clone(), st.refused, std::mem::take(&mut st.from_entra));
                    let shared_hits = self.shared_hits.clone();
                    let shared = async move {
                        let result = match tier {
                            None => fut.await,
                            Some(tier) => match fetch_through(tier.as_ref(), &key, refused, from_entra, fut).await {
                                Outcome::Shared(t) => {
                                    shared_hits.fetch_add(1, Ordering::Relaxed);
                                    Ok(t)
                                }
                                Outcome::Fetched(result) => result,
                            },
                        };
                        // Settle the slot inside the shared future, so it happens exactly once
                        // and even if the caller that started it has gone away.
                        let mut st = slot_for_fetch.state.lock();
                        st.inflight = None;
                        if let Ok(t) = &result {
                            st.token = Some(t.clone());
                        }
                        result
                    }
                    .boxed()
                    .shared();
                    st.inflight = Some(shared.clone());
                    shared
                }
            };
            (shared, usable)
        };
        match shared.await {
            Ok(t) => Ok(t),
            Err(e) => match fallback {
                Some(old) if Instant::now() < old.usable_until() => {
                    self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        tenant = %key.tenant, client_id = %key.client_id, scope = %key.scope, error = %e,
                        "token refresh failed; using the cached token until it expires"
                    );
                    Ok(old)
                }
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::error::{ErrorKind, Service};

    fn key(tenant: u8) -> CacheKey {
        CacheKey {
            authority: "login.microsoftonline.com".into(),
            tenant: format!("00000000-0000-0000-0000-0000000000{tenant:02x}").parse().unwrap(),
            client_id: "11111111-1111-1111-1111-111111111111".parse().unwrap(),
            scope: "https://vault.azure.net/.default".into(),
        }
    }

    /// A fetcher that counts calls, waits `delay`, and returns token `tok-<n>` living `life`.
    pub(crate) fn fetcher(
        calls: &Arc<AtomicU32>,
        delay: Duration,
        life: Duration,
        fail: bool,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AccessToken, Error>> {
        let calls = calls.clone();
        move || {
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let sent = Instant::now();
                tokio::time::sleep(delay).await;
                if fail {
                    Err(Error::new(ErrorKind::Unreachable, Service::Entra, "down"))
                } else {
                    Ok(AccessToken::new(SecretString::from(format!("tok-{n}")), sent, life))
                }
            }
            .boxed()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_dropped_once_not_its_replacement() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicU32::new(0));
        let k = key(1);
        let refused = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        // Two callers were refused the same token: the first drops it and fetches anew ...
        cache.invalidate_if(&k, &refused);
        let fresh = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(fresh.expose_secret(), "tok-2");
        // ... the second must not throw the replacement away.
        cache.invalidate_if(&k, &refused);
        let again = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(again.expose_secret(), "tok-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The replacement itself refused: dropped.
        cache.invalidate_if(&k, &fresh);
        let third = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(third.expose_secret(), "tok-3");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch_per_key() {
        let cache = Arc::new(TokenCache::new());
        let calls: Vec<Arc<AtomicU32>> = (0..5).map(|_| Arc::new(AtomicU32::new(0))).collect();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let cache = cache.clone();
            let c = calls[i % 5].clone();
            tasks.push(tokio::spawn(async move {
                let k = key((i % 5) as u8);
                cache.get_or_fetch(&k, fetcher(&c, Duration::from_millis(50), HOUR, false)).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().expose_secret(), "tok-1");
        }
        for c in &calls {
            assert_eq!(c.load(Ordering::SeqCst), 1);
        }
        let s = cache.stats();
        assert_eq!(s.cache_hits + s.cache_misses, 200);
        assert!(s.cache_misses >= 5);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_of_expiry_serving_the_old_token_meanwhile() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicU32::new(0));
        let k = key(1);
        let t1 = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(t1.expose_secret(), "tok-1");
        // 54 min in: more than 5 min left, still fresh.
        tokio::time::advance(Duration::from_secs(54 * 60)).await;
        let t = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!((t.expose_secret(), calls.load(Ordering::SeqCst)), ("tok-1", 1));
        // 56 min in: under 5 min left, refresh now.
        tokio::time::advance(Duration::from_secs(2 * 60)).await;
        let t = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!((t.expose_secret(), calls.load(Ordering::SeqCst)), ("tok-2", 2));

        // A slow refresh: the caller that starts it waits, others get the old token at once.
        tokio::time::advance(Duration::from_secs(56 * 60)).await;
        let cache = Arc::new(cache);
        let c2 = cache.clone();
        let k2 = k.clone();
        let calls2 = calls.clone();
        let refresher = tokio::spawn(async move {
            c2.get_or_fetch(&k2, fetcher(&calls2, Duration::from_secs(5), HOUR, false)).await.unwrap()
        });
        tokio::task::yield_now().await;
        let other = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(other.expose_secret(), "tok-2");
        assert_eq!(refresher.await.unwrap().expose_secret(), "tok-3");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn short_lifetimes_refresh_at_two_thirds() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicU32::new(0));
        let k = key(2);
        let life = Duration::from_secs(60);
        cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, life, false)).await.unwrap();
        tokio::time::advance(Duration::from_secs(39)).await;
        cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, life, false)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, life, false)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_the_valid_token_but_not_an_expired_one() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicU32::new(0));
        let k = key(3);
        cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        tokio::time::advance(Duration::from_secs(57 * 60)).await;
        let t = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, true)).await.unwrap();
        assert_eq!(t.expose_secret(), "tok-1");
        assert_eq!(cache.stats().refresh_failures, 1);
        // Each call while in the refresh window tries again (the failure is not cached).
        let _ = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, true)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Past expiry (minus the margin) the failure surfaces.
        tokio::time::advance(Duration::from_secs(3 * 60)).await;
        let e = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, true)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unreachable);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_shared_by_all_waiters_then_retried_by_the_next_call() {
        let cache = Arc::new(TokenCache::new());
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache.get_or_fetch(&key(4), fetcher(&calls, Duration::from_millis(10), HOUR, true)).await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let t = cache.get_or_fetch(&key(4), fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(t.expose_secret(), "tok-2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_fetch_is_finished_by_the_next_caller() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicU32::new(0));
        let k = key(5);
        let first = cache.get_or_fetch(&k, fetcher(&calls, Duration::from_secs(1), HOUR, false));
        assert!(tokio::time::timeout(Duration::from_millis(10), first).await.is_err());
        let t = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!((t.expose_secret(), calls.load(Ordering::SeqCst)), ("tok-1", 1));
    }

    #[test]
    fn debug_redacts_the_token() {
        let t = AccessToken::new(SecretString::from("eyJ.secret.sig"), Instant::now(), HOUR);
        let s = format!("{t:?}");
        assert!(s.contains("[REDACTED]") && !s.contains("secret"), "{s}");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forces_a_fetch() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicU32::new(0));
        let k = key(6);
        cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        cache.invalidate(&k);
        let t = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(t.expose_secret(), "tok-2");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_refused_tokens_digest_drops_it_and_only_once() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicU32::new(0));
        let k = key(7);
        let first = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        // Another digest (a token this cache never handed out) drops nothing.
        assert!(!cache.invalidate_if_sha256(&k, &[0u8; 32]));
        assert!(!cache.invalidate_if_sha256(&key(8), &first.sha256()));
        let same = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(same.expose_secret(), first.expose_secret());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The refused token's digest drops it; a second holder naming it again drops nothing.
        assert!(cache.invalidate_if_sha256(&k, &first.sha256()));
        let fresh = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(fresh.expose_secret(), "tok-2");
        assert!(!cache.invalidate_if_sha256(&k, &first.sha256()));
        let kept = cache.get_or_fetch(&k, fetcher(&calls, Duration::ZERO, HOUR, false)).await.unwrap();
        assert_eq!(kept.expose_secret(), "tok-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
