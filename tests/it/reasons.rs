//! Every refusal names its reason (`google.rpc.ErrorInfo`, domain
//! `sigil.v1`) and, where waiting helps, when to retry (`retry_at` and
//! `google.rpc.RetryInfo`): a withdrawal engine tells the refusals apart
//! without reading English.
use std::time::Duration;

use sigil::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::harness::*;

/// The reason of a refusal, its `retry_at` (if any) and its RetryInfo delay.
fn reason_of(st: &tonic::Status) -> (String, Option<i64>, Option<Duration>) {
    let d = st.get_error_details();
    let info = d.error_info().unwrap_or_else(|| panic!("no ErrorInfo in {st:?}"));
    assert_eq!(info.domain, "sigil.v1");
    let retry_at = info
        .metadata
        .get("retry_at")
        .map(|v| v.parse().expect("retry_at is Unix seconds"));
    let delay = d.retry_info().and_then(|r| r.retry_delay);
    (info.reason.clone(), retry_at, delay)
}

/// BeginApproval of a withdrawal by ria to `dest`.
async fn ask(
    s: &TestServer,
    wid: &str,
    dest: &str,
) -> Result<tonic::Response<pb::BeginApprovalResponse>, tonic::Status> {
    let mut i = withdrawal("ria", wid);
    i.destination = dest.into();
    s.approvals("withdrawal-engine")
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(i),
            device: None,
        })
        .await
}

fn redeem(token: &str, key: &str) -> pb::RedeemApprovalRequest {
    pb::RedeemApprovalRequest {
        approval: token.into(),
        expected_intent: expected_of(token),
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_refused_by_the_protections_says_which_and_until_when() {
    const HOLD: i64 = 3 * 86_400;
    let s = TestServer::start_with(|c| c.protection.address_hold_seconds = HOLD).await;
    let (_, seed) = s.enroll_totp("ria").await;
    let lock_until = s.clock.now_secs() - 30 + 86_400; // enrolment locks withdrawals for a day
    s.whitelist("ria", &seed, "bitcoin", ADDR).await;
    let usable_at = s.clock.now_secs() - 30 + HOLD;
    let st = ask(&s, "wd-1", ADDR).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    let (reason, retry_at, delay) = reason_of(&st);
    assert_eq!(reason, "SECURITY_CHANGE_LOCK", "{st:?}");
    let retry_at = retry_at.expect("retry_at");
    assert!(
        (retry_at - lock_until).abs() <= 60,
        "lock ends {retry_at}, expected about {lock_until}"
    );
    assert!(delay.is_some_and(|d| d > Duration::from_secs(80_000)), "{delay:?}");

    // After the lock, the address is still in its hold.
    s.clock.advance(86_400 + 60);
    let st = ask(&s, "wd-2", ADDR).await.unwrap_err();
    let (reason, retry_at, delay) = reason_of(&st);
    assert_eq!(reason, "ADDRESS_ON_HOLD", "{st:?}");
    assert!((retry_at.expect("retry_at") - usable_at).abs() <= 60);
    assert!(delay.is_some());

    // An address never added.
    let other = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh";
    let st = ask(&s, "wd-3", other).await.unwrap_err();
    let (reason, retry_at, _) = reason_of(&st);
    assert_eq!(reason, "ADDRESS_NOT_WHITELISTED", "{st:?}");
    assert_eq!(retry_at, None, "waiting does not help a missing address");

    // Once the hold is over, the same request is approved.
    s.clock.advance(HOLD);
    ask(&s, "wd-4", ADDR).await.expect("hold over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redemption_refusals_tell_a_replay_from_an_expiry() {
    let s = TestServer::start().await;
    let (_, seed) = s.enroll_totp("rex").await;
    let mut a = s.approvals("withdrawal-engine").await;

    let token = s.approve(&withdrawal("rex", "wd-1"), &seed).await;
    a.redeem_approval(redeem(&token, "engine-wd-1"))
        .await
        .expect("first redemption");
    // The engine's own retry is a replay of its success...
    let again = a
        .redeem_approval(redeem(&token, "engine-wd-1"))
        .await
        .expect("own retry");
    assert!(again.into_inner().replayed);
    // ...another key is someone else's replay.
    let st = a.redeem_approval(redeem(&token, "someone-else")).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&st).0, "APPROVAL_ALREADY_REDEEMED", "{st:?}");

    let token = s.approve(&withdrawal("rex", "wd-2"), &seed).await;
    s.clock.advance(3_600);
    let st = a.redeem_approval(redeem(&token, "engine-wd-2")).await.unwrap_err();
    assert_eq!(reason_of(&st).0, "APPROVAL_EXPIRED", "{st:?}");

    // A tampered token does not verify.
    let token = s.approve(&withdrawal("rex", "wd-3"), &seed).await;
    // Another approval's signature on this one's header and claims.
    let donor = s.approve(&withdrawal("rex", "wd-4"), &seed).await;
    let (head, _) = token.rsplit_once('.').unwrap();
    let (_, sig) = donor.rsplit_once('.').unwrap();
    let st = a
        .redeem_approval(redeem(&format!("{head}.{sig}"), "engine-wd-3"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&st).0, "APPROVAL_INVALID", "{st:?}");

    // The engine's record differs from what was approved.
    let mut other = expected_of(&token).unwrap();
    other.amount = "0.6".into();
    let st = a
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: token.clone(),
            expected_intent: Some(other),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    let d = st.get_error_details();
    let info = d.error_info().unwrap();
    assert_eq!(info.reason, "INTENT_MISMATCH");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("amount"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_count_down_then_lock_with_a_retry_time() {
    let s = TestServer::start().await;
    let (_, _seed) = s.enroll_totp("lia").await;
    let mut a = s.approvals("withdrawal-engine").await;
    let mut seen = Vec::new();
    for n in 0..6 {
        let b = begin(&s, &withdrawal("lia", &format!("wd-{n}"))).await;
        let st = a
            .complete_approval(totp_proof(&b.challenge_id, "lia", "000000", ""))
            .await
            .unwrap_err();
        let d = st.get_error_details();
        let info = d.error_info().expect("ErrorInfo");
        seen.push((
            st.code(),
            info.reason.clone(),
            info.metadata.get("attempts_left").cloned(),
            d.retry_info().and_then(|r| r.retry_delay),
        ));
    }
    for (i, (code, reason, left, _)) in seen.iter().take(4).enumerate() {
        assert_eq!(*code, Code::PermissionDenied);
        assert_eq!(reason, "FACTOR_REJECTED");
        assert_eq!(left.as_deref(), Some((4 - i).to_string().as_str()));
    }
    // The fifth failure locks; the sixth is refused unchecked.
    for (code, reason, _, delay) in &seen[4..] {
        assert_eq!(*code, Code::ResourceExhausted);
        assert_eq!(reason, "FACTOR_LOCKED");
        assert!(delay.is_some_and(|d| d.as_secs() > 0), "{delay:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_names_its_end_and_bad_requests_list_every_field() {
    let s = TestServer::start().await;
    let (_, seed) = s.enroll_totp("sam").await;
    let until = s.clock.now_secs() + 7_200;
    s.admin()
        .await
        .suspend_approvals(pb::SuspendApprovalsRequest {
            all: false,
            user_ids: vec!["sam".into()],
            reason: "fraud review".into(),
            until,
        })
        .await
        .expect("suspend");
    let mut a = s.approvals("withdrawal-engine").await;
    let st = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("sam", "wd-1")),
            device: None,
        })
        .await
        .unwrap_err();
    let (reason, retry_at, delay) = reason_of(&st);
    assert_eq!(reason, "SUSPENDED", "{st:?}");
    assert_eq!(retry_at, Some(until));
    assert_eq!(delay, Some(Duration::from_secs(7_200)));
    s.clock.advance(7_200);
    s.approve(&withdrawal("sam", "wd-2"), &seed).await;

    // Several malformed fields: every one is named.
    let mut i = withdrawal("sam", "wd-3");
    i.user_id = String::new();
    i.amount = "1.50".into();
    i.memo = "a\nb".into();
    let st = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(i),
            device: None,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let d = st.get_error_details();
    let fields: Vec<&str> = d
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["intent.user_id", "intent.memo", "intent.amount"]);
    assert_eq!(d.error_info().unwrap().reason, "INVALID_ARGUMENT");

    // A role that may not call the RPC.
    let st = s
        .approvals("frontend")
        .await
        .redeem_approval(redeem("x.y.z", ""))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&st).0, "ROLE_NOT_ALLOWED");
}

