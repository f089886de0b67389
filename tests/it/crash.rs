//! kill -9 of the real `sigild` under load: several mTLS clients enroll
//! TOTP factors, complete and redeem approvals (some twice at once) while
//! the daemon is killed with SIGKILL at random moments. After each restart
//! on the same store and token, everything that was acknowledged is still
//! there: redeemed approvals stay redeemed, enrollments exist, used TOTP
//! steps stay used, no approval was ever redeemed twice, the audit chain
//! (and every checkpoint signed so far) verifies, and the daemon is ready
//! within 2 s.
//!
//! The kill moments come from a seed; `SIGIL_CRASH_SEED=N` replays one.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::crash::*;
use crate::support::daemon::*;

/// SIGKILLs (each followed by a restart on the same data).
const ROUNDS: usize = 8;
/// A restarted daemon must answer RPCs within this.
const READY_LIMIT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let seed = match std::env::var("SIGIL_CRASH_SEED") {
        Ok(s) => s.parse::<u64>().expect("SIGIL_CRASH_SEED must be a number"),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    println!("crash test seed={seed} (replay the kill moments with SIGIL_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), PROTECTIONS_OFF);

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut daemon = start_daemon(dir.path(), "error");
    wait_ready(&daemon.url).await;
    let (mut audit_entries, mut audit_checkpoints) = (0, 0);
    let (mut steps_checked, mut steps_skipped) = (0, 0);
    let (mut redemptions_checked, mut enrollments_checked) = (0, 0);
    let mut worst_ready = Duration::ZERO;

    for round in 1..=ROUNDS {
        let killed = Arc::new(AtomicBool::new(false));
        let kill_after = Duration::from_millis(200 + rng.below(1301));
        let workers: Vec<_> = (0..WORKERS)
            .map(|i| {
                tokio::spawn(worker(
                    i,
                    daemon.url.clone(),
                    ledger.clone(),
                    killed.clone(),
                    rng.next() ^ i as u64,
                ))
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        // Set first: any error a worker sees from now on may be the kill's.
        killed.store(true, Ordering::SeqCst);
        daemon.child.kill().unwrap(); // SIGKILL
        let status = daemon.child.wait().unwrap();
        assert!(!status.success(), "sigild was not killed: {status}");
        for w in workers {
            tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .expect("a load client did not stop after the kill")
                .unwrap();
        }
        {
            let l = ledger.lock().unwrap();
            assert!(
                l.unexpected.is_empty(),
                "seed={seed}: the live daemon gave unexpected answers: {:#?}",
                l.unexpected
            );
            assert!(l.violations.is_empty(), "seed={seed}: {:#?}", l.violations);
        }

        // Restart on the same data and token.
        let t0 = Instant::now();
        let d = start_daemon(dir.path(), "error");
        let listening = d.listening;
        daemon = d;
        wait_ready(&daemon.url).await;
        let ready = t0.elapsed();
        worst_ready = worst_ready.max(ready);
        assert!(
            ready < READY_LIMIT,
            "seed={seed}: restart {round} took {ready:?} to be ready (listening after {listening:?})"
        );

        // The clock moves on: TOTP steps first.
        let (c, s) = check_used_steps(&daemon.url, &ledger, seed).await;
        steps_checked += c;
        steps_skipped += s;
        let (r, now_redeemed, expired) = check_redemptions(&daemon.url, &ledger, seed).await;
        redemptions_checked += r;
        let e = check_enrollments(&daemon.url, &ledger, seed).await;
        enrollments_checked += e;
        let (entries, cps) = audit_verify(&daemon.url);
        // What a previous verification saw had survived a restart already:
        // it must all still be there, checkpoints included.
        assert!(
            entries > audit_entries && cps > audit_checkpoints,
            "seed={seed}: audit log shrank: {entries} entries / {cps} checkpoints after {audit_entries} / {audit_checkpoints}"
        );
        (audit_entries, audit_checkpoints) = (entries, cps);
        {
            let l = ledger.lock().unwrap();
            assert!(l.violations.is_empty(), "seed={seed}: {:#?}", l.violations);
            println!(
                "round {round}: killed after {kill_after:?}; restart listening in {listening:?}, ready in {ready:?}; \
                 {} users, {} approvals so far; steps replayed {c} (skipped {s}), redemptions re-refused {r}, \
                 redeemed after restart {now_redeemed}, expired {expired}, enrollments found {e}; audit ok: {entries} entries, {cps} checkpoints",
                l.users.len(),
                l.approvals.len()
            );
        }
    }

    let l = ledger.lock().unwrap();
    let c = &l.counts;
    println!(
        "crash test seed={seed}: {ROUNDS} kill -9 rounds in {:?}, slowest restart ready in {worst_ready:?}; \
         acknowledged: {} enrollments, {} approvals, {} redemptions ({} double-redemption races); \
         {} expected refusals (already redeemed), {} calls cut off by kills; \
         after restarts: {steps_checked} used steps replayed and refused ({steps_skipped} out of window), \
         {redemptions_checked} redemptions re-refused, {enrollments_checked} enrollments found; \
         audit log {audit_entries} entries, {audit_checkpoints} checkpoints",
        started.elapsed(),
        c.enrollments,
        c.approvals,
        c.redemptions,
        c.double_redeems,
        c.refusals,
        c.lost,
    );
    // The test must have exercised something.
    assert!(
        c.enrollments > 0 && c.approvals > 0 && c.redemptions > 0,
        "no load was acknowledged"
    );
    assert!(
        steps_checked > 0 && redemptions_checked > 0,
        "nothing was checked after restarts"
    );
    assert!(c.lost > 0, "no call was ever cut off by a kill");
}
