//! Checks of hardware proofs — WebAuthn assertions and YubiKey HMAC and
//! OTP answers — against the service state: lockout, signature counters,
//! and the index of credential ids and YubiKey public ids.
use sigil_verify::{b64url, WebauthnEvidence};

use crate::audit::AuditEntry;
use crate::error::{Error, Reason};
use crate::events::{Event, EventKind};
use crate::protect::{self, Snapshot};
use crate::store::{meta, Batch, Table};

use super::webauthn::AssertionError;
use super::yubikey::{self, OtpFailure};
use super::{lockout, webauthn_index_key, yubikey_index_key, FactorRecord, Factors, Kind};

/// The credential id a browser response names (`id`).
fn response_credential_id(response_json: &str) -> Result<String, Error> {
    let v: serde_json::Value = serde_json::from_str(response_json)
        .map_err(|e| Error::invalid("webauthn.response_json", format!("not JSON: {e}")))?;
    let id = v
        .get("id")
        .and_then(|x| x.as_str())
        .ok_or_else(|| Error::invalid("webauthn.response_json", "has no credential \"id\""))?;
    b64url::decode(id).map_err(|_| Error::invalid("webauthn.response_json", "credential id is not base64url"))?;
    Ok(id.to_string())
}

fn amr_of(a: &crate::factor::webauthn::Assertion) -> Vec<String> {
    let mut amr = vec![if a.backup_eligible { "swk" } else { "hwk" }.to_string()];
    if a.user_present {
        amr.push("user".into());
    }
    if a.user_verified {
        amr.push("mfa".into());
    }
    amr
}

impl Factors {
    /// The factor an index entry points to, if it belongs to `user_id`.
    /// The user's factor holding an indexed credential id. An id that is
    /// not the user's is counted against the user ([`Factors::count_unknown_id`])
    /// and refused, unchecked, while that count is locked.
    fn indexed_factor_counted(
        &self,
        actor: &str,
        user_id: &str,
        index_key: &[u8],
        what: &str,
        now: i64,
    ) -> Result<(FactorRecord, u64), Error> {
        match self.indexed_factor(user_id, index_key, what) {
            Err(Error::NotFound(m)) => Err(self.count_unknown_id(actor, user_id, now, m)),
            other => other,
        }
    }

    /// Counts an attempt that named a credential id (or YubiKey public id)
    /// the user does not have, like a factor's failure: after
    /// `lockout.max_failures` such attempts they are refused, unchecked,
    /// for a growing time. Returns the refusal.
    pub(crate) fn count_unknown_id(&self, actor: &str, user_id: &str, now: i64, why: String) -> Error {
        for _ in 0..1000 {
            let snap = match Snapshot::load(self.k.store.as_ref(), user_id) {
                Ok(s) => s,
                Err(e) => return e,
            };
            let what = format!("attempts with unknown credential ids for user '{user_id}'");
            if let Err(locked) = lockout::check(snap.user.unknown_id_locked_until, now, &what) {
                return locked;
            }
            let (failures, locked_until) = lockout::on_failure(&self.cfg.lockout, snap.user.unknown_id_failures, now);
            let mut user = snap.user.clone();
            user.unknown_id_failures = failures;
            user.unknown_id_locked_until = locked_until;
            let write = (|| -> Result<(), Error> {
                let mut batch = Batch::new();
                protect::put_user(&mut batch, user_id, &snap, &user)?;
                AuditEntry::refused(now, actor, user_id, "factor.unknown_id", &why)
                    .with("failures", failures.to_string())
                    .append_to(&mut batch)?;
                self.k.commit(&batch)?;
                Ok(())
            })();
            match write {
                Ok(()) => {
                    if let Err(locked) = lockout::check(locked_until, now, &what) {
                        crate::metrics::lockout_started("unknown_id");
                        return locked;
                    }
                    return Error::NotFound(format!(
                        "{why}; {} more such attempts before they are refused for a while",
                        lockout::attempts_left(&self.cfg.lockout, failures)
                    ));
                }
                Err(Error::Conflict(_)) => continue,
                Err(e) => return e,
            }
        }
        Error::Unavailable("the user record is under heavy concurrent use; the attempt was refused".into())
    }

