//! Yubico OTP, validated locally (no YubiCloud round trip).
//!
//! A Yubico OTP as typed by the key is 44 ModHex characters: a 12-character
//! (6-byte) public id that names the key, then 32 characters (16 bytes) of
//! AES-128 ciphertext. Sigil accepts exactly that shape. The plaintext
//! block (developers.yubico.com, "OTPs Explained"; yubico-c `yubikey.h`):
//!
//! | offset | size | field (Yubico mnemonic) | meaning |
//! |---|---|---|---|
//! | 0  | 6 | `uid`        | private id, a secret programmed with the key |
//! | 6  | 2 | `useCtr`     | usage counter, little-endian; non-volatile, 15 bits (bit 15 is the legacy caps-lock trigger flag) |
//! | 8  | 3 | `tstp`       | timestamp, little-endian, 24 bits, ~8 Hz, random at power-up |
//! | 11 | 1 | `sessionCtr` | session counter; volatile, 0 at power-up, +1 per OTP |
//! | 12 | 2 | `rnd`        | random number, little-endian |
//! | 14 | 2 | `crc`        | ones' complement of CRC-16 over bytes 0..14, little-endian |
//!
//! The CRC is CRC-16/X.25's register without the final XOR (yubico-c
//! `yubikey_crc16`: init 0xffff, reflected polynomial 0x8408). Over all 16
//! plaintext bytes it leaves the residue 0xf0b8, which is how a decryption
//! under the right key is recognised.
//!
//! Verification ([`verify_otp`]): decrypt, check the CRC residue, compare the
//! private id in constant time, then require (usage counter, session
//! counter) to be strictly greater, lexicographically, than the last pair
//! accepted for this key. The device guarantees that every OTP it emits is
//! newer than the previous one: the usage counter is bumped on the first OTP
//! after each power-up (and when the session counter wraps), the session
//! counter on every OTP. The timestamp is not compared: it restarts at a
//! random value on each power-up.
use std::fmt;

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::modhex;
use crate::error::{Error, Reason};

/// Characters in an OTP Sigil accepts: public id plus token.
pub const OTP_LEN: usize = PUBLIC_ID_LEN + TOKEN_LEN;
/// ModHex characters of the public id (6 bytes), the YubiKey default.
pub const PUBLIC_ID_LEN: usize = 12;
/// ModHex characters of the encrypted token (16 bytes).
pub const TOKEN_LEN: usize = 32;
/// CRC-16 residue of a correctly decrypted token.
pub const CRC_RESIDUE: u16 = 0xf0b8;
/// Largest usage counter; the device stops counting there.
pub const MAX_USAGE_COUNTER: u16 = 0x7fff;
/// Largest timestamp (24 bits).
pub const MAX_TIMESTAMP: u32 = 0x00ff_ffff;

/// Yubico's CRC-16: the X.25 register (poly 0x1021 reflected, init 0xffff)
/// without the final XOR. `check` is the value for "123456789".
const YUBICO_CRC16: crc::Algorithm<u16> = crc::Algorithm {
    width: 16,
    poly: 0x1021,
    init: 0xffff,
    refin: true,
    refout: true,
    xorout: 0x0000,
    check: 0x6f91,
    residue: CRC_RESIDUE,
};

static CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&YUBICO_CRC16);

/// Yubico's CRC-16 (yubico-c `yubikey_crc16`) of `data`.
pub fn crc16(data: &[u8]) -> u16 {
    CRC16.checksum(data)
}

/// The decrypted 16-byte block of a Yubico OTP.
///
/// `Debug` hides the private id. Cleared from memory when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct OtpToken {
    /// Private (secret) id, compared with the one enrolled.
    pub private_id: [u8; 6],
    /// Usage counter (`useCtr`): non-volatile, 15 bits, incremented by the
    /// first OTP after each power-up and when the session counter wraps.
    pub usage_counter: u16,
    /// Bit 15 of the usage counter field: set by old firmware when the OTP
    /// was triggered by caps lock. Kept so a token re-encodes exactly.
    pub capslock_trigger: bool,
    /// Timestamp (`tstp`): 24 bits, about 8 Hz, random at power-up.
    pub timestamp: u32,
    /// Session counter (`sessionCtr`): volatile, 8 bits, 0 at power-up,
    /// incremented after each OTP.
    pub session_counter: u8,
    /// Pseudo-random number (`rnd`).
    pub random: u16,
    /// The CRC field as stored (ones' complement of the CRC of bytes 0..14).
    pub crc: u16,
}

