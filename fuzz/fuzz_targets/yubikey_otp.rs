//! The Yubico OTP parser (`factor::yubikey::otp`: split, decrypt, CRC,
//! counters), ModHex, and the Personalization Tool log line reader.
//!
//! The key and private id are test values, the same the seeds were made
//! with (`examples/fuzz_seeds.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil::factor::yubikey::otp::{self, OtpToken, CRC_RESIDUE, OTP_LEN};
use sigil::factor::yubikey::{modhex, personalization};

const AES_KEY: [u8; 16] = [0x11; 16];
const PRIVATE_ID: [u8; 6] = [1, 2, 3, 4, 5, 6];

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    // Splitting: only 44 modhex characters, and they are given back exactly.
    if let Ok((public, ct)) = otp::split_otp(s) {
        assert_eq!(s.len(), OTP_LEN);
        assert_eq!(otp::encode_otp(&public, &ct), s);
    }
    // ModHex: one spelling per byte string.
    assert_eq!(modhex::is_modhex(s), modhex::decode(s).is_ok());
    if let Ok(bytes) = modhex::decode(s) {
        assert_eq!(modhex::encode(&bytes), s);
    }
    // Verification, from no counters and from the counters in the input.
    let last = data.get(..3).map(|b| (u16::from_le_bytes([b[0], b[1]]), b[2]));
    for l in [None, last] {
        if let Ok(presented) = otp::verify_otp(&AES_KEY, &PRIVATE_ID, l, s) {
            assert!(l.is_none_or(|l| presented > l));
            // The same OTP again, with its counters stored, is a replay.
            assert!(matches!(
                otp::verify_otp(&AES_KEY, &PRIVATE_ID, Some(presented), s),
                Err(otp::OtpFailure::Replayed { .. })
            ));
        }
    }
    // The plaintext block: parsed and rebuilt byte for byte; it decrypts
    // after encryption exactly when its CRC is right.
    if let Some(block) = data.get(..16) {
        let pt: [u8; 16] = block.try_into().unwrap();
        let token = OtpToken::from_plaintext(&pt);
        assert!(token.to_plaintext() == pt);
        let ct = otp::encrypt_token(&AES_KEY, &token);
        match otp::decrypt_token(&AES_KEY, &ct) {
            Ok(back) => {
                assert_eq!(otp::crc16(&pt), CRC_RESIDUE);
                assert!(back.to_plaintext() == pt);
            }
            Err(_) => assert_ne!(otp::crc16(&pt), CRC_RESIDUE),
        }
    }
    // Personalization Tool log lines.
    if let Ok(import) = personalization::parse_personalization_csv(s) {
        drop(import);
    }
});
