//! Second factors: stored records, the factor kinds, and the service that
//! checks proofs against them ([`Factors`]).
//!
//! One module per kind ([`totp`], [`webauthn`], [`yubikey`]); shared
//! lockout rules in [`lockout`]; attempt counting in `attempts`; checks of
//! hardware proofs against the credential index in `hardware`. Enrolling
//! and removing factors needs step-up approvals and lives above, in
//! [`crate::enroll`].
//! Enrollment is a small state machine: a factor is created `Pending` and
//! becomes `Active` only after a first successful proof. Only active factors
//! answer challenges.
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::codec::{self, Record};
use crate::store::{Table, Versioned};

mod attempts;
mod hardware;
pub mod lockout;
mod service;
pub mod totp;
pub mod webauthn;
pub mod yubikey;

pub use crate::model::Kind;
pub use crate::signer::WrappedSecret;
pub(crate) use service::secret_aad;
pub use service::{Factors, FactorsConfig};

/// Current version of [`FactorRecord`].
pub const FACTOR_RECORD_VERSION: u32 = 1;

/// Enrollment state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created, waiting for its first proof.
    Pending,
    /// Confirmed; answers challenges.
    Active,
}

/// A factor (table `factors`, key `user_id 0x00 factor_id`): the fields
/// every kind has, and the kind's own [`Material`]. A factor cannot hold
/// another kind's data: a TOTP factor always has its seed, a WebAuthn
/// factor its credential and no secret, a YubiKey its secret and key data.
///
/// It is stored in the versioned form [`StoredFactor`]; decoding refuses a
/// stored record whose fields do not make one of the kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredFactor", into = "StoredFactor")]
pub struct FactorRecord {
    /// Factor id.
    pub factor_id: String,
    /// Owner.
    pub user_id: String,
    /// Enrollment state.
    pub state: State,
    /// User-chosen name.
    pub nickname: String,
    /// Creation time.
    pub created_at: i64,
    /// A pending factor must be confirmed before this time.
    pub confirm_before: i64,
    /// Last successful verification, 0 if none.
    pub last_used_at: i64,
    /// Consecutive failures.
    pub failures: u32,
    /// Locked while now < this.
    pub locked_until: i64,
    /// Revocation epochs at creation; a factor from an older epoch is revoked.
    pub epochs: crate::model::Epochs,
    /// Set when the authenticator's counter went backwards.
    pub suspected_cloned: bool,
    /// Enrollment began with an enroll_factor approval.
    pub enrolled_with_step_up: bool,
    /// What this kind of factor holds.
    pub material: Material,
}

/// What each kind of factor holds besides the common fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    /// RFC 6238 TOTP.
    Totp {
        /// The seed, encrypted in the HSM.
        secret: WrappedSecret,
        /// Newest step accepted; only newer steps are accepted.
        last_step: Option<u64>,
    },
    /// A WebAuthn credential (public data only; counter included).
    Webauthn(webauthn::StoredCredential),
    /// YubiKey HMAC-SHA1 challenge-response.
    YubikeyHmac {
        /// The HMAC key, encrypted in the HSM.
        secret: WrappedSecret,
        /// Key data (slot, pending enrollment challenge).
        data: YubikeyData,
    },
    /// Yubico OTP.
    YubikeyOtp {
        /// The AES key, encrypted in the HSM.
        secret: WrappedSecret,
        /// Key data (public id, newest counters).
        data: YubikeyData,
    },
}

impl Material {
    /// The factor kind.
    pub fn kind(&self) -> Kind {
        match self {
            Material::Totp { .. } => Kind::Totp,
            Material::Webauthn(_) => Kind::Webauthn,
            Material::YubikeyHmac { .. } => Kind::YubikeyHmac,
            Material::YubikeyOtp { .. } => Kind::YubikeyOtp,
        }
    }
}

