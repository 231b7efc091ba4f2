//! A token tier shared by the processes that hold the same credential: the control plane's
//! replicas. Each keeps its own [`crate::TokenCache`] in front; on a miss it looks here before it
//! asks Entra, and only one process at a time asks Entra for a key, so N replicas cost one token
//! request per token lifetime instead of N (design.md §10: "exactly 30 per token lifetime" for a
//! fleet in 30 tenants, however many replicas serve it).
//!
//! The tier is reached only from inside the cache's single flight, so one process makes at most
//! one trip here per key at a time. Its rules:
//! - A stored token is taken only while it is *fresh* (before its refresh-ahead point): one in
//!   its refresh window is refreshed, not spread further.
//! - Before asking Entra a process claims the key ([`SharedTokens::try_claim`], a lease with a
//!   time limit). A process that finds it claimed waits for the holder's token, looking again
//!   every [`POLL`], and after [`CLAIM_WAIT`] asks Entra itself: a stuck replica delays the
//!   others, never stops them.
//! - A token this process was refused (Key Vault answered 401 to it) is never taken from the
//!   tier again: it is deleted there, only if it is still the stored one.
//! - The tier failing (the database is down) is logged and skipped: tokens keep coming from
//!   Entra, one request per replica.

use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::error::Error;
use crate::token_cache::{AccessToken, CacheKey};

/// How long a claim lasts if its holder never releases it (it crashed mid-fetch). Longer than a
/// token request with its retries usually takes.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How long a process waits for another one's claim before asking Entra itself.
pub const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting process looks for the claim holder's token.
pub const POLL: Duration = Duration::from_millis(100);

/// An error of the shared tier (its database), as text: it is logged and never returned.
pub type SharedError = Box<dyn std::error::Error + Send + Sync>;

/// A token as the shared tier keeps it, with wall-clock times, since processes share no
/// monotonic clock.
pub struct StoredToken {
    /// The bearer token. The tier must keep it encrypted.
    pub secret: SecretString,
    /// When it was requested (the conservative start of its lifetime).
    pub obtained_at: SystemTime,
    /// When it expires.
    pub expires_at: SystemTime,
}

impl StoredToken {
    /// The wall-clock form of `token`.
    pub fn from_token(token: &AccessToken) -> StoredToken {
        let (now, now_wall) = (Instant::now(), SystemTime::now());
        let expires_at = now_wall + token.expires_at().saturating_duration_since(now);
        StoredToken {
            secret: SecretString::from(token.expose_secret().to_owned()),
            obtained_at: expires_at - token.lifetime(),
            expires_at,
        }
    }

    /// Back to a token on this process's clock.
    pub fn into_token(self) -> AccessToken {
        let (now, now_wall) = (Instant::now(), SystemTime::now());
        let lifetime = self.expires_at.duration_since(self.obtained_at).unwrap_or_default();
        let age = now_wall.duration_since(self.obtained_at).unwrap_or_default();
        // A token older than this process's clock can go back (just after boot) ages from now:
        // it then expires later on our clock than in truth, by at most that much; the expiry
        // margin and the refresh on 401 cover it.
        let obtained = now.checked_sub(age).unwrap_or(now);
        AccessToken::new(self.secret, obtained, lifetime)
    }
}

/// Where the control plane's replicas keep their tokens between them (the store).
pub trait SharedTokens: Send + Sync {
    /// The token stored for `key`, if any (expired or not).
    fn load<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<StoredToken>, SharedError>>;
    /// Stores `token` for `key`, replacing whatever was there.
    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> BoxFuture<'a, Result<(), SharedError>>;
    /// Deletes the token for `key` if its SHA-256 is `sha256` (it was refused).
    fn forget<'a>(&'a self, key: &'a CacheKey, sha256: &'a [u8; 32]) -> BoxFuture<'a, Result<(), SharedError>>;
    /// Claims the right to ask Entra for `key` for `ttl`. `Ok(false)`: another process holds it.
    fn try_claim<'a>(&'a self, key: &'a CacheKey, ttl: Duration) -> BoxFuture<'a, Result<bool, SharedError>>;
    /// Gives the claim on `key` up.
    fn release<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), SharedError>>;
}

