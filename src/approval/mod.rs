//! Approvals: challenges bound to an intent, proofs, HSM-signed JWS, and
//! single redemption.
//!
//! ```text
//! BeginApproval ──▶ challenge (pending, expires) ──CompleteApproval──▶ consumed + approval (issued)
//!                                                                 RedeemApproval ──▶ redeemed
//! ```
//! Completing writes, in one atomic batch: the challenge consumed, the
//! factor's used step and reset failure count, and the issued approval. The
//! JWS is signed before that batch and handed out only after it is durable.
use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, Claims, Intent, VerifyError};

use crate::core::{secret_aad, Sigil};
use crate::error::Error;
use crate::factor::{lockout, totp, FactorRecord, Kind};
use crate::store::{Batch, Table};

pub mod intent;

pub use intent::Action;

/// Current version of the records in this module.
pub const RECORD_VERSION: u32 = 1;

/// Device signals sent with a begin request. Recorded with the challenge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSignals {
    /// The device says it is jailbroken or rooted.
    pub jailbroken: bool,
    /// Platform name.
    pub platform: String,
    /// App attestation verdict.
    pub app_attestation: String,
}

/// A challenge (table `challenges`, key = challenge id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// Record format version.
    pub v: u32,
    /// The user who must answer.
    pub user_id: String,
    /// The intent it is bound to.
    pub intent: Intent,
    /// Factor kinds that may answer.
    pub allowed: Vec<Kind>,
    /// Creation time.
    pub created_at: i64,
    /// Must be completed before this time.
    pub expires_at: i64,
    /// Set once answered.
    pub consumed_at: Option<i64>,
    /// Signals recorded at begin.
    pub device: DeviceSignals,
}

/// An issued approval (table `approvals`, key = jti).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Record format version.
    pub v: u32,
    /// `sub`.
    pub user_id: String,
    /// `act`.
    pub act: String,
    /// `intent_sha256`.
    pub intent_sha256: String,
    /// Key that signed it.
    pub kid: String,
    /// `iat`.
    pub iat: i64,
    /// `exp`.
    pub exp: i64,
    /// Set once redeemed.
    pub redeemed_at: Option<i64>,
}

/// A proof answering a challenge.
#[derive(Debug, Clone)]
pub enum Proof {
    /// A TOTP code.
    Totp {
        /// The code.
        code: String,
        /// Which factor; None when the user has exactly one TOTP factor.
        factor_id: Option<String>,
    },
}

/// What BeginApproval returns.
#[derive(Debug, Clone)]
pub struct Begun {
    /// Challenge id.
    pub challenge_id: String,
    /// The intent digest.
    pub intent_sha256: [u8; 32],
    /// Kinds that may answer.
    pub allowed: Vec<Kind>,
    /// The user's active factors that may answer.
    pub factors: Vec<FactorRecord>,
    /// Expiry.
    pub expires_at: i64,
}

/// What CompleteApproval returns.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Compact JWS.
    pub token: String,
    /// Its jti.
    pub jti: String,
    /// Its exp.
    pub expires_at: i64,
    /// Its amr.
    pub amr: Vec<String>,
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(format!("cannot encode record: {e}")))
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &str, b: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|e| Error::Internal(format!("{what} record unreadable: {e}")))
}

/// Maps a verification failure of an approval presented to Sigil.
pub fn verify_error(e: VerifyError) -> Error {
    match e {
        VerifyError::Malformed(m) => {
            Error::invalid("approval", format!("not a compact JWS approval: {m}"))
        }
        VerifyError::Expired => {
            Error::FailedPrecondition("approval expired; request a new one".into())
        }
        VerifyError::NotYetValid => Error::FailedPrecondition("approval is not valid yet".into()),
        VerifyError::IntentMismatch { field } => Error::FailedPrecondition(format!(
            "approval does not match the withdrawal: field '{field}' differs; nothing was redeemed"
        )),
        other => Error::PermissionDenied(format!("approval refused: {other}")),
    }
}

