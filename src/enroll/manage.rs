//! TOTP enrollment, confirmation, listing and removal of factors.
use data_encoding::BASE32_NOPAD;

use super::{Enrollment, Standing, TotpEnrollment};
use crate::audit::AuditEntry;
use crate::error::{Error, Reason};
use crate::events::{Event, EventKind};
use crate::factor::{check_nickname, enrollment_memo, secret_aad, totp, FactorRecord, Kind, Material, State};
use crate::model::{check_id, Action};
use crate::protect::{self, Snapshot};
use crate::store::{Batch, Table};

impl Enrollment {
    /// Step-up for enrolling a factor: needed once the user has a live
    /// active factor. The `enroll_factor` approval must name what is being
    /// enrolled — memo [`enrollment_memo`]`(kind, nickname)` — and answers
    /// nothing else. Adds the approval's redemption to `batch`.
    pub(crate) fn enrollment_step_up(
        &self,
        user_id: &str,
        step_up: &str,
        kind: Kind,
        nickname: &str,
        snap: &Snapshot,
        batch: &mut Batch,
    ) -> Result<bool, Error> {
        if !self.factors.live_factors(user_id, snap)?.is_empty() {
            let want = enrollment_memo(kind, nickname);
            self.approvals.step_up(
                step_up,
                Action::EnrollFactor,
                user_id,
                snap,
                move |i| {
                    if i.memo == want {
                        Ok(())
                    } else {
                        Err(format!(
                            "the enroll_factor approval names '{}', this enrollment is '{want}'",
                            crate::error::excerpt(&i.memo)
                        ))
                    }
                },
                batch,
            )?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Makes room for one more factor of `user_id`: the user's pending
    /// enrollments past their deadline (never confirmable) are deleted in
    /// `batch`, and the factors left, active and pending, must be fewer
    /// than `[protection] max_factors_per_user`, or the call is refused
    /// (TOO_MANY_FACTORS). Every approval reads and rewrites the user's
    /// factors, so this bounds what one costs. A credential index entry
    /// left pointing at a deleted enrollment is taken over by the next
    /// claim of that identifier, as for a removed factor. Returns how many
    /// were deleted.
    pub(crate) fn make_room_for_factor(&self, user_id: &str, now: i64, batch: &mut Batch) -> Result<usize, Error> {
        let max = self.cfg.protection.max_factors_per_user;
        let (mut held, mut expired) = (0usize, 0usize);
        for (f, version) in self.factors.factors_of(user_id)? {
            if !f.is_active() && now >= f.confirm_before {
                batch.delete(Table::Factors, FactorRecord::key(user_id, &f.factor_id), version);
                expired += 1;
            } else {
                held += 1;
            }
        }
        if held >= max {
            return Err(Error::refused(
                Reason::TooManyFactors,
                format!(
                    "user '{user_id}' holds {held} factors, the most allowed ([protection] max_factors_per_user = \
                     {max}); remove one before enrolling another"
                ),
            ));
        }
        Ok(expired)
    }

    /// Checks that a pending factor may be confirmed now: still pending,
    /// not revoked, not expired, and (begun without step-up) the user has
    /// not activated another factor meanwhile. Returns the protection state.
    pub(crate) fn confirmable(&self, f: &FactorRecord, now: i64) -> Result<Snapshot, Error> {
        let id = &f.factor_id;
        if f.state != State::Pending {
            return Err(Error::refused(
                Reason::FactorState,
                format!("factor '{id}' is already active"),
            ));
        }
        let snap = Snapshot::load(self.k.store.as_ref(), &f.user_id)?;
        if !f.is_live(snap.epochs()) {
            return Err(Error::refused(
                Reason::FactorRevoked,
                format!("enrollment of factor '{id}' was revoked; enroll again"),
            ));
        }
        if now >= f.confirm_before {
            return Err(Error::refused(
                Reason::EnrollmentExpired,
                format!(
                    "enrollment of factor '{id}' expired at {}; remove it and enroll again",
                    f.confirm_before
                ),
            ));
        }
        self.check_enrollment_still_allowed(f, &snap)?;
        Ok(snap)
    }

    /// A pending factor begun without step-up (the user had no active
    /// factor then) may not be confirmed once the user has one: that would
    /// add a second factor without an enroll_factor approval.
    pub(crate) fn check_enrollment_still_allowed(&self, f: &FactorRecord, snap: &Snapshot) -> Result<(), Error> {
        if f.enrolled_with_step_up {
            return Ok(());
        }
        let others = self
            .factors
            .live_factors(&f.user_id, snap)?
            .into_iter()
            .filter(|(o, _)| o.factor_id != f.factor_id)
            .count();
        if others > 0 {
            return Err(Error::denied(Reason::StepUpRequired, format!(
                "the user activated another factor since enrollment of '{}' began; remove it and enroll again with an enroll_factor approval",
                f.factor_id
            )));
        }
        Ok(())
    }

    /// A new factor record, pending, under the current epochs. Its id is
    /// made first (`self.k.new_id("f_")`): a secret is wrapped bound to it.
    pub(crate) fn new_factor(
        &self,
        user_id: &str,
        factor_id: String,
        material: Material,
        nickname: &str,
        now: i64,
        snap: &Snapshot,
    ) -> FactorRecord {
        let kind = material.kind();
        FactorRecord {
            factor_id,
            user_id: user_id.to_string(),
            state: State::Pending,
            nickname: if nickname.is_empty() {
                kind.default_nickname().into()
            } else {
                nickname.to_string()
            },
            created_at: now,
            confirm_before: now + self.cfg.totp.enrollment_ttl_seconds,
            last_used_at: 0,
            failures: 0,
            locked_until: 0,
            epochs: snap.epochs(),
            suspected_cloned: false,
            enrolled_with_step_up: false,
            material,
        }
    }

    /// Adds to `batch` what activating `f` implies: the factor written
    /// active, the security-change lock, the event and the audit entry.
    pub(crate) fn activate(
        &self,
        actor: &str,
        f: &FactorRecord,
        version: Option<u64>,
        snap: &Snapshot,
        now: i64,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let mut active = f.clone();
        active.state = State::Active;
        active.failures = 0;
        active.locked_until = 0;
        active.last_used_at = now;
        let key = FactorRecord::key(&f.user_id, &f.factor_id);
        match version {
            Some(v) => batch.update(Table::Factors, key, v, active.encode()?),
            None => batch.insert(Table::Factors, key, active.encode()?),
        };
        self.lock_after_change(batch, &f.user_id, snap, now, "factor added")?;
        protect::check_global(batch, snap);
        Event::new(EventKind::FactorEnrolled, &f.user_id, now, snap.anti_phishing_code())
            .with("factor_id", f.factor_id.clone())
            .with("kind", f.kind().name())
            .append_to(batch)?;
        AuditEntry::ok(now, actor, &f.user_id, "factor.enroll")
            .with("factor_id", f.factor_id.clone())
            .with("kind", f.kind().name())
            .append_to(batch)
    }

    /// Adds the security-change lock to `batch` (user record write).
    pub(crate) fn lock_after_change(
        &self,
        batch: &mut Batch,
        user_id: &str,
        snap: &Snapshot,
        now: i64,
        reason: &str,
    ) -> Result<(), Error> {
        let mut user = snap.user.clone();
        user.security_locked_until = user
            .security_locked_until
            .max(now + self.cfg.protection.security_change_lock_seconds);
        user.security_lock_reason = reason.to_string();
        protect::put_user(batch, user_id, snap, &user)
    }

    /// Starts a TOTP enrollment: a pending factor with a fresh encrypted
    /// seed. Needs an `enroll_factor` approval once the user has an active
    /// factor.
    pub fn begin_totp_enrollment(
        &self,
        actor: &str,
        user_id: &str,
        nickname: &str,
        account_name: &str,
        step_up: &str,
    ) -> Result<TotpEnrollment, Error> {
        check_id("user_id", user_id)?;
        check_nickname(nickname)?;
        if account_name.len() > 256 || account_name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "account_name",
                "at most 256 bytes, no control characters",
            ));
        }
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let mut batch = Batch::new();
        let expired = self.make_room_for_factor(user_id, now, &mut batch)?;
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::Totp, nickname, &snap, &mut batch)?;
        let factor_id = self.k.new_id("f_")?;
        let seed = zeroize::Zeroizing::new(self.k.random(totp::SECRET_LEN)?);
        let secret = self.k.signer.wrap(&seed, &secret_aad(user_id, &factor_id))?;
        let material = Material::Totp {
            secret,
            last_step: None,
        };
        let mut rec = self.new_factor(user_id, factor_id, material, nickname, now, &snap);
        rec.enrolled_with_step_up = stepped_up;
        let secret_base32 = BASE32_NOPAD.encode(&seed);
        let account = if account_name.is_empty() { user_id } else { account_name };
        let otpauth_uri = totp::otpauth_uri(&self.cfg.totp.issuer, account, &secret_base32);
        let qr_svg = totp::qr_svg(&otpauth_uri)?;
        batch.insert(
            Table::Factors,
            FactorRecord::key(user_id, &rec.factor_id),
            rec.encode()?,
        );
        AuditEntry::ok(now, actor, user_id, "factor.enroll.begin")
            .with("factor_id", rec.factor_id.clone())
            .with("kind", "totp")
            .with_nonzero("expired_enrollments_removed", expired)
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %rec.factor_id, "TOTP enrollment started");
        Ok(TotpEnrollment {
            factor_id: rec.factor_id,
            secret_base32,
            otpauth_uri,
            qr_svg,
            confirm_before: rec.confirm_before,
        })
    }

    /// Activates a pending TOTP factor with its first correct code.
    pub fn confirm_totp_enrollment(
        &self,
        actor: &str,
        user_id: &str,
        factor_id: &str,
        code: &str,
    ) -> Result<FactorRecord, Error> {
        check_id("user_id", user_id)?;
        check_id("factor_id", factor_id)?;
        if !totp::well_formed(code) {
            return Err(Error::invalid("code", "must be exactly 6 digits"));
        }
        let now = self.k.now()?;
        let (f, version) = self.factors.factor(user_id, factor_id)?;
        if f.kind() != Kind::Totp {
            return Err(Error::invalid(
                "factor_id",
                format!("factor '{factor_id}' is not a TOTP factor"),
            ));
        }
        let snap = self.confirmable(&f, now)?;
        let (step, f, version) = self.factors.check_totp(actor, &f, version, code, now)?;
        let mut confirmed = f.clone();
        confirmed.set_totp_last_step(step);
        let mut batch = Batch::new();
        self.activate(actor, &confirmed, Some(version), &snap, now, &mut batch)?;
        self.k.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %factor_id, "TOTP factor activated");
        let (f, _) = self.factors.factor(user_id, factor_id)?;
        Ok(f)
    }

    /// A user's factors: active ones, revoked ones (marked), and pending
    /// ones not yet expired.
    pub fn list_factors(&self, user_id: &str) -> Result<Vec<(FactorRecord, Standing)>, Error> {
        check_id("user_id", user_id)?;
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        Ok(self
            .factors
            .factors_of(user_id)?
            .into_iter()
            .map(|(f, _)| f)
            .filter(|f| f.is_active() || now < f.confirm_before)
            .map(|f| {
                let standing = if f.is_live(snap.epochs()) {
                    Standing::Current
                } else {
                    Standing::Revoked
                };
                (f, standing)
            })
            .collect())
    }

    /// Removes a factor. A live active factor needs a `remove_factor`
    /// approval whose memo is the factor id; removing it starts the
    /// security-change lock.
    pub fn remove_factor(&self, actor: &str, user_id: &str, factor_id: &str, step_up: &str) -> Result<(), Error> {
        check_id("user_id", user_id)?;
        check_id("factor_id", factor_id)?;
        let (f, version) = self.factors.factor(user_id, factor_id)?;
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let mut batch = Batch::new();
        if f.is_active() && f.is_live(snap.epochs()) {
            let id = factor_id.to_string();
            self.approvals.step_up(
                step_up,
                Action::RemoveFactor,
                user_id,
                &snap,
                |i| {
                    if i.memo == id {
                        Ok(())
                    } else {
                        Err(format!("factor '{}', not '{id}'", i.memo))
                    }
                },
                &mut batch,
            )?;
            self.lock_after_change(&mut batch, user_id, &snap, now, "factor removed")?;
        }
        batch.delete(Table::Factors, FactorRecord::key(user_id, factor_id), version);
        let index = match &f.material {
            Material::Webauthn(c) => Some(crate::factor::webauthn_index_key(&c.credential_id)),
            Material::YubikeyOtp { data, .. } => Some(crate::factor::yubikey_index_key(&data.public_id)),
            Material::Totp { .. } | Material::YubikeyHmac { .. } => None,
        };
        if let Some(k) = index {
            if let Some(v) = self.k.store.get(Table::Credentials, &k)? {
                if v.value == format!("{user_id}\0{factor_id}").into_bytes() {
                    batch.delete(Table::Credentials, k, v.version);
                }
            }
        }
        Event::new(EventKind::FactorRemoved, user_id, now, snap.anti_phishing_code())
            .with("factor_id", factor_id)
            .with("kind", f.kind().name())
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, user_id, "factor.remove")
            .with("factor_id", factor_id)
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %factor_id, "factor removed");
        Ok(())
    }
}
