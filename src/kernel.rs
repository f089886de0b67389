//! What every domain service shares: the store, the HSM signer, the clock,
//! the random generator and the event signal.
//!
//! A [`Kernel`] knows nothing of factors, approvals or protections; the
//! domain services ([`crate::factor::Factors`],
//! [`crate::approval::Approvals`], ...) each hold an `Arc<Kernel>` and the
//! configuration sections they use.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use crate::audit::AuditEntry;
use crate::clock::Clock;
use crate::error::Error;
use crate::signer::Signer;
use crate::store::{meta, Batch, Op, Store, Table};

/// The shared parts of one Sigil instance.
pub struct Kernel {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The HSM signer (approval keys, secrets key, audit key).
    pub signer: Signer,
    /// The service clock.
    pub clock: Arc<dyn Clock>,
    rng: SystemRandom,
    events: tokio::sync::Notify,
    closing: AtomicBool,
}

impl Kernel {
    /// Assembles a kernel and makes sure the store has a deployment id.
    pub fn new(store: Arc<dyn Store>, signer: Signer, clock: Arc<dyn Clock>) -> Result<Kernel, Error> {
        let k = Kernel {
            store,
            signer,
            clock,
            rng: SystemRandom::new(),
            events: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
        };
        // The store and the HSM must belong to one deployment: a store is
        // bound to the audit key of the HSM it was created with, and a
        // store of another deployment is refused before anything is written.
        let kid = k.signer.audit_jwk().kid.clone();
        let deployment = k.store.get(Table::Meta, meta::DEPLOYMENT)?;
        match k.store.get(Table::Meta, meta::AUDIT_KEY_ID)? {
            Some(v) if v.value != kid.as_bytes() => {
                return Err(Error::invalid(
                    "store",
                    format!(
                        "the store belongs to another deployment: it was created with an HSM whose audit key is {}, \
                         this HSM's is {kid}; check [store] (path or connection string) and [hsm] (nothing was written)",
                        String::from_utf8_lossy(&v.value)
                    ),
                ));
            }
            Some(_) => {}
            None => {
                let mut b = Batch::new();
                if deployment.is_none() {
                    b.insert(
                        Table::Meta,
                        meta::DEPLOYMENT,
                        sigil_verify::b64url::encode(&k.random(16)?).into_bytes(),
                    );
                    // A new store indexes the expiry of every record from
                    // its first one.
                    b.insert(Table::Meta, meta::EXPIRY_INDEXED, b"1".to_vec());
                }
                // Stores made before the binding get it on their first start.
                b.insert(Table::Meta, meta::AUDIT_KEY_ID, kid.into_bytes());
                match k.store.commit(&b) {
                    Ok(_) | Err(crate::store::StoreError::Conflict) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(k)
    }

    /// Marks the service as shutting down: long-lived streams end (clients
    /// resume from their cursor elsewhere or after the restart).
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.events.notify_waiters();
    }

    /// True once shutdown began.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Woken whenever events are appended (for `WatchEvents`).
    pub fn event_signal(&self) -> &tokio::sync::Notify {
        &self.events
    }

    /// Commits a batch; wakes event watchers when it appended events.
    pub fn commit(&self, batch: &Batch) -> Result<Vec<u64>, Error> {
        let seqs = crate::store::commit_collected(self.store.as_ref(), batch)?;
        if batch
            .ops
            .iter()
            .any(|o| matches!(o, Op::Append { log: Table::Events, .. }))
        {
            self.events.notify_waiters();
        }
        Ok(seqs)
    }

    /// Records a refusal in the audit log (with `extra` writes, e.g. a
    /// device signal), best effort: the refusal stands even if this fails.
    pub fn audit_refusal(&self, entry: AuditEntry, mut extra: Batch) {
        let res = entry.append_to(&mut extra).and_then(|_| self.commit(&extra));
        if let Err(e) = res {
            tracing::error!(error = %e, action = %entry.action, "could not audit a refusal");
        }
    }

    /// This deployment's id (random, made when the store was created; a
    /// restore checks the backup came from the same deployment).
    pub fn deployment_id(&self) -> Result<String, Error> {
        let v = self
            .store
            .get(Table::Meta, meta::DEPLOYMENT)?
            .ok_or_else(|| Error::Internal("store has no deployment id".into()))?;
        String::from_utf8(v.value).map_err(|_| Error::Internal("deployment id unreadable".into()))
    }

    /// The service clock's current time.
    pub fn now(&self) -> Result<i64, Error> {
        self.clock.now()
    }

    /// `n` random bytes from the operating system's CSPRNG.
    pub fn random(&self, n: usize) -> Result<Vec<u8>, Error> {
        let mut b = vec![0u8; n];
        self.rng
            .fill(&mut b)
            .map_err(|_| Error::Unavailable("the system random generator failed".into()))?;
        Ok(b)
    }

    /// A random id with a readable prefix: `prefix` + 22 base64url chars.
    pub fn new_id(&self, prefix: &str) -> Result<String, Error> {
        Ok(format!("{prefix}{}", sigil_verify::b64url::encode(&self.random(16)?)))
    }

    /// A random id that also says when it was made (`prefix`, the time
    /// `now` as 10 hex digits, 22 base64url chars), for the records the
    /// embedded store keeps grouped by second
    /// ([`crate::store::record_groups`]): challenges and approvals.
    pub fn new_timed_id(&self, prefix: &str, now: i64) -> Result<String, Error> {
        Ok(crate::store::record_groups::timed_id(prefix, now, &self.random(16)?))
    }
}
