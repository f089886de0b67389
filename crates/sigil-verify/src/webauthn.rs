//! Re-verification of the WebAuthn assertion carried in an approval.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::{Deserialize, Serialize};

use crate::b64url;
use crate::error::{excerpt, short_error, VerifyError};
use crate::intent::{sha256, webauthn_challenge};

/// WebAuthn assertion evidence carried in an approval (all unpadded
/// base64url strings), enough for a third party to re-check that the user's
/// authenticator signed this very intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebauthnEvidence {
    /// The credential id the authenticator used.
    pub credential_id: String,
    /// The authenticator data (`rpIdHash || flags || signCount || …`).
    pub authenticator_data: String,
    /// The exact `clientDataJSON` bytes the browser produced.
    pub client_data_json: String,
    /// The assertion signature, ASN.1 DER ECDSA (as authenticators produce).
    pub signature: String,
    /// The server-side nonce (at least 16 bytes) the challenge was made from.
    pub nonce: String,
}

/// The members of `clientDataJSON` that are checked; others are ignored.
#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    type_: String,
    challenge: String,
    origin: String,
}

const MIN_NONCE_LEN: usize = 16;
/// rpIdHash (32) + flags (1) + signCount (4).
const MIN_AUTH_DATA_LEN: usize = 37;
/// User Present flag in the authenticator data flags byte.
const FLAG_UP: u8 = 0x01;

fn field(name: &str, value: &str) -> Result<Vec<u8>, VerifyError> {
    b64url::decode(value).map_err(|e| VerifyError::BadEvidence(format!("{name} is not unpadded base64url: {e}")))
}

/// Re-verifies WebAuthn assertion evidence for an intent.
///
/// Checks that:
/// - every evidence field is unpadded base64url, and the nonce is at least
///   16 bytes;
/// - `clientDataJSON` is JSON with `type` `"webauthn.get"`, a `challenge`
///   (base64url) equal to [`webauthn_challenge`]`(nonce, intent_sha256)`,
///   and, if `expected_origin` is given, exactly that `origin`;
/// - the authenticator data is at least 37 bytes with the User Present flag
///   set (User Verified and the RP ID hash are policy matters left to the
///   caller);
/// - the signature is a valid ASN.1 DER ECDSA P-256/SHA-256 signature over
///   `authenticatorData || SHA-256(clientDataJSON)` by `public_key_sec1`.
///
/// `public_key_sec1` is the credential's public key as an uncompressed SEC1
/// point, `0x04 || X || Y` (65 bytes). A key stored as a COSE_Key (as in
/// WebAuthn attestation data) converts with [`cose_key_to_sec1`].
///
/// `intent_sha256` is the raw digest; use the approval's
/// [`Intent::digest`](crate::Intent::digest) after
/// [`Verifier::verify`](crate::Verifier::verify) has checked it.
pub fn verify_webauthn_evidence(
    evidence: &WebauthnEvidence,
    intent_sha256: &[u8; 32],
    public_key_sec1: &[u8],
    expected_origin: Option<&str>,
) -> Result<(), VerifyError> {
    let credential_id = field("credential_id", &evidence.credential_id)?;
    if credential_id.is_empty() {
        return Err(VerifyError::BadEvidence("credential_id is empty".to_owned()));
    }
    let auth_data = field("authenticator_data", &evidence.authenticator_data)?;
    let client_data_json = field("client_data_json", &evidence.client_data_json)?;
    let signature = field("signature", &evidence.signature)?;
    let nonce = field("nonce", &evidence.nonce)?;

    if nonce.len() < MIN_NONCE_LEN {
        return Err(VerifyError::BadEvidence(format!(
            "nonce is {} bytes, at least {MIN_NONCE_LEN} are required",
            nonce.len()
        )));
    }
    if public_key_sec1.len() != 65 || public_key_sec1.first() != Some(&0x04) {
        return Err(VerifyError::BadEvidence(format!(
            "the credential public key must be an uncompressed SEC1 P-256 point (65 bytes starting 0x04), got {} bytes; convert a COSE_Key with cose_key_to_sec1",
            public_key_sec1.len()
        )));
    }

    let client_data: ClientData = serde_json::from_slice(&client_data_json).map_err(|e| {
        VerifyError::BadEvidence(format!(
            "clientDataJSON is not JSON with string type, challenge and origin: {}",
            short_error(&e)
        ))
    })?;
    if client_data.type_ != "webauthn.get" {
        return Err(VerifyError::BadEvidence(format!(
            "clientDataJSON type is {:?}, expected \"webauthn.get\"",
            excerpt(&client_data.type_)
        )));
    }
    let challenge = b64url::decode(&client_data.challenge)
        .map_err(|e| VerifyError::BadEvidence(format!("clientDataJSON challenge is not unpadded base64url: {e}")))?;
    if challenge != webauthn_challenge(&nonce, intent_sha256) {
        return Err(VerifyError::BadEvidence(
            "clientDataJSON challenge does not commit to this intent digest and nonce".to_owned(),
        ));
    }
    if let Some(origin) = expected_origin {
        if client_data.origin != origin {
            return Err(VerifyError::BadEvidence(format!(
                "clientDataJSON origin is {:?}, expected {:?}",
                excerpt(&client_data.origin),
                excerpt(origin)
            )));
        }
    }

    if auth_data.len() < MIN_AUTH_DATA_LEN {
        return Err(VerifyError::BadEvidence(format!(
            "authenticator data is {} bytes, at least {MIN_AUTH_DATA_LEN} are required",
            auth_data.len()
        )));
    }
    if auth_data.get(32).is_none_or(|flags| flags & FLAG_UP == 0) {
        return Err(VerifyError::BadEvidence(
            "authenticator data does not have the User Present flag set".to_owned(),
        ));
    }

    let mut signed = Vec::with_capacity(auth_data.len() + 32);
    signed.extend_from_slice(&auth_data);
    signed.extend_from_slice(&sha256(&client_data_json));
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key_sec1)
        .verify(&signed, &signature)
        .map_err(|_| {
            VerifyError::BadEvidence(
                "the assertion signature does not verify with the credential public key".to_owned(),
            )
        })
}

