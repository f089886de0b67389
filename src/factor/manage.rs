//! Enrollment, listing and removal of factors.
//!
//! Adding (confirming) or removing a factor starts the security-change lock:
//! withdrawals are refused for `protection.security_change_lock_seconds`.
use data_encoding::BASE32_NOPAD;

use crate::approval::{intent::check_id, Action};
use crate::audit::AuditEntry;
use crate::core::{secret_aad, Sigil};
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::factor::{totp, FactorRecord, Kind, State, FACTOR_RECORD_VERSION};
use crate::protect::Snapshot;
use crate::store::{Batch, Table};

/// What a TOTP enrollment hands back to the user, once.
pub struct TotpEnrollment {
    /// The pending factor's id.
    pub factor_id: String,
    /// Base32 secret (no padding).
    pub secret_base32: String,
    /// otpauth URI.
    pub otpauth_uri: String,
    /// QR code of the URI (SVG).
    pub qr_svg: Vec<u8>,
    /// Confirm before this time.
    pub confirm_before: i64,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment")
            .field("factor_id", &self.factor_id)
            .finish_non_exhaustive()
    }
}

/// How a listed factor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Usable (or pending confirmation).
    Current,
    /// Revoked by an admin; the user must enroll again.
    Revoked,
}

/// The memo of the `enroll_factor` approval that lets a user with an
/// active factor enroll another: `<kind>:<nickname>` (the kind's name —
/// `totp`, `webauthn`, `yubikey_hmac`, `yubikey_otp` — and the nickname as
/// sent, possibly empty). The approval answers that enrollment only.
pub fn enrollment_memo(kind: Kind, nickname: &str) -> String {
    format!("{}:{nickname}", kind.name())
}

/// Checks the memo of an `enroll_factor` intent (at BeginApproval, before
/// the user is asked): it must name a factor kind and a valid nickname.
pub(crate) fn check_enrollment_memo(field: &str, memo: &str) -> Result<(), Error> {
    let (kind, nickname) = memo.split_once(':').ok_or_else(|| {
        Error::invalid(
            field,
            "must name what is enrolled as '<kind>:<nickname>' (kind: totp, webauthn, yubikey_hmac or yubikey_otp)",
        )
    })?;
    if !crate::protect::policy::ALL_KINDS.iter().any(|k| k.name() == kind) {
        return Err(Error::invalid(
            field,
            format!(
                "'{}' is not a factor kind (totp, webauthn, yubikey_hmac, yubikey_otp)",
                crate::error::excerpt(kind)
            ),
        ));
    }
    check_nickname(nickname).map_err(|_| {
        Error::invalid(
            field,
            "the nickname after ':' is at most 64 bytes, no control characters",
        )
    })
}

pub(crate) fn check_nickname(n: &str) -> Result<(), Error> {
    if n.len() > 64 || n.chars().any(char::is_control) {
        return Err(Error::invalid("nickname", "at most 64 bytes, no control characters"));
    }
    Ok(())
}

