//! Staff quorums, delayed approvals with their cancel window, guarded
//! policy changes and stale requests, through the real gRPC API with
//! software security keys for the staff members.
use sigil::pb;
use sigil::pb::staff_service_client::StaffServiceClient;
use sigil_verify::{verify_quorum, Claims, StaffKeySet};
use tonic::transport::Channel;
use tonic::Code;
use webauthn_authenticator_rs::softtoken::SoftToken;

use crate::support::harness::*;
use crate::support::webauthn::*;

/// The policy of these tests: TOTP or a security key approves; a BTC
/// withdrawal above 1 needs 2 of alice and bob ("large"); above 100 also
/// waits `delay` seconds ("huge", only a delay); the governance needs 2
/// staff approvals and 7200 s.
fn policy(delay: i64) -> String {
    format!(
        r#"
[actions.withdrawal]
kinds = ["totp", "webauthn"]
[[actions.withdrawal.quorum]]
name = "large"
asset = "BTC"
above = "1"
staff = ["alice", "bob"]
required = 2
[[actions.withdrawal.quorum]]
name = "delayed"
asset = "ETH"
above = "1"
required = 0
delay_seconds = {delay}
[governance]
required = 2
delay_seconds = 7200
"#
    )
}

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        relaxed(c);
        c.quorum.staff_key_hold_seconds = 0;
        c.policy = sigil::protect::policy::Policy::from_toml(&policy(3600)).unwrap();
    })
    .await
}

async fn staff_api(s: &TestServer, role: &str) -> StaffServiceClient<Channel> {
    StaffServiceClient::new(s.channel(role).await)
}

async fn add_staff(s: &TestServer, id: &str, role: &str, user_id: &str) {
    staff_api(s, "admin")
        .await
        .add_staff(pb::AddStaffRequest {
            staff_id: id.into(),
            role: role.into(),
            display_name: String::new(),
            user_id: user_id.into(),
        })
        .await
        .expect("add staff");
}

/// Registers a new software security key for staff member `id`.
async fn staff_key(s: &TestServer, id: &str) -> SoftToken {
    register_staff_key(&mut staff_api(s, "admin").await, id).await
}

/// The approvers alice and bob, each with a registered key (the two form
/// the staff quorum).
async fn alice_and_bob(s: &TestServer) -> (SoftToken, SoftToken) {
    add_staff(s, "alice", "approver", "").await;
    add_staff(s, "bob", "approver", "").await;
    (staff_key(s, "alice").await, staff_key(s, "bob").await)
}

/// The request approving `id`'s newest key, if it waits for one.
async fn key_request(s: &TestServer, id: &str) -> Option<String> {
    let staff = staff_api(s, "admin")
        .await
        .list_staff(pb::ListStaffRequest {})
        .await
        .unwrap()
        .into_inner()
        .staff;
    let k = staff.iter().find(|m| m.staff_id == id)?.keys.last()?.clone();
    (k.approved_at == 0).then_some(k.request_id)
}

fn decision(d: &str) -> i32 {
    match d {
        "approve" => pb::StaffDecision::Approve as i32,
        _ => pb::StaffDecision::Cancel as i32,
    }
}

async fn begin_decision(
    s: &TestServer,
    request: &str,
    staff: &str,
    d: &str,
) -> Result<pb::BeginStaffDecisionResponse, tonic::Status> {
    staff_api(s, "approver")
        .await
        .begin_staff_decision(pb::BeginStaffDecisionRequest {
            request_id: request.into(),
            staff_id: staff.into(),
            decision: decision(d),
        })
        .await
        .map(|r| r.into_inner())
}