/// The verifier crate's reasons are the ones the server sends.
#[test]
fn the_verifier_crate_knows_every_reason_the_server_sends() {
    for r in sigil_verify::Reason::ALL {
        assert_eq!(sigil::Reason::parse(r.as_str()), Some(*r));
    }
    assert_eq!(sigil_verify::VerifyError::Expired.reason().as_str(), "APPROVAL_EXPIRED");
}

/// A velocity rule that suspends fires even when an earlier check (here
/// the security-change lock after enrolment) refuses the withdrawal first:
/// the user is suspended and told, whichever check ran first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_velocity_suspension_fires_behind_an_earlier_refusal() {
    let s = TestServer::start_with(|c| {
        c.protection.require_whitelisted_address = false;
        c.policy = sigil::protect::policy::Policy::from_toml(
            r#"
            [actions.withdrawal]
            kinds = ["totp"]
            [[velocity]]
            asset = "BTC"
            max_amount_24h = "1"
            on_exceed = "suspend"
            "#,
        )
        .unwrap();
    })
    .await;
    s.enroll_totp("vic").await; // starts the security-change lock
    let cursor = s.collect_events(0).await.last().map(|e| e.cursor).unwrap_or(0);
    let mut big = withdrawal("vic", "wd-1");
    big.amount = "5".into();
    let mut a = s.approvals("withdrawal-engine").await;
    let st = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(big),
            device: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&st).0, "SECURITY_CHANGE_LOCK", "{st:?}");
    let events = s.collect_events(cursor).await;
    assert!(
        events.iter().any(|e| e.kind == "suspension_changed"),
        "no suspension event: {events:?}"
    );
    // The suspension is in force: even a small withdrawal after the lock is refused.
    s.clock.advance(2 * 86_400);
    let st = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("vic", "wd-2")),
            device: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&st).0, "SUSPENDED", "{st:?}");
}
