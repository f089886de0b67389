//! Approval keys as JWKs (RFC 7517) and their RFC 7638 thumbprints.

use serde::{Deserialize, Serialize};

use crate::b64url;
use crate::intent::sha256;

/// One JWK (RFC 7517) of an approval key. EC P-256 only for now (`kty`
/// `"EC"`, `crv` `"P-256"`, `alg` `"ES256"`, `use` `"sig"`), and `kid` is the
/// key's RFC 7638 thumbprint ([`Jwk::thumbprint`]), which
/// [`Verifier::new`](crate::Verifier::new) checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; `"EC"`.
    pub kty: String,
    /// Curve; `"P-256"`.
    pub crv: String,
    /// Affine x coordinate, 32 bytes big-endian, unpadded base64url.
    pub x: String,
    /// Affine y coordinate, 32 bytes big-endian, unpadded base64url.
    pub y: String,
    /// Key id: the RFC 7638 thumbprint of the key.
    pub kid: String,
    /// Algorithm the key is pinned to; `"ES256"`.
    pub alg: String,
    /// Public key use; `"sig"`.
    #[serde(rename = "use")]
    pub use_: String,
    /// Key state published by Sigil: `"next"`, `"active"`, `"retiring"`
    /// (absent = active); `"retired"` keys must never verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// A JSON string literal for `s` (quotes and RFC 8259 escapes, nothing else).
pub(crate) fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Jwk {
    /// The JWK of the P-256 public point (`x`, `y`): `kty` `EC`, `crv`
    /// `P-256`, `alg` `ES256`, `use` `sig`, no status, and `kid` set to the
    /// thumbprint.
    ///
    /// This does not check that the point is on the curve; an off-curve point
    /// simply never verifies a signature.
    pub fn from_p256_point(x: &[u8; 32], y: &[u8; 32]) -> Jwk {
        let mut jwk = Jwk {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x: b64url::encode(x),
            y: b64url::encode(y),
            kid: String::new(),
            alg: "ES256".to_owned(),
            use_: "sig".to_owned(),
            status: None,
        };
        jwk.kid = jwk.thumbprint();
        jwk
    }

    /// The exact JSON that RFC 7638 hashes for an EC key: the required
    /// members `crv`, `kty`, `x`, `y` in that (lexicographic) order, no
    /// whitespace.
    pub(crate) fn thumbprint_input(&self) -> String {
        format!(
            "{{\"crv\":{},\"kty\":{},\"x\":{},\"y\":{}}}",
            json_string(&self.crv),
            json_string(&self.kty),
            json_string(&self.x),
            json_string(&self.y)
        )
    }

    /// RFC 7638 JWK thumbprint: unpadded base64url of the SHA-256 of
    /// `{"crv":…,"kty":…,"x":…,"y":…}` exactly (members in that order, no
    /// whitespace). Other members (`kid`, `alg`, `use`, `status`) do not
    /// contribute.
    pub fn thumbprint(&self) -> String {
        b64url::encode(&sha256(self.thumbprint_input().as_bytes()))
    }
}

/// A JWK Set (RFC 7517 §5): the approval keys Sigil publishes, as the JSON
/// object `{"keys":[…]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JwkSet {
    /// The keys, in any order.
    pub keys: Vec<Jwk>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    // RFC 7517 Appendix A.1, the example EC P-256 public key.
    const X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
    const Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";

    fn rfc7517_a1() -> Jwk {
        let x: [u8; 32] = b64url::decode(X).unwrap().try_into().unwrap();
        let y: [u8; 32] = b64url::decode(Y).unwrap().try_into().unwrap();
        Jwk::from_p256_point(&x, &y)
    }

    #[test]
    fn thumbprint_input_is_canonical_json() {
        let jwk = rfc7517_a1();
        assert_eq!(
            jwk.thumbprint_input(),
            format!(r#"{{"crv":"P-256","kty":"EC","x":"{X}","y":"{Y}"}}"#)
        );
    }

    #[test]
    fn thumbprint_of_rfc7517_example_key() {
        // Independently computed (Python hashlib over the canonical JSON);
        // also the value published by common JOSE libraries for this key.
        assert_eq!(rfc7517_a1().thumbprint(), "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s");
        assert_eq!(rfc7517_a1().kid, rfc7517_a1().thumbprint());
    }

    #[test]
    fn thumbprint_ignores_non_required_members() {
        let a = rfc7517_a1();
        let mut b = a.clone();
        b.kid = "other".into();
        b.alg = "ES384".into();
        b.use_ = "enc".into();
        b.status = Some("retired".into());
        assert_eq!(a.thumbprint(), b.thumbprint());
        b.y = b.x.clone();
        assert_ne!(a.thumbprint(), b.thumbprint());
    }

    #[test]
    fn thumbprint_escapes_like_json() {
        let mut jwk = rfc7517_a1();
        jwk.crv = "a\"b\\c".into();
        assert!(jwk.thumbprint_input().starts_with(r#"{"crv":"a\"b\\c","kty""#));
    }
}