async fn complete_decision(
    s: &TestServer,
    request: &str,
    staff: &str,
    ceremony: &str,
    response: &str,
) -> Result<pb::PendingApproval, tonic::Status> {
    staff_api(s, "approver")
        .await
        .complete_staff_decision(pb::CompleteStaffDecisionRequest {
            request_id: request.into(),
            staff_id: staff.into(),
            ceremony_id: ceremony.into(),
            response_json: response.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A staff decision with `key`: begin, assertion, complete.
async fn decide(
    s: &TestServer,
    request: &str,
    staff: &str,
    d: &str,
    key: &mut SoftToken,
) -> Result<pb::PendingApproval, tonic::Status> {
    let b = begin_decision(s, request, staff, d).await?;
    let r = get(key, ORIGIN, &b.options_json, |_| {}).expect("assertion");
    complete_decision(s, request, staff, &b.ceremony_id, &r).await
}

fn btc(user: &str, wid: &str, amount: &str) -> pb::Intent {
    pb::Intent {
        amount: amount.into(),
        ..withdrawal(user, wid)
    }
}

fn eth(user: &str, wid: &str, amount: &str) -> pb::Intent {
    pb::Intent {
        action: "withdrawal".into(),
        user_id: user.into(),
        withdrawal_id: wid.into(),
        asset: "ETH".into(),
        network: "ethereum".into(),
        amount: amount.into(),
        destination: "0x52908400098527886E0F7030069857D2E4169EE7".into(),
        memo: String::new(),
    }
}

/// Begin + complete with TOTP; the whole response.
async fn answer(s: &TestServer, intent: &pb::Intent, seed: &[u8]) -> pb::CompleteApprovalResponse {
    let mut a = s.approvals("withdrawal-engine").await;
    let b = begin(s, intent).await;
    let r = a
        .complete_approval(totp_proof(&b.challenge_id, &intent.user_id, &s.code(seed, 0), ""))
        .await
        .expect("complete approval")
        .into_inner();
    s.clock.advance(30);
    r
}

/// The id of the request [`answer`] opened for `intent`, which policy holds.
async fn held(s: &TestServer, intent: &pb::Intent, seed: &[u8]) -> String {
    answer(s, intent, seed)
        .await
        .pending
        .expect("held for a quorum or a delay")
        .request_id
}

async fn pending(s: &TestServer, request: &str) -> pb::PendingApproval {
    s.approvals("withdrawal-engine")
        .await
        .get_pending_approval(pb::GetPendingApprovalRequest {
            request_id: request.into(),
        })
        .await
        .expect("pending")
        .into_inner()
}

async fn redeem(s: &TestServer, token: &str, intent: &pb::Intent) -> Result<pb::RedeemApprovalResponse, tonic::Status> {
    s.approvals("withdrawal-engine")
        .await
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: token.into(),
            expected_intent: Some(intent.clone()),
            idempotency_key: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&sigil_verify::b64url::decode(payload).unwrap()).unwrap()
}

async fn staff_keys(s: &TestServer) -> StaffKeySet {
    let json = staff_api(s, "withdrawal-engine")
        .await
        .get_staff_keys(pb::GetStaffKeysRequest {})
        .await
        .expect("staff keys")
        .into_inner()
        .staff_keys_json;
    serde_json::from_str(&json).unwrap()
}

fn state(p: &pb::PendingApproval) -> pb::PendingState {
    pb::PendingState::try_from(p.state).unwrap()
}

fn reason(st: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    st.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

async fn sweep(s: &TestServer) {
    let sigil = s.sigil().clone();
    tokio::task::spawn_blocking(move || sigil.sweep())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn below_the_threshold_the_users_factor_suffices_above_it_two_of_two_staff_keys() {
    let s = server().await;
    add_staff(&s, "alice", "approver", "").await;
    add_staff(&s, "bob", "admin", "").await;
    let mut alice = staff_key(&s, "alice").await;
    let mut bob = staff_key(&s, "bob").await;
    let (_, seed) = s.enroll_totp("u1").await;

    // At the threshold: the user's factor alone, an approval at once.
    let small = btc("u1", "w-small", "1");
    let r = answer(&s, &small, &seed).await;
    assert!(!r.approval.is_empty() && r.pending.is_none(), "{r:?}");
    redeem(&s, &r.approval, &small).await.expect("small withdrawal redeems");

    // Above it: held for alice and bob, as BeginApproval already says.
    let big = btc("u1", "w-big", "2.5");
    let b = begin(&s, &big).await;
    assert_eq!(b.quorum.len(), 1);
    assert_eq!(b.quorum[0].staff, ["alice", "bob"]);
    assert!(begin(&s, &small).await.quorum.is_empty());
    let r = answer(&s, &big, &seed).await;
    assert!(r.approval.is_empty(), "a held withdrawal has no approval yet");
    let p = r.pending.expect("pending request");
    assert_eq!(state(&p), pb::PendingState::AwaitingQuorum);
    assert_eq!(p.quorum[0].rule, "large");
    assert_eq!(p.quorum[0].required, 2);
    let id = p.request_id.clone();

    // One of two: still nothing to redeem.
    let p = decide(&s, &id, "alice", "approve", &mut alice)
        .await
        .expect("alice approves");
    assert_eq!(state(&p), pb::PendingState::AwaitingQuorum);
    assert!(
        pending(&s, &id).await.approval.is_empty(),
        "1 of 2 staff issued an approval"
    );

    // Two of two: the approval, with both approvers' evidence.
    let p = decide(&s, &id, "bob", "approve", &mut bob).await.expect("bob approves");
    assert_eq!(state(&p), pb::PendingState::Issued);
    assert!(p.approval.is_empty(), "the approver role is not handed the approval");
    let p = pending(&s, &id).await;
    let token = p.approval.clone();
    assert!(!token.is_empty());
    let claims = claims_of(&token);
    assert!(
        claims.amr.contains(&"mca".to_string()) && claims.amr.contains(&"otp".to_string()),
        "{:?}",
        claims.amr
    );
    let ids: Vec<&str> = claims.approvers.iter().map(|a| a.staff_id.as_str()).collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert_eq!(claims.quorum[0].m, 2);

    // The verifier library re-checks every approver's signature.
    let keys = staff_keys(&s).await;
    assert_eq!(verify_quorum(&claims, &keys, None).unwrap(), ["alice", "bob"]);
    for i in 0..2 {
        for field in [
            "authenticator_data",
            "client_data_json",
            "signature",
            "nonce",
            "credential_id",
        ] {
            let mut c = claims.clone();
            let f = evidence_field(&mut c.approvers[i].webauthn, field);
            let mut bytes = sigil_verify::b64url::decode(f).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            *f = sigil_verify::b64url::encode(&bytes);
            assert!(
                verify_quorum(&c, &keys, None).is_err(),
                "one byte changed in approver {i}'s {field} was accepted"
            );
        }
    }
    let mut one = claims.clone();
    one.approvers.truncate(1);
    assert!(
        verify_quorum(&one, &keys, None).is_err(),
        "1 of 2 approvers passed the library's quorum check"
    );

    redeem(&s, &token, &big).await.expect("quorum approval redeems");
    let st = redeem(&s, &token, &big).await.unwrap_err();
    assert_eq!(reason(&st), "APPROVAL_ALREADY_REDEEMED");
}

#[tokio::test]
async fn one_person_counts_once_and_nobody_approves_their_own_withdrawal() {
    let s = server().await;
    // bob holds the exchange account u2; alice has two keys.
    add_staff(&s, "alice", "approver", "").await;
    add_staff(&s, "bob", "approver", "u2").await;
    let mut alice1 = staff_key(&s, "alice").await;
    let mut alice2 = staff_key(&s, "alice").await;
    let mut bob = staff_key(&s, "bob").await;
    let (_, seed1) = s.enroll_totp("u1").await;
    let (_, seed2) = s.enroll_totp("u2").await;

    let r = answer(&s, &btc("u1", "w1", "3"), &seed1).await;
    let id = r.pending.unwrap().request_id;
    decide(&s, &id, "alice", "approve", &mut alice1)
        .await
        .expect("first key");
    let before = snapshot_but_attempts(s.sigil());
    let st = begin_decision(&s, &id, "alice", "approve").await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(reason(&st), "STAFF_NOT_ALLOWED");
    assert!(st.message().contains("one person counts once"), "{}", st.message());
    // Not even with a ceremony opened for the other key first.
    let st = decide(&s, &id, "alice", "approve", &mut alice2).await.unwrap_err();
    assert_eq!(reason(&st), "STAFF_NOT_ALLOWED");
    assert_eq!(
        snapshot_but_attempts(s.sigil()),
        before,
        "a refused second approval wrote something"
    );
    let p = pending(&s, &id).await;
    assert_eq!(state(&p), pb::PendingState::AwaitingQuorum);
    assert_eq!(p.approvals.len(), 1);

    // bob may not approve a withdrawal of his own account u2.
    let r = answer(&s, &btc("u2", "w2", "3"), &seed2).await;
    let id2 = r.pending.unwrap().request_id;
    let st = decide(&s, &id2, "bob", "approve", &mut bob).await.unwrap_err();
    assert_eq!(reason(&st), "STAFF_NOT_ALLOWED");
    assert!(st.message().contains("own withdrawal"), "{}", st.message());
    assert!(pending(&s, &id2).await.approvals.is_empty());
}

#[tokio::test]
async fn a_staff_assertion_over_another_intent_is_refused() {
    let s = server().await;
    add_staff(&s, "alice", "approver", "").await;
    add_staff(&s, "bob", "approver", "").await;
    let mut alice = staff_key(&s, "alice").await;
    let _bob = staff_key(&s, "bob").await;
    let (_, seed) = s.enroll_totp("u1").await;
    let a = held(&s, &btc("u1", "wa", "2"), &seed).await;
    let b = held(&s, &btc("u1", "wb", "20"), &seed).await;

    // Ceremonies for both; the key signs B's challenge, which is answered
    // on A's ceremony.
    let ca = begin_decision(&s, &a, "alice", "approve").await.unwrap();
    let cb = begin_decision(&s, &b, "alice", "approve").await.unwrap();
    assert_ne!(ca.intent_sha256, cb.intent_sha256);
    let over_b = get(&mut alice, ORIGIN, &cb.options_json, |_| {}).unwrap();
    let st = complete_decision(&s, &a, "alice", &ca.ceremony_id, &over_b)
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(
        pending(&s, &a).await.approvals.is_empty(),
        "an assertion over another intent counted"
    );
    // B's ceremony for A's request is refused as well.
    let st = complete_decision(&s, &a, "alice", &cb.ceremony_id, &over_b)
        .await
        .unwrap_err();
    assert!(st.message().contains("was started for request"), "{}", st.message());
    // The signed evidence commits to B's intent: the library refuses it for A.
    assert!(pending(&s, &b).await.approvals.is_empty());
}

#[tokio::test]
async fn a_delayed_approval_is_refused_before_nbf_accepted_after_and_refused_once_cancelled() {
    let s = server().await;
    add_staff(&s, "carol", "approver", "").await;
    let mut carol = staff_key(&s, "carol").await;
    let (_, seed) = s.enroll_totp("u1").await;
    let cursor = 0;

    // Delay alone: the approval is issued now with nbf = now + 3600.
    let w1 = eth("u1", "e1", "5");
    let r = answer(&s, &w1, &seed).await;
    let t0 = s.clock.now_secs() - 30;
    assert!(!r.approval.is_empty());
    assert_eq!(r.not_before, t0 + 3600);
    let p1 = r.pending.unwrap();
    assert_eq!(state(&p1), pb::PendingState::Delayed);
    let claims = claims_of(&r.approval);
    assert_eq!(claims.nbf, Some(t0 + 3600));
    let st = redeem(&s, &r.approval, &w1).await.unwrap_err();
    assert_eq!(reason(&st), "APPROVAL_NOT_YET_VALID", "{st:?}");

    // A second one, cancelled by the user with a factor.
    let w2 = eth("u1", "e2", "6");
    let r2 = answer(&s, &w2, &seed).await;
    let id2 = r2.pending.unwrap().request_id;
    let cancel_intent = pb::Intent {
        action: "cancel_approval".into(),
        user_id: "u1".into(),
        memo: id2.clone(),
        ..Default::default()
    };
    let cancel_token = s.approve(&cancel_intent, &seed).await;
    let p = s
        .approvals("frontend")
        .await
        .cancel_approval(pb::CancelApprovalRequest {
            request_id: id2.clone(),
            approval: cancel_token.clone(),
        })
        .await
        .expect("user cancels")
        .into_inner();
    assert_eq!(state(&p), pb::PendingState::Cancelled);
    assert_eq!(p.closed_by, "user");
    // The cancel approval was used up.
    let st = s
        .approvals("frontend")
        .await
        .cancel_approval(pb::CancelApprovalRequest {
            request_id: id2.clone(),
            approval: cancel_token,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);

    // A third, cancelled by a staff member with their key.
    let w3 = eth("u1", "e3", "7");
    let r3 = answer(&s, &w3, &seed).await;
    let id3 = r3.pending.unwrap().request_id;
    let p = decide(&s, &id3, "carol", "cancel", &mut carol)
        .await
        .expect("staff cancels");
    assert_eq!(state(&p), pb::PendingState::Cancelled);
    assert_eq!(p.closed_by, "staff:carol");

    // After the delay: the first redeems, the cancelled ones never do.
    s.clock.advance(3600);
    let late_cancel = decide(&s, &p1.request_id, "carol", "cancel", &mut carol)
        .await
        .unwrap_err();
    assert_eq!(
        reason(&late_cancel),
        "REQUEST_CLOSED",
        "cancelled after nbf: {late_cancel:?}"
    );

    // Offline: the signed cancellation list, issued after nbf.
    let list = s
        .approvals("withdrawal-engine")
        .await
        .get_cancellations(pb::GetCancellationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let verifier = sigil_verify::Verifier::new(&s.sigil().signer().jwks(), "sigil", "withdrawal-engine").unwrap();
    let now = s.clock.now_secs();
    let ok = verifier.verify_delayed_for(&r.approval, &domain_intent(&w1), &list.cancellations, now);
    assert!(ok.is_ok(), "{ok:?}");
    let refused = verifier.verify_delayed_for(&r2.approval, &domain_intent(&w2), &list.cancellations, now);
    assert_eq!(refused.unwrap_err(), sigil_verify::VerifyError::Cancelled);
    assert!(
        verifier.verify_for(&r.approval, &domain_intent(&w1), now).is_err(),
        "a delayed approval verified without a list"
    );

    redeem(&s, &r.approval, &w1).await.expect("redeems after nbf");
    for (token, w) in [(&r2.approval, &w2), (&r3.approval, &w3)] {
        let st = redeem(&s, token, w).await.unwrap_err();
        assert_eq!(reason(&st), "APPROVAL_CANCELLED", "{st:?}");
    }
    // Cancelling what was redeemed says so.
    let st = begin_decision(&s, &p1.request_id, "carol", "cancel").await.unwrap_err();
    assert_eq!(reason(&st), "APPROVAL_ALREADY_REDEEMED", "{st:?}");

    let events = s.collect_events(cursor).await;
    assert!(!events_of_kind(&events, "approval_cancelled").is_empty());
    let issued = events_of_kind(&events, "approval_issued");
    assert!(
        issued
            .iter()
            .any(|e| e.details.get("not_before") == Some(&(t0 + 3600).to_string())),
        "{issued:?}"
    );
    // Listed per user while pending.
    let listed = s
        .approvals("frontend")
        .await
        .list_pending_approvals(pb::ListPendingApprovalsRequest {
            user_id: "u1".into(),
            include_closed: true,
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(listed.len(), 3);
}

#[tokio::test]
async fn a_policy_change_needs_its_quorum_and_applies_only_after_the_delay() {
    let s = server().await;
    for id in ["alice", "bob", "carol"] {
        add_staff(&s, id, "admin", "").await;
    }
    let mut bob = staff_key(&s, "bob").await;
    let mut carol = staff_key(&s, "carol").await;
    // Two staff members with keys form the quorum: the third key needs them.
    let mut alice = staff_key(&s, "alice").await;
    let req = key_request(&s, "alice")
        .await
        .expect("alice's key waits for the quorum");
    let st = begin_decision(&s, &req, "alice", "approve").await.unwrap_err();
    assert_eq!(
        reason(&st),
        "STAFF_NOT_ALLOWED",
        "a waiting key approved itself: {st:?}"
    );
    decide(&s, &req, "bob", "approve", &mut bob).await.unwrap();
    assert!(key_request(&s, "alice").await.is_some(), "1 of 2 approved a staff key");
    let p = decide(&s, &req, "carol", "approve", &mut carol).await.unwrap();
    assert_eq!(state(&p), pb::PendingState::Activated);
    assert!(key_request(&s, "alice").await.is_none());
    let (_, seed) = s.enroll_totp("u1").await;
    let mut api = staff_api(&s, "admin").await;
    let v1 = api.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner();
    assert_eq!(v1.version, 1);

    // The new policy drops the BTC quorum.
    let new_text = policy(3600).replace(
        "required = 2\n[[actions.withdrawal.quorum]]",
        "required = 1\n[[actions.withdrawal.quorum]]",
    );
    assert_ne!(new_text, policy(3600));
    let papi = api.clone();
    let propose = move |text: String| {
        let mut api = papi.clone();
        async move {
            api.propose_policy(pb::ProposePolicyRequest {
                proposed_by: "alice".into(),
                policy_text: text,
            })
            .await
            .map(|r| r.into_inner())
        }
    };

    // Without quorum: one approval, then the request expires; never active.
    let lonely = propose(new_text.clone()).await.expect("propose");
    decide(&s, &lonely.request_id, "alice", "approve", &mut alice)
        .await
        .unwrap();
    // One person counts once, whoever proposed.
    let st = decide(&s, &lonely.request_id, "alice", "approve", &mut alice)
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "STAFF_NOT_ALLOWED");
    s.clock.advance(86_400);
    sweep(&s).await;
    assert_eq!(state(&pending(&s, &lonely.request_id).await), pb::PendingState::Expired);
    assert_eq!(
        api.get_policy(pb::GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );

    // With quorum: scheduled, not active before the delay.
    let p = propose(new_text.clone()).await.expect("propose again");
    decide(&s, &p.request_id, "bob", "approve", &mut bob).await.unwrap();
    let q = decide(&s, &p.request_id, "carol", "approve", &mut carol).await.unwrap();
    assert_eq!(state(&q), pb::PendingState::Delayed);
    s.clock.advance(7199);
    sweep(&s).await;
    assert_eq!(
        api.get_policy(pb::GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    let held = answer(&s, &btc("u1", "before", "2"), &seed).await;
    assert!(
        held.pending.is_some(),
        "the old policy stopped applying before the delay ended"
    );
    s.clock.advance(1);
    sweep(&s).await;
    let v2 = api.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.policy_text, new_text);
    assert_eq!(state(&pending(&s, &p.request_id).await), pb::PendingState::Activated);
    // It applies: 2 BTC now needs 1 staff approval instead of 2.
    let r = answer(&s, &btc("u1", "after", "2"), &seed).await;
    assert_eq!(r.pending.unwrap().quorum[0].required, 1);

    // A third change, approved and then cancelled during its delay.
    let p3 = propose(policy(60)).await.unwrap();
    decide(&s, &p3.request_id, "bob", "approve", &mut bob).await.unwrap();
    decide(&s, &p3.request_id, "carol", "approve", &mut carol)
        .await
        .unwrap();
    decide(&s, &p3.request_id, "bob", "cancel", &mut bob)
        .await
        .expect("cancel during the delay");
    s.clock.advance(7200);
    sweep(&s).await;
    assert_eq!(
        api.get_policy(pb::GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );

    let events = s.collect_events(0).await;
    for kind in [
        "policy_change_proposed",
        "policy_change_approved",
        "policy_change_activated",
    ] {
        assert!(!events_of_kind(&events, kind).is_empty(), "no {kind} event");
    }
}

#[tokio::test]
async fn stale_quorum_requests_expire_with_an_event() {
    let s = server().await;
    add_staff(&s, "alice", "approver", "").await;
    let mut alice = staff_key(&s, "alice").await;
    let (_, seed) = s.enroll_totp("u1").await;
    let id = held(&s, &btc("u1", "w", "2"), &seed).await;
    s.clock.advance(86_400 - 31);
    sweep(&s).await;
    assert_eq!(state(&pending(&s, &id).await), pb::PendingState::AwaitingQuorum);
    s.clock.advance(2);
    // Past its deadline it takes no approval, even before the sweep runs.
    let st = decide(&s, &id, "alice", "approve", &mut alice).await.unwrap_err();
    assert_eq!(reason(&st), "REQUEST_CLOSED");
    sweep(&s).await;
    let p = pending(&s, &id).await;
    assert_eq!(state(&p), pb::PendingState::Expired);
    let events = s.collect_events(0).await;
    let expired = events_of_kind(&events, "quorum_request_expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].details.get("request_id"), Some(&id));
}

#[tokio::test]
async fn bad_staff_and_policy_input_is_refused_naming_the_problem_and_writes_nothing() {
    let s = server().await;
    add_staff(&s, "alice", "approver", "").await;
    add_staff(&s, "bob", "approver", "").await;
    add_staff(&s, "carol", "approver", "").await;
    let _alice = staff_key(&s, "alice").await;
    let (_, seed) = s.enroll_totp("u1").await;
    let id = held(&s, &btc("u1", "w", "2"), &seed).await;
    let before = snapshot_but_attempts(s.sigil());
    let mut api = staff_api(&s, "admin").await;

    // Unknown staff id.
    let st = begin_decision(&s, &id, "mallory", "approve").await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert!(st.message().contains("unknown staff id 'mallory'"), "{}", st.message());
    // A staff member outside the rule's pool.
    let st = begin_decision(&s, &id, "carol", "approve").await.unwrap_err();
    assert_eq!(reason(&st), "STAFF_NOT_ALLOWED");
    assert!(st.message().contains("not among the approvers"), "{}", st.message());
    // A caller of another role.
    let st = StaffServiceClient::new(s.channel("frontend").await)
        .begin_staff_decision(pb::BeginStaffDecisionRequest {
            request_id: id.clone(),
            staff_id: "alice".into(),
            decision: decision("approve"),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    // A staff member of another role.
    let st = api
        .add_staff(pb::AddStaffRequest {
            staff_id: "eve".into(),
            role: "frontend".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("'frontend'"), "{}", st.message());

    let papi = api.clone();
    let propose = move |text: String| {
        let mut api = papi.clone();
        async move {
            api.propose_policy(pb::ProposePolicyRequest {
                proposed_by: "alice".into(),
                policy_text: text,
            })
            .await
        }
    };
    // A policy naming an unknown staff member.
    let st = propose(policy(60).replace("[\"alice\", \"bob\"]", "[\"alice\", \"nobody\"]"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("staff id 'nobody'"), "{}", st.message());
    // A quorum larger than its pool.
    let st = propose(policy(60).replace("required = 2\n[[actions", "required = 3\n[[actions"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("larger than the staff pool"), "{}", st.message());
    // A delay beyond the configured maximum.
    let st = propose(policy(40 * 86_400)).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(
        st.message().contains("beyond the configured maximum"),
        "{}",
        st.message()
    );
    // A governance one person could pass.
    let st = propose(policy(60).replace("[governance]\nrequired = 2", "[governance]\nrequired = 1"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("no single insider"), "{}", st.message());
    // Not TOML.
    let st = propose("[actions.withdrawal\n".into()).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    // A decision without a decision.
    let st = staff_api(&s, "approver")
        .await
        .begin_staff_decision(pb::BeginStaffDecisionRequest {
            request_id: id.clone(),
            staff_id: "alice".into(),
            decision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(snapshot_but_attempts(s.sigil()), before, "bad input wrote something");

    // The same checks hold for the configured first version.
    let cfg = sigil::config::Config {
        policy: sigil::protect::policy::Policy::from_toml(&policy(40 * 86_400)).unwrap(),
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("beyond the configured maximum"));
    let e = sigil::protect::policy::Policy::from_toml(
        &policy(60).replace("required = 2\n[[actions", "required = 3\n[[actions"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("larger than the staff pool"), "{e}");
}

#[tokio::test]
async fn a_removed_staff_key_stops_counting_and_a_new_key_waits_for_its_hold() {
    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.quorum.staff_key_hold_seconds = 600;
        c.policy = sigil::protect::policy::Policy::from_toml(&policy(3600)).unwrap();
    })
    .await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    let (_, seed) = s.enroll_totp("u1").await;
    let id = held(&s, &btc("u1", "w", "2"), &seed).await;

    // Within the hold the new keys do not count.
    let st = begin_decision(&s, &id, "alice", "approve").await.unwrap_err();
    assert_eq!(reason(&st), "NO_USABLE_FACTOR");
    assert!(st.message().contains("counts from"), "{}", st.message());
    s.clock.advance(600);
    let p = decide(&s, &id, "alice", "approve", &mut alice).await.unwrap();
    assert_eq!(p.approvals.len(), 1);

    // alice's key is reported stolen: removed, and what it approved on a
    // request still waiting no longer counts.
    let cred = p.approvals[0].credential_id.clone();
    let mut api = staff_api(&s, "admin").await;
    let st = api
        .remove_staff(pb::RemoveStaffRequest {
            staff_id: "alice".into(),
            credential_id: cred.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "a removal without a reason");
    api.remove_staff(pb::RemoveStaffRequest {
        staff_id: "alice".into(),
        credential_id: cred.clone(),
        reason: "key reported stolen".into(),
    })
    .await
    .expect("remove key");
    assert!(
        pending(&s, &id).await.approvals.is_empty(),
        "the removed key's approval still counts"
    );
    let keys = staff_keys(&s).await;
    assert!(
        keys.keys
            .iter()
            .any(|k| k.credential_id == cred && k.removed_at == Some(s.clock.now_secs())),
        "a removed key is not published with its removal time"
    );
    // bob alone is 1 of 2.
    let p = decide(&s, &id, "bob", "approve", &mut bob).await.unwrap();
    assert_eq!(state(&p), pb::PendingState::AwaitingQuorum);
    let st = begin_decision(&s, &id, "alice", "approve").await.unwrap_err();
    assert_eq!(reason(&st), "NO_USABLE_FACTOR");
    let st = api
        .remove_staff(pb::RemoveStaffRequest {
            staff_id: "alice".into(),
            credential_id: cred,
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
}

#[tokio::test]
async fn a_delayed_approval_is_refused_one_second_before_nbf_even_within_the_verifier_leeway() {
    let s = server().await;
    let (_, seed) = s.enroll_totp("u1").await;
    let w = eth("u1", "e1", "5");
    let r = answer(&s, &w, &seed).await;
    let nbf = r.not_before;
    // The verifier's leeway (5 s) lets the token through; the record's
    // exact nbf does not.
    s.clock.advance(nbf - 2 - s.clock.now_secs());
    let st = redeem(&s, &r.approval, &w).await.unwrap_err();
    assert_eq!(reason(&st), "APPROVAL_NOT_YET_VALID", "{st:?}");
    assert!(
        st.message().contains("delayed until"),
        "refused by the leeway, not the record: {}",
        st.message()
    );
    s.clock.advance(2);
    redeem(&s, &r.approval, &w).await.expect("redeems at nbf");
    // Cancelling it now says it was redeemed, and writes nothing.
    add_staff(&s, "carol", "approver", "").await;
    let _carol = staff_key(&s, "carol").await;
    let before = snapshot_but_attempts(s.sigil());
    let st = begin_decision(&s, &r.pending.unwrap().request_id, "carol", "cancel")
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "APPROVAL_ALREADY_REDEEMED", "{st:?}");
    assert_eq!(
        snapshot_but_attempts(s.sigil()),
        before,
        "a refused cancellation wrote something"
    );
}

#[tokio::test]
async fn staff_approvals_of_a_user_whose_factors_were_revoked_issue_nothing() {
    let s = server().await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    let (_, seed) = s.enroll_totp("u1").await;
    let id = held(&s, &btc("u1", "w", "2"), &seed).await;
    decide(&s, &id, "alice", "approve", &mut alice).await.unwrap();
    s.admin()
        .await
        .revoke_factors(pb::RevokeFactorsRequest {
            all: false,
            user_ids: vec!["u1".into()],
            reason: "account taken over".into(),
        })
        .await
        .unwrap();
    let st = decide(&s, &id, "bob", "approve", &mut bob).await.unwrap_err();
    assert_eq!(reason(&st), "SUPERSEDED", "{st:?}");
    let p = pending(&s, &id).await;
    assert!(
        p.approval.is_empty() && p.jti.is_empty(),
        "an approval was issued for a revoked user"
    );
}

#[tokio::test]
async fn a_policy_change_proposed_on_an_older_version_is_cancelled_not_applied() {
    let s = server().await;
    for id in ["alice", "bob"] {
        add_staff(&s, id, "admin", "").await;
    }
    let mut alice = staff_key(&s, "alice").await;
    let mut bob = staff_key(&s, "bob").await;
    let mut api = staff_api(&s, "admin").await;
    let papi = api.clone();
    let propose = move |text: String| {
        let mut api = papi.clone();
        async move {
            api.propose_policy(pb::ProposePolicyRequest {
                proposed_by: "alice".into(),
                policy_text: text,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    // Two changes on version 1, the second approved an hour later.
    let first = propose(policy(60)).await;
    let second = propose(policy(120)).await;
    for id in [&first.request_id] {
        decide(&s, id, "alice", "approve", &mut alice).await.unwrap();
        decide(&s, id, "bob", "approve", &mut bob).await.unwrap();
    }
    s.clock.advance(3600);
    for id in [&second.request_id] {
        decide(&s, id, "alice", "approve", &mut alice).await.unwrap();
        decide(&s, id, "bob", "approve", &mut bob).await.unwrap();
    }
    s.clock.advance(3600);
    sweep(&s).await;
    assert_eq!(
        api.get_policy(pb::GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );
    s.clock.advance(3600);
    sweep(&s).await;
    // The second was made for version 1: it would undo the first.
    let p = pending(&s, &second.request_id).await;
    assert_eq!(state(&p), pb::PendingState::Cancelled);
    assert!(
        p.closed_by.contains("superseded by policy version 2"),
        "{}",
        p.closed_by
    );
    let v = api.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner();
    assert_eq!(v.version, 2);
    assert_eq!(v.policy_text, policy(60));
}

#[tokio::test]
async fn one_key_belongs_to_one_person_and_a_removed_staff_id_is_never_reused() {
    let s = server().await;
    add_staff(&s, "alice", "approver", "").await;
    add_staff(&s, "mallory", "approver", "").await;
    // The same credential offered for two staff members.
    let mut key = RingKey::new();
    key.fixed_id = Some(vec![7u8; 16]);
    let mut api = staff_api(&s, "admin").await;
    for (who, ok) in [("alice", true), ("mallory", false)] {
        let b = api
            .begin_staff_key_registration(pb::BeginStaffKeyRegistrationRequest { staff_id: who.into() })
            .await
            .unwrap()
            .into_inner();
        let rsp = create(&mut key, ORIGIN, &b.options_json, |_| {}).unwrap();
        let r = api
            .finish_staff_key_registration(pb::FinishStaffKeyRegistrationRequest {
                staff_id: who.into(),
                ceremony_id: b.ceremony_id,
                response_json: rsp,
            })
            .await;
        assert_eq!(r.is_ok(), ok, "{who}: {r:?}");
        if !ok {
            let st = r.unwrap_err();
            assert!(
                st.message().contains("already registered for staff member 'alice'"),
                "{}",
                st.message()
            );
        }
    }
    // A removed id stays taken.
    api.remove_staff(pb::RemoveStaffRequest {
        staff_id: "mallory".into(),
        credential_id: String::new(),
        reason: "left".into(),
    })
    .await
    .unwrap();
    let st = api
        .add_staff(pb::AddStaffRequest {
            staff_id: "mallory".into(),
            role: "approver".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(st.message().contains("never given to someone else"), "{}", st.message());
    // Nor does a removed staff member register a key or propose a policy.
    let st = api
        .begin_staff_key_registration(pb::BeginStaffKeyRegistrationRequest {
            staff_id: "mallory".into(),
        })
        .await
        .unwrap_err();
    assert!(st.message().contains("was removed"), "{}", st.message());
    let st = api
        .propose_policy(pb::ProposePolicyRequest {
            proposed_by: "mallory".into(),
            policy_text: policy(60),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("'mallory' was removed"), "{}", st.message());
}

#[tokio::test]
async fn a_restore_closes_requests_from_before_it_and_staff_register_their_keys_again() {
    let mut s = server().await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    let (_, seed) = s.enroll_totp("u1").await;
    let w = btc("u1", "w", "2");
    let id = held(&s, &w, &seed).await;
    decide(&s, &id, "alice", "approve", &mut alice).await.unwrap();
    s.clock.advance(30);
    let file = s._dir.path().join("sigil.backup");
    crate::support::lifecycle::backup_to(&s, &file).await;
    // After the backup the user cancels it.
    let cancel = pb::Intent {
        action: "cancel_approval".into(),
        user_id: "u1".into(),
        memo: id.clone(),
        ..Default::default()
    };
    let token = s.approve(&cancel, &seed).await;
    s.approvals("frontend")
        .await
        .cancel_approval(pb::CancelApprovalRequest {
            request_id: id.clone(),
            approval: token,
        })
        .await
        .unwrap();
    s.stop().await;
    sigil::backup::restore(&file, &s.cfg.store.path, s.clock.now_secs()).unwrap();
    // (TOTP steps from before the restore are refused after it.)
    s.clock.advance(60);
    s.restart().await;

    // The restored request is open again in the store, but closed to
    // decisions, and the sweep closes it.
    let st = begin_decision(&s, &id, "bob", "approve").await.unwrap_err();
    assert_eq!(reason(&st), "SUPERSEDED", "{st:?}");
    sweep(&s).await;
    let p = pending(&s, &id).await;
    assert_eq!(state(&p), pb::PendingState::Cancelled);
    assert!(p.closed_by.contains("restored"), "{}", p.closed_by);
    assert!(p.approval.is_empty());
    // Keys from before the restore answer nothing until registered again.
    let id2 = held(&s, &btc("u1", "w2", "3"), &seed).await;
    let st = begin_decision(&s, &id2, "bob", "approve").await.unwrap_err();
    assert_eq!(reason(&st), "NO_USABLE_FACTOR", "{st:?}");
    let mut bob2 = staff_key(&s, "bob").await;
    let mut alice2 = staff_key(&s, "alice").await;
    decide(&s, &id2, "bob", "approve", &mut bob2).await.unwrap();
    let p = decide(&s, &id2, "alice", "approve", &mut alice2).await.unwrap();
    assert_eq!(state(&p), pb::PendingState::Issued);
    // The old keys stay refused.
    let st = decide(&s, &id2, "bob", "approve", &mut bob).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
}

#[tokio::test]
async fn staff_approvals_wait_for_the_staff_quorum_and_nobody_approves_their_own_new_key() {
    let s = server().await;
    add_staff(&s, "alice", "approver", "").await;
    add_staff(&s, "bob", "approver", "").await;
    add_staff(&s, "carol", "approver", "").await;
    let mut alice = staff_key(&s, "alice").await;
    let (_, seed) = s.enroll_totp("u1").await;
    let id = held(&s, &btc("u1", "w", "2"), &seed).await;

    // One person holds a key, the governance quorum is two: her approval
    // does not count yet, and nothing is recorded; cancelling stays open.
    let st = begin_decision(&s, &id, "alice", "approve").await.unwrap_err();
    assert_eq!(reason(&st), "QUORUM_NOT_MET", "{st:?}");
    assert!(st.message().contains("not formed"), "{}", st.message());
    assert!(pending(&s, &id).await.approvals.is_empty());
    begin_decision(&s, &id, "alice", "cancel")
        .await
        .expect("cancelling needs no formed quorum");

    // A second person with a key forms it: approvals count from then on.
    let mut bob = staff_key(&s, "bob").await;
    let p = decide(&s, &id, "alice", "approve", &mut alice)
        .await
        .expect("alice approves");
    assert_eq!(p.approvals.len(), 1);

    // Once formed, a new key waits for other staff members; its owner's
    // own approval is refused.
    let _carol = staff_key(&s, "carol").await;
    let kr = key_request(&s, "carol").await.expect("carol's key waits for approval");
    let st = begin_decision(&s, &kr, "carol", "approve").await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert_eq!(reason(&st), "STAFF_NOT_ALLOWED", "{st:?}");
    assert!(st.message().contains("own new key"), "{}", st.message());
    decide(&s, &kr, "alice", "approve", &mut alice).await.unwrap();
    let p = decide(&s, &kr, "bob", "approve", &mut bob).await.unwrap();
    assert_eq!(state(&p), pb::PendingState::Activated, "{p:?}");
    assert_eq!(key_request(&s, "carol").await, None, "carol's key is approved");
}

#[tokio::test]
async fn a_cloned_staff_key_is_removed_and_what_it_approved_is_withdrawn() {
    let s = server().await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    // A copy of alice's key (its state, counter included).
    let mut copy = SoftToken::from_cbor(&alice.to_cbor().unwrap()).unwrap();
    let (_, seed) = s.enroll_totp("u1").await;
    let x = held(&s, &btc("u1", "wx", "2"), &seed).await;
    let y = held(&s, &btc("u1", "wy", "3"), &seed).await;
    let cursor = s.collect_events(0).await.last().map_or(0, |e| e.cursor);

    // The copy approves X; the original then shows the same counter on Y.
    decide(&s, &x, "alice", "approve", &mut copy)
        .await
        .expect("the copy approves");
    assert_eq!(pending(&s, &x).await.approvals.len(), 1);
    let st = decide(&s, &y, "alice", "approve", &mut alice).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert_eq!(reason(&st), "FACTOR_SUSPECTED_CLONED", "{st:?}");

    // X lost alice's approval; bob's alone does not issue it.
    assert!(
        pending(&s, &x).await.approvals.is_empty(),
        "the clone's approval still counts"
    );
    let p = decide(&s, &x, "bob", "approve", &mut bob).await.unwrap();
    assert_eq!(state(&p), pb::PendingState::AwaitingQuorum);
    assert!(p.approval.is_empty());
    // The key answers nothing any more, copy or original.
    let st = begin_decision(&s, &x, "alice", "approve").await.unwrap_err();
    assert_eq!(reason(&st), "NO_USABLE_FACTOR", "{st:?}");
    let listed = staff_api(&s, "admin")
        .await
        .list_staff(pb::ListStaffRequest {})
        .await
        .unwrap()
        .into_inner()
        .staff;
    let k = &listed.iter().find(|m| m.staff_id == "alice").unwrap().keys[0];
    assert!(k.suspected_cloned && k.removed_at > 0, "{k:?}");
    let events = s.collect_events(cursor).await;
    let change = |c: &str| -> Vec<pb::Event> {
        events_of_kind(&events, "staff_changed")
            .into_iter()
            .filter(|e| e.details.get("change").map(String::as_str) == Some(c))
            .collect()
    };
    assert_eq!(change("key_suspected_cloned").len(), 1, "{events:?}");
    let withdrawn = change("approvals_withdrawn");
    assert_eq!(withdrawn.len(), 1, "{events:?}");
    assert!(
        withdrawn[0].details["approvals_withdrawn"].contains(&x),
        "{:?}",
        withdrawn[0]
    );
}

#[tokio::test]
async fn a_delayed_approval_from_before_a_restore_is_cancelled_and_listed() {
    let mut s = server().await;
    let (_, seed) = s.enroll_totp("u1").await;
    // One delayed approval redeemed before the backup, one waiting.
    let w0 = eth("u1", "e0", "5");
    let r0 = answer(&s, &w0, &seed).await;
    s.clock.advance(3600);
    redeem(&s, &r0.approval, &w0).await.expect("redeemed after nbf");
    let w1 = eth("u1", "e1", "6");
    let r1 = answer(&s, &w1, &seed).await;
    let id1 = r1.pending.clone().unwrap().request_id;
    let file = s._dir.path().join("sigil.backup");
    crate::support::lifecycle::backup_to(&s, &file).await;
    s.stop().await;
    sigil::backup::restore(&file, &s.cfg.store.path, s.clock.now_secs()).unwrap();
    s.clock.advance(60);
    s.restart().await;
    sweep(&s).await;

    // What happened to it after the backup is unknown: it is cancelled,
    // refused by RedeemApproval after its nbf, and in the signed list.
    let p = pending(&s, &id1).await;
    assert_eq!(state(&p), pb::PendingState::Cancelled);
    assert!(p.closed_by.contains("restored"), "{}", p.closed_by);
    s.clock.advance(3600);
    let st = redeem(&s, &r1.approval, &w1).await.unwrap_err();
    assert_eq!(reason(&st), "APPROVAL_CANCELLED", "{st:?}");
    let list = s
        .approvals("withdrawal-engine")
        .await
        .get_cancellations(pb::GetCancellationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let verifier = sigil_verify::Verifier::new(&s.sigil().signer().jwks(), "sigil", "withdrawal-engine").unwrap();
    let refused = verifier.verify_delayed_for(
        &r1.approval,
        &domain_intent(&w1),
        &list.cancellations,
        s.clock.now_secs(),
    );
    assert_eq!(refused.unwrap_err(), sigil_verify::VerifyError::Cancelled);
    // The one redeemed before the backup is left as it was.
    let p0 = pending(&s, &r0.pending.unwrap().request_id).await;
    assert_ne!(state(&p0), pb::PendingState::Cancelled);
}

#[tokio::test]
async fn the_staff_console_sees_only_staff_events_without_anti_phishing_codes() {
    let s = server().await;
    add_staff(&s, "alice", "approver", "").await;
    add_staff(&s, "bob", "approver", "").await;
    let (_, seed) = s.enroll_totp("u1").await;
    let apc = pb::Intent {
        action: "change_anti_phishing_code".into(),
        user_id: "u1".into(),
        memo: "blue-otter-42".into(),
        ..Default::default()
    };
    let tok = s.approve(&apc, &seed).await;
    s.account("frontend")
        .await
        .set_anti_phishing_code(pb::SetAntiPhishingCodeRequest {
            user_id: "u1".into(),
            code: "blue-otter-42".into(),
            approval: tok,
        })
        .await
        .expect("set anti-phishing code");
    // (A new code holds withdrawals for a day.)
    s.clock.advance(86_400 + 60);
    let id = held(&s, &btc("u1", "w", "2"), &seed).await;
    let all = s.collect_events(0).await;
    let staff = s.collect_events_as("approver", 0).await;
    assert!(
        all.iter()
            .any(|e| !e.details.get("notify").is_some_and(|n| n.contains("staff"))),
        "the test needs events not meant for staff: {all:?}"
    );
    assert!(
        staff.iter().any(|e| e.details.get("request_id") == Some(&id)),
        "the held request reached the console: {staff:?}"
    );
    assert!(
        all.iter().any(|e| e.anti_phishing_code == "blue-otter-42"),
        "the user's events carry the code: {all:?}"
    );
    for e in &staff {
        let notify = e.details.get("notify").cloned().unwrap_or_default();
        assert!(notify.split(' ').any(|w| w == "staff"), "not meant for staff: {e:?}");
        assert!(e.anti_phishing_code.is_empty(), "the console saw a code: {e:?}");
    }
    // The console does not acknowledge (it cannot hold up pruning).
    let st = s
        .events("approver")
        .await
        .ack_events(pb::AckEventsRequest {
            consumer: "console".into(),
            cursor: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
}

#[tokio::test]
async fn a_restore_of_a_backup_holding_an_expired_delayed_approval_sweeps_cleanly() {
    let mut s = server().await;
    let (_, seed) = s.enroll_totp("u1").await;
    let w = eth("u1", "e-old", "5");
    let r = answer(&s, &w, &seed).await;
    let id = r.pending.unwrap().request_id;
    // Past its delay, its redeem window and the day of grace: the sweep
    // purges the approval record; the request stays (30 days).
    s.clock.advance(3 * 86_400);
    sweep(&s).await;
    let file = s._dir.path().join("sigil.backup");
    crate::support::lifecycle::backup_to(&s, &file).await;
    s.stop().await;
    sigil::backup::restore(&file, &s.cfg.store.path, s.clock.now_secs()).unwrap();
    s.clock.advance(60);
    s.restart().await;
    // Nothing left to cancel: the sweep passes (it used to fail on every
    // run), and no cancellation is listed for it.
    sweep(&s).await;
    sweep(&s).await;
    let p = pending(&s, &id).await;
    assert_ne!(state(&p), pb::PendingState::Cancelled, "{p:?}");
    let st = redeem(&s, &r.approval, &w).await.unwrap_err();
    assert_ne!(st.code(), Code::Ok);
}

#[tokio::test]
async fn an_approval_by_a_key_flagged_since_does_not_complete_a_quorum_even_if_not_withdrawn() {
    use sigil::approval::quorum::StaffRecord;
    use sigil::store::{codec, Batch, Table};

    let s = server().await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    let (_, seed) = s.enroll_totp("u1").await;
    let id = held(&s, &btc("u1", "w", "2"), &seed).await;
    decide(&s, &id, "alice", "approve", &mut alice).await.unwrap();
    // Alice's key is flagged, and the write withdrawing its approvals never
    // landed (as when it keeps meeting concurrent changes).
    let store = s.sigil().store().clone();
    let v = store.get(Table::Staff, b"alice").unwrap().unwrap();
    let mut rec: StaffRecord = codec::decode(&v.value).unwrap();
    rec.keys[0].suspected_cloned = true;
    rec.keys[0].removed_at = Some(s.clock.now_secs());
    let mut b = Batch::new();
    b.update(Table::Staff, b"alice".to_vec(), v.version, codec::encode(&rec).unwrap());
    store.commit(&b).unwrap();
    assert_eq!(pending(&s, &id).await.approvals.len(), 1, "still listed on the request");

    // Bob's approval would complete 2 of 2: alice's no longer counts.
    let p = decide(&s, &id, "bob", "approve", &mut bob).await.unwrap();
    assert_eq!(state(&p), pb::PendingState::AwaitingQuorum, "{p:?}");
    assert!(p.approval.is_empty());
    let approvers: Vec<&str> = p.approvals.iter().map(|a| a.staff_id.as_str()).collect();
    assert_eq!(approvers, ["bob"]);
}
