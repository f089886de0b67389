//! Helpers of the WebAuthn tests: registration and assertion ceremonies
//! driven through the real gRPC API by software authenticators
//! (webauthn-authenticator-rs `SoftToken` / `SoftPasskey`, and [`RingKey`]
//! for what those cannot do), the SoftToken's attestation CA as PEM, and
//! edits of response JSON for the refusal tests.
use std::collections::BTreeMap;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use sigil::pb;
use sigil_verify::{b64url, Jwk, WebauthnEvidence};
use tonic::Status;
use webauthn_authenticator_rs::error::WebauthnCError;
use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, Url, WebauthnAuthenticator,
};
use webauthn_authenticator_rs::softtoken::{SoftToken, AAGUID as SOFTTOKEN_AAGUID};
use webauthn_authenticator_rs::{AuthenticatorBackend, AuthenticatorBackendHashedClientData};
use webauthn_rs_core::proto::{
    AttestationCaListBuilder, AuthenticatorAssertionResponseRaw, AuthenticatorAttestationResponseRaw,
    PublicKeyCredential, PublicKeyCredentialCreationOptions, PublicKeyCredentialRequestOptions,
    RegisterPublicKeyCredential,
};

use crate::support::harness::*;

/// The first configured origin (the default policy's).
pub const ORIGIN: &str = "https://localhost:8443";
/// What the soft authenticators put into clientDataJSON for [`ORIGIN`]
/// (they serialize a URL, with a trailing slash).
pub const ORIGIN_IN_CLIENT_DATA: &str = "https://localhost:8443/";
/// A subdomain of the rp id, so that the client-side rules let the
/// authenticator use rp id `app.localhost`; only some tests configure it.
pub const APP_ORIGIN: &str = "https://app.localhost:8443";

/// Authenticator data flags (WebAuthn §6.1).
pub const UP: u8 = 0x01;
pub const UV: u8 = 0x04;
pub const BE: u8 = 0x08;
pub const BS: u8 = 0x10;
pub const AT: u8 = 0x40;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

pub fn jv(json: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap()
}

