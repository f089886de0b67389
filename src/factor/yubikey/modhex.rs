//! ModHex, the YubiKey's keyboard-layout-proof hex encoding.
//!
//! A YubiKey types as a USB keyboard, so it sends scan codes, not
//! characters. ModHex uses the 16 letters whose scan codes map to the same
//! characters on nearly every Latin keyboard layout: hex digit `0..=f` is
//! written as the letter at that position of [`ALPHABET`]
//! (`cbdefghijklnrtuv`). Each byte becomes two letters, high nibble first,
//! like lower-case hex.
//!
//! Decoding is strict: only the 16 lower-case alphabet letters, an even
//! number of them. Upper case is refused rather than folded, so a typed OTP
//! is never silently altered (a caps-lock OTP is a different string, and the
//! caller decides whether to lower-case input it received).
use std::fmt;

/// The ModHex alphabet: the character for hex digit `i` is `ALPHABET[i]`.
pub const ALPHABET: &[u8; 16] = b"cbdefghijklnrtuv";

/// Why a string is not ModHex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModhexError {
    /// An odd number of characters (each byte is two characters).
    OddLength(usize),
    /// The character at this (0-based, byte) index is not one of `cbdefghijklnrtuv`.
    InvalidChar(usize),
    /// The decoded length is not the one required.
    WrongLength {
        /// Characters required.
        expected: usize,
        /// Characters given.
        got: usize,
    },
}

impl fmt::Display for ModhexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModhexError::OddLength(n) => write!(f, "has {n} characters; modhex needs an even number (two per byte)"),
            ModhexError::InvalidChar(i) => write!(
                f,
                "character {} is not modhex (only the lower-case letters cbdefghijklnrtuv are allowed)",
                i + 1
            ),
            ModhexError::WrongLength { expected, got } => {
                write!(f, "must be {expected} modhex characters, got {got}")
            }
        }
    }
}

impl std::error::Error for ModhexError {}

fn nibble(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).and_then(|p| u8::try_from(p).ok())
}

/// Encodes bytes as ModHex (two characters per byte).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(ALPHABET[usize::from(b >> 4)]));
        out.push(char::from(ALPHABET[usize::from(b & 0x0f)]));
    }
    out
}

/// True when `s` is valid ModHex: an even number of alphabet letters
/// (the empty string included).
pub fn is_modhex(s: &str) -> bool {
    s.len() % 2 == 0 && s.bytes().all(|c| nibble(c).is_some())
}

/// Decodes ModHex into exactly `out.len()` bytes.
///
/// Requires `s.len() == 2 * out.len()`. On error `out` may be partly
/// written; callers holding secrets should zeroize it.
pub fn decode_into(s: &str, out: &mut [u8]) -> Result<(), ModhexError> {
    let raw = s.as_bytes();
    if raw.len() % 2 != 0 {
        return Err(ModhexError::OddLength(raw.len()));
    }
    if raw.len() != out.len() * 2 {
        return Err(ModhexError::WrongLength {
            expected: out.len() * 2,
            got: raw.len(),
        });
    }
    for (i, (pair, o)) in raw.chunks_exact(2).zip(out.iter_mut()).enumerate() {
        let hi = nibble(pair[0]).ok_or(ModhexError::InvalidChar(2 * i))?;
        let lo = nibble(pair[1]).ok_or(ModhexError::InvalidChar(2 * i + 1))?;
        *o = (hi << 4) | lo;
    }
    Ok(())
}

/// Decodes a ModHex string of any even length.
pub fn decode(s: &str) -> Result<Vec<u8>, ModhexError> {
    if s.len() % 2 != 0 {
        return Err(ModhexError::OddLength(s.len()));
    }
    let mut out = vec![0u8; s.len() / 2];
    decode_into(s, &mut out)?;
    Ok(out)
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

    /// Yubico yubico-c `test-vectors.txt` ("Modhex" section) and
    /// `tests/selftest.c`.
    #[test]
    fn yubico_c_vectors() {
        assert_eq!(decode("dteffuje").unwrap(), hex("2d344e83"));
        assert_eq!(
            decode("hknhfjbrjnlnldnhcujvddbikngjrtgh").unwrap(),
            hex("69b6481c8baba2b60e8f22179b58cd56")
        );
        assert_eq!(
            encode(&hex("ecde18dbe76fbd0c33330f1c354871db")),
            "urtubjtnuihvntcreeeecvbregfjibtn"
        );
        assert_eq!(encode(b"test"), "ifhgieif");
        assert_eq!(decode("ifhgieif").unwrap(), b"test");
        // developers.yubico.com "OTPs Explained": hex 0123456789abcdef <-> modhex.
        assert_eq!(encode(&hex("0123456789abcdef")), "cbdefghijklnrtuv");
    }

    #[test]
    fn round_trip_all_bytes() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        assert!(is_modhex(&encode(&all)));
        assert!(is_modhex(""));
    }

    #[test]
    fn strict() {
        assert_eq!(decode("c"), Err(ModhexError::OddLength(1)));
        assert_eq!(decode("ca"), Err(ModhexError::InvalidChar(1)));
        assert_eq!(decode("Cc"), Err(ModhexError::InvalidChar(0)));
        assert_eq!(decode("cé"), Err(ModhexError::OddLength(3)));
        assert_eq!(decode("c "), Err(ModhexError::InvalidChar(1)));
        assert!(!is_modhex("0123"));
        let mut out = [0u8; 2];
        assert_eq!(
            decode_into("cccccc", &mut out),
            Err(ModhexError::WrongLength { expected: 4, got: 6 })
        );
        assert!(ModhexError::InvalidChar(3).to_string().contains("character 4"));
    }
}
