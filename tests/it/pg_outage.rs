//! PostgreSQL stopped while `sigild` is under load: every request fails
//! closed with `UNAVAILABLE` (never an approval, never a panic), and
//! approvals succeed again once the database is back, without restarting
//! Sigil.
//!
//! Runs on a private throwaway cluster (the shared one of
//! `SIGIL_TEST_PG_DSN` is never stopped); skipped with a note without
//! `SIGIL_TEST_PG_DSN`, unless `SIGIL_REQUIRE_PG=1`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::daemon::*;
use crate::support::harness::*;
use crate::support::pg::{code, engine};

/// Stops and removes the cluster in its directory with the script, also
/// when the test fails.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        match Command::new("bash").arg(script()).arg("stop").arg(&self.0).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "note: could not stop the private cluster in {}: {}",
                self.0.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("note: could not run {}: {e}", script().display()),
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster.sh")
}

/// A private cluster made by `scripts/pg-cluster.sh`, stopped and
/// restarted here with `pg_ctl` the way the script runs it.
struct PrivatePg {
    _guard: StopOnDrop,
    /// Where the cluster really lives (`data`, `log`, `dsn`).
    home: PathBuf,
    bin: PathBuf,
    /// The user to run `pg_ctl` as (when we are root).
    user: Option<String>,
    port: u16,
    dsn: String,
}