/// Runs the authenticator on registration options (after `edit`), as a
/// browser at `origin` would; returns the response JSON for the server.
pub fn create<A: AuthenticatorBackend>(
    a: &mut A,
    origin: &str,
    options_json: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<String, WebauthnCError> {
    let mut v = jv(options_json);
    edit(&mut v);
    let ccr: CreationChallengeResponse = serde_json::from_value(v).unwrap();
    let reg = a.do_registration(Url::parse(origin).unwrap(), ccr)?;
    Ok(serde_json::to_string(&reg).unwrap())
}

/// Runs the authenticator on assertion options (after `edit`).
pub fn get<A: AuthenticatorBackend>(
    a: &mut A,
    origin: &str,
    options_json: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<String, WebauthnCError> {
    let mut v = jv(options_json);
    edit(&mut v);
    let rcr: RequestChallengeResponse = serde_json::from_value(v).unwrap();
    let rsp = a.do_authentication(Url::parse(origin).unwrap(), rcr)?;
    Ok(serde_json::to_string(&rsp).unwrap())
}

pub async fn begin_registration(
    s: &TestServer,
    user: &str,
    step_up: &str,
) -> Result<pb::BeginWebauthnRegistrationResponse, Status> {
    s.factors("frontend")
        .await
        .begin_webauthn_registration(pb::BeginWebauthnRegistrationRequest {
            user_id: user.into(),
            step_up_approval: step_up.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn finish_registration(
    s: &TestServer,
    user: &str,
    ceremony_id: &str,
    response_json: &str,
) -> Result<pb::Factor, Status> {
    s.factors("frontend")
        .await
        .finish_webauthn_registration(pb::FinishWebauthnRegistrationRequest {
            user_id: user.into(),
            ceremony_id: ceremony_id.into(),
            response_json: response_json.into(),
        })
        .await
        .map(|r| r.into_inner().factor.expect("factor"))
}

/// Begin + authenticator at [`ORIGIN`] + finish; returns the factor and the
/// registration response JSON.
pub async fn register_with<A: AuthenticatorBackend>(
    s: &TestServer,
    user: &str,
    a: &mut A,
    step_up: &str,
) -> (pb::Factor, String) {
    let b = begin_registration(s, user, step_up).await.expect("begin registration");
    let response = create(a, ORIGIN, &b.options_json, |_| {}).expect("authenticator refused to register");
    let f = finish_registration(s, user, &b.ceremony_id, &response)
        .await
        .expect("finish registration");
    (f, response)
}

pub async fn register<A: AuthenticatorBackend>(s: &TestServer, user: &str, a: &mut A) -> (pb::Factor, String) {
    register_with(s, user, a, "").await
}

pub fn webauthn_proof(challenge_id: &str, user: &str, response_json: &str) -> pb::CompleteApprovalRequest {
    pb::CompleteApprovalRequest {
        challenge_id: challenge_id.into(),
        user_id: user.into(),
        proof: Some(pb::complete_approval_request::Proof::Webauthn(pb::WebauthnProof {
            response_json: response_json.into(),
        })),
    }
}

pub async fn complete(
    s: &TestServer,
    challenge_id: &str,
    user: &str,
    response_json: &str,
) -> Result<pb::CompleteApprovalResponse, Status> {
    s.approvals("withdrawal-engine")
        .await
        .complete_approval(webauthn_proof(challenge_id, user, response_json))
        .await
        .map(|r| r.into_inner())
}

/// Begin + assertion at `origin` + complete.
pub async fn approve_with<A: AuthenticatorBackend>(
    s: &TestServer,
    intent: &pb::Intent,
    a: &mut A,
) -> Result<pb::CompleteApprovalResponse, Status> {
    let b = begin(s, intent).await;
    let r = get(a, ORIGIN, &b.webauthn_request_options_json, |_| {}).expect("authenticator refused to sign");
    complete(s, &b.challenge_id, &intent.user_id, &r).await
}

/// The credential key from ListFactors' `public_key_jwk`, as the SEC1 point
/// `0x04 || x || y` that `verify_webauthn_evidence` takes.
pub fn sec1_of(f: &pb::Factor) -> Vec<u8> {
    let jwk: Jwk = serde_json::from_str(&f.public_key_jwk).expect("public_key_jwk is a JWK");
    assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("EC", "P-256"));
    let mut out = vec![0x04];
    out.extend(b64url::decode(&jwk.x).unwrap());
    out.extend(b64url::decode(&jwk.y).unwrap());
    assert_eq!(out.len(), 65);
    out
}

pub fn add_address_intent(user: &str) -> pb::Intent {
    pb::Intent {
        action: "add_address".into(),
        user_id: user.into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        destination: ADDR.into(),
        memo: "cold wallet".into(),
        ..Default::default()
    }
}

/// Edits the member at `path` of the JSON text `json`.
pub fn edit_json(json: &str, path: &[&str], f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = jv(json);
    let mut slot = &mut v;
    for key in path {
        slot = slot.get_mut(*key).unwrap();
    }
    f(slot);
    v.to_string()
}

/// Rewrites the base64url member at `path` through `f` on its bytes.
pub fn edit_bytes(json: &str, path: &[&str], f: impl FnOnce(&mut Vec<u8>)) -> String {
    edit_json(json, path, |v| {
        let mut bytes = b64url::decode(v.as_str().unwrap()).unwrap();
        f(&mut bytes);
        *v = serde_json::Value::String(b64url::encode(&bytes));
    })
}

/// The bytes of a base64url member of a response JSON.
pub fn member_bytes(json: &str, path: &[&str]) -> Vec<u8> {
    let v = jv(json);
    let mut slot = &v;
    for key in path {
        slot = &slot[*key];
    }
    b64url::decode(slot.as_str().unwrap()).unwrap()
}

/// (flags, signature counter) of an assertion response JSON.
pub fn flags_and_counter(assertion_json: &str) -> (u8, u32) {
    let ad = member_bytes(assertion_json, &["response", "authenticatorData"]);
    (ad[32], u32::from_be_bytes(ad[33..37].try_into().unwrap()))
}

/// A SoftToken and its attestation root CA as PEM. `uv`: it verifies the
/// user when asked for `required` (SoftToken's `falsify_uv`); without it
/// it gives presence only.
pub fn soft_token(uv: bool) -> (SoftToken, String) {
    let (token, ca) = SoftToken::new(uv).unwrap();
    // The CA's DER is reachable through the attestation CA list's serde form.
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

pub fn events_of_kind(events: &[pb::Event], kind: &str) -> Vec<pb::Event> {
    events.iter().filter(|e| e.kind == kind).cloned().collect()
}

/// The evidence field called `name`.
pub fn evidence_field<'a>(e: &'a mut WebauthnEvidence, name: &str) -> &'a mut String {
    match name {
        "credential_id" => &mut e.credential_id,
        "authenticator_data" => &mut e.authenticator_data,
        "client_data_json" => &mut e.client_data_json,
        "signature" => &mut e.signature,
        "nonce" => &mut e.nonce,
        other => panic!("no evidence field {other}"),
    }
}

// ---------------------------------------------------------------------------
// RingKey: a software authenticator on ring
// ---------------------------------------------------------------------------

/// A software authenticator on ring for what SoftToken and SoftPasskey
/// cannot do: `none` attestation claiming any AAGUID, a chosen credential id
/// (to construct an id collision between two different keys), a chosen
/// signature counter behaviour (always 0, or reset), the backup-eligible
/// flags of a synced passkey. It signs like any authenticator: ES256 over
/// `authenticatorData || SHA-256(clientDataJSON)`, clientDataJSON built by
/// webauthn-authenticator-rs from the origin and the options' challenge.
pub struct RingKey {
    pub aaguid: [u8; 16],
    /// Credential id of the next registrations (random when None).
    pub fixed_id: Option<Vec<u8>>,
    /// Signature counter of the last assertion; the next one adds `step`.
    pub counter: u32,
    pub step: u32,
    /// Sets UV (a PIN or biometric check) in every response.
    pub uv: bool,
    /// Sets BE and BS: a synced passkey.
    pub synced: bool,
    keys: Vec<(Vec<u8>, EcdsaKeyPair)>,
    rng: SystemRandom,
}

impl RingKey {
    /// A device-bound key with UV, counting 1, 2, 3, ...
    pub fn new() -> Self {
        Self {
            aaguid: [0; 16],
            fixed_id: None,
            counter: 0,
            step: 1,
            uv: true,
            synced: false,
            keys: Vec::new(),
            rng: SystemRandom::new(),
        }
    }

    pub fn flags(&self) -> u8 {
        let mut f = UP;
        if self.uv {
            f |= UV;
        }
        if self.synced {
            f |= BE | BS;
        }
        f
    }
}

pub fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// CBOR byte string head for `len` bytes (len < 65536).
pub fn cbor_bytes_head(len: usize) -> Vec<u8> {
    match len {
        0..=23 => vec![0x40 | len as u8],
        24..=255 => vec![0x58, len as u8],
        _ => {
            let mut v = vec![0x59];
            v.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            v
        }
    }
}

impl AuthenticatorBackendHashedClientData for RingKey {
    fn perform_register(
        &mut self,
        _client_data_hash: Vec<u8>, // `none` attestation signs nothing
        options: PublicKeyCredentialCreationOptions,
        _timeout_ms: u32,
    ) -> Result<RegisterPublicKeyCredential, WebauthnCError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
            .map_err(|_| WebauthnCError::Internal)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &self.rng)
            .map_err(|_| WebauthnCError::Internal)?;
        let id = match &self.fixed_id {
            Some(id) => id.clone(),
            None => {
                let mut id = vec![0u8; 16];
                self.rng.fill(&mut id).map_err(|_| WebauthnCError::Internal)?;
                id
            }
        };
        let pk = key.public_key().as_ref();
        // COSE_Key {1: 2, 3: -7, -1: 1, -2: x, -3: y}
        let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
        cose.extend_from_slice(&pk[1..33]);
        cose.extend_from_slice(&[0x22, 0x58, 0x20]);
        cose.extend_from_slice(&pk[33..65]);
        let mut auth = sha256(options.rp.id.as_bytes());
        auth.push(self.flags() | AT);
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
        ao.extend(cbor_bytes_head(auth.len()));
        ao.extend_from_slice(&auth);
        self.keys.push((id.clone(), key));
        Ok(RegisterPublicKeyCredential {
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
        let flags = self.flags();
        self.counter = self.counter.wrapping_add(self.step);
        let counter = self.counter;
        let (id, key) = self
            .keys
            .iter()
            .find(|(id, _)| options.allow_credentials.iter().any(|ac| &ac.id == id))
            .ok_or(WebauthnCError::NotSupported)?;
        let mut auth = sha256(options.rp_id.as_bytes());
        auth.push(flags);
        auth.extend_from_slice(&counter.to_be_bytes());
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

/// Registers a new software security key (user verification on) for the
/// staff member `staff_id` through `api` (an admin's StaffService).
pub async fn register_staff_key(
    api: &mut pb::staff_service_client::StaffServiceClient<tonic::transport::Channel>,
    staff_id: &str,
) -> SoftToken {
    let (mut key, _) = soft_token(true);
    let b = api
        .begin_staff_key_registration(pb::BeginStaffKeyRegistrationRequest {
            staff_id: staff_id.into(),
        })
        .await
        .expect("begin staff key registration")
        .into_inner();
    let rsp = create(&mut key, ORIGIN, &b.options_json, |_| {}).expect("register the staff key");
    api.finish_staff_key_registration(pb::FinishStaffKeyRegistrationRequest {
        staff_id: staff_id.into(),
        ceremony_id: b.ceremony_id,
        response_json: rsp,
    })
    .await
    .expect("finish staff key registration");
    key
}
