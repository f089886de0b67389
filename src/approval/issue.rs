use sigil_verify::{b64url, Claims};

use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::protect::{self, Snapshot};
use crate::store::{meta, Batch};

impl Approvals {
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
        held: (Vec<crate::protect::policy::QuorumNeed>, i64),
        now: i64,
    ) -> Result<Issued, Error> {
        let (needs, delay_seconds) = held;
        if !needs.is_empty() || delay_seconds > 0 {
            return self.issue_held(
                actor,
                challenge_id,
                challenge_version,
                ch,
                snap,
                factor,
                factor_version,
                amr,
                webauthn,
                address,
                (needs, delay_seconds),
                now,
            );
        }
        let jti = self.k.new_timed_id("", now)?;
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
            approvers: Vec::new(),
            quorum: Vec::new(),
        };
        let (token, kid) = self.k.signer.sign(&claims)?;

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
            nbf: None,
            cancelled_at: None,
            request_id: String::new(),
        };
        let mut batch = self.answered_batch(
            challenge_id,
            challenge_version,
            ch,
            snap,
            &factor,
            factor_version,
            address,
            now,
        )?;
        batch.insert(Table::Approvals, jti.as_bytes(), codec::encode(&record)?);
        meta::index_expiry(&mut batch, Table::Approvals, jti.as_bytes(), exp);
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
        self.k.commit(&batch).map_err(|e| answer_conflict(e, challenge_id))?;
        tracing::info!(user = %ch.user_id, act = %claims.act, jti = %jti, "approval issued");
        Ok(Issued {
            token,
            jti,
            expires_at: exp,
            amr,
            not_before: None,
            request: None,
        })
    }

    /// [`Approvals::issue`] for an action policy holds: for a staff quorum
    /// (a request is opened; nothing is signed yet) or only for a delay
    /// (the approval is signed now with `nbf`, and a request records it so
    /// it can be listed and cancelled).
    #[allow(clippy::too_many_arguments)]
    fn issue_held(
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
        held: (Vec<crate::protect::policy::QuorumNeed>, i64),
        now: i64,
    ) -> Result<Issued, Error> {
        let (needs, delay_seconds) = held;
        factor.failures = 0;
        factor.locked_until = 0;
        factor.last_used_at = now;
        let mut batch = self.answered_batch(
            challenge_id,
            challenge_version,
            ch,
            snap,
            &factor,
            factor_version,
            address,
            now,
        )?;
        let only_delay = needs.is_empty();
        let mut req = self.hold_for_quorum(
            &mut batch,
            actor,
            ch,
            challenge_id,
            needs,
            delay_seconds,
            &amr,
            webauthn,
            snap.epochs(),
            snap.anti_phishing_code(),
            now,
        )?;
        let mut issued = Issued {
            token: String::new(),
            jti: String::new(),
            expires_at: req.expires_at,
            amr: amr.clone(),
            not_before: None,
            request: None,
        };
        if only_delay {
            let (token, record, claims) = self.sign_held(&req, now)?;
            self.add_issued(
                &mut batch,
                &mut req,
                token.clone(),
                &record,
                &claims,
                snap.anti_phishing_code(),
                now,
            )?;
            issued.token = token;
            issued.jti = claims.jti.clone();
            issued.expires_at = claims.exp;
            issued.not_before = claims.nbf;
        }
        batch.insert(Table::Quorum, req.request_id.as_bytes(), codec::encode(&req)?);
        AuditEntry::ok(now, actor, &ch.user_id, "approval.issue")
            .with("challenge_id", challenge_id)
            .with("request_id", req.request_id.clone())
            .with("jti", issued.jti.clone())
            .with("act", ch.intent.action.clone())
            .with("intent_sha256", b64url::encode(&ch.intent.digest()))
            .with("factor_id", factor.factor_id.clone())
            .with("amr", amr.join(" "))
            .with("state", req.state.name())
            .append_to(&mut batch)?;
        self.k.commit(&batch).map_err(|e| answer_conflict(e, challenge_id))?;
        tracing::info!(user = %ch.user_id, request = %req.request_id, state = req.state.name(), "approval held by policy");
        issued.request = Some(req);
        Ok(issued)
    }

    /// The writes every answer makes: the challenge consumed, the factor's
    /// new state, the user's velocity record (or a check of it), the
    /// destination's whitelist record checked, the global record checked.
    #[allow(clippy::too_many_arguments)]
    fn answered_batch(
        &self,
        challenge_id: &str,
        challenge_version: u64,
        ch: &ChallengeRecord,
        snap: &Snapshot,
        factor: &FactorRecord,
        factor_version: u64,
        address: Option<(Vec<u8>, u64)>,
        now: i64,
    ) -> Result<Batch, Error> {
        let consumed = ch.answered(now);
        let mut batch = Batch::new();
        batch
            .update(
                Table::Challenges,
                challenge_id.as_bytes(),
                challenge_version,
                codec::encode(&consumed)?,
            )
            .update(
                Table::Factors,
                FactorRecord::key(&ch.user_id, &factor.factor_id),
                factor_version,
                factor.encode()?,
            );
        protect::check_global(&mut batch, snap);
        // A verified factor ends the count of attempts with unknown
        // credential ids, as it ends its own.
        let mut user = snap.user.clone();
        let reset_unknown = user.unknown_id_failures != 0 || user.unknown_id_locked_until != 0;
        user.unknown_id_failures = 0;
        user.unknown_id_locked_until = 0;
        if ch.intent.action == Action::Withdrawal.name() {
            user.record_withdrawal(now, &ch.intent.asset, &ch.intent.amount);
            protect::put_user(&mut batch, &ch.user_id, snap, &user)?;
        } else if reset_unknown {
            protect::put_user(&mut batch, &ch.user_id, snap, &user)?;
        } else {
            batch.check(Table::Users, ch.user_id.as_bytes(), snap.user_version);
        }
        if let Some((key, version)) = address {
            batch.check(Table::Addresses, key, version);
        }
        Ok(batch)
    }
}

/// The conflict of an answer's commit, said for the caller.
fn answer_conflict(e: Error, challenge_id: &str) -> Error {
    match e {
        Error::Conflict(_) => Error::Conflict(format!(
            "challenge '{challenge_id}', its factor or the user's protection state changed while answering (answered twice, revoked or suspended?); nothing was issued"
        )),
        other => other,
    }
}
