//! HSM outages heal without a restart. A real `sigild` under approval load
//! loses its SoftHSM token (the token's directory is moved away) and gets it
//! back: approvals are refused with UNAVAILABLE while it is gone, with a
//! message that says the HSM is unreachable and never suggests making keys;
//! health is NOT_SERVING; once the directory is back, approvals succeed
//! again within a few seconds and health is SERVING, with no restart. A
//! refused attempt consumes nothing: the TOTP code it carried is accepted
//! afterwards and the user is not locked out.
//!
//! In process, the same for sessions closed under the server by another
//! handle on the module (`C_CloseAllSessions`).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sigil::factor::totp;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::daemon::*;
use crate::support::harness::*;

/// One enrolled user of the load.
#[derive(Clone)]
struct User {
    name: String,
    seed: Vec<u8>,
    /// The last step an approval succeeded with (one per step).
    last_ok: u64,
}

/// What one approval attempt gave, and when it started.
struct Outcome {
    started: Instant,
    result: Result<(), (Code, String)>,
}

/// A user with a confirmed TOTP factor (see [`crate::support::pg::enroll`]).
async fn enroll(url: &str, name: &str) -> User {
    let (seed, step) = crate::support::pg::enroll(url, name).await;
    User {
        name: name.into(),
        seed,
        // Confirmed with the step before `step`.
        last_ok: step - 1,
    }
}

/// Begin + Complete for `u` with `code`; a fresh withdrawal each time.
async fn approve(a: &mut ApprovalServiceClient<Channel>, u: &User, code: &str, n: u64) -> Result<(), tonic::Status> {
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(&u.name, &format!("wd-{}-{n}", u.name))),
            device: None,
        })
        .await?
        .into_inner();
    a.complete_approval(totp_proof(&b.challenge_id, &u.name, code, ""))
        .await?;
    Ok(())
}

