//! Strict base64url without padding (RFC 4648 §5, as used by JWS, JWK and
//! WebAuthn).
//!
//! [`encode`] never emits `=`. [`decode`] accepts exactly the strings that
//! [`encode`] can produce and nothing else: it refuses padding, any byte
//! outside `A–Z a–z 0–9 - _` (including whitespace and the standard
//! alphabet's `+` and `/`), impossible lengths, and encodings whose unused
//! trailing bits are not zero. Every byte string therefore has exactly one
//! accepted encoding, so comparing encodings is the same as comparing bytes.

use std::fmt;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

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
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    let sym = |v: u32| char::from(ALPHABET[(v & 0x3f) as usize]);
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(sym(n >> 6));
        out.push(sym(n));
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.push(sym(n >> 18));
            out.push(sym(n >> 12));
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.push(sym(n >> 18));
            out.push(sym(n >> 12));
            out.push(sym(n >> 6));
        }
        _ => {}
    }
    out
}

fn value(index: usize, byte: u8) -> Result<u32, DecodeError> {
    let v = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        b'=' => return Err(DecodeError::Padding { index }),
        _ => return Err(DecodeError::InvalidByte { index, byte }),
    };
    Ok(u32::from(v))
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
    let bytes = input.as_bytes();
    // Report the first bad byte before complaining about the length: it is
    // the more useful message (e.g. padded input).
    for (index, &byte) in bytes.iter().enumerate() {
        value(index, byte)?;
    }
    if bytes.len() % 4 == 1 {
        return Err(DecodeError::InvalidLength(bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 2);
    for (chunk_no, chunk) in bytes.chunks(4).enumerate() {
        let base = chunk_no * 4;
        let mut n: u32 = 0;
        for (i, &b) in chunk.iter().enumerate() {
            n |= value(base + i, b)? << (18 - 6 * i);
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
            3 => {
                if n & 0xff != 0 {
                    return Err(DecodeError::NonCanonical);
                }
                out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
            }
            2 => {
                if n & 0xffff != 0 {
                    return Err(DecodeError::NonCanonical);
                }
                out.push((n >> 16) as u8);
            }
            // len % 4 == 1 was refused above; an empty chunk cannot occur.
            _ => return Err(DecodeError::InvalidLength(bytes.len())),
        }
    }
    Ok(out)
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
        let alpha: Vec<char> = ALPHABET.iter().map(|&b| char::from(b)).collect();
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
    fn errors_display() {
        let msg = DecodeError::Padding { index: 3 }.to_string();
        assert!(msg.contains("padding"), "{msg}");
    }
}
