//! End-to-end approval throughput against the raw HSM signing rate.
//!
//! `make bench` (= `cargo run --release --example bench`) starts a real,
//! in-process Sigil server on `127.0.0.1:0` with its **own** SoftHSM token,
//! sled store and development PKI in a temp dir (the project's token under
//! `hsm/tokens` is never touched), exactly like `tests/it/harness.rs`, and
//! measures in one process:
//!
//! 1. **End-to-end approvals per second**: 8 concurrent clients (8 tokio
//!    tasks, each with its own mTLS channel using the `withdrawal-engine`
//!    certificate), each running `BeginApproval` + `CompleteApproval` (TOTP
//!    proof) for its share of the pre-enrolled users, one approval in flight
//!    per client. Every returned JWS is verified offline afterwards (outside
//!    the timed window); any failure makes the example exit non-zero.
//! 2. **Raw SoftHSM ES256 signing rate** through `Signer::sign_raw`: one
//!    thread, then 8 threads, each for ~3 s, on the same token and session
//!    pool as the server.
//! 3. The ratio end-to-end / raw, for both raw rates. The bar is a ratio of
//!    at least 0.3 against the **8-thread** raw rate (the same concurrency
//!    as the end-to-end clients); the 1-thread ratio is printed as well.
//! 4. Diagnostics (not part of the bar): HSM AES-256-GCM decryption of a
//!    factor secret (8 threads), durable group-committed store commits (1 and
//!    8 threads), approvals through the `Sigil` API directly, without
//!    gRPC and TLS (1 and 8 threads, the same users on later TOTP steps),
//!    and the gRPC floor: `grpc.health.v1` Check on the same mTLS server,
//!    8 clients (half of it over the raw rate bounds any approval path on
//!    this transport).
//!
//! 5. With `SIGIL_BENCH_PG_DSN` set (`make bench` sets it to a throwaway
//!    cluster), after everything above: the same end-to-end load on the
//!    PostgreSQL store, first on one replica (a second in-process Sigil and
//!    server, with its own signer on the same token, over a new database),
//!    then on two replicas sharing a new database (clients split over
//!    both), each with its ratio to the raw 8-thread rate, the store calls,
//!    SQL statements and round trips per approval (counted by a wrapper
//!    around the store), and transactions per approval from
//!    `pg_stat_database`.
//!
//! Every measurement also reports the process's CPU time per operation
//! (`/proc/self/stat`, all threads: server, clients, sled's IO threads) and
//! the bytes written to the store's disk (the block device's counters), to
//! show where the time goes.
//!
//! Setup (not measured): users are enrolled with TOTP directly through the
//! `Sigil` API on blocking threads; then the test clock moves on, so every
//! user has one fresh TOTP step (a step is never accepted twice: each user
//! approves once per step). The clock moves two steps (60 s) at a time: a
//! code is matched against a window of one step either side and the newest
//! matching step is recorded, so a one-in-a-million equal code in the next
//! step would otherwise use that step up. The clock does not move during a
//! timed phase. 64 extra users warm the channels up before the timed window.
//!
//! The HSM session pool is 8: one session per concurrent client or signing
//! thread, so the 8-thread raw rate is not throttled by the pool (measured:
//! pool sizes 1 to 16 change the end-to-end rate by less than the run-to-run
//! noise; smaller pools only lower the raw 8-thread rate, see
//! BENCHMARKS.md).
//!
//! Knobs (environment): `SIGIL_BENCH_USERS` (default 3000),
//! `SIGIL_BENCH_POOL` (HSM session pool size, default 8),
//! `SIGIL_BENCH_RAW_SECS` (default 3), `SIGIL_BENCH_PG_DSN` (a PostgreSQL
//! server to create the databases on; unset: no PostgreSQL rows).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// sigild's allocator, as in sigild (the in-process phases run the server here).
#[global_allocator]
static GLOBAL: sigil_alloc::Allocator = sigil_alloc::Allocator;

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cmd_out, cpu_model, env_num, loadavg};
use secrecy::SecretString;
use sigil::approval::{DeviceSignals, Proof};
use sigil::client::connect_as;
use sigil::clock::TestClock;
use sigil::config::Config;
use sigil::factor::totp;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::server;
use sigil::signer::Signer;
use sigil::store::pg_store::PgStore;
use sigil::store::{Batch, LogEntry, Op, SledStore, Store, StoreError, Table, Ticket, Versioned};
use sigil::Sigil;
use tonic::transport::Channel;

/// Test clock start: 2027-01-15T08:00:00Z (as in the integration tests).
const T0: i64 = 1_800_000_000;
/// How far the clock moves between phases: two TOTP steps (see above).
const NEXT_STEP: i64 = 60;
/// Concurrent end-to-end clients, and threads of the concurrent raw rate.
const CLIENTS: usize = 8;
/// Threads enrolling users during setup.
const ENROLL_THREADS: usize = 16;
/// Threads enrolling users on PostgreSQL: every enrollment appends to the
/// audit log, whose head row all of them update, so 16 writers at once
/// exhaust the store's serialization retries.
const PG_ENROLL_THREADS: usize = 4;
/// Approvals per client before the timed window (separate users).
const WARMUP_PER_CLIENT: usize = 8;
/// Length of the diagnostic measurements.
const DIAG_DEFAULT: f64 = 1.5;
/// The bar: end-to-end / raw (8 threads).
const BAR: f64 = 0.3;

const PIN: &str = "bench-user-pin-4711";
const SO_PIN: &str = "bench-so-pin-0815";
/// Deliberately unset: the PIN comes from the file.
const PIN_ENV: &str = "SIGIL_BENCH_PIN_NOT_SET";