/// Approves with the users in `users` round robin (each at most once per
/// TOTP step) until `stop`, recording every attempt.
async fn load(url: String, mut users: Vec<User>, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<Outcome>>>) {
    let (_, mut a) = clients(&url).await;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // The next unused step, the current one or the one after (the
        // verifier's window accepts both).
        let cur = real_step();
        let Some(u) = users.iter_mut().find(|u| u.last_ok <= cur) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let step = (u.last_ok + 1).max(cur);
        n += 1;
        let started = Instant::now();
        let r = approve(&mut a, u, &totp::code_at_step(&u.seed, step), n).await;
        if r.is_ok() {
            u.last_ok = step;
        }
        out.lock().unwrap().push(Outcome {
            started,
            result: r.map_err(|s| (s.code(), s.message().to_string())),
        });
        // About ten a second per worker: enough users last the whole test
        // (each approves at most twice, for this TOTP step and the next).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_that_vanishes_and_returns_heals_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), PROTECTIONS_OFF);
    let daemon = start_daemon(dir.path(), "warn");
    wait_ready(&daemon.url).await;
    let (_, mut a) = clients(&daemon.url).await;
    let mut users = Vec::new();
    for i in 0..90 {
        users.push(enroll(&daemon.url, &format!("load-{i}")).await);
    }
    let victim = enroll(&daemon.url, "victim").await;

    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = users
        .chunks(30)
        .map(|c| tokio::spawn(load(daemon.url.clone(), c.to_vec(), stop.clone(), out.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = out.lock().unwrap().iter().filter(|o| o.result.is_ok()).count();
    assert!(before > 0, "no approval succeeded before the outage");

    // The token goes away.
    let tokens = dir.path().join("tokens");
    let token_dir = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("the token's directory");
    let away = dir.path().join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    let gone = Instant::now();
    let not_serving = wait_health(&daemon.url, ServingStatus::NotServing, Duration::from_secs(5)).await;

    // The victim's attempts are refused; none may count against it.
    // A step its enrollment did not use.
    let outage_step = (victim.last_ok + 1).max(real_step());
    let outage_code = totp::code_at_step(&victim.seed, outage_step);
    for i in 0..8 {
        let st = approve(&mut a, &victim, &outage_code, 1000 + i)
            .await
            .expect_err("an approval was issued while the token was gone");
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
        let m = st.message().to_lowercase();
        assert!(m.contains("unreachable") || m.contains("not present"), "{m}");
        assert!(!m.contains("make hsm") && !m.contains("generate"), "{m}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // It comes back.
    std::fs::rename(&away, &token_dir).unwrap();
    let back = Instant::now();
    let serving = wait_health(&daemon.url, ServingStatus::Serving, Duration::from_secs(8)).await;
    let healed = loop {
        if let Some(o) = out
            .lock()
            .unwrap()
            .iter()
            .find(|o| o.started >= back && o.result.is_ok())
        {
            break o.started - back;
        }
        if back.elapsed() > Duration::from_secs(10) {
            let out = out.lock().unwrap();
            let late: Vec<_> = out.iter().filter(|o| o.started >= back).map(|o| &o.result).collect();
            panic!("no approval succeeded within 10 s of the token's return: {late:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    // The code the refused attempts carried was not used up, and the eight
    // refusals did not lock the victim out (it is the same step, or the
    // next one, still inside the window).
    assert!(real_step() <= outage_step + 1, "the test outlived the TOTP window");
    approve(&mut a, &victim, &outage_code, 2000)
        .await
        .expect("the code refused during the outage is accepted after it");

    let out = out.lock().unwrap();
    let settle = Duration::from_millis(500);
    let during: Vec<&Outcome> = out
        .iter()
        .filter(|o| o.started >= gone + settle && o.started < back)
        .collect();
    assert!(during.len() >= 3, "too little load during the outage: {}", during.len());
    for o in &during {
        match &o.result {
            Ok(()) => panic!("an approval was issued while the token was gone"),
            Err((code, m)) => {
                assert_eq!(*code, Code::Unavailable, "{m}");
                assert!(!m.contains("make hsm"), "{m}");
            }
        }
    }
    // Every failure, whenever it happened, was UNAVAILABLE.
    for o in out.iter() {
        if let Err((code, m)) = &o.result {
            assert_eq!(*code, Code::Unavailable, "unexpected refusal: {m}");
        }
    }
    let after: Vec<&Outcome> = out.iter().filter(|o| o.started >= back + healed).collect();
    assert!(
        !after.is_empty() && after.iter().all(|o| o.result.is_ok()),
        "approvals failed after healing"
    );
    let log = daemon.log.lock().unwrap().join("\n");
    assert!(log.contains("HSM outage"), "{log}");
    assert!(log.contains("reachable again"), "{log}");
    assert!(!log.contains("make hsm"), "{log}");
    println!(
        "outage: health NOT_SERVING after {not_serving:?}; {} attempts refused during; token back: health SERVING \
         after {serving:?}, first approval after {healed:?}; {} approvals after",
        during.len(),
        after.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_closed_under_the_server_by_another_handle_heal() {
    let s = TestServer::start().await;
    let mut users = Vec::new();
    for i in 0..6 {
        let (factor_id, seed) = s.enroll_totp(&format!("closed-{i}")).await;
        users.push((format!("closed-{i}"), factor_id, seed));
    }
    // Another handle on the same module closes every session the process
    // has on the token (which also logs the token out), again and again.
    let other = sigil_hsm::Hsm::open(&sigil_hsm::HsmConfig {
        module: sigil::signer::module_path(&s.cfg.hsm),
        token_label: s.cfg.hsm.token_label.clone(),
        pin: secrecy::SecretString::from(crate::support::harness::PIN),
        pool_size: 1,
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let closes = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let closer = {
        let (stop, closes) = (stop.clone(), closes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // The server's own healing may re-initialise the module
                // under this handle; a close that fails is only retried.
                if other.close_every_session().is_ok() {
                    closes.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let mut a = s.approvals("withdrawal-engine").await;
    let (mut issued, mut refused, mut rounds) = (0, 0, 0u64);
    // At least 5 rounds, and on until the sessions were closed at least 10
    // times under them (however fast the approvals go).
    for round in 0..200u64 {
        if round >= 5 && closes.load(Ordering::SeqCst) >= 10 {
            break;
        }
        rounds += 1;
        for (name, factor_id, seed) in &users {
            // Retried with the same code until issued: a refusal uses nothing up.
            let code = s.code(seed, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let b = a
                    .begin_approval(pb::BeginApprovalRequest {
                        intent: Some(withdrawal(name, &format!("w-{round}"))),
                        device: None,
                    })
                    .await;
                let r = match b {
                    Ok(b) => a
                        .complete_approval(totp_proof(&b.into_inner().challenge_id, name, &code, factor_id))
                        .await
                        .map(|_| ()),
                    Err(st) => Err(st),
                };
                match r {
                    Ok(()) => {
                        issued += 1;
                        break;
                    }
                    Err(st) => {
                        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
                        assert!(!st.message().contains("make hsm"), "{st:?}");
                        refused += 1;
                        assert!(Instant::now() < deadline, "no approval for {name} within 10 s: {st:?}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        s.clock.advance(30);
    }
    stop.store(true, Ordering::SeqCst);
    closer.join().unwrap();
    let closes = closes.load(Ordering::SeqCst);
    assert!(
        closes >= 10,
        "sessions were closed only {closes} times in {rounds} rounds"
    );
    assert_eq!(issued, rounds * 6);
    // Once the closing stops, the server is ready and approves at once.
    let t0 = Instant::now();
    while s.sigil().ready().is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not ready 5 s after the sessions stopped closing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (name, _, seed) = &users[0];
    assert!(!s.approve(&withdrawal(name, "after"), seed).await.is_empty());
    println!(
        "sessions closed {closes} times under load: {issued} approvals issued, {refused} attempts refused and retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_gone_from_a_reachable_token_is_told_apart_from_an_outage() {
    let s = TestServer::start().await;
    let (factor_id, seed) = s.enroll_totp("kim").await;
    let hsm = s.sigil().signer().hsm().clone();
    // A key serving does not need: at once a clear "not on the token".
    let e = hsm.ec_public_key("sigil-approval-none").unwrap_err();
    assert!(matches!(e, sigil_hsm::HsmError::KeyNotFound(_)), "{e}");
    assert!(e.to_string().contains("is reachable but holds no"), "{e}");
    assert!(hsm.health().serving);

    // The approval key goes: first an outage (a key that was there and
    // vanished usually means the token went away), then, once a reconnect
    // finds the token reachable without it, a missing key.
    hsm.destroy_key(&s.cfg.hsm.approval_key_label).unwrap();
    let mut a = s.approvals("withdrawal-engine").await;
    let code = s.code(&seed, 0);
    let t0 = Instant::now();
    let message = loop {
        let b = a
            .begin_approval(pb::BeginApprovalRequest {
                intent: Some(withdrawal("kim", "w1")),
                device: None,
            })
            .await
            .unwrap()
            .into_inner();
        let st = a
            .complete_approval(totp_proof(&b.challenge_id, "kim", &code, &factor_id))
            .await
            .expect_err("an approval without the approval key");
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
        if st.message().contains("though the token is reachable") {
            break st.message().to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(8), "still not told apart: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(message.contains("never creates keys"), "{message}");
    assert!(
        !message.contains("unreachable") && !message.contains("make hsm"),
        "{message}"
    );
    let h = hsm.health();
    assert!(!h.serving && h.problem.is_some(), "{h:?}");
    assert!(s.sigil().ready().is_err());
}
