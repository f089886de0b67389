//! The independent test vectors of the approval contract (docs/design.md
//! "Test vectors"): tests/vectors/intent-v1.json, kept byte for byte as the
//! independent implementation computed it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::hex;
use serde_json::Value;
use sigil_verify::{amount_decimals, b64url, is_canonical_amount, webauthn_challenge, Intent};

const VECTORS: &str = include_str!("vectors/intent-v1.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

#[test]
fn intent_preimages_and_digests() {
    let v = vectors();
    let intents = v["intents"].as_array().unwrap();
    assert_eq!(intents.len(), 9, "vector file changed: review the tests");
    for case in intents {
        let name = s(case, "name");
        // Deserialising through the claim schema also checks the JSON keys.
        let intent: Intent = serde_json::from_value(case["intent"].clone()).unwrap();
        assert_eq!(intent.preimage(), hex(s(case, "preimage_hex")), "preimage of {name}");
        assert_eq!(intent.digest().to_vec(), hex(s(case, "sha256_hex")), "digest of {name}");
        // An approval carries the digest as unpadded base64url.
        assert_eq!(
            b64url::decode(&b64url::encode(&intent.digest())).unwrap(),
            hex(s(case, "sha256_hex"))
        );
    }
}

#[test]
fn boundary_vectors_differ() {
    // Length prefixes keep ("ab","c") and ("a","bc") apart.
    let v = vectors();
    let digests: Vec<_> = v["intents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| s(c, "name").starts_with("boundary-"))
        .map(|c| serde_json::from_value::<Intent>(c["intent"].clone()).unwrap().digest())
        .collect();
    assert_eq!(digests.len(), 2);
    assert_ne!(digests[0], digests[1]);
}

#[test]
fn amounts() {
    let v = vectors();
    let amounts = v["amounts"].as_array().unwrap();
    assert_eq!(amounts.len(), 22, "vector file changed: review the tests");
    for case in amounts {
        let input = s(case, "input");
        let canonical = case["canonical"].as_bool().unwrap();
        assert_eq!(is_canonical_amount(input), canonical, "amount {input:?}");
    }
    // Amounts used in the intent vectors are canonical too, where present.
    for case in v["intents"].as_array().unwrap() {
        let amount = s(&case["intent"], "amount");
        if !amount.is_empty() {
            assert!(is_canonical_amount(amount), "{amount}");
        }
    }
}

#[test]
fn amount_decimals_of_vector_amounts() {
    let v = vectors();
    let expected = [
        ("0.5", 1),
        ("12", 0),
        ("1.05", 2),
        ("0.00000001", 8),
        ("1.000000000000000001", 18),
        ("123456789012345678901234567890", 0),
    ];
    let inputs: Vec<&str> = v["amounts"].as_array().unwrap().iter().map(|c| s(c, "input")).collect();
    for (amount, decimals) in expected {
        assert!(inputs.contains(&amount), "{amount} not in vectors");
        assert_eq!(amount_decimals(amount), decimals, "{amount}");
    }
}

#[test]
fn webauthn_challenges() {
    let v = vectors();
    let cases = v["webauthn_challenges"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "vector file changed: review the tests");
    for case in cases {
        let name = s(case, "intent");
        let nonce = hex(s(case, "nonce_hex"));
        let digest: [u8; 32] = hex(s(case, "intent_sha256_hex")).try_into().unwrap();
        // The digest is the one of the named intent vector.
        let intent = v["intents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| s(c, "name") == name)
            .unwrap_or_else(|| panic!("no intent vector {name}"));
        let intent: Intent = serde_json::from_value(intent["intent"].clone()).unwrap();
        assert_eq!(intent.digest(), digest, "{name}");

        let challenge = webauthn_challenge(&nonce, &digest);
        assert_eq!(challenge.to_vec(), hex(s(case, "challenge_hex")), "{name}");
        assert_eq!(b64url::encode(&challenge), s(case, "challenge_b64url"), "{name}");
        assert_eq!(b64url::decode(s(case, "challenge_b64url")).unwrap(), challenge.to_vec());
    }
}

#[test]
fn vector_file_is_the_shared_copy() {
    // Guard against an edited copy: the `about` text and the formulas.
    let v = vectors();
    assert!(s(&v, "about").contains("independent implementation"));
    assert!(s(&v, "intent_digest").starts_with("SHA-256( b'sigil-intent-v1'"));
    assert!(s(&v, "webauthn_challenge").starts_with("SHA-256( b'sigil-webauthn-v1'"));
}
