//! Strict base64url without padding (RFC 4648 §5, as used by JWS, JWK and
//! WebAuthn), on the `base64` crate's URL-safe engine.
//!
//! [`encode`] never emits `=`. [`decode`] accepts exactly the strings that
//! [`encode`] can produce and nothing else: it refuses padding, any byte
//! outside `A–Z a–z 0–9 - _` (including whitespace and the standard
//! alphabet's `+` and `/`), impossible lengths, and encodings whose unused
//! trailing bits are not zero. Every byte string therefore has exactly one
//! accepted encoding, so comparing encodings is the same as comparing bytes.

use std::fmt;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// URL-safe alphabet, no padding on encode, padding refused on decode, and
/// non-zero trailing bits refused: the canonical form and only it.
const STRICT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Why a string is not canonical unpadded base64url.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input has a length that no encoding can have (`len % 4 == 1`).
    InvalidLength(usize),
    /// The input contains `=`; this encoding is used without padding.
    Padding {
        /// Byte offset of the first `=`.
        index: usize,
    },
    /// The input contains a byte outside the base64url alphabet.
    InvalidByte {
        /// Byte offset of the offending byte.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
    /// The last character carries non-zero bits that do not belong to any
    /// decoded byte, so the string is not the canonical encoding of its bytes.
    NonCanonical,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidLength(len) => {
                write!(f, "base64url input of length {len} is impossible (length % 4 == 1)")
            }
            DecodeError::Padding { index } => write!(
                f,
                "base64url input has padding '=' at byte {index}; unpadded base64url is required"
            ),
            DecodeError::InvalidByte { index, byte } => write!(
                f,
                "base64url input has byte 0x{byte:02x} at offset {index}, outside the alphabet A-Z a-z 0-9 - _"
            ),
            DecodeError::NonCanonical => {
                write!(f, "base64url input is not canonical: unused trailing bits are not zero")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `data` as base64url without padding.
///
/// ```
/// assert_eq!(sigil_verify::b64url::encode(b"\xfb\xff"), "-_8");
/// ```
pub fn encode(data: &[u8]) -> String {
    STRICT.encode(data)
}

/// Decodes canonical unpadded base64url.
///
/// Refuses padding, bytes outside the alphabet, impossible lengths and
/// non-zero trailing bits (see the [module docs](self)).
///
/// ```
/// use sigil_verify::b64url;
/// assert_eq!(b64url::decode("-_8").unwrap(), b"\xfb\xff");
/// assert!(b64url::decode("-_8=").is_err()); // padding
/// assert!(b64url::decode("-_9").is_err()); // non-zero trailing bits
/// ```
pub fn decode(input: &str) -> Result<Vec<u8>, DecodeError> {
    STRICT.decode(input).map_err(|e| match e {
        base64::DecodeError::InvalidLength(_) => DecodeError::InvalidLength(input.len()),
        base64::DecodeError::InvalidLastSymbol(..) => DecodeError::NonCanonical,
        // The engine reports `=` as an invalid byte or as invalid padding
        // depending on where it stands, and a stray byte at the end of a
        // `len % 4 == 1` input before any earlier one: report the first
        // byte outside the alphabet, `=` as padding, wherever it is.
        base64::DecodeError::InvalidByte(index, byte) => first_outside_alphabet(input).unwrap_or(if byte == b'=' {
            DecodeError::Padding { index }
        } else {
            DecodeError::InvalidByte { index, byte }
        }),
        base64::DecodeError::InvalidPadding => {
            first_outside_alphabet(input).unwrap_or(DecodeError::Padding { index: input.len() })
        }
    })
}

/// The first byte of `input` outside `A–Z a–z 0–9 - _`, as an error.
fn first_outside_alphabet(input: &str) -> Option<DecodeError> {
    let (index, &byte) = input
        .as_bytes()
        .iter()
        .enumerate()
        .find(|&(_, &b)| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))?;
    Some(if byte == b'=' {
        DecodeError::Padding { index }
    } else {
        DecodeError::InvalidByte { index, byte }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        // RFC 4648 §10 test vectors, without padding.
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (raw, enc) in cases {
            assert_eq!(encode(raw), enc);
            assert_eq!(decode(enc).unwrap(), raw);
        }
    }

    #[test]
    fn url_safe_alphabet() {
        assert_eq!(encode(&[0xfb, 0xef, 0xbe]), "----");
        assert_eq!(encode(&[0xff, 0xff, 0xff]), "____");
        assert_eq!(decode("-_-_").unwrap(), vec![0xfb, 0xff, 0xbf]);
    }

    #[test]
    fn round_trip_all_lengths_and_bytes() {
        let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for len in 0..data.len() {
            let enc = encode(&data[..len]);
            assert!(!enc.contains('='));
            assert_eq!(enc.len(), (len * 4).div_ceil(3));
            assert_eq!(decode(&enc).unwrap(), &data[..len], "len {len}");
        }
    }

    #[test]
    fn rejects_padding() {
        assert_eq!(decode("Zg=="), Err(DecodeError::Padding { index: 2 }));
        assert_eq!(decode("Zm8="), Err(DecodeError::Padding { index: 3 }));
        assert_eq!(decode("="), Err(DecodeError::Padding { index: 0 }));
    }

    #[test]
    fn rejects_non_alphabet() {
        for (s, index, byte) in [
            ("Zm9v+g", 4, b'+'),
            ("Zm9v/g", 4, b'/'),
            ("Zm9 v", 3, b' '),
            ("Zm9v\n", 4, b'\n'),
            ("Zm.v", 2, b'.'),
            ("Zm9vä", 4, 0xc3),
        ] {
            assert_eq!(decode(s), Err(DecodeError::InvalidByte { index, byte }), "{s:?}");
        }
    }

    #[test]
    fn rejects_impossible_length() {
        assert_eq!(decode("Z"), Err(DecodeError::InvalidLength(1)));
        assert_eq!(decode("Zm9vY"), Err(DecodeError::InvalidLength(5)));
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "Zg" is canonical for b"f"; "Zh".."Zv" carry extra low bits.
        assert_eq!(decode("Zg").unwrap(), b"f");
        for c in "hijklmnopqrstuv".chars() {
            assert_eq!(decode(&format!("Z{c}")), Err(DecodeError::NonCanonical), "{c}");
        }
        assert_eq!(decode("Zm8").unwrap(), b"fo");
        assert_eq!(decode("Zm9"), Err(DecodeError::NonCanonical));
        assert_eq!(decode("Zm-"), Err(DecodeError::NonCanonical));
    }

    #[test]
    fn every_string_decodes_to_its_own_encoding() {
        // Exhaustive over all 2- and 3-character strings: whatever decodes
        // must re-encode to itself (uniqueness of the accepted encoding).
        let alpha: Vec<char> = alphabet::URL_SAFE.as_str().chars().collect();
        assert_eq!(alpha.len(), 64);
        for &a in &alpha {
            for &b in &alpha {
                let s2: String = [a, b].iter().collect();
                if let Ok(d) = decode(&s2) {
                    assert_eq!(encode(&d), s2);
                }
                for &c in &alpha {
                    let s3: String = [a, b, c].iter().collect();
                    if let Ok(d) = decode(&s3) {
                        assert_eq!(encode(&d), s3);
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_padding_wherever_it_stands() {
        // The engine calls a misplaced `=` an invalid byte and a trailing one
        // invalid padding; both are `Padding` at the first `=`.
        for raw in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let enc = encode(raw);
            for at in 0..=enc.len() {
                for pad in ["=", "==", "==="] {
                    let s = format!("{}{pad}{}", &enc[..at], &enc[at..]);
                    assert_eq!(decode(&s), Err(DecodeError::Padding { index: at }), "{s:?}");
                }
            }
        }
        assert_eq!(decode("Zm9v="), Err(DecodeError::Padding { index: 4 }));
        assert_eq!(decode("Zg==Zg=="), Err(DecodeError::Padding { index: 2 }));
    }

    #[test]
    fn rejects_whitespace_anywhere() {
        for ws in [" ", "\t", "\n", "\r\n"] {
            for s in [
                format!("{ws}Zm9v"),
                format!("Zm{ws}9v"),
                format!("Zm9v{ws}"),
                format!("Zg{ws}"),
            ] {
                let index = s.find(ws).unwrap();
                let byte = ws.as_bytes()[0];
                assert_eq!(decode(&s), Err(DecodeError::InvalidByte { index, byte }), "{s:?}");
            }
        }
    }

    #[test]
    fn alphabet_is_exactly_the_url_safe_one() {
        let alpha = alphabet::URL_SAFE.as_str().as_bytes();
        for byte in 0..=127u8 {
            let s = format!("AAA{}", char::from(byte));
            match decode(&s) {
                Ok(_) => assert!(alpha.contains(&byte), "{byte:#x}"),
                Err(DecodeError::Padding { index: 3 }) => assert_eq!(byte, b'='),
                Err(DecodeError::InvalidByte { index: 3, byte: b }) => {
                    assert_eq!(b, byte);
                    assert!(!alpha.contains(&byte), "{byte:#x}");
                }
                Err(e) => panic!("{byte:#x}: {e}"),
            }
        }
    }

    #[test]
    fn reports_the_first_offending_byte() {
        // The engine looks at the last byte of a `len % 4 == 1` input first;
        // the first bad byte is the one reported, before any length error.
        assert_eq!(decode("Z.9v\n"), Err(DecodeError::InvalidByte { index: 1, byte: b'.' }));
        assert_eq!(decode("Z=9v\n"), Err(DecodeError::Padding { index: 1 }));
        assert_eq!(decode("Zm9v+"), Err(DecodeError::InvalidByte { index: 4, byte: b'+' }));
        assert_eq!(decode("Zm+vY"), Err(DecodeError::InvalidByte { index: 2, byte: b'+' }));
    }

    #[test]
    fn errors_display() {
        let msg = DecodeError::Padding { index: 3 }.to_string();
        assert!(msg.contains("padding"), "{msg}");
    }
}
