//! Talking to a real YubiKey over USB, with `yubico_manager` 0.9.
//!
//! Built only with the `usb` cargo feature (on by default; the server does
//! not need it, enrollment tools and the CLI do). Every call here blocks on
//! USB I/O: from async code run it on a blocking thread.
//!
//! What `yubico_manager` 0.9 provides, and what this module uses:
//! - device discovery: the first USB device with Yubico's vendor id 0x1050
//!   ([`find_yubikey`]); with several keys attached, the first one found.
//! - HMAC-SHA1 challenge-response programming
//!   (`DeviceModeConfig::challenge_response_hmac(secret, variable, button)`),
//!   including the variable-length flag `HMAC_LT64` and touch
//!   (`CHAL_BTN_TRIG`): [`program_hmac_slot`] always sets variable length.
//! - HMAC-SHA1 challenge-response (`Yubico::challenge_response_hmac`, with
//!   `Config::set_variable_size` choosing the host padding):
//!   [`challenge_response`].
//! - Yubico OTP challenge-response (`CHAL_YUBICO`) programming and queries,
//!   not used by Sigil.
//! - writing any slot configuration (`Yubico::write_config` with the public
//!   fields of `DeviceModeConfig`). It has no helper for the keyboard
//!   ("touch to type") Yubico OTP mode, but the configuration is plain data:
//!   [`program_otp_slot`] fills it as `ykpersonalize` does (public id in
//!   `fixed`, private id in `uid`, AES key in `key`, `APPEND_CR`).
//!   Production keys can equally be programmed with Yubico's tools and
//!   imported from the Personalization Tool log
//!   ([`super::parse_personalization_csv`]).
//!
//! Limits of `yubico_manager` 0.9 to keep in mind:
//! - `write_config` does not read back the programming sequence number, so a
//!   refused write (e.g. a slot protected by an access code) looks like a
//!   success. [`program_hmac_slot`] therefore checks a no-touch slot with a
//!   test challenge; for touch slots and OTP slots the first enrollment
//!   proof (which Sigil requires before a factor becomes active) is the
//!   check.
//! - waiting for a touch has no timeout: with a touch-protected slot,
//!   [`challenge_response`] blocks until the key is touched.
//! - it panics instead of returning errors in a few places (a libusb that
//!   cannot start, a failing device enumeration); those panics are caught
//!   here and reported as errors.
//! - it uses the secret in its own buffers (`HmacKey` wipes itself on drop;
//!   the 64-byte USB frame it builds does not).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use yubico_manager::config::{Command, Config, Mode, Slot};
use yubico_manager::configure::{ConfigFlags, DeviceModeConfig, ExtendedFlags, TicketFlags};
use yubico_manager::hmacmode::HmacKey;
use yubico_manager::yubicoerror::YubicoError;
use yubico_manager::Yubico;
use zeroize::Zeroize;

use super::hmac::{expected_response, hmac_challenge, MAX_VARIABLE_CHALLENGE, RESPONSE_LEN, SECRET_LEN};
use super::modhex;
use super::otp::PUBLIC_ID_LEN;
use crate::error::{Error, Reason};

/// Yubico's USB vendor id.
pub const YUBICO_VENDOR_ID: u16 = 0x1050;

const NOT_FOUND: &str = "no YubiKey found: plug one in (USB) and retry";

/// An attached YubiKey, as USB ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YubiKeyDevice {
    /// USB vendor id (0x1050).
    pub vendor_id: u16,
    /// USB product id (model and enabled interfaces).
    pub product_id: u16,
}

fn slot_of(slot: u8) -> Result<Slot, Error> {
    match slot {
        1 => Ok(Slot::Slot1),
        2 => Ok(Slot::Slot2),
        _ => Err(Error::invalid(
            "slot",
            format!("must be 1 or 2 (the YubiKey's two OTP-application slots), got {slot}"),
        )),
    }
}

fn configure_command(slot: u8) -> Result<Command, Error> {
    Ok(match slot_of(slot)? {
        Slot::Slot1 => Command::Configuration1,
        Slot::Slot2 => Command::Configuration2,
    })
}

fn check_challenge(challenge: &[u8]) -> Result<(), Error> {
    if challenge.is_empty() || challenge.len() > MAX_VARIABLE_CHALLENGE {
        return Err(Error::invalid(
            "challenge",
            format!(
                "must be 1 to {MAX_VARIABLE_CHALLENGE} bytes (variable-length HMAC mode), got {}",
                challenge.len()
            ),
        ));
    }
    Ok(())
}

