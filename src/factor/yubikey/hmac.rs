//! YubiKey HMAC-SHA1 challenge-response, bound to an approval's intent.
//!
//! The server sends the key a challenge that commits to the intent:
//! [`hmac_challenge`] = SHA-256(`"sigil-yubikey-hmac-v1"` || nonce ||
//! intent_sha256), the tag as 21 ASCII bytes, the nonce kept server-side
//! (at least 16 random bytes), the intent digest as raw 32 bytes. The key
//! answers HMAC-SHA1(slot secret, challenge), 20 bytes, which the server
//! recomputes with the stored secret ([`verify_hmac_response`]).
//!
//! ## Slot mode: variable length (`HMAC_LT64`) is required
//!
//! A YubiKey always receives a 64-byte challenge frame. In the default
//! fixed mode it MACs all 64 bytes; with the `HMAC_LT64` configuration flag
//! ("variable length") it treats the frame's last byte as padding and MACs
//! only what precedes the trailing run of that byte. Hosts pad a shorter
//! challenge with 0x00, or with 0xff when the challenge itself ends in 0x00
//! (python-yubico and `yubico_manager` alike), so a variable-length slot
//! MACs exactly the challenge they were given, for any length up to
//! [`MAX_VARIABLE_CHALLENGE`] (63) bytes.
//!
//! Sigil's challenge is 32 bytes and [`verify_hmac_response`] computes
//! HMAC-SHA1 over those 32 bytes, so the slot **must** be programmed in
//! variable-length mode. `usb::program_hmac_slot` does that:
//! `yubico_manager`'s `DeviceModeConfig::challenge_response_hmac(key,
//! variable = true, button)` sets `CHAL_RESP` + `CHAL_HMAC` + `HMAC_LT64`
//! (+ `CHAL_BTN_TRIG` when touch is required), and `usb::challenge_response`
//! asks with `Config::set_variable_size(true)`. A slot programmed in fixed
//! 64-byte mode (for example by the Personalization tool with "Variable
//! input" unticked) answers HMAC over the zero-padded 64 bytes instead, and
//! every verification fails.
use ring::{digest, hmac};

/// Domain-separation tag of the challenge (21 ASCII bytes, no terminator).
pub const TAG: &[u8] = b"sigil-yubikey-hmac-v1";
/// Size of the challenge frame a YubiKey receives.
pub const MAX_CHALLENGE: usize = 64;
/// Longest challenge a variable-length (`HMAC_LT64`) slot MACs unchanged:
/// a full 64-byte frame loses its trailing run of equal bytes.
pub const MAX_VARIABLE_CHALLENGE: usize = MAX_CHALLENGE - 1;
/// Length of the slot secret (HMAC-SHA1 key) in bytes.
pub const SECRET_LEN: usize = 20;
/// Length of a response (an HMAC-SHA1 tag) in bytes.
pub const RESPONSE_LEN: usize = 20;
/// Shortest nonce accepted by convention (callers should use 16+ random bytes).
pub const MIN_NONCE: usize = 16;

/// The 32-byte challenge for an approval: SHA-256(TAG || nonce || intent_sha256).
pub fn hmac_challenge(nonce: &[u8], intent_sha256: &[u8; 32]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(TAG);
    ctx.update(nonce);
    ctx.update(intent_sha256);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// HMAC-SHA1(secret, challenge): what a variable-length slot answers to a
/// challenge of at most [`MAX_VARIABLE_CHALLENGE`] bytes.
pub fn expected_response(secret: &[u8; SECRET_LEN], challenge: &[u8]) -> [u8; RESPONSE_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, challenge);
    let mut out = [0u8; RESPONSE_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// True when `response` is exactly the 20-byte HMAC-SHA1(secret, challenge).
///
/// The comparison is constant time (`ring::hmac::verify`). A challenge that
/// is empty or longer than [`MAX_VARIABLE_CHALLENGE`] is refused: a
/// variable-length slot would not MAC it unchanged.
pub fn verify_hmac_response(secret: &[u8; SECRET_LEN], challenge: &[u8], response: &[u8]) -> bool {
    if challenge.is_empty() || challenge.len() > MAX_VARIABLE_CHALLENGE || response.len() != RESPONSE_LEN {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    hmac::verify(&key, challenge, response).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// FIPS PUB 198 A.2 (20-byte key, "Sample #2"): the vector Yubico's
    /// python-yubico `examples/configure_nist_test_key.py` programs into a
    /// variable-length slot. RFC 2202 test cases 1 and 3 (20-byte keys).
    #[test]
    fn hmac_sha1_published_vectors() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 3] = [
            (
                hex("303132333435363738393a3b3c3d3e3f40414243"),
                b"Sample #2".to_vec(),
                "0922d3405faa3d194f82a45830737d5cc6c75d24",
            ),
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b617318655057264e28bc0b6fb378c8ef146be00",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "125d7342b9ac11cd91a39af48aa17b4f63f175d3",
            ),
        ];
        for (key, msg, mac) in cases {
            let secret: [u8; 20] = key.try_into().unwrap();
            assert_eq!(expected_response(&secret, &msg).to_vec(), hex(mac));
            assert!(verify_hmac_response(&secret, &msg, &hex(mac)));
        }
    }

    #[test]
    fn challenge_binds_nonce_and_intent() {
        let nonce = [7u8; 16];
        let intent = [9u8; 32];
        let c = hmac_challenge(&nonce, &intent);
        let mut manual = TAG.to_vec();
        manual.extend_from_slice(&nonce);
        manual.extend_from_slice(&intent);
        assert_eq!(c.as_slice(), digest::digest(&digest::SHA256, &manual).as_ref());
        assert_eq!(TAG.len(), 21);
        assert_ne!(hmac_challenge(&[8u8; 16], &intent), c);
        let mut other = intent;
        other[31] ^= 1;
        assert_ne!(hmac_challenge(&nonce, &other), c);
        assert!(c.len() <= MAX_VARIABLE_CHALLENGE);
    }

    #[test]
    fn verify_refusals() {
        let secret = [0x42u8; 20];
        let ch = hmac_challenge(&[1u8; 16], &[2u8; 32]);
        let good = expected_response(&secret, &ch);
        assert!(verify_hmac_response(&secret, &ch, &good));
        let mut bad = good;
        bad[19] ^= 1;
        assert!(!verify_hmac_response(&secret, &ch, &bad));
        assert!(!verify_hmac_response(&secret, &ch, &good[..19]));
        let mut long = good.to_vec();
        long.push(0);
        assert!(!verify_hmac_response(&secret, &ch, &long));
        assert!(!verify_hmac_response(&secret, &ch, &[]));
        assert!(!verify_hmac_response(&[0x43u8; 20], &ch, &good));
        assert!(!verify_hmac_response(&secret, &[], &expected_response(&secret, &[])));
        let c64 = [1u8; 64];
        assert!(!verify_hmac_response(&secret, &c64, &expected_response(&secret, &c64)));
        let c63 = [1u8; 63];
        assert!(verify_hmac_response(&secret, &c63, &expected_response(&secret, &c63)));
    }
}
