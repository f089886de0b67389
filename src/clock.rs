//! Time as a parameter.
//!
//! Domain code never reads the system clock directly: it asks a [`Clock`].
//! The server uses [`SystemClock`]; tests use [`TestClock`] and move it to
//! exercise expiry, TOTP steps and lockouts without sleeping.
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Earliest time Sigil accepts from a clock (2024-01-01T00:00:00Z). A clock
/// that reports an earlier time is broken, and Sigil refuses to approve.
pub const EARLIEST_TRUSTED: i64 = 1_704_067_200;

/// A source of Unix time in seconds.
pub trait Clock: Send + Sync {
    /// Current Unix time in seconds, or an error when the clock cannot be
    /// trusted (Sigil fails closed on it).
    fn now(&self) -> Result<i64, Error>;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Result<i64, Error> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Unavailable("system clock is before 1970: refusing to approve".into()))?
            .as_secs();
        let secs = i64::try_from(secs)
            .map_err(|_| Error::Unavailable("system clock out of range: refusing to approve".into()))?;
        if secs < EARLIEST_TRUSTED {
            return Err(Error::Unavailable(
                "system clock reads a time before 2024: refusing to approve until it is fixed".into(),
            ));
        }
        Ok(secs)
    }
}

/// A clock that only moves when told to. For tests and benchmarks.
#[derive(Debug)]
pub struct TestClock(AtomicI64);

impl TestClock {
    /// A clock showing `start` (Unix seconds).
    pub fn new(start: i64) -> Self {
        Self(AtomicI64::new(start))
    }

    /// Moves the clock forward (or back, with a negative value).
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }

    /// The time it shows.
    pub fn now_secs(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the clock.
    pub fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Result<i64, Error> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}
