//! Just enough CBOR (RFC 8949) to read the facts Sigil records from a
//! WebAuthn `attestationObject` before webauthn-rs-core verifies it: the
//! attestation format, the AAGUID and the credential id in the
//! authenticator data.
//!
//! webauthn-rs-core parses the same bytes again and is the authority on
//! their validity; this reader exists because its parsed attestation object
//! keeps these fields private, and so that a malformed object gets a precise
//! message (`InvalidArgument`) instead of a generic one.

/// Longest nesting accepted (authenticators nest two or three levels).
const MAX_DEPTH: usize = 16;

/// The facts read from an attestation object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Registration {
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

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "CBOR length too large".to_owned())?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| format!("truncated CBOR at byte {}", self.buf.len()))?;
        let out = self.buf.get(self.pos..end).ok_or_else(|| "truncated CBOR".to_owned())?;
        self.pos = end;
        Ok(out)
    }

    /// (major type, argument) of the next data item head.
    fn head(&mut self) -> Result<(u8, u64), String> {
        let at = self.pos;
        let initial = *self.take(1)?.first().ok_or_else(|| "truncated CBOR".to_owned())?;
        let major = initial >> 5;
        let size = match initial & 0x1f {
            info @ 0..=23 => return Ok((major, u64::from(info))),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => {
                return Err(format!(
                    "indefinite-length or reserved CBOR item at byte {at}; authenticators use definite lengths"
                ))
            }
        };
        let mut arg = 0u64;
        for &b in self.take(size)? {
            arg = (arg << 8) | u64::from(b);
        }
        Ok((major, arg))
    }

    /// A count of items that cannot possibly fit in what is left is refused
    /// before looping over it.
    fn count(&self, n: u64, per_item: u64) -> Result<u64, String> {
        let left = u64::try_from(self.remaining()).unwrap_or(u64::MAX);
        if n.saturating_mul(per_item) > left {
            return Err(format!("truncated CBOR: {n} items announced, {left} bytes left"));
        }
        Ok(n)
    }

    fn skip(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("CBOR nested too deeply".to_owned());
        }
        let (major, arg) = self.head()?;
        match major {
            0 | 1 | 7 => Ok(()),
            2 | 3 => self.take(arg).map(|_| ()),
            4 => {
                for _ in 0..self.count(arg, 1)? {
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            5 => {
                for _ in 0..self.count(arg, 2)? {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            // 6: a tag, followed by one item.
            _ => self.skip(depth + 1),
        }
    }

    /// The next item if it is a text string, else skips it.
    fn text_or_skip(&mut self, depth: usize) -> Result<Option<&'a str>, String> {
        let save = self.pos;
        let (major, arg) = self.head()?;
        if major == 3 {
            let bytes = self.take(arg)?;
            return std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| "invalid UTF-8 in a CBOR text string".to_owned());
        }
        self.pos = save;
        self.skip(depth)?;
        Ok(None)
    }

    /// The next item if it is a byte string, else skips it.
    fn bytes_or_skip(&mut self, depth: usize) -> Result<Option<&'a [u8]>, String> {
        let save = self.pos;
        let (major, arg) = self.head()?;
        if major == 2 {
            return self.take(arg).map(Some);
        }
        self.pos = save;
        self.skip(depth)?;
        Ok(None)
    }
}

/// Reads `fmt` and `authData` from an attestation object, then the AAGUID
/// and credential id from `authData`.
pub(super) fn registration(attestation_object: &[u8]) -> Result<Registration, String> {
    let mut r = Reader {
        buf: attestation_object,
        pos: 0,
    };
    let (major, pairs) = r.head()?;
    if major != 5 {
        return Err("not a CBOR map".to_owned());
    }
    let mut fmt = None;
    let mut auth_data = None;
    for _ in 0..r.count(pairs, 2)? {
        match r.text_or_skip(1)? {
            Some("fmt") => fmt = r.text_or_skip(1)?,
            Some("authData") => auth_data = r.bytes_or_skip(1)?,
            _ => r.skip(1)?,
        }
    }
    if r.pos != attestation_object.len() {
        return Err(format!(
            "{} trailing bytes after the CBOR map",
            attestation_object.len() - r.pos
        ));
    }
    let fmt = fmt.ok_or_else(|| "no text member \"fmt\"".to_owned())?;
    let auth_data = auth_data.ok_or_else(|| "no byte-string member \"authData\"".to_owned())?;
    let (aaguid, credential_id) = attested_credential(auth_data)?;
    Ok(Registration {
        fmt: fmt.to_owned(),
        aaguid,
        credential_id,
    })
}

/// AAGUID and credential id of registration authenticator data.
fn attested_credential(auth_data: &[u8]) -> Result<([u8; 16], Vec<u8>), String> {
    let flags = *auth_data
        .get(32)
        .ok_or_else(|| format!("authData is {} bytes, too short", auth_data.len()))?;
    if flags & flags::AT == 0 {
        return Err("authData carries no attested credential data (AT flag clear)".to_owned());
    }
    let aaguid: [u8; 16] = auth_data
        .get(AUTH_DATA_MIN..AUTH_DATA_MIN + 16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "authData is truncated inside the AAGUID".to_owned())?;
    let len_at = AUTH_DATA_MIN + 16;
    let len = auth_data
        .get(len_at..len_at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| "authData is truncated before the credential id length".to_owned())?;
    let id = auth_data
        .get(len_at + 2..len_at + 2 + len)
        .ok_or_else(|| "authData is truncated inside the credential id".to_owned())?;
    if id.is_empty() {
        return Err("authData has an empty credential id".to_owned());
    }
    Ok((aaguid, id.to_vec()))
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
            assert!(registration(&good[..n]).is_err(), "{n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(registration(&long).is_err());
    }

    #[test]
    fn refuses_missing_at_flag_and_odd_shapes() {
        let mut a = auth_data();
        a[32] = flags::UP;
        assert!(registration(&object("none", &[0xa0], &a)).is_err());
        assert!(registration(&[0x80]).is_err()); // an array
        assert!(registration(&[0xbf, 0xff]).is_err()); // indefinite map
                                                       // a map announcing 2^32 pairs
        assert!(registration(&[0xba, 0xff, 0xff, 0xff, 0xff]).is_err());
        // deep nesting inside attStmt
        let mut deep = vec![0x81; 40];
        deep.push(0x00);
        assert!(registration(&object("none", &deep, &auth_data())).is_err());
    }
}