/// The stored form of a [`FactorRecord`], format version 1: one record
/// shape for every kind, with the kind's fields optional. Only
/// [`FactorRecord`] is used in code; this type exists to read and write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFactor {
    /// Record format version ([`FACTOR_RECORD_VERSION`]).
    pub v: u32,
    /// Factor id.
    pub factor_id: String,
    /// Owner.
    pub user_id: String,
    /// Kind.
    pub kind: Kind,
    /// Enrollment state.
    pub state: State,
    /// User-chosen name.
    pub nickname: String,
    /// Creation time.
    pub created_at: i64,
    /// A pending factor must be confirmed before this time.
    pub confirm_before: i64,
    /// Last successful verification, 0 if none.
    pub last_used_at: i64,
    /// Consecutive failures.
    pub failures: u32,
    /// Locked while now < this.
    pub locked_until: i64,
    /// Encrypted secret (TOTP seed, YubiKey key).
    pub secret: Option<WrappedSecret>,
    /// Newest TOTP step accepted.
    pub totp_last_step: Option<u64>,
    /// Revocation epochs at creation.
    #[serde(default)]
    pub epochs: crate::model::Epochs,
    /// Set when the authenticator's counter went backwards.
    #[serde(default)]
    pub suspected_cloned: bool,
    /// WebAuthn credential.
    #[serde(default)]
    pub webauthn: Option<webauthn::StoredCredential>,
    /// YubiKey data.
    #[serde(default)]
    pub yubikey: Option<YubikeyData>,
    /// Enrollment began with an enroll_factor approval.
    #[serde(default)]
    pub enrolled_with_step_up: bool,
}

impl TryFrom<StoredFactor> for FactorRecord {
    type Error = String;

    fn try_from(s: StoredFactor) -> Result<Self, String> {
        if s.v > FACTOR_RECORD_VERSION {
            return Err(format!(
                "factor format version {} is newer than this build reads ({FACTOR_RECORD_VERSION})",
                s.v
            ));
        }
        let id = &s.factor_id;
        let impossible = |what: &str| format!("factor '{id}' of kind {} {what}", s.kind.name());
        let material = match (s.kind, s.secret, s.webauthn, s.yubikey) {
            (Kind::Totp, Some(secret), None, None) => Material::Totp {
                secret,
                last_step: s.totp_last_step,
            },
            (Kind::Webauthn, None, Some(c), None) if s.totp_last_step.is_none() => Material::Webauthn(c),
            (Kind::YubikeyHmac, Some(secret), None, Some(data)) if s.totp_last_step.is_none() => {
                Material::YubikeyHmac { secret, data }
            }
            (Kind::YubikeyOtp, Some(secret), None, Some(data))
                if s.totp_last_step.is_none() && !data.public_id.is_empty() =>
            {
                Material::YubikeyOtp { secret, data }
            }
            (_, secret, webauthn, yubikey) => {
                return Err(impossible(&format!(
                    "holds secret: {}, credential: {}, YubiKey data: {}, TOTP step: {} — not a valid combination",
                    secret.is_some(),
                    webauthn.is_some(),
                    yubikey.is_some(),
                    s.totp_last_step.is_some()
                )))
            }
        };
        Ok(FactorRecord {
            factor_id: s.factor_id,
            user_id: s.user_id,
            state: s.state,
            nickname: s.nickname,
            created_at: s.created_at,
            confirm_before: s.confirm_before,
            last_used_at: s.last_used_at,
            failures: s.failures,
            locked_until: s.locked_until,
            epochs: s.epochs,
            suspected_cloned: s.suspected_cloned,
            enrolled_with_step_up: s.enrolled_with_step_up,
            material,
        })
    }
}

impl From<FactorRecord> for StoredFactor {
    fn from(f: FactorRecord) -> Self {
        let kind = f.kind();
        let (secret, totp_last_step, webauthn, yubikey) = match f.material {
            Material::Totp { secret, last_step } => (Some(secret), last_step, None, None),
            Material::Webauthn(c) => (None, None, Some(c), None),
            Material::YubikeyHmac { secret, data } | Material::YubikeyOtp { secret, data } => {
                (Some(secret), None, None, Some(data))
            }
        };
        StoredFactor {
            v: FACTOR_RECORD_VERSION,
            factor_id: f.factor_id,
            user_id: f.user_id,
            kind,
            state: f.state,
            nickname: f.nickname,
            created_at: f.created_at,
            confirm_before: f.confirm_before,
            last_used_at: f.last_used_at,
            failures: f.failures,
            locked_until: f.locked_until,
            secret,
            totp_last_step,
            epochs: f.epochs,
            suspected_cloned: f.suspected_cloned,
            webauthn,
            yubikey,
            enrolled_with_step_up: f.enrolled_with_step_up,
        }
    }
}

/// What Sigil keeps about a YubiKey factor besides its encrypted secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct YubikeyData {
    /// Slot (1 or 2) the HMAC secret was written to; 0 if unknown.
    pub slot: u32,
    /// Yubico OTP public id (modhex).
    pub public_id: String,
    /// Newest accepted (usage counter, session counter) of Yubico OTPs.
    pub otp_last: Option<(u16, u8)>,
    /// HMAC: the pending enrollment challenge (base64url).
    pub enroll_challenge: String,
}

