//! Proofs checked against a factor with its attempts counted first:
//! choosing the factor a proof names, TOTP codes, and the reserve / release
//! / refuse protocol every factor kind uses.
use crate::audit::AuditEntry;
use crate::error::{Error, Reason};
use crate::events::{Event, EventKind};
use crate::protect::Snapshot;
use crate::store::{meta, Batch, Table};

use super::{lockout, totp, FactorRecord, Factors, Kind};

impl Factors {
    /// The factor of `kind` a proof names, or the user's only live one.
    pub(crate) fn pick_factor(
        &self,
        user_id: &str,
        kind: Kind,
        factor_id: Option<&str>,
        snap: &Snapshot,
    ) -> Result<(FactorRecord, u64), Error> {
        let field = format!("{}.factor_id", kind.name());
        let (f, v) = match factor_id {
            Some(id) => self.factor(user_id, id)?,
            None => {
                let mut of_kind: Vec<(FactorRecord, u64)> = self
                    .live_factors(user_id, snap)?
                    .into_iter()
                    .filter(|(f, _)| f.kind() == kind)
                    .collect();
                match of_kind.len() {
                    0 => {
                        return Err(Error::refused(
                            Reason::NoUsableFactor,
                            format!("user '{user_id}' has no active {} factor", kind.name()),
                        ))
                    }
                    1 => of_kind.remove(0),
                    _ => {
                        return Err(Error::invalid(
                            field,
                            format!(
                                "the user has several {} factors: name the one that answered",
                                kind.name()
                            ),
                        ))
                    }
                }
            }
        };
        if f.kind() != kind {
            return Err(Error::invalid(
                field,
                format!("factor '{}' is not a {} factor", f.factor_id, kind.name()),
            ));
        }
        if !f.is_active() {
            return Err(Error::refused(
                Reason::FactorState,
                format!("factor '{}' is not active yet", f.factor_id),
            ));
        }
        if !f.is_live(snap.epochs()) {
            return Err(Error::refused(
                Reason::FactorRevoked,
                format!("factor '{}' was revoked; enroll again", f.factor_id),
            ));
        }
        Ok((f, v))
    }