/// The server binaries' directory, as the script picks it.
fn pg_bindir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return PathBuf::from(d);
    }
    let version = |name: &str| -> Vec<u64> { name.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max_by_key(|n| version(n))
        .expect("a PostgreSQL version under /usr/lib/postgresql");
    Path::new("/usr/lib/postgresql").join(newest).join("bin")
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl PrivatePg {
    /// Starts a private cluster, or None (test skipped).
    fn start() -> Option<PrivatePg> {
        if std::env::var("SIGIL_TEST_PG_DSN").is_err() {
            assert!(
                std::env::var("SIGIL_REQUIRE_PG").map_or(true, |v| v != "1"),
                "SIGIL_REQUIRE_PG=1 but SIGIL_TEST_PG_DSN is not set"
            );
            eprintln!("note: SIGIL_TEST_PG_DSN not set; PostgreSQL outage test skipped (make test sets it)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("sigil-pg-outage-{}", std::process::id()));
        let guard = StopOnDrop(dir.clone());
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-cluster.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let home = std::fs::canonicalize(&dir).unwrap();
        let dsn = std::fs::read_to_string(home.join("dsn")).unwrap().trim().to_string();
        let port = dsn
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .expect("a port in the cluster's DSN");
        let root = stdout_of(Command::new("id").arg("-u")) == "0";
        let user = root.then(|| stdout_of(Command::new("stat").args(["-c", "%U"]).arg(home.join("data"))));
        Some(PrivatePg {
            _guard: guard,
            home,
            bin: pg_bindir(),
            user,
            port,
            dsn,
        })
    }

    /// Runs `pg_ctl -D data ARGS` as the server's user, from `/`.
    fn pg_ctl(&self, args: &[&str]) -> Output {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(pg_ctl);
                c
            }
            None => Command::new(pg_ctl),
        };
        cmd.current_dir("/").arg("-D").arg(self.home.join("data")).args(args);
        // Blocks for a while: off the async workers.
        tokio::task::block_in_place(|| cmd.output().unwrap())
    }

    fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the same cluster again: same data, same port, same options.
    fn restart(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=on -c max_connections=200",
            self.port,
            self.home.display()
        );
        let log = self.home.join("log");
        let out = self.pg_ctl(&["-o", &opts, "-l", &log.to_string_lossy(), "-w", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

/// A user with a confirmed TOTP factor; `step` and `step + 1` are unused.
struct User {
    name: String,
    seed: Vec<u8>,
    step: u64,
}

/// Enrolls TOTP for `user`, confirmed with the previous step's code (a
/// step boundary between reading the clock and confirming: tried again).
async fn enroll(url: &str, user: &str) -> User {
    let (seed, step) = crate::support::pg::enroll(url, user).await;
    User {
        name: user.into(),
        seed,
        step,
    }
}

/// One request of the load: when it was sent and answered, and how.
struct Call {
    rpc: &'static str,
    start: Instant,
    end: Instant,
    refusal: Option<(Code, String)>,
}

/// Longer than any wait sigild may do on its database pool.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// BeginApproval for `user`; the challenge, if one was issued.
async fn begin(e: &mut ApprovalServiceClient<Channel>, user: &str, wid: &str, calls: &mut Vec<Call>) -> Option<String> {
    let start = Instant::now();
    let r = tokio::time::timeout(
        CALL_TIMEOUT,
        e.begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(user, wid)),
            device: None,
        }),
    )
    .await;
    Some(record(calls, "BeginApproval", start, r)?.challenge_id)
}

/// CompleteApproval of challenge `ch` with a TOTP code; the approval, if
/// one was issued.
async fn complete(
    e: &mut ApprovalServiceClient<Channel>,
    ch: &str,
    user: &str,
    totp: &str,
    calls: &mut Vec<Call>,
) -> Option<String> {
    let start = Instant::now();
    let r = tokio::time::timeout(CALL_TIMEOUT, e.complete_approval(totp_proof(ch, user, totp, ""))).await;
    Some(record(calls, "CompleteApproval", start, r)?.approval)
}

/// BeginApproval, then CompleteApproval with `totp`, every call recorded.
async fn approve(
    e: &mut ApprovalServiceClient<Channel>,
    user: &str,
    wid: &str,
    totp: &str,
    calls: &mut Vec<Call>,
) -> Option<String> {
    let ch = begin(e, user, wid, calls).await?;
    complete(e, &ch, user, totp, calls).await
}

fn record<T>(
    calls: &mut Vec<Call>,
    rpc: &'static str,
    start: Instant,
    r: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Option<T> {
    let (refusal, value) = match r {
        Ok(Ok(v)) => (None, Some(v.into_inner())),
        Ok(Err(st)) => (Some((st.code(), st.message().to_string())), None),
        Err(_) => (
            Some((Code::DeadlineExceeded, "no answer within the test's timeout".into())),
            None,
        ),
    };
    calls.push(Call {
        rpc,
        start,
        end: Instant::now(),
        refusal,
    });
    value
}

async fn redeem(e: &mut ApprovalServiceClient<Channel>, token: &str, key: &str) {
    let r = e
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: token.into(),
            expected_intent: expected_of(token),
            idempotency_key: key.into(),
        })
        .await
        .unwrap_or_else(|st| panic!("redemption {key} refused: {st:?}"))
        .into_inner();
    assert!(!r.replayed, "redemption {key} was a replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn postgres_stopped_under_load_fails_closed_with_unavailable_and_recovers_without_restarting_sigil() {
    let Some(pg) = PrivatePg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    prepare(
        dir.path(),
        "version = 1\n[protection]\nrequire_whitelisted_address = false\nsecurity_change_lock_seconds = 0\nsweep_interval_seconds = 1\n[store]\nbackend = \"postgres\"\n",
    );
    let mut d = start_daemon_with(dir.path(), "warn", &[("SIGIL_PG_DSN", pg.dsn.as_str())]);
    wait_ready(&d.url).await;

    // Users for the load (each approves at most once with its step's code
    // during the load, once with the next step's after it) and users kept
    // for probing the recovery (the next step's code only).
    const LOAD_USERS: usize = 100;
    const PROBE_USERS: usize = 20;
    let mut users = Vec::new();
    let mut pending = Vec::new();
    for i in 0..LOAD_USERS + PROBE_USERS {
        let url = d.url.clone();
        pending.push(tokio::spawn(async move { enroll(&url, &format!("olga{i}")).await }));
        if pending.len() == 10 {
            for t in pending.drain(..) {
                users.push(t.await.unwrap());
            }
        }
    }
    for t in pending {
        users.push(t.await.unwrap());
    }
    let probes = users.split_off(LOAD_USERS);
    let users = Arc::new(users);

    // Half the load users get a challenge now, completed during the load:
    // while the database is down, CompleteApproval is then tried on its own.
    let mut e = engine(&d.url).await;
    let mut held = Vec::new();
    for (i, u) in users.iter().enumerate() {
        held.push(if i % 2 == 1 {
            Some(
                begin(&mut e, &u.name, &format!("wd-held-{i}"), &mut Vec::new())
                    .await
                    .unwrap(),
            )
        } else {
            None
        });
    }
    let held = Arc::new(held);

    // The load: a few clients, each taking the next unused user (its held
    // challenge, or a new one); once all have been tried, challenges only
    // (BeginApproval also uses the store).
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (url, users, held, next, stop) = (d.url.clone(), users.clone(), held.clone(), next.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut e = engine(&url).await;
            let (mut calls, mut approvals) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let wid = format!("wd-{w}-{n}");
                let i = next.fetch_add(1, Ordering::SeqCst);
                if let Some(u) = users.get(i) {
                    let c = code(&u.seed, u.step);
                    let token = match &held[i] {
                        Some(ch) => complete(&mut e, ch, &u.name, &c, &mut calls).await,
                        None => approve(&mut e, &u.name, &wid, &c, &mut calls).await,
                    };
                    if let Some(token) = token {
                        approvals.push((calls.last().unwrap().end, token));
                    }
                } else {
                    let u = &users[n % users.len()];
                    begin(&mut e, &u.name, &wid, &mut calls).await;
                }
                // Users for the whole run: a few requests a second per client.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (calls, approvals)
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopping = Instant::now();
    pg.stop();
    let down = Instant::now();
    eprintln!("PostgreSQL stopped ({} ms)", (down - stopping).as_millis());
    // Over twice the pool's 5 s connection timeout: requests waiting for a
    // connection give up, and the next ones too, while it is still down.
    // Health turns NOT_SERVING within the readiness check's connection wait.
    let not_serving = wait_health(&d.url, ServingStatus::NotServing, Duration::from_secs(11)).await;
    eprintln!("health NOT_SERVING {} ms after the stop", not_serving.as_millis());
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(down.elapsed())).await;
    assert!(d.child.try_wait().unwrap().is_none(), "sigild exited during the outage");
    let restarting = Instant::now();
    pg.restart();
    let up = Instant::now();
    eprintln!("PostgreSQL restarted ({} ms)", (up - restarting).as_millis());

    // Recovery: fresh approvals, one probe user each, until one is issued.
    let mut probe_calls = Vec::new();
    let mut probe_approvals = Vec::new();
    let mut recovered = None;
    for (k, u) in probes.iter().enumerate() {
        let c = code(&u.seed, u.step + 1);
        if let Some(token) = approve(&mut e, &u.name, &format!("wd-probe-{k}"), &c, &mut probe_calls).await {
            recovered = Some(Instant::now());
            probe_approvals.push(token);
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "no approval within 10 s of PostgreSQL's restart: {:?}",
            probe_calls.iter().map(|c| &c.refusal).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = recovered.expect("ran out of probe users before an approval was issued");
    assert!(
        recovered - up < Duration::from_secs(10),
        "the first approval came {:?} after PostgreSQL's restart",
        recovered - up
    );
    let serving = wait_health(&d.url, ServingStatus::Serving, Duration::from_secs(10)).await;
    eprintln!("health SERVING again {} ms later", serving.as_millis());
    eprintln!(
        "first approval {} ms after the restart completed ({} probe calls)",
        (recovered - up).as_millis(),
        probe_calls.len()
    );

    stop.store(true, Ordering::SeqCst);
    let (mut calls, mut approvals) = (Vec::new(), Vec::new());
    for w in workers {
        let (c, a) = w.await.unwrap();
        calls.extend(c);
        approvals.extend(a);
    }
    calls.extend(probe_calls);

    // The timeline of the refusals, in ms from the stop.
    let ms = |t: Instant| match t.checked_duration_since(down) {
        Some(after) => after.as_millis() as i128,
        None => -((down - t).as_millis() as i128),
    };
    for c in calls.iter().filter(|c| c.refusal.is_some()) {
        let (code, msg) = c.refusal.as_ref().unwrap();
        eprintln!("refused {} {}..{} ms: {code:?} {msg}", c.rpc, ms(c.start), ms(c.end));
    }
    let late = calls
        .iter()
        .filter(|c| c.start > down && c.start < restarting && c.end > restarting && c.refusal.is_none())
        .count();
    eprintln!("{late} calls sent while PostgreSQL was down answered after its restart");
    // Every refusal, before, during or after the outage, is UNAVAILABLE.
    let odd: Vec<_> = calls
        .iter()
        .filter_map(|c| c.refusal.as_ref().map(|r| (c.rpc, r)))
        .filter(|(_, (code, _))| *code != Code::Unavailable)
        .collect();
    assert!(odd.is_empty(), "refusals other than UNAVAILABLE: {odd:#?}");
    // No approval answered while the database was down.
    let during: Vec<_> = calls.iter().filter(|c| c.end > down && c.end < restarting).collect();
    let refused = during.iter().filter(|c| c.refusal.is_some()).count();
    let issued: Vec<_> = during
        .iter()
        .filter(|c| c.rpc == "CompleteApproval" && c.refusal.is_none())
        .map(|c| (c.start.saturating_duration_since(down), c.end - down))
        .collect();
    assert!(
        issued.is_empty(),
        "approvals issued while PostgreSQL was down (started, answered after the stop): {issued:?}"
    );
    assert_eq!(refused, during.len(), "a request succeeded while PostgreSQL was down");
    assert!(refused > 0, "the load never reached sigild while PostgreSQL was down");
    let before = approvals.iter().filter(|(t, _)| *t < stopping).count();
    assert!(before > 0, "no approval before the outage");
    let slowest = calls.iter().map(|c| c.end - c.start).max().unwrap();
    eprintln!(
        "{} calls; {before} approvals before the stop; during the outage ({} ms) {refused} refusals, all UNAVAILABLE; slowest call {} ms",
        calls.len(),
        (restarting - down).as_millis(),
        slowest.as_millis()
    );

    // After the restart: twenty load users approve again (next step), at once.
    let mut again = Vec::new();
    for (i, u) in users.iter().enumerate().take(20) {
        let url = d.url.clone();
        let (name, c) = (u.name.clone(), code(&u.seed, u.step + 1));
        again.push(tokio::spawn(async move {
            let mut e = engine(&url).await;
            let mut calls = Vec::new();
            let token = approve(&mut e, &name, &format!("wd-after-{i}"), &c, &mut calls).await;
            token.unwrap_or_else(|| {
                panic!(
                    "{name}: no approval after the restart: {:?}",
                    calls[calls.len() - 1].refusal
                )
            })
        }));
    }
    let mut tokens: Vec<String> = approvals.into_iter().map(|(_, t)| t).collect();
    tokens.extend(probe_approvals);
    for t in again {
        tokens.push(t.await.unwrap());
    }
    // Every approval issued, before the outage or after, redeems once.
    for (i, t) in tokens.iter().enumerate() {
        redeem(&mut e, t, &format!("redeem-{i}")).await;
    }
    eprintln!("{} approvals redeemed after the restart", tokens.len());

    assert!(d.child.try_wait().unwrap().is_none(), "sigild exited");
    let log = d.log.lock().unwrap();
    let panics: Vec<_> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "sigild panicked: {panics:#?}");
}
