//! A software YubiKey: emulation of the OTP application's slots.
//!
//! This is an emulator, not a device: no USB YubiKey exists in CI, so
//! integration tests and demos use it to produce exactly what a key would
//! type or answer. It follows Yubico's published behaviour
//! (developers.yubico.com "OTPs Explained"; YubiKey manual):
//!
//! [`SoftYubiKey`] (a slot configured for Yubico OTP):
//! - usage counter: non-volatile, kept across [`SoftYubiKey::power_cycle`];
//!   0 when freshly programmed. The first OTP after a power-up increments
//!   it and restarts the session counter at 0. It is 15 bits wide and stops
//!   at 0x7fff.
//! - session counter: volatile, 0 at power-up, incremented after each OTP;
//!   when it wraps from 0xff to 0 the usage counter is incremented.
//! - timestamp: 24 bits, about 8 Hz, set to a random value at power-up.
//!   The emulator's clock is virtual: it moves only with
//!   [`SoftYubiKey::advance`], so runs are reproducible.
//! - random: 16 bits from the device's (non-cryptographic) generator.
//! - CRC: ones' complement of the CRC-16 of the first 14 bytes, appended
//!   little-endian; the block is AES-128 encrypted and ModHex-encoded after
//!   the public id.
//!
//! [`SoftHmacSlot`] (a slot configured for HMAC-SHA1 challenge-response in
//! variable-length mode, `HMAC_LT64`): the host pads the challenge into a
//! 64-byte frame, the slot strips the trailing run of the frame's last byte
//! and answers HMAC-SHA1 over the rest. Touch is not emulated.
//!
//! Keys held by the emulator are wiped on drop and never shown by `Debug`.
use std::fmt;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::hmac::{self, MAX_CHALLENGE, RESPONSE_LEN, SECRET_LEN};
use super::modhex;
use super::otp::{self, OtpToken, MAX_TIMESTAMP, MAX_USAGE_COUNTER};
use super::personalization::OtpImport;
use crate::error::Error;

/// Timestamp ticks per second.
pub const TIMESTAMP_HZ: u64 = 8;
/// Longest public id a slot holds, in bytes (32 ModHex characters).
pub const MAX_PUBLIC_ID_BYTES: usize = 16;

/// SplitMix64: a small deterministic generator standing in for the
/// device's internal one (which Yubico documents as not cryptographically
/// strong; nothing depends on its quality).
#[derive(Clone, Zeroize)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn next_u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
    fn next_u24(&mut self) -> u32 {
        (self.next_u64() >> 40) as u32 & MAX_TIMESTAMP
    }
}

fn system_seed() -> Result<u64, Error> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Unavailable("system random generator failed".into()))?;
    Ok(u64::from_le_bytes(b))
}

/// An emulated YubiKey OTP slot programmed for Yubico OTP.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SoftYubiKey {
    public_id: String,
    private_id: [u8; 6],
    aes_key: [u8; 16],
    /// Non-volatile.
    usage_counter: u16,
    /// Volatile state, reset by a power cycle.
    session_counter: u8,
    used_since_power_up: bool,
    timestamp_at_power_up: u32,
    elapsed_ms: u64,
    rng: Rng,
}

impl fmt::Debug for SoftYubiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftYubiKey")
            .field("public_id", &self.public_id)
            .field("usage_counter", &self.usage_counter)
            .field("session_counter", &self.session_counter)
            .finish_non_exhaustive()
    }
}

impl SoftYubiKey {
    /// A freshly programmed key (usage counter 0), just plugged in, with its
    /// generator seeded from the system.
    ///
    /// `public_id` is ModHex, at most 32 characters (Sigil itself accepts
    /// only 12).
    pub fn new(public_id: &str, private_id: [u8; 6], aes_key: [u8; 16]) -> Result<Self, Error> {
        Self::with_seed(public_id, private_id, aes_key, system_seed()?)
    }

    /// Like [`SoftYubiKey::new`] with a fixed generator seed: the same seed
    /// and the same calls give the same OTPs.
    pub fn with_seed(public_id: &str, private_id: [u8; 6], aes_key: [u8; 16], seed: u64) -> Result<Self, Error> {
        if !modhex::is_modhex(public_id) || public_id.len() > 2 * MAX_PUBLIC_ID_BYTES {
            return Err(Error::invalid(
                "public_id",
                "must be modhex (cbdefghijklnrtuv), an even number of characters, at most 32",
            ));
        }
        let mut key = SoftYubiKey {
            public_id: public_id.to_string(),
            private_id,
            aes_key,
            usage_counter: 0,
            session_counter: 0,
            used_since_power_up: false,
            timestamp_at_power_up: 0,
            elapsed_ms: 0,
            rng: Rng(seed),
        };
        key.power_cycle();
        Ok(key)
    }