fn map_err(e: YubicoError) -> Error {
    match e {
        YubicoError::DeviceNotFound => Error::NotFound(NOT_FOUND.into()),
        YubicoError::OpenDeviceError => Error::Unavailable(
            "a YubiKey is attached but cannot be opened: check USB permissions (a udev rule for vendor 1050) and that no other program holds it"
                .into(),
        ),
        YubicoError::WrongCRC => Error::Unavailable(
            "the YubiKey's answer failed its CRC check; retry".into(),
        ),
        YubicoError::UsbError(u) => Error::Unavailable(format!("USB error talking to the YubiKey: {u}")),
        YubicoError::IOError(io) => Error::Unavailable(format!("I/O error talking to the YubiKey: {io}")),
        other => Error::Unavailable(format!("the YubiKey refused the operation: {other}")),
    }
}

/// Runs a `yubico_manager` call, turning its panics into errors.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(Error::Unavailable(format!(
            "USB access failed while {what} (yubico_manager aborted); check that USB devices are visible to this process"
        ))),
    }
}

/// True when this process can see a USB bus at all. On Linux libusb opens
/// devices through usbfs, so without it (inside most containers) no key can
/// be reached; older libusb releases even fail to start, which
/// `yubico_manager` turns into a panic. Checking first keeps that off the
/// console.
fn usb_visible() -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/dev/bus/usb").is_dir() || Path::new("/proc/bus/usb").is_dir()
    } else {
        true
    }
}

/// Finds the first attached YubiKey.
///
/// `Error::NotFound("no YubiKey found: plug one in (USB) and retry")` when
/// none is attached (or no USB bus is visible to this process).
pub fn find_yubikey() -> Result<YubiKeyDevice, Error> {
    if !usb_visible() {
        return Err(Error::NotFound(NOT_FOUND.into()));
    }
    guarded("looking for a YubiKey", || {
        let mut yk = Yubico::new();
        let d = yk.find_yubikey().map_err(map_err)?;
        Ok(YubiKeyDevice {
            vendor_id: d.vendor_id,
            product_id: d.product_id,
        })
    })
}

fn config_for(dev: YubiKeyDevice) -> Config {
    Config::default()
        .set_vendor_id(dev.vendor_id)
        .set_product_id(dev.product_id)
}

/// Programs `slot` (1 or 2) for HMAC-SHA1 challenge-response with `secret`,
/// in variable-length mode (`HMAC_LT64`, required by Sigil's 32-byte
/// challenges), optionally requiring a touch for each response.
///
/// Overwrites what the slot held (slot 1 usually holds the factory Yubico
/// OTP credential: prefer slot 2). Without touch, the slot is then asked a
/// random test challenge and must answer correctly; otherwise
/// `Error::FailedPrecondition` (typically: the slot is protected by an
/// access code and the write was ignored).
pub fn program_hmac_slot(slot: u8, secret: &[u8; SECRET_LEN], require_touch: bool) -> Result<(), Error> {
    let command = configure_command(slot)?;
    let dev = find_yubikey()?;
    guarded("programming the HMAC slot", || {
        let key = HmacKey::from_slice(secret);
        let mut dc = DeviceModeConfig::default();
        dc.challenge_response_hmac(&key, true, require_touch);
        let mut yk = Yubico::new();
        let written = yk
            .write_config(config_for(dev).set_command(command), &mut dc)
            .map_err(map_err);
        dc.key.zeroize();
        dc.uid.zeroize();
        written
    })?;
    if require_touch {
        return Ok(());
    }
    let mut nonce = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| Error::Unavailable("system random generator failed".into()))?;
    let challenge = hmac_challenge(&nonce, &[0u8; 32]);
    let got = challenge_response(slot, &challenge)?;
    if got != expected_response(secret, &challenge) {
        return Err(Error::refused(Reason::FactorState, format!(
            "YubiKey slot {slot} does not answer with the new secret: the write was refused (is the slot protected by an access code?) or the key was swapped"
        )));
    }
    Ok(())
}

/// Sends `challenge` (1 to 63 bytes) to `slot` (1 or 2), programmed for
/// HMAC-SHA1 in variable-length mode, and returns its 20-byte response.
///
/// Blocks until the key is touched when the slot requires touch.
pub fn challenge_response(slot: u8, challenge: &[u8]) -> Result<[u8; RESPONSE_LEN], Error> {
    let s = slot_of(slot)?;
    check_challenge(challenge)?;
    let dev = find_yubikey()?;
    guarded("asking the YubiKey", || {
        let mut yk = Yubico::new();
        let conf = config_for(dev).set_variable_size(true).set_mode(Mode::Sha1).set_slot(s);
        let hmac = yk.challenge_response_hmac(challenge, conf).map_err(map_err)?;
        let mut out = [0u8; RESPONSE_LEN];
        out.copy_from_slice(&hmac.0);
        Ok(out)
    })
}

