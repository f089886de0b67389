//! YubiKey factors: HMAC-SHA1 challenge-response and Yubico OTP.
//!
//! Two kinds ([`crate::factor::Kind::YubikeyHmac`],
//! [`crate::factor::Kind::YubikeyOtp`]), both verified locally with secrets
//! Sigil stores wrapped by the HSM:
//!
//! - **HMAC-SHA1 challenge-response** ([`hmac`]): a slot programmed with a
//!   20-byte secret in variable-length mode answers HMAC-SHA1 over a
//!   32-byte challenge that commits to the approval's intent
//!   ([`hmac_challenge`]), so the key's answer is bound to the exact
//!   withdrawal. Verified with [`verify_hmac_response`].
//! - **Yubico OTP** ([`otp`]): the 44-character ModHex string the key types.
//!   [`split_otp`] gives the public id (to find the factor), then
//!   [`verify_otp`] decrypts (AES-128), checks the CRC and private id and
//!   refuses anything not newer than the last accepted counters. An OTP is
//!   not bound to an intent: it proves possession at approval time, like a
//!   TOTP code. Credentials are imported from the Personalization Tool log
//!   ([`parse_personalization_csv`]) or written with `usb`.
//!
//! Supporting pieces: [`modhex`] (the encoding), [`emulator`] (a software
//! YubiKey for tests and demos; no device exists in CI) and, with the `usb`
//! feature, `usb` (programming and querying a real key with
//! `yubico_manager`).
//!
//! Secrets handled here (AES keys, HMAC secrets, private ids) are wiped
//! from the types that hold them on drop and never printed by `Debug`.
pub mod emulator;
pub mod hmac;
pub mod modhex;
pub mod otp;
pub mod personalization;
#[cfg(feature = "usb")]
pub mod usb;

pub use emulator::{SoftHmacSlot, SoftYubiKey};
pub use hmac::{hmac_challenge, verify_hmac_response, MAX_CHALLENGE};
pub use otp::{decrypt_token, split_otp, verify_otp, OtpFailure, OtpToken};
pub use personalization::{parse_personalization_csv, OtpImport};