/// What one trip through the tier did, for the cache's counters.
pub(crate) enum Outcome {
    /// Another process's token was taken.
    Shared(AccessToken),
    /// This process asked Entra (and stored what it got).
    Fetched(Result<AccessToken, Error>),
}

fn log(what: &str, key: &CacheKey, e: &SharedError) {
    tracing::warn!(tenant = %key.tenant, client_id = %key.client_id, scope = %key.scope, error = %e,
        "the shared token store failed to {what}; asking Entra directly");
}

/// The stored token for `key` if it is fresh and not `refused`; a refused one is deleted.
async fn load_fresh(shared: &dyn SharedTokens, key: &CacheKey, refused: Option<[u8; 32]>) -> Option<AccessToken> {
    let stored = match shared.load(key).await {
        Ok(stored) => stored?,
        Err(e) => {
            log("read a token", key, &e);
            return None;
        }
    };
    let token = stored.into_token();
    if let Some(sha) = refused
        && aws_lc_rs::constant_time::verify_slices_are_equal(&token.sha256(), &sha).is_ok()
    {
        if let Err(e) = shared.forget(key, &sha).await {
            log("delete a refused token", key, &e);
        }
        return None;
    }
    token.is_fresh().then_some(token)
}

/// Gets the token for `key` through the shared tier: a fresh stored one, else the claim holder's
/// once it is stored, else `fetch`'s (stored for the others). `from_entra`: the caller wants
/// proof from Entra now (see [`crate::TokenCache::invalidate`]), so nothing stored is taken.
pub(crate) async fn fetch_through(
    shared: &dyn SharedTokens,
    key: &CacheKey,
    refused: Option<[u8; 32]>,
    from_entra: bool,
    fetch: BoxFuture<'static, Result<AccessToken, Error>>,
) -> Outcome {
    if from_entra {
        return Outcome::Fetched(fetch_and_save(shared, key, fetch).await);
    }
    if let Some(t) = load_fresh(shared, key, refused).await {
        return Outcome::Shared(t);
    }
    let give_up = Instant::now() + CLAIM_WAIT;
    let claimed = loop {
        match shared.try_claim(key, CLAIM_TTL).await {
            Ok(true) => break true,
            Ok(false) if Instant::now() < give_up => {
                tokio::time::sleep(POLL).await;
                if let Some(t) = load_fresh(shared, key, refused).await {
                    return Outcome::Shared(t);
                }
            }
            Ok(false) => {
                tracing::warn!(tenant = %key.tenant, scope = %key.scope,
                    "another replica has been fetching this token for {CLAIM_WAIT:?}; asking Entra directly");
                break false;
            }
            Err(e) => {
                log("claim a token fetch", key, &e);
                break false;
            }
        }
    };
    // The previous holder may have stored its token between our last look and the claim.
    if claimed && let Some(t) = load_fresh(shared, key, refused).await {
        release(shared, key).await;
        return Outcome::Shared(t);
    }
    let result = fetch_and_save(shared, key, fetch).await;
    if claimed {
        release(shared, key).await;
    }
    Outcome::Fetched(result)
}

async fn fetch_and_save(
    shared: &dyn SharedTokens,
    key: &CacheKey,
    fetch: BoxFuture<'static, Result<AccessToken, Error>>,
) -> Result<AccessToken, Error> {
    let result = fetch.await;
    if let Ok(t) = &result
        && let Err(e) = shared.save(key, &StoredToken::from_token(t)).await
    {
        log("store a token", key, &e);
    }
    result
}

