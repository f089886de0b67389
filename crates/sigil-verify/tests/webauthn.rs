//! Re-verification of WebAuthn assertion evidence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{claims, intent, verifier, Signer, NOW};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use sigil_verify::{
    b64url, cose_key_to_sec1, verify_webauthn_evidence, webauthn_challenge, VerifyError, WebauthnEvidence,
};

const ORIGIN: &str = "https://exchange.example";

/// A user's authenticator: a P-256 credential key producing ASN.1 DER
/// signatures, as WebAuthn authenticators do.
struct Authenticator {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

/// The pieces of an assertion, before encoding, so tests can vary them.
#[derive(Clone)]
struct Parts {
    auth_data: Vec<u8>,
    client_data_json: Vec<u8>,
    nonce: Vec<u8>,
}

impl Authenticator {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Authenticator { key, rng }
    }

    fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    fn parts(&self, intent_sha256: &[u8; 32], nonce_len: usize, type_: &str, flags: u8) -> Parts {
        let mut nonce = vec![0u8; nonce_len];
        self.rng.fill(&mut nonce).unwrap();
        let challenge = webauthn_challenge(&nonce, intent_sha256);
        let client_data_json = format!(
            r#"{{"type":"{type_}","challenge":"{}","origin":"{ORIGIN}","crossOrigin":false}}"#,
            b64url::encode(&challenge)
        )
        .into_bytes();
        let mut auth_data = digest(&SHA256, b"exchange.example").as_ref().to_vec();
        auth_data.push(flags);
        auth_data.extend_from_slice(&7u32.to_be_bytes());
        Parts {
            auth_data,
            client_data_json,
            nonce,
        }
    }

    /// Signs `authData || SHA-256(clientDataJSON)` and encodes the evidence.
    fn evidence(&self, p: &Parts) -> WebauthnEvidence {
        let mut signed = p.auth_data.clone();
        signed.extend_from_slice(digest(&SHA256, &p.client_data_json).as_ref());
        let sig = self.key.sign(&self.rng, &signed).unwrap();
        WebauthnEvidence {
            credential_id: b64url::encode(b"credential-1"),
            authenticator_data: b64url::encode(&p.auth_data),
            client_data_json: b64url::encode(&p.client_data_json),
            signature: b64url::encode(sig.as_ref()),
            nonce: b64url::encode(&p.nonce),
        }
    }
}

fn refused(r: Result<(), VerifyError>) -> String {
    match r {
        Err(VerifyError::BadEvidence(why)) => why,
        other => panic!("expected BadEvidence, got {other:?}"),
    }
}

#[test]
fn valid_evidence_verifies() {
    let a = Authenticator::new();
    let d = intent().digest();
    let e = a.evidence(&a.parts(&d, 32, "webauthn.get", 0x05));
    let pk = a.public_key();
    assert_eq!(verify_webauthn_evidence(&e, &d, &pk, Some(ORIGIN)), Ok(()));
    assert_eq!(verify_webauthn_evidence(&e, &d, &pk, None), Ok(()));
}

#[test]
fn one_flipped_byte_in_any_field_is_refused() {
    let a = Authenticator::new();
    let d = intent().digest();
    let p = a.parts(&d, 16, "webauthn.get", 0x01);
    let e = a.evidence(&p);
    let pk = a.public_key();
    assert_eq!(verify_webauthn_evidence(&e, &d, &pk, Some(ORIGIN)), Ok(()));

    type Field = fn(&mut WebauthnEvidence) -> &mut String;
    let fields: [(&str, Field); 4] = [
        ("authenticator_data", |e| &mut e.authenticator_data),
        ("client_data_json", |e| &mut e.client_data_json),
        ("signature", |e| &mut e.signature),
        ("nonce", |e| &mut e.nonce),
    ];
    for (name, get) in fields {
        let mut probe = e.clone();
        let raw = b64url::decode(get(&mut probe)).unwrap();
        assert!(!raw.is_empty());
        for i in 0..raw.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = e.clone();
                let mut bytes = raw.clone();
                bytes[i] ^= mask;
                *get(&mut bad) = b64url::encode(&bytes);
                let why = refused(verify_webauthn_evidence(&bad, &d, &pk, Some(ORIGIN)));
                assert!(!why.is_empty(), "{name}[{i}]");
            }
        }
    }
}

#[test]
fn evidence_for_another_intent_is_refused() {
    let a = Authenticator::new();
    let d = intent().digest();
    let e = a.evidence(&a.parts(&d, 32, "webauthn.get", 0x05));
    let mut other = intent();
    other.amount = "50".into();
    let why = refused(verify_webauthn_evidence(&e, &other.digest(), &a.public_key(), None));
    assert!(why.contains("challenge"), "{why}");
}