/// Key of the credential index for a WebAuthn credential id.
pub fn webauthn_index_key(credential_id: &str) -> Vec<u8> {
    format!("webauthn/{credential_id}").into_bytes()
}

/// Key of the credential index for a YubiKey OTP public id.
pub fn yubikey_index_key(public_id: &str) -> Vec<u8> {
    format!("yubikey-otp/{public_id}").into_bytes()
}

impl Record for FactorRecord {
    const NAME: &'static str = "factor";
    // The stored form checks its own version (TryFrom<StoredFactor>).
    const VERSION: u32 = FACTOR_RECORD_VERSION;
}

impl FactorRecord {
    /// The factor kind.
    pub fn kind(&self) -> Kind {
        self.material.kind()
    }

    /// The encrypted secret, for the kinds that have one.
    pub fn secret(&self) -> Option<&WrappedSecret> {
        match &self.material {
            Material::Totp { secret, .. }
            | Material::YubikeyHmac { secret, .. }
            | Material::YubikeyOtp { secret, .. } => Some(secret),
            Material::Webauthn(_) => None,
        }
    }

    /// The encrypted secret, to replace it (re-wrapping).
    pub fn secret_mut(&mut self) -> Option<&mut WrappedSecret> {
        match &mut self.material {
            Material::Totp { secret, .. }
            | Material::YubikeyHmac { secret, .. }
            | Material::YubikeyOtp { secret, .. } => Some(secret),
            Material::Webauthn(_) => None,
        }
    }

    /// The WebAuthn credential of a WebAuthn factor.
    pub fn credential(&self) -> Option<&webauthn::StoredCredential> {
        match &self.material {
            Material::Webauthn(c) => Some(c),
            _ => None,
        }
    }

