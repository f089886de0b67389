//! Ceremonies driven by software authenticators:
//! - `SoftToken` (webauthn-authenticator-rs): packed attestation with an
//!   x5c chain under a CA it generates, AAGUID
//!   `0fb9bcbc-a0d4-4042-bbb0-559bc1631e28`; `new(true)` sets UV when asked
//!   for `required`, `new(false)` cannot verify users;
//! - `SoftPasskey` (webauthn-authenticator-rs): packed self attestation,
//!   all-zero AAGUID;
//! - [`ZeroCounterKey`] (here, on ring): `none` attestation, a counter that
//!   is always 0, and a chosen AAGUID.
//!
//! All three go through `WebauthnAuthenticator::do_registration` /
//! `do_authentication` (webauthn-authenticator-rs builds clientDataJSON and
//! enforces the client-side origin/rpId rules), with the JSON the module
//! hands out and takes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use sigil_verify::{verify_webauthn_evidence, webauthn_challenge, Intent};
use webauthn_authenticator_rs::error::WebauthnCError;
use webauthn_authenticator_rs::prelude::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::softtoken::{SoftToken, AAGUID as SOFTTOKEN_AAGUID};
use webauthn_authenticator_rs::{AuthenticatorBackend, AuthenticatorBackendHashedClientData, WebauthnAuthenticator};
use webauthn_rs_core::proto::{
    AuthenticatorAssertionResponseRaw, AuthenticatorAttestationResponseRaw, CreationChallengeResponse,
    PublicKeyCredentialCreationOptions, PublicKeyCredentialRequestOptions, RequestChallengeResponse,
};

use super::*;
use std::slice::from_ref;

const ORIGIN: &str = "https://localhost:8443";
/// Allowed too, and a subdomain of the rp id: lets a test give the
/// authenticator a different rp id that the client-side rules accept.
const APP_ORIGIN: &str = "https://app.localhost:8443";

fn policy() -> WebauthnPolicy {
    WebauthnPolicy {
        origins: vec![ORIGIN.into(), APP_ORIGIN.into()],
        ..WebauthnPolicy::default()
    }
}

fn rp() -> Webauthn {
    Webauthn::new(&policy()).unwrap()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).unwrap();
    b
}

fn intent(amount: &str) -> Intent {
    Intent {
        action: "withdrawal".into(),
        user_id: "u-alice".into(),
        withdrawal_id: "w-1".into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        amount: amount.into(),
        destination: "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh".into(),
        memo: String::new(),
    }
}

/// Registration options, as the browser would get them.
fn creation(options: &str) -> CreationChallengeResponse {
    serde_json::from_str(options).unwrap()
}

