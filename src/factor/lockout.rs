//! Lockout after failed attempts (NIST SP 800-63B §5.2.2).
//!
//! Each factor counts consecutive failures. The count is stored with the
//! factor and written durably before the failure is reported.
//!
//! ```text
//!            failure (count < max)
//!          ┌───────────────┐
//!          ▼               │
//!   ┌────────────┐  failure (count reaches max)   ┌──────────────────────┐
//!   │  Open      │ ─────────────────────────────▶ │ Locked until now + d │
//!   │ (count n)  │ ◀───────────────────────────── │ d = base·2^(n-max)   │
//!   └────────────┘       success (count = 0)      └──────────────────────┘
//!          ▲                                  lock ends: one attempt allowed;
//!          └──────────────────────────────────  another failure locks again,
//!                                               twice as long (capped)
//! ```
//!
//! While locked, attempts are refused without being checked (so a locked
//! factor gives an attacker no oracle) and do not extend the lock.

use crate::error::Error;
use serde::Deserialize;

/// Refuses if the factor is locked at `now`.
pub fn check(locked_until: i64, now: i64, what: &str) -> Result<(), Error> {
    if now < locked_until {
        let retry_after = u64::try_from(locked_until - now).unwrap_or(1).max(1);
        return Err(Error::Locked {
            what: what.to_string(),
            retry_after,
            until: locked_until,
        });
    }
    Ok(())
}

/// The new (failures, locked_until) after one more failure at `now`.
pub fn on_failure(cfg: &LockoutConfig, failures: u32, now: i64) -> (u32, i64) {
    let failures = failures.saturating_add(1);
    if failures < cfg.max_failures {
        return (failures, 0);
    }
    let doublings = (failures - cfg.max_failures).min(30);
    let secs = cfg.base_seconds.saturating_mul(1u64 << doublings).min(cfg.max_seconds);
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    (failures, now.saturating_add(secs))
}

/// Attempts left before the factor locks.
pub fn attempts_left(cfg: &LockoutConfig, failures: u32) -> u32 {
    cfg.max_failures.saturating_sub(failures)
}

/// `[lockout]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Consecutive failures before a factor locks.
    pub max_failures: u32,
    /// First lock duration, seconds; doubles with every further failure.
    pub base_seconds: u64,
    /// Longest lock, seconds.
    pub max_seconds: u64,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            base_seconds: 30,
            max_seconds: 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_at_max_and_backs_off() {
        let cfg = LockoutConfig {
            max_failures: 5,
            base_seconds: 30,
            max_seconds: 3600,
        };
        let mut f = 0;
        for _ in 0..4 {
            let until;
            (f, until) = on_failure(&cfg, f, 1000);
            assert_eq!(until, 0);
        }
        let mut until;
        (f, until) = on_failure(&cfg, f, 1000);
        assert_eq!((f, until), (5, 1030));
        assert!(check(until, 1029, "x").is_err());
        assert!(check(until, 1030, "x").is_ok());
        (f, until) = on_failure(&cfg, f, 1030);
        assert_eq!(until, 1090);
        for _ in 0..20 {
            (f, until) = on_failure(&cfg, f, 0);
        }
        assert_eq!(until, 3600);
        match check(3600, 3000, "factor f") {
            Err(Error::Locked { retry_after, .. }) => assert_eq!(retry_after, 600),
            other => panic!("expected lock, got {other:?}"),
        }
    }
}