    /// The YubiKey data of a YubiKey factor.
    pub fn yubikey(&self) -> Option<&YubikeyData> {
        match &self.material {
            Material::YubikeyHmac { data, .. } | Material::YubikeyOtp { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Records the newest accepted TOTP step (TOTP factors only; other
    /// kinds have none).
    pub fn set_totp_last_step(&mut self, step: u64) {
        if let Material::Totp { last_step, .. } = &mut self.material {
            *last_step = Some(step);
        }
    }

    /// The YubiKey data, to update it (YubiKey factors only).
    pub fn yubikey_mut(&mut self) -> Option<&mut YubikeyData> {
        match &mut self.material {
            Material::YubikeyHmac { data, .. } | Material::YubikeyOtp { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The WebAuthn credential, to update it (its counter).
    pub fn credential_mut(&mut self) -> Option<&mut webauthn::StoredCredential> {
        match &mut self.material {
            Material::Webauthn(c) => Some(c),
            _ => None,
        }
    }

    /// The newest accepted TOTP step of a TOTP factor.
    pub fn totp_last_step(&self) -> Option<u64> {
        match &self.material {
            Material::Totp { last_step, .. } => *last_step,
            _ => None,
        }
    }
    /// Store key of a factor.
    pub fn key(user_id: &str, factor_id: &str) -> Vec<u8> {
        let mut k = user_prefix(user_id);
        k.extend_from_slice(factor_id.as_bytes());
        k
    }

    /// Decodes a stored record.
    pub fn decode(v: &Versioned) -> Result<Self, Error> {
        codec::decode(&v.value)
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        codec::encode(self)
    }

    /// True when this factor is confirmed (it may still be revoked: see
    /// [`FactorRecord::is_live`]).
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// True unless revoked by an epoch newer than the factor.
    pub fn is_live(&self, current: crate::model::Epochs) -> bool {
        self.epochs == current
    }
}

/// Key prefix of all of a user's factors.
pub fn user_prefix(user_id: &str) -> Vec<u8> {
    let mut k = user_id.as_bytes().to_vec();
    k.push(0);
    k
}

/// The table factors live in.
pub const TABLE: Table = Table::Factors;

/// The memo of the `enroll_factor` approval that lets a user with an
/// active factor enroll another: `<kind>:<nickname>` (the kind's name —
/// `totp`, `webauthn`, `yubikey_hmac`, `yubikey_otp` — and the nickname as
/// sent, possibly empty). The approval answers that enrollment only.
pub fn enrollment_memo(kind: Kind, nickname: &str) -> String {
    format!("{}:{nickname}", kind.name())
}

/// Checks the memo of an `enroll_factor` intent (at BeginApproval, before
/// the user is asked): it must name a factor kind and a valid nickname.
pub(crate) fn check_enrollment_memo(field: &str, memo: &str) -> Result<(), Error> {
    let (kind, nickname) = memo.split_once(':').ok_or_else(|| {
        Error::invalid(
            field,
            "must name what is enrolled as '<kind>:<nickname>' (kind: totp, webauthn, yubikey_hmac or yubikey_otp)",
        )
    })?;
    if !crate::protect::policy::ALL_KINDS.iter().any(|k| k.name() == kind) {
        return Err(Error::invalid(
            field,
            format!(
                "'{}' is not a factor kind (totp, webauthn, yubikey_hmac, yubikey_otp)",
                crate::error::excerpt(kind)
            ),
        ));
    }
    check_nickname(nickname).map_err(|_| {
        Error::invalid(
            field,
            "the nickname after ':' is at most 64 bytes, no control characters",
        )
    })
}

pub(crate) fn check_nickname(n: &str) -> Result<(), Error> {
    if n.len() > 64 || n.chars().any(char::is_control) {
        return Err(Error::invalid("nickname", "at most 64 bytes, no control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped() -> WrappedSecret {
        WrappedSecret {
            key_label: "sigil-secrets".into(),
            blob: "AAAA".into(),
        }
    }

    /// A factor as version 1 wrote it (every kind shares this shape).
    const STORED_TOTP: &str = r#"{"v":1,"factor_id":"f_1","user_id":"alice","kind":"totp","state":"active","nickname":"phone","created_at":10,"confirm_before":20,"last_used_at":30,"failures":0,"locked_until":0,"secret":{"key_label":"sigil-secrets","blob":"AAAA"},"totp_last_step":7,"epochs":{"global":0,"user":0},"suspected_cloned":false,"webauthn":null,"yubikey":null,"enrolled_with_step_up":false}"#;

    #[test]
    fn version_1_records_read_as_their_kind_and_write_back_the_same_shape() {
        let f: FactorRecord = codec::decode(STORED_TOTP.as_bytes()).unwrap();
        assert_eq!(f.kind(), Kind::Totp);
        assert_eq!(f.totp_last_step(), Some(7));
        assert_eq!(f.secret(), Some(&wrapped()));
        let back: serde_json::Value = serde_json::from_slice(&codec::encode(&f).unwrap()).unwrap();
        let orig: serde_json::Value = serde_json::from_str(STORED_TOTP).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn impossible_combinations_are_refused_when_read() {
        let cases = [
            // TOTP without its seed.
            STORED_TOTP.replace(
                r#""secret":{"key_label":"sigil-secrets","blob":"AAAA"}"#,
                r#""secret":null"#,
            ),
            // A WebAuthn factor holding a secret and no credential.
            STORED_TOTP.replace(r#""kind":"totp""#, r#""kind":"webauthn""#),
            // A YubiKey OTP factor without its key data.
            STORED_TOTP
                .replace(r#""kind":"totp""#, r#""kind":"yubikey_otp""#)
                .replace(r#""totp_last_step":7"#, r#""totp_last_step":null"#),
            // A YubiKey OTP factor without a public id.
            STORED_TOTP
                .replace(r#""kind":"totp""#, r#""kind":"yubikey_otp""#)
                .replace(r#""totp_last_step":7"#, r#""totp_last_step":null"#)
                .replace(
                    r#""yubikey":null"#,
                    r#""yubikey":{"slot":1,"public_id":"","otp_last":null,"enroll_challenge":""}"#,
                ),
            // Written by a newer format.
            STORED_TOTP.replace(r#""v":1"#, r#""v":2"#),
        ];
        for c in cases {
            let e = codec::decode::<FactorRecord>(c.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("factor record unreadable"), "{e}");
            assert!(!e.contains("AAAA"), "the secret is never echoed: {e}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let base = codec::decode::<FactorRecord>(STORED_TOTP.as_bytes()).unwrap();
        let data = YubikeyData {
            slot: 2,
            public_id: "ccccccbcgujh".into(),
            otp_last: Some((3, 4)),
            enroll_challenge: String::new(),
        };
        for material in [
            Material::Totp {
                secret: wrapped(),
                last_step: None,
            },
            Material::YubikeyHmac {
                secret: wrapped(),
                data: YubikeyData {
                    public_id: String::new(),
                    ..data.clone()
                },
            },
            Material::YubikeyOtp {
                secret: wrapped(),
                data: data.clone(),
            },
        ] {
            let f = FactorRecord {
                material,
                ..base.clone()
            };
            let back: FactorRecord = codec::decode(&codec::encode(&f).unwrap()).unwrap();
            assert_eq!(back, f);
        }
    }
}