    /// A key programmed with an imported credential.
    pub fn from_import(import: &OtpImport) -> Result<Self, Error> {
        Self::new(&import.public_id, import.private_id, import.aes_key)
    }

    /// Unplugs and replugs the key: volatile state restarts (session
    /// counter 0, new random timestamp, clock at 0); the usage counter is
    /// kept and will be incremented by the next OTP.
    pub fn power_cycle(&mut self) {
        self.session_counter = 0;
        self.used_since_power_up = false;
        self.timestamp_at_power_up = self.rng.next_u24();
        self.elapsed_ms = 0;
    }

    /// Lets time pass on the key's (virtual) clock.
    pub fn advance(&mut self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.elapsed_ms = self.elapsed_ms.saturating_add(ms);
    }

    fn timestamp(&self) -> u32 {
        let ticks = self.elapsed_ms / (1000 / TIMESTAMP_HZ);
        let ticks = (ticks & u64::from(MAX_TIMESTAMP)) as u32;
        self.timestamp_at_power_up.wrapping_add(ticks) & MAX_TIMESTAMP
    }

    fn bump_usage(&mut self) {
        if self.usage_counter < MAX_USAGE_COUNTER {
            self.usage_counter += 1;
        }
    }

    /// The plaintext token of the next OTP, with the counters advanced as
    /// the device advances them. [`SoftYubiKey::otp`] encrypts it.
    pub fn next_token(&mut self) -> OtpToken {
        if !self.used_since_power_up {
            self.used_since_power_up = true;
            self.bump_usage();
            self.session_counter = 0;
        }
        let random = self.rng.next_u16();
        let token = OtpToken::new(
            self.private_id,
            self.usage_counter,
            self.timestamp(),
            self.session_counter,
            random,
        );
        self.session_counter = self.session_counter.wrapping_add(1);
        if self.session_counter == 0 {
            self.bump_usage();
        }
        token
    }

    /// Touches the key: the 44-character (for a 12-character public id)
    /// OTP it types.
    pub fn otp(&mut self) -> String {
        let token = self.next_token();
        let ct = otp::encrypt_token(&self.aes_key, &token);
        otp::encode_otp(&self.public_id, &ct)
    }

    /// The ModHex public id the key types first.
    pub fn public_id(&self) -> &str {
        &self.public_id
    }

    /// The usage counter now (the value the next OTP carries if the key was
    /// already used since power-up).
    pub fn usage_counter(&self) -> u16 {
        self.usage_counter
    }

    /// The session counter the next OTP carries (if the key was already
    /// used since power-up; otherwise the next OTP restarts it at 0).
    pub fn session_counter(&self) -> u8 {
        self.session_counter
    }

    /// Sets the non-volatile usage counter, as a long-used key would have it
    /// (cut to 15 bits). Takes effect from the next power-up.
    pub fn set_usage_counter(&mut self, usage_counter: u16) {
        self.usage_counter = usage_counter & MAX_USAGE_COUNTER;
    }
}

/// An emulated slot programmed for HMAC-SHA1 challenge-response in
/// variable-length (`HMAC_LT64`) mode.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SoftHmacSlot {
    secret: [u8; SECRET_LEN],
}

impl fmt::Debug for SoftHmacSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftHmacSlot").finish_non_exhaustive()
    }
}

impl SoftHmacSlot {
    /// A slot holding this 20-byte secret.
    pub fn new(secret: [u8; SECRET_LEN]) -> Self {
        SoftHmacSlot { secret }
    }

    /// What the device does with a received 64-byte frame in variable-length
    /// mode: the frame's last byte is padding, the trailing run of it is
    /// removed, HMAC-SHA1 is computed over the rest.
    pub fn respond_frame(&self, frame: &[u8; MAX_CHALLENGE]) -> [u8; RESPONSE_LEN] {
        let pad = frame[MAX_CHALLENGE - 1];
        let len = frame.iter().rposition(|&b| b != pad).map_or(0, |i| i + 1);
        hmac::expected_response(&self.secret, &frame[..len])
    }