async fn release(shared: &dyn SharedTokens, key: &CacheKey) {
    if let Err(e) = shared.release(key).await {
        // The claim runs out by itself after CLAIM_TTL.
        log("release a claim", key, &e);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use futures::FutureExt;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::TokenCache;
    use crate::error::{ErrorKind, Service};

    /// The tier as the store keeps it, in memory: a token and a claim per key.
    #[derive(Default)]
    struct Memory {
        tokens: parking_lot::Mutex<HashMap<CacheKey, (String, SystemTime, SystemTime)>>,
        claims: parking_lot::Mutex<HashMap<CacheKey, Instant>>,
        broken: AtomicBool,
    }

    impl Memory {
        fn check(&self) -> Result<(), SharedError> {
            if self.broken.load(Ordering::SeqCst) { Err("the database is down".into()) } else { Ok(()) }
        }
    }

    impl SharedTokens for Memory {
        fn load<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<StoredToken>, SharedError>> {
            async move {
                self.check()?;
                Ok(self.tokens.lock().get(key).map(|(s, o, e)| StoredToken {
                    secret: SecretString::from(s.clone()),
                    obtained_at: *o,
                    expires_at: *e,
                }))
            }
            .boxed()
        }
        fn save<'a>(&'a self, key: &'a CacheKey, t: &'a StoredToken) -> BoxFuture<'a, Result<(), SharedError>> {
            async move {
                self.check()?;
                self.tokens
                    .lock()
                    .insert(key.clone(), (t.secret.expose_secret().to_owned(), t.obtained_at, t.expires_at));
                Ok(())
            }
            .boxed()
        }
        fn forget<'a>(&'a self, key: &'a CacheKey, sha: &'a [u8; 32]) -> BoxFuture<'a, Result<(), SharedError>> {
            async move {
                self.check()?;
                let mut tokens = self.tokens.lock();
                let digest = |s: &str| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
                if tokens.get(key).is_some_and(|(s, _, _)| digest(s).as_ref() == sha) {
                    tokens.remove(key);
                }
                Ok(())
            }
            .boxed()
        }
        fn try_claim<'a>(&'a self, key: &'a CacheKey, ttl: Duration) -> BoxFuture<'a, Result<bool, SharedError>> {
            async move {
                self.check()?;
                let mut claims = self.claims.lock();
                let now = Instant::now();
                if claims.get(key).is_some_and(|until| *until > now) {
                    return Ok(false);
                }
                claims.insert(key.clone(), now + ttl);
                Ok(true)
            }
            .boxed()
        }
        fn release<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), SharedError>> {
            async move {
                self.check()?;
                self.claims.lock().remove(key);
                Ok(())
            }
            .boxed()
        }
    }

    fn key() -> CacheKey {
        CacheKey {
            authority: "login.microsoftonline.com".into(),
            tenant: "00000000-0000-0000-0000-0000000000aa".parse().unwrap(),
            client_id: "11111111-1111-1111-1111-111111111111".parse().unwrap(),
            scope: "https://vault.azure.net/.default".into(),
        }
    }

    /// A fetch from "Entra": counts calls, takes `delay`, returns `tok-<n>` for an hour.
    fn entra(
        calls: &Arc<AtomicU32>,
        delay: Duration,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AccessToken, Error>> {
        crate::token_cache::tests::fetcher(calls, delay, Duration::from_secs(3600), false)
    }

    /// `n` replicas: a cache each, one tier between them.
    fn replicas(n: usize, tier: &Arc<Memory>) -> Vec<Arc<TokenCache>> {
        (0..n)
            .map(|_| {
                let c = Arc::new(TokenCache::new());
                assert!(c.set_shared(tier.clone()));
                c
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_asking_at_once_cost_one_entra_request() {
        let tier = Arc::new(Memory::default());
        let caches = replicas(3, &tier);
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (cache, calls) = (caches[i % 3].clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache.get_or_fetch(&key(), entra(&calls, Duration::from_millis(300))).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().expose_secret(), "tok-1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one request for three replicas");
        let shared: u64 = caches.iter().map(|c| c.stats().shared_hits).sum();
        assert_eq!(shared, 2, "the two other replicas took the stored token");
        // A replica that starts later takes it too.
        let late = replicas(1, &tier).remove(0);
        assert_eq!(late.get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap().expose_secret(), "tok-1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_not_taken_back_from_the_tier() {
        let tier = Arc::new(Memory::default());
        let caches = replicas(2, &tier);
        let calls = Arc::new(AtomicU32::new(0));
        let first = caches[0].get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        let copy = caches[1].get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        assert_eq!(copy.expose_secret(), "tok-1");
        // Replica 1's Key Vault refuses tok-1: it must get a new token, not tok-1 from the tier.
        caches[1].invalidate_if(&key(), &copy);
        let fresh = caches[1].get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        assert_eq!((fresh.expose_secret(), calls.load(Ordering::SeqCst)), ("tok-2", 2));
        // The same by a node's report (the digest), on replica 0: tok-1 is gone from its cache,
        // and tok-2 in the tier is taken, not fetched again.
        assert!(caches[0].invalidate_if_sha256(&key(), &first.sha256()));
        let next = caches[0].get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        assert_eq!((next.expose_secret(), calls.load(Ordering::SeqCst)), ("tok-2", 2));
    }

    #[tokio::test(start_paused = true)]
    async fn after_invalidate_the_next_token_comes_from_entra_not_the_tier() {
        let tier = Arc::new(Memory::default());
        let caches = replicas(2, &tier);
        let calls = Arc::new(AtomicU32::new(0));
        caches[0].get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        // Replica 1 must prove something with a token Entra issues now (a registration).
        caches[1].invalidate(&key());
        let proof = caches[1].get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        assert_eq!((proof.expose_secret(), calls.load(Ordering::SeqCst)), ("tok-2", 2));
        // Only that once: it is stored, and the next replica to ask takes it.
        let fresh = replicas(1, &tier).remove(0);
        assert_eq!(fresh.get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap().expose_secret(), "tok-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_claim_holder_delays_the_others_then_they_ask_entra() {
        let tier = Arc::new(Memory::default());
        let caches = replicas(1, &tier);
        // Another replica claimed the key and died.
        assert!(tier.try_claim(&key(), CLAIM_TTL).await.unwrap());
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let t = caches[0].get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        assert_eq!((t.expose_secret(), calls.load(Ordering::SeqCst)), ("tok-1", 1));
        let waited = started.elapsed();
        assert!(waited >= CLAIM_WAIT && waited < CLAIM_WAIT + Duration::from_secs(1), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_tier_is_skipped() {
        let tier = Arc::new(Memory::default());
        tier.broken.store(true, Ordering::SeqCst);
        let caches = replicas(2, &tier);
        let calls = Arc::new(AtomicU32::new(0));
        for c in &caches {
            c.get_or_fetch(&key(), entra(&calls, Duration::ZERO)).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "each replica asked Entra");
        // An Entra failure is not stored and reaches the caller.
        let down = TokenCache::new();
        down.set_shared(Arc::new(Memory::default()));
        let e = down
            .get_or_fetch(&key(), || async { Err(Error::new(ErrorKind::Unreachable, Service::Entra, "down")) }.boxed())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unreachable);
    }

    #[test]
    fn wall_clock_round_trip_keeps_the_lifetime_and_the_age() {
        let t = AccessToken::new(
            SecretString::from("x"),
            Instant::now() - Duration::from_secs(600),
            Duration::from_secs(3600),
        );
        let back = StoredToken::from_token(&t).into_token();
        assert_eq!(back.lifetime().as_secs(), 3600);
        let left = back.expires_in().as_secs();
        assert!((2995..=3000).contains(&left), "{left}");
    }
}