impl Sigil {
    /// Validates an intent and opens a challenge for it.
    pub fn begin_approval(&self, intent: Intent, device: DeviceSignals) -> Result<Begun, Error> {
        let _action = intent::validate(&self.cfg, &intent)?;
        if device.platform.len() > 64 || device.app_attestation.len() > 256 {
            return Err(Error::invalid(
                "device",
                "platform is limited to 64 bytes, app_attestation to 256",
            ));
        }
        let now = self.now()?;
        let factors: Vec<FactorRecord> = self
            .factors_of(&intent.user_id)?
            .into_iter()
            .map(|(f, _)| f)
            .filter(|f| f.is_active())
            .collect();
        if factors.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "user '{}' has no active second factor; enroll one before any approval",
                intent.user_id
            )));
        }
        let allowed = vec![Kind::Totp];
        let factors: Vec<FactorRecord> = factors
            .into_iter()
            .filter(|f| allowed.contains(&f.kind))
            .collect();
        if factors.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "no factor of user '{}' may approve '{}'",
                intent.user_id, intent.action
            )));
        }
        let challenge_id = self.new_id("ch_")?;
        let expires_at = now + self.cfg.approval.challenge_ttl_seconds;
        let digest = intent.digest();
        let rec = ChallengeRecord {
            v: RECORD_VERSION,
            user_id: intent.user_id.clone(),
            intent,
            allowed: allowed.clone(),
            created_at: now,
            expires_at,
            consumed_at: None,
            device,
        };
        let mut batch = Batch::new();
        batch.insert(Table::Challenges, challenge_id.as_bytes(), to_json(&rec)?);
        self.store.commit(&batch)?;
        Ok(Begun {
            challenge_id,
            intent_sha256: digest,
            allowed,
            factors,
            expires_at,
        })
    }

    /// Verifies a proof, consumes the challenge and issues the approval.
    pub fn complete_approval(
        &self,
        challenge_id: &str,
        user_id: &str,
        proof: Proof,
    ) -> Result<Issued, Error> {
        intent::check_id("challenge_id", challenge_id)?;
        intent::check_id("user_id", user_id)?;
        let Proof::Totp { code, factor_id } = proof;
        if !totp::well_formed(&code) {
            return Err(Error::invalid("totp.code", "must be exactly 6 digits"));
        }
        if let Some(f) = &factor_id {
            intent::check_id("totp.factor_id", f)?;
        }
        let now = self.now()?;
        let stored = self
            .store
            .get(Table::Challenges, challenge_id.as_bytes())?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "challenge '{challenge_id}' not found; begin a new approval"
                ))
            })?;
        let ch: ChallengeRecord = from_json("challenge", &stored.value)?;
        if ch.user_id != user_id {
            return Err(Error::PermissionDenied(format!(
                "challenge '{challenge_id}' was not issued to user '{user_id}'"
            )));
        }
        if ch.consumed_at.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "challenge '{challenge_id}' was already answered; begin a new approval"
            )));
        }
        if now >= ch.expires_at {
            return Err(Error::FailedPrecondition(format!(
                "challenge '{challenge_id}' expired at {}; begin a new approval",
                ch.expires_at
            )));
        }
        if !ch.allowed.contains(&Kind::Totp) {
            return Err(Error::FailedPrecondition(
                "a TOTP code may not answer this challenge".into(),
            ));
        }
        let (factor, fversion) = self.pick_totp(user_id, factor_id.as_deref())?;
        let step = self.check_totp(&factor, fversion, &code, now)?;

        let jti = self.new_id("")?;
        let exp = now + self.cfg.approval.ttl_seconds;
        let amr: Vec<String> = Kind::Totp.amr().iter().map(|s| s.to_string()).collect();
        let claims = Claims {
            iss: self.cfg.approval.issuer.clone(),
            aud: self.cfg.approval.audience.clone(),
            sub: ch.user_id.clone(),
            jti: jti.clone(),
            iat: now,
            exp,
            nbf: None,
            act: ch.intent.action.clone(),
            intent_sha256: b64url::encode(&ch.intent.digest()),
            intent: ch.intent.clone(),
            amr: amr.clone(),
            webauthn: None,
        };
        let token = self.signer.sign(&claims)?;

        let mut consumed = ch.clone();
        consumed.consumed_at = Some(now);
        let mut used = factor.clone();
        used.totp_last_step = Some(step);
        used.failures = 0;
        used.locked_until = 0;
        used.last_used_at = now;
        let record = ApprovalRecord {
            v: RECORD_VERSION,
            user_id: ch.user_id.clone(),
            act: claims.act.clone(),
            intent_sha256: claims.intent_sha256.clone(),
            kid: self.signer.active_kid().to_string(),
            iat: now,
            exp,
            redeemed_at: None,
        };
        let mut batch = Batch::new();
        batch
            .update(
                Table::Challenges,
                challenge_id.as_bytes(),
                stored.version,
                to_json(&consumed)?,
            )
            .update(
                Table::Factors,
                FactorRecord::key(user_id, &factor.factor_id),
                fversion,
                used.encode()?,
            )
            .insert(Table::Approvals, jti.as_bytes(), to_json(&record)?);
        self.store.commit(&batch).map_err(|e| match e {
            crate::store::StoreError::Conflict => Error::FailedPrecondition(format!(
                "challenge '{challenge_id}' or its factor changed while answering (answered twice?); nothing was issued"
            )),
            other => other.into(),
        })?;
        tracing::info!(user = %ch.user_id, act = %claims.act, jti = %jti, "approval issued");
        Ok(Issued {
            token,
            jti,
            expires_at: exp,
            amr,
        })
    }

    /// Verifies an approval and marks it redeemed, exactly once.
    pub fn redeem_approval(&self, token: &str, expected: Option<&Intent>) -> Result<Claims, Error> {
        if token.is_empty() {
            return Err(Error::invalid("approval", "is required"));
        }
        if token.len() > 64 * 1024 {
            return Err(Error::invalid("approval", "is larger than 64 KiB"));
        }
        let now = self.now()?;
        let verifier = self.signer.verifier();
        let claims = match expected {
            Some(i) => verifier.verify_for(token, i, now),
            None => verifier.verify(token, now),
        }
        .map_err(verify_error)?;
        let mut batch = Batch::new();
        self.add_redeem(&claims, now, &mut batch)?;
        self.store.commit(&batch).map_err(|e| match e {
            crate::store::StoreError::Conflict => {
                Error::FailedPrecondition(format!("approval '{}' was already redeemed", claims.jti))
            }
            other => other.into(),
        })?;
        tracing::info!(user = %claims.sub, act = %claims.act, jti = %claims.jti, "approval redeemed");
        Ok(claims)
    }

    /// Adds the write that redeems `claims.jti` to `batch`, after checking
    /// it is issued and not yet redeemed.
    fn add_redeem(&self, claims: &Claims, now: i64, batch: &mut Batch) -> Result<(), Error> {
        let stored = self
            .store
            .get(Table::Approvals, claims.jti.as_bytes())?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "approval '{}' is not known to this deployment",
                    claims.jti
                ))
            })?;
        let mut rec: ApprovalRecord = from_json("approval", &stored.value)?;
        if let Some(at) = rec.redeemed_at {
            return Err(Error::FailedPrecondition(format!(
                "approval '{}' was already redeemed at {at}",
                claims.jti
            )));
        }
        if rec.intent_sha256 != claims.intent_sha256 || rec.user_id != claims.sub {
            return Err(Error::PermissionDenied(format!(
                "approval '{}' does not match its issued record",
                claims.jti
            )));
        }
        rec.redeemed_at = Some(now);
        batch.update(
            Table::Approvals,
            claims.jti.as_bytes(),
            stored.version,
            to_json(&rec)?,
        );
        Ok(())
    }

    /// Checks a step-up approval for `action` by `user_id` (and, when given,
    /// whose intent memo is `memo`) and adds its redemption to `batch`.
    pub(crate) fn step_up(
        &self,
        token: &str,
        action: Action,
        user_id: &str,
        memo: Option<&str>,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        if token.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "user '{user_id}' already has an active factor: this needs an approval of action '{}' (step_up_approval)",
                action.name()
            )));
        }
        let now = self.now()?;
        let claims =
            self.signer
                .verifier()
                .verify(token, now)
                .map_err(|e| match verify_error(e) {
                    Error::InvalidArgument { reason, .. } => {
                        Error::invalid("step_up_approval", reason)
                    }
                    other => other,
                })?;
        if claims.act != action.name() || claims.sub != user_id {
            return Err(Error::PermissionDenied(format!(
                "step_up_approval is for action '{}' of user '{}'; this needs action '{}' of user '{user_id}'",
                claims.act,
                claims.sub,
                action.name()
            )));
        }
        if let Some(m) = memo {
            if claims.intent.memo != m {
                return Err(Error::PermissionDenied(format!(
                    "step_up_approval was given for '{}', not for '{m}'",
                    claims.intent.memo
                )));
            }
        }
        self.add_redeem(&claims, now, batch)
    }

    /// The TOTP factor a proof names, or the user's only one.
    fn pick_totp(
        &self,
        user_id: &str,
        factor_id: Option<&str>,
    ) -> Result<(FactorRecord, u64), Error> {
        let (f, v) = match factor_id {
            Some(id) => self.factor(user_id, id)?,
            None => {
                let mut totps: Vec<(FactorRecord, u64)> = self
                    .factors_of(user_id)?
                    .into_iter()
                    .filter(|(f, _)| f.kind == Kind::Totp && f.is_active())
                    .collect();
                match totps.len() {
                    0 => {
                        return Err(Error::FailedPrecondition(format!(
                            "user '{user_id}' has no active TOTP factor"
                        )))
                    }
                    1 => totps.remove(0),
                    _ => return Err(Error::invalid(
                        "totp.factor_id",
                        "the user has several TOTP factors: name the one that produced the code",
                    )),
                }
            }
        };
        if f.kind != Kind::Totp {
            return Err(Error::invalid(
                "totp.factor_id",
                format!("factor '{}' is not a TOTP factor", f.factor_id),
            ));
        }
        if !f.is_active() {
            return Err(Error::FailedPrecondition(format!(
                "factor '{}' is not active yet",
                f.factor_id
            )));
        }
        Ok((f, v))
    }

    /// Checks a TOTP code against a factor. On failure, durably counts it
    /// (and locks the factor when the limit is reached) and refuses.
    /// Returns the step the code matched.
    pub(crate) fn check_totp(
        &self,
        f: &FactorRecord,
        version: u64,
        code: &str,
        now: i64,
    ) -> Result<u64, Error> {
        lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id))?;
        let wrapped = f.secret.as_ref().ok_or_else(|| {
            Error::Internal(format!("factor '{}' has no stored secret", f.factor_id))
        })?;
        let seed = self
            .signer
            .unwrap_secret(wrapped, &secret_aad(&f.user_id, &f.factor_id))?;
        if let Some(step) = totp::verify(&seed, code, now, f.totp_last_step) {
            return Ok(step);
        }
        Err(self.record_failure(f, version, now))
    }

    /// Durably counts a failed attempt on a factor and returns the refusal.
    pub(crate) fn record_failure(&self, f: &FactorRecord, version: u64, now: i64) -> Error {
        let (failures, locked_until) = lockout::on_failure(&self.cfg.lockout, f.failures, now);
        let mut failed = f.clone();
        failed.failures = failures;
        failed.locked_until = locked_until;
        let write = failed.encode().and_then(|bytes| {
            let mut batch = Batch::new();
            batch.update(
                Table::Factors,
                FactorRecord::key(&f.user_id, &f.factor_id),
                version,
                bytes,
            );
            self.store.commit(&batch).map_err(Error::from)
        });
        if let Err(e) = write {
            return e;
        }
        tracing::warn!(user = %f.user_id, factor = %f.factor_id, failures, "second factor refused");
        if locked_until > now {
            return Error::Locked {
                what: format!("factor '{}'", f.factor_id),
                retry_after: u64::try_from(locked_until - now).unwrap_or(1),
            };
        }
        Error::PermissionDenied(format!(
            "code not accepted (wrong, outside the time window, or already used); {} attempts left before the factor locks",
            lockout::attempts_left(&self.cfg.lockout, failures)
        ))
    }
}
