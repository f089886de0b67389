//! [`CachingVerifier`]: a [`Verifier`] over a cached key set that refreshes
//! itself when Sigil rotates keys.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, TryLockError};

use crate::error::{short_message, VerifyError};
use crate::intent::Intent;
use crate::jwk::JwkSet;
use crate::jws::{cancellations_kid, token_kid, Claims, Verifier};

/// Default minimum time between two refreshes caused by unknown `kid`s.
const DEFAULT_MIN_REFRESH_INTERVAL: i64 = 60;
/// Default maximum age of the cached set (Sigil's `cache_max_age_seconds`).
const DEFAULT_MAX_AGE: i64 = 300;

/// Where a [`CachingVerifier`] gets the key set (e.g. a gRPC
/// `GetApprovalKeys` call, or an HTTP fetch).
///
/// `fetch` is called synchronously from inside
/// [`CachingVerifier::new`], [`CachingVerifier::verify`] and
/// [`CachingVerifier::verify_for`], at most once per call, so it should give
/// up after a bounded time (a request timeout). An `Err` is a message for
/// the engine's logs; the verifier then keeps its previous set.
///
/// Any `Fn() -> Result<JwkSet, String> + Send + Sync` closure is a key
/// source.
pub trait KeySource: Send + Sync {
    /// Fetches Sigil's current approval key set.
    fn fetch(&self) -> Result<JwkSet, String>;
}

impl<F: Fn() -> Result<JwkSet, String> + Send + Sync> KeySource for F {
    fn fetch(&self) -> Result<JwkSet, String> {
        self()
    }
}

/// The key set in use, as a verifier.
struct Current {
    verifier: Arc<Verifier>,
    /// When the set was loaded (the `now_unix` of the verification that
    /// fetched it); `None` for the set fetched at construction until the
    /// first verification, whose clock then stands in for it.
    loaded_at: Option<i64>,
}

/// Why a refresh is considered.
#[derive(Clone, Copy)]
enum Reason<'a> {
    /// The cached set is older than the maximum age.
    Stale,
    /// The token names this kid, which the cached set does not list.
    UnknownKid(&'a str),
}

/// Verifies approvals like [`Verifier`], against a key set it fetches from
/// a [`KeySource`] and keeps up to date: when a token names a `kid` the
/// cached set does not list (Sigil has published a new key), and when the
/// cached set is older than its maximum age (to learn that a key was
/// retired). See the crate documentation, "Caching the key set".
///
/// It is `Send + Sync` (when the source is): share one per engine, e.g. in
/// an [`Arc`]. Verifications of tokens whose key is already cached never
/// wait for a fetch in progress.
pub struct CachingVerifier<S: KeySource> {
    source: S,
    issuer: String,
    audience: String,
    /// `None`: [`Verifier`]'s default.
    leeway: Option<i64>,
    min_refresh_interval: i64,
    max_age: i64,
    current: RwLock<Current>,
    /// The `now_unix` of the last refresh attempt (successful or not) after
    /// construction; held while fetching, so that refreshes do not overlap.
    last_refresh: Mutex<Option<i64>>,
    fetches: AtomicU64,
}

