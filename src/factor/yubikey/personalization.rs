//! Importing Yubico OTP credentials from the YubiKey Personalization Tool.
//!
//! Sigil does not write Yubico OTP credentials to keys itself in
//! production; an operator programs keys with Yubico's Personalization Tool
//! (or `ykman otp yubiotp`) and imports the log it writes. One log line
//! holds one key's public id, private id and AES key. Two layouts are
//! accepted, both written by the tool's logger
//! (`src/yubikeylogger.cpp` in github.com/Yubico/yubikey-personalization-gui):
//!
//! **Traditional** (the default, `configuration_log.csv`), 18 columns:
//!
//! ```text
//! eventType,timestampLocal,configSlot,pubIdTxt,pvtIdTxt,secretKeyTxt,currentAccessCodeTxt,newAccessCodeTxt,
//! oathFixedModhex1,oathFixedModhex2,oathFixedModhex,hotpDigits,oathMovingFactorSeed,strongPw1,strongPw2,sendRef,chalBtnTrig,hmacLT64
//! Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvi,ab86c04de6a3,d26a7c0f85fdda28bd816e406342b214,,,0,0,0,0,0,0,0,0,0,0
//! ```
//!
//! Only `Yubico OTP` lines carry an OTP credential; `LOGGING START`,
//! `Static Password`, `OATH-HOTP` and challenge-response lines are refused
//! with a message. The local timestamp is written in the system locale, so
//! the columns are located from the end of the line (16 after the
//! timestamp) and a locale date containing commas still parses.
//!
//! **Yubico format** (the "Yubico format" log setting, also what
//! `ykman otp yubiotp` and YubiCloud uploads use), 6 columns plus a trailing
//! comma:
//!
//! ```text
//! serial,pubIdTxt,pvtIdTxt,secretKeyTxt,newAccessCodeTxt,timestampFixed,
//! 508326,cccccccccccc,83cebdfb7b93,a47c5bf9c152202f577be6721c0113af,,2013-12-12T08:43:17,
//! ```
//!
//! In Yubico OTP lines the private id is 12 hex characters (OATH lines have
//! `0` there, static-password lines nothing).
//!
//! In both, the public id is ModHex and must be 12 characters (Sigil
//! accepts only 44-character OTPs), the private id 12 hex and the AES key 32
//! hex characters. Sample lines are from the tool's output as quoted in
//! privacyIDEA's `parseYubicoCSV`.
//!
//! The line holds the AES key: callers should wipe their copy of it after
//! parsing. [`OtpImport`] is wiped when dropped and its `Debug` shows only
//! the public id.
use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::modhex;
use super::otp::PUBLIC_ID_LEN;
use crate::error::Error;

/// Field name used in errors.
const FIELD: &str = "csv";
/// Columns after the local timestamp in the traditional format.
const TRADITIONAL_TAIL: usize = 16;

/// One key's Yubico OTP credential, read from a Personalization Tool log line.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct OtpImport {
    /// Public id, ModHex (12 characters): the first 12 characters of every OTP.
    pub public_id: String,
    /// Private id (6 bytes) inside every OTP.
    pub private_id: [u8; 6],
    /// AES-128 key.
    pub aes_key: [u8; 16],
}

impl fmt::Debug for OtpImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpImport")
            .field("public_id", &self.public_id)
            .finish_non_exhaustive()
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Strict hex into a fixed buffer; never echoes the (secret) input.
fn hex_into(column: &str, s: &str, out: &mut [u8]) -> Result<(), Error> {
    let raw = s.as_bytes();
    if raw.len() != out.len() * 2 {
        return Err(Error::invalid(
            FIELD,
            format!(
                "{column} must be {} hex characters, got {}",
                out.len() * 2,
                s.chars().count()
            ),
        ));
    }
    for (pair, o) in raw.chunks_exact(2).zip(out.iter_mut()) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => {
                out.zeroize();
                return Err(Error::invalid(FIELD, format!("{column} is not hexadecimal")));
            }
        }
    }
    Ok(())
}

