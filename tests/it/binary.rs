//! The real binaries: `sigil hsm init` creates a token in a temp dir,
//! `sigild` serves over mTLS, stops cleanly on SIGTERM and, restarted,
//! still has every factor, used step and redeemed approval.
use sigil::factor::totp;
use sigil::pb;
use tonic::Code;

use crate::support::daemon::*;
use crate::support::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn sigild_binary_full_flow_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let text = prepare(dir.path(), PROTECTIONS_OFF);
    assert!(
        text.contains("created token") && text.contains("approval key") && text.contains("secrets key"),
        "{text}"
    );
    assert!(!text.contains("it-daemon-pin-1"), "the PIN is never printed");

    let d = start_daemon(dir.path(), "warn");
    let (mut f, mut a) = clients(&d.url).await;
    let e = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "zoe".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
    let s0 = real_step();
    f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
        user_id: "zoe".into(),
        factor_id: e.factor_id.clone(),
        code: totp::code_at_step(&seed, s0),
    })
    .await
    .unwrap();
    let intent = withdrawal("zoe", "wd-bin-1");
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let code = totp::code_at_step(&seed, s0 + 1);
    let done = a
        .complete_approval(totp_proof(&b.challenge_id, "zoe", &code, ""))
        .await
        .unwrap()
        .into_inner();
    a.redeem_approval(pb::RedeemApprovalRequest {
        approval: done.approval.clone(),
        expected_intent: Some(intent),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
    drop((f, a));
    sigterm(d);

    let d = start_daemon(dir.path(), "warn");
    let (mut f, mut a) = clients(&d.url).await;
    let list = f
        .list_factors(pb::ListFactorsRequest { user_id: "zoe".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.factors.len(), 1);
    assert_eq!(list.factors[0].state, pb::FactorState::Active as i32);
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("zoe", "wd-bin-2")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let r = a.complete_approval(totp_proof(&b.challenge_id, "zoe", &code, "")).await;
    assert_status(r, Code::PermissionDenied, "not accepted");
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&done.approval),
            idempotency_key: String::new(),
            approval: done.approval,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "already redeemed");
    drop((f, a));
    sigterm(d);
}
