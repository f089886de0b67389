//! Bad input: the right status, the field named, nothing written.
use sigil::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::calls::*;
use crate::support::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_intents_are_invalid_argument_naming_the_field_and_write_nothing() {
    let s = TestServer::start().await;
    let (_f, _seed) = s.enroll_totp("kate").await;
    let mut a = s.approvals("withdrawal-engine").await;
    let long = "x".repeat(257);
    type Mutate = Box<dyn Fn(&mut pb::Intent)>;
    let cases: Vec<(Mutate, &str)> = vec![
        (Box::new(|i| i.action = String::new()), "intent.action"),
        (Box::new(|i| i.action = "transfer".into()), "intent.action"),
        (Box::new(|i| i.user_id = String::new()), "intent.user_id"),
        (
            Box::new({
                let l = long.clone();
                move |i| i.user_id = l.clone()
            }),
            "intent.user_id",
        ),
        (Box::new(|i| i.withdrawal_id = String::new()), "intent.withdrawal_id"),
        (
            Box::new({
                let l = long.clone();
                move |i| i.withdrawal_id = l.clone()
            }),
            "intent.withdrawal_id",
        ),
        (
            Box::new({
                let l = long.clone();
                move |i| i.destination = l.clone()
            }),
            "intent.destination",
        ),
        (Box::new(|i| i.destination = String::new()), "intent.destination"),
        (Box::new(|i| i.amount = ".5".into()), "intent.amount"),
        (Box::new(|i| i.amount = "012".into()), "intent.amount"),
        (Box::new(|i| i.amount = "1.50".into()), "intent.amount"),
        (Box::new(|i| i.amount = "1.".into()), "intent.amount"),
        (Box::new(|i| i.amount = "+1".into()), "intent.amount"),
        (Box::new(|i| i.amount = "1e3".into()), "intent.amount"),
        (Box::new(|i| i.amount = "0".into()), "intent.amount"),
        (Box::new(|i| i.amount = "0.123456789".into()), "intent.amount"), // BTC has 8 decimals
        (Box::new(|i| i.asset = String::new()), "intent.asset"),
    ];
    let before = snapshot(s.sigil());
    for (mutate, field) in cases {
        let mut i = withdrawal("kate", "w1");
        mutate(&mut i);
        let st = assert_status(
            a.begin_approval(pb::BeginApprovalRequest {
                intent: Some(i),
                device: None,
            })
            .await,
            Code::InvalidArgument,
            field,
        );
        let br = st.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(br.field_violations[0].field, field);
    }
    let st = assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: None,
            device: None,
        })
        .await,
        Code::InvalidArgument,
        "intent",
    );
    assert!(st.get_details_bad_request().is_some());
    assert_eq!(before, snapshot(s.sigil()), "a rejected request writes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_proofs_and_unknown_things() {
    let s = TestServer::start().await;
    let (fid, seed) = s.enroll_totp("liam").await;
    let mut a = s.approvals("frontend").await;
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("liam", "w1")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let before = snapshot(s.sigil());
    for bad in ["", "12345", "1234567", "12a456"] {
        assert_status(
            a.complete_approval(totp_proof(&b.challenge_id, "liam", bad, "")).await,
            Code::InvalidArgument,
            "totp.code",
        );
    }
    let no_proof = pb::CompleteApprovalRequest {
        challenge_id: b.challenge_id.clone(),
        user_id: "liam".into(),
        proof: None,
    };
    assert_status(a.complete_approval(no_proof).await, Code::InvalidArgument, "proof");
    assert_status(
        a.complete_approval(totp_proof("", "liam", "123456", "")).await,
        Code::InvalidArgument,
        "challenge_id",
    );
    assert_status(
        a.complete_approval(totp_proof(&"c".repeat(300), "liam", "123456", ""))
            .await,
        Code::InvalidArgument,
        "challenge_id",
    );
    assert_status(
        a.complete_approval(totp_proof("ch_unknown", "liam", "123456", ""))
            .await,
        Code::NotFound,
        "ch_unknown",
    );
    assert_status(
        a.complete_approval(totp_proof(&b.challenge_id, "liam", &s.code(&seed, 0), "f_nope"))
            .await,
        Code::NotFound,
        "f_nope",
    );
    assert_eq!(before, snapshot(s.sigil()), "rejected requests write nothing");
    let mut e = s.approvals("withdrawal-engine").await;
    assert_status(
        e.redeem_approval(pb::RedeemApprovalRequest::default()).await,
        Code::InvalidArgument,
        "approval",
    );
    assert_status(
        e.redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of("not-a-jws"),
            idempotency_key: String::new(),
            approval: "not-a-jws".into(),
        })
        .await,
        Code::InvalidArgument,
        "approval",
    );
    let mut f = s.factors("frontend").await;
    assert_status(
        f.remove_factor(pb::RemoveFactorRequest {
            user_id: "liam".into(),
            factor_id: "f_unknown".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "f_unknown",
    );
    assert_status(
        f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
            user_id: "liam".into(),
            factor_id: fid,
            code: "123456".into(),
        })
        .await,
        Code::FailedPrecondition,
        "already active",
    );
    assert_status(
        f.begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: String::new(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "user_id",
    );
    assert_eq!(before, snapshot(s.sigil()), "rejected requests write nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn hsm_session_loss_recovers_and_key_loss_fails_closed() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("mia").await;
    // Sessions dropped under the server: it reconnects and keeps signing.
    s.sigil().signer().hsm().close_all_sessions().unwrap();
    let token = s.approve(&withdrawal("mia", "w1"), &seed).await;
    assert!(!token.is_empty());
    // The approval key disappears from the token: no approval, UNAVAILABLE, challenge not consumed.
    let mut a = s.approvals("frontend").await;
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("mia", "w2")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    s.sigil()
        .signer()
        .hsm()
        .destroy_key(&s.cfg.hsm.approval_key_label)
        .unwrap();
    // The attempt is counted before the code is checked and given back
    // when nothing could be issued: the records are as before (the
    // factor's version moves on, its content does not).
    let content = |s: &TestServer| {
        snapshot(s.sigil())
            .into_iter()
            .map(|(t, k, v, b)| (t.clone(), k, if t == "factors" { 0 } else { v }, b))
            .collect::<Vec<_>>()
    };
    let before = content(&s);
    let r = a
        .complete_approval(totp_proof(&b.challenge_id, "mia", &s.code(&seed, 0), ""))
        .await;
    assert_status(r, Code::Unavailable, "HSM");
    assert_eq!(before, content(&s), "nothing consumed when the HSM cannot sign");
}

/// A body that is not the message the method takes is the caller's fault:
/// INVALID_ARGUMENT naming the message, not INTERNAL; nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_request_bodies_are_invalid_argument() {
    let s = TestServer::start().await;
    s.enroll_totp("rob").await;
    let before = snapshot(s.sigil());
    for (path, body, name) in [
        (
            "/sigil.v1.ApprovalService/BeginApproval",
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            "sigil.v1.BeginApprovalRequest",
        ),
        (
            "/sigil.v1.ApprovalService/CompleteApproval",
            vec![0xff; 7],
            "sigil.v1.CompleteApprovalRequest",
        ),
        (
            "/sigil.v1.ApprovalService/RedeemApproval",
            vec![0x0a, 0x05, b'a'],
            "sigil.v1.RedeemApprovalRequest",
        ),
    ] {
        let st = raw_call(s.channel("withdrawal-engine").await, path, body).await;
        assert_eq!(st.code(), Code::InvalidArgument, "{path}: {st:?}");
        assert!(
            st.message()
                .contains(&format!("the request is not a valid {name} message")),
            "{path}: {}",
            st.message()
        );
    }
    assert_eq!(before, snapshot(s.sigil()), "nothing written");
}

