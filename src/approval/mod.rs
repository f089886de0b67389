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

use crate::audit::AuditEntry;
use crate::core::Sigil;
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::factor::{lockout, totp, FactorRecord, Kind};
use crate::protect::{address, RecentWithdrawal, Snapshot};
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
    /// Revocation epochs when opened; a revocation kills the challenge.
    #[serde(default)]
    pub epochs: crate::protect::Epochs,
    /// Random nonce (base64url) committed into the WebAuthn and YubiKey
    /// challenges together with the intent digest.
    #[serde(default)]
    pub nonce: String,
    /// WebAuthn assertion ceremony state, when a credential may answer.
    #[serde(default)]
    pub webauthn_state: Option<String>,
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
    /// The idempotency key of the redemption, if the engine gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed_key: Option<String>,
    /// Revocation epochs when issued; a revocation kills the approval.
    #[serde(default)]
    pub epochs: crate::protect::Epochs,
}

/// A successful redemption.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The verified claims.
    pub claims: Claims,
    /// This call repeated an earlier redemption with the same key.
    pub replayed: bool,
    /// When the approval was redeemed.
    pub redeemed_at: i64,
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
    /// A WebAuthn assertion (the browser's PublicKeyCredential JSON).
    Webauthn {
        /// The JSON.
        response_json: String,
    },
    /// A YubiKey HMAC-SHA1 response to the challenge's HMAC challenge.
    YubikeyHmac {
        /// 20 bytes.
        response: Vec<u8>,
        /// Which factor; None when the user has exactly one.
        factor_id: Option<String>,
    },
    /// A Yubico OTP.
    YubikeyOtp {
        /// 44 modhex characters.
        otp: String,
    },
}

impl Proof {
    /// The factor kind this proof comes from.
    pub fn kind(&self) -> Kind {
        match self {
            Proof::Totp { .. } => Kind::Totp,
            Proof::Webauthn { .. } => Kind::Webauthn,
            Proof::YubikeyHmac { .. } => Kind::YubikeyHmac,
            Proof::YubikeyOtp { .. } => Kind::YubikeyOtp,
        }
    }

    /// Checks the proof's shape (bad input is INVALID_ARGUMENT).
    fn validate(&self) -> Result<(), Error> {
        match self {
            Proof::Totp { code, factor_id } => {
                if !totp::well_formed(code) {
                    return Err(Error::invalid("totp.code", "must be exactly 6 digits"));
                }
                if let Some(f) = factor_id {
                    intent::check_id("totp.factor_id", f)?;
                }
            }
            Proof::Webauthn { response_json } => {
                if response_json.is_empty() {
                    return Err(Error::invalid("webauthn.response_json", "is required"));
                }
                if response_json.len() > crate::factor::webauthn::MAX_RESPONSE_BYTES {
                    return Err(Error::invalid("webauthn.response_json", "is larger than 64 KiB"));
                }
            }
            Proof::YubikeyHmac { response, factor_id } => {
                if response.len() != 20 {
                    return Err(Error::invalid(
                        "yubikey_hmac.response",
                        format!("must be the 20-byte HMAC-SHA1 response, got {} bytes", response.len()),
                    ));
                }
                if let Some(f) = factor_id {
                    intent::check_id("yubikey_hmac.factor_id", f)?;
                }
            }
            Proof::YubikeyOtp { .. } => {}
        }
        Ok(())
    }
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
    /// The user's anti-phishing code, to show beside the challenge.
    pub anti_phishing_code: Option<String>,
    /// WebAuthn request options JSON, when a credential may answer.
    pub webauthn_options: Option<String>,
    /// YubiKey HMAC challenge, when an HMAC slot may answer.
    pub yubikey_hmac_challenge: Option<[u8; 32]>,
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
        VerifyError::Malformed(m) => Error::invalid("approval", format!("not a compact JWS approval: {m}")),
        VerifyError::Expired => Error::FailedPrecondition("approval expired; request a new one".into()),
        VerifyError::NotYetValid => Error::FailedPrecondition("approval is not valid yet".into()),
        VerifyError::IntentMismatch { field } => Error::FailedPrecondition(format!(
            "approval does not match the withdrawal: field '{field}' differs; nothing was redeemed"
        )),
        other => Error::PermissionDenied(other.to_string()),
    }
}