/// An enrolled user.
struct User {
    id: String,
    seed: Vec<u8>,
}

fn gen_certs(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--force")
        .arg(dir)
        .output()
        .expect("run certs/gen.sh");
    assert!(
        out.status.success(),
        "certs/gen.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn intent(user: &str, wid: &str) -> pb::Intent {
    pb::Intent {
        action: "withdrawal".into(),
        user_id: user.into(),
        withdrawal_id: wid.into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        amount: "0.5".into(),
        destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
        memo: String::new(),
    }
}

/// Enrolls users `first..first+n` with TOTP through the Sigil API, on
/// `ENROLL_THREADS` threads, at the clock's current time.
fn enroll(sigil: &Sigil, clock: &TestClock, first: usize, n: usize) -> Vec<User> {
    enroll_on(sigil, clock, first, n, ENROLL_THREADS)
}

/// [`enroll`] on `threads` threads.
fn enroll_on(sigil: &Sigil, clock: &TestClock, first: usize, n: usize, threads: usize) -> Vec<User> {
    let next = AtomicUsize::new(0);
    let step = totp::step_at(clock.now_secs());
    let mut all: Vec<(usize, User)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return mine;
                        }
                        let id = format!("bench-user-{:06}", first + i);
                        let e = sigil
                            .enroll()
                            .begin_totp_enrollment("frontend", &id, "", "", "")
                            .expect("begin TOTP enrollment");
                        let seed = data_encoding::BASE32_NOPAD
                            .decode(e.secret_base32.as_bytes())
                            .expect("base32 seed");
                        sigil
                            .enroll()
                            .confirm_totp_enrollment("frontend", &id, &e.factor_id, &totp::code_at_step(&seed, step))
                            .expect("confirm TOTP enrollment");
                        mine.push((i, User { id, seed }));
                    }
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().expect("enroll thread")).collect()
    });
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, u)| u).collect()
}

/// One approval over gRPC; returns (token, begin latency, complete latency).
async fn approve(
    c: &mut ApprovalServiceClient<Channel>,
    i: &pb::Intent,
    code: &str,
) -> Result<(String, Duration, Duration), tonic::Status> {
    let t0 = Instant::now();
    let b = c
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(i.clone()),
            device: None,
        })
        .await?
        .into_inner();
    let t1 = Instant::now();
    let r = c
        .complete_approval(pb::CompleteApprovalRequest {
            challenge_id: b.challenge_id,
            user_id: i.user_id.clone(),
            proof: Some(pb::complete_approval_request::Proof::Totp(pb::TotpProof {
                code: code.into(),
                factor_id: String::new(),
            })),
        })
        .await?
        .into_inner();
    Ok((r.approval, t1 - t0, t1.elapsed()))
}

/// One mTLS channel per client, with the `withdrawal-engine` certificate.
async fn channels(url: &str, certs: &Path) -> Vec<Channel> {
    let mut out = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        out.push(connect_as(url, certs, "withdrawal-engine").await.expect("connect"));
    }
    out
}

/// Outcome of one client's run.
#[derive(Default)]
struct ClientRun {
    ok: Vec<(pb::Intent, String)>,
    begin: Vec<Duration>,
    complete: Vec<Duration>,
    failures: Vec<String>,
}

/// Runs every (intent, code) of `work` in order on one channel.
async fn client_run(
    mut c: ApprovalServiceClient<Channel>,
    work: Vec<(pb::Intent, String)>,
) -> (ApprovalServiceClient<Channel>, ClientRun) {
    let mut run = ClientRun::default();
    for (i, code) in work {
        match approve(&mut c, &i, &code).await {
            Ok((token, b, d)) => {
                run.begin.push(b);
                run.complete.push(d);
                run.ok.push((i, token));
            }
            Err(st) => run
                .failures
                .push(format!("{}: {:?} {}", i.user_id, st.code(), st.message())),
        }
    }
    (c, run)
}

/// Runs `work` split over `clients` (user k goes to client k % n); returns
/// the merged outcome and the wall time.
async fn run_clients(
    clients: Vec<ApprovalServiceClient<Channel>>,
    work: Vec<(pb::Intent, String)>,
) -> (Vec<ApprovalServiceClient<Channel>>, ClientRun, Duration) {
    let n = clients.len();
    let mut shares: Vec<Vec<(pb::Intent, String)>> = (0..n).map(|_| Vec::new()).collect();
    for (k, w) in work.into_iter().enumerate() {
        shares[k % n].push(w);
    }
    let start = Instant::now();
    let handles: Vec<_> = clients
        .into_iter()
        .zip(shares)
        .map(|(c, share)| tokio::spawn(client_run(c, share)))
        .collect();
    let mut back = Vec::with_capacity(n);
    let mut all = ClientRun::default();
    for h in handles {
        let (c, r) = h.await.expect("client task");
        back.push(c);
        all.ok.extend(r.ok);
        all.begin.extend(r.begin);
        all.complete.extend(r.complete);
        all.failures.extend(r.failures);
    }
    (back, all, start.elapsed())
}

/// A timed measurement: operations, wall time, process CPU time.
#[derive(Clone, Copy)]
struct Measured {
    n: u64,
    wall: Duration,
    cpu: Duration,
    /// Bytes written to the store's block device meanwhile (see [`written`]).
    written: u64,
}

