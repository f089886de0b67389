//! Approvals: challenges bound to an intent, proofs, HSM-signed JWS, and
//! single redemption.
//!
//! ```text
//! BeginApproval ──▶ challenge (pending, expires) ──CompleteApproval──▶ consumed + approval (issued)
//!                                                                 RedeemApproval ──▶ redeemed
//! ```
//! Completing writes, in one atomic batch: the challenge consumed, the
//! factor's used step and reset failure count, and the issued approval. The
//! JWS is signed before that batch and handed out only after it is durable.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sigil_verify::{Claims, Intent, VerifyError};

use crate::error::{Error, Reason};
use crate::factor::{totp, FactorRecord, Factors, Kind};
use crate::kernel::Kernel;
use crate::protect::address;
use crate::protect::assets::Assets;
use crate::protect::policy::Policy;
use crate::protect::ProtectionConfig;
use crate::store::codec::{self, Record};
use crate::store::Table;

mod begin;
mod complete;
pub mod governance;
pub mod intent;
mod issue;
pub mod quorum;
mod redeem;
mod step_up;

pub use crate::model::{Action, DeviceSignals};

/// Current version of the records in this module.
pub const RECORD_VERSION: u32 = 1;
/// The version of an approval record with a delay or from a quorum
/// (`nbf`, `cancelled_at`, `request_id`): a build that does not know
/// cancellations refuses to read it rather than ignore them.
pub const APPROVAL_HELD_VERSION: u32 = 2;

/// A challenge (table `challenges`, key = challenge id).
///
/// Once answered it is kept only as a tombstone ([`ChallengeRecord::answered`]):
/// the user, the times and the epochs, enough to refuse a second answer
/// as "already answered" until the sweep purges it; the intent, device
/// signals, nonce and ceremony state are dropped (the approval and the
/// audit entries record what was approved). Those fields are therefore
/// absent from stored tombstones and read back as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// Record format version.
    pub v: u32,
    /// The user who must answer.
    pub user_id: String,
    /// The intent it is bound to (empty in a tombstone).
    #[serde(default, skip_serializing_if = "is_default")]
    pub intent: Intent,
    /// Factor kinds that may answer (empty in a tombstone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<Kind>,
    /// Creation time.
    pub created_at: i64,
    /// Must be completed before this time.
    pub expires_at: i64,
    /// Set once answered.
    pub consumed_at: Option<i64>,
    /// Signals recorded at begin (empty in a tombstone).
    #[serde(default, skip_serializing_if = "is_default")]
    pub device: DeviceSignals,
    /// Revocation epochs when opened; a revocation kills the challenge.
    #[serde(default)]
    pub epochs: crate::model::Epochs,
    /// Random nonce (base64url) committed into the WebAuthn and YubiKey
    /// challenges together with the intent digest (empty in a tombstone).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// WebAuthn assertion ceremony state, when a credential may answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webauthn_state: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl ChallengeRecord {
    /// What is kept of the challenge once answered at `at`: a tombstone
    /// that refuses a second answer (about a quarter of the record's size;
    /// a challenge is kept for an hour after it expires).
    pub fn answered(&self, at: i64) -> ChallengeRecord {
        ChallengeRecord {
            v: self.v,
            user_id: self.user_id.clone(),
            intent: Intent::default(),
            allowed: Vec::new(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            consumed_at: Some(at),
            device: DeviceSignals::default(),
            epochs: self.epochs,
            nonce: String::new(),
            webauthn_state: None,
        }
    }
}

/// An issued approval (table `approvals`, key = jti).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Record format version.
    pub v: u32,
    /// `sub`.
    pub user_id: String,
    /// `act`.
    pub act: String,
    /// `intent_sha256`.
    pub intent_sha256: String,
    /// Key that signed it.
    pub kid: String,
    /// `iat`.
    pub iat: i64,
    /// `exp`.
    pub exp: i64,
    /// Set once redeemed.
    pub redeemed_at: Option<i64>,
    /// The idempotency key of the redemption, if the engine gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed_key: Option<String>,
    /// Revocation epochs when issued; a revocation kills the approval.
    #[serde(default)]
    pub epochs: crate::model::Epochs,
    /// `nbf` of a delayed approval: not redeemable before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Set when cancelled during its delay: never redeemable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<i64>,
    /// The quorum request it came from, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

/// A successful redemption.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The verified claims.
    pub claims: Claims,
    /// This call repeated an earlier redemption with the same key.
    pub replayed: bool,
    /// When the approval was redeemed.
    pub redeemed_at: i64,
}