/// What a withdrawal to `network`/`destination` needs from the whitelist.
/// Checks the destination is on the user's whitelist and past its hold.
/// Returns the address record's key and version (None when the whitelist
/// is not required), for a batch to condition on.
fn whitelist_check(
    s: &Sigil,
    user_id: &str,
    network: &str,
    destination: &str,
    now: i64,
) -> Result<Option<(Vec<u8>, u64)>, Error> {
    if !s.cfg.protection.require_whitelisted_address {
        return Ok(None);
    }
    let key = address::key(user_id, network, destination);
    let rec = s.store.get(Table::Addresses, &key)?;
    let Some(rec) = rec else {
        return Err(Error::FailedPrecondition(format!(
            "destination {destination} ({network}) is not on the user's withdrawal whitelist; add it first (an add_address approval, then a hold of {} s)",
            s.cfg.protection.address_hold_seconds
        )));
    };
    let version = rec.version;
    let rec: address::AddressRecord = from_json("address", &rec.value)?;
    if now < rec.usable_at {
        return Err(Error::FailedPrecondition(format!(
            "destination {destination} is in its hold after being added; withdrawals to it open at {}",
            rec.usable_at
        )));
    }
    Ok(Some((key, version)))
}

impl Sigil {
    /// Validates an intent, applies the protections and the policy, and
    /// opens a challenge. `actor` is the caller's role, for the audit log.
    pub fn begin_approval(&self, actor: &str, intent: Intent, device: DeviceSignals) -> Result<Begun, Error> {
        let action = intent::validate(&self.cfg, &intent)?;
        if matches!(action, Action::Withdrawal | Action::AddAddress | Action::RemoveAddress) {
            address::validate(&self.cfg, "intent.destination", &intent.network, &intent.destination)?;
        }
        if action == Action::Withdrawal {
            address::validate_memo(&self.cfg, "intent.memo", &intent.network, &intent.memo)?;
        }
        // Only approvals that can be used: what the approval would let the
        // caller do is checked now, before the user is asked.
        match action {
            Action::RemoveFactor => {
                if let Err(Error::NotFound(_)) = self.factor(&intent.user_id, &intent.memo) {
                    return Err(Error::invalid(
                        "intent.memo",
                        format!(
                            "user '{}' has no factor '{}' to remove",
                            intent.user_id,
                            crate::error::excerpt(&intent.memo)
                        ),
                    ));
                }
            }
            Action::ChangeAntiPhishingCode => {
                crate::protect::ops::check_anti_phishing_code("intent.memo", &intent.memo)?;
            }
            Action::EnrollFactor => crate::factor::manage::check_enrollment_memo("intent.memo", &intent.memo)?,
            _ => {}
        }
        if device.platform.len() > 64 || device.app_attestation.len() > 256 {
            return Err(Error::invalid(
                "device",
                "platform is limited to 64 bytes, app_attestation to 256",
            ));
        }
        let now = self.now()?;
        let user_id = intent.user_id.clone();
        let snap = self.snapshot(&user_id)?;
        let mut user = snap.user.clone();
        if device.jailbroken {
            user.compromised_device_at = Some(now);
        }
        let audit = |e: &Error| {
            AuditEntry::refused(now, actor, &user_id, "approval.begin", &e.to_string())
                .with("act", action.name())
                .with("intent_sha256", b64url::encode(&intent.digest()))
                .with("device.jailbroken", device.jailbroken.to_string())
                .with("device.platform", device.platform.clone())
        };
        let decided = (|| -> Result<(Vec<Kind>, Vec<FactorRecord>), Error> {
            snap.check_not_suspended(now, "approval")?;
            let live = self.live_factors(&user_id, &snap)?;
            if live.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "user '{user_id}' has no active second factor; enroll one before any approval"
                )));
            }
            if action == Action::Withdrawal {
                if now < snap.user.security_locked_until {
                    return Err(Error::FailedPrecondition(format!(
                        "withdrawals are locked until {} after a security change ({})",
                        snap.user.security_locked_until, snap.user.security_lock_reason
                    )));
                }
                whitelist_check(self, &user_id, &intent.network, &intent.destination, now)?;
            }
            let decision = self.cfg.policy.decide(action, &intent, &device, &snap.user, now)?;
            if let Some(why) = decision.suspend {
                return Err(Error::FailedPrecondition(format!(
                    "approvals for this user are now suspended: {why}"
                )));
            }
            // Factors suspected cloned answer nothing until reviewed; synced
            // passkeys approve withdrawals only if policy allows.
            let synced = live
                .iter()
                .any(|(f, _)| f.webauthn.as_ref().is_some_and(|c| c.backup_eligible));
            let cloned = live.iter().any(|(f, _)| f.suspected_cloned);
            let factors: Vec<FactorRecord> = live
                .into_iter()
                .map(|(f, _)| f)
                .filter(|f| decision.kinds.contains(&f.kind))
                .filter(|f| !f.suspected_cloned)
                .filter(|f| match &f.webauthn {
                    Some(c) => self.webauthn.may_approve(action.name(), c).is_ok(),
                    None => true,
                })
                .collect();
            if factors.is_empty() {
                let names: Vec<&str> = decision.kinds.iter().map(|k| k.name()).collect();
                let hint = if synced && action == Action::Withdrawal {
                    " (a synced passkey does not approve withdrawals: webauthn.synced_passkeys_may_withdraw)"
                } else if cloned {
                    " (a factor suspected cloned answers nothing until re-enrolled)"
                } else {
                    ""
                };
                return Err(Error::FailedPrecondition(format!(
                    "policy allows only {} to approve this {}; user '{user_id}' has none of them active{hint}",
                    names.join(", "),
                    action.name()
                )));
            }
            Ok((decision.kinds, factors))
        })();
        let (allowed, factors) = match decided {
            Ok(v) => v,
            Err(e) => {
                let mut extra = Batch::new();
                // A velocity rule that fired suspends the user; a compromised device is recorded.
                if let Ok(d) = self.cfg.policy.decide(action, &intent, &device, &snap.user, now) {
                    if let Some(why) = d.suspend {
                        user.suspension = Some(crate::protect::Suspension {
                            reason: why.clone(),
                            by: "velocity rule".into(),
                            since: now,
                            until: None,
                        });
                        Event::new(EventKind::SuspensionChanged, &user_id, now, snap.anti_phishing_code())
                            .with("suspended", "true")
                            .with("reason", why)
                            .append_to(&mut extra)?;
                    }
                }
                if user != snap.user {
                    self.put_user(&mut extra, &user_id, &snap, &user)?;
                }
                self.audit_refusal(audit(&e), extra);
                return Err(e);
            }
        };
        let challenge_id = self.new_id("ch_")?;
        let expires_at = now + self.cfg.approval.challenge_ttl_seconds;
        let digest = intent.digest();
        let nonce = self.random(16)?;
        let creds: Vec<crate::factor::webauthn::StoredCredential> =
            factors.iter().filter_map(|f| f.webauthn.clone()).collect();
        let (webauthn_options, webauthn_state) = if creds.is_empty() {
            (None, None)
        } else {
            let challenge = sigil_verify::webauthn_challenge(&nonce, &digest);
            let (o, st) =
                self.webauthn
                    .begin_assertion(&creds, &challenge, self.webauthn.uv_required_for(action.name()))?;
            (Some(o), Some(st))
        };
        let yubikey_hmac_challenge = factors
            .iter()
            .any(|f| f.kind == Kind::YubikeyHmac)
            .then(|| crate::factor::yubikey::hmac_challenge(&nonce, &digest));
        let rec = ChallengeRecord {
            v: RECORD_VERSION,
            user_id: user_id.clone(),
            intent,
            allowed: allowed.clone(),
            created_at: now,
            expires_at,
            consumed_at: None,
            device: device.clone(),
            epochs: snap.epochs(),
            nonce: b64url::encode(&nonce),
            webauthn_state,
        };
        let mut batch = Batch::new();
        batch.insert(Table::Challenges, challenge_id.as_bytes(), to_json(&rec)?);
        if user != snap.user {
            self.put_user(&mut batch, &user_id, &snap, &user)?;
        } else {
            // Only the new challenge and its audit entry: losing them in a
            // crash refuses the answer (unknown challenge), so they need not
            // be durable before the reply. The answer's own commit makes
            // them durable first (commit order).
            batch.deferred();
        }
        AuditEntry::ok(now, actor, &user_id, "approval.begin")
            .with("challenge_id", challenge_id.clone())
            .with("act", rec.intent.action.clone())
            .with("intent_sha256", b64url::encode(&digest))
            .with("device.jailbroken", device.jailbroken.to_string())
            .with("device.platform", device.platform)
            .append_to(&mut batch)?;
        self.commit(&batch)?;
        Ok(Begun {
            challenge_id,
            intent_sha256: digest,
            allowed,
            factors,
            expires_at,
            anti_phishing_code: snap.anti_phishing_code(),
            webauthn_options,
            yubikey_hmac_challenge,
        })
    }

    /// Verifies a proof, consumes the challenge and issues the approval.
    pub fn complete_approval(
        &self,
        actor: &str,
        challenge_id: &str,
        user_id: &str,
        proof: Proof,
    ) -> Result<Issued, Error> {
        intent::check_id("challenge_id", challenge_id)?;
        intent::check_id("user_id", user_id)?;
        proof.validate()?;
        let now = self.now()?;
        let stored = self
            .store
            .get(Table::Challenges, challenge_id.as_bytes())?
            .ok_or_else(|| Error::NotFound(format!("challenge '{challenge_id}' not found; begin a new approval")))?;
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
        let snap = self.snapshot(user_id)?;
        let refused = |e: Error| {
            self.audit_refusal(
                AuditEntry::refused(now, actor, user_id, "approval.issue", &e.to_string())
                    .with("challenge_id", challenge_id)
                    .with("act", ch.intent.action.clone()),
                Batch::new(),
            );
            e
        };
        if let Some(r) = crate::backup::restore_record(self.store.as_ref())? {
            if ch.created_at <= r.restored_at {
                return Err(Error::FailedPrecondition(format!(
                    "challenge '{challenge_id}' was opened before the store was restored from a backup; begin a new approval"
                )));
            }
        }
        if ch.epochs != snap.epochs() {
            return Err(refused(Error::FailedPrecondition(format!(
                "challenge '{challenge_id}' died when the user's factors were revoked; enroll again and begin a new approval"
            ))));
        }
        snap.check_not_suspended(now, "approval").map_err(refused)?;
        // The protections are decided again on the current state: the lock,
        // the whitelist and the velocity rules may have changed since the
        // challenge was opened (other approvals completed, a factor added,
        // an address removed).
        // The destination's whitelist record, for the issuing batch to
        // condition on (None: not a withdrawal, or no whitelist required).
        let mut address = None;
        if ch.intent.action == Action::Withdrawal.name() {
            if now < snap.user.security_locked_until {
                return Err(refused(Error::FailedPrecondition(format!(
                    "withdrawals are locked until {} after a security change ({})",
                    snap.user.security_locked_until, snap.user.security_lock_reason
                ))));
            }
            address =
                whitelist_check(self, user_id, &ch.intent.network, &ch.intent.destination, now).map_err(refused)?;
        }
        if let Some(action) = Action::parse(&ch.intent.action) {
            let decision = self
                .cfg
                .policy
                .decide(action, &ch.intent, &ch.device, &snap.user, now)
                .map_err(refused)?;
            if let Some(why) = decision.suspend {
                let mut user = snap.user.clone();
                user.suspension = Some(crate::protect::Suspension {
                    reason: why.clone(),
                    by: "velocity rule".into(),
                    since: now,
                    until: None,
                });
                let mut extra = Batch::new();
                Event::new(EventKind::SuspensionChanged, user_id, now, snap.anti_phishing_code())
                    .with("suspended", "true")
                    .with("reason", why.clone())
                    .append_to(&mut extra)?;
                self.put_user(&mut extra, user_id, &snap, &user)?;
                let e = Error::FailedPrecondition(format!("approvals for this user are now suspended: {why}"));
                self.audit_refusal(
                    AuditEntry::refused(now, actor, user_id, "approval.issue", &e.to_string())
                        .with("challenge_id", challenge_id),
                    extra,
                );
                return Err(e);
            }
            if !decision.kinds.contains(&proof.kind()) {
                return Err(refused(Error::FailedPrecondition(format!(
                    "policy now allows only {} to approve this {}",
                    decision.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
                    action.name()
                ))));
            }
        }
        if !ch.allowed.contains(&proof.kind()) {
            return Err(refused(Error::FailedPrecondition(format!(
                "policy does not let a {} factor answer this challenge; use one of: {}",
                proof.kind().name(),
                ch.allowed.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ))));
        }
        let nonce = b64url::decode(&ch.nonce).map_err(|_| Error::Internal("challenge nonce unreadable".into()))?;
        let digest = ch.intent.digest();
        let (factor, fversion, amr, evidence) = match proof {
            Proof::Totp { code, factor_id } => {
                let (factor, fversion) = self.pick_factor(user_id, Kind::Totp, factor_id.as_deref(), &snap)?;
                let (step, factor, fversion) = self.check_totp(actor, &factor, fversion, &code, now)?;
                let mut used = factor.clone();
                used.totp_last_step = Some(step);
                (
                    used,
                    fversion,
                    Kind::Totp.amr().iter().map(|s| s.to_string()).collect(),
                    None,
                )
            }
            Proof::Webauthn { response_json } => {
                let state = ch.webauthn_state.as_deref().ok_or_else(|| {
                    Error::FailedPrecondition("no WebAuthn credential may answer this challenge".into())
                })?;
                let (used, fversion, amr, evidence) = self.check_webauthn(
                    actor,
                    user_id,
                    &ch.intent.action,
                    state,
                    &response_json,
                    &nonce,
                    &snap,
                    now,
                )?;
                (used, fversion, amr, Some(evidence))
            }
            Proof::YubikeyHmac { response, factor_id } => {
                let (factor, fversion) = self.pick_factor(user_id, Kind::YubikeyHmac, factor_id.as_deref(), &snap)?;
                let challenge = crate::factor::yubikey::hmac_challenge(&nonce, &digest);
                let (factor, fversion) =
                    self.check_yubikey_hmac(actor, &factor, fversion, &challenge, &response, now)?;
                (
                    factor,
                    fversion,
                    Kind::YubikeyHmac.amr().iter().map(|s| s.to_string()).collect(),
                    None,
                )
            }
            Proof::YubikeyOtp { otp } => {
                let (f, fversion) = self.otp_factor(actor, user_id, &otp, &snap, now)?;
                if !f.is_active() || !f.is_live(snap.epochs()) {
                    return Err(Error::FailedPrecondition(format!(
                        "YubiKey factor '{}' is not active (pending or revoked)",
                        f.factor_id
                    )));
                }
                let (used, fversion) = self.check_yubikey_otp(actor, &f, fversion, &otp, now)?;
                (
                    used,
                    fversion,
                    Kind::YubikeyOtp.amr().iter().map(|s| s.to_string()).collect(),
                    None,
                )
            }
        };
        let (factor_user, factor_id) = (factor.user_id.clone(), factor.factor_id.clone());
        let issued = self.issue(
            actor,
            challenge_id,
            stored.version,
            &ch,
            &snap,
            factor,
            fversion,
            amr,
            evidence,
            address,
            now,
        );
        if issued.is_err() {
            // The proof was right but nothing was issued (HSM or store
            // trouble, or a concurrent change): the attempt counted for it
            // is given back, so a right answer never counts as a failure.
            self.release_attempt(&factor_user, &factor_id, fversion);
        }
        issued
    }

    /// Signs the approval and commits, in one batch: the challenge consumed,
    /// the factor's new state, the approval, the user's velocity record, the
    /// event and the audit entry, conditioned on the destination's whitelist
    /// record (`address`: its key and version) so that removing the address
    /// while the user approves kills the approval.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn issue(
        &self,
        actor: &str,
        challenge_id: &str,
        challenge_version: u64,
        ch: &ChallengeRecord,
        snap: &Snapshot,
        mut factor: FactorRecord,
        factor_version: u64,
        amr: Vec<String>,
        webauthn: Option<sigil_verify::WebauthnEvidence>,
        address: Option<(Vec<u8>, u64)>,
        now: i64,
    ) -> Result<Issued, Error> {
        let jti = self.new_id("")?;
        let exp = now + self.cfg.approval.ttl_seconds;
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
            webauthn,
        };
        let (token, kid) = self.signer.sign(&claims)?;

        let mut consumed = ch.clone();
        consumed.consumed_at = Some(now);
        factor.failures = 0;
        factor.locked_until = 0;
        factor.last_used_at = now;
        let record = ApprovalRecord {
            v: RECORD_VERSION,
            user_id: ch.user_id.clone(),
            act: claims.act.clone(),
            intent_sha256: claims.intent_sha256.clone(),
            kid,
            iat: now,
            exp,
            redeemed_at: None,
            redeemed_key: None,
            epochs: snap.epochs(),
        };
        let mut batch = Batch::new();
        batch
            .update(
                Table::Challenges,
                challenge_id.as_bytes(),
                challenge_version,
                to_json(&consumed)?,
            )
            .update(
                Table::Factors,
                FactorRecord::key(&ch.user_id, &factor.factor_id),
                factor_version,
                factor.encode()?,
            )
            .insert(Table::Approvals, jti.as_bytes(), to_json(&record)?);
        self.check_global(&mut batch, snap);
        // A verified factor ends the count of attempts with unknown
        // credential ids, as it ends its own.
        let mut user = snap.user.clone();
        let reset_unknown = user.unknown_id_failures != 0 || user.unknown_id_locked_until != 0;
        user.unknown_id_failures = 0;
        user.unknown_id_locked_until = 0;
        if ch.intent.action == Action::Withdrawal.name() {
            user.recent.retain(|r| r.at > now - 86_400);
            user.recent.push(RecentWithdrawal {
                at: now,
                asset: ch.intent.asset.clone(),
                amount: ch.intent.amount.clone(),
            });
            self.put_user(&mut batch, &ch.user_id, snap, &user)?;
        } else if reset_unknown {
            self.put_user(&mut batch, &ch.user_id, snap, &user)?;
        } else {
            batch.check(Table::Users, ch.user_id.as_bytes(), snap.user_version);
        }
        if let Some((key, version)) = address {
            batch.check(Table::Addresses, key, version);
        }
        Event::new(EventKind::ApprovalIssued, &ch.user_id, now, snap.anti_phishing_code())
            .with("jti", jti.clone())
            .with("act", claims.act.clone())
            .with("asset", ch.intent.asset.clone())
            .with("amount", ch.intent.amount.clone())
            .with("destination", ch.intent.destination.clone())
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, &ch.user_id, "approval.issue")
            .with("challenge_id", challenge_id)
            .with("jti", jti.clone())
            .with("act", claims.act.clone())
            .with("intent_sha256", claims.intent_sha256.clone())
            .with("factor_id", factor.factor_id.clone())
            .with("amr", amr.join(" "))
            .with("kid", record.kid.clone())
            .append_to(&mut batch)?;
        self.commit(&batch).map_err(|e| match e {
            Error::FailedPrecondition(_) => Error::FailedPrecondition(format!(
                "challenge '{challenge_id}', its factor or the user's protection state changed while answering (answered twice, revoked or suspended?); nothing was issued"
            )),
            other => other,
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
    pub fn redeem_approval(&self, actor: &str, token: &str, expected: Option<&Intent>) -> Result<Claims, Error> {
        self.redeem_approval_keyed(actor, token, expected, "").map(|r| r.claims)
    }

    /// [`Sigil::redeem_approval`] with the engine's idempotency key: a
    /// retry with the same approval and key after a lost reply gets the
    /// original success back, marked as a replay.
    pub fn redeem_approval_keyed(
        &self,
        actor: &str,
        token: &str,
        expected: Option<&Intent>,
        key: &str,
    ) -> Result<Redeemed, Error> {
        if token.is_empty() {
            return Err(Error::invalid("approval", "is required"));
        }
        if key.len() > 128 || key.chars().any(char::is_control) {
            return Err(Error::invalid(
                "idempotency_key",
                "at most 128 bytes, no control characters",
            ));
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
        if claims.act == Action::Withdrawal.name() && expected.is_none() {
            return Err(Error::invalid(
                "expected_intent",
                "is required to redeem a withdrawal approval: send the engine's own record of the withdrawal, \
                 which must equal the approved intent field for field",
            ));
        }
        // The engine's own retry of a redemption whose reply it lost.
        if !key.is_empty() {
            if let Some(stored) = self.store.get(Table::Approvals, claims.jti.as_bytes())? {
                let rec: ApprovalRecord = from_json("approval", &stored.value)?;
                if let (Some(at), Some(k)) = (rec.redeemed_at, rec.redeemed_key.as_deref()) {
                    if k == key && rec.intent_sha256 == claims.intent_sha256 {
                        tracing::info!(user = %claims.sub, jti = %claims.jti, "redemption retried with its key: replayed");
                        return Ok(Redeemed {
                            claims,
                            replayed: true,
                            redeemed_at: at,
                        });
                    }
                }
            }
        }
        let mut batch = Batch::new();
        let snap = self.snapshot(&claims.sub)?;
        if let Err(e) = self.add_redeem_keyed(&claims, &snap, now, key, &mut batch) {
            self.audit_refusal(
                AuditEntry::refused(now, actor, &claims.sub, "approval.redeem", &e.to_string())
                    .with("jti", claims.jti.clone()),
                Batch::new(),
            );
            return Err(e);
        }
        Event::new(EventKind::ApprovalRedeemed, &claims.sub, now, snap.anti_phishing_code())
            .with("jti", claims.jti.clone())
            .with("act", claims.act.clone())
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, &claims.sub, "approval.redeem")
            .with("jti", claims.jti.clone())
            .with("act", claims.act.clone())
            .with("intent_sha256", claims.intent_sha256.clone())
            .append_to(&mut batch)?;
        self.commit(&batch).map_err(|e| match e {
            Error::FailedPrecondition(_) => Error::FailedPrecondition(format!(
                "approval '{}' was already redeemed, or the user's state changed concurrently",
                claims.jti
            )),
            other => other,
        })?;
        tracing::info!(user = %claims.sub, act = %claims.act, jti = %claims.jti, "approval redeemed");
        Ok(Redeemed {
            claims,
            replayed: false,
            redeemed_at: now,
        })
    }

    /// Adds the write that redeems `claims.jti` to `batch`, after checking
    /// it is issued, not yet redeemed, not revoked and not suspended.
    fn add_redeem(&self, claims: &Claims, snap: &Snapshot, now: i64, batch: &mut Batch) -> Result<(), Error> {
        self.add_redeem_keyed(claims, snap, now, "", batch)
    }

    /// [`Sigil::add_redeem`], recording the redemption's idempotency key.
    fn add_redeem_keyed(
        &self,
        claims: &Claims,
        snap: &Snapshot,
        now: i64,
        key: &str,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let stored = self
            .store
            .get(Table::Approvals, claims.jti.as_bytes())?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("approval '{}' is not known to this deployment", claims.jti))
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
        if rec.epochs != snap.epochs() {
            return Err(Error::FailedPrecondition(format!(
                "approval '{}' was revoked with the user's factors; request a new one after enrolling again",
                claims.jti
            )));
        }
        if let Some(r) = crate::backup::restore_record(self.store.as_ref())? {
            if claims.iat <= r.restored_at {
                return Err(Error::FailedPrecondition(format!(
                    "approval '{}' was issued before the store was restored from a backup (at {}); request a new one",
                    claims.jti, r.restored_at
                )));
            }
        }
        snap.check_not_suspended(now, "redemption")?;
        if claims.act == Action::Withdrawal.name() {
            // What the engine is about to do must still be allowed: the
            // destination still whitelisted and past its hold (and the
            // redemption conditioned on that record, so a removal racing
            // it wins or loses as a whole).
            let i = &claims.intent;
            if let Some((key, version)) = whitelist_check(self, &claims.sub, &i.network, &i.destination, now)? {
                batch.check(Table::Addresses, key, version);
            }
        }
        rec.redeemed_at = Some(now);
        rec.redeemed_key = (!key.is_empty()).then(|| key.to_string());
        batch.update(Table::Approvals, claims.jti.as_bytes(), stored.version, to_json(&rec)?);
        self.check_snapshot(batch, &claims.sub, snap);
        Ok(())
    }

    /// Checks a step-up approval for `action` by `user_id` whose intent
    /// passes `fits`, and adds its redemption to `batch`.
    pub(crate) fn step_up(
        &self,
        token: &str,
        action: Action,
        user_id: &str,
        snap: &Snapshot,
        fits: impl Fn(&Intent) -> Result<(), String>,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        if token.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "this needs an approval of action '{}' by user '{user_id}' (step_up_approval / approval field)",
                action.name()
            )));
        }
        let now = self.now()?;
        let claims = self
            .signer
            .verifier()
            .verify(token, now)
            .map_err(|e| match verify_error(e) {
                Error::InvalidArgument { reason, .. } => Error::invalid("approval", reason),
                other => other,
            })?;
        if claims.act != action.name() || claims.sub != user_id {
            return Err(Error::PermissionDenied(format!(
                "the approval is for action '{}' of user '{}'; this needs action '{}' of user '{user_id}'",
                claims.act,
                claims.sub,
                action.name()
            )));
        }
        fits(&claims.intent)
            .map_err(|why| Error::PermissionDenied(format!("the approval was given for something else: {why}")))?;
        self.add_redeem(&claims, snap, now, batch)
    }

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
                    .filter(|(f, _)| f.kind == kind)
                    .collect();
                match of_kind.len() {
                    0 => {
                        return Err(Error::FailedPrecondition(format!(
                            "user '{user_id}' has no active {} factor",
                            kind.name()
                        )))
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
        if f.kind != kind {
            return Err(Error::invalid(
                field,
                format!("factor '{}' is not a {} factor", f.factor_id, kind.name()),
            ));
        }
        if !f.is_active() {
            return Err(Error::FailedPrecondition(format!(
                "factor '{}' is not active yet",
                f.factor_id
            )));
        }
        if !f.is_live(snap.epochs()) {
            return Err(Error::FailedPrecondition(format!(
                "factor '{}' was revoked; enroll again",
                f.factor_id
            )));
        }
        Ok((f, v))
    }

    /// Checks a TOTP code against a factor, the attempt counted before the
    /// code is compared ([`Sigil::reserve_attempt`]). Returns the step the
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
        let floor = crate::backup::restore_record(self.store.as_ref())?.map(|r| r.totp_floor_step());
        let (f, version) = self.reserve_attempt(f, version, now)?;
        let last = match (f.totp_last_step, floor) {
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
    /// counted ([`Sigil::refuse_attempt`] only records it).
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
            match self.commit(&batch) {
                Ok(_) => return Ok((reserved, version + 1)),
                Err(Error::FailedPrecondition(_)) => {
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

    /// Gives back an attempt counted by [`Sigil::reserve_attempt`] whose
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
        if let Err(e) = self.commit(&batch) {
            tracing::warn!(error = %e, user = %user_id, factor = %factor_id, "could not give back an attempt");
        }
    }

    /// Records a failed attempt already counted by
    /// [`Sigil::reserve_attempt`] (its audit entry, and a lockout event
    /// when it locked the factor) and returns the refusal.
    pub(crate) fn refuse_attempt(&self, actor: &str, f: &FactorRecord, now: i64, what: &str) -> Error {
        let write = (|| -> Result<(), Error> {
            let mut batch = Batch::new();
            AuditEntry::refused(now, actor, &f.user_id, "factor.verify", what)
                .with("factor_id", f.factor_id.clone())
                .with("failures", f.failures.to_string())
                .append_to(&mut batch)?;
            if f.locked_until > now {
                let apc = self.snapshot(&f.user_id)?.anti_phishing_code();
                Event::new(EventKind::Lockout, &f.user_id, now, apc)
                    .with("factor_id", f.factor_id.clone())
                    .with("locked_until", f.locked_until.to_string())
                    .append_to(&mut batch)?;
            }
            self.commit(&batch)?;
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
        Error::PermissionDenied(format!(
            "{what}; {} attempts left before the factor locks",
            lockout::attempts_left(&self.cfg.lockout, f.failures)
        ))
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