impl Measured {
    fn per_sec(&self) -> f64 {
        self.n as f64 / self.wall.as_secs_f64()
    }
    /// Average number of cores busy (the whole process).
    fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    /// Process CPU time per operation, µs.
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / (self.n.max(1) as f64)
    }
    /// Bytes written to the store's device per operation, KiB.
    fn kib(&self) -> f64 {
        self.written as f64 / 1024.0 / (self.n.max(1) as f64)
    }
    fn describe(&self) -> String {
        format!(
            "{:.0}/s ({} in {:.2} s; {:.0} µs CPU/op, {:.2} cores busy, {:.1} KiB to disk/op)",
            self.per_sec(),
            self.n,
            self.wall.as_secs_f64(),
            self.cpu_us(),
            self.cores(),
            self.kib()
        )
    }
}

/// Runs `op(thread, iteration)` on `threads` threads until `dur` has passed
/// (or `op` returns false); counts the calls that returned true.
fn rate(threads: usize, dur: Duration, op: impl Fn(usize, u64) -> Option<bool> + Sync) -> Measured {
    let cpu0 = cpu_time();
    let w0 = written();
    let start = Instant::now();
    let deadline = start + dur;
    let total: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                s.spawn(move || {
                    let (mut i, mut ok) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        match op(t, i) {
                            None => break,
                            Some(true) => ok += 1,
                            Some(false) => {}
                        }
                        i += 1;
                    }
                    ok
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    Measured {
        n: total,
        wall: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
        written: written().saturating_sub(w0),
    }
}

/// Bytes written to the store's block device so far.
fn written() -> u64 {
    let Some(stat) = WRITE_DEVICE.get() else {
        return 0;
    };
    // Field 7 of a block device's stat: sectors written (512 bytes each).
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|t| t.split_whitespace().nth(6).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |sectors| sectors * 512)
}

/// The `stat` file of the block device holding `dir`. The device's own
/// counters, not `/proc/self/io`: the kernel there counts a whole extent
/// for each sync of a write into a preallocated file (the write-ahead
/// log's prepared files), far more than reaches the disk. They count every
/// process on the machine.
static WRITE_DEVICE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn watch_writes_of(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(dir) else { return };
    let dev = m.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    if stat.exists() {
        let _ = WRITE_DEVICE.set(stat);
    }
}

/// CPU time (user + system, all threads) this process has used so far.
fn cpu_time() -> Duration {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let tick = *TICK.get_or_init(|| cmd_out("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0));
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is #3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12] // utime, stime (fields 14, 15)
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks / tick)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// One withdrawal intent per user (`wd-<tag>-<k>`) with the user's TOTP
/// code at `step`.
fn approvals_to_make(users: &[User], step: u64, tag: &str) -> Vec<(pb::Intent, String)> {
    users
        .iter()
        .enumerate()
        .map(|(k, u)| {
            (
                intent(&u.id, &format!("wd-{tag}-{k:06}")),
                totp::code_at_step(&u.seed, step),
            )
        })
        .collect()
}

// --- The PostgreSQL phase (`SIGIL_BENCH_PG_DSN`).

/// Counts what a [`PgStore`] is asked, and the SQL statements and client
/// round trips that makes (from `pg_store.rs`: every parameterised
/// statement is prepared, then executed: two round trips; a batch is
/// `START TRANSACTION`, its statements, `COMMIT`; an append is three
/// statements, a check that a key is absent two). Retries after a
/// serialization failure or deadlock are not seen here
/// (`pg_stat_database`'s rollbacks show them).
struct CountedPg {
    inner: PgStore,
    reads: AtomicU64,
    commits: AtomicU64,
    statements: AtomicU64,
    round_trips: AtomicU64,
}

/// A snapshot of [`CountedPg`]'s counters.
#[derive(Clone, Copy, Default)]
struct PgCalls {
    reads: u64,
    commits: u64,
    statements: u64,
    round_trips: u64,
}

impl PgCalls {
    fn since(self, before: PgCalls) -> PgCalls {
        PgCalls {
            reads: self.reads - before.reads,
            commits: self.commits - before.commits,
            statements: self.statements - before.statements,
            round_trips: self.round_trips - before.round_trips,
        }
    }
    fn add(self, o: PgCalls) -> PgCalls {
        PgCalls {
            reads: self.reads + o.reads,
            commits: self.commits + o.commits,
            statements: self.statements + o.statements,
            round_trips: self.round_trips + o.round_trips,
        }
    }
}

impl CountedPg {
    fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.statements.fetch_add(1, Ordering::Relaxed);
        // Prepare, execute.
        self.round_trips.fetch_add(2, Ordering::Relaxed);
    }
    fn commit_of(&self, batch: &Batch) {
        if batch.is_empty() {
            return;
        }
        let ops: u64 = batch
            .ops
            .iter()
            .map(|op| match op {
                Op::Append { .. } => 3,
                Op::Check { version: 0, .. } => 2,
                _ => 1,
            })
            .sum();
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.statements.fetch_add(ops + 2, Ordering::Relaxed);
        // START TRANSACTION, prepare + execute each, COMMIT.
        self.round_trips.fetch_add(2 + 2 * ops, Ordering::Relaxed);
    }
    fn calls(&self) -> PgCalls {
        PgCalls {
            reads: self.reads.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            statements: self.statements.load(Ordering::Relaxed),
            round_trips: self.round_trips.load(Ordering::Relaxed),
        }
    }
}

impl Store for CountedPg {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.read();
        self.inner.get(table, key)
    }
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        self.read();
        self.inner.scan_prefix(table, prefix)
    }
    fn scan_page(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        self.read();
        self.inner.scan_page(table, after, limit)
    }
    fn commit(&self, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        self.commit_of(batch);
        self.inner.commit(batch)
    }
    fn commit_pending(&self, batch: &Batch) -> Result<(Vec<u64>, Ticket), StoreError> {
        self.commit_of(batch);
        self.inner.commit_pending(batch)
    }
    fn read_log(&self, log: Table, after: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.read();
        self.inner.read_log(log, after, limit)
    }
    fn log_head(&self, log: Table) -> Result<(u64, [u8; 32]), StoreError> {
        self.read();
        self.inner.log_head(log)
    }
    fn len(&self, table: Table) -> Result<usize, StoreError> {
        self.read();
        self.inner.len(table)
    }
    fn snapshot(&self) -> Result<Vec<(Table, Vec<u8>, Versioned)>, StoreError> {
        self.read();
        self.inner.snapshot()
    }
    fn blocks_caller(&self) -> bool {
        self.inner.blocks_caller()
    }
}

