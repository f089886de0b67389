//! The service core: configuration, store, HSM signer and clock together.
//!
//! Operations are synchronous (they block on the HSM and on durable
//! writes); the gRPC layer runs them on blocking threads. Nothing here knows
//! about tonic or protobuf.
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use crate::audit::AuditEntry;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::factor::{self, FactorRecord};
use crate::protect::{self, Snapshot, UserRecord};
use crate::signer::Signer;
use crate::store::{Batch, Op, Store, Table, Versioned};

/// One Sigil instance.
pub struct Sigil {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) signer: Signer,
    pub(crate) clock: Arc<dyn Clock>,
    rng: SystemRandom,
    events: tokio::sync::Notify,
    closing: std::sync::atomic::AtomicBool,
    pub(crate) webauthn: crate::factor::webauthn::Webauthn,
    /// The deny-list of the server serving this Sigil, once one started.
    pub(crate) deny_list: std::sync::RwLock<Option<Arc<crate::denylist::DenyListHandle>>>,
}

impl Sigil {
    /// Assembles a Sigil from its parts.
    pub fn new(cfg: Config, store: Arc<dyn Store>, signer: Signer, clock: Arc<dyn Clock>) -> Result<Sigil, Error> {
        let webauthn = crate::factor::webauthn::Webauthn::new(&cfg.webauthn)?;
        let s = Sigil::assemble(cfg, store, signer, clock, webauthn);
        s.start()?;
        Ok(s)
    }

    fn assemble(
        cfg: Config,
        store: Arc<dyn Store>,
        signer: Signer,
        clock: Arc<dyn Clock>,
        webauthn: crate::factor::webauthn::Webauthn,
    ) -> Sigil {
        Sigil {
            cfg,
            store,
            signer,
            clock,
            rng: SystemRandom::new(),
            events: tokio::sync::Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            webauthn,
            deny_list: std::sync::RwLock::new(None),
        }
    }

