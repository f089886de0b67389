//! The TOTP enrollment URI (`otpauth://`, Key Uri Format), base32 secrets
//! and code checking (`factor::totp`).
//!
//! Input, one per line: issuer, account, secret bytes, code, Unix time,
//! last accepted step (empty for none).
#![no_main]

use data_encoding::BASE32_NOPAD;
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use sigil::factor::totp;

fn decoded(s: &str) -> String {
    percent_decode_str(s).decode_utf8().unwrap().into_owned()
}

fuzz_target!(|data: &[u8]| {
    let [issuer, account, secret, code, now, last] = sigil_fuzz::fields::<6>(data);
    let secret = secret.as_bytes();

    // The URI as Sigil builds it, read back the way an app reads it.
    let b32 = BASE32_NOPAD.encode(secret);
    assert_eq!(BASE32_NOPAD.decode(b32.as_bytes()).unwrap(), secret);
    let uri = totp::otpauth_uri(&issuer, &account, &b32);
    assert!(uri.bytes().all(|b| b.is_ascii_graphic()), "{uri}");
    let rest = uri.strip_prefix("otpauth://totp/").unwrap();
    let (label, query) = rest.split_once('?').unwrap();
    assert!(!query.contains('?') && !uri.contains('#'));
    let (i, a) = label.split_once(':').unwrap();
    assert!(!a.contains(':'));
    assert_eq!(decoded(i), issuer);
    assert_eq!(decoded(a), account);
    let params: Vec<(&str, &str)> = query.split('&').map(|p| p.split_once('=').unwrap()).collect();
    let names: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["secret", "issuer", "algorithm", "digits", "period"]);
    assert_eq!(BASE32_NOPAD.decode(params[0].1.as_bytes()).unwrap(), secret);
    assert_eq!(decoded(params[1].1), issuer);
    assert_eq!(
        &params[2..],
        &[("algorithm", "SHA1"), ("digits", "6"), ("period", "30")]
    );

    // A base32 secret as typed (the `sigil totp` tool): strict, one spelling.
    if let Ok(bytes) = BASE32_NOPAD.decode(code.as_bytes()) {
        assert_eq!(BASE32_NOPAD.encode(&bytes), code);
    }

    // Code checking: a match is a fresh step of the window showing exactly that code.
    let now: i64 = now.trim().parse().unwrap_or(0);
    let last: Option<u64> = last.trim().parse().ok();
    assert_eq!(
        totp::well_formed(&code),
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
    );
    if let Some(step) = totp::verify(secret, &code, now, last) {
        let current = totp::step_at(now);
        assert!(step + totp::WINDOW >= current && step <= current + totp::WINDOW);
        assert!(last.is_none_or(|l| step > l));
        assert_eq!(totp::code_at_step(secret, step), code);
        // Once accepted, the same code at the same time is refused.
        assert_eq!(totp::verify(secret, &code, now, Some(step)), None);
    }
    // The current code is accepted unless its step was used.
    let current = totp::code_at_step(secret, totp::step_at(now));
    if last.is_none() {
        assert!(totp::verify(secret, &current, now, None).is_some());
    }
});