/// Runs `f` (which blocks on a database client) on the runtime's blocking
/// threads, never on an async worker.
fn off_workers<T: Send + 'static>(rt: &tokio::runtime::Runtime, f: impl FnOnce() -> T + Send + 'static) -> T {
    rt.block_on(rt.spawn_blocking(f)).expect("blocking task")
}

/// One query on the admin connection (the server's `postgres` database).
fn admin_query(rt: &tokio::runtime::Runtime, admin: &str, sql: String) -> Vec<i64> {
    let admin = admin.to_string();
    off_workers(rt, move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to PostgreSQL (admin)");
        let row = c.query_one(sql.as_str(), &[]).expect("admin query");
        (0..row.len()).map(|i| row.get::<_, i64>(i)).collect()
    })
}

/// `pg_stat_database`'s (commits, rollbacks) of `db`, once no session is
/// connected to it: a session's counters reach the statistics at the
/// latest when it exits, so every transaction of the closed sessions is
/// in them. None if sessions are still open after 15 s.
fn settled_xacts(rt: &tokio::runtime::Runtime, admin: &str, db: &str) -> Option<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let open = admin_query(
            rt,
            admin,
            format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"),
        )[0];
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = admin_query(
        rt,
        admin,
        format!("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = '{db}'"),
    );
    Some((v[0], v[1]))
}

/// One text value from the admin connection.
fn admin_text(rt: &tokio::runtime::Runtime, admin: &str, sql: &'static str) -> String {
    let admin = admin.to_string();
    off_workers(rt, move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to PostgreSQL (admin)");
        c.query_one(sql, &[]).expect("admin query").get::<_, String>(0)
    })
}

/// The next transaction id of the cluster: how many transactions that
/// wrote have started (read-only ones take none), with no reporting delay.
fn next_xid(rt: &tokio::runtime::Runtime, admin: &str) -> i64 {
    admin_query(
        rt,
        admin,
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint".into(),
    )[0]
}

/// What one PostgreSQL end-to-end run measured.
struct PgRun {
    replicas: usize,
    e2e: Measured,
    lat_total: Vec<Duration>,
    failures: Vec<String>,
    bad_tokens: usize,
    enroll_time: Duration,
    /// Store calls during the timed window, all replicas.
    calls: PgCalls,
    /// Transactions that wrote (transaction ids taken) during the timed window.
    write_xacts: i64,
    /// `pg_stat_database` commits and rollbacks from the replicas' start to
    /// their stop (warm-up, timed window, start-up and shutdown), and the
    /// approvals in that span.
    xacts: Option<(i64, i64)>,
    approvals_in_span: usize,
}

/// A Sigil on a new [`CountedPg`] store over `dsn`, with its own signer
/// on the bench's token.
fn pg_sigil(cfg: &Config, dsn: &str, clock: &Arc<TestClock>) -> (Arc<Sigil>, Arc<CountedPg>) {
    let store = Arc::new(CountedPg {
        inner: PgStore::open(dsn, cfg.store.pool_size).expect("open the PostgreSQL store"),
        reads: AtomicU64::new(0),
        commits: AtomicU64::new(0),
        statements: AtomicU64::new(0),
        round_trips: AtomicU64::new(0),
    });
    let pin = sigil::signer::read_pin(&cfg.hsm).expect("pin");
    let signer = Signer::open(cfg, pin).expect("signer");
    let sigil = Arc::new(Sigil::new(cfg.clone(), store.clone(), signer, clock.clone()).expect("sigil"));
    (sigil, store)
}