fn credential(public_id: &str, private_id: &str, aes_key: &str) -> Result<OtpImport, Error> {
    if public_id.len() != PUBLIC_ID_LEN || !modhex::is_modhex(public_id) {
        let looks_hex = !public_id.is_empty() && public_id.bytes().all(|c| c.is_ascii_hexdigit());
        return Err(Error::invalid(
            FIELD,
            if public_id.is_empty() {
                "public id column is empty: Sigil needs the key's 12-character modhex public id".to_string()
            } else if looks_hex && !modhex::is_modhex(public_id) {
                "public id must be modhex (cbdefghijklnrtuv), not hex: log it with the Personalization Tool's default (modhex) public id setting".to_string()
            } else {
                format!(
                    "public id must be {PUBLIC_ID_LEN} modhex characters (cbdefghijklnrtuv), got {} characters",
                    public_id.chars().count()
                )
            },
        ));
    }
    let mut out = OtpImport {
        public_id: public_id.to_string(),
        private_id: [0; 6],
        aes_key: [0; 16],
    };
    hex_into("private id", private_id, &mut out.private_id)?;
    hex_into("AES key", aes_key, &mut out.aes_key)?;
    Ok(out)
}

/// Parses one line of a YubiKey Personalization Tool log (traditional or
/// Yubico format, see the module docs) into a Yubico OTP credential.
///
/// Errors are `Error::InvalidArgument { field: "csv" }` and never quote the
/// private id or key.
pub fn parse_personalization_csv(line: &str) -> Result<OtpImport, Error> {
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Err(Error::invalid(FIELD, "line is empty"));
    }
    let cols: Vec<&str> = line.split(',').map(str::trim).collect();
    let first = cols.first().copied().unwrap_or_default();

    // Yubico format: serial (decimal, may be empty), pub, pvt, key, access, time, "".
    let yubico_shape =
        (cols.len() == 6 || (cols.len() == 7 && cols[6].is_empty())) && first.bytes().all(|c| c.is_ascii_digit());
    if yubico_shape {
        return match cols[2] {
            "" => Err(Error::invalid(
                FIELD,
                "line is a static-password entry (no private id); only Yubico OTP entries can be imported",
            )),
            "0" => Err(Error::invalid(
                FIELD,
                "line is an OATH-HOTP or HMAC challenge-response entry; only Yubico OTP entries can be imported",
            )),
            pvt => credential(cols[1], pvt, cols[3]),
        };
    }

    match first {
        "Yubico OTP" => {}
        "" => {
            return Err(Error::invalid(
                FIELD,
                "line does not start with an event type or serial number; expected a Personalization Tool log line",
            ))
        }
        other if other.len() <= 48 && other.bytes().all(|c| c.is_ascii_graphic() || c == b' ') => {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "line is a '{other}' entry; only 'Yubico OTP' lines (traditional format) or 'serial,public id,private id,key,...' lines (Yubico format) can be imported"
                ),
            ))
        }
        _ => {
            return Err(Error::invalid(
                FIELD,
                "not a Personalization Tool log line: expected 'Yubico OTP,<time>,<slot>,<public id>,<private id>,<key>,...' or 'serial,<public id>,<private id>,<key>,<access code>,<time>,'",
            ))
        }
    }
    if cols.len() < 2 + TRADITIONAL_TAIL {
        return Err(Error::invalid(
            FIELD,
            format!(
                "a 'Yubico OTP' line has 18 comma-separated columns, this one has {}",
                cols.len()
            ),
        ));
    }
    let tail = &cols[cols.len() - TRADITIONAL_TAIL..];
    // tail: slot, pub, pvt, key, current access, new access, then ten flag/number columns.
    if !matches!(tail[0], "1" | "2") {
        return Err(Error::invalid(
            FIELD,
            "configuration slot column must be 1 or 2 (is this an 18-column traditional log line?)",
        ));
    }
    if !tail[6..]
        .iter()
        .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Error::invalid(
            FIELD,
            "the last ten columns of a traditional log line must be numbers; the line is not in the expected layout",
        ));
    }
    credential(tail[1], tail[2], tail[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(line: &str) -> String {
        match parse_personalization_csv(line) {
            Err(Error::InvalidArgument { field, reason }) => {
                assert_eq!(field, "csv");
                reason
            }
            Err(e) => panic!("{line:?}: {e:?}"),
            Ok(i) => panic!("{line:?} parsed: {i:?}"),
        }
    }

    /// Traditional format, 18 columns:
    /// eventType,timestampLocal,configSlot,pubIdTxt,pvtIdTxt,secretKeyTxt,
    /// currentAccessCodeTxt,newAccessCodeTxt,oathFixedModhex1,
    /// oathFixedModhex2,oathFixedModhex,hotpDigits,oathMovingFactorSeed,
    /// strongPw1,strongPw2,sendRef,chalBtnTrig,hmacLT64
    #[test]
    fn traditional_line() {
        let line = "Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvi,ab86c04de6a3,d26a7c0f85fdda28bd816e406342b214,,,0,0,0,0,0,0,0,0,0,0";
        let i = parse_personalization_csv(line).unwrap();
        assert_eq!(i.public_id, "vvgutbiedkvi");
        assert_eq!(i.private_id, [0xab, 0x86, 0xc0, 0x4d, 0xe6, 0xa3]);
        assert_eq!(
            i.aes_key,
            [0xd2, 0x6a, 0x7c, 0x0f, 0x85, 0xfd, 0xda, 0x28, 0xbd, 0x81, 0x6e, 0x40, 0x63, 0x42, 0xb2, 0x14]
        );
        // CRLF, a BOM, and a locale timestamp with a comma.
        let i2 = parse_personalization_csv(&format!(
            "\u{feff}{}\r\n",
            line.replace("12/11/2013 11:10", "Wed, 11 Dec 2013 11:10")
        ))
        .unwrap();
        assert_eq!(i2.public_id, "vvgutbiedkvi");
        assert_eq!(i2.aes_key, i.aes_key);
        // Debug never shows key material.
        let d = format!("{i:?}");
        assert!(
            d.contains("vvgutbiedkvi") && !d.contains("d26a") && !d.contains("aes_key") && !d.contains("private_id"),
            "{d}"
        );
    }

    /// Yubico format: serial,pubIdTxt,pvtIdTxt,secretKeyTxt,newAccessCodeTxt,timestampFixed,
    #[test]
    fn yubico_format_line() {
        let i = parse_personalization_csv(
            "508326,cccccccccccc,83cebdfb7b93,a47c5bf9c152202f577be6721c0113af,,2013-12-12T08:43:17,",
        )
        .unwrap();
        assert_eq!(i.public_id, "cccccccccccc");
        assert_eq!(i.private_id, [0x83, 0xce, 0xbd, 0xfb, 0x7b, 0x93]);
        assert_eq!(i.aes_key[..4], [0xa4, 0x7c, 0x5b, 0xf9]);
        assert!(reason("508326,,0,69cfb9202438ca68964ec3244bfa4843d073a43b,,2013-12-12T08:41:07,").contains("OATH"));
        assert!(reason("508326,,,9e2fd386224a7f77e9b5aee775464033,,2013-12-12T08:44:34,").contains("static"));
    }

    #[test]
    fn refusals() {
        assert!(reason("").contains("empty"));
        assert!(reason("LOGGING START,12/11/2013 11:10").contains("'LOGGING START'"));
        assert!(reason(
            "OATH-HOTP,11.12.13 18:55,1,cccccccccccc,,916821d3a138bf855e70069605559a206ba854cd,,,0,0,0,6,0,0,0,0,0,0"
        )
        .contains("'OATH-HOTP'"));
        assert!(reason(
            "Static Password,11.12.13 19:08,1,,d5a3d50327dc,0e8e37b0e38b314a56748c030f58d21d,,,0,0,0,0,0,0,0,0,0,0"
        )
        .contains("'Static Password'"));
        let good = "Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvi,ab86c04de6a3,d26a7c0f85fdda28bd816e406342b214,,,0,0,0,0,0,0,0,0,0,0";
        assert!(reason("Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvi").contains("18"));
        // Wrong public id: hex, short, empty.
        assert!(reason(&good.replace("vvgutbiedkvi", "0123456789ab")).contains("not hex"));
        assert!(reason(&good.replace("vvgutbiedkvi", "vvgutbie")).contains("got 8"));
        assert!(reason(&good.replace("vvgutbiedkvi", "")).contains("empty"));
        // Bad private id / key; the messages never quote them.
        let r = reason(&good.replace("ab86c04de6a3", "ab86c04de6"));
        assert!(r.contains("private id must be 12 hex") && !r.contains("ab86"), "{r}");
        let r = reason(&good.replace("d26a7c0f85fdda28bd816e406342b214", "x26a7c0f85fdda28bd816e406342b214"));
        assert!(r.contains("AES key is not hexadecimal") && !r.contains("26a7"), "{r}");
        // Slot and flag columns anchor the layout.
        assert!(reason(&good.replace(",1,vvg", ",3,vvg")).contains("slot"));
        assert!(reason(&good.replace(",0,0,0,0,0,0,0,0,0,0", ",0,0,0,0,0,0,0,0,0,x")).contains("numbers"));
        assert!(reason("hello").contains("'hello'"));
    }
}
