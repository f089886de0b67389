use sigil_verify::{Claims, Intent};

use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::protect::{self, Snapshot};
use crate::store::{meta, Batch};

impl Approvals {
    /// Verifies an approval and marks it redeemed, exactly once.
    pub fn redeem_approval(&self, actor: &str, token: &str, expected: Option<&Intent>) -> Result<Claims, Error> {
        self.redeem_approval_keyed(actor, token, expected, "").map(|r| r.claims)
    }

    /// [`Approvals::redeem_approval`] with the engine's idempotency key: a
    /// retry with the same approval and key after a lost reply gets the
    /// original success back, marked as a replay.
    ///
    /// Concurrent redemptions of one approval race on its record: the loser
    /// reads it again, so it gets `APPROVAL_ALREADY_REDEEMED` — or, when it
    /// carried the winner's own key, the winner's success as a replay.
    pub fn redeem_approval_keyed(
        &self,
        actor: &str,
        token: &str,
        expected: Option<&Intent>,
        key: &str,
    ) -> Result<Redeemed, Error> {
        let mut last = None;
        for _ in 0..8 {
            match self.redeem_once(actor, token, expected, key) {
                Err(Error::Conflict(m)) => last = Some(m),
                other => return other,
            }
        }
        Err(Error::Conflict(last.unwrap_or_default()))
    }

    fn redeem_once(&self, actor: &str, token: &str, expected: Option<&Intent>, key: &str) -> Result<Redeemed, Error> {
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
        let now = self.k.now()?;
        let verifier = self.k.signer.verifier();
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
            if let Some(stored) = self.k.store.get(Table::Approvals, claims.jti.as_bytes())? {
                let rec: ApprovalRecord = codec::decode(&stored.value)?;
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
        let snap = Snapshot::load(self.k.store.as_ref(), &claims.sub)?;
        if let Err(e) = self.add_redeem_keyed(&claims, &snap, now, key, &mut batch) {
            self.k.audit_refusal(
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
        self.k.commit(&batch).map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "approval '{}' was redeemed, or the user's state changed, while this redemption ran; nothing was redeemed by it",
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
    pub(crate) fn add_redeem(
        &self,
        claims: &Claims,
        snap: &Snapshot,
        now: i64,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        self.add_redeem_keyed(claims, snap, now, "", batch)
    }

    /// [`Approvals::add_redeem`], recording the redemption's idempotency key.
    fn add_redeem_keyed(
        &self,
        claims: &Claims,
        snap: &Snapshot,
        now: i64,
        key: &str,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let stored = self
            .k
            .store
            .get(Table::Approvals, claims.jti.as_bytes())?
            .ok_or_else(|| {
                Error::refused(
                    Reason::ApprovalUnknown,
                    format!("approval '{}' is not known to this deployment", claims.jti),
                )
            })?;
        let mut rec: ApprovalRecord = codec::decode(&stored.value)?;
        if let Some(at) = rec.redeemed_at {
            return Err(Error::refused(
                Reason::ApprovalAlreadyRedeemed,
                format!("approval '{}' was already redeemed at {at}", claims.jti),
            ));
        }
        if let Some(at) = rec.cancelled_at {
            return Err(Error::refused(
                Reason::ApprovalCancelled,
                format!(
                    "approval '{}' was cancelled at {at} during its delay (request '{}'); do not execute",
                    claims.jti, rec.request_id
                ),
            ));
        }
        // The record's nbf, not the token's with the verifier's leeway: a
        // delayed approval is redeemable from its nbf exactly, and it can
        // be cancelled until then.
        if let Some(nbf) = rec.nbf.or(claims.nbf) {
            if now < nbf {
                return Err(Error::refused(
                    Reason::ApprovalNotYetValid,
                    format!(
                        "approval '{}' is delayed until {nbf} by policy (it can be cancelled until then); redeem it after that",
                        claims.jti
                    ),
                )
                .retry_at(nbf, now));
            }
        }
        if rec.intent_sha256 != claims.intent_sha256 || rec.user_id != claims.sub {
            return Err(Error::denied(
                Reason::ApprovalInvalid,
                format!("approval '{}' does not match its issued record", claims.jti),
            ));
        }
        if rec.epochs != snap.epochs() {
            return Err(Error::refused(
                Reason::ApprovalRevoked,
                format!(
                    "approval '{}' was revoked with the user's factors; request a new one after enrolling again",
                    claims.jti
                ),
            ));
        }
        if let Some(r) = meta::restore_record(self.k.store.as_ref())? {
            if claims.iat <= r.restored_at {
                return Err(Error::refused(
                    Reason::Superseded,
                    format!(
                    "approval '{}' was issued before the store was restored from a backup (at {}); request a new one",
                    claims.jti, r.restored_at
                ),
                ));
            }
        }
        snap.check_not_suspended(now, "redemption")?;
        if claims.act == Action::Withdrawal.name() {
            // What the engine is about to do must still be allowed: the
            // destination still whitelisted and past its hold (and the
            // redemption conditioned on that record, so a removal racing
            // it wins or loses as a whole).
            let i = &claims.intent;
            if let Some((key, version)) = self.whitelist_check(&claims.sub, &i.network, &i.destination, now)? {
                batch.check(Table::Addresses, key, version);
            }
        }
        rec.redeemed_at = Some(now);
        rec.redeemed_key = (!key.is_empty()).then(|| key.to_string());
        batch.update(
            Table::Approvals,
            claims.jti.as_bytes(),
            stored.version,
            codec::encode(&rec)?,
        );
        protect::check_snapshot(batch, &claims.sub, snap);
        Ok(())
    }
}