    /// Checks a TOTP code against a factor, the attempt counted before the
    /// code is compared ([`Factors::reserve_attempt`]). Returns the step the
    /// code matched and the factor as reserved, with its version (the
    /// success batch resets the count on that version).
    pub(crate) fn check_totp(
        &self,
        actor: &str,
        f: &FactorRecord,
        version: u64,
        code: &str,
        now: i64,
    ) -> Result<(u64, FactorRecord, u64), Error> {
        lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id))?;
        // Decrypted before the attempt is counted: an HSM outage must not
        // lock users out.
        let seed = self.factor_secret(f)?;
        // After a restore, no step that could have been accepted before it
        // counts: the backup cannot know which were used after it was taken.
        let floor = meta::restore_record(self.k.store.as_ref())?.map(|r| r.totp_floor_step());
        let (f, version) = self.reserve_attempt(f, version, now)?;
        let last = match (f.totp_last_step(), floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(step) = totp::verify(&seed, code, now, last) {
            return Ok((step, f, version));
        }
        Err(self.refuse_attempt(
            actor,
            &f,
            now,
            "TOTP code not accepted (wrong, outside the time window, or already used)",
        ))
    }

    /// Counts an attempt on a factor **before** its proof is checked (NIST
    /// SP 800-63B §5.2.2): refuses if the factor is locked, else raises its
    /// failure count in a committed conditional write — locking it if this
    /// is the last attempt allowed — and returns the factor as reserved,
    /// with its new version. Concurrent attempts are serialised by the
    /// version condition, so no more than `lockout.max_failures` proofs are
    /// ever compared per lock window, however many arrive at once. A
    /// success resets the count in its own batch; a failure is already
    /// counted ([`Factors::refuse_attempt`] only records it).
    pub(crate) fn reserve_attempt(
        &self,
        f: &FactorRecord,
        version: u64,
        now: i64,
    ) -> Result<(FactorRecord, u64), Error> {
        let mut current = f.clone();
        let mut version = version;
        for _ in 0..10_000 {
            lockout::check(current.locked_until, now, &format!("factor '{}'", current.factor_id))?;
            let (failures, locked_until) = lockout::on_failure(&self.cfg.lockout, current.failures, now);
            let mut reserved = current.clone();
            reserved.failures = failures;
            reserved.locked_until = locked_until.max(current.locked_until);
            let mut batch = Batch::new();
            batch.update(
                Table::Factors,
                FactorRecord::key(&f.user_id, &f.factor_id),
                version,
                reserved.encode()?,
            );
            match self.k.commit(&batch) {
                Ok(_) => return Ok((reserved, version + 1)),
                Err(Error::Conflict(_)) => {
                    let (fresh, v) = self.factor(&f.user_id, &f.factor_id)?;
                    current = fresh;
                    version = v;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(
            "the factor is under heavy concurrent use; the attempt was refused and not checked".into(),
        ))
    }

    /// Gives back an attempt counted by [`Factors::reserve_attempt`] whose
    /// proof was right but whose approval could not be issued, if the
    /// factor is still as reserved (`version`). Best effort: if it fails,
    /// the attempt stays counted, which only errs on the safe side.
    pub(crate) fn release_attempt(&self, user_id: &str, factor_id: &str, version: u64) {
        let Ok((mut f, v)) = self.factor(user_id, factor_id) else {
            return;
        };
        if v != version {
            return;
        }
        f.failures = f.failures.saturating_sub(1);
        f.locked_until = 0;
        let mut batch = Batch::new();
        let Ok(bytes) = f.encode() else { return };
        batch.update(Table::Factors, FactorRecord::key(user_id, factor_id), version, bytes);
        if let Err(e) = self.k.commit(&batch) {
            tracing::warn!(error = %e, user = %user_id, factor = %factor_id, "could not give back an attempt");
        }
    }

    /// Records a failed attempt already counted by
    /// [`Factors::reserve_attempt`] (its audit entry, and a lockout event
    /// when it locked the factor) and returns the refusal.
    pub(crate) fn refuse_attempt(&self, actor: &str, f: &FactorRecord, now: i64, what: &str) -> Error {
        if f.locked_until > now {
            crate::metrics::lockout_started(f.kind().name());
        }
        let write = (|| -> Result<(), Error> {
            let mut batch = Batch::new();
            AuditEntry::refused(now, actor, &f.user_id, "factor.verify", what)
                .with("factor_id", f.factor_id.clone())
                .with("failures", f.failures.to_string())
                .append_to(&mut batch)?;
            if f.locked_until > now {
                let apc = Snapshot::load(self.k.store.as_ref(), &f.user_id)?.anti_phishing_code();
                Event::new(EventKind::Lockout, &f.user_id, now, apc)
                    .with("factor_id", f.factor_id.clone())
                    .with("locked_until", f.locked_until.to_string())
                    .append_to(&mut batch)?;
            }
            self.k.commit(&batch)?;
            Ok(())
        })();
        if let Err(e) = write {
            // The attempt itself is counted; only its record is missing.
            tracing::error!(error = %e, user = %f.user_id, factor = %f.factor_id, "could not record a refused attempt");
            return e;
        }
        tracing::warn!(user = %f.user_id, factor = %f.factor_id, failures = f.failures, "second factor refused");
        if let Err(locked) = lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id)) {
            return locked;
        }
        let left = lockout::attempts_left(&self.cfg.lockout, f.failures);
        Error::denied(
            Reason::FactorRejected,
            format!("{what}; {left} attempts left before the factor locks"),
        )
        .with_meta("attempts_left", left.to_string())
    }

    /// Counts and records one failed attempt on a factor that was not
    /// reserved first (a malformed proof refused before any comparison).
    pub(crate) fn record_failure(&self, actor: &str, f: &FactorRecord, version: u64, now: i64, what: &str) -> Error {
        match self.reserve_attempt(f, version, now) {
            Ok((reserved, _)) => self.refuse_attempt(actor, &reserved, now, what),
            Err(e) => e,
        }
    }
}