/// The end-to-end approval load of the sled phase, on `replicas` Sigil
/// servers sharing one new database (clients split evenly over them).
fn pg_phase(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    certs: &Path,
    admin: &str,
    replicas: usize,
    n_users: usize,
    n_warm: usize,
) -> PgRun {
    let db = format!("sigil_bench_{}_{replicas}", std::process::id());
    {
        let (admin, db) = (admin.to_string(), db.clone());
        off_workers(rt, move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to PostgreSQL (admin)");
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                .expect("drop database");
            c.batch_execute(&format!("CREATE DATABASE {db}"))
                .expect("create database");
        });
    }
    // The admin DSN names a database; a later dbname wins.
    let dsn = format!("{admin} dbname={db}");
    let clock = Arc::new(TestClock::new(T0));

    // Setup (not measured): enroll through a Sigil of its own, closed
    // before the replicas start, so its sessions' statistics are settled.
    eprintln!(
        "bench: PostgreSQL, {replicas} replica(s): enrolling {} users ...",
        n_users + n_warm
    );
    let t_enroll = Instant::now();
    let users = {
        let dsn = dsn.clone();
        let (cfg, clock) = (cfg.clone(), clock.clone());
        off_workers(rt, move || {
            let (s, _) = pg_sigil(&cfg, &dsn, &clock);
            enroll_on(&s, &clock, 0, n_users + n_warm, PG_ENROLL_THREADS)
        })
    };
    let enroll_time = t_enroll.elapsed();
    let xacts0 = settled_xacts(rt, admin, &db);
    clock.advance(NEXT_STEP);
    let work = approvals_to_make(&users, totp::step_at(clock.now_secs()), &format!("pg{replicas}"));
    let (warm, measured) = work.split_at(n_warm);

    let nodes: Vec<(Arc<Sigil>, Arc<CountedPg>)> = (0..replicas)
        .map(|_| {
            let (dsn, cfg, clock) = (dsn.clone(), cfg.clone(), clock.clone());
            off_workers(rt, move || pg_sigil(&cfg, &dsn, &clock))
        })
        .collect();
    let servers: Vec<server::Running> = nodes
        .iter()
        .map(|(s, _)| {
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let tls = server::tls_config(&cfg.server).expect("tls");
                server::start(s.clone(), tls, listener, std::future::pending())
                    .await
                    .expect("start server")
            })
        })
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .map(|r| format!("https://127.0.0.1:{}", r.addr.port()))
        .collect();

    eprintln!("bench: PostgreSQL, {replicas} replica(s): end-to-end approvals ...");
    let calls = || nodes.iter().fold(PgCalls::default(), |a, (_, st)| a.add(st.calls()));
    let clients = rt.block_on(async {
        // Client k talks to replica k % replicas: the clients split evenly.
        let mut clients = Vec::with_capacity(CLIENTS);
        for k in 0..CLIENTS {
            let ch = connect_as(&urls[k % replicas], certs, "withdrawal-engine")
                .await
                .expect("connect");
            clients.push(ApprovalServiceClient::new(ch));
        }
        let (clients, w, _) = run_clients(clients, warm.to_vec()).await;
        assert!(w.failures.is_empty(), "warm-up failed: {:?}", w.failures);
        clients
    });
    let xid0 = next_xid(rt, admin);
    let calls0 = calls();
    let cpu0 = cpu_time();
    let w0 = written();
    let (_clients, run, wall) = rt.block_on(run_clients(clients, measured.to_vec()));
    let e2e = Measured {
        n: run.ok.len() as u64,
        wall,
        cpu: cpu_time().saturating_sub(cpu0),
        written: written().saturating_sub(w0),
    };
    let calls_window = calls().since(calls0);
    let write_xacts = next_xid(rt, admin) - xid0;
    for r in servers {
        rt.block_on(async { r.stop().await.expect("clean stop") });
    }
    // Verify every approval offline (not timed), with replica 0's keys.
    let now = clock.now_secs();
    let verifier = nodes[0].0.signer().verifier();
    let bad_tokens = run
        .ok
        .iter()
        .filter(|(i, token)| {
            let want: sigil_verify::Intent = i.clone().into();
            verifier.verify_for(token, &want, now).is_err()
        })
        .count();
    drop(nodes); // closes the replicas' connections
    let xacts1 = settled_xacts(rt, admin, &db);
    let xacts = match (xacts0, xacts1) {
        (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1)),
        _ => None,
    };
    let mut lat_total: Vec<Duration> = run.begin.iter().zip(&run.complete).map(|(b, c)| *b + *c).collect();
    lat_total.sort();
    PgRun {
        replicas,
        e2e,
        lat_total,
        failures: run.failures,
        bad_tokens,
        enroll_time,
        calls: calls_window,
        write_xacts,
        xacts,
        approvals_in_span: warm.len() + measured.len(),
    }
}