/// Converts a COSE_Key (RFC 9052/9053, CBOR) for an ES256 P-256 key — the
/// form WebAuthn uses for credential public keys — into the uncompressed SEC1
/// point `0x04 || X || Y` taken by [`verify_webauthn_evidence`].
///
/// Requires `kty` (1) = EC2 (2), `crv` (-1) = P-256 (1), 32-byte `x` (-2)
/// and `y` (-3), and `alg` (3), if present, = ES256 (-7). Other integer- or
/// text-labelled members with integer, byte-string or text values are
/// ignored. Indefinite lengths, nested items, duplicate labels and trailing
/// bytes are refused as [`VerifyError::BadEvidence`].
pub fn cose_key_to_sec1(cose_key: &[u8]) -> Result<[u8; 65], VerifyError> {
    cose::ec2_p256(cose_key).map_err(|why| VerifyError::BadEvidence(format!("COSE_Key: {why}")))
}

mod cose {
    //! The small subset of CBOR (RFC 8949) needed to read a COSE EC2 key.

    #[derive(Debug, PartialEq, Eq)]
    enum Item<'a> {
        Int(i128),
        Bytes(&'a [u8]),
        Text,
    }

    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
    enum Label {
        Int(i128),
        Text(String),
    }

    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|&end| end <= self.buf.len())
                .ok_or_else(|| "truncated CBOR".to_owned())?;
            let out = self.buf.get(self.pos..end).ok_or("truncated CBOR")?;
            self.pos = end;
            Ok(out)
        }

        /// (major type, argument) of the next data item head.
        fn head(&mut self) -> Result<(u8, u64), String> {
            let initial = *self.take(1)?.first().ok_or("truncated CBOR")?;
            let major = initial >> 5;
            let info = initial & 0x1f;
            let size = match info {
                0..=23 => return Ok((major, u64::from(info))),
                24 => 1,
                25 => 2,
                26 => 4,
                27 => 8,
                _ => return Err("indefinite-length or reserved CBOR encoding".to_owned()),
            };
            let mut arg = 0u64;
            for &b in self.take(size)? {
                arg = (arg << 8) | u64::from(b);
            }
            Ok((major, arg))
        }

        fn len(arg: u64) -> Result<usize, String> {
            usize::try_from(arg).map_err(|_| "CBOR length too large".to_owned())
        }

        fn item(&mut self) -> Result<Item<'a>, String> {
            match self.head()? {
                (0, n) => Ok(Item::Int(i128::from(n))),
                (1, n) => Ok(Item::Int(-1 - i128::from(n))),
                (2, n) => Ok(Item::Bytes(self.take(Self::len(n)?)?)),
                (3, n) => {
                    let bytes = self.take(Self::len(n)?)?;
                    std::str::from_utf8(bytes).map_err(|_| "invalid UTF-8 in CBOR text")?;
                    Ok(Item::Text)
                }
                (major, _) => Err(format!("unsupported CBOR major type {major}")),
            }
        }

        fn label(&mut self) -> Result<Label, String> {
            match self.head()? {
                (0, n) => Ok(Label::Int(i128::from(n))),
                (1, n) => Ok(Label::Int(-1 - i128::from(n))),
                (3, n) => {
                    let bytes = self.take(Self::len(n)?)?;
                    let s = std::str::from_utf8(bytes).map_err(|_| "invalid UTF-8 in label")?;
                    Ok(Label::Text(s.to_owned()))
                }
                (major, _) => Err(format!("unsupported CBOR label of major type {major}")),
            }
        }
    }

    pub(super) fn ec2_p256(buf: &[u8]) -> Result<[u8; 65], String> {
        let mut r = Reader { buf, pos: 0 };
        let (major, pairs) = r.head()?;
        if major != 5 {
            return Err("not a CBOR map".to_owned());
        }
        if pairs > 32 {
            return Err("too many members".to_owned());
        }
        let mut seen = std::collections::BTreeSet::new();
        let (mut kty, mut alg, mut crv, mut x, mut y) = (None, None, None, None, None);
        for _ in 0..pairs {
            let label = r.label()?;
            if !seen.insert(label.clone()) {
                return Err("duplicate label".to_owned());
            }
            let value = r.item()?;
            match label {
                Label::Int(1) => kty = Some(value),
                Label::Int(3) => alg = Some(value),
                Label::Int(-1) => crv = Some(value),
                Label::Int(-2) => x = Some(value),
                Label::Int(-3) => y = Some(value),
                _ => {}
            }
        }
        if r.pos != buf.len() {
            return Err("trailing bytes after the key".to_owned());
        }
        if kty != Some(Item::Int(2)) {
            return Err("kty is not EC2 (2)".to_owned());
        }
        if alg.is_some_and(|a| a != Item::Int(-7)) {
            return Err("alg is not ES256 (-7)".to_owned());
        }
        if crv != Some(Item::Int(1)) {
            return Err("crv is not P-256 (1)".to_owned());
        }
        let coordinate = |name: &str, v: Option<Item<'_>>| -> Result<[u8; 32], String> {
            match v {
                Some(Item::Bytes(b)) => <[u8; 32]>::try_from(b).map_err(|_| format!("{name} is not 32 bytes")),
                _ => Err(format!("{name} is missing or not a byte string")),
            }
        };
        let x = coordinate("x", x)?;
        let y = coordinate("y", y)?;
        let mut out = [0u8; 65];
        out[0] = 0x04;
        out[1..33].copy_from_slice(&x);
        out[33..].copy_from_slice(&y);
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
        use super::*;

        /// A COSE EC2 key as authenticators encode it:
        /// {1: 2, 3: -7, -1: 1, -2: x, -3: y}.
        fn key(x: &[u8; 32], y: &[u8; 32]) -> Vec<u8> {
            let mut v = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
            v.extend_from_slice(x);
            v.extend_from_slice(&[0x22, 0x58, 0x20]);
            v.extend_from_slice(y);
            v
        }

        #[test]
        fn reads_ec2_key() {
            let out = ec2_p256(&key(&[1; 32], &[2; 32])).unwrap();
            assert_eq!(out[0], 4);
            assert_eq!(&out[1..33], &[1; 32]);
            assert_eq!(&out[33..], &[2; 32]);
        }

        #[test]
        fn ignores_extra_members_and_optional_alg() {
            // {1: 2, -1: 1, -2: x, -3: y, 2: h'01', "n": "v"} without alg.
            let mut v = vec![0xa6, 0x01, 0x02, 0x20, 0x01, 0x21, 0x58, 0x20];
            v.extend_from_slice(&[3; 32]);
            v.extend_from_slice(&[0x22, 0x58, 0x20]);
            v.extend_from_slice(&[4; 32]);
            v.extend_from_slice(&[0x02, 0x41, 0x01, 0x61, b'n', 0x61, b'v']);
            let out = ec2_p256(&v).unwrap();
            assert_eq!(&out[1..33], &[3; 32]);
        }

        #[test]
        fn refuses_bad_keys() {
            let good = key(&[1; 32], &[2; 32]);
            // wrong kty (RSA = 3)
            let mut bad = good.clone();
            bad[2] = 0x03;
            assert!(ec2_p256(&bad).is_err());
            // wrong alg (-8 = EdDSA)
            let mut bad = good.clone();
            bad[4] = 0x27;
            assert!(ec2_p256(&bad).is_err());
            // wrong curve (2 = P-384)
            let mut bad = good.clone();
            bad[6] = 0x02;
            assert!(ec2_p256(&bad).is_err());
            // duplicate label: -1 replaced by 1
            let mut bad = good.clone();
            bad[5] = 0x01;
            assert!(ec2_p256(&bad).is_err());
            // trailing byte
            let mut bad = good.clone();
            bad.push(0);
            assert!(ec2_p256(&bad).is_err());
            // indefinite-length map
            let mut bad = good.clone();
            bad[0] = 0xbf;
            assert!(ec2_p256(&bad).is_err());
            // not a map
            assert!(ec2_p256(&[0x04]).is_err());
            // every truncation
            for n in 0..good.len() {
                assert!(ec2_p256(&good[..n]).is_err(), "{n}");
            }
            // huge length argument
            assert!(ec2_p256(&[0xa1, 0x21, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        }
    }
}
