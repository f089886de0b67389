//! Outages and how they heal: the health state of one [`Hsm`], the keys it
//! must be able to use, and the background reconnect loop.
//!
//! An operation that finds the token gone (sessions lost and not reopened,
//! the token absent, a required key no longer visible) marks the handle
//! *down*. From then on every operation fails at once with
//! [`HsmError::Unavailable`] (or [`HsmError::KeyNotFound`] when the token is
//! reachable but a required key is not on it), and one background thread
//! tries to heal with bounded back-off ([`MIN_BACKOFF`] doubling to
//! [`MAX_BACKOFF`]):
//!
//! 1. close the pool's sessions, open a new one, log in, find every required
//!    key;
//! 2. if that fails, finalise and initialise the PKCS#11 module again (some
//!    modules, SoftHSM among them, read their tokens only at `C_Initialize`)
//!    and try step 1 once more.
//!
//! When a step succeeds the handle is *up* again and operations go through.
//! Nothing here ever creates a token or a key: an outage is waited out, not
//! repaired by making new keys.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::context::lock;
use crate::error::{from_pkcs11, At, HsmError};
use crate::hsm::{ensure_logged_in_p11, Hsm};
use crate::keys::KeyKind;

/// First wait before a reconnect attempt.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The health of one HSM handle, as [`Hsm::health`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsmHealth {
    /// Operations go through.
    pub serving: bool,
    /// When the handle last changed between serving and not.
    pub since: SystemTime,
    /// Why it is not serving (no secrets, safe to log and show).
    pub problem: Option<String>,
    /// Outages healed since the handle was opened.
    pub recoveries: u64,
    /// Sessions open in the pool now.
    pub sessions: usize,
}

/// Why a handle is down.
#[derive(Debug, Clone)]
pub(crate) enum Down {
    /// The module, the token or its sessions cannot be reached.
    Unreachable(String),
    /// The token is reachable and logged in, but a required key is not on it.
    KeyMissing(String),
}

/// Mutable health state of one handle.
#[derive(Debug)]
pub(crate) struct Health {
    pub down: Option<Down>,
    /// When `down` last changed (monotonic, for messages) …
    pub changed: Instant,
    /// … and the same moment on the wall clock, for reports.
    pub changed_at: SystemTime,
    pub healer_running: bool,
    pub recoveries: u64,
}

impl Health {
    pub(crate) fn new() -> Self {
        Health {
            down: None,
            changed: Instant::now(),
            changed_at: SystemTime::now(),
            healer_running: false,
            recoveries: 0,
        }
    }
}

impl Hsm {
    /// The handle's health: serving or not, why, and since when.
    pub fn health(&self) -> HsmHealth {
        let h = lock(&self.inner.health);
        HsmHealth {
            serving: h.down.is_none(),
            since: h.changed_at,
            problem: h.down.as_ref().map(|d| match d {
                Down::Unreachable(m) | Down::KeyMissing(m) => m.clone(),
            }),
            recoveries: h.recoveries,
            sessions: self.inner.pool.stats().open,
        }
    }

    /// Declare the keys the service cannot work without: EC private keys it
    /// signs with and AES keys it encrypts with. [`Hsm::probe`] and the
    /// reconnect loop check them, and an operation that no longer finds one
    /// of them is treated as an outage, not as a missing key.
    pub fn set_required_keys(&self, signing: &[&str], encryption: &[&str]) {
        let mut req = lock(&self.inner.required);
        req.clear();
        req.extend(signing.iter().map(|l| (KeyKind::EcPrivate, (*l).to_owned())));
        req.extend(encryption.iter().map(|l| (KeyKind::Aes, (*l).to_owned())));
    }

    /// Whether `label` is one of the required keys.
    pub(crate) fn is_required(&self, label: &str) -> bool {
        lock(&self.inner.required).iter().any(|(_, l)| l == label)
    }

    /// Check now that the token answers and every required key is on it
    /// (a readiness check: one session, a few object searches). Marks the
    /// handle down on failure. While down, returns the outage at once (the
    /// reconnect loop does the checking then).
    ///
    /// # Errors
    /// As [`Hsm::health`]'s problem: [`HsmError::Unavailable`] or
    /// [`HsmError::KeyNotFound`].
    pub fn probe(&self) -> Result<(), HsmError> {
        if let Some(e) = self.outage_error() {
            return Err(e);
        }
        match self.check_required(false) {
            Ok(()) => Ok(()),
            Err(e) => {
                // A required key that was there and vanished says the token
                // went away (some modules show a vanished token as an empty
                // one until re-initialised); the reconnect loop finds out
                // whether the key is really gone from a reachable token.
                let e = match e {
                    HsmError::KeyNotFound(m) => HsmError::Unavailable(format!("{m} any more, though it did before")),
                    other => other,
                };
                self.mark_down(&e);
                Err(self.outage_error().unwrap_or(e))
            }
        }
    }

