use sigil_verify::{b64url, Intent};

use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::protect::{self, Snapshot};
use crate::store::{meta, Batch};

impl Approvals {
    /// Validates an intent, applies the protections and the policy, and
    /// opens a challenge. `actor` is the caller's role, for the audit log.
    pub fn begin_approval(&self, actor: &str, intent: Intent, device: DeviceSignals) -> Result<Begun, Error> {
        let action = intent::validate(&self.cfg.assets, &intent)?;
        if matches!(action, Action::Withdrawal | Action::AddAddress | Action::RemoveAddress) {
            address::validate(
                &self.cfg.assets,
                "intent.destination",
                &intent.network,
                &intent.destination,
            )?;
        }
        if action == Action::Withdrawal {
            address::validate_memo(&self.cfg.assets, "intent.memo", &intent.network, &intent.memo)?;
        }
        // Only approvals that can be used: what the approval would let the
        // caller do is checked now, before the user is asked.
        match action {
            Action::RemoveFactor => {
                if let Err(Error::NotFound(_)) = self.factors.factor(&intent.user_id, &intent.memo) {
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
                crate::protect::check_anti_phishing_code("intent.memo", &intent.memo)?;
            }
            Action::EnrollFactor => crate::factor::check_enrollment_memo("intent.memo", &intent.memo)?,
            Action::CancelApproval => self.check_user_may_cancel(&intent.user_id, &intent.memo, self.k.now()?)?,
            _ => {}
        }
        if device.platform.len() > 64 || device.app_attestation.len() > 256 {
            return Err(Error::invalid(
                "device",
                "platform is limited to 64 bytes, app_attestation to 256",
            ));
        }
        let now = self.k.now()?;
        let user_id = intent.user_id.clone();
        let snap = Snapshot::load(self.k.store.as_ref(), &user_id)?;
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
        // The suspension a velocity rule decided, if one fired.
        let mut fired: Option<String> = None;
        // What the approval will be held for (staff quorums, a delay).
        let mut held = (Vec::new(), 0);
        let policy = self.policy()?;
        let decided = (|| -> Result<(Vec<Kind>, Vec<FactorRecord>), Error> {
            snap.check_not_suspended(now, "approval")?;
            let live = self.factors.live_factors(&user_id, &snap)?;
            if live.is_empty() {
                return Err(Error::refused(
                    Reason::NoUsableFactor,
                    format!("user '{user_id}' has no active second factor; enroll one before any approval"),
                ));
            }
            if action == Action::Withdrawal {
                if now < snap.user.security_locked_until {
                    return Err(Error::refused(
                        Reason::SecurityChangeLock,
                        format!(
                            "withdrawals are locked until {} after a security change ({})",
                            snap.user.security_locked_until, snap.user.security_lock_reason
                        ),
                    )
                    .retry_at(snap.user.security_locked_until, now));
                }
                self.whitelist_check(&user_id, &intent.network, &intent.destination, now)?;
            }
            let decision = policy.decide(action, &intent, &device, &snap.user, now)?;
            held = (decision.quorum.clone(), decision.delay_seconds);
            if let Some(why) = decision.suspend {
                fired = Some(why.clone());
                return Err(Error::refused(
                    Reason::Suspended,
                    format!("approvals for this user are now suspended: {why}"),
                ));
            }
            // Factors suspected cloned answer nothing until reviewed; synced
            // passkeys approve withdrawals only if policy allows.
            let synced = live
                .iter()
                .any(|(f, _)| f.credential().is_some_and(|c| c.backup_eligible));
            let cloned = live.iter().any(|(f, _)| f.suspected_cloned);
            let factors: Vec<FactorRecord> = live
                .into_iter()
                .map(|(f, _)| f)
                .filter(|f| decision.kinds.contains(&f.kind()))
                .filter(|f| !f.suspected_cloned)
                .filter(|f| match f.credential() {
                    Some(c) => self.factors.webauthn.may_approve(action.name(), c).is_ok(),
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
                return Err(Error::refused(
                    Reason::NoUsableFactor,
                    format!(
                        "policy allows only {} to approve this {}; user '{user_id}' has none of them active{hint}",
                        names.join(", "),
                        action.name()
                    ),
                ));
            }
            Ok((decision.kinds, factors))
        })();
        let (allowed, factors) = match decided {
            Ok(v) => v,
            Err(e) => {
                let mut extra = Batch::new();
                // A velocity rule that fired suspends the user, also when an
                // earlier check (a lock, the whitelist, no usable factor)
                // refused first: the alert must not depend on which check
                // ran first. A user already suspended keeps that suspension.
                // A compromised device is recorded.
                let fired = match fired {
                    Some(why) => Some(why),
                    None if snap.check_not_suspended(now, "approval").is_ok() => policy
                        .decide(action, &intent, &device, &snap.user, now)
                        .ok()
                        .and_then(|d| d.suspend),
                    None => None,
                };
                if let Some(why) = fired {
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
                if user != snap.user {
                    protect::put_user(&mut extra, &user_id, &snap, &user)?;
                }
                self.k.audit_refusal(audit(&e), extra);
                return Err(e);
            }
        };
        let challenge_id = self.k.new_timed_id("ch_", now)?;
        let expires_at = now + self.cfg.approval.challenge_ttl_seconds;
        let digest = intent.digest();
        let nonce = self.k.random(16)?;
        let creds: Vec<crate::factor::webauthn::StoredCredential> =
            factors.iter().filter_map(|f| f.credential().cloned()).collect();
        let (webauthn_options, webauthn_state) = if creds.is_empty() {
            (None, None)
        } else {
            let challenge = sigil_verify::webauthn_challenge(&nonce, &digest);
            let (o, st) = self.factors.webauthn.begin_assertion(
                &creds,
                &challenge,
                self.factors.webauthn.uv_required_for(action.name()),
            )?;
            (Some(o), Some(st))
        };
        let yubikey_hmac_challenge = factors
            .iter()
            .any(|f| f.kind() == Kind::YubikeyHmac)
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
        batch.insert(Table::Challenges, challenge_id.as_bytes(), codec::encode(&rec)?);
        meta::index_expiry(&mut batch, Table::Challenges, challenge_id.as_bytes(), expires_at);
        if user != snap.user {
            protect::put_user(&mut batch, &user_id, &snap, &user)?;
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
        self.k.commit(&batch)?;
        Ok(Begun {
            challenge_id,
            intent_sha256: digest,
            allowed,
            factors,
            expires_at,
            anti_phishing_code: snap.anti_phishing_code(),
            webauthn_options,
            yubikey_hmac_challenge,
            quorum: held.0,
            delay_seconds: held.1,
        })
    }
}
