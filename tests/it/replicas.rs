//! Two real `sigild` processes sharing one PostgreSQL database and one
//! SoftHSM token, as replicas behind a load balancer: the one-time
//! properties hold across them.
//!
//! Needs `SIGIL_TEST_PG_DSN` (set by `make test`); skipped with a note
//! without it, unless `SIGIL_REQUIRE_PG=1`.
use std::time::Duration;

use sigil::client::connect_as;
use sigil::pb;
use sigil::pb::admin_service_client::AdminServiceClient;

use crate::support::daemon::*;
use crate::support::harness::*;
use crate::support::pg::*;

/// Two replicas over one database and one token.
struct Pair {
    _dir: tempfile::TempDir,
    /// The database both use.
    dsn: String,
    a: Daemon,
    b: Daemon,
}

async fn pair(extra_toml: &str) -> Option<Pair> {
    let dsn = pg_database("sigil_r")?;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{PG_TOML}{extra_toml}");
    prepare(dir.path(), &toml);
    let env = [("SIGIL_PG_DSN", dsn.as_str())];
    let a = start_daemon_with(dir.path(), "warn", &env);
    let b = start_daemon_with(dir.path(), "warn", &env);
    wait_ready(&a.url).await;
    wait_ready(&b.url).await;
    Some(Pair { _dir: dir, dsn, a, b })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_redeemed_50_times_over_two_replicas_succeeds_once_and_the_audit_chain_is_one() {
    let Some(p) = pair("").await else { return };
    let (seed, step) = enroll(&p.a.url, "rita").await;
    let ch = begin_withdrawal(&p.a.url, "rita", "wd-1").await;
    let token = engine(&p.b.url)
        .await
        .complete_approval(totp_proof(&ch, "rita", &code(&seed, step), ""))
        .await
        .unwrap()
        .into_inner()
        .approval;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = if i % 2 == 0 { p.a.url.clone() } else { p.b.url.clone() };
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            engine(&url)
                .await
                .redeem_approval(pb::RedeemApprovalRequest {
                    approval: token.clone(),
                    expected_intent: expected_of(&token),
                    idempotency_key: format!("caller-{i}"),
                })
                .await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert!(!r.into_inner().replayed);
                ok += 1;
            }
            Err(st) => {
                assert_eq!(reason(&st), "APPROVAL_ALREADY_REDEEMED", "{st:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (1, 49));
    // Both replicas appended audit entries: one chain, from either side.
    let (entries, _) = audit_verify(&p.b.url);
    assert!(entries > 50, "{entries} audit entries");
    assert_eq!(audit_verify(&p.a.url).0, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_totp_code_sent_to_both_replicas_at_once_is_accepted_once() {
    let Some(p) = pair("").await else { return };
    for n in 0..6 {
        let user = format!("tom{n}");
        let (seed, step) = enroll(&p.a.url, &user).await;
        let ch_a = begin_withdrawal(&p.a.url, &user, "wd-a").await;
        let ch_b = begin_withdrawal(&p.b.url, &user, "wd-b").await;
        let c = code(&seed, step);
        let (mut ea, mut eb) = (engine(&p.a.url).await, engine(&p.b.url).await);
        let (ra, rb) = tokio::join!(
            ea.complete_approval(totp_proof(&ch_a, &user, &c, "")),
            eb.complete_approval(totp_proof(&ch_b, &user, &c, "")),
        );
        let accepted = [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(accepted, 1, "user {user}: {ra:?} / {rb:?}");
        // The loser finds the step used, or its issuing write loses the
        // race on the factor: either way nothing is issued to it.
        let refusal = ra.err().or(rb.err()).unwrap();
        assert!(
            ["FACTOR_REJECTED", "CONCURRENT_CHANGE"].contains(&reason(&refusal).as_str()),
            "{refusal:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_codes_across_replicas_lock_after_exactly_the_configured_failures() {
    let Some(p) = pair("[lockout]\nmax_failures = 5\nbase_seconds = 600\n").await else {
        return;
    };
    let (seed, step) = enroll(&p.a.url, "wes").await;
    let right = code(&seed, step);
    let wrong = if right == "123456" { "654321" } else { "123456" };
    let mut challenges = Vec::new();
    for i in 0..100 {
        let url = if i % 2 == 0 { &p.a.url } else { &p.b.url };
        challenges.push((url.clone(), begin_withdrawal(url, "wes", &format!("wd-{i}")).await));
    }
    let mut tasks = Vec::new();
    for (url, ch) in challenges {
        tasks.push(tokio::spawn(async move {
            engine(&url)
                .await
                .complete_approval(totp_proof(&ch, "wes", wrong, ""))
                .await
        }));
    }
    let (mut rejected, mut locked) = (0, 0);
    for t in tasks {
        let st = t.await.unwrap().expect_err("a wrong code was accepted");
        match reason(&st).as_str() {
            "FACTOR_REJECTED" => rejected += 1,
            "FACTOR_LOCKED" => locked += 1,
            other => panic!("unexpected refusal {other}: {st:?}"),
        }
    }
    // The fifth counted failure locks (and is answered as locked): four
    // answered as rejected, every other attempt refused unchecked.
    assert_eq!((rejected, locked), (4, 96));
    let f = frontend(&p.b.url)
        .await
        .list_factors(pb::ListFactorsRequest { user_id: "wes".into() })
        .await
        .unwrap()
        .into_inner()
        .factors;
    assert_eq!(
        f[0].consecutive_failures, 5,
        "exactly the configured failures were counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rotated_on_one_replica_is_published_by_the_other() {
    let Some(p) = pair("").await else { return };
    let admin = AdminServiceClient::new(connect_as(&p.a.url, &certs_dir(), "admin").await.unwrap())
        .rotate_approval_key(pb::RotateApprovalKeyRequest { now: true })
        .await
        .unwrap()
        .into_inner();
    let kid = admin.key.unwrap().kid;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let jwks = engine(&p.b.url)
            .await
            .get_approval_keys(pb::GetApprovalKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .jwks_json;
        if jwks.contains(&kid) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica b never published {kid}: {jwks}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A revocation on one replica kills, on the other, the approvals and
/// factors issued before it (revocation epochs live in the shared store).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_one_replica_holds_on_the_other() {
    let Some(p) = pair("").await else { return };
    let (seed, step) = enroll(&p.a.url, "ria").await;
    let ch = begin_withdrawal(&p.b.url, "ria", "wd-1").await;
    let token = engine(&p.b.url)
        .await
        .complete_approval(totp_proof(&ch, "ria", &code(&seed, step), ""))
        .await
        .unwrap()
        .into_inner()
        .approval;
    AdminServiceClient::new(connect_as(&p.a.url, &certs_dir(), "admin").await.unwrap())
        .revoke_factors(pb::RevokeFactorsRequest {
            all: false,
            user_ids: vec!["ria".into()],
            reason: "lost phone".into(),
        })
        .await
        .unwrap();
    let st = engine(&p.b.url)
        .await
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: token.clone(),
            expected_intent: expected_of(&token),
            idempotency_key: "k".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "APPROVAL_REVOKED", "{st:?}");
    let st = engine(&p.b.url)
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("ria", "wd-2")),
            device: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "NO_USABLE_FACTOR", "{st:?}");
}

/// Begin on `url`, the key's assertion, complete on `url`.
async fn approve_webauthn(
    url: &str,
    user: &str,
    wid: &str,
    key: &mut crate::support::webauthn::RingKey,
) -> Result<pb::CompleteApprovalResponse, tonic::Status> {
    use crate::support::webauthn::{get, webauthn_proof, ORIGIN};
    let mut e = engine(url).await;
    let b = e
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(user, wid)),
            device: None,
        })
        .await?
        .into_inner();
    let r = get(key, ORIGIN, &b.webauthn_request_options_json, |_| {}).expect("the key refused to sign");
    e.complete_approval(webauthn_proof(&b.challenge_id, user, &r))
        .await
        .map(|r| r.into_inner())
}

/// The signature counter one replica stored is the one the other checks:
/// an assertion whose counter went back below it is refused there as a
/// possible clone, and the factor is marked for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webauthn_counter_written_on_one_replica_is_enforced_by_the_other() {
    use crate::support::webauthn::{create, RingKey, ORIGIN};
    let Some(p) = pair("").await else { return };
    let user = "wendy";
    let mut key = RingKey::new();
    let mut f = frontend(&p.a.url).await;
    let b = f
        .begin_webauthn_registration(pb::BeginWebauthnRegistrationRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let response = create(&mut key, ORIGIN, &b.options_json, |_| {}).unwrap();
    f.finish_webauthn_registration(pb::FinishWebauthnRegistrationRequest {
        user_id: user.into(),
        ceremony_id: b.ceremony_id,
        response_json: response,
    })
    .await
    .unwrap();
    for n in 0..3 {
        approve_webauthn(&p.a.url, user, &format!("wd-{n}"), &mut key)
            .await
            .expect("approval on replica a");
    }
    // The key's counter now stands at 3 in the store; a clone counting
    // from 1 answers on the other replica.
    key.counter = 1;
    let st = approve_webauthn(&p.b.url, user, "wd-clone", &mut key)
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert_eq!(reason(&st), "FACTOR_SUSPECTED_CLONED", "{st:?}");
    let listed = frontend(&p.a.url)
        .await
        .list_factors(pb::ListFactorsRequest { user_id: user.into() })
        .await
        .unwrap()
        .into_inner()
        .factors;
    assert!(listed[0].suspected_cloned, "replica a does not see the mark");
}

/// Events written by one replica are streamed by the other in order and
/// without a gap, also while a slow transaction holds the event log's
/// head: the appends behind it wait, none is numbered around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_written_on_one_replica_stream_from_the_other_without_a_gap() {
    let Some(p) = pair("").await else { return };
    let dsn = p.dsn.clone();
    let ch = connect_as(&p.b.url, &certs_dir(), "admin").await.unwrap();
    let mut stream = sigil::pb::event_service_client::EventServiceClient::new(ch)
        .watch_events(pb::WatchEventsRequest { after_cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    // An event first, so the log has a head row to hold.
    enroll(&p.a.url, "evan-first").await;
    // A slow transaction holds the event log's head for a while.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        let meta = sigil::store::Table::ALL
            .iter()
            .position(|t| *t == sigil::store::Table::Meta)
            .unwrap() as i16;
        tx.query(
            "SELECT version FROM sigil_records WHERE tbl = $1 AND key = $2 FOR UPDATE",
            &[&meta, &sigil::store::log_head_key(sigil::store::Table::Events)],
        )
        .unwrap();
        locked_tx.send(std::time::Instant::now()).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        tx.rollback().unwrap();
    });
    let locked_at = tokio::task::block_in_place(|| locked_rx.recv().unwrap());
    // Meanwhile replica a writes events (each enrollment emits some).
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let url = p.a.url.clone();
            tokio::spawn(async move { enroll(&url, &format!("evan{i}")).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        locked_at.elapsed() >= Duration::from_millis(700),
        "the writers did not wait for the slow transaction"
    );
    holder.join().unwrap();
    let mut cursor = 0;
    let mut seen = 0;
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .map(|r| r.transpose())
    {
        assert_eq!(e.cursor, cursor + 1, "replica b skipped from {cursor} to {}", e.cursor);
        cursor = e.cursor;
        seen += 1;
    }
    assert!(seen >= 5, "replica b streamed {seen} events");
}

/// Staff quorums over two replicas: keys registered on one, a held
/// withdrawal's approvals given on both (the same staff member racing on
/// both counts once), and a policy change activated on one applies on the
/// other at its next decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staff_quorums_and_policy_changes_hold_across_two_replicas() {
    use crate::support::webauthn::{get, register_staff_key, ORIGIN};
    use sigil::pb::staff_service_client::StaffServiceClient;

    let policy = "[policy.actions.withdrawal]\nkinds = [\"totp\"]\n[[policy.actions.withdrawal.quorum]]\nname = \"big\"\nasset = \"BTC\"\nabove = \"1\"\nstaff = [\"alice\", \"bob\"]\nrequired = 2\n[policy.governance]\nrequired = 2\ndelay_seconds = 0\n";
    let extra = format!("[quorum]\nstaff_key_hold_seconds = 0\nmin_policy_delay_seconds = 0\n{policy}");
    let Some(p) = pair(&extra).await else { return };
    let staff = |url: String, role: &'static str| async move {
        StaffServiceClient::new(connect_as(&url, &certs_dir(), role).await.unwrap())
    };
    let mut admin_a = staff(p.a.url.clone(), "admin").await;
    let mut keys = Vec::new();
    for id in ["alice", "bob"] {
        admin_a
            .add_staff(pb::AddStaffRequest {
                staff_id: id.into(),
                role: "approver".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        keys.push(register_staff_key(&mut admin_a, id).await);
    }
    let (seed, step) = enroll(&p.a.url, "rosa").await;
    let intent = pb::Intent {
        amount: "3".into(),
        ..withdrawal("rosa", "wd-big")
    };
    let ch = begin_withdrawal_intent(&p.a.url, &intent).await;
    let held = engine(&p.b.url)
        .await
        .complete_approval(totp_proof(&ch, "rosa", &code(&seed, step), ""))
        .await
        .unwrap()
        .into_inner();
    let request = held.pending.expect("held").request_id;

    // alice opens a ceremony on each replica and answers both at once: one counts.
    let mut alice = keys.remove(0);
    let mut bob = keys.remove(0);
    let mut answers = Vec::new();
    for url in [&p.a.url, &p.b.url] {
        let b = staff(url.clone(), "approver")
            .await
            .begin_staff_decision(pb::BeginStaffDecisionRequest {
                request_id: request.clone(),
                staff_id: "alice".into(),
                decision: pb::StaffDecision::Approve as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let r = get(&mut alice, ORIGIN, &b.options_json, |_| {}).unwrap();
        answers.push((url.clone(), b.ceremony_id, r));
    }
    let mut tasks = Vec::new();
    for (url, ceremony, response) in answers {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            staff(url, "approver")
                .await
                .complete_staff_decision(pb::CompleteStaffDecisionRequest {
                    request_id: request,
                    staff_id: "alice".into(),
                    ceremony_id: ceremony,
                    response_json: response,
                })
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "alice counted {ok} times");
    let mut b_approver = staff(p.b.url.clone(), "approver").await;
    let b = b_approver
        .begin_staff_decision(pb::BeginStaffDecisionRequest {
            request_id: request.clone(),
            staff_id: "bob".into(),
            decision: pb::StaffDecision::Approve as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let r = get(&mut bob, ORIGIN, &b.options_json, |_| {}).unwrap();
    let done = b_approver
        .complete_staff_decision(pb::CompleteStaffDecisionRequest {
            request_id: request.clone(),
            staff_id: "bob".into(),
            ceremony_id: b.ceremony_id,
            response_json: r,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.approvals.len(), 2);
    let token = engine(&p.a.url)
        .await
        .get_pending_approval(pb::GetPendingApprovalRequest {
            request_id: request.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval;
    engine(&p.a.url)
        .await
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: token.clone(),
            expected_intent: Some(intent.clone()),
            idempotency_key: String::new(),
        })
        .await
        .expect("redeemed on the other replica");

    // A policy change approved on replica A (no delay here) applies on B.
    let proposal = admin_a
        .propose_policy(pb::ProposePolicyRequest {
            proposed_by: "alice".into(),
            policy_text: "[actions.withdrawal]\nkinds = [\"totp\"]\n[governance]\nrequired = 2\ndelay_seconds = 0\n"
                .into(),
        })
        .await
        .unwrap()
        .into_inner();
    for (who, key) in [("alice", &mut alice), ("bob", &mut bob)] {
        let mut c = staff(p.a.url.clone(), "approver").await;
        let b = c
            .begin_staff_decision(pb::BeginStaffDecisionRequest {
                request_id: proposal.request_id.clone(),
                staff_id: who.into(),
                decision: pb::StaffDecision::Approve as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let r = get(key, ORIGIN, &b.options_json, |_| {}).unwrap();
        c.complete_staff_decision(pb::CompleteStaffDecisionRequest {
            request_id: proposal.request_id.clone(),
            staff_id: who.into(),
            ceremony_id: b.ceremony_id,
            response_json: r,
        })
        .await
        .unwrap();
    }
    let v = staff(p.b.url.clone(), "admin")
        .await
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 2);
    // On B, 3 BTC is no longer held.
    let (seed2, step2) = enroll(&p.b.url, "sami").await;
    let intent2 = pb::Intent {
        amount: "3".into(),
        ..withdrawal("sami", "wd-after")
    };
    let ch = begin_withdrawal_intent(&p.b.url, &intent2).await;
    let r = engine(&p.b.url)
        .await
        .complete_approval(totp_proof(&ch, "sami", &code(&seed2, step2), ""))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.pending.is_none() && !r.approval.is_empty(),
        "the old policy still applies on B: {r:?}"
    );
}

async fn begin_withdrawal_intent(url: &str, intent: &pb::Intent) -> String {
    engine(url)
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .unwrap()
        .into_inner()
        .challenge_id
}
