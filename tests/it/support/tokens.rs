//! Approval tokens and the keys that sign them: the published key set,
//! claims read without verification, tokens forged or altered for the
//! refusal tests.
use std::collections::HashMap;

use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil_verify::{b64url, Claims, JwkSet, Verifier};
use tonic::transport::Channel;

use crate::support::harness::*;

pub type Approvals = ApprovalServiceClient<Channel>;

pub async fn get_keys(a: &mut Approvals) -> pb::GetApprovalKeysResponse {
    a.get_approval_keys(pb::GetApprovalKeysRequest {})
        .await
        .unwrap()
        .into_inner()
}

pub async fn published(s: &TestServer) -> pb::GetApprovalKeysResponse {
    get_keys(&mut s.approvals("withdrawal-engine").await).await
}

pub fn jwks_of(r: &pb::GetApprovalKeysResponse) -> JwkSet {
    serde_json::from_str(&r.jwks_json).unwrap()
}

/// The published key set.
pub async fn jwks(s: &TestServer) -> JwkSet {
    jwks_of(&published(s).await)
}

/// An engine's verifier of the published key set.
pub async fn verifier(s: &TestServer) -> Verifier {
    Verifier::new(&jwks(s).await, "sigil", "withdrawal-engine").unwrap()
}

/// kid → JWK `status` of a published set.
pub fn statuses(set: &JwkSet) -> HashMap<String, String> {
    set.keys
        .iter()
        .map(|k| (k.kid.clone(), k.status.clone().unwrap_or_default()))
        .collect()
}

pub async fn list_keys(s: &TestServer) -> Vec<pb::ApprovalKeyInfo> {
    s.admin()
        .await
        .list_approval_keys(pb::ListApprovalKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
}

pub fn key<'a>(keys: &'a [pb::ApprovalKeyInfo], kid: &str) -> &'a pb::ApprovalKeyInfo {
    keys.iter()
        .find(|k| k.kid == kid)
        .unwrap_or_else(|| panic!("key {kid} not listed in {keys:?}"))
}

pub async fn rotate(s: &TestServer, now: bool) -> Result<pb::ApprovalKeyInfo, tonic::Status> {
    s.admin()
        .await
        .rotate_approval_key(pb::RotateApprovalKeyRequest { now })
        .await
        .map(|r| r.into_inner().key.unwrap())
}

pub fn header_kid(token: &str) -> String {
    let h: serde_json::Value =
        serde_json::from_slice(&b64url::decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    h["kid"].as_str().unwrap().to_string()
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

/// The claims of `token` as JSON, for reading single members.
pub fn claims_json(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&b64url::decode(part).unwrap()).unwrap()
}

/// The token with its payload replaced (the signature kept).
pub fn with_claims(token: &str, c: &Claims) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64url::encode(&serde_json::to_vec(c).unwrap()),
        parts[2]
    )
}
