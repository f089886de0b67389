//! Helpers of the YubiKey tests: emulated keys (`SoftHmacSlot`,
//! `SoftYubiKey`) enrolled and used through the real gRPC API.
use sigil::factor::yubikey::{SoftHmacSlot, SoftYubiKey};
use sigil::pb;
use sigil::pb::complete_approval_request::Proof;
use sigil::pb::confirm_yubikey_enrollment_request::Proof as ConfirmProof;

use crate::support::harness::*;

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b
}

/// An emulated Yubico OTP key with fresh random credentials:
/// (key, private id, AES key).
pub fn otp_key(public_id: &str) -> (SoftYubiKey, [u8; 6], [u8; 16]) {
    let private_id = random::<6>();
    let aes_key = random::<16>();
    let key = SoftYubiKey::new(public_id, private_id, aes_key).unwrap();
    (key, private_id, aes_key)
}

/// Begins an HMAC-SHA1 enrollment with `secret`; returns (factor id, challenge).
pub async fn begin_hmac(s: &TestServer, user: &str, secret: &[u8], slot: u32, step_up: &str) -> (String, Vec<u8>) {
    let e = s
        .factors("frontend")
        .await
        .begin_yubikey_hmac_enrollment(pb::BeginYubikeyHmacEnrollmentRequest {
            user_id: user.into(),
            nickname: format!("slot {slot}"),
            secret: secret.to_vec(),
            slot,
            step_up_approval: step_up.into(),
        })
        .await
        .expect("begin HMAC enrollment")
        .into_inner();
    (e.factor_id, e.challenge)
}

pub async fn confirm(
    s: &TestServer,
    user: &str,
    factor_id: &str,
    proof: ConfirmProof,
) -> Result<pb::Factor, tonic::Status> {
    s.factors("frontend")
        .await
        .confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
            user_id: user.into(),
            factor_id: factor_id.into(),
            proof: Some(proof),
        })
        .await
        .map(|r| r.into_inner().factor.expect("factor"))
}

/// Programs an emulated HMAC slot with a fresh secret, enrolls and confirms
/// it; returns (factor id, slot, secret).
pub async fn enroll_hmac(s: &TestServer, user: &str, slot_no: u32, step_up: &str) -> (String, SoftHmacSlot, [u8; 20]) {
    let secret = random::<20>();
    let slot = SoftHmacSlot::new(secret);
    let (fid, challenge) = begin_hmac(s, user, &secret, slot_no, step_up).await;
    let f = confirm(
        s,
        user,
        &fid,
        ConfirmProof::HmacResponse(slot.respond(&challenge).unwrap().to_vec()),
    )
    .await
    .expect("confirm HMAC enrollment");
    assert_eq!(f.state, pb::FactorState::Active as i32);
    (fid, slot, secret)
}

pub async fn begin_otp(
    s: &TestServer,
    user: &str,
    public_id: &str,
    private_id: &[u8],
    aes_key: &[u8],
    step_up: &str,
) -> Result<pb::BeginYubikeyEnrollmentResponse, tonic::Status> {
    s.factors("frontend")
        .await
        .begin_yubikey_otp_enrollment(pb::BeginYubikeyOtpEnrollmentRequest {
            user_id: user.into(),
            nickname: "keychain".into(),
            public_id: public_id.into(),
            private_id: private_id.to_vec(),
            aes_key: aes_key.to_vec(),
            personalization_csv: String::new(),
            step_up_approval: step_up.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Enrolls an emulated Yubico OTP key and confirms it with its first OTP;
/// returns the factor id.
pub async fn enroll_otp(
    s: &TestServer,
    user: &str,
    key: &mut SoftYubiKey,
    private_id: &[u8],
    aes_key: &[u8],
) -> String {
    let e = begin_otp(s, user, key.public_id(), private_id, aes_key, "")
        .await
        .expect("begin OTP enrollment");
    assert!(e.challenge.is_empty(), "an OTP enrollment has no challenge");
    let f = confirm(s, user, &e.factor_id, ConfirmProof::Otp(key.otp()))
        .await
        .expect("confirm OTP enrollment");
    assert_eq!(f.state, pb::FactorState::Active as i32);
    assert_eq!(f.kind, pb::FactorKind::YubikeyOtp as i32);
    assert_eq!(f.yubikey_public_id, key.public_id());
    e.factor_id
}

pub fn hmac_proof(challenge_id: &str, user: &str, response: &[u8], factor_id: &str) -> pb::CompleteApprovalRequest {
    pb::CompleteApprovalRequest {
        challenge_id: challenge_id.into(),
        user_id: user.into(),
        proof: Some(Proof::YubikeyHmac(pb::YubikeyHmacProof {
            response: response.to_vec(),
            factor_id: factor_id.into(),
        })),
    }
}

pub fn otp_proof(challenge_id: &str, user: &str, otp: &str) -> pb::CompleteApprovalRequest {
    pb::CompleteApprovalRequest {
        challenge_id: challenge_id.into(),
        user_id: user.into(),
        proof: Some(Proof::YubikeyOtp(pb::YubikeyOtpProof { otp: otp.into() })),
    }
}

pub async fn complete(
    s: &TestServer,
    req: pb::CompleteApprovalRequest,
) -> Result<pb::CompleteApprovalResponse, tonic::Status> {
    s.approvals("withdrawal-engine")
        .await
        .complete_approval(req)
        .await
        .map(|r| r.into_inner())
}

/// Begin + complete a withdrawal approval with a Yubico OTP.
pub async fn approve_otp(
    s: &TestServer,
    user: &str,
    wid: &str,
    otp: &str,
) -> Result<pb::CompleteApprovalResponse, tonic::Status> {
    let b = begin(s, &withdrawal(user, wid)).await;
    complete(s, otp_proof(&b.challenge_id, user, otp)).await
}

pub async fn failures(s: &TestServer, user: &str, factor_id: &str) -> u32 {
    factor(s, user, factor_id).await.consecutive_failures
}

/// Another modhex character in the encrypted part: still a well-formed OTP,
/// but no longer the ciphertext the key produced.
pub fn alter_ciphertext(otp: &str) -> String {
    let mut b = otp.as_bytes().to_vec();
    b[20] = if b[20] == b'c' { b'b' } else { b'c' };
    String::from_utf8(b).unwrap()
}

pub async fn approve_otp_intent(s: &TestServer, intent: &pb::Intent, otp: &str) -> String {
    let b = begin(s, intent).await;
    complete(s, otp_proof(&b.challenge_id, &intent.user_id, otp))
        .await
        .expect("approve with OTP")
        .approval
}