    /// Host and device together: pads `challenge` into a frame the way
    /// `yubico_manager` and python-yubico do (0x00, or 0xff when the
    /// challenge ends in 0x00) and answers it. For challenges of 1 to 63
    /// bytes this equals HMAC-SHA1(secret, challenge).
    ///
    /// Refuses a challenge longer than the 64-byte frame.
    pub fn respond(&self, challenge: &[u8]) -> Result<[u8; RESPONSE_LEN], Error> {
        if challenge.len() > MAX_CHALLENGE {
            return Err(Error::invalid(
                "challenge",
                format!(
                    "is {} bytes; a YubiKey challenge is at most {MAX_CHALLENGE}",
                    challenge.len()
                ),
            ));
        }
        let pad = if challenge.last() == Some(&0) { 0xff } else { 0x00 };
        let mut frame = [pad; MAX_CHALLENGE];
        frame[..challenge.len()].copy_from_slice(challenge);
        Ok(self.respond_frame(&frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::yubikey::hmac::{hmac_challenge, verify_hmac_response};
    use crate::factor::yubikey::otp::{decrypt_token, split_otp, verify_otp, OtpFailure};

    const KEY: [u8; 16] = *b"0123456789abcdef";
    const UID: [u8; 6] = [0x87, 0x92, 0xeb, 0xfe, 0x26, 0xcc];

    #[test]
    fn otps_verify_and_counters_advance() {
        let mut yk = SoftYubiKey::with_seed("vvccccdvvbcc", UID, KEY, 1).unwrap();
        let mut last = None;
        let mut seen = Vec::new();
        for i in 0..5u8 {
            let otp = yk.otp();
            assert_eq!(otp.len(), 44);
            assert!(otp.starts_with("vvccccdvvbcc"));
            let got = verify_otp(&KEY, &UID, last, &otp).unwrap();
            assert_eq!(got, (1, i), "first power-up: usage 1, session 0..");
            last = Some(got);
            seen.push(otp);
        }
        // Replays of every earlier OTP are refused.
        for otp in &seen {
            assert!(matches!(
                verify_otp(&KEY, &UID, last, otp),
                Err(OtpFailure::Replayed { .. })
            ));
        }
        // A power cycle keeps the usage counter and bumps it on first use.
        yk.power_cycle();
        assert_eq!(yk.usage_counter(), 1);
        let otp = yk.otp();
        assert_eq!(verify_otp(&KEY, &UID, last, &otp), Ok((2, 0)));
        // Power cycles without use do not bump it.
        yk.power_cycle();
        yk.power_cycle();
        assert_eq!(verify_otp(&KEY, &UID, Some((2, 0)), &yk.otp()), Ok((3, 0)));
    }

    #[test]
    fn timestamp_runs_at_8hz_and_restarts_randomly() {
        let mut yk = SoftYubiKey::with_seed("cccccccccccb", UID, KEY, 7).unwrap();
        let t0 = yk.next_token().timestamp;
        yk.advance(Duration::from_secs(10));
        let t1 = yk.next_token().timestamp;
        assert_eq!(t1.wrapping_sub(t0) & MAX_TIMESTAMP, 80);
        yk.advance(Duration::from_millis(124));
        assert_eq!(yk.next_token().timestamp, t1);
        yk.advance(Duration::from_millis(1));
        assert_eq!(yk.next_token().timestamp, (t1 + 1) & MAX_TIMESTAMP);
        yk.power_cycle();
        assert_ne!(yk.next_token().timestamp, (t1 + 1) & MAX_TIMESTAMP);
    }

    #[test]
    fn session_wrap_bumps_usage_and_usage_saturates() {
        let mut yk = SoftYubiKey::with_seed("cccccccccccb", UID, KEY, 3).unwrap();
        let mut prev = (0u16, 0u8);
        for n in 0..600u32 {
            let t = yk.next_token();
            assert!(t.counters() > prev || n == 0, "{n}: {:?} after {prev:?}", t.counters());
            prev = t.counters();
        }
        // 600 OTPs in one session: (1,0..=255), (2,0..=255), (3,0..=87).
        assert_eq!(prev, (3, 87));

        yk.set_usage_counter(MAX_USAGE_COUNTER - 1);
        yk.power_cycle();
        assert_eq!(yk.next_token().counters(), (MAX_USAGE_COUNTER, 0));
        yk.power_cycle();
        // Stuck at 0x7fff: the device stops counting; validators then refuse.
        assert_eq!(yk.next_token().counters(), (MAX_USAGE_COUNTER, 0));
    }

    #[test]
    fn same_seed_same_otps_and_crc_valid() {
        let mut a = SoftYubiKey::with_seed("cccccccccccb", UID, KEY, 42).unwrap();
        let mut b = SoftYubiKey::with_seed("cccccccccccb", UID, KEY, 42).unwrap();
        for _ in 0..3 {
            let (x, y) = (a.otp(), b.otp());
            assert_eq!(x, y);
            let (_, ct) = split_otp(&x).unwrap();
            let t = decrypt_token(&KEY, &ct).unwrap();
            assert_eq!(t.private_id, UID);
        }
        let mut c = SoftYubiKey::with_seed("cccccccccccb", UID, KEY, 43).unwrap();
        assert_ne!(
            c.otp(),
            SoftYubiKey::with_seed("cccccccccccb", UID, KEY, 42).unwrap().otp()
        );
        assert!(SoftYubiKey::new("cccccccccccb", UID, KEY).is_ok());
    }

    #[test]
    fn public_id_checked_and_debug_hides_keys() {
        assert!(SoftYubiKey::with_seed("0123", UID, KEY, 0).is_err());
        assert!(SoftYubiKey::with_seed("ccc", UID, KEY, 0).is_err());
        assert!(SoftYubiKey::with_seed(&"c".repeat(34), UID, KEY, 0).is_err());
        let mut short = SoftYubiKey::with_seed("", UID, KEY, 0).unwrap();
        assert_eq!(short.otp().len(), 32);
        let yk = SoftYubiKey::with_seed("cccccccccccb", UID, KEY, 0).unwrap();
        let d = format!("{yk:?}");
        assert!(
            !d.contains("aes_key") && !d.contains("private_id") && !d.contains("rng"),
            "{d}"
        );
        assert_eq!(format!("{:?}", SoftHmacSlot::new([1; 20])), "SoftHmacSlot { .. }");
    }

    #[test]
    fn from_import() {
        let i = crate::factor::yubikey::personalization::parse_personalization_csv(
            "Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvi,ab86c04de6a3,d26a7c0f85fdda28bd816e406342b214,,,0,0,0,0,0,0,0,0,0,0",
        )
        .unwrap();
        let mut yk = SoftYubiKey::from_import(&i).unwrap();
        let otp = yk.otp();
        let (public, _) = split_otp(&otp).unwrap();
        assert_eq!(public, i.public_id);
        assert_eq!(verify_otp(&i.aes_key, &i.private_id, None, &otp), Ok((1, 0)));
    }

    #[test]
    fn hmac_slot_variable_mode() {
        // FIPS 198 A.2 key and message (python-yubico's NIST test slot).
        let mut secret = [0u8; 20];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = 0x30 + i as u8;
        }
        let slot = SoftHmacSlot::new(secret);
        let r = slot.respond(b"Sample #2").unwrap();
        assert_eq!(
            modhex::encode(&r),
            modhex::encode(&[
                0x09, 0x22, 0xd3, 0x40, 0x5f, 0xaa, 0x3d, 0x19, 0x4f, 0x82, 0xa4, 0x58, 0x30, 0x73, 0x7d, 0x5c, 0xc6,
                0xc7, 0x5d, 0x24
            ])
        );
        // Sigil's intent-bound challenge verifies; the response is exactly 20 bytes.
        let ch = hmac_challenge(&[5u8; 16], &[6u8; 32]);
        assert!(verify_hmac_response(&secret, &ch, &slot.respond(&ch).unwrap()));
        // Challenges ending in 0x00 are padded with 0xff and survive intact.
        let zero_end = [1, 2, 0, 0];
        assert_eq!(
            slot.respond(&zero_end).unwrap(),
            hmac::expected_response(&secret, &zero_end)
        );
        // A full 64-byte frame loses its trailing run (why 63 is the limit).
        let mut full = [7u8; 64];
        full[61] = 9;
        assert_eq!(
            slot.respond(&full).unwrap(),
            hmac::expected_response(&secret, &full[..62])
        );
        assert!(slot.respond(&[0u8; 65]).is_err());
    }
}