impl fmt::Debug for OtpToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpToken")
            .field("usage_counter", &self.usage_counter)
            .field("capslock_trigger", &self.capslock_trigger)
            .field("timestamp", &self.timestamp)
            .field("session_counter", &self.session_counter)
            .field("random", &self.random)
            .field("crc", &self.crc)
            .finish_non_exhaustive()
    }
}

impl OtpToken {
    /// A token with these fields and a freshly computed CRC, as the device
    /// builds it. `usage_counter` is cut to 15 bits, `timestamp` to 24.
    pub fn new(private_id: [u8; 6], usage_counter: u16, timestamp: u32, session_counter: u8, random: u16) -> Self {
        let mut t = OtpToken {
            private_id,
            usage_counter: usage_counter & MAX_USAGE_COUNTER,
            capslock_trigger: false,
            timestamp: timestamp & MAX_TIMESTAMP,
            session_counter,
            random,
            crc: 0,
        };
        let mut pt = t.to_plaintext();
        t.crc = !crc16(&pt[..14]);
        pt.zeroize();
        t
    }

    /// Parses a plaintext block. Does not check the CRC.
    pub fn from_plaintext(pt: &[u8; 16]) -> Self {
        let mut private_id = [0u8; 6];
        private_id.copy_from_slice(&pt[..6]);
        let use_field = u16::from_le_bytes([pt[6], pt[7]]);
        OtpToken {
            private_id,
            usage_counter: use_field & MAX_USAGE_COUNTER,
            capslock_trigger: use_field & 0x8000 != 0,
            timestamp: u32::from_le_bytes([pt[8], pt[9], pt[10], 0]),
            session_counter: pt[11],
            random: u16::from_le_bytes([pt[12], pt[13]]),
            crc: u16::from_le_bytes([pt[14], pt[15]]),
        }
    }

    /// The plaintext block, with the CRC field as stored in `self.crc`.
    pub fn to_plaintext(&self) -> [u8; 16] {
        let mut pt = [0u8; 16];
        pt[..6].copy_from_slice(&self.private_id);
        let use_field = (self.usage_counter & MAX_USAGE_COUNTER) | if self.capslock_trigger { 0x8000 } else { 0 };
        pt[6..8].copy_from_slice(&use_field.to_le_bytes());
        let ts = (self.timestamp & MAX_TIMESTAMP).to_le_bytes();
        pt[8..11].copy_from_slice(&ts[..3]);
        pt[11] = self.session_counter;
        pt[12..14].copy_from_slice(&self.random.to_le_bytes());
        pt[14..16].copy_from_slice(&self.crc.to_le_bytes());
        pt
    }

    /// (usage counter, session counter): the pair that must only grow.
    pub fn counters(&self) -> (u16, u8) {
        (self.usage_counter, self.session_counter)
    }
}

/// Why an OTP was not accepted. Each variant is logged and, except
/// [`OtpFailure::Malformed`], counted as a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtpFailure {
    /// Not a 44-character ModHex OTP (the reason says what is wrong).
    Malformed(String),
    /// The block did not decrypt to a valid CRC: another key produced it,
    /// or it was altered.
    BadCrc,
    /// The CRC is valid but the private id is not the enrolled one.
    PrivateIdMismatch,
    /// A genuine OTP that is not newer than the last one accepted: a replay
    /// (or an OTP generated before one already used).
    Replayed {
        /// The (usage, session) counters last accepted.
        last: (u16, u8),
        /// The counters in the presented OTP.
        presented: (u16, u8),
    },
}

impl OtpFailure {
    /// True when this refusal counts towards the factor's lockout
    /// (everything except an input that is not an OTP at all).
    pub fn counts_as_failure(&self) -> bool {
        !matches!(self, OtpFailure::Malformed(_))
    }
}

impl fmt::Display for OtpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtpFailure::Malformed(m) => write!(f, "malformed Yubico OTP: {m}"),
            OtpFailure::BadCrc => f.write_str(
                "Yubico OTP does not decrypt under this key (CRC check failed): another key, or altered",
            ),
            OtpFailure::PrivateIdMismatch => {
                f.write_str("Yubico OTP decrypts but carries another private id")
            }
            OtpFailure::Replayed { last, presented } => write!(
                f,
                "Yubico OTP replayed: counters (usage {}, session {}) are not newer than the last accepted (usage {}, session {})",
                presented.0, presented.1, last.0, last.1
            ),
        }
    }
}