/// Values are echoed cut short: a 64 KiB action comes back as a short
/// message that a default client can read, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn echoed_values_are_bounded() {
    let s = TestServer::start().await;
    s.enroll_totp("ria").await;
    let before = snapshot(s.sigil());
    let mut a = s.approvals("withdrawal-engine").await;
    let mut intent = withdrawal("ria", "w1");
    intent.action = "x".repeat(64 * 1024);
    let st = assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent),
            device: None,
        })
        .await,
        Code::InvalidArgument,
        "unknown action",
    );
    assert!(st.message().len() < 512, "{} bytes of message", st.message().len());
    assert!(st.message().contains("65536 bytes in all"), "{}", st.message());
    let mut intent = withdrawal("ria", "w2");
    intent.amount = format!("1{}", "0".repeat(40_000));
    let st = assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent),
            device: None,
        })
        .await,
        Code::InvalidArgument,
        "intent.amount",
    );
    assert!(st.message().len() < 512, "{} bytes of message", st.message().len());
    assert_eq!(before, snapshot(s.sigil()), "nothing written");
}

/// Only approvals that can be used: what the approval would let the caller
/// do is checked at BeginApproval, before the user is asked; nothing is
/// written for a refusal.
#[tokio::test(flavor = "multi_thread")]
async fn approvals_that_could_never_be_used_are_refused_at_begin() {
    let s = TestServer::start().await;
    s.enroll_totp("una").await;
    let mut a = s.approvals("frontend").await;
    let before = snapshot(s.sigil());
    let intent = |action: &str, memo: &str| pb::Intent {
        action: action.into(),
        user_id: "una".into(),
        memo: memo.into(),
        ..Default::default()
    };
    for (i, field, needle) in [
        (
            intent("remove_factor", "f_nosuchfactor"),
            "intent.memo",
            "has no factor",
        ),
        (
            intent("change_anti_phishing_code", ""),
            "intent.memo",
            "1 to 32 characters",
        ),
        (
            intent("change_anti_phishing_code", &"x".repeat(33)),
            "intent.memo",
            "1 to 32 characters",
        ),
        (
            intent("change_anti_phishing_code", "a\u{7}b"),
            "intent.memo",
            "control characters",
        ),
        (intent("enroll_factor", ""), "intent.memo", "<kind>:<nickname>"),
        (intent("enroll_factor", "sms:phone"), "intent.memo", "not a factor kind"),
        (
            pb::Intent {
                action: "add_address".into(),
                user_id: "una".into(),
                asset: "XRP".into(),
                network: "xrpl".into(),
                destination: "rNotAnXrplAddress".into(),
                ..Default::default()
            },
            "intent.destination",
            "",
        ),
        (
            pb::Intent {
                action: "add_address".into(),
                user_id: "una".into(),
                asset: "BTC".into(),
                network: "monero".into(),
                destination:
                    "4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skxNgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge"
                        .into(),
                ..Default::default()
            },
            "intent.network",
            "not configured",
        ),
    ] {
        let st = assert_status(
            a.begin_approval(pb::BeginApprovalRequest {
                intent: Some(i),
                device: None,
            })
            .await,
            Code::InvalidArgument,
            needle,
        );
        assert!(st.message().starts_with(field), "{}", st.message());
    }
    assert_eq!(before, snapshot(s.sigil()), "nothing written");
}
