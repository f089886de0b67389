//! Enrolling, listing and removing factors: the user's own changes to
//! their second factors.
//!
//! Enrolling a factor when one is already active, and removing one, need a
//! step-up approval ([`crate::approval::Approvals::step_up`]). Adding
//! (confirming) or removing a factor starts the security-change lock:
//! withdrawals are refused for `protection.security_change_lock_seconds`.
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::approval::Approvals;
use crate::factor::totp::TotpConfig;
use crate::factor::Factors;
use crate::kernel::Kernel;
use crate::model::Epochs;
use crate::protect::ProtectionConfig;

mod hardware;
mod manage;

/// The configuration sections enrollment uses.
#[derive(Debug, Clone, Default)]
pub struct EnrollConfig {
    /// The security-change lock.
    pub protection: ProtectionConfig,
    /// TOTP issuer and enrollment time.
    pub totp: TotpConfig,
}

/// The enrollment service.
pub struct Enrollment {
    pub(crate) k: Arc<Kernel>,
    pub(crate) factors: Arc<Factors>,
    pub(crate) approvals: Arc<Approvals>,
    pub(crate) cfg: EnrollConfig,
}

impl Enrollment {
    /// The enrollment service over the factor and approval services.
    pub fn new(k: Arc<Kernel>, factors: Arc<Factors>, approvals: Arc<Approvals>, cfg: EnrollConfig) -> Enrollment {
        Enrollment {
            k,
            factors,
            approvals,
            cfg,
        }
    }
}

/// What a TOTP enrollment hands back to the user, once.
pub struct TotpEnrollment {
    /// The pending factor's id.
    pub factor_id: String,
    /// Base32 secret (no padding).
    pub secret_base32: String,
    /// otpauth URI.
    pub otpauth_uri: String,
    /// QR code of the URI (SVG).
    pub qr_svg: Vec<u8>,
    /// Confirm before this time.
    pub confirm_before: i64,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment")
            .field("factor_id", &self.factor_id)
            .finish_non_exhaustive()
    }
}

/// How a listed factor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Usable (or pending confirmation).
    Current,
    /// Revoked by an admin; the user must enroll again.
    Revoked,
}

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

impl crate::store::codec::Record for Ceremony {
    const NAME: &'static str = "ceremony";
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
