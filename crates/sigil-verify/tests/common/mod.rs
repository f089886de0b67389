//! Helpers shared by the integration tests: a Sigil-like signer and a
//! reference approval.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sigil_verify::{assemble, b64url, signing_input, Claims, Intent, Jwk, JwkSet, Verifier};

pub const ISS: &str = "https://sigil.example";
pub const AUD: &str = "withdrawal-engine";
pub const NOW: i64 = 1_700_000_000;

/// An ES256 key as Sigil's HSM would hold it.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    pub jwk: Jwk,
}

impl Signer {
    pub fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let p = key.public_key().as_ref();
        assert_eq!(p.len(), 65);
        let jwk = Jwk::from_p256_point(p[1..33].try_into().unwrap(), p[33..].try_into().unwrap());
        Signer { key, rng, jwk }
    }

    /// Raw r||s signature over `input`.
    pub fn sign_raw(&self, input: &[u8]) -> [u8; 64] {
        self.key.sign(&self.rng, input).unwrap().as_ref().try_into().unwrap()
    }

    pub fn sign_with_kid(&self, kid: &str, claims: &Claims) -> String {
        let input = signing_input(kid, claims);
        assemble(&input, &self.sign_raw(input.as_bytes()))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        self.sign_with_kid(&self.jwk.kid, claims)
    }

    /// A token with an arbitrary header and payload JSON, correctly signed.
    pub fn sign_json(&self, header: &str, payload: &str) -> String {
        let input = format!(
            "{}.{}",
            b64url::encode(header.as_bytes()),
            b64url::encode(payload.as_bytes())
        );
        assemble(&input, &self.sign_raw(input.as_bytes()))
    }

    pub fn header(&self) -> String {
        format!(
            r#"{{"alg":"ES256","kid":"{}","typ":"sigil-approval+jwt"}}"#,
            self.jwk.kid
        )
    }
}

pub fn set(keys: &[&Jwk]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| (*k).clone()).collect(),
    }
}

pub fn verifier(signer: &Signer) -> Verifier {
    Verifier::new(&set(&[&signer.jwk]), ISS, AUD).unwrap()
}

pub fn intent() -> Intent {
    Intent {
        action: "withdrawal".into(),
        user_id: "alice".into(),
        withdrawal_id: "wd-0001".into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        amount: "0.5".into(),
        destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
        memo: "".into(),
    }
}

pub fn claims_for(intent: &Intent) -> Claims {
    Claims {
        iss: ISS.into(),
        aud: AUD.into(),
        sub: intent.user_id.clone(),
        jti: "jti-1".into(),
        iat: NOW,
        exp: NOW + 120,
        nbf: None,
        act: intent.action.clone(),
        intent: intent.clone(),
        intent_sha256: b64url::encode(&intent.digest()),
        amr: vec!["hwk".into(), "user".into()],
        webauthn: None,
        approvers: Vec::new(),
        quorum: Vec::new(),
    }
}

pub fn claims() -> Claims {
    claims_for(&intent())
}

pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
