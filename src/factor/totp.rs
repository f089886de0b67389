//! TOTP (RFC 6238) on HOTP (RFC 4226).
//!
//! Sigil issues SHA-1, 6-digit, 30-second TOTP factors (what every
//! authenticator app supports) with a 160-bit secret. Verification accepts
//! the current step and one step either side, but only steps strictly newer
//! than the last accepted one (RFC 6238 §5.2: a code is accepted once). When
//! several steps in the window show the same digits, the newest is taken,
//! so the same six digits cannot be replayed in a later step.
use ring::hmac;
use serde::Deserialize;

/// Seconds per time step.
pub const PERIOD: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Secret length in bytes (160 bits, RFC 4226 §4 recommends at least 128).
pub const SECRET_LEN: usize = 20;
/// Steps accepted either side of the current one.
pub const WINDOW: u64 = 1;

/// HMAC algorithm of a TOTP factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1 (the default every app supports).
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl Algorithm {
    fn ring(self) -> hmac::Algorithm {
        match self {
            Algorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => hmac::HMAC_SHA256,
            Algorithm::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

/// HOTP value (RFC 4226 §5.3) for `counter`, as a number below 10^digits.
pub fn hotp(secret: &[u8], counter: u64, digits: u32, alg: Algorithm) -> u32 {
    let key = hmac::Key::new(alg.ring(), secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = (mac[mac.len() - 1] & 0x0f) as usize;
    let bin = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    bin % 10u32.pow(digits)
}

/// The time step containing Unix time `now` (negative times map to 0).
pub fn step_at(now: i64) -> u64 {
    u64::try_from(now.max(0) / PERIOD).unwrap_or(0)
}

/// The code an app shows at `step`, zero-padded.
pub fn code_at_step(secret: &[u8], step: u64) -> String {
    format!(
        "{:0width$}",
        hotp(secret, step, DIGITS, Algorithm::Sha1),
        width = DIGITS as usize
    )
}

/// True when `code` has the shape of a code: exactly [`DIGITS`] ASCII digits.
pub fn well_formed(code: &str) -> bool {
    code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit())
}

/// Checks `code` at time `now`. Returns the step it matched, the newest one
/// in the window, if that step is newer than `last_step`; None otherwise.
/// Every candidate is compared in constant time.
pub fn verify(secret: &[u8], code: &str, now: i64, last_step: Option<u64>) -> Option<u64> {
    if !well_formed(code) {
        return None;
    }
    let current = step_at(now);
    let mut matched = None;
    for step in current.saturating_sub(WINDOW)..=current + WINDOW {
        let expected = code_at_step(secret, step);
        let equal: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()).into();
        let fresh = last_step.is_none_or(|last| step > last);
        if equal && fresh {
            matched = Some(step);
        }
    }
    matched
}

/// The `otpauth://` URI authenticator apps import (Key Uri Format).
pub fn otpauth_uri(issuer: &str, account: &str, secret_base32: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let i = utf8_percent_encode(issuer, NON_ALPHANUMERIC);
    let a = utf8_percent_encode(account, NON_ALPHANUMERIC);
    format!("otpauth://totp/{i}:{a}?secret={secret_base32}&issuer={i}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}")
}

/// The URI as an SVG QR code.
pub fn qr_svg(uri: &str) -> Result<Vec<u8>, crate::error::Error> {
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| crate::error::Error::Internal(format!("cannot render QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Ok(svg.into_bytes())
}

/// `[totp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TotpConfig {
    /// Issuer shown in authenticator apps.
    pub issuer: String,
    /// A pending enrollment must be confirmed within this many seconds.
    pub enrollment_ttl_seconds: i64,
}

impl Default for TotpConfig {
    fn default() -> Self {
        Self {
            issuer: "Sigil".into(),
            enrollment_ttl_seconds: 600,
        }
    }
}

impl crate::store::meta::RestoreRecord {
    /// The newest TOTP time step that could have been accepted before the
    /// restore: a code is accepted up to [`WINDOW`] steps ahead of the
    /// verifier's clock, so a code used at the restore moment may belong
    /// to `step_at(restored_at) + WINDOW`. Every step up to and including
    /// this one is refused after the restore.
    pub fn totp_floor_step(&self) -> u64 {
        step_at(self.restored_at).saturating_add(WINDOW)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 6238 Appendix B: (time, SHA-1, SHA-256, SHA-512) 8-digit codes.
    const RFC6238: [(i64, u32, u32, u32); 6] = [
        (59, 94287082, 46119246, 90693936),
        (1111111109, 7081804, 68084774, 25091201),
        (1111111111, 14050471, 67062674, 99943326),
        (1234567890, 89005924, 91819424, 93441116),
        (2000000000, 69279037, 90698825, 38618901),
        (20000000000, 65353130, 77737706, 47863826),
    ];

    #[test]
    fn rfc6238_appendix_b() {
        let s1 = b"12345678901234567890";
        let s256 = b"12345678901234567890123456789012";
        let s512 = b"1234567890123456789012345678901234567890123456789012345678901234";
        for (t, c1, c256, c512) in RFC6238 {
            let step = step_at(t);
            assert_eq!(hotp(s1, step, 8, Algorithm::Sha1), c1, "sha1 at {t}");
            assert_eq!(hotp(s256, step, 8, Algorithm::Sha256), c256, "sha256 at {t}");
            assert_eq!(hotp(s512, step, 8, Algorithm::Sha512), c512, "sha512 at {t}");
        }
    }

    #[test]
    fn rfc4226_appendix_d() {
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(hotp(b"12345678901234567890", i as u64, 6, Algorithm::Sha1), *want);
        }
    }

    #[test]
    fn window_and_replay() {
        let s = b"12345678901234567890";
        let now = 1_800_000_000;
        let step = step_at(now);
        let code = code_at_step(s, step);
        assert_eq!(verify(s, &code, now, None), Some(step));
        // Accepted once: the same step is refused afterwards, and so is an older one.
        assert_eq!(verify(s, &code, now, Some(step)), None);
        let prev = code_at_step(s, step - 1);
        assert_eq!(verify(s, &prev, now, Some(step)), None);
        // One step either side is accepted, two are not.
        assert_eq!(verify(s, &code_at_step(s, step + 1), now, None), Some(step + 1));
        assert_eq!(verify(s, &code_at_step(s, step - 1), now, None), Some(step - 1));
        assert_eq!(verify(s, &code_at_step(s, step + 2), now, None), None);
        assert_eq!(verify(s, &code_at_step(s, step - 2), now, None), None);
        // Malformed codes never match.
        for bad in ["", "12345", "1234567", "12345a", " 123456", "١٢٣٤٥٦"] {
            assert_eq!(verify(s, bad, now, None), None, "{bad:?}");
        }
    }

    #[test]
    fn uri_shape() {
        let u = otpauth_uri("Sigil Exchange", "alice@example.com", "JBSWY3DPEHPK3PXP");
        assert_eq!(
            u,
            "otpauth://totp/Sigil%20Exchange:alice%40example%2Ecom?secret=JBSWY3DPEHPK3PXP&issuer=Sigil%20Exchange&algorithm=SHA1&digits=6&period=30"
        );
        let svg = qr_svg(&u).unwrap();
        assert!(svg.starts_with(b"<?xml"));
    }
}
