//! A fixed-size pool of logged-in PKCS#11 sessions.
//!
//! A cryptoki [`Session`] is `Send` but not `Sync`: one thread at a time.
//! The pool hands a session out to one caller ([`Lease`]), which gives it
//! back on drop. Sessions are opened lazily up to `size`; a session that saw
//! a PKCS#11 error is discarded (closed) rather than returned, and its place
//! is refilled by the next checkout.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::session::Session;

use crate::context::lock;
use crate::error::HsmError;

/// How long a caller waits for a free session before failing closed.
pub(crate) const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Pool {
    size: usize,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Session>,
    /// Sessions that exist (idle + leased + being opened).
    open: usize,
    /// Bumped by [`Pool::close_all`]; leases from an older generation are
    /// closed instead of returned.
    generation: u64,
    /// The module initialisation the sessions belong to (see
    /// `Module::enter`). Sessions of an earlier one died with `C_Finalize`:
    /// they are abandoned, never closed (their handle numbers may already
    /// name new sessions).
    module_gen: u64,
}

impl State {
    /// Takes every idle session out of the pool's count.
    fn take_idle(&mut self) -> Vec<Session> {
        let idle = std::mem::take(&mut self.idle);
        self.open -= idle.len();
        idle
    }
}

/// A session checked out of the pool.
pub(crate) struct Lease<'p> {
    pool: &'p Pool,
    session: Option<Session>,
    generation: u64,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Self {
        Pool {
            size,
            state: Mutex::new(State {
                idle: Vec::with_capacity(size),
                open: 0,
                generation: 0,
                module_gen: 0,
            }),
            freed: Condvar::new(),
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The pool's sessions at this instant.
    pub(crate) fn stats(&self) -> PoolStats {
        let st = lock(&self.state);
        PoolStats {
            size: self.size,
            open: st.open,
            idle: st.idle.len(),
        }
    }

    /// An idle session, or a new one from `open` if the pool has room;
    /// otherwise wait up to [`CHECKOUT_TIMEOUT`] for one to come back.
    /// `module_gen` is the module initialisation the caller is inside.
    pub(crate) fn checkout(
        &self,
        module_gen: u64,
        open: impl FnOnce() -> Result<Session, HsmError>,
    ) -> Result<Lease<'_>, HsmError> {
        self.checkout_inner(true, module_gen, open)
    }

    /// Like [`Pool::checkout`] but always opens a new session (used to retry
    /// after a session loss: the idle ones may be dead too).
    pub(crate) fn checkout_fresh(
        &self,
        module_gen: u64,
        open: impl FnOnce() -> Result<Session, HsmError>,
    ) -> Result<Lease<'_>, HsmError> {
        self.checkout_inner(false, module_gen, open)
    }

    fn checkout_inner(
        &self,
        reuse: bool,
        module_gen: u64,
        open: impl FnOnce() -> Result<Session, HsmError>,
    ) -> Result<Lease<'_>, HsmError> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut st = lock(&self.state);
        if st.module_gen != module_gen {
            // The module was finalised and initialised again since these
            // sessions were opened: they no longer exist in the HSM.
            let dead = st.take_idle();
            st.module_gen = module_gen;
            st.generation += 1;
            for s in dead {
                std::mem::forget(s);
            }
        }
        loop {
            if reuse {
                if let Some(session) = st.idle.pop() {
                    return Ok(Lease {
                        pool: self,
                        session: Some(session),
                        generation: st.generation,
                    });
                }
            } else if st.open >= self.size {
                // Make room by closing an idle session, if any.
                if let Some(old) = st.idle.pop() {
                    st.open -= 1;
                    drop(st);
                    close_quietly(old);
                    st = lock(&self.state);
                    continue;
                }
            }
            if st.open < self.size {
                st.open += 1;
                let generation = st.generation;
                drop(st);
                return match open() {
                    Ok(session) => Ok(Lease {
                        pool: self,
                        session: Some(session),
                        generation,
                    }),
                    Err(e) => {
                        lock(&self.state).open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HsmError::Busy(format!(
                    "all {} HSM sessions stayed busy for {}s: the HSM is slow or hung; raise \
                     pool_size or check the HSM",
                    self.size,
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Close every idle session now and every leased one when it comes back.
    /// Returns how many sessions were closed now.
    pub(crate) fn close_all(&self) -> usize {
        let idle = {
            let mut st = lock(&self.state);
            st.generation += 1;
            st.take_idle()
        };
        let n = idle.len();
        for s in idle {
            close_quietly(s);
        }
        self.freed.notify_all();
        n
    }

    /// Empty the pool for good: idle sessions of module initialisation
    /// `module_gen` are closed, older ones forgotten. Call inside the module.
    pub(crate) fn drain(&self, module_gen: u64) {
        let (idle, current) = {
            let mut st = lock(&self.state);
            (st.take_idle(), st.module_gen == module_gen)
        };
        for s in idle {
            if current {
                close_quietly(s);
            } else {
                std::mem::forget(s);
            }
        }
    }

    /// Forget every idle session without closing it (after a session loss:
    /// their handle numbers may already name new sessions).
    pub(crate) fn abandon_idle(&self) {
        let dead = lock(&self.state).take_idle();
        for s in dead {
            std::mem::forget(s);
        }
        self.freed.notify_all();
    }

    fn give_back(&self, session: Session, generation: u64) {
        let mut st = lock(&self.state);
        if generation == st.generation {
            st.idle.push(session);
            drop(st);
        } else {
            st.open -= 1;
            drop(st);
            close_quietly(session);
        }
        self.freed.notify_one();
    }

    fn forget(&self, session: Session) {
        lock(&self.state).open -= 1;
        close_quietly(session);
        self.freed.notify_one();
    }
}

/// How many sessions a pool holds at one instant ([`crate::Hsm::sessions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// The most sessions the pool may hold (`pool_size`).
    pub size: usize,
    /// Sessions that exist: idle, in use, or being opened.
    pub open: usize,
    /// Sessions waiting in the pool for a caller.
    pub idle: usize,
}

fn close_quietly(session: Session) {
    // A lost session cannot be closed; that is expected here.
    if let Err(e) = session.close() {
        tracing::debug!(error = %e, "closing a PKCS#11 session failed (ignored)");
    }
}

impl Lease<'_> {
    /// The leased session.
    ///
    /// # Errors
    /// Never in practice: the session is only taken out by `discard`, which
    /// consumes the lease.
    pub(crate) fn session(&self) -> Result<&Session, HsmError> {
        self.session
            .as_ref()
            .ok_or_else(|| HsmError::Unavailable("internal error: empty session lease".into()))
    }

    /// Forget a lost session: neither returned nor closed (its handle
    /// number may already name a new session).
    pub(crate) fn abandon(mut self) {
        if let Some(s) = self.session.take() {
            lock(&self.pool.state).open -= 1;
            std::mem::forget(s);
            self.pool.freed.notify_one();
        }
    }

    /// Close the session instead of returning it to the pool.
    pub(crate) fn discard(mut self) {
        if let Some(s) = self.session.take() {
            self.pool.forget(s);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.give_back(s, self.generation);
        }
    }
}
