//! Enrolling WebAuthn credentials and YubiKeys.
use sigil_verify::b64url;

use super::{user_handle, Ceremony, Enrollment, YubikeyConfirmation, YubikeyEnrollment};
use crate::audit::AuditEntry;
use crate::error::{Error, Reason};
use crate::factor::{
    check_nickname, secret_aad, webauthn_index_key, yubikey, yubikey_index_key, FactorRecord, Kind, Material,
    YubikeyData,
};
use crate::model::check_id;
use crate::protect::Snapshot;
use crate::store::{codec, meta, Batch, Table};

impl Enrollment {
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
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let mut batch = Batch::new();
        let expired = self.make_room_for_factor(user_id, now, &mut batch)?;
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::Webauthn, nickname, &snap, &mut batch)?;
        let exclude: Vec<_> = self
            .factors
            .live_factors(user_id, &snap)?
            .into_iter()
            .filter_map(|(f, _)| f.credential().cloned())
            .collect();
        let display = if display_name.is_empty() { user_id } else { display_name };
        let (options, state) =
            self.factors
                .webauthn
                .begin_registration(&user_handle(user_id), user_id, display, &exclude)?;
        let ceremony_id = self.k.new_id("rg_")?;
        let expires_at = now + self.factors.webauthn.policy().ceremony_ttl_seconds;
        let c = Ceremony {
            v: 1,
            user_id: user_id.into(),
            nickname: nickname.into(),
            state,
            expires_at,
            epochs: snap.epochs(),
            stepped_up,
        };
        batch.insert(Table::Ceremonies, ceremony_id.as_bytes(), codec::encode(&c)?);
        meta::index_expiry(&mut batch, Table::Ceremonies, ceremony_id.as_bytes(), expires_at);
        AuditEntry::ok(now, actor, user_id, "factor.enroll.begin")
            .with("kind", "webauthn")
            .with("ceremony_id", ceremony_id.clone())
            .with_nonzero("expired_enrollments_removed", expired)
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
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
        let now = self.k.now()?;
        let stored = self
            .k
            .store
            .get(Table::Ceremonies, ceremony_id.as_bytes())?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "registration '{ceremony_id}' not found (used or expired?); begin again"
                ))
            })?;
        let c: Ceremony = codec::decode(&stored.value)?;
        if c.user_id != user_id {
            return Err(Error::denied(
                Reason::ChallengeNotForUser,
                format!("registration '{ceremony_id}' was not started for user '{user_id}'"),
            ));
        }
        if now >= c.expires_at {
            return Err(Error::refused(
                Reason::EnrollmentExpired,
                format!("registration '{ceremony_id}' expired at {}; begin again", c.expires_at),
            ));
        }
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let consume_and = |e: Error| -> Error {
            let mut b = Batch::new();
            b.delete(Table::Ceremonies, ceremony_id.as_bytes(), stored.version);
            self.k.audit_refusal(
                AuditEntry::refused(now, actor, user_id, "factor.enroll", &e.to_string()).with("kind", "webauthn"),
                b,
            );
            e
        };
        if c.epochs != snap.epochs() {
            return Err(consume_and(Error::refused(
                Reason::Superseded,
                "the user's factors were revoked meanwhile; begin again",
            )));
        }
        // Registrations begun side by side each found room; one finished
        // first may have taken the last of it.
        let mut batch = Batch::new();
        if let Err(e) = self.make_room_for_factor(user_id, now, &mut batch) {
            return Err(consume_and(e));
        }
        if !c.stepped_up && !self.factors.live_factors(user_id, &snap)?.is_empty() {
            return Err(consume_and(Error::denied(Reason::StepUpRequired,
                "the user enrolled another factor since this registration began; begin again with an enroll_factor approval",
            )));
        }
        let cred = match self.factors.webauthn.finish_registration(&c.state, response_json) {
            Ok(cred) => cred,
            Err(Error::InvalidArgument { reason, .. }) => return Err(Error::invalid("response_json", reason)),
            Err(e) => return Err(consume_and(e)),
        };
        let index = webauthn_index_key(&cred.credential_id);
        let what = format!("credential {}", cred.credential_id);
        let factor_id = self.k.new_id("f_")?;
        let f = self.new_factor(user_id, factor_id, Material::Webauthn(cred), &c.nickname, now, &snap);
        batch.delete(Table::Ceremonies, ceremony_id.as_bytes(), stored.version);
        if let Err(e) = self.factors.claim_index(index, &f, &what, now, &mut batch) {
            return Err(consume_and(e));
        }
        self.activate(actor, &f, None, &snap, now, &mut batch)?;
        self.k.commit(&batch).map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(
                "the credential was registered concurrently, or the registration was already finished".into(),
            ),
            other => other,
        })?;
        let (f, _) = self.factors.factor(user_id, &f.factor_id)?;
        Ok(f)
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
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let mut batch = Batch::new();
        let expired = self.make_room_for_factor(user_id, now, &mut batch)?;
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::YubikeyHmac, nickname, &snap, &mut batch)?;
        let factor_id = self.k.new_id("f_")?;
        let secret = self.k.signer.wrap(secret, &secret_aad(user_id, &factor_id))?;
        let challenge = self.k.random(32)?;
        let data = YubikeyData {
            slot,
            enroll_challenge: b64url::encode(&challenge),
            ..Default::default()
        };
        let mut f = self.new_factor(
            user_id,
            factor_id,
            Material::YubikeyHmac { secret, data },
            nickname,
            now,
            &snap,
        );
        f.enrolled_with_step_up = stepped_up;
        batch.insert(Table::Factors, FactorRecord::key(user_id, &f.factor_id), f.encode()?);
        AuditEntry::ok(now, actor, user_id, "factor.enroll.begin")
            .with("kind", "yubikey_hmac")
            .with("factor_id", f.factor_id.clone())
            .with_nonzero("expired_enrollments_removed", expired)
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
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
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let index = yubikey_index_key(&public_id);
        let mut batch = Batch::new();
        let expired = self.make_room_for_factor(user_id, now, &mut batch)?;
        let stepped_up = self.enrollment_step_up(user_id, step_up, Kind::YubikeyOtp, nickname, &snap, &mut batch)?;
        let factor_id = self.k.new_id("f_")?;
        let secret = self.k.signer.wrap(&material, &secret_aad(user_id, &factor_id))?;
        zeroize::Zeroize::zeroize(&mut *material);
        let data = YubikeyData {
            public_id: public_id.clone(),
            ..Default::default()
        };
        let mut f = self.new_factor(
            user_id,
            factor_id,
            Material::YubikeyOtp { secret, data },
            nickname,
            now,
            &snap,
        );
        f.enrolled_with_step_up = stepped_up;
        self.factors
            .claim_index(index, &f, &format!("YubiKey public id '{public_id}'"), now, &mut batch)?;
        batch.insert(Table::Factors, FactorRecord::key(user_id, &f.factor_id), f.encode()?);
        AuditEntry::ok(now, actor, user_id, "factor.enroll.begin")
            .with("kind", "yubikey_otp")
            .with("factor_id", f.factor_id.clone())
            .with("public_id", public_id)
            .with_nonzero("expired_enrollments_removed", expired)
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
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
        let now = self.k.now()?;
        let (f, version) = self.factors.factor(user_id, factor_id)?;
        let snap = self.confirmable(&f, now)?;
        let (confirmed, version) = match (&proof, f.kind()) {
            (YubikeyConfirmation::Hmac(resp), Kind::YubikeyHmac) => {
                if resp.len() != 20 {
                    return Err(Error::invalid("hmac_response", "must be 20 bytes"));
                }
                let challenge = b64url::decode(f.yubikey().map(|y| y.enroll_challenge.as_str()).unwrap_or_default())
                    .map_err(|_| Error::Internal("enrollment challenge unreadable".into()))?;
                self.factors
                    .check_yubikey_hmac(actor, &f, version, &challenge, resp, now)?
            }
            (YubikeyConfirmation::Otp(otp), Kind::YubikeyOtp) => {
                yubikey::split_otp(otp)?;
                self.factors.check_yubikey_otp(actor, &f, version, otp, now)?
            }
            _ => {
                return Err(Error::invalid(
                    "proof",
                    format!(
                        "factor '{factor_id}' is a {} factor; send the matching proof",
                        f.kind().name()
                    ),
                ))
            }
        };
        let mut batch = Batch::new();
        self.activate(actor, &confirmed, Some(version), &snap, now, &mut batch)?;
        self.k.commit(&batch)?;
        let (f, _) = self.factors.factor(user_id, factor_id)?;
        Ok(f)
    }
}
