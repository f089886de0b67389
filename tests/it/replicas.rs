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
    Some(Pair { _dir: dir, a, b })
}

async fn begin(url: &str, user: &str, wid: &str) -> String {
    engine(url)
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(user, wid)),
            device: None,
        })
        .await
        .unwrap()
        .into_inner()
        .challenge_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_redeemed_50_times_over_two_replicas_succeeds_once_and_the_audit_chain_is_one() {
    let Some(p) = pair("").await else { return };
    let (seed, step) = enroll(&p.a.url, "rita").await;
    let ch = begin(&p.a.url, "rita", "wd-1").await;
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
        let ch_a = begin(&p.a.url, &user, "wd-a").await;
        let ch_b = begin(&p.b.url, &user, "wd-b").await;
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
        challenges.push((url.clone(), begin(url, "wes", &format!("wd-{i}")).await));
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
    let ch = begin(&p.b.url, "ria", "wd-1").await;
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