#[test]
fn wrong_key_type_origin_nonce_flags_are_refused() {
    let a = Authenticator::new();
    let d = intent().digest();
    let pk = a.public_key();
    let good = a.evidence(&a.parts(&d, 32, "webauthn.get", 0x05));

    // another credential's key
    let other = Authenticator::new();
    refused(verify_webauthn_evidence(&good, &d, &other.public_key(), None));
    // a key that is not an uncompressed point
    refused(verify_webauthn_evidence(&good, &d, &pk[1..], None));
    let mut compressed = vec![0x02 | (pk[64] & 1)];
    compressed.extend_from_slice(&pk[1..33]);
    refused(verify_webauthn_evidence(&good, &d, &compressed, None));
    refused(verify_webauthn_evidence(&good, &d, &[], None));
    // wrong origin
    let why = refused(verify_webauthn_evidence(&good, &d, &pk, Some("https://evil.example")));
    assert!(why.contains("origin"), "{why}");
    // a registration, not an assertion (correctly signed)
    let create = a.evidence(&a.parts(&d, 32, "webauthn.create", 0x05));
    let why = refused(verify_webauthn_evidence(&create, &d, &pk, None));
    assert!(why.contains("type"), "{why}");
    // nonce shorter than 16 bytes (correctly signed)
    let short = a.evidence(&a.parts(&d, 15, "webauthn.get", 0x05));
    let why = refused(verify_webauthn_evidence(&short, &d, &pk, None));
    assert!(why.contains("nonce"), "{why}");
    // user not present (correctly signed)
    let absent = a.evidence(&a.parts(&d, 32, "webauthn.get", 0x04));
    let why = refused(verify_webauthn_evidence(&absent, &d, &pk, None));
    assert!(why.contains("Present"), "{why}");
    // authenticator data too short (correctly signed)
    let mut p = a.parts(&d, 32, "webauthn.get", 0x05);
    p.auth_data.truncate(36);
    refused(verify_webauthn_evidence(&a.evidence(&p), &d, &pk, None));
}

#[test]
fn encoding_problems_are_refused() {
    let a = Authenticator::new();
    let d = intent().digest();
    let pk = a.public_key();
    let good = a.evidence(&a.parts(&d, 32, "webauthn.get", 0x05));
    let mut bad = good.clone();
    bad.signature.push('=');
    refused(verify_webauthn_evidence(&bad, &d, &pk, None));
    let mut bad = good.clone();
    bad.nonce.insert(0, '+');
    refused(verify_webauthn_evidence(&bad, &d, &pk, None));
    let mut bad = good.clone();
    bad.credential_id = String::new();
    refused(verify_webauthn_evidence(&bad, &d, &pk, None));
    // clientDataJSON whose challenge is padded, or not JSON, correctly signed
    let mut p = a.parts(&d, 32, "webauthn.get", 0x05);
    let padded = String::from_utf8(p.client_data_json.clone())
        .unwrap()
        .replace(r#"","origin""#, r#"=","origin""#);
    assert_ne!(padded.as_bytes(), p.client_data_json.as_slice());
    p.client_data_json = padded.into_bytes();
    refused(verify_webauthn_evidence(&a.evidence(&p), &d, &pk, None));
    let mut p = a.parts(&d, 32, "webauthn.get", 0x05);
    p.client_data_json = b"not json".to_vec();
    refused(verify_webauthn_evidence(&a.evidence(&p), &d, &pk, None));
}

/// COSE_Key {1: 2, 3: -7, -1: 1, -2: x, -3: y} for an uncompressed point.
fn cose_key(sec1: &[u8]) -> Vec<u8> {
    let mut v = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
    v.extend_from_slice(&sec1[1..33]);
    v.extend_from_slice(&[0x22, 0x58, 0x20]);
    v.extend_from_slice(&sec1[33..65]);
    v
}

#[test]
fn cose_key_converts_to_sec1() {
    let a = Authenticator::new();
    let d = intent().digest();
    let pk = a.public_key();
    let sec1 = cose_key_to_sec1(&cose_key(&pk)).unwrap();
    assert_eq!(sec1.to_vec(), pk);
    let e = a.evidence(&a.parts(&d, 32, "webauthn.get", 0x05));
    assert_eq!(verify_webauthn_evidence(&e, &d, &sec1, Some(ORIGIN)), Ok(()));
    // A COSE_Key passed where a SEC1 point is expected is refused.
    refused(verify_webauthn_evidence(&e, &d, &cose_key(&pk), None));
    assert!(matches!(cose_key_to_sec1(&pk), Err(VerifyError::BadEvidence(_))));
}

#[test]
fn evidence_travels_in_an_approval() {
    let signer = Signer::new();
    let a = Authenticator::new();
    let d = intent().digest();
    let e = a.evidence(&a.parts(&d, 32, "webauthn.get", 0x05));
    let mut c = claims();
    c.webauthn = Some(e.clone());
    let token = signer.sign(&c);
    let got = verifier(&signer).verify_for(&token, &intent(), NOW).unwrap();
    assert_eq!(got.webauthn.as_ref(), Some(&e));
    assert_eq!(
        verify_webauthn_evidence(
            got.webauthn.as_ref().unwrap(),
            &got.intent.digest(),
            &a.public_key(),
            Some(ORIGIN)
        ),
        Ok(())
    );
    // JSON member names of the evidence object
    let v = serde_json::to_value(&e).unwrap();
    for k in [
        "credential_id",
        "authenticator_data",
        "client_data_json",
        "signature",
        "nonce",
    ] {
        assert!(v.get(k).is_some(), "{k}");
    }
}
