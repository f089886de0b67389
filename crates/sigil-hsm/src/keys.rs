//! Key types, PKCS#11 templates and `CKA_EC_POINT` parsing.

use cryptoki::object::{Attribute, KeyType, ObjectClass};

/// DER of the P-256 curve OID 1.2.840.10045.3.1.7 (`CKA_EC_PARAMS`).
const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The public half of an EC P-256 key: affine coordinates, big-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EcPublicKey {
    /// X coordinate.
    pub x: [u8; 32],
    /// Y coordinate.
    pub y: [u8; 32],
}

impl EcPublicKey {
    /// Uncompressed SEC1 encoding `0x04 || X || Y`, as `ring`'s
    /// `ECDSA_P256_SHA256_FIXED` verifier expects it.
    pub fn sec1(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[0] = 0x04;
        out[1..33].copy_from_slice(&self.x);
        out[33..].copy_from_slice(&self.y);
        out
    }

    /// Parse an uncompressed SEC1 point (`0x04 || X || Y`, 65 bytes).
    pub fn from_sec1(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 65 || bytes[0] != 0x04 {
            return None;
        }
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        x.copy_from_slice(&bytes[1..33]);
        y.copy_from_slice(&bytes[33..]);
        Some(EcPublicKey { x, y })
    }

    /// Parse `CKA_EC_POINT`: a DER OCTET STRING wrapping the SEC1 point (what
    /// the standard says and SoftHSM returns), or the raw 65-byte point (what
    /// some HSMs return).
    pub(crate) fn from_ec_point(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0x04, 0x41, rest @ ..] if rest.len() == 65 => Self::from_sec1(rest),
            [0x04, 0x81, 0x41, rest @ ..] if rest.len() == 65 => Self::from_sec1(rest),
            raw => Self::from_sec1(raw),
        }
    }
}

/// What a key's protection attributes say (see [`crate::Hsm::key_protection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_SENSITIVE`: the key value cannot be read in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key can be wrapped (exported encrypted).
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: the key has been sensitive since it was made.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: the key has never been extractable.
    pub never_extractable: bool,
}

/// The kinds of key objects this crate manages; a label names one key, which
/// is either an EC pair (two objects) or an AES key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyKind {
    EcPrivate,
    EcPublic,
    Aes,
}

impl KeyKind {
    pub(crate) const ALL: [KeyKind; 3] = [KeyKind::EcPrivate, KeyKind::EcPublic, KeyKind::Aes];

    /// The `C_FindObjects` template for objects of this kind (with `label`,
    /// if given).
    pub(crate) fn template(self, label: Option<&str>) -> Vec<Attribute> {
        let (class, key_type) = match self {
            KeyKind::EcPrivate => (ObjectClass::PRIVATE_KEY, KeyType::EC),
            KeyKind::EcPublic => (ObjectClass::PUBLIC_KEY, KeyType::EC),
            KeyKind::Aes => (ObjectClass::SECRET_KEY, KeyType::AES),
        };
        let mut t = vec![
            Attribute::Token(true),
            Attribute::Class(class),
            Attribute::KeyType(key_type),
        ];
        if let Some(label) = label {
            t.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        t
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            KeyKind::EcPrivate => "EC P-256 private key",
            KeyKind::EcPublic => "EC P-256 public key",
            KeyKind::Aes => "AES-256 key",
        }
    }
}

/// Templates for `C_GenerateKeyPair` (CKM_EC_KEY_PAIR_GEN, P-256):
/// `(public, private)`.
pub(crate) fn ec_templates(label: &str) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::EcParams(P256_OID_DER.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    (public, private)
}

/// Template for `C_GenerateKey` (CKM_AES_KEY_GEN, 256 bits).
pub(crate) fn aes_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn point() -> Vec<u8> {
        let mut p = vec![0x04];
        p.extend(1..=64u8);
        p
    }

    #[test]
    fn parses_der_wrapped_point() {
        let mut der = vec![0x04, 0x41];
        der.extend(point());
        let k = EcPublicKey::from_ec_point(&der).unwrap();
        assert_eq!(k.x[0], 1);
        assert_eq!(k.y[31], 64);
        assert_eq!(k.sec1().to_vec(), point());
    }

    #[test]
    fn parses_long_form_der_and_raw_point() {
        let mut der = vec![0x04, 0x81, 0x41];
        der.extend(point());
        assert!(EcPublicKey::from_ec_point(&der).is_some());
        assert_eq!(EcPublicKey::from_ec_point(&point()).unwrap().sec1().to_vec(), point());
    }

    #[test]
    fn rejects_other_encodings() {
        assert!(EcPublicKey::from_ec_point(&[]).is_none());
        let mut compressed = vec![0x02];
        compressed.extend([7u8; 32]);
        assert!(EcPublicKey::from_ec_point(&compressed).is_none());
        let mut bad = vec![0x04, 0x41];
        bad.extend(&point()[..64]);
        assert!(EcPublicKey::from_ec_point(&bad).is_none());
    }
}