    fn indexed_factor(&self, user_id: &str, index_key: &[u8], what: &str) -> Result<(FactorRecord, u64), Error> {
        let not_found = || Error::NotFound(format!("{what} is not registered to user '{user_id}'"));
        let v = self.k.store.get(Table::Credentials, index_key)?.ok_or_else(not_found)?;
        let target = String::from_utf8(v.value).map_err(|_| Error::Internal("credential index unreadable".into()))?;
        let (owner, factor_id) = target
            .split_once('\0')
            .ok_or_else(|| Error::Internal("credential index unreadable".into()))?;
        if owner != user_id {
            return Err(not_found());
        }
        self.factor(user_id, factor_id)
    }

    fn index_value(f: &FactorRecord) -> Vec<u8> {
        format!("{}\0{}", f.user_id, f.factor_id).into_bytes()
    }

    /// Adds to `batch` the claim of a unique credential identifier for `f`.
    /// An identifier still held by a live factor (active, or pending and not
    /// expired) is refused; one left behind by a removed, revoked or expired
    /// factor is taken over.
    pub(crate) fn claim_index(
        &self,
        key: Vec<u8>,
        f: &FactorRecord,
        what: &str,
        now: i64,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let Some(v) = self.k.store.get(Table::Credentials, &key)? else {
            batch.insert(Table::Credentials, key, Self::index_value(f));
            return Ok(());
        };
        let target =
            String::from_utf8(v.value.clone()).map_err(|_| Error::Internal("credential index unreadable".into()))?;
        let (owner, factor_id) = target
            .split_once('\0')
            .ok_or_else(|| Error::Internal("credential index unreadable".into()))?;
        let held = match self.factor(owner, factor_id) {
            Ok((holder, _)) => {
                let live = holder.is_live(Snapshot::load(self.k.store.as_ref(), owner)?.epochs());
                live && (holder.is_active() || now < holder.confirm_before)
            }
            Err(Error::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        if held {
            return Err(Error::refused(
                Reason::AlreadyEnrolled,
                format!("{what} is already registered (to this or another user)"),
            ));
        }
        batch.update(Table::Credentials, key, v.version, Self::index_value(f));
        Ok(())
    }

    /// Verifies a WebAuthn assertion for an approval. Returns the factor
    /// with its new counter, its version, the amr and the evidence.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_webauthn(
        &self,
        actor: &str,
        user_id: &str,
        action: &str,
        state: &str,
        response_json: &str,
        nonce: &[u8],
        snap: &Snapshot,
        now: i64,
    ) -> Result<(FactorRecord, u64, Vec<String>, WebauthnEvidence), Error> {
        let cred_id = response_credential_id(response_json)?;
        let (f, v) = self.indexed_factor_counted(
            actor,
            user_id,
            &webauthn_index_key(&cred_id),
            &format!("credential {}", crate::error::excerpt(&cred_id)),
            now,
        )?;
        if !f.is_live(snap.epochs()) {
            return Err(Error::refused(
                Reason::FactorRevoked,
                format!("credential {cred_id} was revoked; enroll again"),
            ));
        }
        if !f.is_active() {
            return Err(Error::refused(
                Reason::FactorState,
                format!("credential {cred_id} is not active yet (pending)"),
            ));
        }
        if f.suspected_cloned {
            return Err(Error::refused(Reason::FactorSuspectedCloned, format!(
                "credential {cred_id} is suspected cloned (its counter went backwards); it answers nothing until the user removes it and enrolls again"
            )));
        }
        lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id))?;
        let cred = f
            .credential()
            .cloned()
            .ok_or_else(|| Error::Internal("WebAuthn factor without credential".into()))?;
        self.webauthn.may_approve(action, &cred)?;
        // A malformed response is no attempt at the credential: refused
        // before anything is counted or written.
        match self
            .webauthn
            .precheck_assertion(state, response_json, std::slice::from_ref(&cred))
        {
            Err(AssertionError::Failed(Error::InvalidArgument { reason, .. })) => {
                return Err(Error::invalid("webauthn.response_json", reason))
            }
            Err(AssertionError::Failed(e @ (Error::NotFound(_) | Error::Internal(_)))) => return Err(e),
            _ => {}
        }
        // Counted before the assertion is checked; the stored counter it is
        // checked against comes from the reserved record (fresh).
        let (f, v) = self.reserve_attempt(&f, v, now)?;
        let cred = f
            .credential()
            .cloned()
            .ok_or_else(|| Error::Internal("WebAuthn factor without credential".into()))?;
        match self
            .webauthn
            .finish_assertion(state, response_json, std::slice::from_ref(&cred))
        {
            Ok(a) => {
                let mut used = f.clone();
                if let Some(c) = used.credential_mut() {
                    c.counter = a.counter;
                }
                Ok((used, v, amr_of(&a), a.evidence(nonce)))
            }
            Err(AssertionError::PossiblyCloned { credential_id }) => {
                Err(self.mark_cloned(actor, &f, v, now, &credential_id))
            }
            Err(AssertionError::Failed(Error::PermissionDenied(r))) => {
                Err(self.refuse_attempt(actor, &f, now, &r.message))
            }
            Err(AssertionError::Failed(Error::InvalidArgument { reason, .. })) => {
                Err(Error::invalid("webauthn.response_json", reason))
            }
            Err(AssertionError::Failed(e)) => Err(e),
        }
    }

    /// Marks a credential as possibly cloned (the failure was counted when
    /// the attempt was reserved; `version` is the reserved one).
    fn mark_cloned(&self, actor: &str, f: &FactorRecord, version: u64, now: i64, credential_id: &str) -> Error {
        let write = (|| -> Result<(), Error> {
            let mut marked = f.clone();
            marked.suspected_cloned = true;
            let mut batch = Batch::new();
            batch.update(
                Table::Factors,
                crate::factor::FactorRecord::key(&f.user_id, &f.factor_id),
                version,
                marked.encode()?,
            );
            let apc = Snapshot::load(self.k.store.as_ref(), &f.user_id)?.anti_phishing_code();
            Event::new(EventKind::FactorSuspectedCloned, &f.user_id, now, apc)
                .with("factor_id", f.factor_id.clone())
                .with("credential_id", credential_id)
                .append_to(&mut batch)?;
            AuditEntry::refused(
                now,
                actor,
                &f.user_id,
                "factor.verify",
                "signature counter went backwards: possibly cloned",
            )
            .with("factor_id", f.factor_id.clone())
            .append_to(&mut batch)?;
            self.k.commit(&batch)?;
            Ok(())
        })();
        if let Err(e) = write {
            return e;
        }
        tracing::warn!(user = %f.user_id, factor = %f.factor_id, "WebAuthn counter regression: credential possibly cloned");
        Error::denied(Reason::FactorSuspectedCloned, format!(
            "credential {credential_id}: its signature counter went backwards, so it may be cloned; it is marked and the approval refused"
        ))
    }

    /// Checks a YubiKey HMAC-SHA1 response.
    pub(crate) fn check_yubikey_hmac(
        &self,
        actor: &str,
        f: &FactorRecord,
        version: u64,
        challenge: &[u8],
        response: &[u8],
        now: i64,
    ) -> Result<(FactorRecord, u64), Error> {
        lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id))?;
        let secret = self.factor_secret(f)?;
        let key: [u8; 20] = secret
            .as_slice()
            .try_into()
            .map_err(|_| Error::Internal("stored HMAC secret has the wrong length".into()))?;
        // Counted before the response is compared.
        let (f, version) = self.reserve_attempt(f, version, now)?;
        if yubikey::verify_hmac_response(&key, challenge, response) {
            return Ok((f, version));
        }
        Err(self.refuse_attempt(
            actor,
            &f,
            now,
            "YubiKey HMAC response not accepted (another key, slot or challenge)",
        ))
    }

    /// The user's OTP factor named by an OTP's public id. A malformed OTP is
    /// INVALID_ARGUMENT and counts against the user's only OTP factor.
    pub(crate) fn otp_factor(
        &self,
        actor: &str,
        user_id: &str,
        otp: &str,
        snap: &Snapshot,
        now: i64,
    ) -> Result<(FactorRecord, u64), Error> {
        match yubikey::split_otp(otp) {
            Ok((public_id, _)) => self.indexed_factor_counted(
                actor,
                user_id,
                &yubikey_index_key(&public_id),
                &format!("YubiKey public id '{public_id}'"),
                now,
            ),
            Err(e) => {
                // Counted against the user's only OTP factor; never while it is
                // locked (that would extend the lock), and a lock it causes wins.
                if let Ok((f, v)) = self.pick_factor(user_id, Kind::YubikeyOtp, None, snap) {
                    lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id))?;
                    if let locked @ Error::Locked { .. } =
                        self.record_failure(actor, &f, v, now, "malformed Yubico OTP")
                    {
                        return Err(locked);
                    }
                }
                Err(e)
            }
        }
    }

    /// Checks a Yubico OTP against a factor; returns the factor with its new
    /// counters.
    pub(crate) fn check_yubikey_otp(
        &self,
        actor: &str,
        f: &FactorRecord,
        version: u64,
        otp: &str,
        now: i64,
    ) -> Result<(FactorRecord, u64), Error> {
        lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id))?;
        // After a restore the stored OTP counters may be older than OTPs the
        // key produced since the backup, so they cannot rule out a replay:
        // an OTP factor active before the restore must be enrolled again.
        if let Some(r) = meta::restore_record(self.k.store.as_ref())? {
            if f.state == crate::factor::State::Active && f.created_at <= r.restored_at {
                return Err(Error::refused(Reason::Superseded, format!(
                    "Yubico OTP factor '{}' predates a restore from backup; its replay counters cannot be trusted: enroll the key again (an operator can revoke the old factor with `sigil revoke --user`)",
                    f.factor_id
                )));
            }
        }
        let secret = self.factor_secret(f)?;
        if secret.len() != 22 {
            return Err(Error::Internal("stored Yubico OTP key has the wrong length".into()));
        }
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        key.copy_from_slice(&secret[..16]);
        let mut private_id = [0u8; 6];
        private_id.copy_from_slice(&secret[16..]);
        // Counted before the OTP is checked. The counters it is checked
        // against come from the reserved record: a concurrent success may
        // have moved them since `f` was read (a replay must not slip
        // between the two).
        let (f, version) = self.reserve_attempt(f, version, now)?;
        let data = f.yubikey().cloned().unwrap_or_default();
        let public_ok = yubikey::split_otp(otp)
            .map(|(p, _)| p == data.public_id)
            .unwrap_or(false);
        if !public_ok {
            return Err(self.refuse_attempt(actor, &f, now, "Yubico OTP is from another key"));
        }
        match yubikey::verify_otp(&key, &private_id, data.otp_last, otp) {
            Ok(counters) => {
                let mut used = f.clone();
                if let Some(y) = used.yubikey_mut() {
                    y.otp_last = Some(counters);
                }
                Ok((used, version))
            }
            Err(OtpFailure::Malformed(m)) => match self.refuse_attempt(actor, &f, now, "malformed Yubico OTP") {
                locked @ Error::Locked { .. } => Err(locked),
                _ => Err(Error::invalid("otp", m)),
            },
            Err(OtpFailure::Replayed { .. }) => Err(self.refuse_attempt(
                actor,
                &f,
                now,
                "Yubico OTP not accepted: replayed or older than the last one accepted",
            )),
            Err(_) => Err(self.refuse_attempt(actor, &f, now, "Yubico OTP not accepted")),
        }
    }
}
