//! TOTP enrollment, verification, replay and lockout through the server.
use std::time::Duration;

use sigil::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_needs_a_correct_first_code_and_returns_uri_and_qr() {
    let s = TestServer::start().await;
    let mut f = s.factors("frontend").await;
    let e = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "alice".into(),
            nickname: "phone".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
    assert_eq!(seed.len(), 20, "160-bit secret");
    assert!(
        e.otpauth_uri.starts_with("otpauth://totp/Sigil:alice?secret="),
        "{}",
        e.otpauth_uri
    );
    assert!(e.otpauth_uri.contains(&e.secret_base32));
    assert!(String::from_utf8(e.qr_svg.clone()).unwrap().contains("<svg"));

    // Pending: no approval possible yet.
    let mut a = s.approvals("withdrawal-engine").await;
    let r = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("alice", "w1")),
            device: None,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "no active second factor");

    // Wrong code: refused, still pending.
    let wrong = if s.code(&seed, 0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let r = f
        .confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
            user_id: "alice".into(),
            factor_id: e.factor_id.clone(),
            code: wrong.into(),
        })
        .await;
    assert_status(r, Code::PermissionDenied, "not accepted");
    let list = f
        .list_factors(pb::ListFactorsRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.factors[0].state, pb::FactorState::Pending as i32);
    assert_eq!(list.factors[0].consecutive_failures, 1);

    let ok = f
        .confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
            user_id: "alice".into(),
            factor_id: e.factor_id.clone(),
            code: s.code(&seed, 0),
        })
        .await
        .unwrap()
        .into_inner();
    let fac = ok.factor.unwrap();
    assert_eq!(fac.state, pb::FactorState::Active as i32);
    assert_eq!(fac.consecutive_failures, 0);
    assert_eq!(fac.nickname, "phone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_is_accepted_once_and_older_steps_never() {
    let s = TestServer::start().await;
    let (fid, seed) = s.enroll_totp("bob").await;
    let mut a = s.approvals("frontend").await;
    let begin = |wid: &'static str| pb::BeginApprovalRequest {
        intent: Some(withdrawal("bob", wid)),
        device: None,
    };

    let c1 = a.begin_approval(begin("w1")).await.unwrap().into_inner();
    let code = s.code(&seed, 0);
    a.complete_approval(totp_proof(&c1.challenge_id, "bob", &code, &fid))
        .await
        .unwrap();

    // Same code, same step, fresh challenge: replay refused.
    let c2 = a.begin_approval(begin("w2")).await.unwrap().into_inner();
    let r = a
        .complete_approval(totp_proof(&c2.challenge_id, "bob", &code, &fid))
        .await;
    assert_status(r, Code::PermissionDenied, "already used");
    // The previous step's code is inside the window but older than the used step: refused.
    let r = a
        .complete_approval(totp_proof(&c2.challenge_id, "bob", &s.code(&seed, -1), &fid))
        .await;
    assert_status(r, Code::PermissionDenied, "not accepted");
    // The next step is accepted (one step ahead is inside the window).
    a.complete_approval(totp_proof(&c2.challenge_id, "bob", &s.code(&seed, 1), &fid))
        .await
        .unwrap();
    // And now the current step is older than the newest used one.
    let c3 = a.begin_approval(begin("w3")).await.unwrap().into_inner();
    let r = a
        .complete_approval(totp_proof(&c3.challenge_id, "bob", &s.code(&seed, 0), ""))
        .await;
    assert_status(r, Code::PermissionDenied, "not accepted");
    // Two steps ahead is outside the window.
    let r = a
        .complete_approval(totp_proof(&c3.challenge_id, "bob", &s.code(&seed, 2), ""))
        .await;
    assert_status(r, Code::PermissionDenied, "not accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn five_failures_lock_the_factor_with_growing_backoff() {
    let s = TestServer::start().await;
    let (_fid, seed) = s.enroll_totp("carol").await;
    let mut a = s.approvals("frontend").await;
    let c = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("carol", "w1")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let good = s.code(&seed, 0);
    let bad = if good == "123456" { "654321" } else { "123456" };
    for i in 0..4 {
        let r = a.complete_approval(totp_proof(&c.challenge_id, "carol", bad, "")).await;
        assert_status(r, Code::PermissionDenied, &format!("{} attempts left", 4 - i));
    }
    let st = assert_status(
        a.complete_approval(totp_proof(&c.challenge_id, "carol", bad, "")).await,
        Code::ResourceExhausted,
        "locked",
    );
    let retry = st
        .get_details_retry_info()
        .expect("RetryInfo detail")
        .retry_delay
        .expect("delay");
    assert_eq!(retry, Duration::from_secs(30));
    // While locked even the right code is refused, unchecked.
    let r = a
        .complete_approval(totp_proof(&c.challenge_id, "carol", &good, ""))
        .await;
    assert_status(r, Code::ResourceExhausted, "locked");
    // After the lock, one more failure locks twice as long.
    s.clock.advance(30);
    let st = assert_status(
        a.complete_approval(totp_proof(&c.challenge_id, "carol", bad, "")).await,
        Code::ResourceExhausted,
        "locked",
    );
    assert_eq!(
        st.get_details_retry_info().unwrap().retry_delay.unwrap(),
        Duration::from_secs(60)
    );
    // After that lock, the right code works and resets the counter.
    s.clock.advance(60);
    a.complete_approval(totp_proof(&c.challenge_id, "carol", &s.code(&seed, 0), ""))
        .await
        .unwrap();
    let mut f = s.factors("admin").await;
    let list = f
        .list_factors(pb::ListFactorsRequest {
            user_id: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.factors[0].consecutive_failures, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_factor_and_removal_need_step_up() {
    let s = TestServer::start().await;
    let (fid, seed) = s.enroll_totp("dave").await;
    let mut f = s.factors("frontend").await;
    // Enrolling another factor without an approval is refused and writes nothing.
    let before = snapshot(s.sigil());
    let r = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "dave".into(),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::PermissionDenied, "enroll_factor");
    assert_eq!(before, snapshot(s.sigil()));
    // A withdrawal approval is not an enroll_factor approval.
    let wd = s.approve(&withdrawal("dave", "w1"), &seed).await;
    let r = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "dave".into(),
            step_up_approval: wd,
            ..Default::default()
        })
        .await;
    assert_status(r, Code::PermissionDenied, "enroll_factor");
    let enroll = pb::Intent {
        action: "enroll_factor".into(),
        user_id: "dave".into(),
        memo: "totp:".into(),
        ..Default::default()
    };
    let tok = s.approve(&enroll, &seed).await;
    // An enroll_factor approval names what it enrolls: it answers nothing else.
    let r = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "dave".into(),
            nickname: "another app".into(),
            step_up_approval: tok.clone(),
            ..Default::default()
        })
        .await;
    assert_status(
        r,
        Code::PermissionDenied,
        "names 'totp:', this enrollment is 'totp:another app'",
    );
    let pending = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "dave".into(),
            step_up_approval: tok.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The step-up approval was redeemed by that call: it cannot be used twice.
    let r = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "dave".into(),
            step_up_approval: tok,
            ..Default::default()
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "already redeemed");

    // Removal needs a remove_factor approval naming this factor.
    let r = f
        .remove_factor(pb::RemoveFactorRequest {
            user_id: "dave".into(),
            factor_id: fid.clone(),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::PermissionDenied, "remove_factor");
    // An approval to remove a factor the user does not have is refused
    // before the user is asked.
    let mut a = s.approvals("frontend").await;
    assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: Some(pb::Intent {
                action: "remove_factor".into(),
                user_id: "dave".into(),
                memo: "f_someotherfactor".into(),
                ..Default::default()
            }),
            device: None,
        })
        .await,
        Code::InvalidArgument,
        "has no factor 'f_someotherfactor'",
    );
    // One for dave's other (pending) factor does not remove this one.
    let other = pb::Intent {
        action: "remove_factor".into(),
        user_id: "dave".into(),
        memo: pending.factor_id.clone(),
        ..Default::default()
    };
    let tok_other = s.approve(&other, &seed).await;
    let r = f
        .remove_factor(pb::RemoveFactorRequest {
            user_id: "dave".into(),
            factor_id: fid.clone(),
            step_up_approval: tok_other,
        })
        .await;
    assert_status(r, Code::PermissionDenied, "given for something else");
    let rm = pb::Intent {
        action: "remove_factor".into(),
        user_id: "dave".into(),
        memo: fid.clone(),
        ..Default::default()
    };
    let tok = s.approve(&rm, &seed).await;
    f.remove_factor(pb::RemoveFactorRequest {
        user_id: "dave".into(),
        factor_id: fid.clone(),
        step_up_approval: tok,
    })
    .await
    .unwrap();
    let list = f
        .list_factors(pb::ListFactorsRequest { user_id: "dave".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(list.factors.iter().all(|x| x.factor_id != fid));
}

/// Failed attempts sent at the same time are all counted: racing cannot buy
/// more guesses than the lockout allows.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_failures_are_all_counted() {
    let s = TestServer::start().await;
    let (_fid, seed) = s.enroll_totp("ola").await;
    let mut a = s.approvals("frontend").await;
    let c = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("ola", "w1")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let good = s.code(&seed, 0);
    let mut tasks = Vec::new();
    for i in 0..4u32 {
        let mut a = s.approvals("frontend").await;
        let ch = c.challenge_id.clone();
        let bad = format!("{:06}", (good.parse::<u32>().unwrap() + 1 + i) % 1_000_000);
        tasks.push(tokio::spawn(async move {
            a.complete_approval(totp_proof(&ch, "ola", &bad, "")).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    let list = s
        .factors("admin")
        .await
        .list_factors(pb::ListFactorsRequest { user_id: "ola".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.factors[0].consecutive_failures, 4,
        "every racing failure is counted"
    );
}

/// Attempts are counted before a code is compared: 200 wrong codes sent at
/// once on one challenge get exactly `lockout.max_failures` comparisons
/// (one audited refusal each); every other attempt is refused as locked,
/// unchecked, and the right code is refused too until the lock ends.
#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_guesses_get_max_failures_comparisons() {
    // On the blocking pool, as for a network HSM: hundreds of attempts are
    // checked at the same time, not a worker's worth.
    let s = TestServer::start_with(|c| {
        c.protection.require_whitelisted_address = false;
        c.protection.security_change_lock_seconds = 0;
        c.hsm.offload_calls = true;
        c.hsm.pool_size = 32;
    })
    .await;
    let max = s.cfg.lockout.max_failures as usize;
    let (fid, seed) = s.enroll_totp("gus").await;
    let c = begin(&s, &withdrawal("gus", "w1")).await;
    let good = s.code(&seed, 0);
    let channel = s.channel("frontend").await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let mut a = sigil::pb::approval_service_client::ApprovalServiceClient::new(channel.clone());
        let ch = c.challenge_id.clone();
        // Never the right code of any step in the window.
        let bad = loop {
            let n = (good.parse::<u32>().unwrap() + 7 + i * 4_999) % 1_000_000;
            let code = format!("{n:06}");
            if code != s.code(&seed, -1) && code != good && code != s.code(&seed, 1) {
                break code;
            }
        };
        tasks.push(tokio::spawn(async move {
            a.complete_approval(totp_proof(&ch, "gus", &bad, "")).await
        }));
    }
    let (mut wrong, mut locked) = (0, 0);
    for t in tasks {
        let st = t.await.unwrap().expect_err("a wrong code approved");
        match st.code() {
            Code::PermissionDenied => wrong += 1,
            Code::ResourceExhausted => locked += 1,
            other => panic!("unexpected refusal {other:?}: {}", st.message()),
        }
    }
    // The last comparison's refusal reports the lock it set.
    assert_eq!(wrong + locked, 200);
    assert!(wrong <= max, "{wrong} attempts reported as compared, at most {max}");
    let compared = s
        .sigil()
        .ops()
        .audit_entries(0, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| sigil::audit::AuditEntry::decode(&e.value).unwrap())
        .filter(|e| e.action == "factor.verify" && e.outcome == "refused" && e.details.get("factor_id") == Some(&fid))
        .count();
    println!("wrong {wrong}, locked {locked}, compared {compared}");
    assert_eq!(compared, max, "codes compared (audited refusals)");
    let list = s
        .factors("admin")
        .await
        .list_factors(pb::ListFactorsRequest { user_id: "gus".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.factors[0].consecutive_failures as usize, max);
    // Locked: even the right code is refused, unchecked.
    let mut a = s.approvals("frontend").await;
    assert_status(
        a.complete_approval(totp_proof(&c.challenge_id, "gus", &good, "")).await,
        Code::ResourceExhausted,
        "locked",
    );
}

/// A user holds at most `[protection] max_factors_per_user` factors:
/// beginning one more is refused (TOO_MANY_FACTORS, nothing written) until
/// one goes. Pending enrollments past their deadline neither count nor
/// stay: the next Begin deletes them (its audit entry says how many), so
/// no caller can grow what every approval of the user reads and rewrites.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_holds_a_bounded_number_of_factors() {
    let s = TestServer::start_with(|c| c.protection.max_factors_per_user = 3).await;
    let mut f = s.factors("frontend").await;
    let begin = |nickname: &str| pb::BeginTotpEnrollmentRequest {
        user_id: "carol".into(),
        nickname: nickname.into(),
        ..Default::default()
    };
    let mut pending = Vec::new();
    for i in 0..3 {
        let e = f
            .begin_totp_enrollment(begin(&format!("p{i}")))
            .await
            .unwrap()
            .into_inner();
        pending.push(e.factor_id);
    }
    let st = f.begin_totp_enrollment(begin("one-more")).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert_eq!(st.get_error_details().error_info().unwrap().reason, "TOO_MANY_FACTORS");
    assert!(
        st.message().contains("holds 3 factors") && st.message().contains("max_factors_per_user = 3"),
        "{}",
        st.message()
    );
    assert_eq!(factors(&s, "carol").await.len(), 3, "the refused Begin wrote nothing");

    // Removing one makes room; a removed pending factor is gone.
    f.remove_factor(pb::RemoveFactorRequest {
        user_id: "carol".into(),
        factor_id: pending.remove(0),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = f.begin_totp_enrollment(begin("p3")).await.unwrap().into_inner();
    pending.push(e.factor_id);
    assert!(f.begin_totp_enrollment(begin("one-more")).await.is_err());

    // Past their deadline the three pending ones no longer count, and the
    // next Begin deletes them: confirming one finds nothing.
    s.clock.advance(601);
    let before = crate::support::logs::audited(&s, "factor.enroll.begin").len();
    let e = f.begin_totp_enrollment(begin("fresh")).await.unwrap().into_inner();
    let begins = crate::support::logs::audited(&s, "factor.enroll.begin");
    assert_eq!(begins.len(), before + 1);
    let last = begins.last().unwrap();
    assert_eq!(
        last.details.get("expired_enrollments_removed").map(String::as_str),
        Some("3"),
        "{last:?}"
    );
    let st = f
        .confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
            user_id: "carol".into(),
            factor_id: pending[0].clone(),
            code: "123456".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let listed: Vec<String> = factors(&s, "carol").await.into_iter().map(|f| f.factor_id).collect();
    assert_eq!(listed, vec![e.factor_id.clone()]);
}

/// An active factor counts like a pending one: with room for one factor, a
/// user who holds an active factor is refused a second before any step-up
/// is asked for.
#[tokio::test(flavor = "multi_thread")]
async fn an_active_factor_counts_toward_the_most_a_user_holds() {
    let s = TestServer::start_with(|c| c.protection.max_factors_per_user = 1).await;
    s.enroll_totp("dora").await;
    let st = s
        .factors("frontend")
        .await
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "dora".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert_eq!(st.get_error_details().error_info().unwrap().reason, "TOO_MANY_FACTORS");
    assert_eq!(factors(&s, "dora").await.len(), 1);
}
