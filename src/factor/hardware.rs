//! Hardware factors: WebAuthn credentials and YubiKeys — enrollment and
//! verification against the service state (lockout, counters, index of
//! credential ids).
use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, WebauthnEvidence};

use crate::approval::intent::check_id;
use crate::audit::AuditEntry;
use crate::core::{secret_aad, Sigil};
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::factor::manage::check_nickname;
use crate::factor::webauthn::AssertionError;
use crate::factor::yubikey::{self, OtpFailure};
use crate::factor::{lockout, webauthn_index_key, yubikey_index_key, FactorRecord, Kind, YubikeyData};
use crate::protect::{Epochs, Snapshot};
use crate::store::{Batch, Table};

/// A WebAuthn registration ceremony (table `ceremonies`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ceremony {
    v: u32,
    user_id: String,
    nickname: String,
    state: String,
    expires_at: i64,
    epochs: Epochs,
    /// Begun with an enroll_factor approval (the user had an active factor).
    #[serde(default)]
    stepped_up: bool,
}

/// The proof that confirms a YubiKey enrollment.
#[derive(Debug, Clone)]
pub enum YubikeyConfirmation {
    /// HMAC-SHA1 response to the enrollment challenge.
    Hmac(Vec<u8>),
    /// A first Yubico OTP.
    Otp(String),
}

/// A started YubiKey enrollment.
#[derive(Debug, Clone)]
pub struct YubikeyEnrollment {
    /// Pending factor.
    pub factor_id: String,
    /// HMAC: the challenge to answer (empty for OTP).
    pub challenge: Vec<u8>,
    /// Confirm before this time.
    pub confirm_before: i64,
}

/// The stable, opaque WebAuthn user handle of a user (16 bytes).
fn user_handle(user_id: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"sigil-webauthn-user-v1\0");
    ctx.update(user_id.as_bytes());
    ctx.finish().as_ref()[..16].to_vec()
}

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

