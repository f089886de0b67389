//! The facts Sigil records from a WebAuthn `attestationObject` before
//! webauthn-rs-core verifies it: the attestation format, the AAGUID and the
//! credential id in the authenticator data.
//!
//! The CBOR (RFC 8949) is read with `serde_cbor_2`, the crate webauthn-rs-core
//! parses the same bytes with; it refuses truncated items, trailing bytes,
//! invalid UTF-8 and nesting deeper than its fixed recursion limit (128
//! levels), and the object is at most [`MAX_RESPONSE_BYTES`](super::MAX_RESPONSE_BYTES)
//! of JSON to begin with. Indefinite-length items, which authenticators do
//! not send, are read as webauthn-rs-core reads them. The authenticator data
//! inside is a fixed binary layout, not CBOR, and is sliced here with checked
//! bounds.
//!
//! webauthn-rs-core is the authority on the object's validity; this reader
//! exists because its parsed attestation object keeps these fields private,
//! and so that a malformed object gets a precise message (`InvalidArgument`)
//! instead of a generic one.

use serde_cbor_2::Value;

/// The facts read from an attestation object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The attestation statement format, e.g. `packed`, `none`.
    pub fmt: String,
    /// The AAGUID from the attested credential data (may be all zero).
    pub aaguid: [u8; 16],
    /// The credential id from the attested credential data.
    pub credential_id: Vec<u8>,
}

/// Authenticator data flags (WebAuthn §6.1).
pub(super) mod flags {
    /// User Present.
    pub const UP: u8 = 0x01;
    /// User Verified.
    pub const UV: u8 = 0x04;
    /// Backup Eligible.
    pub const BE: u8 = 0x08;
    /// Backup State.
    pub const BS: u8 = 0x10;
    /// Attested credential data included.
    pub const AT: u8 = 0x40;
}

/// rpIdHash (32) + flags (1) + signCount (4).
pub(super) const AUTH_DATA_MIN: usize = 37;

/// Reads `fmt` and `authData` from an attestation object, then the AAGUID
/// and credential id from `authData`.
pub fn registration(attestation_object: &[u8]) -> Result<Registration, String> {
    let object: Value = serde_cbor_2::from_slice(attestation_object).map_err(|e| {
        if e.is_eof() {
            format!("truncated CBOR at byte {}", e.offset())
        } else {
            format!("malformed CBOR: {e}")
        }
    })?;
    let Value::Map(mut members) = object else {
        return Err("not a CBOR map".to_owned());
    };
    let Some(Value::Text(fmt)) = members.remove(&Value::Text("fmt".to_owned())) else {
        return Err("no text member \"fmt\"".to_owned());
    };
    let Some(Value::Bytes(auth_data)) = members.remove(&Value::Text("authData".to_owned())) else {
        return Err("no byte-string member \"authData\"".to_owned());
    };
    let (aaguid, credential_id) = attested_credential(&auth_data)?;
    Ok(Registration {
        fmt,
        aaguid,
        credential_id,
    })
}

