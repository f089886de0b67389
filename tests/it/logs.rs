//! The logs of a real `sigild` at debug level, in both formats, through a
//! full flow (TOTP, YubiKey HMAC-SHA1 and OTP, approvals redeemed, keys
//! read and rotated): no secret it handled appears in any encoding, and
//! every line of the JSON format is a JSON object.
use std::time::{Duration, Instant};

use data_encoding::{BASE32, BASE32_NOPAD, BASE64, BASE64URL, BASE64URL_NOPAD, BASE64_NOPAD, HEXLOWER, HEXUPPER};

use crate::support::daemon::*;
use crate::support::observe::*;

/// The PINs the daemon tests' tokens are made with (see `daemon_env`).
const PINS: [&str; 2] = ["it-daemon-pin-1", "it-daemon-so-pin-1"];

/// Every text form of `secret` a log line might carry.
fn encodings(what: &str, secret: &[u8]) -> Vec<(String, String)> {
    let mut out = vec![
        (format!("{what} (hex)"), HEXLOWER.encode(secret)),
        (format!("{what} (HEX)"), HEXUPPER.encode(secret)),
        (format!("{what} (base32)"), BASE32.encode(secret)),
        (format!("{what} (base32, no padding)"), BASE32_NOPAD.encode(secret)),
        (
            format!("{what} (base32, lower case)"),
            BASE32_NOPAD.encode(secret).to_lowercase(),
        ),
        (format!("{what} (base64)"), BASE64.encode(secret)),
        (format!("{what} (base64, no padding)"), BASE64_NOPAD.encode(secret)),
        (format!("{what} (base64url)"), BASE64URL.encode(secret)),
        (
            format!("{what} (base64url, no padding)"),
            BASE64URL_NOPAD.encode(secret),
        ),
    ];
    if secret.len() >= 8 && secret.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        out.push((format!("{what} (raw)"), String::from_utf8_lossy(secret).into_owned()));
    }
    out
}

/// What must never be logged: the secrets of `seen`, the PINs, and every
/// approval token whole and its signature.
fn forbidden(seen: &Handled) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in &seen.totp_seeds {
        out.extend(encodings("TOTP seed", s));
    }
    for s in &seen.yubikey_secrets {
        out.extend(encodings("YubiKey secret", s));
    }
    for pin in PINS {
        out.push(("HSM PIN".into(), pin.to_string()));
    }
    for t in &seen.tokens {
        out.push(("approval token".into(), t.clone()));
        let sig = t.split('.').nth(2).unwrap();
        assert_eq!(sig.len(), 86, "an ES256 signature is 86 base64url characters");
        out.push(("approval signature".into(), sig.to_string()));
    }
    out
}

/// Waits until the log stops growing (the reader drains what the process
/// wrote before it exited).
fn settled(d: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = usize::MAX;
    loop {
        let n = d.log.lock().unwrap().len();
        if n == last || Instant::now() > deadline {
            return d.log.lock().unwrap().clone();
        }
        last = n;
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_logs_in_text_and_json_carry_no_secret() {
    for format in ["json", "text"] {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), PROTECTIONS_OFF);
        let d = start_daemon_with(dir.path(), "debug", &[("SIGIL_LOG_FORMAT", format)]);
        wait_ready(&d.url).await;
        let seen = full_flow(&d.url, &format!("logs-{format}")).await;
        assert_eq!(seen.tokens.len(), 3);
        let mut d = d;
        d.signal("TERM");
        let exited = Instant::now() + Duration::from_secs(20);
        while d.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < exited, "sigild did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        let lines = settled(&d);
        assert!(
            lines.len() > 100,
            "{format}: a debug-level flow logs more than {} lines",
            lines.len()
        );
        if format == "json" {
            for l in &lines {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
                assert!(
                    v.get("timestamp").is_some() && v.get("level").is_some(),
                    "a JSON line without timestamp or level: {l}"
                );
            }
            assert!(
                lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
                "debug lines are logged"
            );
        } else {
            assert!(lines.iter().any(|l| l.contains(" DEBUG ")), "debug lines are logged");
            assert!(!lines.iter().any(|l| l.starts_with('{')), "text lines are not JSON");
        }
        // The flow's own lines are there (users are named, secrets never).
        let user = format!("logs-{format}-locked");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&user) && l.contains("second factor refused")),
            "{format}: the refusals of {user} are not logged"
        );
        let needles = forbidden(&seen);
        for l in &lines {
            for (what, needle) in &needles {
                assert!(
                    !l.contains(needle.as_str()),
                    "{format}: the {what} is in a log line: {l}"
                );
            }
        }
    }
}

#[test]
fn an_unknown_log_format_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sigild"))
        .args(["--log-format", "xml"])
        .env_remove("SIGIL_LOG_FORMAT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("text") && err.contains("json"), "{err}");
}
