use sigil_verify::{b64url, Intent};

use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::protect::{self, Snapshot};
use crate::store::{meta, Batch};

impl Approvals {
    /// BeginApproval and CompleteApproval in one call, for proofs that do
    /// not depend on the challenge (TOTP, Yubico OTP): the challenge is
    /// opened and answered at once, with the same checks, attempt counting
    /// and audit entries as the two calls. A malformed proof or one that
    /// needs the challenge is refused before anything is written.
    pub fn approve(&self, actor: &str, intent: Intent, device: DeviceSignals, proof: Proof) -> Result<Issued, Error> {
        if !matches!(proof, Proof::Totp { .. } | Proof::YubikeyOtp { .. }) {
            return Err(Error::invalid(
                "proof",
                "only a TOTP code or a Yubico OTP can answer in the same call; WebAuthn and YubiKey HMAC \
                 answer BeginApproval's challenge (use BeginApproval and CompleteApproval)",
            ));
        }
        proof.validate()?;
        let user_id = intent.user_id.clone();
        let begun = self.begin_approval(actor, intent, device)?;
        self.complete_approval(actor, &begun.challenge_id, &user_id, proof)
    }

    /// Verifies a proof, consumes the challenge and issues the approval.
    pub fn complete_approval(
        &self,
        actor: &str,
        challenge_id: &str,
        user_id: &str,
        proof: Proof,
    ) -> Result<Issued, Error> {
        crate::model::check_id("challenge_id", challenge_id)?;
        crate::model::check_id("user_id", user_id)?;
        proof.validate()?;
        let now = self.k.now()?;
        let stored = self
            .k
            .store
            .get(Table::Challenges, challenge_id.as_bytes())?
            .ok_or_else(|| Error::NotFound(format!("challenge '{challenge_id}' not found; begin a new approval")))?;
        let ch: ChallengeRecord = codec::decode(&stored.value)?;
        if ch.user_id != user_id {
            return Err(Error::denied(
                Reason::ChallengeNotForUser,
                format!("challenge '{challenge_id}' was not issued to user '{user_id}'"),
            ));
        }
        if ch.consumed_at.is_some() {
            return Err(Error::refused(
                Reason::ChallengeAlreadyAnswered,
                format!("challenge '{challenge_id}' was already answered; begin a new approval"),
            ));
        }
        if now >= ch.expires_at {
            return Err(Error::refused(
                Reason::ChallengeExpired,
                format!(
                    "challenge '{challenge_id}' expired at {}; begin a new approval",
                    ch.expires_at
                ),
            ));
        }
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let refused = |e: Error| {
            self.k.audit_refusal(
                AuditEntry::refused(now, actor, user_id, "approval.issue", &e.to_string())
                    .with("challenge_id", challenge_id)
                    .with("act", ch.intent.action.clone()),
                Batch::new(),
            );
            e
        };
        if let Some(r) = meta::restore_record(self.k.store.as_ref())? {
            if ch.created_at <= r.restored_at {
                return Err(Error::refused(Reason::Superseded, format!(
                    "challenge '{challenge_id}' was opened before the store was restored from a backup; begin a new approval"
                )));
            }
        }
        if ch.epochs != snap.epochs() {
            return Err(refused(Error::refused(Reason::Superseded, format!(
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
                return Err(refused(
                    Error::refused(
                        Reason::SecurityChangeLock,
                        format!(
                            "withdrawals are locked until {} after a security change ({})",
                            snap.user.security_locked_until, snap.user.security_lock_reason
                        ),
                    )
                    .retry_at(snap.user.security_locked_until, now),
                ));
            }
            address = self
                .whitelist_check(user_id, &ch.intent.network, &ch.intent.destination, now)
                .map_err(refused)?;
        }
        // What policy holds the approval for: staff quorums and a delay.
        let mut held = (Vec::new(), 0);
        if let Some(action) = Action::parse(&ch.intent.action) {
            let decision = self
                .policy()?
                .decide(action, &ch.intent, &ch.device, &snap.user, now)
                .map_err(refused)?;
            held = (decision.quorum.clone(), decision.delay_seconds);
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
                protect::put_user(&mut extra, user_id, &snap, &user)?;
                let e = Error::refused(
                    Reason::Suspended,
                    format!("approvals for this user are now suspended: {why}"),
                );
                self.k.audit_refusal(
                    AuditEntry::refused(now, actor, user_id, "approval.issue", &e.to_string())
                        .with("challenge_id", challenge_id),
                    extra,
                );
                return Err(e);
            }
            if !decision.kinds.contains(&proof.kind()) {
                return Err(refused(Error::refused(
                    Reason::FactorNotAllowed,
                    format!(
                        "policy now allows only {} to approve this {}",
                        decision.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
                        action.name()
                    ),
                )));
            }
        }
        if !ch.allowed.contains(&proof.kind()) {
            return Err(refused(Error::refused(
                Reason::FactorNotAllowed,
                format!(
                    "policy does not let a {} factor answer this challenge; use one of: {}",
                    proof.kind().name(),
                    ch.allowed.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                ),
            )));
        }
        let nonce = b64url::decode(&ch.nonce).map_err(|_| Error::Internal("challenge nonce unreadable".into()))?;
        let digest = ch.intent.digest();
        let (factor, fversion, amr, evidence) = match proof {
            Proof::Totp { code, factor_id } => {
                let (factor, fversion) = self
                    .factors
                    .pick_factor(user_id, Kind::Totp, factor_id.as_deref(), &snap)?;
                let (step, factor, fversion) = self.factors.check_totp(actor, &factor, fversion, &code, now)?;
                let mut used = factor.clone();
                used.set_totp_last_step(step);
                (
                    used,
                    fversion,
                    Kind::Totp.amr().iter().map(|s| s.to_string()).collect(),
                    None,
                )
            }
            Proof::Webauthn { response_json } => {
                let state = ch.webauthn_state.as_deref().ok_or_else(|| {
                    Error::refused(
                        Reason::FactorNotAllowed,
                        "no WebAuthn credential may answer this challenge",
                    )
                })?;
                let (used, fversion, amr, evidence) = self.factors.check_webauthn(
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
                let (factor, fversion) =
                    self.factors
                        .pick_factor(user_id, Kind::YubikeyHmac, factor_id.as_deref(), &snap)?;
                let challenge = crate::factor::yubikey::hmac_challenge(&nonce, &digest);
                let (factor, fversion) = self
                    .factors
                    .check_yubikey_hmac(actor, &factor, fversion, &challenge, &response, now)?;
                (
                    factor,
                    fversion,
                    Kind::YubikeyHmac.amr().iter().map(|s| s.to_string()).collect(),
                    None,
                )
            }
            Proof::YubikeyOtp { otp } => {
                let (f, fversion) = self.factors.otp_factor(actor, user_id, &otp, &snap, now)?;
                if !f.is_live(snap.epochs()) {
                    return Err(Error::refused(
                        Reason::FactorRevoked,
                        format!("YubiKey factor '{}' was revoked; enroll again", f.factor_id),
                    ));
                }
                if !f.is_active() {
                    return Err(Error::refused(
                        Reason::FactorState,
                        format!("YubiKey factor '{}' is not active yet (pending)", f.factor_id),
                    ));
                }
                let (used, fversion) = self.factors.check_yubikey_otp(actor, &f, fversion, &otp, now)?;
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
            held,
            now,
        );
        if issued.is_err() {
            // The proof was right but nothing was issued (HSM or store
            // trouble, or a concurrent change): the attempt counted for it
            // is given back, so a right answer never counts as a failure.
            self.factors.release_attempt(&factor_user, &factor_id, fversion);
        }
        issued
    }
}