impl std::error::Error for OtpFailure {}

impl From<OtpFailure> for Error {
    /// The refusal shown to the caller. Only a malformed OTP says why; the
    /// others share one message so the answer is no oracle (the precise
    /// [`OtpFailure`] is for the server log).
    fn from(f: OtpFailure) -> Self {
        match f {
            OtpFailure::Malformed(m) => Error::invalid("otp", m),
            _ => Error::denied(
                Reason::FactorRejected,
                "YubiKey OTP not accepted (not from the enrolled key, or already used)",
            ),
        }
    }
}

fn split_inner(otp: &str) -> Result<(String, [u8; 16]), String> {
    if otp.len() != OTP_LEN {
        let n = otp.chars().count();
        return Err(if (TOKEN_LEN..=TOKEN_LEN + 32).contains(&n) && n % 2 == 0 {
            format!(
                "must be {OTP_LEN} modhex characters (a {PUBLIC_ID_LEN}-character public id, then the {TOKEN_LEN}-character one-time part); this one has {n}, so its public id is not {PUBLIC_ID_LEN} characters, which Sigil does not accept"
            )
        } else {
            format!(
                "must be {OTP_LEN} modhex characters (a {PUBLIC_ID_LEN}-character public id, then the {TOKEN_LEN}-character one-time part), got {n}"
            )
        });
    }
    if let Some(i) = otp.bytes().position(|c| !modhex::ALPHABET.contains(&c)) {
        let c = otp.as_bytes()[i];
        let hint = if modhex::ALPHABET.contains(&c.to_ascii_lowercase()) {
            " (upper case: was caps lock on?)"
        } else {
            ""
        };
        return Err(format!(
            "character {} is not modhex: only the lower-case letters cbdefghijklnrtuv are allowed{hint}",
            i + 1
        ));
    }
    let (public, token) = otp.split_at(PUBLIC_ID_LEN);
    let mut ct = [0u8; 16];
    modhex::decode_into(token, &mut ct).map_err(|e| format!("one-time part {e}"))?;
    Ok((public.to_string(), ct))
}

/// Splits a 44-character Yubico OTP into its public id (ModHex, 12
/// characters, as typed) and the 16-byte ciphertext.
///
/// Refuses anything else with `Error::InvalidArgument { field: "otp" }`:
/// another length (including OTPs of keys whose public id is not 12
/// characters) or a character outside the lower-case ModHex alphabet.
pub fn split_otp(otp: &str) -> Result<(String, [u8; 16]), Error> {
    split_inner(otp).map_err(|m| Error::invalid("otp", m))
}

fn cipher(aes_key: &[u8; 16]) -> Aes128 {
    Aes128::new(&aes::cipher::generic_array::GenericArray::from(*aes_key))
}

/// Decrypts one token block (AES-128, a single block) and checks its CRC.
pub fn decrypt_token(aes_key: &[u8; 16], ct: &[u8; 16]) -> Result<OtpToken, OtpFailure> {
    let mut block = aes::Block::from(*ct);
    cipher(aes_key).decrypt_block(&mut block);
    let mut pt = [0u8; 16];
    pt.copy_from_slice(&block);
    block.as_mut_slice().zeroize();
    let ok = crc16(&pt) == CRC_RESIDUE;
    let token = OtpToken::from_plaintext(&pt);
    pt.zeroize();
    if ok {
        Ok(token)
    } else {
        Err(OtpFailure::BadCrc)
    }
}

/// Encrypts a token exactly as stored in `token` (including its CRC field):
/// what the device does before ModHex-encoding it.
pub fn encrypt_token(aes_key: &[u8; 16], token: &OtpToken) -> [u8; 16] {
    let mut pt = token.to_plaintext();
    let mut block = aes::Block::from(pt);
    pt.zeroize();
    cipher(aes_key).encrypt_block(&mut block);
    let mut ct = [0u8; 16];
    ct.copy_from_slice(&block);
    ct
}

/// The typed OTP: the ModHex public id followed by the ModHex ciphertext.
pub fn encode_otp(public_id_modhex: &str, ct: &[u8; 16]) -> String {
    let mut s = String::with_capacity(public_id_modhex.len() + TOKEN_LEN);
    s.push_str(public_id_modhex);
    s.push_str(&modhex::encode(ct));
    s
}

