//! Second factors: stored records and the factor kinds.
//!
//! One module per kind ([`totp`]); shared lockout rules in [`lockout`].
//! Enrollment is a small state machine: a factor is created `Pending` and
//! becomes `Active` only after a first successful proof. Only active factors
//! answer challenges.
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::{Table, Versioned};

pub mod hardware;
pub mod lockout;
pub mod manage;
pub mod totp;
pub mod webauthn;
pub mod yubikey;

/// Current version of [`FactorRecord`].
pub const FACTOR_RECORD_VERSION: u32 = 1;

/// Kinds of factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// RFC 6238 TOTP.
    Totp,
    /// WebAuthn / FIDO2.
    Webauthn,
    /// YubiKey HMAC-SHA1 challenge-response.
    YubikeyHmac,
    /// Yubico OTP.
    YubikeyOtp,
}

impl Kind {
    /// The snake_case name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Totp => "totp",
            Kind::Webauthn => "webauthn",
            Kind::YubikeyHmac => "yubikey_hmac",
            Kind::YubikeyOtp => "yubikey_otp",
        }
    }

    /// Nickname used when the user gives none.
    pub fn default_nickname(self) -> &'static str {
        match self {
            Kind::Totp => "authenticator",
            Kind::Webauthn => "security key",
            Kind::YubikeyHmac | Kind::YubikeyOtp => "YubiKey",
        }
    }

    /// RFC 8176 authentication method references for a proof of this kind.
    pub fn amr(self) -> &'static [&'static str] {
        match self {
            Kind::Totp => &["otp"],
            Kind::Webauthn => &["hwk", "user"],
            Kind::YubikeyHmac | Kind::YubikeyOtp => &["hwk", "otp"],
        }
    }
}

/// Enrollment state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created, waiting for its first proof.
    Pending,
    /// Confirmed; answers challenges.
    Active,
}

/// A secret encrypted by an HSM key. Names the key that wrapped it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedSecret {
    /// Label of the HSM AES key.
    pub key_label: String,
    /// base64url of IV || ciphertext || tag.
    pub blob: String,
}

impl std::fmt::Debug for WrappedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedSecret")
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// A stored factor (table `factors`, key `user_id 0x00 factor_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactorRecord {
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
    /// Encrypted secret (TOTP seed).
    pub secret: Option<WrappedSecret>,
    /// Newest TOTP step accepted; only newer steps are accepted.
    pub totp_last_step: Option<u64>,
    /// Revocation epochs at creation; a factor from an older epoch is revoked.
    #[serde(default)]
    pub epochs: crate::protect::Epochs,
    /// Set when the authenticator's counter went backwards.
    #[serde(default)]
    pub suspected_cloned: bool,
    /// WebAuthn credential (public data only; counter included).
    #[serde(default)]
    pub webauthn: Option<webauthn::StoredCredential>,
    /// YubiKey data (public id, OTP counters). The key material is in `secret`.
    #[serde(default)]
    pub yubikey: Option<YubikeyData>,
    /// Enrollment began with an enroll_factor approval.
    #[serde(default)]
    pub enrolled_with_step_up: bool,
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

impl FactorRecord {
    /// Store key of a factor.
    pub fn key(user_id: &str, factor_id: &str) -> Vec<u8> {
        let mut k = user_prefix(user_id);
        k.extend_from_slice(factor_id.as_bytes());
        k
    }

    /// Decodes a stored record.
    pub fn decode(v: &Versioned) -> Result<Self, Error> {
        let rec: FactorRecord =
            serde_json::from_slice(&v.value).map_err(|e| Error::Internal(format!("factor record unreadable: {e}")))?;
        if rec.v != FACTOR_RECORD_VERSION {
            return Err(Error::Internal(format!(
                "factor record version {} is not supported",
                rec.v
            )));
        }
        Ok(rec)
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self).map_err(|e| Error::Internal(format!("cannot encode factor: {e}")))
    }

    /// True when this factor is confirmed (it may still be revoked: see
    /// [`FactorRecord::is_live`]).
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// True unless revoked by an epoch newer than the factor.
    pub fn is_live(&self, current: crate::protect::Epochs) -> bool {
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