    /// Like [`Sigil::new`], with WebAuthn attestation roots given as PEM text
    /// (tests and embedded deployments) instead of the configured files.
    pub fn with_attestation_roots(
        cfg: Config,
        store: Arc<dyn Store>,
        signer: Signer,
        clock: Arc<dyn Clock>,
        roots_pem: &[String],
    ) -> Result<Sigil, Error> {
        let webauthn = crate::factor::webauthn::Webauthn::with_attestation_roots(&cfg.webauthn, roots_pem)?;
        let s = Sigil::assemble(cfg, store, signer, clock, webauthn);
        s.start()?;
        Ok(s)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The signer (keys, JWKS).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Marks the service as shutting down: long-lived streams end (clients
    /// resume from their cursor elsewhere or after the restart).
    pub fn begin_shutdown(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.events.notify_waiters();
    }

    /// True once shutdown began.
    pub fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Woken whenever events are appended (for `WatchEvents`).
    pub fn event_signal(&self) -> &tokio::sync::Notify {
        &self.events
    }

    /// Commits a batch; wakes event watchers when it appended events.
    pub(crate) fn commit(&self, batch: &Batch) -> Result<Vec<u64>, Error> {
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
    pub(crate) fn audit_refusal(&self, entry: AuditEntry, mut extra: Batch) {
        let res = entry.append_to(&mut extra).and_then(|_| self.commit(&extra));
        if let Err(e) = res {
            tracing::error!(error = %e, action = %entry.action, "could not audit a refusal");
        }
    }

    /// Protection state of a user.
    pub(crate) fn snapshot(&self, user_id: &str) -> Result<Snapshot, Error> {
        Snapshot::load(self.store.as_ref(), user_id)
    }

    /// Adds the write of a user's new protection record, conditional on the
    /// version read in `snap`.
    pub(crate) fn put_user(
        &self,
        batch: &mut Batch,
        user_id: &str,
        snap: &Snapshot,
        rec: &UserRecord,
    ) -> Result<(), Error> {
        let mut rec = rec.clone();
        rec.v = 1;
        let bytes = protect::encode(&rec)?;
        // This write is conditional on the same version: it subsumes a
        // check of the record added earlier to the batch (e.g. by a step-up).
        let key = user_id.as_bytes();
        batch.ops.retain(
            |op| !matches!(op, Op::Check { table: Table::Users, key: k, version } if k.as_slice() == key && *version == snap.user_version),
        );
        if snap.user_version == 0 {
            batch.insert(Table::Users, user_id.as_bytes(), bytes);
        } else {
            batch.update(Table::Users, user_id.as_bytes(), snap.user_version, bytes);
        }
        Ok(())
    }

    /// Adds a check that the global record is unchanged since `snap`.
    pub(crate) fn check_global(&self, batch: &mut Batch, snap: &Snapshot) {
        batch.check(Table::Meta, protect::GLOBAL_KEY, snap.global_version);
    }

    /// Adds checks that the global and the user's records are unchanged since `snap`.
    pub(crate) fn check_snapshot(&self, batch: &mut Batch, user_id: &str, snap: &Snapshot) {
        self.check_global(batch, snap);
        batch.check(Table::Users, user_id.as_bytes(), snap.user_version);
    }

    /// A factor's secret, decrypted in the HSM with the key that wrapped it.
    pub(crate) fn factor_secret(&self, f: &FactorRecord) -> Result<crate::signer::SecretBytes, Error> {
        let wrapped = f
            .secret
            .as_ref()
            .ok_or_else(|| Error::Internal(format!("factor '{}' has no stored secret", f.factor_id)))?;
        self.signer
            .unwrap_secret(wrapped, &secret_aad(&f.user_id, &f.factor_id))
    }

    /// The factor with its secret re-encrypted under the AES key `to`.
    pub(crate) fn rewrapped(&self, f: &FactorRecord, to: &str) -> Result<FactorRecord, Error> {
        let plain = self.factor_secret(f)?;
        let mut moved = f.clone();
        moved.secret = Some(
            self.signer
                .wrap_with(to, &plain, &secret_aad(&f.user_id, &f.factor_id))?,
        );
        Ok(moved)
    }

    /// A user's confirmed, unrevoked factors.
    pub(crate) fn live_factors(&self, user_id: &str, snap: &Snapshot) -> Result<Vec<(FactorRecord, u64)>, Error> {
        Ok(self
            .factors_of(user_id)?
            .into_iter()
            .filter(|(f, _)| f.is_active() && f.is_live(snap.epochs()))
            .collect())
    }

    /// Startup: deployment id, published keys, secrets key.
    fn start(&self) -> Result<(), Error> {
        if self.store.get(Table::Meta, DEPLOYMENT_KEY)?.is_none() {
            let mut b = Batch::new();
            b.insert(
                Table::Meta,
                DEPLOYMENT_KEY,
                sigil_verify::b64url::encode(&self.random(16)?).into_bytes(),
            );
            match self.store.commit(&b) {
                Ok(_) | Err(crate::store::StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.sync_keys()?;
        self.sync_secrets_key()
    }

    /// This deployment's id (random, made when the store was created; a
    /// restore checks the backup came from the same deployment).
    pub fn deployment_id(&self) -> Result<String, Error> {
        let v = self
            .store
            .get(Table::Meta, DEPLOYMENT_KEY)?
            .ok_or_else(|| Error::Internal("store has no deployment id".into()))?;
        String::from_utf8(v.value).map_err(|_| Error::Internal("deployment id unreadable".into()))
    }

    /// The service clock's current time.
    pub fn clock_now(&self) -> Result<i64, Error> {
        self.clock.now()
    }

    pub(crate) fn now(&self) -> Result<i64, Error> {
        self.clock.now()
    }

    /// `n` random bytes from the operating system's CSPRNG.
    pub(crate) fn random(&self, n: usize) -> Result<Vec<u8>, Error> {
        let mut b = vec![0u8; n];
        self.rng
            .fill(&mut b)
            .map_err(|_| Error::Unavailable("the system random generator failed".into()))?;
        Ok(b)
    }

    /// A random id with a readable prefix: `prefix` + 22 base64url chars.
    pub(crate) fn new_id(&self, prefix: &str) -> Result<String, Error> {
        Ok(format!("{prefix}{}", sigil_verify::b64url::encode(&self.random(16)?)))
    }

    /// Every factor of a user with its stored version.
    pub(crate) fn factors_of(&self, user_id: &str) -> Result<Vec<(FactorRecord, u64)>, Error> {
        self.store
            .scan_prefix(factor::TABLE, &factor::user_prefix(user_id))?
            .into_iter()
            .map(|(_, v)| Ok((FactorRecord::decode(&v)?, v.version)))
            .collect()
    }

    /// One factor of a user, or NOT_FOUND.
    pub(crate) fn factor(&self, user_id: &str, factor_id: &str) -> Result<(FactorRecord, u64), Error> {
        let v: Versioned = self
            .store
            .get(factor::TABLE, &FactorRecord::key(user_id, factor_id))?
            .ok_or_else(|| Error::NotFound(format!("factor '{factor_id}' of user '{user_id}' not found")))?;
        Ok((FactorRecord::decode(&v)?, v.version))
    }
}

/// Meta key of the deployment id.
pub const DEPLOYMENT_KEY: &[u8] = b"deployment";

/// Additional authenticated data binding an encrypted secret to its factor.
pub(crate) fn secret_aad(user_id: &str, factor_id: &str) -> Vec<u8> {
    let mut aad = b"sigil-secret-v1\0".to_vec();
    aad.extend_from_slice(user_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(factor_id.as_bytes());
    aad
}
