//! The verifier's JWS parsing (sigil-verify `Verifier::verify`).
//!
//! An input that starts with `{` is taken as the claims of a token that
//! this target signs itself with a key drawn at start, so the claims
//! parser behind the signature check is reached too; any other input is
//! a token checked against the key set in `fixtures/jws_keys.json` (the
//! seeds hold tokens signed by it).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sigil_verify::{assemble, b64url, is_low_s, to_low_s, CachingVerifier, Claims, Jwk, JwkSet, Verifier, VerifyError};

const ISSUER: &str = "https://sigil.example";
const AUDIENCE: &str = "withdrawal-engine";
const NOW: i64 = 1_700_000_005;
/// The order of the P-256 group, big-endian.
const P256_N: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC, 0xE6, 0xFA,
    0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

struct Setup {
    fixture: Verifier,
    caching: CachingVerifier<fn() -> Result<JwkSet, String>>,
    signer: EcdsaKeyPair,
    kid: String,
    own: Verifier,
}

fn fixture_keys() -> Result<JwkSet, String> {
    serde_json::from_str(include_str!("../fixtures/jws_keys.json")).map_err(|e| e.to_string())
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let fixture = Verifier::new(&fixture_keys().unwrap(), ISSUER, AUDIENCE).unwrap();
        let source: fn() -> Result<JwkSet, String> = fixture_keys;
        let caching = CachingVerifier::new(source, ISSUER, AUDIENCE).unwrap();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let p = signer.public_key().as_ref();
        let jwk = Jwk::from_p256_point(p[1..33].try_into().unwrap(), p[33..65].try_into().unwrap());
        let own = Verifier::new(
            &JwkSet {
                keys: vec![jwk.clone()],
            },
            ISSUER,
            AUDIENCE,
        )
        .unwrap();
        Setup {
            fixture,
            caching,
            signer,
            kid: jwk.kid,
            own,
        }
    })
}

/// What an accepted token promises, whatever it was built from.
fn check_accepted(v: &Verifier, token: &str, c: &Claims) {
    assert_eq!(c.intent_sha256, b64url::encode(&c.intent.digest()));
    assert_eq!(c.act, c.intent.action);
    assert_eq!(c.sub, c.intent.user_id);
    assert!(!c.amr.is_empty());
    assert_eq!(c.iss, ISSUER);
    assert_eq!(c.aud, AUDIENCE);
    // One approval, one encoding: three canonical parts, low S.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    for p in &parts {
        assert_eq!(b64url::encode(&b64url::decode(p).unwrap()), *p);
    }
    let sig: [u8; 64] = b64url::decode(parts[2]).unwrap().try_into().unwrap();
    assert!(is_low_s(&sig));
    // It covers its own intent and no other.
    assert_eq!(v.verify_for(token, &c.intent, NOW).as_ref(), Ok(c));
    let mut other = c.intent.clone();
    other.amount.push('1');
    assert!(matches!(
        v.verify_for(token, &other, NOW),
        Err(VerifyError::IntentMismatch { field: "amount" })
    ));
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let text = String::from_utf8_lossy(data);
    if data.first() == Some(&b'{') {
        // Claims mode: sign the bytes as the payload.
        let header = format!(r#"{{"alg":"ES256","kid":"{}","typ":"sigil-approval+jwt"}}"#, s.kid);
        let input = format!("{}.{}", b64url::encode(header.as_bytes()), b64url::encode(data));
        let sig = s.signer.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        let token = assemble(&input, sig.as_ref().try_into().unwrap());
        match s.own.verify(&token, NOW) {
            Ok(c) => {
                check_accepted(&s.own, &token, &c);
                // The accepted claims, serialised again, are accepted as the same claims.
                let again = sigil_verify::signing_input(&s.kid, &c);
                let sig = s.signer.sign(&SystemRandom::new(), again.as_bytes()).unwrap();
                let token2 = assemble(&again, sig.as_ref().try_into().unwrap());
                assert_eq!(s.own.verify(&token2, NOW), Ok(c));
            }
            Err(e) => drop(e.to_string()),
        }
        return;
    }
    let direct = s.fixture.verify(&text, NOW);
    match &direct {
        Ok(c) => check_accepted(&s.fixture, &text, c),
        Err(e) => drop(e.to_string()),
    }
    // The caching verifier decides the same way (it only adds key refreshes).
    assert_eq!(s.caching.verify(&text, NOW), direct);
    // Low-S normalisation of any 64 bytes whose S is a scalar (below the
    // group order, as in every signature): lands low, keeps R, and is
    // idempotent. (An S at or above the order has no low form; no valid
    // signature carries one, and `verify` refuses it.)
    if let Some(raw) = data.get(..64) {
        let mut sig: [u8; 64] = raw.try_into().unwrap();
        let in_range = sig[32..] < P256_N[..];
        to_low_s(&mut sig);
        if in_range {
            assert!(is_low_s(&sig));
            assert_eq!(sig[..32], raw[..32]);
        }
        let once = sig;
        to_low_s(&mut sig);
        if in_range {
            assert_eq!(sig, once);
        }
    }
});