fn main() {
    let wall = Instant::now();
    let load_start = loadavg();
    let n_users: usize = env_num("SIGIL_BENCH_USERS", 3000);
    let pool: usize = env_num("SIGIL_BENCH_POOL", 8);
    let raw_secs: f64 = env_num("SIGIL_BENCH_RAW_SECS", 3.0);
    let raw_dur = Duration::from_secs_f64(raw_secs);
    let diag_dur = Duration::from_secs_f64(env_num("SIGIL_BENCH_DIAG_SECS", DIAG_DEFAULT));

    // --- 1. Own SoftHSM config before any PKCS#11 call, own PKI, own token.
    let tmp = tempfile::Builder::new()
        .prefix("sigil-bench-")
        .tempdir()
        .expect("tempdir");
    let tokens = tmp.path().join("tokens");
    let conf = tmp.path().join("softhsm2.conf");
    sigil_hsm::write_softhsm_conf(&conf, &tokens).expect("softhsm conf");
    // SoftHSM reads this once, at the first PKCS#11 call of the process.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::remove_var(PIN_ENV);
    let certs: PathBuf = tmp.path().join("certs");
    gen_certs(&certs);
    watch_writes_of(tmp.path());

    let mut cfg = Config::for_test(tmp.path());
    cfg.server.cert = certs.join("server.pem");
    cfg.server.key = certs.join("server.key");
    cfg.server.client_ca = certs.join("ca.pem");
    cfg.hsm.token_label = format!("bench-{}", std::process::id());
    cfg.hsm.pool_size = pool;
    cfg.hsm.pin_env = PIN_ENV.into();
    // Approval mechanics only, as the integration tests' `TestServer::start`:
    // no address whitelist and no withdrawal lock after enrolling a factor
    // (each bench user enrolls right before approving).
    cfg.protection.require_whitelisted_address = false;
    cfg.protection.security_change_lock_seconds = 0;
    std::fs::write(&cfg.hsm.pin_file, PIN).expect("pin file");
    cfg.validate().expect("config");
    sigil::signer::init_token(&cfg, &SecretString::from(SO_PIN), &SecretString::from(PIN)).expect("create bench token");
    let pin = sigil::signer::read_pin(&cfg.hsm).expect("pin");
    let signer = Signer::open(&cfg, pin).expect("signer");
    let store = Arc::new(SledStore::open_with(&cfg.store.path, cfg.store.tuning()).expect("store"));
    let sled_store = store.clone();
    let clock = Arc::new(TestClock::new(T0));
    let sigil = Arc::new(Sigil::new(cfg.clone(), store, signer, clock.clone()).expect("sigil"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let running = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls = server::tls_config(&cfg.server).expect("tls");
        server::start(sigil.clone(), tls, listener, std::future::pending())
            .await
            .expect("start server")
    });
    let url = format!("https://127.0.0.1:{}", running.addr.port());

    // --- 2. Setup (not measured): enroll, then move to a fresh TOTP step.
    let n_warm = CLIENTS * WARMUP_PER_CLIENT;
    eprintln!("bench: enrolling {} users ...", n_users + n_warm);
    let t_enroll = Instant::now();
    let users = enroll(&sigil, &clock, 0, n_users + n_warm);
    let enroll_time = t_enroll.elapsed();
    clock.advance(NEXT_STEP);
    let work = approvals_to_make(&users, totp::step_at(clock.now_secs()), "e2e");
    let (warm, measured) = work.split_at(n_warm);

    // --- 3. Measured: end-to-end approvals over mTLS gRPC.
    eprintln!("bench: end-to-end approvals ...");
    let (e2e, e2e_run) = rt.block_on(async {
        let clients: Vec<_> = channels(&url, &certs)
            .await
            .into_iter()
            .map(ApprovalServiceClient::new)
            .collect();
        // Warm-up on separate users: handshakes done, pools and caches hot.
        let (clients, w, _) = run_clients(clients, warm.to_vec()).await;
        assert!(w.failures.is_empty(), "warm-up failed: {:?}", w.failures);
        let cpu0 = cpu_time();
        let w0 = written();
        let (_clients, run, wall) = run_clients(clients, measured.to_vec()).await;
        let m = Measured {
            n: run.ok.len() as u64,
            wall,
            cpu: cpu_time().saturating_sub(cpu0),
            written: written().saturating_sub(w0),
        };
        (m, run)
    });
    // Verify every approval offline (not timed).
    let now = clock.now_secs();
    let verifier = sigil.signer().verifier();
    let mut bad_tokens = 0usize;
    for (i, token) in &e2e_run.ok {
        let want: sigil_verify::Intent = i.clone().into();
        if verifier.verify_for(token, &want, now).is_err() {
            bad_tokens += 1;
        }
    }
    let mut lat_total: Vec<Duration> = e2e_run
        .begin
        .iter()
        .zip(&e2e_run.complete)
        .map(|(b, c)| *b + *c)
        .collect();
    lat_total.sort();
    let mut lat_begin = e2e_run.begin.clone();
    lat_begin.sort();
    let mut lat_complete = e2e_run.complete.clone();
    lat_complete.sort();

    // --- 4. Measured: raw ES256 signing in the HSM, same token, same process.
    eprintln!("bench: raw ES256 signing ...");
    let msg = vec![b'x'; 700]; // about the size of an approval's signing input
    let raw_sign = |_: usize, _: u64| Some(sigil.signer().sign_raw(&msg).map(|_| true).expect("raw sign"));
    let raw1 = rate(1, raw_dur, raw_sign);
    let raw8 = rate(CLIENTS, raw_dur, raw_sign);

    // --- Diagnostics (not part of the bar).
    eprintln!("bench: diagnostics ...");
    // HSM AES-256-GCM decryption of a factor secret, as CompleteApproval does once.
    let aad = b"sigil-secret-v1\0bench\0f_bench".to_vec();
    let wrapped = sigil.signer().wrap(&[7u8; 20], &aad).expect("wrap");
    let decrypt8 = rate(CLIENTS, diag_dur, |_, _| {
        Some(
            sigil
                .signer()
                .unwrap_secret(&wrapped, &aad)
                .map(|_| true)
                .expect("decrypt"),
        )
    });
    // Durable, group-committed store writes (one insert of ~600 bytes each),
    // as BeginApproval and CompleteApproval each do once.
    let store = sigil.store();
    let commit = |tag: &'static str| {
        move |t: usize, i: u64| {
            let mut b = Batch::new();
            b.insert(
                Table::Meta,
                format!("bench-commit-{tag}-{t}-{i}").into_bytes(),
                vec![b'v'; 600],
            );
            Some(store.commit(&b).map(|_| true).expect("commit"))
        }
    };
    let commit1 = rate(1, diag_dur, commit("a"));
    let commit8 = rate(CLIENTS, diag_dur, commit("b"));
    // Approvals through the Sigil API directly (no gRPC/TLS): the same users
    // on later TOTP steps, one thread then 8 threads.
    let direct_errors = std::sync::Mutex::new(Vec::<String>::new());
    let direct = |threads: usize, tag: &str| {
        clock.advance(NEXT_STEP);
        let st = totp::step_at(clock.now_secs());
        let next = AtomicUsize::new(0);
        let m = rate(threads, diag_dur, |_, _| {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let u = users.get(k)?;
            let i: sigil_verify::Intent = intent(&u.id, &format!("wd-{tag}-{k:06}")).into();
            let res = sigil
                .approvals()
                .begin_approval("withdrawal-engine", i, DeviceSignals::default())
                .and_then(|b| {
                    sigil.approvals().complete_approval(
                        "withdrawal-engine",
                        &b.challenge_id,
                        &u.id,
                        Proof::Totp {
                            code: totp::code_at_step(&u.seed, st),
                            factor_id: None,
                        },
                    )
                });
            if let Err(e) = &res {
                direct_errors.lock().unwrap().push(format!("{} ({tag}): {e}", u.id));
            }
            Some(res.is_ok())
        });
        let tried = next.load(Ordering::Relaxed).min(users.len()) as u64;
        (m, tried - m.n, tried >= users.len() as u64)
    };
    eprintln!("bench: in-process approvals ...");
    let direct1 = direct(1, "direct1");
    let direct8 = direct(CLIENTS, "direct8");

    // The gRPC floor: the cheapest RPC this server has (grpc.health.v1 Check:
    // no store, no HSM) over the same mTLS server, 8 clients, one call in
    // flight each. An approval is two RPCs, so half this rate bounds any
    // approval path behind this transport on this machine.
    let floor = rt.block_on(async {
        let chans: Vec<_> = channels(&url, &certs)
            .await
            .into_iter()
            .map(tonic_health::pb::health_client::HealthClient::new)
            .collect();
        let check = |mut c: tonic_health::pb::health_client::HealthClient<Channel>, until: Instant| async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let r = c
                    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await
                    .expect("health check");
                assert_eq!(r.into_inner().status, 1, "serving");
                n += 1;
            }
            (c, n)
        };
        // Warm-up, then the timed window.
        let warm_until = Instant::now() + Duration::from_millis(300);
        let hs: Vec<_> = chans.into_iter().map(|c| tokio::spawn(check(c, warm_until))).collect();
        let mut chans = Vec::with_capacity(CLIENTS);
        for h in hs {
            chans.push(h.await.expect("warm-up task").0);
        }
        let cpu0 = cpu_time();
        let w0 = written();
        let start = Instant::now();
        let until = start + diag_dur;
        let hs: Vec<_> = chans.into_iter().map(|c| tokio::spawn(check(c, until))).collect();
        let mut n = 0u64;
        for h in hs {
            n += h.await.expect("check task").1;
        }
        Measured {
            n,
            wall: start.elapsed(),
            cpu: cpu_time().saturating_sub(cpu0),
            written: written().saturating_sub(w0),
        }
    });

    rt.block_on(async { running.stop().await.expect("clean stop") });

    // --- PostgreSQL (when `SIGIL_BENCH_PG_DSN` names a server): the same
    // end-to-end load on one replica, then on two replicas sharing a database.
    let pg_admin = std::env::var("SIGIL_BENCH_PG_DSN")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let pg_runs: Vec<PgRun> = match &pg_admin {
        Some(admin) => [1, 2]
            .into_iter()
            .map(|replicas| pg_phase(&rt, &cfg, &certs, admin, replicas, measured.len(), n_warm))
            .collect(),
        None => Vec::new(),
    };
    let pg_server = pg_admin.as_ref().map(|admin| {
        (
            admin_text(&rt, admin, "SELECT version()"),
            admin_text(&rt, admin, "SHOW max_connections"),
            admin_text(&rt, admin, "SHOW synchronous_commit"),
        )
    });

    // --- 5. Report.
    let failures = e2e_run.failures.len() + bad_tokens;
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("## Sigil benchmark\n");
    println!("- nproc: {}", cmd_out("nproc", &[]));
    println!("- CPU: {}", cpu_model());
    println!("- load average at start / end: {load_start} / {}", loadavg());
    println!("- rustc: {}", cmd_out("rustc", &["--version"]));
    println!(
        "- softhsm2: {}",
        cmd_out("dpkg-query", &["-W", "-f=${Version}", "softhsm2"])
    );
    println!(
        "- store: sled on {} (temp dir {})",
        cmd_out("stat", &["-f", "-c", "%T", &tmp.path().display().to_string()]),
        tmp.path().display()
    );
    println!(
        "- HSM session pool: {pool}; clients: {CLIENTS}; tokio workers: {nproc}; users: {} (+{n_warm} warm-up)",
        measured.len()
    );
    println!(
        "- setup: enrolled {} users in {:.1} s ({:.0}/s, {ENROLL_THREADS} threads)\n",
        users.len(),
        enroll_time.as_secs_f64(),
        users.len() as f64 / enroll_time.as_secs_f64()
    );
    let ratio8 = e2e.per_sec() / raw8.per_sec();
    let ratio1 = e2e.per_sec() / raw1.per_sec();
    println!("| measurement | result |");
    println!("|---|---|");
    println!(
        "| **end-to-end approvals/s** (8 mTLS clients, Begin+Complete) | **{:.0}/s** ({} ok, {failures} failed, {:.2} s; {:.0} µs CPU/approval, {:.2} cores busy, {:.1} KiB to disk/approval) |",
        e2e.per_sec(),
        e2e.n,
        e2e.wall.as_secs_f64(),
        e2e.cpu_us(),
        e2e.cores(),
        e2e.kib()
    );
    println!(
        "| approval latency p50 / p99 (Begin+Complete) | {:.1} / {:.1} ms |",
        pct(&lat_total, 0.5),
        pct(&lat_total, 0.99)
    );
    println!(
        "| BeginApproval p50 / CompleteApproval p50 | {:.1} / {:.1} ms |",
        pct(&lat_begin, 0.5),
        pct(&lat_complete, 0.5)
    );
    println!("| raw ES256 sign, 1 thread | {} |", raw1.describe());
    println!("| raw ES256 sign, 8 threads | {} |", raw8.describe());
    println!(
        "| **ratio e2e / raw (8 threads)**, the bar (>= {BAR}) | **{ratio8:.3}** {} |",
        if ratio8 >= BAR { "PASS" } else { "BELOW BAR" }
    );
    println!("| ratio e2e / raw (1 thread) | {ratio1:.3} |");
    println!("| diag: HSM AES-GCM decrypt, 8 threads | {} |", decrypt8.describe());
    println!(
        "| diag: durable store commit, 1 thread | {} = {:.2} ms each |",
        commit1.describe(),
        1000.0 / commit1.per_sec()
    );
    println!("| diag: durable store commit, 8 threads | {} |", commit8.describe());
    for (name, (m, failed, out)) in [("1 thread", direct1), ("8 threads", direct8)] {
        println!(
            "| diag: in-process approvals (Sigil API, no gRPC/TLS), {name} | {}{}{} |",
            m.describe(),
            if failed > 0 {
                format!(", {failed} FAILED")
            } else {
                String::new()
            },
            if out { ", ran out of users" } else { "" }
        );
    }
    println!(
        "| diag: gRPC floor, grpc.health.v1 Check over mTLS, 8 clients | {} |",
        floor.describe()
    );
    println!(
        "| diag: ceiling for any approval (2 RPCs) on this transport: floor / 2 / raw (8 threads) | {:.3} |",
        floor.per_sec() / 2.0 / raw8.per_sec()
    );
    let cp = sled_store.checkpoint_stats();
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / cp.checkpoints.max(1) as f64;
    println!(
        "| diag: store checkpoints during the whole run | {} checkpoints; per checkpoint: writing into sled {:.2} ms, \
         durability barrier (sled flush + fsync of its files) {:.2} ms, marker file + log removal {:.2} ms |",
        cp.checkpoints,
        per(cp.apply),
        per(cp.barrier),
        per(cp.marker_and_removal)
    );

    if let Some((version, max_connections, sync_commit)) = &pg_server {
        println!("\n### Stores: sled and PostgreSQL (`SIGIL_BENCH_PG_DSN`)\n");
        println!("- PostgreSQL: {version}; max_connections {max_connections}, synchronous_commit {sync_commit}");
        println!(
            "- per replica: its own Sigil, server, signer ({pool} HSM sessions) and store (pool of {} connections); \
             a new database for each row; the same {CLIENTS} clients and users as above, split evenly over the replicas",
            cfg.store.pool_size
        );
        for r in &pg_runs {
            println!(
                "- {} replica(s): enrolled {} users in {:.1} s",
                r.replicas,
                r.approvals_in_span,
                r.enroll_time.as_secs_f64()
            );
        }
        println!();
        println!(
            "| store | approvals/s | ratio to raw (8 threads) | p50 / p99 | CPU/approval | \
             per approval: store reads, commits, SQL statements, round trips | transactions/approval |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| sled | {:.0}/s ({} ok, {:.2} s) | {:.3} | {:.1} / {:.1} ms | {:.0} µs | – | – |",
            e2e.per_sec(),
            e2e.n,
            e2e.wall.as_secs_f64(),
            ratio8,
            pct(&lat_total, 0.5),
            pct(&lat_total, 0.99),
            e2e.cpu_us()
        );
        for r in &pg_runs {
            let n = r.e2e.n.max(1) as f64;
            let xacts = match r.xacts {
                Some((commits, rollbacks)) => format!(
                    "{:.2} committed ({:.2} rolled back), of which {:.2} wrote",
                    commits as f64 / r.approvals_in_span as f64,
                    rollbacks as f64 / r.approvals_in_span as f64,
                    r.write_xacts as f64 / n
                ),
                None => format!("{:.2} wrote (sessions did not close)", r.write_xacts as f64 / n),
            };
            println!(
                "| PostgreSQL, {} replica{} | {:.0}/s ({} ok, {} failed, {:.2} s) | {:.3} | {:.1} / {:.1} ms | {:.0} µs | \
                 {:.1}, {:.1}, {:.1}, {:.1} | {xacts} |",
                r.replicas,
                if r.replicas == 1 { "" } else { "s" },
                r.e2e.per_sec(),
                r.e2e.n,
                r.failures.len() + r.bad_tokens,
                r.e2e.wall.as_secs_f64(),
                r.e2e.per_sec() / raw8.per_sec(),
                pct(&r.lat_total, 0.5),
                pct(&r.lat_total, 0.99),
                r.e2e.cpu_us(),
                r.calls.reads as f64 / n,
                r.calls.commits as f64 / n,
                r.calls.statements as f64 / n,
                r.calls.round_trips as f64 / n
            );
        }
    } else {
        println!("\n(PostgreSQL rows skipped: SIGIL_BENCH_PG_DSN is not set; `make bench` sets it)");
    }
    println!("\ntotal bench wall time: {:.1} s", wall.elapsed().as_secs_f64());

    let direct_failed = direct1.1 + direct8.1;
    let pg_failed: usize = pg_runs.iter().map(|r| r.failures.len() + r.bad_tokens).sum();
    for r in &pg_runs {
        for f in r.failures.iter().take(10) {
            eprintln!("failed (PostgreSQL, {} replicas): {f}", r.replicas);
        }
    }
    if pg_failed > 0 {
        eprintln!("FAILED: {pg_failed} PostgreSQL approvals failed or did not verify");
    }
    if failures > 0 || direct_failed > 0 || pg_failed > 0 {
        for f in e2e_run.failures.iter().take(10) {
            eprintln!("failed: {f}");
        }
        for f in direct_errors.lock().unwrap().iter().take(10) {
            eprintln!("failed in-process: {f}");
        }
        eprintln!(
            "FAILED: {} end-to-end approvals failed, {bad_tokens} approvals did not verify, \
             {direct_failed} in-process approvals failed",
            e2e_run.failures.len()
        );
        drop(tmp); // exit() skips destructors: remove the temp dir first
        std::process::exit(1);
    }
}