/// A proof answering a challenge.
#[derive(Debug, Clone)]
pub enum Proof {
    /// A TOTP code.
    Totp {
        /// The code.
        code: String,
        /// Which factor; None when the user has exactly one TOTP factor.
        factor_id: Option<String>,
    },
    /// A WebAuthn assertion (the browser's PublicKeyCredential JSON).
    Webauthn {
        /// The JSON.
        response_json: String,
    },
    /// A YubiKey HMAC-SHA1 response to the challenge's HMAC challenge.
    YubikeyHmac {
        /// 20 bytes.
        response: Vec<u8>,
        /// Which factor; None when the user has exactly one.
        factor_id: Option<String>,
    },
    /// A Yubico OTP.
    YubikeyOtp {
        /// 44 modhex characters.
        otp: String,
    },
}

impl Proof {
    /// The factor kind this proof comes from.
    pub fn kind(&self) -> Kind {
        match self {
            Proof::Totp { .. } => Kind::Totp,
            Proof::Webauthn { .. } => Kind::Webauthn,
            Proof::YubikeyHmac { .. } => Kind::YubikeyHmac,
            Proof::YubikeyOtp { .. } => Kind::YubikeyOtp,
        }
    }

    /// Checks the proof's shape (bad input is INVALID_ARGUMENT).
    fn validate(&self) -> Result<(), Error> {
        match self {
            Proof::Totp { code, factor_id } => {
                if !totp::well_formed(code) {
                    return Err(Error::invalid("totp.code", "must be exactly 6 digits"));
                }
                if let Some(f) = factor_id {
                    crate::model::check_id("totp.factor_id", f)?;
                }
            }
            Proof::Webauthn { response_json } => {
                if response_json.is_empty() {
                    return Err(Error::invalid("webauthn.response_json", "is required"));
                }
                if response_json.len() > crate::factor::webauthn::MAX_RESPONSE_BYTES {
                    return Err(Error::invalid("webauthn.response_json", "is larger than 64 KiB"));
                }
            }
            Proof::YubikeyHmac { response, factor_id } => {
                if response.len() != 20 {
                    return Err(Error::invalid(
                        "yubikey_hmac.response",
                        format!("must be the 20-byte HMAC-SHA1 response, got {} bytes", response.len()),
                    ));
                }
                if let Some(f) = factor_id {
                    crate::model::check_id("yubikey_hmac.factor_id", f)?;
                }
            }
            Proof::YubikeyOtp { .. } => {}
        }
        Ok(())
    }
}

/// What BeginApproval returns.
#[derive(Debug, Clone)]
pub struct Begun {
    /// Challenge id.
    pub challenge_id: String,
    /// The intent digest.
    pub intent_sha256: [u8; 32],
    /// Kinds that may answer.
    pub allowed: Vec<Kind>,
    /// The user's active factors that may answer.
    pub factors: Vec<FactorRecord>,
    /// Expiry.
    pub expires_at: i64,
    /// The user's anti-phishing code, to show beside the challenge.
    pub anti_phishing_code: Option<String>,
    /// WebAuthn request options JSON, when a credential may answer.
    pub webauthn_options: Option<String>,
    /// YubiKey HMAC challenge, when an HMAC slot may answer.
    pub yubikey_hmac_challenge: Option<[u8; 32]>,
    /// Staff quorums policy will hold the approval for, once answered.
    pub quorum: Vec<crate::protect::policy::QuorumNeed>,
    /// The delay policy will add, seconds.
    pub delay_seconds: i64,
}

/// What CompleteApproval returns.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Compact JWS.
    pub token: String,
    /// Its jti.
    pub jti: String,
    /// Its exp.
    pub expires_at: i64,
    /// Its amr.
    pub amr: Vec<String>,
    /// Its `nbf`, when delayed.
    pub not_before: Option<i64>,
    /// The request holding it: for a staff quorum (then `token` is empty
    /// until the quorum is met) or a delay.
    pub request: Option<quorum::QuorumRequest>,
}

impl Record for ChallengeRecord {
    const NAME: &'static str = "challenge";
    const VERSION: u32 = RECORD_VERSION;
    fn format_version(&self) -> u32 {
        self.v
    }
}

impl Record for ApprovalRecord {
    const NAME: &'static str = "approval";
    const VERSION: u32 = APPROVAL_HELD_VERSION;
    fn format_version(&self) -> u32 {
        self.v
    }
}

