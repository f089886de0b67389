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
    pub epochs: crate::model::Epochs,
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

impl Record for FactorRecord {
    const NAME: &'static str = "factor";
    const VERSION: u32 = FACTOR_RECORD_VERSION;
    fn format_version(&self) -> u32 {
        self.v
    }
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