/// Verifies a Yubico OTP against an enrolled key.
///
/// `last` is the (usage counter, session counter) pair last accepted for
/// this key, `None` before the first. On success returns the pair to store
/// (durably, before reporting success) as the new `last`. The public id is
/// not checked here: the caller found the key by it.
pub fn verify_otp(
    aes_key: &[u8; 16],
    expected_private_id: &[u8; 6],
    last: Option<(u16, u8)>,
    otp: &str,
) -> Result<(u16, u8), OtpFailure> {
    let (_public, ct) = split_inner(otp).map_err(OtpFailure::Malformed)?;
    let token = decrypt_token(aes_key, &ct)?;
    if !bool::from(token.private_id.ct_eq(expected_private_id)) {
        return Err(OtpFailure::PrivateIdMismatch);
    }
    let presented = token.counters();
    if let Some(last) = last {
        if presented <= last {
            return Err(OtpFailure::Replayed { last, presented });
        }
    }
    Ok(presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    fn ct(token_modhex: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        modhex::decode_into(token_modhex, &mut out).unwrap();
        out
    }

    /// One published vector: key, private id, counters and fields as
    /// numbers, and the 32-character token.
    struct V {
        key: &'static str,
        uid: &'static str,
        use_field: u16,
        ts_low: u16,
        ts_high: u8,
        session: u8,
        random: u16,
        crc: u16,
        token: &'static str,
    }

    /// developers.yubico.com, "Yubico OTP test vectors"
    /// (content/OTP/Specifications/Test_vectors.adoc in
    /// github.com/Yubico/developers.yubico.com). Numbers are the field
    /// values (stored little-endian). For the last row this page gives
    /// random `c63c`; the older content/OTP/Test_Vectors.adoc prints the
    /// bytes `3cc6` instead, and decrypting confirms bytes 3c c6 = 0xc63c.
    const YUBICO_VECTORS: [V; 6] = [
        V {
            key: "000102030405060708090a0b0c0d0e0f",
            uid: "010203040506",
            use_field: 0x0001,
            ts_low: 0x0001,
            ts_high: 0x01,
            session: 0x01,
            random: 0x0000,
            crc: 0xfe36,
            token: "dvgtiblfkbgturecfllberrvkinnctnn",
        },
        V {
            key: "000102030405060708090a0b0c0d0e0f",
            uid: "010203040506",
            use_field: 0x0001,
            ts_low: 0x0001,
            ts_high: 0x01,
            session: 0x02,
            random: 0x0000,
            crc: 0x1152,
            token: "rnibcnfhdninbrdebccrndfhjgnhftee",
        },
        V {
            key: "000102030405060708090a0b0c0d0e0f",
            uid: "010203040506",
            use_field: 0x0fff,
            ts_low: 0x0001,
            ts_high: 0x01,
            session: 0x01,
            random: 0x0000,
            crc: 0x9454,
            token: "iikkijbdknrrdhfdrjltvgrbkkjblcbh",
        },
        V {
            key: "88888888888888888888888888888888",
            uid: "888888888888",
            use_field: 0x8888,
            ts_low: 0x8888,
            ts_high: 0x88,
            session: 0x88,
            random: 0x8888,
            crc: 0xd3b6,
            token: "dcihgvrhjeucvrinhdfddbjhfjftjdei",
        },
        V {
            key: "00000000000000000000000000000000",
            uid: "000000000000",
            use_field: 0x0000,
            ts_low: 0x0000,
            ts_high: 0x00,
            session: 0x00,
            random: 0x0000,
            crc: 0xa96a,
            token: "kkkncjnvcnenkjvjgncjihljiibgbhbh",
        },
        V {
            key: "c4422890653076cde73d449b191b416a",
            uid: "33c69e7f249e",
            use_field: 0x0001,
            ts_low: 0x13a7,
            ts_high: 0x24,
            session: 0x00,
            random: 0xc63c,
            crc: 0x1c86,
            token: "iucvrkjiegbhidrcicvlgrcgkgurhjnj",
        },
    ];

    /// Yubico yubico-c: `test-vectors.txt` and the `ykdebug` session in its
    /// README (same key, two tokens; the OTPs there carry the 8-character
    /// public id `dteffuje`).
    const YUBICO_C_VECTORS: [V; 2] = [
        V {
            key: "ecde18dbe76fbd0c33330f1c354871db",
            uid: "8792ebfe26cc",
            use_field: 19,
            ts_low: 49712,
            ts_high: 0,
            session: 17,
            random: 40904,
            crc: 51235,
            token: "hknhfjbrjnlnldnhcujvddbikngjrtgh",
        },
        V {
            key: "ecde18dbe76fbd0c33330f1c354871db",
            uid: "8792ebfe26cc",
            use_field: 19,
            ts_low: 49320,
            ts_high: 0,
            session: 16,
            random: 2228,
            crc: 23407,
            token: "dcflcindvdbrblehecuitvjkjevvehjd",
        },
    ];

    fn check(v: &V) {
        let key: [u8; 16] = hex(v.key);
        let t = decrypt_token(&key, &ct(v.token)).unwrap();
        assert_eq!(t.private_id, hex::<6>(v.uid), "{}", v.token);
        assert_eq!(t.usage_counter, v.use_field & 0x7fff);
        assert_eq!(t.capslock_trigger, v.use_field & 0x8000 != 0);
        assert_eq!(t.timestamp, u32::from(v.ts_high) << 16 | u32::from(v.ts_low));
        assert_eq!(t.session_counter, v.session);
        assert_eq!(t.random, v.random);
        assert_eq!(t.crc, v.crc);
        // Re-encoding gives the published token back.
        assert_eq!(modhex::encode(&encrypt_token(&key, &t)), v.token);
        // Building the token from its fields computes the published CRC.
        if !t.capslock_trigger {
            let built = OtpToken::new(t.private_id, t.usage_counter, t.timestamp, t.session_counter, t.random);
            assert_eq!(built.crc, v.crc, "{}", v.token);
        }
    }

    #[test]
    fn yubico_published_vectors() {
        for v in YUBICO_VECTORS.iter().chain(YUBICO_C_VECTORS.iter()) {
            check(v);
        }
    }

    /// yubico-c `test-vectors.txt`, "AES-ECB" and "Plaintext": the decrypted
    /// block and its CRC residue.
    #[test]
    fn yubico_c_plaintext_and_crc() {
        let pt: [u8; 16] = hex("8792ebfe26cc130030c20011c89f23c8");
        assert_eq!(crc16(&pt), CRC_RESIDUE);
        assert_eq!(crc16(&pt[..14]), !0xc823);
        // yubico-c tests/selftest.c: AES-128 decrypt of "0123456789abcdef"
        // under key "abcdef0123456789".
        let mut block = aes::Block::from(*b"0123456789abcdef");
        cipher(b"abcdef0123456789").decrypt_block(&mut block);
        assert_eq!(block.as_slice(), hex::<16>("838a467f34639551755bd32a4a2f15e1"));
    }

    /// CRC vectors: the catalogue check value of CRC-16/X.25 ("123456789"
    /// -> 0x906e after its final XOR, so 0x6f91 for Yubico's un-XORed
    /// register), the empty input (the init value) and the residue.
    #[test]
    fn crc_vectors() {
        assert_eq!(crc16(b"123456789"), 0x6f91);
        assert_eq!(crc16(b"123456789") ^ 0xffff, 0x906e);
        assert_eq!(crc16(b""), 0xffff);
        let mut msg = b"123456789".to_vec();
        msg.extend_from_slice(&(!crc16(b"123456789")).to_le_bytes());
        assert_eq!(crc16(&msg), CRC_RESIDUE);
    }

    /// A full 44-character OTP: the node-yubikeyotp README vector (key,
    /// OTP, and the decoded fields it prints).
    #[test]
    fn full_otp_vector() {
        let key: [u8; 16] = hex("e6cdae77f55ac1db4acd3b7fd8151334");
        let otp = "khdnrutkdendbrbghdjcidkhveuhbrcuublkdjfttcrk";
        let (public, ct) = split_otp(otp).unwrap();
        assert_eq!(public, "khdnrutkdend");
        assert_eq!(modhex::decode(&public).unwrap(), hex::<6>("962bced923b2"));
        let t = decrypt_token(&key, &ct).unwrap();
        assert_eq!(t.private_id, hex::<6>("4e8308389518"));
        assert_eq!(
            (t.usage_counter, t.timestamp, t.session_counter, t.random, t.crc),
            (7, 1_768_874, 0, 199, 50219)
        );
        let uid = hex::<6>("4e8308389518");
        assert_eq!(verify_otp(&key, &uid, None, otp), Ok((7, 0)));
        assert_eq!(verify_otp(&key, &uid, Some((6, 200)), otp), Ok((7, 0)));
    }

    #[test]
    fn verify_refusals() {
        let key: [u8; 16] = hex("e6cdae77f55ac1db4acd3b7fd8151334");
        let uid = hex::<6>("4e8308389518");
        let otp = "khdnrutkdendbrbghdjcidkhveuhbrcuublkdjfttcrk";
        // Replay: same or older counters.
        for last in [(7, 0), (7, 1), (8, 0), (0x7fff, 255)] {
            assert_eq!(
                verify_otp(&key, &uid, Some(last), otp),
                Err(OtpFailure::Replayed {
                    last,
                    presented: (7, 0)
                })
            );
        }
        // Another private id.
        let mut other = uid;
        other[5] ^= 1;
        assert_eq!(verify_otp(&key, &other, None, otp), Err(OtpFailure::PrivateIdMismatch));
        // Another key.
        let mut wrong = key;
        wrong[0] ^= 0x80;
        assert_eq!(verify_otp(&wrong, &uid, None, otp), Err(OtpFailure::BadCrc));
        // One flipped ciphertext character.
        let mut bytes = otp.as_bytes().to_vec();
        bytes[20] = if bytes[20] == b'c' { b'b' } else { b'c' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(verify_otp(&key, &uid, None, &altered), Err(OtpFailure::BadCrc));
        // Malformed.
        assert!(matches!(
            verify_otp(&key, &uid, None, &otp[..43]),
            Err(OtpFailure::Malformed(_))
        ));
        assert!(!OtpFailure::Malformed(String::new()).counts_as_failure());
        assert!(OtpFailure::BadCrc.counts_as_failure());
        // Errors shown to callers.
        assert!(matches!(Error::from(OtpFailure::BadCrc), Error::PermissionDenied(_)));
        assert_eq!(
            Error::from(OtpFailure::PrivateIdMismatch),
            Error::from(OtpFailure::Replayed {
                last: (1, 1),
                presented: (1, 0)
            })
        );
        assert!(
            matches!(Error::from(OtpFailure::Malformed("x".into())), Error::InvalidArgument { ref field, .. } if field == "otp")
        );
    }

    #[test]
    fn split_refusals() {
        let good = "khdnrutkdendbrbghdjcidkhveuhbrcuublkdjfttcrk";
        let reason = |s: &str| match split_otp(s) {
            Err(Error::InvalidArgument { field, reason }) => {
                assert_eq!(field, "otp");
                reason
            }
            other => panic!("{s:?}: {other:?}"),
        };
        assert!(reason("").contains("got 0"));
        assert!(reason(&good[..43]).contains("got 43"));
        // The 40-character yubico-c OTP (8-character public id).
        assert!(reason("dteffujehknhfjbrjnlnldnhcujvddbikngjrtgh").contains("public id is not 12"));
        assert!(reason(&format!("{good}c")).contains("got 45"));
        assert!(reason(&good.to_uppercase()).contains("caps lock"));
        let mut bad = good.to_string();
        bad.replace_range(30..31, "a");
        assert!(reason(&bad).contains("character 31 is not modhex"));
        // 44 bytes but not ASCII.
        let uni = format!("é{}", &good[2..]);
        assert_eq!(uni.len(), 44);
        assert!(reason(&uni).contains("character 1 is not modhex"));
        assert!(split_otp(good).is_ok());
    }

    #[test]
    fn token_layout_and_debug() {
        let t = OtpToken::new([1, 2, 3, 4, 5, 6], 0x8001, 0x0123_4567, 9, 0xbeef);
        assert_eq!(t.usage_counter, 1);
        assert_eq!(t.timestamp, 0x0023_4567);
        let pt = t.to_plaintext();
        assert_eq!(&pt[..14], &[1, 2, 3, 4, 5, 6, 1, 0, 0x67, 0x45, 0x23, 9, 0xef, 0xbe]);
        assert_eq!(crc16(&pt), CRC_RESIDUE);
        assert_eq!(OtpToken::from_plaintext(&pt), t);
        let d = format!("{t:?}");
        assert!(!d.contains("private_id"), "{d}");
    }
}