/// The configuration sections the approval service uses.
#[derive(Debug, Clone, Default)]
pub struct ApprovalsConfig {
    /// Issuer, audience, lifetimes.
    pub approval: ApprovalConfig,
    /// Holds, locks, whitelist.
    pub protection: ProtectionConfig,
    /// Which factors approve what.
    pub policy: Policy,
    /// Assets, their decimals and networks.
    pub assets: Assets,
    /// Staff quorums, delays, policy changes.
    pub quorum: quorum::QuorumConfig,
}

/// The approval service: challenges, HSM-signed approvals, redemption.
pub struct Approvals {
    pub(crate) k: Arc<Kernel>,
    pub(crate) factors: Arc<Factors>,
    pub(crate) cfg: ApprovalsConfig,
    /// The policy in force, with the store version it was read at.
    policy_cache: std::sync::RwLock<Option<(u64, Arc<Policy>)>>,
}

impl Approvals {
    /// The approval service over the factor service.
    pub fn new(k: Arc<Kernel>, factors: Arc<Factors>, cfg: ApprovalsConfig) -> Approvals {
        Approvals {
            k,
            factors,
            cfg,
            policy_cache: std::sync::RwLock::new(None),
        }
    }

    /// What a withdrawal to `network`/`destination` needs from the whitelist.
    /// Checks the destination is on the user's whitelist and past its hold.
    /// Returns the address record's key and version (None when the whitelist
    /// is not required), for a batch to condition on.
    fn whitelist_check(
        &self,
        user_id: &str,
        network: &str,
        destination: &str,
        now: i64,
    ) -> Result<Option<(Vec<u8>, u64)>, Error> {
        if !self.cfg.protection.require_whitelisted_address {
            return Ok(None);
        }
        let key = address::key(user_id, network, destination);
        let rec = self.k.store.get(Table::Addresses, &key)?;
        let Some(rec) = rec else {
            return Err(Error::refused(
                Reason::AddressNotWhitelisted,
                format!(
                    "destination {destination} ({network}) is not on the user's withdrawal whitelist; add it first (an add_address approval, then a hold of {} s)",
                    self.cfg.protection.address_hold_seconds
                ),
            ));
        };
        let version = rec.version;
        let rec: address::AddressRecord = codec::decode(&rec.value)?;
        if now < rec.usable_at {
            return Err(Error::refused(
                Reason::AddressOnHold,
                format!(
                    "destination {destination} is in its hold after being added; withdrawals to it open at {}",
                    rec.usable_at
                ),
            )
            .retry_at(rec.usable_at, now));
        }
        Ok(Some((key, version)))
    }
}

/// Maps a verification failure of an approval presented to Sigil.
pub fn verify_error(e: VerifyError) -> Error {
    match e {
        VerifyError::Malformed(m) => Error::invalid("approval", format!("not a compact JWS approval: {m}")),
        VerifyError::Expired => Error::refused(Reason::ApprovalExpired, "approval expired; request a new one"),
        VerifyError::NotYetValid => Error::refused(Reason::ApprovalNotYetValid, "approval is not valid yet"),
        VerifyError::Cancelled => Error::refused(Reason::ApprovalCancelled, "approval was cancelled during its delay"),
        VerifyError::IntentMismatch { field } => Error::refused(
            Reason::IntentMismatch,
            format!("approval does not match the withdrawal: field '{field}' differs; nothing was redeemed"),
        )
        .with_meta("field", field),
        other => Error::denied(other.reason(), other.to_string()),
    }
}

/// `[approval]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    /// `iss` claim of approvals.
    pub issuer: String,
    /// `aud` claim of approvals.
    pub audience: String,
    /// Lifetime of an approval (`exp - iat`), seconds.
    pub ttl_seconds: i64,
    /// Lifetime of a challenge, seconds.
    pub challenge_ttl_seconds: i64,
    /// Clock leeway when Sigil itself verifies approvals, seconds.
    pub leeway_seconds: i64,
    /// A rotated-in key is published this long before it signs, seconds.
    pub key_prepublish_seconds: i64,
    /// Destroy retired approval keys in the HSM (else keep them, unpublished).
    pub destroy_retired_keys: bool,
    /// Cache lifetime hint for the published key set, seconds.
    pub jwks_cache_seconds: i64,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            issuer: "sigil".into(),
            audience: "withdrawal-engine".into(),
            ttl_seconds: 120,
            challenge_ttl_seconds: 300,
            leeway_seconds: 5,
            key_prepublish_seconds: 600,
            destroy_retired_keys: false,
            jwks_cache_seconds: 300,
        }
    }
}
