//! Approval tokens and the keys that sign them: the published key set,
//! claims read without verification, tokens forged or altered for the
//! refusal tests.
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use sigil::pb;
use sigil_verify::{b64url, Claims, JwkSet};

use crate::support::harness::*;

pub async fn jwks(s: &TestServer) -> JwkSet {
    let mut a = s.approvals("withdrawal-engine").await;
    let r = a
        .get_approval_keys(pb::GetApprovalKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&r.jwks_json).unwrap()
}

pub fn claims_of(token: &str) -> Claims {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&b64url::decode(part).unwrap()).unwrap()
}

pub fn sign_with(key: &EcdsaKeyPair, kid: &str, claims: &Claims) -> String {
    let input = sigil_verify::signing_input(kid, claims);
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    let mut rs = [0u8; 64];
    rs.copy_from_slice(sig.as_ref());
    sigil_verify::assemble(&input, &rs)
}

pub fn forged_token(header: &str, claims: &Claims, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url::encode(header.as_bytes()),
        b64url::encode(&serde_json::to_vec(claims).unwrap()),
        b64url::encode(sig)
    )
}
