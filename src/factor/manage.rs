//! Enrollment, listing and removal of factors.
use data_encoding::BASE32_NOPAD;

use crate::approval::{intent::check_id, Action};
use crate::core::{secret_aad, Sigil};
use crate::error::Error;
use crate::factor::{totp, FactorRecord, Kind, State, FACTOR_RECORD_VERSION};
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

fn check_nickname(n: &str) -> Result<(), Error> {
    if n.len() > 64 || n.chars().any(char::is_control) {
        return Err(Error::invalid(
            "nickname",
            "at most 64 bytes, no control characters",
        ));
    }
    Ok(())
}

impl Sigil {
    /// Starts a TOTP enrollment: a pending factor with a fresh encrypted
    /// seed. Needs an `enroll_factor` approval once the user has an active
    /// factor.
    pub fn begin_totp_enrollment(
        &self,
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
        let mut batch = Batch::new();
        if self.factors_of(user_id)?.iter().any(|(f, _)| f.is_active()) {
            self.step_up(step_up, Action::EnrollFactor, user_id, None, &mut batch)?;
        }
        let factor_id = self.new_id("f_")?;
        let seed = zeroize::Zeroizing::new(self.random(totp::SECRET_LEN)?);
        let wrapped = self.signer.wrap(&seed, &secret_aad(user_id, &factor_id))?;
        let secret_base32 = BASE32_NOPAD.encode(&seed);
        let account = if account_name.is_empty() {
            user_id
        } else {
            account_name
        };
        let otpauth_uri = totp::otpauth_uri(&self.cfg.totp.issuer, account, &secret_base32);
        let qr_svg = totp::qr_svg(&otpauth_uri)?;
        let confirm_before = now + self.cfg.totp.enrollment_ttl_seconds;
        let rec = FactorRecord {
            v: FACTOR_RECORD_VERSION,
            factor_id: factor_id.clone(),
            user_id: user_id.to_string(),
            kind: Kind::Totp,
            state: State::Pending,
            nickname: if nickname.is_empty() {
                "authenticator".into()
            } else {
                nickname.to_string()
            },
            created_at: now,
            confirm_before,
            last_used_at: 0,
            failures: 0,
            locked_until: 0,
            secret: Some(wrapped),
            totp_last_step: None,
        };
        batch.insert(
            Table::Factors,
            FactorRecord::key(user_id, &factor_id),
            rec.encode()?,
        );
        self.store.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %factor_id, "TOTP enrollment started");
        Ok(TotpEnrollment {
            factor_id,
            secret_base32,
            otpauth_uri,
            qr_svg,
            confirm_before,
        })
    }

    /// Activates a pending TOTP factor with its first correct code.
    pub fn confirm_totp_enrollment(
        &self,
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
        if f.state != State::Pending {
            return Err(Error::FailedPrecondition(format!(
                "factor '{factor_id}' is already active"
            )));
        }
        if now >= f.confirm_before {
            return Err(Error::FailedPrecondition(format!(
                "enrollment of factor '{factor_id}' expired at {}; remove it and enroll again",
                f.confirm_before
            )));
        }
        let step = self.check_totp(&f, version, code, now)?;
        let mut active = f.clone();
        active.state = State::Active;
        active.totp_last_step = Some(step);
        active.failures = 0;
        active.locked_until = 0;
        active.last_used_at = now;
        let mut batch = Batch::new();
        batch.update(
            Table::Factors,
            FactorRecord::key(user_id, factor_id),
            version,
            active.encode()?,
        );
        self.store.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %factor_id, "TOTP factor activated");
        Ok(active)
    }

    /// A user's factors: active ones and pending ones not yet expired.
    pub fn list_factors(&self, user_id: &str) -> Result<Vec<FactorRecord>, Error> {
        check_id("user_id", user_id)?;
        let now = self.now()?;
        Ok(self
            .factors_of(user_id)?
            .into_iter()
            .map(|(f, _)| f)
            .filter(|f| f.is_active() || now < f.confirm_before)
            .collect())
    }

    /// Removes a factor. An active factor needs a `remove_factor` approval
    /// whose memo is the factor id.
    pub fn remove_factor(
        &self,
        user_id: &str,
        factor_id: &str,
        step_up: &str,
    ) -> Result<(), Error> {
        check_id("user_id", user_id)?;
        check_id("factor_id", factor_id)?;
        let (f, version) = self.factor(user_id, factor_id)?;
        let mut batch = Batch::new();
        if f.is_active() {
            self.step_up(
                step_up,
                Action::RemoveFactor,
                user_id,
                Some(factor_id),
                &mut batch,
            )?;
        }
        batch.delete(
            Table::Factors,
            FactorRecord::key(user_id, factor_id),
            version,
        );
        self.store.commit(&batch)?;
        tracing::info!(user = %user_id, factor = %factor_id, "factor removed");
        Ok(())
    }
}
