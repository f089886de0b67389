//! Leaf types every layer shares: the actions that need an approval, the
//! kinds of second factor, the device signals sent with a request, the
//! revocation epochs things are created under, and the syntax of ids.
//!
//! This module imports nothing of Sigil's (the layering test in
//! `tests/layers.rs` holds it to that): everything else may use it.
use serde::{Deserialize, Serialize};

/// Longest id, address or memo accepted, in bytes.
pub const MAX_FIELD: usize = 256;

/// Longest piece of caller input echoed in a message, in characters.
pub const EXCERPT_CHARS: usize = 64;

/// Action types. Each needs an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Move funds to an address.
    Withdrawal,
    /// Add an address to the withdrawal whitelist.
    AddAddress,
    /// Remove an address from the whitelist.
    RemoveAddress,
    /// Enroll another factor (step-up once one exists).
    EnrollFactor,
    /// Remove a factor.
    RemoveFactor,
    /// Change the anti-phishing code.
    ChangeAntiPhishingCode,
    /// Create an API key.
    CreateApiKey,
    /// Cancel a delayed approval or a request waiting for a staff quorum
    /// (the memo names the request).
    CancelApproval,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::Withdrawal,
        Action::AddAddress,
        Action::RemoveAddress,
        Action::EnrollFactor,
        Action::RemoveFactor,
        Action::ChangeAntiPhishingCode,
        Action::CreateApiKey,
        Action::CancelApproval,
    ];

    /// The lower-case name used in intents and the `act` claim.
    pub fn name(self) -> &'static str {
        match self {
            Action::Withdrawal => "withdrawal",
            Action::AddAddress => "add_address",
            Action::RemoveAddress => "remove_address",
            Action::EnrollFactor => "enroll_factor",
            Action::RemoveFactor => "remove_factor",
            Action::ChangeAntiPhishingCode => "change_anti_phishing_code",
            Action::CreateApiKey => "create_api_key",
            Action::CancelApproval => "cancel_approval",
        }
    }

    /// Parses a name (exact, lower case).
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// Kinds of second factor.
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

/// Device signals sent with a begin request. Recorded with the challenge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSignals {
    /// The device says it is jailbroken or rooted.
    pub jailbroken: bool,
    /// Platform name.
    pub platform: String,
    /// App attestation verdict.
    pub app_attestation: String,
}

/// The revocation epochs something was created under: a factor, challenge
/// or approval whose epochs are not the current ones is dead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epochs {
    /// Global epoch.
    pub global: u64,
    /// User epoch.
    pub user: u64,
}

/// A request field that is malformed: which one, and what is expected.
/// Becomes `INVALID_ARGUMENT` with a `BadRequest` field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `intent.user_id`.
    pub field: String,
    /// What is wrong with it and what is expected.
    pub reason: String,
}

impl FieldError {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks an id (user, factor, challenge): present, at most
/// [`MAX_FIELD`] bytes, no control characters.
pub fn check_id(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    check_text(field, value)
}

/// Checks free text: at most [`MAX_FIELD`] bytes, no control characters.
pub fn check_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > MAX_FIELD {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {MAX_FIELD} are allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(())
}

/// Checks an asset or network symbol: 1..32 ASCII letters, digits, `.`,
/// `_` or `-`.
pub fn check_symbol(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > 32 || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(FieldError::new(
            field,
            "must be 1..32 ASCII letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

/// A caller-supplied value as it may be echoed in a message: control
/// characters escaped, at most [`EXCERPT_CHARS`] characters, with the
/// whole length said when it was cut. Never echo input without it.
pub fn excerpt(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(EXCERPT_CHARS)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if s.chars().count() > EXCERPT_CHARS {
        out.push_str(&format!("… ({} bytes in all)", s.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_required_bounded_and_printable() {
        assert!(check_id("user_id", "alice").is_ok());
        assert_eq!(check_id("user_id", "").unwrap_err().reason, "is required");
        assert!(check_id("user_id", &"u".repeat(MAX_FIELD)).is_ok());
        assert!(check_id("user_id", &"u".repeat(MAX_FIELD + 1)).is_err());
        assert_eq!(check_id("x", "a\u{0}b").unwrap_err().field, "x");
        assert!(check_symbol("asset", "B TC").is_err());
        assert!(check_symbol("asset", "USDT.e").is_ok());
    }

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.name()), Some(a));
        }
        assert_eq!(Action::parse("Withdrawal"), None);
    }

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(excerpt("a\nb"), "a\\nb");
        let long = "x".repeat(100);
        assert!(excerpt(&long).ends_with("(100 bytes in all)"));
    }
}