impl Sigil {
    /// The factor an index entry points to, if it belongs to `user_id`.
    /// The user's factor holding an indexed credential id. An id that is
    /// not the user's is counted against the user ([`Sigil::count_unknown_id`])
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
            let snap = match self.snapshot(user_id) {
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
                self.put_user(&mut batch, user_id, &snap, &user)?;
                AuditEntry::refused(now, actor, user_id, "factor.unknown_id", &why)
                    .with("failures", failures.to_string())
                    .append_to(&mut batch)?;
                self.commit(&batch)?;
                Ok(())
            })();
            match write {
                Ok(()) => {
                    if let Err(locked) = lockout::check(locked_until, now, &what) {
                        return locked;
                    }
                    return Error::NotFound(format!(
                        "{why}; {} more such attempts before they are refused for a while",
                        lockout::attempts_left(&self.cfg.lockout, failures)
                    ));
                }
                Err(Error::FailedPrecondition(_)) => continue,
                Err(e) => return e,
            }
        }
        Error::Unavailable("the user record is under heavy concurrent use; the attempt was refused".into())
    }

    fn indexed_factor(&self, user_id: &str, index_key: &[u8], what: &str) -> Result<(FactorRecord, u64), Error> {
        let not_found = || Error::NotFound(format!("{what} is not registered to user '{user_id}'"));
        let v = self.store.get(Table::Credentials, index_key)?.ok_or_else(not_found)?;
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
    fn claim_index(
        &self,
        key: Vec<u8>,
        f: &FactorRecord,
        what: &str,
        now: i64,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let Some(v) = self.store.get(Table::Credentials, &key)? else {
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
                let live = holder.is_live(self.snapshot(owner)?.epochs());
                live && (holder.is_active() || now < holder.confirm_before)
            }
            Err(Error::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        if held {
            return Err(Error::FailedPrecondition(format!(
                "{what} is already registered (to this or another user)"
            )));
        }
        batch.update(Table::Credentials, key, v.version, Self::index_value(f));
        Ok(())
    }

    /// Starts a WebAuthn registration (ceremony state kept server-side).
    pub fn begin_webauthn_registration(
        &self,
        actor: &str,
        user_id: &str,
        nickname: &str,
        display_name: &str,
        step_up: &str,
    ) -> Result<(String, String, i64), Error> {
        check_id("user_id", user_id)?;
        check_nickname(nickname)?;
        if display_name.len() > 64 || display_name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "display_name",
                "at most 64 bytes, no control characters",
            ));
        }
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let mut batch = Batch::new();
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::Webauthn, nickname, &snap, &mut batch)?;
        let exclude: Vec<_> = self
            .live_factors(user_id, &snap)?
            .into_iter()
            .filter_map(|(f, _)| f.webauthn)
            .collect();
        let display = if display_name.is_empty() { user_id } else { display_name };
        let (options, state) = self
            .webauthn
            .begin_registration(&user_handle(user_id), user_id, display, &exclude)?;
        let ceremony_id = self.new_id("rg_")?;
        let expires_at = now + self.webauthn.policy().ceremony_ttl_seconds;
        let c = Ceremony {
            v: 1,
            user_id: user_id.into(),
            nickname: nickname.into(),
            state,
            expires_at,
            epochs: snap.epochs(),
            stepped_up,
        };
        batch.insert(Table::Ceremonies, ceremony_id.as_bytes(), crate::protect::encode(&c)?);
        AuditEntry::ok(now, actor, user_id, "factor.enroll.begin")
            .with("kind", "webauthn")
            .with("ceremony_id", ceremony_id.clone())
            .append_to(&mut batch)?;
        self.commit(&batch)?;
        Ok((ceremony_id, options, expires_at))
    }

    /// Finishes a WebAuthn registration: the credential becomes an active
    /// factor (and the security-change lock starts). The ceremony is used up
    /// by any attempt.
    pub fn finish_webauthn_registration(
        &self,
        actor: &str,
        user_id: &str,
        ceremony_id: &str,
        response_json: &str,
    ) -> Result<FactorRecord, Error> {
        check_id("user_id", user_id)?;
        check_id("ceremony_id", ceremony_id)?;
        if response_json.is_empty() || response_json.len() > crate::factor::webauthn::MAX_RESPONSE_BYTES {
            return Err(Error::invalid("response_json", "is required and at most 64 KiB"));
        }
        let now = self.now()?;
        let stored = self
            .store
            .get(Table::Ceremonies, ceremony_id.as_bytes())?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "registration '{ceremony_id}' not found (used or expired?); begin again"
                ))
            })?;
        let c: Ceremony = crate::protect::decode(&stored.value, "ceremony")?;
        if c.user_id != user_id {
            return Err(Error::PermissionDenied(format!(
                "registration '{ceremony_id}' was not started for user '{user_id}'"
            )));
        }
        if now >= c.expires_at {
            return Err(Error::FailedPrecondition(format!(
                "registration '{ceremony_id}' expired at {}; begin again",
                c.expires_at
            )));
        }
        let snap = self.snapshot(user_id)?;
        let consume_and = |e: Error| -> Error {
            let mut b = Batch::new();
            b.delete(Table::Ceremonies, ceremony_id.as_bytes(), stored.version);
            self.audit_refusal(
                AuditEntry::refused(now, actor, user_id, "factor.enroll", &e.to_string()).with("kind", "webauthn"),
                b,
            );
            e
        };
        if c.epochs != snap.epochs() {
            return Err(consume_and(Error::FailedPrecondition(
                "the user's factors were revoked meanwhile; begin again".into(),
            )));
        }
        if !c.stepped_up && !self.live_factors(user_id, &snap)?.is_empty() {
            return Err(consume_and(Error::PermissionDenied(
                "the user enrolled another factor since this registration began; begin again with an enroll_factor approval"
                    .into(),
            )));
        }
        let cred = match self.webauthn.finish_registration(&c.state, response_json) {
            Ok(cred) => cred,
            Err(Error::InvalidArgument { reason, .. }) => return Err(Error::invalid("response_json", reason)),
            Err(e) => return Err(consume_and(e)),
        };
        let index = webauthn_index_key(&cred.credential_id);
        let what = format!("credential {}", cred.credential_id);
        let mut f = self.new_factor(user_id, Kind::Webauthn, &c.nickname, now, &snap)?;
        f.webauthn = Some(cred);
        let mut batch = Batch::new();
        batch.delete(Table::Ceremonies, ceremony_id.as_bytes(), stored.version);
        if let Err(e) = self.claim_index(index, &f, &what, now, &mut batch) {
            return Err(consume_and(e));
        }
        self.activate(actor, &f, None, &snap, now, &mut batch)?;
        self.commit(&batch).map_err(|e| match e {
            Error::FailedPrecondition(_) => Error::FailedPrecondition(
                "the credential was registered concurrently, or the registration was already finished".into(),
            ),
            other => other,
        })?;
        let (f, _) = self.factor(user_id, &f.factor_id)?;
        Ok(f)
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
        if !f.is_active() || !f.is_live(snap.epochs()) {
            return Err(Error::FailedPrecondition(format!(
                "credential {cred_id} was revoked; enroll again"
            )));
        }
        if f.suspected_cloned {
            return Err(Error::FailedPrecondition(format!(
                "credential {cred_id} is suspected cloned (its counter went backwards); it answers nothing until the user removes it and enrolls again"
            )));
        }
        lockout::check(f.locked_until, now, &format!("factor '{}'", f.factor_id))?;
        let cred = f
            .webauthn
            .clone()
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
            .webauthn
            .clone()
            .ok_or_else(|| Error::Internal("WebAuthn factor without credential".into()))?;
        match self
            .webauthn
            .finish_assertion(state, response_json, std::slice::from_ref(&cred))
        {
            Ok(a) => {
                let mut used = f.clone();
                if let Some(c) = used.webauthn.as_mut() {
                    c.counter = a.counter;
                }
                Ok((used, v, amr_of(&a), a.evidence(nonce)))
            }
            Err(AssertionError::PossiblyCloned { credential_id }) => {
                Err(self.mark_cloned(actor, &f, v, now, &credential_id))
            }
            Err(AssertionError::Failed(Error::PermissionDenied(m))) => Err(self.refuse_attempt(actor, &f, now, &m)),
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
            let apc = self.snapshot(&f.user_id)?.anti_phishing_code();
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
            self.commit(&batch)?;
            Ok(())
        })();
        if let Err(e) = write {
            return e;
        }
        tracing::warn!(user = %f.user_id, factor = %f.factor_id, "WebAuthn counter regression: credential possibly cloned");
        Error::PermissionDenied(format!(
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
        if let Some(r) = crate::backup::restore_record(self.store.as_ref())? {
            if f.state == crate::factor::State::Active && f.created_at <= r.restored_at {
                return Err(Error::FailedPrecondition(format!(
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
        let data = f.yubikey.clone().unwrap_or_default();
        let public_ok = yubikey::split_otp(otp)
            .map(|(p, _)| p == data.public_id)
            .unwrap_or(false);
        if !public_ok {
            return Err(self.refuse_attempt(actor, &f, now, "Yubico OTP is from another key"));
        }
        match yubikey::verify_otp(&key, &private_id, data.otp_last, otp) {
            Ok(counters) => {
                let mut used = f.clone();
                let mut y = data;
                y.otp_last = Some(counters);
                used.yubikey = Some(y);
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

    /// Starts a YubiKey HMAC-SHA1 enrollment with the secret written into
    /// the slot. Returns a challenge the key must answer to confirm.
    pub fn begin_yubikey_hmac_enrollment(
        &self,
        actor: &str,
        user_id: &str,
        nickname: &str,
        secret: &[u8],
        slot: u32,
        step_up: &str,
    ) -> Result<YubikeyEnrollment, Error> {
        check_id("user_id", user_id)?;
        check_nickname(nickname)?;
        if secret.len() != 20 {
            return Err(Error::invalid(
                "secret",
                format!("must be the 20-byte HMAC-SHA1 secret, got {} bytes", secret.len()),
            ));
        }
        if slot > 2 {
            return Err(Error::invalid("slot", "must be 1 or 2 (0: unknown)"));
        }
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let mut batch = Batch::new();
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::YubikeyHmac, nickname, &snap, &mut batch)?;
        let mut f = self.new_factor(user_id, Kind::YubikeyHmac, nickname, now, &snap)?;
        f.enrolled_with_step_up = stepped_up;
        f.secret = Some(self.signer.wrap(secret, &secret_aad(user_id, &f.factor_id))?);
        let challenge = self.random(32)?;
        f.yubikey = Some(YubikeyData {
            slot,
            enroll_challenge: b64url::encode(&challenge),
            ..Default::default()
        });
        batch.insert(Table::Factors, FactorRecord::key(user_id, &f.factor_id), f.encode()?);
        AuditEntry::ok(now, actor, user_id, "factor.enroll.begin")
            .with("kind", "yubikey_hmac")
            .with("factor_id", f.factor_id.clone())
            .append_to(&mut batch)?;
        self.commit(&batch)?;
        Ok(YubikeyEnrollment {
            factor_id: f.factor_id,
            challenge,
            confirm_before: f.confirm_before,
        })
    }

    /// Starts a Yubico OTP enrollment from the key's credentials (or one
    /// Personalization-tool CSV line).
    #[allow(clippy::too_many_arguments)]
    pub fn begin_yubikey_otp_enrollment(
        &self,
        actor: &str,
        user_id: &str,
        nickname: &str,
        public_id: &str,
        private_id: &[u8],
        aes_key: &[u8],
        csv: &str,
        step_up: &str,
    ) -> Result<YubikeyEnrollment, Error> {
        check_id("user_id", user_id)?;
        check_nickname(nickname)?;
        let (public_id, mut material) = if !csv.is_empty() {
            let imp = yubikey::parse_personalization_csv(csv)?;
            let mut m = zeroize::Zeroizing::new(imp.aes_key.to_vec());
            m.extend_from_slice(&imp.private_id);
            (imp.public_id.clone(), m)
        } else {
            if public_id.len() != 12 || !yubikey::modhex::is_modhex(public_id) {
                return Err(Error::invalid(
                    "public_id",
                    "must be 12 modhex characters (cbdefghijklnrtuv)",
                ));
            }
            if private_id.len() != 6 {
                return Err(Error::invalid("private_id", "must be 6 bytes"));
            }
            if aes_key.len() != 16 {
                return Err(Error::invalid("aes_key", "must be 16 bytes (AES-128)"));
            }
            let mut m = zeroize::Zeroizing::new(aes_key.to_vec());
            m.extend_from_slice(private_id);
            (public_id.to_string(), m)
        };
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let index = yubikey_index_key(&public_id);
        let mut batch = Batch::new();
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::YubikeyOtp, nickname, &snap, &mut batch)?;
        let mut f = self.new_factor(user_id, Kind::YubikeyOtp, nickname, now, &snap)?;
        f.enrolled_with_step_up = stepped_up;
        self.claim_index(index, &f, &format!("YubiKey public id '{public_id}'"), now, &mut batch)?;
        f.secret = Some(self.signer.wrap(&material, &secret_aad(user_id, &f.factor_id))?);
        zeroize::Zeroize::zeroize(&mut *material);
        f.yubikey = Some(YubikeyData {
            public_id: public_id.clone(),
            ..Default::default()
        });
        batch.insert(Table::Factors, FactorRecord::key(user_id, &f.factor_id), f.encode()?);
        AuditEntry::ok(now, actor, user_id, "factor.enroll.begin")
            .with("kind", "yubikey_otp")
            .with("factor_id", f.factor_id.clone())
            .with("public_id", public_id)
            .append_to(&mut batch)?;
        self.commit(&batch)?;
        Ok(YubikeyEnrollment {
            factor_id: f.factor_id,
            challenge: Vec::new(),
            confirm_before: f.confirm_before,
        })
    }

    /// Activates a pending YubiKey factor with a first proof.
    pub fn confirm_yubikey_enrollment(
        &self,
        actor: &str,
        user_id: &str,
        factor_id: &str,
        proof: YubikeyConfirmation,
    ) -> Result<FactorRecord, Error> {
        check_id("user_id", user_id)?;
        check_id("factor_id", factor_id)?;
        let now = self.now()?;
        let (f, version) = self.factor(user_id, factor_id)?;
        let snap = self.confirmable(&f, now)?;
        let (confirmed, version) = match (&proof, f.kind) {
            (YubikeyConfirmation::Hmac(resp), Kind::YubikeyHmac) => {
                if resp.len() != 20 {
                    return Err(Error::invalid("hmac_response", "must be 20 bytes"));
                }
                let challenge = b64url::decode(&f.yubikey.clone().unwrap_or_default().enroll_challenge)
                    .map_err(|_| Error::Internal("enrollment challenge unreadable".into()))?;
                self.check_yubikey_hmac(actor, &f, version, &challenge, resp, now)?
            }
            (YubikeyConfirmation::Otp(otp), Kind::YubikeyOtp) => {
                yubikey::split_otp(otp)?;
                self.check_yubikey_otp(actor, &f, version, otp, now)?
            }
            _ => {
                return Err(Error::invalid(
                    "proof",
                    format!(
                        "factor '{factor_id}' is a {} factor; send the matching proof",
                        f.kind.name()
                    ),
                ))
            }
        };
        let mut batch = Batch::new();
        self.activate(actor, &confirmed, Some(version), &snap, now, &mut batch)?;
        self.commit(&batch)?;
        let (f, _) = self.factor(user_id, factor_id)?;
        Ok(f)
    }
}