impl Sigil {
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
        if !self.live_factors(user_id, snap)?.is_empty() {
            let want = enrollment_memo(kind, nickname);
            self.step_up(
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

    /// Checks that a pending factor may be confirmed now: still pending,
    /// not revoked, not expired, and (begun without step-up) the user has
    /// not activated another factor meanwhile. Returns the protection state.
    pub(crate) fn confirmable(&self, f: &FactorRecord, now: i64) -> Result<Snapshot, Error> {
        let id = &f.factor_id;
        if f.state != State::Pending {
            return Err(Error::FailedPrecondition(format!("factor '{id}' is already active")));
        }
        let snap = self.snapshot(&f.user_id)?;
        if !f.is_live(snap.epochs()) {
            return Err(Error::FailedPrecondition(format!(
                "enrollment of factor '{id}' was revoked; enroll again"
            )));
        }
        if now >= f.confirm_before {
            return Err(Error::FailedPrecondition(format!(
                "enrollment of factor '{id}' expired at {}; remove it and enroll again",
                f.confirm_before
            )));
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
            .live_factors(&f.user_id, snap)?
            .into_iter()
            .filter(|(o, _)| o.factor_id != f.factor_id)
            .count();
        if others > 0 {
            return Err(Error::PermissionDenied(format!(
                "the user activated another factor since enrollment of '{}' began; remove it and enroll again with an enroll_factor approval",
                f.factor_id
            )));
        }
        Ok(())
    }

    /// A new factor record, pending, under the current epochs.
    pub(crate) fn new_factor(
        &self,
        user_id: &str,
        kind: Kind,
        nickname: &str,
        now: i64,
        snap: &Snapshot,
    ) -> Result<FactorRecord, Error> {
        Ok(FactorRecord {
            v: FACTOR_RECORD_VERSION,
            factor_id: self.new_id("f_")?,
            user_id: user_id.to_string(),
            kind,
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
            secret: None,
            totp_last_step: None,
            epochs: snap.epochs(),
            suspected_cloned: false,
            webauthn: None,
            yubikey: None,
            enrolled_with_step_up: false,
        })
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
        self.check_global(batch, snap);
        Event::new(EventKind::FactorEnrolled, &f.user_id, now, snap.anti_phishing_code())
            .with("factor_id", f.factor_id.clone())
            .with("kind", f.kind.name())
            .append_to(batch)?;
        AuditEntry::ok(now, actor, &f.user_id, "factor.enroll")
            .with("factor_id", f.factor_id.clone())
            .with("kind", f.kind.name())
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
        self.put_user(batch, user_id, snap, &user)
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
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let mut batch = Batch::new();
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::Totp, nickname, &snap, &mut batch)?;
        let mut rec = self.new_factor(user_id, Kind::Totp, nickname, now, &snap)?;
        rec.enrolled_with_step_up = stepped_up;
        let seed = zeroize::Zeroizing::new(self.random(totp::SECRET_LEN)?);
        rec.secret = Some(self.signer.wrap(&seed, &secret_aad(user_id, &rec.factor_id))?);
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
            .append_to(&mut batch)?;
        self.commit(&batch)?;
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
        let now = self.now()?;
        let (f, version) = self.factor(user_id, factor_id)?;
        if f.kind != Kind::Totp {
            return Err(Error::invalid(
                "factor_id",
                format!("factor '{factor_id}' is not a TOTP factor"),
            ));
        }
        let snap = self.confirmable(&f, now)?;
        let (step, f, version) = self.check_totp(actor, &f, version, code, now)?;
        let mut confirmed = f.clone();
        confirmed.totp_last_step = Some(step);
        let mut batch = Batch::new();
        self.activate(actor, &confirmed, Some(version), &snap, now, &mut batch)?;
        self.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %factor_id, "TOTP factor activated");
        let (f, _) = self.factor(user_id, factor_id)?;
        Ok(f)
    }

    /// A user's factors: active ones, revoked ones (marked), and pending
    /// ones not yet expired.
    pub fn list_factors(&self, user_id: &str) -> Result<Vec<(FactorRecord, Standing)>, Error> {
        check_id("user_id", user_id)?;
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        Ok(self
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
        let (f, version) = self.factor(user_id, factor_id)?;
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let mut batch = Batch::new();
        if f.is_active() && f.is_live(snap.epochs()) {
            let id = factor_id.to_string();
            self.step_up(
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
        let index = match (&f.webauthn, &f.yubikey) {
            (Some(c), _) => Some(crate::factor::webauthn_index_key(&c.credential_id)),
            (None, Some(y)) if !y.public_id.is_empty() => Some(crate::factor::yubikey_index_key(&y.public_id)),
            _ => None,
        };
        if let Some(k) = index {
            if let Some(v) = self.store.get(Table::Credentials, &k)? {
                if v.value == format!("{user_id}\0{factor_id}").into_bytes() {
                    batch.delete(Table::Credentials, k, v.version);
                }
            }
        }
        Event::new(EventKind::FactorRemoved, user_id, now, snap.anti_phishing_code())
            .with("factor_id", factor_id)
            .with("kind", f.kind.name())
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, user_id, "factor.remove")
            .with("factor_id", factor_id)
            .append_to(&mut batch)?;
        self.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %factor_id, "factor removed");
        Ok(())
    }
}
