//! The composition root: one Sigil instance assembled from its services.
//!
//! [`Sigil`] owns the configuration and builds, bottom up, the
//! [`Kernel`] (store, HSM signer, clock), then the factor, approval,
//! enrollment, operation and key services, each given the configuration
//! sections it uses. It adds no behaviour of its own beyond start-up, the
//! background sweep and the deny-list of the server serving it. Operations
//! are synchronous (they block on the HSM and on durable writes); the gRPC
//! layer runs them on blocking threads. Nothing here knows about tonic or
//! protobuf.
use std::sync::{Arc, RwLock};

use crate::approval::{Approvals, ApprovalsConfig};
use crate::clock::Clock;
use crate::config::Config;
use crate::denylist::DenyListHandle;
use crate::enroll::{EnrollConfig, Enrollment};
use crate::error::{Error, Reason};
use crate::factor::webauthn::Webauthn;
use crate::factor::{Factors, FactorsConfig};
use crate::kernel::Kernel;
use crate::keys::{Keys, KeysConfig};
use crate::ops::{Ops, OpsConfig};
use crate::signer::Signer;
use crate::store::Store;

/// One Sigil instance.
pub struct Sigil {
    cfg: Config,
    k: Arc<Kernel>,
    factors: Arc<Factors>,
    approvals: Arc<Approvals>,
    enroll: Enrollment,
    ops: Ops,
    keys: Keys,
    /// The deny-list of the server serving this Sigil, once one started.
    deny_list: RwLock<Option<Arc<DenyListHandle>>>,
}

impl Sigil {
    /// Assembles a Sigil from its parts.
    pub fn new(cfg: Config, store: Arc<dyn Store>, signer: Signer, clock: Arc<dyn Clock>) -> Result<Sigil, Error> {
        let webauthn = Webauthn::new(&cfg.webauthn)?;
        Sigil::assemble(cfg, store, signer, clock, webauthn)
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
        let webauthn = Webauthn::with_attestation_roots(&cfg.webauthn, roots_pem)?;
        Sigil::assemble(cfg, store, signer, clock, webauthn)
    }

    fn assemble(
        cfg: Config,
        store: Arc<dyn Store>,
        signer: Signer,
        clock: Arc<dyn Clock>,
        webauthn: Webauthn,
    ) -> Result<Sigil, Error> {
        let k = Arc::new(Kernel::new(store, signer, clock)?);
        let factors = Arc::new(Factors::new(
            k.clone(),
            FactorsConfig {
                lockout: cfg.lockout.clone(),
                totp: cfg.totp.clone(),
            },
            webauthn,
        ));
        let approvals = Arc::new(Approvals::new(
            k.clone(),
            factors.clone(),
            ApprovalsConfig {
                approval: cfg.approval.clone(),
                protection: cfg.protection.clone(),
                policy: cfg.policy.clone(),
                assets: cfg.asset_rules(),
                quorum: cfg.quorum.clone(),
            },
        ));
        let enroll = Enrollment::new(
            k.clone(),
            factors.clone(),
            approvals.clone(),
            EnrollConfig {
                protection: cfg.protection.clone(),
                totp: cfg.totp.clone(),
            },
        );
        let ops = Ops::new(
            k.clone(),
            factors.clone(),
            approvals.clone(),
            OpsConfig {
                protection: cfg.protection.clone(),
                assets: cfg.asset_rules(),
                policy: cfg.policy.clone(),
                retention: cfg.retention.clone(),
            },
        );
        let keys = Keys::new(
            k.clone(),
            factors.clone(),
            KeysConfig {
                approval: cfg.approval.clone(),
                hsm: cfg.hsm.clone(),
            },
        );
        let s = Sigil {
            cfg,
            k,
            factors,
            approvals,
            enroll,
            ops,
            keys,
            deny_list: RwLock::new(None),
        };
        s.keys.sync_keys()?;
        s.keys.sync_secrets_key()?;
        s.approvals.init_policy()?;
        Ok(s)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The shared kernel (store, signer, clock).
    pub fn kernel(&self) -> &Kernel {
        &self.k
    }

    /// The signer (keys, JWKS).
    pub fn signer(&self) -> &Signer {
        &self.k.signer
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.k.store
    }

    /// Factors: records and proof checks.
    pub fn factors(&self) -> &Factors {
        &self.factors
    }

    /// Approvals: begin, complete, redeem.
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// Enrolling, listing and removing factors.
    pub fn enroll(&self) -> &Enrollment {
        &self.enroll
    }

    /// Whitelist, anti-phishing code, revocation, suspension, logs.
    pub fn ops(&self) -> &Ops {
        &self.ops
    }

    /// Approval-key rotation and the secrets key.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Marks the service as shutting down: long-lived streams end.
    pub fn begin_shutdown(&self) {
        self.k.begin_shutdown()
    }

    /// True once shutdown began.
    pub fn is_closing(&self) -> bool {
        self.k.is_closing()
    }

    /// Woken whenever events are appended (for `WatchEvents`).
    pub fn event_signal(&self) -> &tokio::sync::Notify {
        self.k.event_signal()
    }

    /// This deployment's id.
    pub fn deployment_id(&self) -> Result<String, Error> {
        self.k.deployment_id()
    }

    /// The service clock's current time.
    pub fn clock_now(&self) -> Result<i64, Error> {
        self.k.now()
    }

    /// Writes a consistent backup of the store to `out`. Returns its
    /// header and size.
    pub fn backup(&self, out: &mut dyn std::io::Write) -> Result<(crate::backup::Header, u64), Error> {
        crate::backup::backup(&self.k, out)
    }

    /// Whether Sigil can serve now: the store can write and the HSM
    /// answers with every key serving needs. Health follows this.
    pub fn ready(&self) -> Result<(), Error> {
        self.store().ready()?;
        self.signer().ready()
    }

    /// Background work due at the current time: purge expired records,
    /// announce addresses whose hold ended, prune the logs as `[retention]`
    /// says, apply key transitions, and sign an audit checkpoint when the
    /// log grew. Returns the number of addresses announced.
    pub fn sweep(&self) -> Result<usize, Error> {
        // Held requests (expiry, policy activation) are swept whatever the
        // rest of the sweep does, and do not hold it up.
        let requests = self.approvals.sweep_requests();
        let announced = self.ops.sweep()?;
        // Pruning that fails does not hold up key transitions and the
        // checkpoint (which then covers the pruning's audit entries).
        let pruned = self.ops.apply_retention();
        self.keys.advance_keys()?;
        self.keys.sync_keys()?;
        self.keys.sync_secrets_key()?;
        self.ops.checkpoint_audit()?;
        pruned?;
        requests?;
        Ok(announced)
    }

    /// Records that `handle` guards the server(s) of this Sigil (called
    /// when a server starts; the latest start wins).
    pub(crate) fn set_deny_list(&self, handle: Arc<DenyListHandle>) {
        *self.deny_list.write().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// The deny-list guarding the server that serves this Sigil, once one
    /// was started ([`crate::server::start`]).
    pub fn deny_list(&self) -> Option<Arc<DenyListHandle>> {
        self.deny_list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the deny-list file of this Sigil's server (what SIGHUP does
    /// in `sigild`); returns the number of entries now in force. A
    /// malformed or unreadable file is refused, naming file and line, and
    /// the previous list stays in force.
    pub fn reload_deny_list(&self) -> Result<usize, Error> {
        self.deny_list()
            .ok_or_else(|| {
                Error::refused(
                    Reason::NotConfigured,
                    "no server is running for this Sigil; nothing to reload",
                )
            })?
            .reload()
    }
}