    /// The error every operation returns while the handle is down.
    pub(crate) fn outage_error(&self) -> Option<HsmError> {
        let h = lock(&self.inner.health);
        let down = h.down.as_ref()?;
        let secs = h.changed.elapsed().as_secs();
        Some(match down {
            Down::Unreachable(why) => HsmError::Unavailable(format!(
                "the HSM is unreachable (token '{}', module {}) since {secs}s ago: {why}; \
                 nothing is signed until it answers again, and Sigil reconnects by itself \
                 (every {}s at most)",
                self.inner.token,
                self.inner.module_path.display(),
                MAX_BACKOFF.as_secs()
            )),
            Down::KeyMissing(why) => HsmError::KeyNotFound(format!(
                "{why}, though the token is reachable (for {secs}s): the key was deleted, the \
                 token was replaced, or the configured label is wrong. Sigil never creates keys \
                 while running: restore the key from the HSM's backup or correct the label \
                 (checked again every {}s)",
                MAX_BACKOFF.as_secs()
            )),
        })
    }

    /// Record an outage (if `e` is one) and start the reconnect loop.
    pub(crate) fn mark_down(&self, e: &HsmError) {
        let down = match e {
            HsmError::Unavailable(m) => Down::Unreachable(m.clone()),
            HsmError::TokenNotFound(m) => Down::Unreachable(m.clone()),
            HsmError::KeyNotFound(m) => Down::KeyMissing(m.clone()),
            _ => return,
        };
        let spawn = {
            let mut h = lock(&self.inner.health);
            if h.down.is_none() {
                tracing::error!(
                    token = %self.inner.token,
                    problem = %e,
                    "HSM outage: refusing everything that needs the HSM and reconnecting in the background"
                );
                h.changed = Instant::now();
                h.changed_at = SystemTime::now();
            }
            h.down = Some(down);
            !std::mem::replace(&mut h.healer_running, true)
        };
        if spawn {
            self.spawn_healer();
        }
    }

    fn mark_up(&self) {
        let mut h = lock(&self.inner.health);
        let was = h.changed.elapsed();
        h.down = None;
        h.changed = Instant::now();
        h.changed_at = SystemTime::now();
        h.recoveries += 1;
        tracing::warn!(
            token = %self.inner.token,
            outage_ms = was.as_millis() as u64,
            "HSM reachable again with every required key; serving"
        );
    }

    fn spawn_healer(&self) {
        let weak = Arc::downgrade(&self.inner);
        let started = std::thread::Builder::new()
            .name("sigil-hsm-heal".into())
            .spawn(move || {
                let mut delay = MIN_BACKOFF;
                loop {
                    std::thread::sleep(delay);
                    // The handle was dropped: nothing left to heal.
                    let Some(inner) = weak.upgrade() else { return };
                    let hsm = Hsm { inner };
                    match hsm.heal_once() {
                        Ok(()) => {
                            let mut h = lock(&hsm.inner.health);
                            h.healer_running = false;
                            drop(h);
                            hsm.mark_up();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(
                                token = %hsm.inner.token,
                                problem = %e,
                                retry_in_ms = (delay * 2).min(MAX_BACKOFF).as_millis() as u64,
                                "HSM still unavailable"
                            );
                            let mut h = lock(&hsm.inner.health);
                            h.down = Some(match e {
                                HsmError::KeyNotFound(m) => Down::KeyMissing(m),
                                other => Down::Unreachable(other.to_string()),
                            });
                        }
                    }
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the HSM reconnect thread; retrying at the next failure");
            lock(&self.inner.health).healer_running = false;
        }
    }

    /// One reconnect attempt: new sessions; else the module afresh.
    fn heal_once(&self) -> Result<(), HsmError> {
        {
            let _entered = self.inner.module.enter();
            let n = self.inner.pool.close_all();
            tracing::debug!(token = %self.inner.token, closed = n, "HSM reconnect: sessions closed");
        }
        self.forget_handles();
        match self.check_required(true) {
            Ok(()) => return Ok(()),
            // The token answers and a key is missing: a module restart does
            // not conjure keys, but a token that came back may be seen only
            // after one, so go on.
            Err(e) => tracing::debug!(token = %self.inner.token, problem = %e, "HSM reconnect: new session failed"),
        }
        self.inner.module.reinitialize()?;
        self.check_required(true)
    }

    /// Open (or, with `fresh`, always open a new) session and check that it
    /// is logged in and that every required key is on the token.
    fn check_required(&self, fresh: bool) -> Result<(), HsmError> {
        let entered = self.inner.module.enter();
        let open = || self.open_session();
        let lease = if fresh {
            self.inner.pool.checkout_fresh(entered.generation, open)?
        } else {
            self.inner.pool.checkout(entered.generation, open)?
        };
        let at = At {
            module: &self.inner.module_path,
            token: Some(&self.inner.token),
            key: None,
            doing: "checking the token and its keys",
        };
        let s = lease.session()?;
        if let Err(e) = ensure_logged_in_p11(s) {
            lease.discard();
            return Err(from_pkcs11(e, at));
        }
        let required = lock(&self.inner.required).clone();
        for (kind, label) in required {
            match s.find_objects(&kind.template(Some(&label))) {
                Ok(found) if found.len() == 1 => {}
                Ok(found) if found.is_empty() => {
                    return Err(HsmError::KeyNotFound(format!(
                        "token '{}' holds no {} labelled '{label}'",
                        self.inner.token,
                        kind.describe()
                    )))
                }
                Ok(found) => {
                    return Err(HsmError::Config(format!(
                        "{} objects of kind {} are labelled '{label}' on token '{}': remove the \
                         duplicates",
                        found.len(),
                        kind.describe(),
                        self.inner.token
                    )))
                }
                Err(e) => {
                    lease.discard();
                    return Err(from_pkcs11(e, at));
                }
            }
        }
        Ok(())
    }
}