/// Runs the authenticator on registration options edited by `edit`.
fn create_with<A: AuthenticatorBackend>(
    a: &mut A,
    origin: &str,
    options: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<String, WebauthnCError> {
    let mut v: serde_json::Value = serde_json::from_str(options).unwrap();
    edit(&mut v);
    let ccr: CreationChallengeResponse = serde_json::from_value(v).unwrap();
    let reg = a.do_registration(Url::parse(origin).unwrap(), ccr)?;
    Ok(serde_json::to_string(&reg).unwrap())
}

/// Runs the authenticator on assertion options edited by `edit`.
fn get_with<A: AuthenticatorBackend>(
    a: &mut A,
    origin: &str,
    options: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<String, WebauthnCError> {
    let mut v: serde_json::Value = serde_json::from_str(options).unwrap();
    edit(&mut v);
    let rcr: RequestChallengeResponse = serde_json::from_value(v).unwrap();
    let rsp = a.do_authentication(Url::parse(origin).unwrap(), rcr)?;
    Ok(serde_json::to_string(&rsp).unwrap())
}

/// Registration state and the authenticator's response JSON.
fn registration_response<A: AuthenticatorBackend>(rp: &Webauthn, a: &mut A, origin: &str) -> (String, String) {
    let (options, state) = rp.begin_registration(&[7u8; 16], "alice", "Alice", &[]).unwrap();
    let response = create_with(a, origin, &options, |_| {}).expect("authenticator refused");
    (state, response)
}

fn register<A: AuthenticatorBackend>(rp: &Webauthn, a: &mut A) -> StoredCredential {
    let (state, response) = registration_response(rp, a, ORIGIN);
    rp.finish_registration(&state, &response).unwrap()
}

/// Assertion state and the authenticator's response JSON.
fn assertion_response<A: AuthenticatorBackend>(
    rp: &Webauthn,
    a: &mut A,
    creds: &[StoredCredential],
    challenge: &[u8; 32],
    uv: bool,
) -> (String, String) {
    let (options, state) = rp.begin_assertion(creds, challenge, uv).unwrap();
    let response = get_with(a, ORIGIN, &options, |_| {}).expect("authenticator refused");
    (state, response)
}

fn denied<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::PermissionDenied(r)) => r.message,
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

fn assertion_denied(r: Result<Assertion, AssertionError>) -> String {
    match r {
        Err(AssertionError::Failed(Error::PermissionDenied(r))) => r.message,
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

fn invalid<T: std::fmt::Debug>(r: Result<T, Error>, expected_field: &str) -> String {
    match r {
        Err(Error::InvalidArgument { field, reason }) => {
            assert_eq!(field, expected_field, "{reason}");
            reason
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn assertion_invalid(r: Result<Assertion, AssertionError>) -> String {
    match r {
        Err(AssertionError::Failed(e)) => invalid::<()>(Err(e), "assertion"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Edits a member of the JSON text `json` at `path` (object keys).
fn edit_json(json: &str, path: &[&str], f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut slot = &mut v;
    for key in path {
        slot = slot.get_mut(*key).unwrap();
    }
    f(slot);
    v.to_string()
}

/// Rewrites a base64url member at `path` through `f` on its bytes.
fn edit_bytes(json: &str, path: &[&str], f: impl FnOnce(&mut Vec<u8>)) -> String {
    edit_json(json, path, |v| {
        let mut bytes = b64url::decode(v.as_str().unwrap()).unwrap();
        f(&mut bytes);
        *v = serde_json::Value::String(b64url::encode(&bytes));
    })
}

/// A SoftToken and its attestation root CA as PEM.
fn soft_token(falsify_uv: bool) -> (SoftToken, String) {
    let (token, ca) = SoftToken::new(falsify_uv).unwrap();
    // The CA's DER is reachable through the attestation-ca crate's serde
    // form, which avoids depending on its x509 crate here.
    let mut b = AttestationCaListBuilder::new();
    b.insert_device_x509(ca, SOFTTOKEN_AAGUID, "softtoken".into(), BTreeMap::new())
        .unwrap();
    let v = serde_json::to_value(b.build()).unwrap();
    let der_b64 = v["cas"].as_object().unwrap().values().next().unwrap()["ca"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = data_encoding::BASE64.encode(&b64url::decode(&der_b64).unwrap());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    (token, pem)
}

/// A software authenticator on ring: `none` attestation, signature counter
/// always 0, user presence only.
struct ZeroCounterKey {
    aaguid: [u8; 16],
    keys: Vec<(Vec<u8>, EcdsaKeyPair)>,
    rng: SystemRandom,
}

impl ZeroCounterKey {
    fn new(aaguid: [u8; 16]) -> Self {
        Self {
            aaguid,
            keys: Vec::new(),
            rng: SystemRandom::new(),
        }
    }
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

impl AuthenticatorBackendHashedClientData for ZeroCounterKey {
    fn perform_register(
        &mut self,
        client_data_hash: Vec<u8>,
        options: PublicKeyCredentialCreationOptions,
        _timeout_ms: u32,
    ) -> Result<webauthn_rs_core::proto::RegisterPublicKeyCredential, WebauthnCError> {
        let _ = client_data_hash; // `none` attestation signs nothing
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
            .map_err(|_| WebauthnCError::Internal)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &self.rng)
            .map_err(|_| WebauthnCError::Internal)?;
        let id = random::<16>().to_vec();
        let pk = key.public_key().as_ref();
        // COSE_Key {1: 2, 3: -7, -1: 1, -2: x, -3: y}
        let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
        cose.extend_from_slice(&pk[1..33]);
        cose.extend_from_slice(&[0x22, 0x58, 0x20]);
        cose.extend_from_slice(&pk[33..65]);
        let mut auth = sha256(options.rp.id.as_bytes());
        auth.push(flags::UP | flags::AT);
        auth.extend_from_slice(&[0, 0, 0, 0]);
        auth.extend_from_slice(&self.aaguid);
        auth.extend_from_slice(&u16::try_from(id.len()).unwrap().to_be_bytes());
        auth.extend_from_slice(&id);
        auth.extend_from_slice(&cose);
        // {"fmt": "none", "attStmt": {}, "authData": auth}
        let mut ao = vec![0xa3, 0x63];
        ao.extend_from_slice(b"fmt");
        ao.push(0x64);
        ao.extend_from_slice(b"none");
        ao.push(0x67);
        ao.extend_from_slice(b"attStmt");
        ao.push(0xa0);
        ao.push(0x68);
        ao.extend_from_slice(b"authData");
        ao.push(0x58);
        ao.push(u8::try_from(auth.len()).unwrap());
        ao.extend_from_slice(&auth);
        self.keys.push((id.clone(), key));
        Ok(webauthn_rs_core::proto::RegisterPublicKeyCredential {
            id: b64url::encode(&id),
            raw_id: id,
            response: AuthenticatorAttestationResponseRaw {
                attestation_object: ao,
                client_data_json: Vec::new(),
                transports: None,
            },
            type_: "public-key".into(),
            extensions: Default::default(),
        })
    }

    fn perform_auth(
        &mut self,
        client_data_hash: Vec<u8>,
        options: PublicKeyCredentialRequestOptions,
        _timeout_ms: u32,
    ) -> Result<PublicKeyCredential, WebauthnCError> {
        let (id, key) = self
            .keys
            .iter()
            .find(|(id, _)| options.allow_credentials.iter().any(|ac| &ac.id == id))
            .ok_or(WebauthnCError::NotSupported)?;
        let mut auth = sha256(options.rp_id.as_bytes());
        auth.push(flags::UP);
        auth.extend_from_slice(&[0, 0, 0, 0]);
        let mut signed = auth.clone();
        signed.extend_from_slice(&client_data_hash);
        let sig = key.sign(&self.rng, &signed).map_err(|_| WebauthnCError::Internal)?;
        Ok(PublicKeyCredential {
            id: b64url::encode(id),
            raw_id: id.clone(),
            response: AuthenticatorAssertionResponseRaw {
                authenticator_data: auth,
                client_data_json: Vec::new(),
                signature: sig.as_ref().to_vec(),
                user_handle: None,
            },
            extensions: Default::default(),
            type_: "public-key".into(),
        })
    }
}

#[test]
fn registration_and_assertions_happy_path() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let mut cred = register(&rp, &mut token);
    assert_eq!(cred.attestation_format, "packed");
    assert_eq!(cred.aaguid, Some(SOFTTOKEN_AAGUID));
    assert!(!cred.backup_eligible);
    assert!(!cred.user_verified_at_registration);
    assert_eq!(cred.counter, 0);
    let key = b64url::decode(&cred.public_key_sec1).unwrap();
    assert_eq!((key.len(), key[0]), (65, 0x04));
    // The stored record round-trips through serde (the caller versions it).
    let back: StoredCredential = serde_json::from_str(&serde_json::to_string(&cred).unwrap()).unwrap();
    assert_eq!(back, cred);

    for expected in 1..=3u32 {
        let (state, response) = assertion_response(&rp, &mut token, from_ref(&cred), &random(), false);
        let a = rp.finish_assertion(&state, &response, from_ref(&cred)).unwrap();
        assert_eq!(a.credential_id, cred.credential_id);
        assert_eq!(a.counter, expected);
        assert!(a.user_present && !a.user_verified && !a.backup_eligible && !a.backup_state);
        cred.counter = a.counter;
    }

    // SoftPasskey (self attestation, zero AAGUID) works without an allow-list.
    let mut passkey = SoftPasskey::new(false);
    let pk = register(&rp, &mut passkey);
    assert_eq!((pk.attestation_format.as_str(), pk.aaguid), ("packed", None));
    let (state, response) = assertion_response(&rp, &mut passkey, from_ref(&pk), &random(), false);
    assert_eq!(rp.finish_assertion(&state, &response, &[pk]).unwrap().counter, 1);
}

#[test]
fn options_and_state_carry_exactly_the_given_challenge() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let cred = register(&rp, &mut token);
    let challenge: [u8; 32] = random();
    let (options, state) = rp.begin_assertion(&[cred], &challenge, false).unwrap();
    let options: serde_json::Value = serde_json::from_str(&options).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let expected = b64url::encode(&challenge);
    assert_eq!(options["publicKey"]["challenge"], expected.as_str());
    assert_eq!(state["state"]["challenge"], expected.as_str());
    assert_eq!(state["challenge"], expected.as_str());
    assert_eq!(options["publicKey"]["rpId"], "localhost");
    assert_eq!(options["publicKey"]["userVerification"], "preferred");
}

#[test]
fn intent_committed_assertion_reverifies_with_sigil_verify() {
    let rp = rp();
    let (mut token, _) = soft_token(true);
    let cred = register(&rp, &mut token);
    let digest = intent("0.5").digest();
    let nonce: [u8; 24] = random();
    let challenge = webauthn_challenge(&nonce, &digest);
    let uv = rp.uv_required_for("withdrawal");
    assert!(uv);
    let (options, state) = rp.begin_assertion(from_ref(&cred), &challenge, uv).unwrap();
    assert!(options.contains("\"userVerification\":\"required\""));
    let response = get_with(&mut token, ORIGIN, &options, |_| {}).unwrap();
    let a = rp.finish_assertion(&state, &response, from_ref(&cred)).unwrap();
    assert!(a.user_verified);
    // webauthn-authenticator-rs serializes the origin as a URL, with a
    // trailing slash (browsers send "https://localhost:8443").
    assert_eq!(a.origin, "https://localhost:8443/");

    let key = b64url::decode(&cred.public_key_sec1).unwrap();
    let ev = a.evidence(&nonce);
    verify_webauthn_evidence(&ev, &digest, &key, Some(&a.origin)).unwrap();
    verify_webauthn_evidence(&ev, &digest, &key, None).unwrap();

    let with = |f: &dyn Fn(&mut Assertion)| {
        let mut t = a.clone();
        f(&mut t);
        verify_webauthn_evidence(&t.evidence(&nonce), &digest, &key, Some(&a.origin))
    };
    // one byte of the authenticator data (the counter), clientDataJSON
    // (inside the origin, still valid JSON) and the signature
    assert!(with(&|t| t.authenticator_data[36] ^= 1).is_err());
    let at = a.client_data_json.windows(9).position(|w| w == b"localhost").unwrap();
    assert!(with(&|t| t.client_data_json[at] = b'm').is_err());
    assert!(with(&|t| {
        let last = t.signature.len() - 1;
        t.signature[last] ^= 1
    })
    .is_err());
    // the nonce
    let mut other_nonce = nonce;
    other_nonce[0] ^= 1;
    assert!(verify_webauthn_evidence(&a.evidence(&other_nonce), &digest, &key, None).is_err());
    // another intent, another origin, another key
    assert!(verify_webauthn_evidence(&ev, &intent("0.6").digest(), &key, None).is_err());
    assert!(verify_webauthn_evidence(&ev, &digest, &key, Some("https://evil.example")).is_err());
    let other = register(&rp, &mut token);
    let other_key = b64url::decode(&other.public_key_sec1).unwrap();
    assert!(verify_webauthn_evidence(&ev, &digest, &other_key, None).is_err());
}

#[test]
fn challenge_of_another_intent_is_refused() {
    let rp = rp();
    let (mut token, _) = soft_token(true);
    let cred = register(&rp, &mut token);
    let nonce: [u8; 16] = random();
    let for_a = webauthn_challenge(&nonce, &intent("0.5").digest());
    let for_b = webauthn_challenge(&nonce, &intent("5000").digest());
    let (options_a, state_a) = rp.begin_assertion(from_ref(&cred), &for_a, true).unwrap();
    let (_, state_b) = rp.begin_assertion(from_ref(&cred), &for_b, true).unwrap();
    let response_a = get_with(&mut token, ORIGIN, &options_a, |_| {}).unwrap();

    let m = assertion_denied(rp.finish_assertion(&state_b, &response_a, from_ref(&cred)));
    assert!(m.contains("different challenge"), "{m}");
    rp.finish_assertion(&state_a, &response_a, &[cred]).unwrap();
}

#[test]
fn assertion_replayed_against_a_second_state_is_refused() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let mut cred = register(&rp, &mut token);
    let (state1, response1) = assertion_response(&rp, &mut token, from_ref(&cred), &random(), false);
    cred.counter = rp
        .finish_assertion(&state1, &response1, from_ref(&cred))
        .unwrap()
        .counter;

    let (_, state2) = rp.begin_assertion(from_ref(&cred), &random(), false).unwrap();
    let m = assertion_denied(rp.finish_assertion(&state2, &response1, from_ref(&cred)));
    assert!(m.contains("different challenge"), "{m}");

    // Against its own state again (which the caller must not allow: states
    // are single-use), the stored counter still catches it.
    assert_eq!(
        rp.finish_assertion(&state1, &response1, from_ref(&cred)),
        Err(AssertionError::PossiblyCloned {
            credential_id: cred.credential_id.clone()
        })
    );
}

#[test]
fn wrong_origin_is_refused() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    // Registration from a sibling origin the client accepts for rp id
    // localhost, but the policy does not list.
    let (state, response) = registration_response(&rp, &mut token, "https://evil.localhost:8443");
    let m = denied(rp.finish_registration(&state, &response));
    assert!(m.contains("origin https://evil.localhost:8443"), "{m}");
    assert!(m.contains("not allowed"), "{m}");

    let cred = register(&rp, &mut token);
    for origin in ["https://evil.localhost:8443", "https://localhost:9999"] {
        let (options, state) = rp.begin_assertion(from_ref(&cred), &random(), false).unwrap();
        let response = get_with(&mut token, origin, &options, |_| {}).unwrap();
        let m = assertion_denied(rp.finish_assertion(&state, &response, from_ref(&cred)));
        assert!(m.contains(&format!("origin {origin}")), "{m}");
    }
    // control: a listed origin other than the first
    let (options, state) = rp.begin_assertion(from_ref(&cred), &random(), false).unwrap();
    let response = get_with(&mut token, APP_ORIGIN, &options, |_| {}).unwrap();
    rp.finish_assertion(&state, &response, &[cred]).unwrap();
}

#[test]
fn wrong_rp_id_is_refused() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let set_rp = |v: &mut serde_json::Value| v["publicKey"]["rp"]["id"] = "app.localhost".into();
    let (options, state) = rp.begin_registration(&[7u8; 16], "alice", "Alice", &[]).unwrap();
    let response = create_with(&mut token, APP_ORIGIN, &options, set_rp).unwrap();
    let m = denied(rp.finish_registration(&state, &response));
    assert!(m.contains("another relying party id than 'localhost'"), "{m}");

    let cred = register(&rp, &mut token);
    let (options, state) = rp.begin_assertion(from_ref(&cred), &random(), false).unwrap();
    let response = get_with(&mut token, APP_ORIGIN, &options, |v| {
        v["publicKey"]["rpId"] = "app.localhost".into()
    })
    .unwrap();
    let m = assertion_denied(rp.finish_assertion(&state, &response, &[cred]));
    assert!(m.contains("another relying party id"), "{m}");
}

#[test]
fn uv_required_but_not_performed_is_refused() {
    let rp = rp();
    // SoftToken::new(false) cannot verify users; it gives presence only.
    // (SoftPasskey::new(false) would refuse outright; SoftToken signs.)
    let (mut token, _) = soft_token(false);
    let cred = register(&rp, &mut token);
    let (options, state) = rp.begin_assertion(from_ref(&cred), &random(), true).unwrap();
    assert!(options.contains("\"userVerification\":\"required\""));
    // It answers "required" with a genuine, correctly signed UP-only
    // assertion (its getAssertion sets UV only when it can).
    let response = get_with(&mut token, ORIGIN, &options, |_| {}).unwrap();
    let flags_byte = b64url::decode(
        serde_json::from_str::<serde_json::Value>(&response).unwrap()["response"]["authenticatorData"]
            .as_str()
            .unwrap(),
    )
    .unwrap()[32];
    assert_eq!(flags_byte & (flags::UP | flags::UV), flags::UP);
    let m = assertion_denied(rp.finish_assertion(&state, &response, from_ref(&cred)));
    assert!(m.contains("user verification"), "{m}");
    // control: the same authenticator when UV is not required
    let (state, response) = assertion_response(&rp, &mut token, from_ref(&cred), &random(), false);
    let a = rp.finish_assertion(&state, &response, &[cred]).unwrap();
    assert!(a.user_present && !a.user_verified);
}

#[test]
fn uv_at_registration_when_enrolment_requires_it() {
    let mut p = policy();
    p.require_uv_for = vec!["withdrawal".into(), "enroll_factor".into()];
    let rp = Webauthn::new(&p).unwrap();

    let (mut uv_less, _) = soft_token(false);
    let (options, state) = rp.begin_registration(&[7u8; 16], "alice", "Alice", &[]).unwrap();
    assert_eq!(
        creation(&options)
            .public_key
            .authenticator_selection
            .unwrap()
            .user_verification,
        UserVerificationPolicy::Required
    );
    let response = create_with(&mut uv_less, ORIGIN, &options, |v| {
        v["publicKey"]["authenticatorSelection"]["userVerification"] = "preferred".into()
    })
    .unwrap();
    let m = denied(rp.finish_registration(&state, &response));
    assert!(m.contains("user verification"), "{m}");

    let (mut token, _) = soft_token(true);
    let cred = register(&rp, &mut token);
    assert!(cred.user_verified_at_registration);
    // Such a credential is always asked for UV, even for uv_required=false.
    let (options, state) = rp.begin_assertion(from_ref(&cred), &random(), false).unwrap();
    assert!(options.contains("\"userVerification\":\"required\""));
    let response = get_with(&mut token, ORIGIN, &options, |_| {}).unwrap();
    assert!(rp.finish_assertion(&state, &response, &[cred]).unwrap().user_verified);
}

#[test]
fn counter_regression_is_possibly_cloned() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let mut cred = register(&rp, &mut token);
    // A genuine clone: the token's full state copied after registration.
    let mut clone = SoftToken::from_cbor(&token.to_cbor().unwrap()).unwrap();
    for _ in 0..2 {
        let (state, response) = assertion_response(&rp, &mut token, from_ref(&cred), &random(), false);
        cred.counter = rp.finish_assertion(&state, &response, from_ref(&cred)).unwrap().counter;
    }
    assert_eq!(cred.counter, 2);
    let (state, response) = assertion_response(&rp, &mut clone, from_ref(&cred), &random(), false);
    let cloned = Err(AssertionError::PossiblyCloned {
        credential_id: cred.credential_id.clone(),
    });
    assert_eq!(rp.finish_assertion(&state, &response, from_ref(&cred)), cloned);
    // equal counter: the clone's next value (2) against the stored 2
    let (state, response) = assertion_response(&rp, &mut clone, from_ref(&cred), &random(), false);
    assert_eq!(rp.finish_assertion(&state, &response, from_ref(&cred)), cloned);
    // a stored counter above the authenticator's
    let (state, response) = assertion_response(&rp, &mut token, from_ref(&cred), &random(), false);
    let mut ahead = cred.clone();
    ahead.counter = 50;
    assert_eq!(rp.finish_assertion(&state, &response, &[ahead]), cloned);
    // control: the same response with the true stored counter
    assert_eq!(rp.finish_assertion(&state, &response, &[cred]).unwrap().counter, 3);
}

#[test]
fn always_zero_counter_is_accepted() {
    let rp = rp();
    let mut key = ZeroCounterKey::new([0; 16]);
    let cred = register(&rp, &mut key);
    assert_eq!((cred.attestation_format.as_str(), cred.aaguid), ("none", None));
    for _ in 0..3 {
        let (state, response) = assertion_response(&rp, &mut key, from_ref(&cred), &random(), false);
        let a = rp.finish_assertion(&state, &response, from_ref(&cred)).unwrap();
        assert_eq!(a.counter, 0);
    }
    // but a credential that once counted must not fall back to 0 (WebAuthn
    // §7.2 step 21: either counter non-zero and received <= stored)
    let (state, response) = assertion_response(&rp, &mut key, from_ref(&cred), &random(), false);
    let mut counted = cred.clone();
    counted.counter = 7;
    assert!(matches!(
        rp.finish_assertion(&state, &response, &[counted]),
        Err(AssertionError::PossiblyCloned { .. })
    ));
}

/// The CBOR reader on real attestation objects: SoftToken's `packed` with
/// an x5c chain, SoftPasskey's `packed` self attestation and
/// ZeroCounterKey's `none`; each then registers with webauthn-rs-core.
#[test]
fn cbor_reads_real_attestation_objects() {
    fn read<A: AuthenticatorBackend>(rp: &Webauthn, a: &mut A) -> (cbor::Registration, Vec<u8>) {
        let (state, response) = registration_response(rp, a, ORIGIN);
        let reg: RegisterPublicKeyCredential = serde_json::from_str(&response).unwrap();
        let facts = cbor::registration(&reg.response.attestation_object).unwrap();
        assert_eq!(facts.credential_id, reg.raw_id);
        // webauthn-rs-core's own reading of the same object agrees.
        let core = rp.finish_registration(&state, &response).unwrap().credential;
        assert_eq!(core["cred_id"], b64url::encode(&facts.credential_id));
        assert_eq!(core["attestation_format"], facts.fmt.as_str());
        (facts, reg.response.attestation_object)
    }
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let (facts, object) = read(&rp, &mut token);
    assert_eq!(facts.fmt, "packed");
    assert_eq!(facts.aaguid, *SOFTTOKEN_AAGUID.as_bytes());
    let value: serde_cbor_2::Value = serde_cbor_2::from_slice(&object).unwrap();
    let serde_cbor_2::Value::Map(members) = value else {
        panic!("not a map")
    };
    let Some(serde_cbor_2::Value::Map(att_stmt)) = members.get(&serde_cbor_2::Value::Text("attStmt".into())) else {
        panic!("no attStmt")
    };
    assert!(att_stmt.contains_key(&serde_cbor_2::Value::Text("x5c".into())));

    let (facts, _) = read(&rp, &mut SoftPasskey::new(false));
    assert_eq!(facts.fmt, "packed");
    assert_eq!(facts.aaguid, [0; 16]);

    let (facts, _) = read(&rp, &mut ZeroCounterKey::new([9; 16]));
    assert_eq!(facts.fmt, "none");
    assert_eq!(facts.aaguid, [9; 16]);
}

#[test]
fn aaguid_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let (mut token, ca_pem) = soft_token(false);
    let ca_path = dir.path().join("softtoken-ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    let mut p = policy();
    p.aaguid_allow_list = vec![SOFTTOKEN_AAGUID];
    p.attestation_ca_pem = vec![ca_path];

    // control: the allowed model under its root
    let rp = Webauthn::new(&p).unwrap();
    let cred = register(&rp, &mut token);
    assert_eq!(cred.aaguid, Some(SOFTTOKEN_AAGUID));
    let (state, response) = assertion_response(&rp, &mut token, from_ref(&cred), &random(), false);
    rp.finish_assertion(&state, &response, &[cred]).unwrap();

    // the same authenticator when its AAGUID is not on the list
    let mut other_list = p.clone();
    other_list.aaguid_allow_list = vec![Uuid::new_v4()];
    let strict = Webauthn::new(&other_list).unwrap();
    let (state, response) = registration_response(&strict, &mut token, ORIGIN);
    let m = denied(strict.finish_registration(&state, &response));
    assert!(
        m.contains(&format!("AAGUID {SOFTTOKEN_AAGUID} is not on the allow-list")),
        "{m}"
    );

    // an allowed AAGUID under a root that is not configured
    let (mut impostor, _) = soft_token(false);
    let (state, response) = registration_response(&rp, &mut impostor, ORIGIN);
    let m = denied(rp.finish_registration(&state, &response));
    assert!(m.contains("does not chain"), "{m}");

    // self attestation (SoftPasskey)
    let (state, response) = registration_response(&rp, &mut SoftPasskey::new(false), ORIGIN);
    let m = denied(rp.finish_registration(&state, &response));
    assert!(m.contains("no verifiable attestation"), "{m}");

    // `none` attestation claiming the allowed AAGUID
    let mut liar = ZeroCounterKey::new(*SOFTTOKEN_AAGUID.as_bytes());
    let (state, response) = registration_response(&rp, &mut liar, ORIGIN);
    let m = denied(rp.finish_registration(&state, &response));
    assert!(m.contains("no verifiable attestation (none attestation"), "{m}");
    assert!(m.contains(&SOFTTOKEN_AAGUID.to_string()), "{m}");
    // ... which without an allow-list registers, the AAGUID only claimed
    let open = self::rp();
    let (state, response) = registration_response(&open, &mut liar, ORIGIN);
    let c = open.finish_registration(&state, &response).unwrap();
    assert_eq!(c.aaguid, Some(SOFTTOKEN_AAGUID));

    // roots given as text behave as files
    let rp2 = Webauthn::with_attestation_roots(&p, &[ca_pem]).unwrap();
    register(&rp2, &mut token);
}

#[test]
fn policy_validation() {
    let ok = policy();
    let bad = |f: &dyn Fn(&mut WebauthnPolicy), field: &str| {
        let mut p = ok.clone();
        f(&mut p);
        invalid(Webauthn::new(&p), field)
    };
    bad(
        &|p| p.aaguid_allow_list = vec![SOFTTOKEN_AAGUID],
        "webauthn.attestation_ca_pem",
    );
    bad(&|p| p.attestation = "maybe".into(), "webauthn.attestation");
    bad(&|p| p.origins = vec!["https://example.com".into()], "webauthn.origins");
    bad(
        &|p| p.origins = vec!["http://app.localhost:8080".into()],
        "webauthn.origins",
    );
    bad(
        &|p| p.origins = vec!["https://localhost:8443/login".into()],
        "webauthn.origins",
    );
    bad(&|p| p.origins = vec!["localhost".into()], "webauthn.origins");
    bad(&|p| p.origins = Vec::new(), "webauthn.origins");
    bad(&|p| p.rp_id = "https://localhost".into(), "webauthn.rp_id");
    bad(&|p| p.ceremony_ttl_seconds = 0, "webauthn.ceremony_ttl_seconds");
    bad(
        &|p| p.require_uv_for = vec!["Withdrawal".into()],
        "webauthn.require_uv_for",
    );
    bad(
        &|p| p.attestation_ca_pem = vec!["/nonexistent/ca.pem".into()],
        "webauthn.attestation_ca_pem",
    );
    let (_, pem) = soft_token(false);
    let mut none = ok.clone();
    none.attestation = "none".into();
    invalid(Webauthn::with_attestation_roots(&none, &[pem]), "webauthn.attestation");
    invalid(
        Webauthn::with_attestation_roots(&ok, &["not a certificate".into()]),
        "webauthn.attestation_ca_pem",
    );

    // defaults, and the TOML section
    let d = WebauthnPolicy::default();
    assert_eq!(d.rp_id, "localhost");
    assert_eq!(d.origins, ["https://localhost:8443", "http://localhost:8080"]);
    assert_eq!(d.require_uv_for, ["withdrawal"]);
    assert_eq!(d.attestation, "direct");
    assert!(!d.synced_passkeys_may_withdraw);
    assert_eq!(d.ceremony_ttl_seconds, 300);
    Webauthn::new(&d).unwrap();
    let t: WebauthnPolicy = toml::from_str(
        "rp_id = \"example.com\"\norigins = [\"https://example.com\"]\naaguid_allow_list = [\"0fb9bcbc-a0d4-4042-bbb0-559bc1631e28\"]\n",
    )
    .unwrap();
    assert_eq!(t.aaguid_allow_list, [SOFTTOKEN_AAGUID]);
    assert_eq!(t.rp_name, "Sigil");
    assert!(toml::from_str::<WebauthnPolicy>("rpid = \"x\"\n").is_err());
}

#[test]
fn synced_passkeys_may_not_approve_withdrawals() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let mut cred = register(&rp, &mut token);
    rp.may_approve("withdrawal", &cred).unwrap();
    cred.backup_eligible = true;
    let m = denied(rp.may_approve("withdrawal", &cred));
    assert!(m.contains("synced passkey"), "{m}");
    rp.may_approve("add_address", &cred).unwrap();
    let mut p = policy();
    p.synced_passkeys_may_withdraw = true;
    Webauthn::new(&p).unwrap().may_approve("withdrawal", &cred).unwrap();
    assert!(rp.uv_required_for("withdrawal") && !rp.uv_required_for("add_address"));
}

#[test]
fn malformed_registrations_are_invalid_argument() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let (state, good) = registration_response(&rp, &mut token, ORIGIN);
    let field = "credential";
    invalid(rp.finish_registration(&state, "not json"), field);
    invalid(rp.finish_registration(&state, "{}"), field);
    let bad_b64 = edit_json(&good, &["response", "attestationObject"], |v| *v = "@@@@".into());
    invalid(rp.finish_registration(&state, &bad_b64), field);
    let padded = edit_json(&good, &["id"], |v| *v = format!("{}=", v.as_str().unwrap()).into());
    invalid(rp.finish_registration(&state, &padded), field);
    let truncated = edit_bytes(&good, &["response", "attestationObject"], |b| b.truncate(b.len() / 2));
    let m = invalid(rp.finish_registration(&state, &truncated), field);
    assert!(m.contains("attestationObject"), "{m}");
    let m = invalid(
        rp.finish_registration(
            &state,
            &edit_bytes(&good, &["response", "clientDataJSON"], |b| b.truncate(10)),
        ),
        field,
    );
    assert!(m.contains("clientDataJSON"), "{m}");
    let huge = format!("{}{}", good, " ".repeat(MAX_RESPONSE_BYTES));
    invalid(rp.finish_registration(&state, &huge), field);
    // state: unreadable, or of the other ceremony
    assert!(matches!(rp.finish_registration("{", &good), Err(Error::Internal(_))));
    let cred = register(&rp, &mut token);
    let (_, assertion_state) = rp.begin_assertion(from_ref(&cred), &random(), false).unwrap();
    assert!(matches!(
        rp.finish_registration(&assertion_state, &good),
        Err(Error::Internal(_))
    ));
    // control
    rp.finish_registration(&state, &good).unwrap();

    // an existing credential replayed into a new registration
    let (_, state) = rp
        .begin_registration(&[7u8; 16], "alice", "Alice", from_ref(&cred))
        .unwrap();
    let (old_state, old) = registration_response(&rp, &mut token, ORIGIN);
    let old_cred = rp.finish_registration(&old_state, &old).unwrap();
    let (_, state2) = rp
        .begin_registration(&[7u8; 16], "alice", "Alice", &[old_cred])
        .unwrap();
    let m = denied(rp.finish_registration(&state2, &old));
    assert!(m.contains("already registered"), "{m}");
    let m = denied(rp.finish_registration(&state, &old));
    assert!(m.contains("different challenge"), "{m}");

    invalid(rp.begin_registration(&[], "alice", "Alice", &[]), "user_handle");
    invalid(rp.begin_registration(&[1; 65], "alice", "Alice", &[]), "user_handle");
    invalid(rp.begin_registration(&[1; 16], "", "Alice", &[]), "user_name");
}

#[test]
fn malformed_assertions_are_invalid_argument() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let cred = register(&rp, &mut token);
    let creds = [cred.clone()];
    let (state, good) = assertion_response(&rp, &mut token, &creds, &random(), false);

    assertion_invalid(rp.finish_assertion(&state, "not json", &creds));
    assertion_invalid(rp.finish_assertion(&state, "[]", &creds));
    let bad_sig = edit_json(&good, &["response", "signature"], |v| *v = "@@@@".into());
    assertion_invalid(rp.finish_assertion(&state, &bad_sig, &creds));
    let bad_id = edit_json(&good, &["id"], |v| *v = "AAAA".into());
    let m = assertion_invalid(rp.finish_assertion(&state, &bad_id, &creds));
    assert!(m.contains("id and rawId"), "{m}");
    let short = edit_bytes(&good, &["response", "authenticatorData"], |b| b.truncate(20));
    let m = assertion_invalid(rp.finish_assertion(&state, &short, &creds));
    assert!(m.contains("authenticatorData"), "{m}");
    // extension data announced (ED flag) but the CBOR is missing
    let no_ext = edit_bytes(&good, &["response", "authenticatorData"], |b| b[32] |= 0x80);
    assertion_invalid(rp.finish_assertion(&state, &no_ext, &creds));
    let no_cdj = edit_bytes(&good, &["response", "clientDataJSON"], |b| b.truncate(5));
    assertion_invalid(rp.finish_assertion(&state, &no_cdj, &creds));
    let wrong_type = edit_json(&good, &["type"], |v| *v = "password".into());
    assertion_invalid(rp.finish_assertion(&state, &wrong_type, &creds));

    // tampering that still parses is a verification failure
    let flipped = edit_bytes(&good, &["response", "authenticatorData"], |b| b[36] ^= 1);
    let m = assertion_denied(rp.finish_assertion(&state, &flipped, &creds));
    assert!(m.contains("signature does not verify"), "{m}");
    let no_up = edit_bytes(&good, &["response", "authenticatorData"], |b| b[32] &= !flags::UP);
    let m = assertion_denied(rp.finish_assertion(&state, &no_up, &creds));
    assert!(m.contains("presence"), "{m}");

    // state
    assert!(matches!(
        rp.finish_assertion("garbage", &good, &creds),
        Err(AssertionError::Failed(Error::Internal(_)))
    ));
    let (_, reg_state) = rp.begin_registration(&[7u8; 16], "alice", "Alice", &[]).unwrap();
    assert!(matches!(
        rp.finish_assertion(&reg_state, &good, &creds),
        Err(AssertionError::Failed(Error::Internal(_)))
    ));
    // control
    rp.finish_assertion(&state, &good, &creds).unwrap();
}

#[test]
fn unknown_or_unoffered_credentials() {
    let rp = rp();
    let (mut token, _) = soft_token(false);
    let a = register(&rp, &mut token);
    let b = register(&rp, &mut token);
    let (state_b, response_b) = assertion_response(&rp, &mut token, from_ref(&b), &random(), false);
    match rp.finish_assertion(&state_b, &response_b, from_ref(&a)) {
        Err(AssertionError::Failed(Error::NotFound(m))) => {
            assert!(m.contains(&b.credential_id), "{m}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // known to the user, but not offered in this ceremony
    let (_, state_a) = rp.begin_assertion(from_ref(&a), &random(), false).unwrap();
    let m = assertion_denied(rp.finish_assertion(&state_a, &response_b, &[a.clone(), b.clone()]));
    assert!(m.contains("not offered"), "{m}");
    // control
    rp.finish_assertion(&state_b, &response_b, &[a, b]).unwrap();
    assert!(matches!(
        rp.begin_assertion(&[], &random(), false),
        Err(Error::FailedPrecondition(_))
    ));
}
