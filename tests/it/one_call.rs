//! `ApprovalService.Approve`: Begin and Complete in one call for proofs
//! that need no challenge, with the same checks, counting and audit trail.
use sigil::pb;
use tonic::Code;

use crate::support::harness::*;
use crate::support::lifecycle::audit;
use crate::support::tokens::*;

fn approve_req(intent: &pb::Intent, code: &str) -> pb::ApproveRequest {
    pb::ApproveRequest {
        intent: Some(intent.clone()),
        device: None,
        proof: Some(pb::approve_request::Proof::Totp(pb::TotpProof {
            code: code.into(),
            factor_id: String::new(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_call_issues_the_same_approval_with_the_same_audit_trail() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("oona").await;
    let mut a = s.approvals("withdrawal-engine").await;
    let intent = withdrawal("oona", "wd-1");
    let before = audit(&s).await.len();
    let r = a
        .approve(approve_req(&intent, &s.code(&seed, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.amr, vec!["otp".to_string()]);
    // A valid approval of exactly this intent, verified offline and redeemed once.
    let v = verifier(&s).await;
    let claims = v
        .verify_for(&r.approval, &domain_intent(&intent), s.clock.now_secs())
        .unwrap();
    assert_eq!(claims.jti, r.jti);
    let redeemed = a
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: r.approval.clone(),
            expected_intent: Some(intent.clone()),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!redeemed.replayed);
    // The audit log tells the two steps, as for Begin + Complete.
    let log = audit(&s).await;
    let actions: Vec<&str> = log[before..].iter().map(|e| e.action.as_str()).collect();
    let begin = actions
        .iter()
        .position(|a| *a == "approval.begin")
        .expect("approval.begin audited");
    let issue = actions
        .iter()
        .position(|a| *a == "approval.issue")
        .expect("approval.issue audited");
    assert!(begin < issue, "{actions:?}");
    assert!(log[before..]
        .iter()
        .all(|e| e.actor == "withdrawal-engine" || e.action == "approval.redeem"));
    // The same code cannot approve twice (the step is used).
    let again = a
        .approve(approve_req(&withdrawal("oona", "wd-2"), &s.code(&seed, 0)))
        .await;
    assert!(again.is_err(), "a used TOTP step approved again");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_call_refuses_a_wrong_code_counts_it_and_refuses_challenge_bound_proofs() {
    let s = TestServer::start().await;
    let (fid, seed) = s.enroll_totp("otto").await;
    let mut a = s.approvals("withdrawal-engine").await;
    let intent = withdrawal("otto", "wd-1");
    let good = s.code(&seed, 0);
    let wrong = if good == "000000" { "000001" } else { "000000" };
    let r = a.approve(approve_req(&intent, wrong)).await;
    assert_status(r, Code::PermissionDenied, "attempt");
    // Counted against the factor, as a wrong CompleteApproval is.
    assert_eq!(factor(&s, "otto", &fid).await.consecutive_failures, 1);
    // Malformed or challenge-bound proofs are refused before anything is written.
    let before = snapshot_but_attempts(s.sigil());
    let r = a
        .approve(pb::ApproveRequest {
            intent: Some(intent.clone()),
            device: None,
            proof: None,
        })
        .await;
    assert_status(r, Code::InvalidArgument, "BeginApproval");
    let r = a.approve(approve_req(&intent, "12ab56")).await;
    assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        snapshot_but_attempts(s.sigil()),
        before,
        "a refused proof wrote something"
    );
    // A refused intent is refused as BeginApproval refuses it.
    let mut bad = intent.clone();
    bad.amount = "1.50".into();
    let r = a.approve(approve_req(&bad, &good)).await;
    assert_status(r, Code::InvalidArgument, "amount");
    // The right code still approves.
    a.approve(approve_req(&intent, &good)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_call_is_for_the_engine_and_the_frontend_only() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("ruth").await;
    let r = s
        .approvals("admin")
        .await
        .approve(approve_req(&withdrawal("ruth", "wd-1"), &s.code(&seed, 0)))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    s.approvals("frontend")
        .await
        .approve(approve_req(&withdrawal("ruth", "wd-1"), &s.code(&seed, 0)))
        .await
        .unwrap();
}