/// AAGUID and credential id of registration authenticator data:
/// rpIdHash (32), flags (1), signCount (4), then the attested credential
/// data: AAGUID (16), credentialIdLength (2, big-endian), credentialId,
/// credentialPublicKey (COSE, left to webauthn-rs-core).
fn attested_credential(auth_data: &[u8]) -> Result<([u8; 16], Vec<u8>), String> {
    let too_short = || {
        format!(
            "authData is {} bytes, at least {AUTH_DATA_MIN} are required",
            auth_data.len()
        )
    };
    let (head, rest) = auth_data.split_at_checked(AUTH_DATA_MIN).ok_or_else(too_short)?;
    let flags = *head.get(32).ok_or_else(too_short)?;
    if flags & flags::AT == 0 {
        return Err("authData carries no attested credential data (AT flag clear)".to_owned());
    }
    let (aaguid, rest) = rest
        .split_first_chunk::<16>()
        .ok_or_else(|| "authData is truncated inside the AAGUID".to_owned())?;
    let (len, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| "authData is truncated before the credential id length".to_owned())?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 {
        return Err("authData announces an empty credential id".to_owned());
    }
    let id = rest
        .get(..len)
        .ok_or_else(|| "authData is truncated inside the credential id".to_owned())?;
    Ok((*aaguid, id.to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn text(s: &str) -> Vec<u8> {
        let mut v = vec![0x60 | u8::try_from(s.len()).unwrap()];
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn auth_data() -> Vec<u8> {
        let mut a = vec![7u8; 32];
        a.push(flags::UP | flags::AT);
        a.extend_from_slice(&[0, 0, 0, 0]);
        a.extend_from_slice(&[0xaa; 16]);
        a.extend_from_slice(&[0, 3, 1, 2, 3]);
        a.extend_from_slice(&[0xa1, 0x01, 0x02]); // a COSE-ish map
        a
    }

    fn object(fmt: &str, att_stmt: &[u8], auth: &[u8]) -> Vec<u8> {
        let mut v = vec![0xa3];
        v.extend(text("fmt"));
        v.extend(text(fmt));
        v.extend(text("attStmt"));
        v.extend_from_slice(att_stmt);
        v.extend(text("authData"));
        v.push(0x58);
        v.push(u8::try_from(auth.len()).unwrap());
        v.extend_from_slice(auth);
        v
    }

    fn refused(bytes: &[u8]) -> String {
        registration(bytes).expect_err("accepted")
    }

    #[test]
    fn reads_fmt_aaguid_and_id() {
        // attStmt {"alg": -7, "x5c": [h'0102'], "sig": h'00'}
        let mut st = vec![0xa3];
        st.extend(text("alg"));
        st.push(0x26);
        st.extend(text("x5c"));
        st.extend_from_slice(&[0x81, 0x42, 1, 2]);
        st.extend(text("sig"));
        st.extend_from_slice(&[0x41, 0]);
        let r = registration(&object("packed", &st, &auth_data())).unwrap();
        assert_eq!(r.fmt, "packed");
        assert_eq!(r.aaguid, [0xaa; 16]);
        assert_eq!(r.credential_id, vec![1, 2, 3]);
    }

    #[test]
    fn refuses_every_truncation_and_trailing_bytes() {
        let good = object("none", &[0xa0], &auth_data());
        assert!(registration(&good).is_ok());
        for n in 0..good.len() {
            let m = refused(&good[..n]);
            assert!(m.starts_with("truncated CBOR"), "{n}: {m}");
        }
        let mut long = good.clone();
        long.push(0);
        let m = refused(&long);
        assert!(m.contains("trailing data"), "{m}");
    }

    #[test]
    fn refuses_odd_shapes() {
        assert_eq!(refused(&[0x80]), "not a CBOR map"); // an array
        assert_eq!(refused(&text("fmt")), "not a CBOR map");
        // an empty (indefinite-length) map
        assert_eq!(refused(&[0xbf, 0xff]), "no text member \"fmt\"");
        // a map announcing 2^32 pairs
        let m = refused(&[0xba, 0xff, 0xff, 0xff, 0xff]);
        assert!(m.starts_with("truncated CBOR"), "{m}");
        // a byte string announcing 2^64 - 1 bytes
        let m = refused(&object(
            "none",
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &auth_data(),
        ));
        assert!(m.starts_with("truncated CBOR"), "{m}");
        // invalid UTF-8 in a text string
        let mut bad_utf8 = vec![0xa1];
        bad_utf8.extend(text("fmt"));
        bad_utf8.extend_from_slice(&[0x62, 0xff, 0xfe]);
        let m = refused(&bad_utf8);
        assert!(m.starts_with("malformed CBOR"), "{m}");
        // nesting: serde_cbor_2 bounds it at 128 levels
        let nested = |depth: usize| {
            let mut v = vec![0x81; depth];
            v.push(0x00);
            object("none", &v, &auth_data())
        };
        assert!(registration(&nested(40)).is_ok());
        let m = refused(&nested(200));
        assert!(m.contains("recursion limit"), "{m}");
    }

    #[test]
    fn refuses_missing_or_mistyped_members() {
        // {"fmt": "none", "authData": ...} without fmt, or with the wrong types
        let mut no_fmt = vec![0xa1];
        no_fmt.extend(text("authData"));
        no_fmt.extend_from_slice(&[0x41, 0]);
        assert_eq!(refused(&no_fmt), "no text member \"fmt\"");
        let mut no_auth = vec![0xa1];
        no_auth.extend(text("fmt"));
        no_auth.extend(text("none"));
        assert_eq!(refused(&no_auth), "no byte-string member \"authData\"");
        let mut auth_as_text = vec![0xa2];
        auth_as_text.extend(text("fmt"));
        auth_as_text.extend(text("none"));
        auth_as_text.extend(text("authData"));
        auth_as_text.extend(text("abc"));
        assert_eq!(refused(&auth_as_text), "no byte-string member \"authData\"");
        let mut fmt_as_bytes = vec![0xa2];
        fmt_as_bytes.extend(text("fmt"));
        fmt_as_bytes.extend_from_slice(&[0x41, 0]);
        fmt_as_bytes.extend(text("authData"));
        fmt_as_bytes.extend_from_slice(&[0x41, 0]);
        assert_eq!(refused(&fmt_as_bytes), "no text member \"fmt\"");
    }

    #[test]
    fn refuses_bad_authenticator_data() {
        let with = |auth: &[u8]| refused(&object("none", &[0xa0], auth));
        let good = auth_data();
        assert_eq!(with(&good[..36]), "authData is 36 bytes, at least 37 are required");
        assert_eq!(with(&[]), "authData is 0 bytes, at least 37 are required");
        let mut a = good.clone();
        a[32] = flags::UP;
        assert!(with(&a).contains("AT flag clear"));
        assert!(with(&good[..40]).contains("inside the AAGUID"));
        assert!(with(&good[..54]).contains("before the credential id length"));
        assert!(with(&good[..56]).contains("inside the credential id"));
        let mut a = good.clone();
        a[53..55].copy_from_slice(&[0, 0]);
        assert_eq!(with(&a), "authData announces an empty credential id");
    }
}