fn check_otp_args(slot: u8, public_id: &str) -> Result<(Command, [u8; 6]), Error> {
    let command = configure_command(slot)?;
    let mut fixed = [0u8; 6];
    if public_id.len() != PUBLIC_ID_LEN {
        return Err(Error::invalid(
            "public_id",
            format!(
                "must be {PUBLIC_ID_LEN} modhex characters, got {}",
                public_id.chars().count()
            ),
        ));
    }
    modhex::decode_into(public_id, &mut fixed).map_err(|e| Error::invalid("public_id", format!("{e}")))?;
    Ok((command, fixed))
}

/// Programs `slot` (1 or 2) for Yubico OTP (the key types an OTP when
/// touched) with this public id (12 ModHex characters), private id and AES
/// key, ending each OTP with Enter, no access code.
///
/// Overwrites the slot, including a factory Yubico OTP credential in slot 1
/// (which can then no longer be used with YubiCloud). The write is not
/// confirmed by `yubico_manager`: enroll the factor with a first OTP typed
/// from the key.
pub fn program_otp_slot(slot: u8, public_id: &str, private_id: &[u8; 6], aes_key: &[u8; 16]) -> Result<(), Error> {
    let (command, fixed) = check_otp_args(slot, public_id)?;
    let dev = find_yubikey()?;
    guarded("programming the Yubico OTP slot", || {
        let mut dc = DeviceModeConfig::default();
        dc.fixed[..6].copy_from_slice(&fixed);
        dc.fixed_size = 6;
        dc.uid.copy_from_slice(private_id);
        dc.key.copy_from_slice(aes_key);
        dc.tkt_flags = TicketFlags::APPEND_CR;
        dc.cfg_flags = ConfigFlags::empty();
        dc.ext_flags = ExtendedFlags::empty();
        let mut yk = Yubico::new();
        let written = yk
            .write_config(config_for(dev).set_command(command), &mut dc)
            .map_err(map_err);
        dc.key.zeroize();
        dc.uid.zeroize();
        written
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_field(r: Result<impl std::fmt::Debug, Error>) -> String {
        match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    /// Argument checks happen before any USB access, so they hold with no
    /// device attached.
    #[test]
    fn arguments_checked_first() {
        for bad in [0u8, 3, 255] {
            assert_eq!(invalid_field(program_hmac_slot(bad, &[0; 20], false)), "slot");
            assert_eq!(invalid_field(challenge_response(bad, &[1; 32])), "slot");
            assert_eq!(
                invalid_field(program_otp_slot(bad, "cccccccccccb", &[0; 6], &[0; 16])),
                "slot"
            );
        }
        assert_eq!(invalid_field(challenge_response(2, &[])), "challenge");
        assert_eq!(invalid_field(challenge_response(2, &[1; 64])), "challenge");
        assert_eq!(
            invalid_field(program_otp_slot(1, "cccc", &[0; 6], &[0; 16])),
            "public_id"
        );
        assert_eq!(
            invalid_field(program_otp_slot(1, "0123456789ab", &[0; 6], &[0; 16])),
            "public_id"
        );
        assert!(check_otp_args(2, "vvccccdvvbcc").is_ok());
    }

    /// On a machine without a YubiKey (CI containers have no USB bus at
    /// all) every device operation is `NotFound`. With a key attached the
    /// test stops after discovery: it never writes to a real key.
    #[test]
    fn no_device_is_not_found() {
        match find_yubikey() {
            Err(Error::NotFound(m)) => assert_eq!(m, NOT_FOUND),
            Ok(dev) => {
                eprintln!("a YubiKey is attached ({dev:?}); not touching it");
                return;
            }
            Err(other) => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(challenge_response(2, &[1; 32]), Err(Error::NotFound(_))));
        assert!(matches!(program_hmac_slot(2, &[1; 20], false), Err(Error::NotFound(_))));
        assert!(matches!(
            program_otp_slot(2, "cccccccccccb", &[0; 6], &[0; 16]),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn errors_map() {
        assert_eq!(map_err(YubicoError::DeviceNotFound), Error::NotFound(NOT_FOUND.into()));
        assert!(matches!(map_err(YubicoError::OpenDeviceError), Error::Unavailable(m) if m.contains("udev")));
        assert!(matches!(map_err(YubicoError::WrongCRC), Error::Unavailable(_)));
        assert!(matches!(
            guarded("testing", || -> Result<(), Error> { panic!("boom") }),
            Err(Error::Unavailable(_))
        ));
    }
}