/// `true` when at least `interval` seconds have passed from `since` to
/// `now` (or there is no `since`). A clock that went back by more than
/// `interval` also counts, so that a stepped-back clock cannot freeze the
/// cache.
fn elapsed(since: Option<i64>, now: i64, interval: i64) -> bool {
    since.is_none_or(|since| {
        let d = now.saturating_sub(since);
        d >= interval || d < interval.saturating_neg()
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: KeySource> CachingVerifier<S> {
    /// A caching verifier for approvals issued by `issuer` for `audience`,
    /// whose keys come from `source`.
    ///
    /// Fetches the set once, now; the error is the fetch's (as
    /// [`VerifyError::Malformed`]) or [`Verifier::new`]'s. This first fetch
    /// does not count against the refresh interval, and the set's age is
    /// counted from the first verification.
    pub fn new(source: S, issuer: &str, audience: &str) -> Result<Self, VerifyError> {
        let set = source
            .fetch()
            .map_err(|e| VerifyError::Malformed(format!("cannot fetch the approval key set: {}", short_message(&e))))?;
        let verifier = Verifier::new(&set, issuer, audience)?;
        Ok(CachingVerifier {
            source,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: None,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            max_age: DEFAULT_MAX_AGE,
            current: RwLock::new(Current {
                verifier: Arc::new(verifier),
                loaded_at: None,
            }),
            last_refresh: Mutex::new(None),
            fetches: AtomicU64::new(1),
        })
    }

    /// Sets the clock leeway applied to `exp`, `nbf` and `iat` (default 30
    /// seconds), as [`Verifier::with_leeway`]. A negative value is taken as 0.
    pub fn with_leeway(mut self, seconds: i64) -> Self {
        self.leeway = Some(seconds.max(0));
        let current = self.current.get_mut().unwrap_or_else(PoisonError::into_inner);
        current.verifier = Arc::new(Verifier::clone(&current.verifier).with_leeway(seconds));
        self
    }

    /// Minimum seconds between two refreshes (default 60). A refresh for an
    /// unknown `kid` happens only if the last one is at least this old, so a
    /// flood of tokens with forged kids causes at most one fetch per
    /// interval; a failing source is retried at most once per interval too.
    /// A negative value is taken as 0 (no limit).
    pub fn with_min_refresh_interval(mut self, seconds: i64) -> Self {
        self.min_refresh_interval = seconds.max(0);
        self
    }

    /// Maximum age of the cached set before a refresh on the next verify
    /// (default 300; use the server's `cache_max_age_seconds`). This is how
    /// the verifier learns that a key it knows was retired. A negative value
    /// is taken as 0.
    pub fn with_max_age(mut self, seconds: i64) -> Self {
        self.max_age = seconds.max(0);
        self
    }

    /// Verifies an approval token at time `now_unix` (Unix seconds) as
    /// [`Verifier::verify`] does, refreshing the key set first when needed:
    ///
    /// - when the cached set is older than the maximum age (and the last
    ///   refresh is older than the minimum refresh interval);
    /// - when the token's `kid` is not in the cached set, if the last
    ///   refresh is older than the minimum refresh interval; the token is
    ///   then checked once against the refreshed set. A `kid` still unknown
    ///   is [`VerifyError::UnknownKey`].
    ///
    /// A `kid` the set marks retired is [`VerifyError::RetiredKey`] and
    /// never causes a refresh; nor does a token whose header is malformed.
    /// A failed fetch, or a fetched set [`Verifier::new`] refuses, keeps the
    /// previous set: known keys keep verifying, unknown kids are refused.
    /// `now_unix` is also the clock of the two intervals.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, VerifyError> {
        self.verifier_for(token, now_unix).verify(token, now_unix)
    }

    /// [`CachingVerifier::verify`], then checks the approved intent against
    /// `expected` as [`Verifier::verify_for`] does.
    pub fn verify_for(&self, token: &str, expected: &Intent, now_unix: i64) -> Result<Claims, VerifyError> {
        self.verifier_for(token, now_unix).verify_for(token, expected, now_unix)
    }

    /// Verifies a delayed approval against a signed cancellation list as
    /// [`Verifier::verify_delayed_for`] does, refreshing the key set first
    /// as [`CachingVerifier::verify`] would for the approval, and again for
    /// the list when the list names a key the set does not know yet (a key
    /// rotated in between).
    pub fn verify_delayed_for(
        &self,
        token: &str,
        expected: &Intent,
        cancellations: &str,
        now_unix: i64,
    ) -> Result<Claims, VerifyError> {
        let mut verifier = self.verifier_for(token, now_unix);
        if let Ok(kid) = cancellations_kid(cancellations) {
            if !verifier.knows_kid(&kid) {
                verifier = self.refresh(now_unix, Reason::UnknownKid(&kid));
            }
        }
        verifier.verify_delayed_for(token, expected, cancellations, now_unix)
    }

    /// Number of fetches so far, including the one at construction and
    /// failed ones (for monitoring and tests).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The verifier to check `token` with, after the refreshes it calls for.
    /// All accept/refuse decisions are the returned [`Verifier`]'s.
    fn verifier_for(&self, token: &str, now: i64) -> Arc<Verifier> {
        let (mut verifier, loaded_at) = self.snapshot(now);
        if elapsed(Some(loaded_at), now, self.max_age) {
            verifier = self.refresh(now, Reason::Stale);
        }
        // A token whose header does not pass the checks names no key worth
        // fetching; the verifier refuses it with the same error as always.
        let Ok(kid) = token_kid(token) else {
            return verifier;
        };
        if verifier.knows_kid(&kid) {
            // Usable, or retired: a refresh cannot un-retire a key.
            return verifier;
        }
        self.refresh(now, Reason::UnknownKid(&kid))
    }

    /// The current verifier and when its set was loaded, stamping the set
    /// fetched at construction with the first clock seen.
    fn snapshot(&self, now: i64) -> (Arc<Verifier>, i64) {
        {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(loaded_at) = current.loaded_at {
                return (Arc::clone(&current.verifier), loaded_at);
            }
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let loaded_at = *current.loaded_at.get_or_insert(now);
        (Arc::clone(&current.verifier), loaded_at)
    }

    /// Refreshes the set if `reason` still holds once no other refresh is
    /// in progress and the rate limit allows it; returns the verifier to
    /// use (the new one, or the current one).
    fn refresh(&self, now: i64, reason: Reason<'_>) -> Arc<Verifier> {
        let mut last_refresh = match reason {
            // Another thread is already refreshing: use the cached set.
            Reason::Stale => match self.last_refresh.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return self.snapshot(now).0,
            },
            // Wait for a refresh in progress: it may bring the key.
            Reason::UnknownKid(_) => lock(&self.last_refresh),
        };
        let (verifier, loaded_at) = self.snapshot(now);
        let still_needed = match reason {
            Reason::Stale => elapsed(Some(loaded_at), now, self.max_age),
            Reason::UnknownKid(kid) => !verifier.knows_kid(kid),
        };
        if !still_needed || !elapsed(*last_refresh, now, self.min_refresh_interval) {
            return verifier;
        }
        *last_refresh = Some(now);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let Ok(set) = self.source.fetch() else {
            return verifier;
        };
        let Ok(fresh) = Verifier::new(&set, &self.issuer, &self.audience) else {
            return verifier;
        };
        let fresh = Arc::new(match self.leeway {
            Some(seconds) => fresh.with_leeway(seconds),
            None => fresh,
        });
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Current {
            verifier: Arc::clone(&fresh),
            loaded_at: Some(now),
        };
        fresh
    }
}

impl<S: KeySource> fmt::Debug for CachingVerifier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("max_age", &self.max_age)
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_handles_clock_steps() {
        assert!(elapsed(None, 0, 60));
        assert!(!elapsed(Some(100), 159, 60));
        assert!(elapsed(Some(100), 160, 60));
        // Small skew backwards (concurrent callers): not elapsed.
        assert!(!elapsed(Some(100), 99, 60));
        assert!(!elapsed(Some(100), 40, 60));
        // A clock stepped back by more than the interval: elapsed.
        assert!(elapsed(Some(100), 39, 60));
        assert!(elapsed(Some(i64::MAX), i64::MIN, 60));
        assert!(elapsed(Some(i64::MIN), i64::MAX, 60));
        assert!(elapsed(Some(5), 5, 0));
    }

    #[test]
    fn caching_verifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CachingVerifier<fn() -> Result<JwkSet, String>>>();
    }
}
