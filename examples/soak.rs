//! Soak: a bounded run of mixed traffic against a real release `sigild`,
//! watching it for leaks.
//!
//! `make soak` builds the release binaries and runs this load generator
//! (`cargo run --release --features soak --example soak`). It is a
//! process of its own: it starts `target/release/sigild` as a child with
//! its own SoftHSM token (`sigil hsm init` in a temp dir, a random PIN
//! passed in the environment and never printed), sled store, development
//! PKI (`certs/gen.sh`) and `[metrics] listen` on a free loopback port;
//! the project's token and store are never touched. Then:
//!
//! 1. **Setup**: users for the approvals, each with an emulated YubiKey
//!    HMAC-SHA1 slot (no TOTP step limits: a TOTP code is accepted once
//!    per 30 s step and the daemon runs on the real clock), and a few
//!    "victims" whose factors take the wrong answers.
//! 2. **Ramp** (the start of the load, 15 s): the mix below in a closed
//!    loop at 2, 4, 8, 16 and 32 concurrent callers, 3 s each: the best
//!    rate is the capacity of this machine for this mix, measured in this
//!    run.
//! 3. **Hold** (the rest of `SOAK_SECONDS`): the same mix paced at
//!    `SOAK_LOAD` (default 0.8) of that capacity, by as many callers as
//!    reached it (each call is due at its time on a fixed schedule; a late
//!    one is reported, not skipped).
//!
//! The mix, by weight: approve and redeem a withdrawal with the YubiKey
//! (Begin, Complete, Redeem; 30), approve and redeem one with TOTP when a
//! user enrolled during the run has an unused step (else the YubiKey; 10),
//! enroll a TOTP factor for a new user (Begin, Confirm; 10), ListFactors
//! (15), `grpc.health.v1` Check (10), GetApprovalKeys (10), and refusals
//! (15): a wrong YubiKey response (`FACTOR_REJECTED`, or `FACTOR_LOCKED`
//! once the victim is locked), a second redemption
//! (`APPROVAL_ALREADY_REDEEMED`), a non-canonical amount
//! (`INVALID_ARGUMENT`). Any other outcome of any call is an unexpected
//! error.
//!
//! Every `SOAK_SAMPLE_SECONDS` (default 5) it reads sigild's resident set
//! (`/proc/<pid>/status` VmRSS), open file descriptors (`/proc/<pid>/fd`)
//! and threads, and the HSM pool from `/metrics`. It fails (exit status 1,
//! the reasons printed) on:
//! - any unexpected RPC error, or sigild gone;
//! - RSS growth: after the first `SOAK_WARMUP_SECONDS` (default 20) of the
//!   hold, the median RSS of the last third of the samples above the
//!   median of the first third by more than 10% + 16 MiB. Without a leak
//!   the resident set still moves: the write-ahead log's memtable swings
//!   between checkpoints, mimalloc keeps freed pages a while for reuse, a
//!   blocking thread the runtime adds keeps its own heap, the background
//!   sweep (every 30 s) reads whole tables and the store grows by hundreds
//!   of MiB, which sled indexes (its page cache is bounded to
//!   `SLED_CACHE_MIB` here, so it fills during the warm-up). Measured
//!   without a leak: within ±10%. Medians ignore the sweep's short peaks,
//!   while a leak raises every sample: at ~3000 RPC/s, 300 bytes a call
//!   is about 50 MiB between the thirds;
//! - file descriptor growth: the most in the last third above the most in
//!   the first third by more than 4 (the write-ahead log rotates files, a
//!   scrape holds a socket for a moment; the clients' connections are
//!   fixed);
//! - HSM session growth: more sessions open than the pool's size, or more
//!   at the end than at the first sample.
//!
//! It prints the machine, the versions and a summary table (markdown), and
//! stops sigild with SIGTERM at the end (a clean exit is checked too).
//!
//! Knobs (environment): `SOAK_SECONDS` (120), `SOAK_LOAD` (0.8),
//! `SOAK_SAMPLE_SECONDS` (5), `SOAK_WARMUP_SECONDS` (20), and
//! `SOAK_SWEEP_SECONDS` (sigild's `[protection] sweep_interval_seconds`;
//! unset: the product's default, 30), to tell the background sweep's share
//! of the resident set from the rest's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::*;
use sigil::client::connect_as;
use sigil::factor::totp;
use sigil::factor::yubikey::SoftHmacSlot;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic::transport::Channel;
use tonic::Code;

/// Concurrency levels of the ramp.
const RAMP: [usize; 5] = [2, 4, 8, 16, 32];
/// Length of each ramp level.
const RAMP_LEVEL: Duration = Duration::from_secs(3);
/// Users with a YubiKey HMAC slot that approve.
const HMAC_USERS: usize = 2000;
/// Users whose factors take the wrong answers.
const VICTIMS: usize = 16;
/// Channels (HTTP/2 connections) per role.
const CHANNELS: usize = 4;
/// sled's page cache in the soak (`[store] cache_mib`): small enough to
/// fill during the warm-up, so that what grows after it is not the cache.
const SLED_CACHE_MIB: u64 = 32;
/// The memtables' bound in the soak (`[store] checkpoint_keys` and
/// `checkpoint_mib`): records committed since the last checkpoint into
/// sled stay in memory, so the resident set swings with them; kept small
/// here so that the swing does not hide (or fake) a leak.
const CHECKPOINT_KEYS: usize = 10_000;
const CHECKPOINT_MIB: usize = 8;
/// RSS tolerance: relative, and absolute (bytes).
const RSS_GROWTH: f64 = 0.10;
const RSS_SLACK: u64 = 16 << 20;
/// File descriptors the last third may hold beyond the first.
const FD_SLACK: u64 = 4;

/// One look at sigild.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the load began.
    t: f64,
    hold: bool,
    rss: u64,
    fds: u64,
    threads: u64,
    sessions_open: u64,
    pool_size: u64,
    rpcs: u64,
    /// Bytes of the store's directory (sled and the write-ahead log).
    store: u64,
}

/// A histogram of the text format, summed over the series whose labels
/// contain a filter: cumulative bucket counts by upper bound (seconds).
struct Histogram {
    count: f64,
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    fn read(text: &str, name: &str, filter: &str) -> Histogram {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let bucket = format!("{name}_bucket");
        for (series, v) in text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
        {
            if series.split('{').next() != Some(bucket.as_str()) || !series.contains(filter) {
                continue;
            }
            let Some(le) = series.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += v.parse::<f64>().unwrap_or(0.0);
        }
        let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            count: buckets.last().map(|b| b.1).unwrap_or(0.0),
            buckets,
        }
    }

    /// The bucket bound (ms) under which `q` of the observations fall.
    fn quantile_ms(&self, q: f64) -> String {
        if self.count == 0.0 {
            return "–".into();
        }
        let want = self.count * q;
        match self.buckets.iter().find(|(_, c)| *c >= want) {
            Some((le, _)) if le.is_finite() => format!("{}", le * 1000.0),
            _ => "> 10000".into(),
        }
    }
}

/// Looks at the process `pid` and scrapes its metrics at `metrics`.
fn sample(pid: u32, metrics: SocketAddr, store: &Path, t0: Instant, hold: bool) -> Result<Sample, String> {
    let rss = proc_status(pid, "VmRSS:").ok_or("sigild is gone (no /proc/<pid>/status)")? * 1024;
    let threads = proc_status(pid, "Threads:").unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("cannot list sigild's file descriptors: {e}"))?
        .count() as u64;
    let m = scrape(metrics)?;
    Ok(Sample {
        t: t0.elapsed().as_secs_f64(),
        hold,
        rss,
        fds,
        threads,
        sessions_open: metric(&m, "sigil_hsm_sessions", "") as u64,
        pool_size: metric(&m, "sigil_hsm_pool_size", "") as u64,
        rpcs: metric(&m, "sigil_rpc_requests_total", "") as u64,
        store: du(store),
    })
}

// ----- the workload ----------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    ApproveHmac,
    ApproveTotp,
    EnrollTotp,
    ListFactors,
    Health,
    Jwks,
    Refused,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::ApproveHmac => "approve+redeem (YubiKey HMAC)",
            Op::ApproveTotp => "approve+redeem (TOTP)",
            Op::EnrollTotp => "enroll TOTP (begin+confirm)",
            Op::ListFactors => "ListFactors",
            Op::Health => "health Check",
            Op::Jwks => "GetApprovalKeys",
            Op::Refused => "refused (wrong proof, replay, bad amount)",
        }
    }
}

/// The mix: operation and weight.
const MIX: [(Op, usize); 7] = [
    (Op::ApproveHmac, 30),
    (Op::ApproveTotp, 10),
    (Op::EnrollTotp, 10),
    (Op::ListFactors, 15),
    (Op::Health, 10),
    (Op::Jwks, 10),
    (Op::Refused, 15),
];

struct HmacUser {
    id: String,
    slot: SoftHmacSlot,
    /// One approval at a time per user, as a person makes them (two at
    /// once race on the user's record and one is refused, rightly).
    busy: AtomicBool,
}

impl HmacUser {
    fn claim(&self) -> bool {
        !self.busy.swap(true, Ordering::Acquire)
    }
    fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

struct TotpUser {
    id: String,
    seed: Vec<u8>,
    last_step: u64,
}

/// What every caller shares.
struct World {
    frontend: Vec<Channel>,
    engine: Vec<Channel>,
    hmac: Vec<HmacUser>,
    victims: Vec<HmacUser>,
    totp: Mutex<VecDeque<TotpUser>>,
    redeemed: Mutex<VecDeque<(String, pb::Intent)>>,
    next_id: AtomicU64,
    /// Operation → latencies (µs) of those that ended as expected.
    latencies: Mutex<BTreeMap<Op, Vec<u32>>>,
    /// Unexpected outcomes (the first few kept whole).
    unexpected: AtomicU64,
    first_unexpected: Mutex<Vec<String>>,
    rpcs: AtomicU64,
}

fn expect_code<T>(what: &str, r: Result<T, tonic::Status>, codes: &[Code]) -> Result<(), String> {
    match r {
        Ok(_) => Err(format!("{what}: answered OK, expected {codes:?}")),
        Err(st) if codes.contains(&st.code()) => Ok(()),
        Err(st) => Err(format!("{what}: {:?} {}", st.code(), st.message())),
    }
}

fn ok<T>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, String> {
    r.map(tonic::Response::into_inner)
        .map_err(|st| format!("{what}: {:?} {}", st.code(), st.message()))
}

impl World {
    fn wid(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn engine(&self, pick: &mut Pick) -> ApprovalServiceClient<Channel> {
        ApprovalServiceClient::new(self.engine[pick.below(self.engine.len())].clone())
    }

    fn frontend(&self, pick: &mut Pick) -> FactorServiceClient<Channel> {
        FactorServiceClient::new(self.frontend[pick.below(self.frontend.len())].clone())
    }

    fn rpc(&self, n: u64) {
        self.rpcs.fetch_add(n, Ordering::Relaxed);
    }

    /// A user with an HMAC slot and no approval in flight, claimed.
    fn idle_user<'a>(&self, users: &'a [HmacUser], pick: &mut Pick) -> &'a HmacUser {
        loop {
            let u = &users[pick.below(users.len())];
            if u.claim() {
                return u;
            }
        }
    }

    /// Approves and redeems with a claimed HMAC user, then releases it.
    async fn approve_any_hmac(&self, pick: &mut Pick) -> Result<(), String> {
        let u = self.idle_user(&self.hmac, pick);
        let r = self.approve_hmac(u, pick).await;
        u.release();
        r
    }

    async fn run(&self, op: Op, pick: &mut Pick) -> Result<(), String> {
        match op {
            Op::ApproveHmac => self.approve_any_hmac(pick).await,
            Op::ApproveTotp => {
                let step = totp::step_at(now_secs());
                let ready = {
                    let mut q = self.totp.lock().unwrap();
                    match q.pop_front() {
                        Some(u) if u.last_step < step => Some(u),
                        Some(u) => {
                            q.push_front(u);
                            None
                        }
                        None => None,
                    }
                };
                match ready {
                    Some(mut u) => {
                        let r = self.approve_totp(&u, step, pick).await;
                        u.last_step = recorded_step(&u.seed, step);
                        self.totp.lock().unwrap().push_back(u);
                        r
                    }
                    None => self.approve_any_hmac(pick).await,
                }
            }
            Op::EnrollTotp => self.enroll_totp(pick).await,
            Op::ListFactors => {
                let u = &self.hmac[pick.below(self.hmac.len())];
                self.rpc(1);
                let list = ok(
                    "ListFactors",
                    self.frontend(pick)
                        .list_factors(pb::ListFactorsRequest { user_id: u.id.clone() })
                        .await,
                )?;
                if list.factors.len() != 1 {
                    return Err(format!("ListFactors: {} factors for {}", list.factors.len(), u.id));
                }
                Ok(())
            }
            Op::Health => {
                self.rpc(1);
                let ch = self.engine[pick.below(self.engine.len())].clone();
                let r = ok(
                    "health Check",
                    tonic_health::pb::health_client::HealthClient::new(ch)
                        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                        .await,
                )?;
                if r.status() != tonic_health::pb::health_check_response::ServingStatus::Serving {
                    return Err(format!("health Check: {:?}", r.status()));
                }
                Ok(())
            }
            Op::Jwks => {
                self.rpc(1);
                let k = ok(
                    "GetApprovalKeys",
                    self.engine(pick).get_approval_keys(pb::GetApprovalKeysRequest {}).await,
                )?;
                if k.keys.is_empty() {
                    return Err("GetApprovalKeys: no key".into());
                }
                Ok(())
            }
            Op::Refused => self.refused(pick).await,
        }
    }

    async fn approve_hmac(&self, u: &HmacUser, pick: &mut Pick) -> Result<(), String> {
        let mut a = self.engine(pick);
        let i = withdrawal(&u.id, &self.wid("wd"), "0.5");
        self.rpc(1);
        let b = ok(
            "BeginApproval",
            a.begin_approval(pb::BeginApprovalRequest {
                intent: Some(i.clone()),
                device: None,
            })
            .await,
        )?;
        let response = u
            .slot
            .respond(&b.yubikey_hmac_challenge)
            .map_err(|e| format!("HMAC slot: {e}"))?;
        self.rpc(1);
        let done = ok(
            "CompleteApproval (HMAC)",
            a.complete_approval(hmac_proof(&b.challenge_id, &u.id, &response)).await,
        )?;
        self.redeem(&mut a, done.approval, i).await
    }

    async fn approve_totp(&self, u: &TotpUser, step: u64, pick: &mut Pick) -> Result<(), String> {
        let mut a = self.engine(pick);
        let i = withdrawal(&u.id, &self.wid("wd"), "0.25");
        self.rpc(1);
        let b = ok(
            "BeginApproval",
            a.begin_approval(pb::BeginApprovalRequest {
                intent: Some(i.clone()),
                device: None,
            })
            .await,
        )?;
        self.rpc(1);
        let done = ok(
            "CompleteApproval (TOTP)",
            a.complete_approval(pb::CompleteApprovalRequest {
                challenge_id: b.challenge_id,
                user_id: u.id.clone(),
                proof: Some(pb::complete_approval_request::Proof::Totp(pb::TotpProof {
                    code: totp::code_at_step(&u.seed, step),
                    factor_id: String::new(),
                })),
            })
            .await,
        )?;
        self.redeem(&mut a, done.approval, i).await
    }

    async fn redeem(&self, a: &mut ApprovalServiceClient<Channel>, token: String, i: pb::Intent) -> Result<(), String> {
        self.rpc(1);
        let r = ok(
            "RedeemApproval",
            a.redeem_approval(pb::RedeemApprovalRequest {
                approval: token.clone(),
                expected_intent: Some(i.clone()),
                idempotency_key: String::new(),
            })
            .await,
        )?;
        if r.replayed {
            return Err("RedeemApproval: a first redemption reported as replayed".into());
        }
        let mut q = self.redeemed.lock().unwrap();
        q.push_back((token, i));
        if q.len() > 64 {
            q.pop_front();
        }
        Ok(())
    }

    async fn enroll_totp(&self, pick: &mut Pick) -> Result<(), String> {
        let mut f = self.frontend(pick);
        let id = self.wid("soak-totp");
        self.rpc(1);
        let e = ok(
            "BeginTotpEnrollment",
            f.begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
                user_id: id.clone(),
                ..Default::default()
            })
            .await,
        )?;
        let seed = data_encoding::BASE32_NOPAD
            .decode(e.secret_base32.as_bytes())
            .map_err(|e| format!("BeginTotpEnrollment: secret is not base32: {e}"))?;
        let step = totp::step_at(now_secs());
        self.rpc(1);
        ok(
            "ConfirmTotpEnrollment",
            f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
                user_id: id.clone(),
                factor_id: e.factor_id,
                code: totp::code_at_step(&seed, step),
            })
            .await,
        )?;
        self.totp.lock().unwrap().push_back(TotpUser {
            id,
            last_step: recorded_step(&seed, step),
            seed,
        });
        Ok(())
    }

    async fn refused(&self, pick: &mut Pick) -> Result<(), String> {
        let mut a = self.engine(pick);
        match pick.below(3) {
            0 => {
                let v = self.idle_user(&self.victims, pick);
                let r = self.wrong_proof(&mut a, v).await;
                v.release();
                r
            }
            1 => {
                let again = self.redeemed.lock().unwrap().front().cloned();
                let Some((token, i)) = again else {
                    return self.bad_amount(&mut a).await;
                };
                self.rpc(1);
                expect_code(
                    "a second RedeemApproval",
                    a.redeem_approval(pb::RedeemApprovalRequest {
                        approval: token,
                        expected_intent: Some(i),
                        idempotency_key: String::new(),
                    })
                    .await,
                    &[Code::FailedPrecondition],
                )
            }
            _ => self.bad_amount(&mut a).await,
        }
    }

    /// A wrong HMAC response from a victim: refused, or refused unchecked
    /// once the victim's factor is locked.
    async fn wrong_proof(&self, a: &mut ApprovalServiceClient<Channel>, v: &HmacUser) -> Result<(), String> {
        self.rpc(1);
        let b = ok(
            "BeginApproval (victim)",
            a.begin_approval(pb::BeginApprovalRequest {
                intent: Some(withdrawal(&v.id, &self.wid("wd"), "0.5")),
                device: None,
            })
            .await,
        )?;
        let mut wrong = v
            .slot
            .respond(&b.yubikey_hmac_challenge)
            .map_err(|e| format!("HMAC slot: {e}"))?;
        wrong[0] ^= 0x5a;
        self.rpc(1);
        expect_code(
            "CompleteApproval with a wrong response",
            a.complete_approval(hmac_proof(&b.challenge_id, &v.id, &wrong)).await,
            &[Code::PermissionDenied, Code::ResourceExhausted],
        )
    }

    async fn bad_amount(&self, a: &mut ApprovalServiceClient<Channel>) -> Result<(), String> {
        let u = &self.hmac[0];
        self.rpc(1);
        expect_code(
            "BeginApproval with amount 01.50",
            a.begin_approval(pb::BeginApprovalRequest {
                intent: Some(withdrawal(&u.id, &self.wid("wd"), "01.50")),
                device: None,
            })
            .await,
            &[Code::InvalidArgument],
        )
    }

    /// Runs one chosen operation and books its outcome.
    async fn one(&self, pick: &mut Pick) {
        let total: usize = MIX.iter().map(|(_, w)| w).sum();
        let mut x = pick.below(total);
        let op = MIX
            .iter()
            .find(|(_, w)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .map(|(o, _)| *o)
            .unwrap_or(Op::Health);
        let t = Instant::now();
        match self.run(op, pick).await {
            Ok(()) => {
                let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                self.latencies.lock().unwrap().entry(op).or_default().push(us);
            }
            Err(e) => {
                self.unexpected.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_unexpected.lock().unwrap();
                if first.len() < 10 {
                    first.push(format!("{}: {e}", op.name()));
                }
            }
        }
    }

    fn completed(&self) -> u64 {
        self.latencies
            .lock()
            .unwrap()
            .values()
            .map(|v| v.len() as u64)
            .sum::<u64>()
            + self.unexpected.load(Ordering::Relaxed)
    }
}

fn hmac_proof(challenge_id: &str, user: &str, response: &[u8]) -> pb::CompleteApprovalRequest {
    pb::CompleteApprovalRequest {
        challenge_id: challenge_id.into(),
        user_id: user.into(),
        proof: Some(pb::complete_approval_request::Proof::YubikeyHmac(
            pb::YubikeyHmacProof {
                response: response.to_vec(),
                factor_id: String::new(),
            },
        )),
    }
}

/// Enrolls `n` users with an emulated HMAC slot each, 16 at a time.
async fn enroll_hmac(frontend: &[Channel], prefix: &str, n: usize) -> Vec<HmacUser> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let mut f = FactorServiceClient::new(frontend[i % frontend.len()].clone());
            let id = format!("{prefix}-{i}");
            tasks.push(tokio::spawn(async move {
                let secret = random::<20>();
                let slot = SoftHmacSlot::new(secret);
                let e = f
                    .begin_yubikey_hmac_enrollment(pb::BeginYubikeyHmacEnrollmentRequest {
                        user_id: id.clone(),
                        nickname: "slot 2".into(),
                        secret: secret.to_vec(),
                        slot: 2,
                        step_up_approval: String::new(),
                    })
                    .await
                    .expect("begin HMAC enrollment")
                    .into_inner();
                f.confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
                    user_id: id.clone(),
                    factor_id: e.factor_id,
                    proof: Some(pb::confirm_yubikey_enrollment_request::Proof::HmacResponse(
                        slot.respond(&e.challenge).unwrap().to_vec(),
                    )),
                })
                .await
                .expect("confirm HMAC enrollment");
                HmacUser {
                    id,
                    slot,
                    busy: AtomicBool::new(false),
                }
            }));
        }
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
    out
}

/// The mix in a closed loop at `callers` concurrent callers for `len`;
/// returns operations per second.
async fn closed_loop(world: &Arc<World>, callers: usize, len: Duration) -> f64 {
    let before = world.completed();
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (w, stop) = (world.clone(), stop.clone());
            tokio::spawn(async move {
                let mut pick = Pick::new();
                while !stop.load(Ordering::Relaxed) {
                    w.one(&mut pick).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(len).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    (world.completed() - before) as f64 / t.elapsed().as_secs_f64()
}

/// The mix paced at `rate` operations per second for `len`, by `callers`
/// callers taking numbered tickets (ticket i is due at start + i/rate).
/// Returns (operations per second achieved, the most any ticket ran late).
async fn paced(world: &Arc<World>, callers: usize, rate: f64, len: Duration) -> (f64, Duration) {
    let before = world.completed();
    let next = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (w, next, late) = (world.clone(), next.clone(), late.clone());
            tokio::spawn(async move {
                let mut pick = Pick::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let due = Duration::from_secs_f64(i as f64 / rate);
                    if due >= len {
                        return;
                    }
                    tokio::time::sleep_until(start + due).await;
                    let behind = start.elapsed().saturating_sub(due);
                    late.fetch_max(behind.as_micros() as u64, Ordering::Relaxed);
                    w.one(&mut pick).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let ops = (world.completed() - before) as f64 / start.elapsed().as_secs_f64();
    (ops, Duration::from_micros(late.load(Ordering::Relaxed)))
}

#[tokio::main]
async fn main() {
    let seconds: u64 = env_num("SOAK_SECONDS", 120);
    let load: f64 = env_num("SOAK_LOAD", 0.8);
    let every = Duration::from_secs(env_num("SOAK_SAMPLE_SECONDS", 5));
    let warmup: f64 = env_num("SOAK_WARMUP_SECONDS", 20.0);
    let dir = tempfile::tempdir().unwrap();
    let sweep = match std::env::var("SOAK_SWEEP_SECONDS") {
        Ok(v) if !v.is_empty() => format!("sweep_interval_seconds = {v}\n"),
        _ => String::new(),
    };
    let setup = common::prepare(
        dir.path(),
        "soak",
        &format!(
            "[store]\ncache_mib = {SLED_CACHE_MIB}\ncheckpoint_keys = {CHECKPOINT_KEYS}\n\
             checkpoint_mib = {CHECKPOINT_MIB}\n[protection]\nrequire_whitelisted_address = false\n\
             security_change_lock_seconds = 0\n{sweep}"
        ),
    );
    let d = setup.start();
    println!("# Soak: {seconds} s of mixed load at {:.0}% of capacity", load * 100.0);
    println!();
    println!("{}", common::machine_table(d.pid));

    let connect = |role: &'static str| {
        let (url, certs) = (d.url.clone(), d.certs.clone());
        async move {
            let mut v = Vec::new();
            for _ in 0..CHANNELS {
                v.push(connect_as(&url, &certs, role).await.unwrap());
            }
            v
        }
    };
    let frontend = connect("frontend").await;
    let engine = connect("withdrawal-engine").await;
    let t_setup = Instant::now();
    let hmac = enroll_hmac(&frontend, "soak-hmac", HMAC_USERS).await;
    let victims = enroll_hmac(&frontend, "soak-victim", VICTIMS).await;
    eprintln!(
        "setup: {} users enrolled in {:.1} s",
        HMAC_USERS + VICTIMS,
        t_setup.elapsed().as_secs_f64()
    );
    let world = Arc::new(World {
        frontend,
        engine,
        hmac,
        victims,
        totp: Mutex::new(VecDeque::new()),
        redeemed: Mutex::new(VecDeque::new()),
        next_id: AtomicU64::new(0),
        latencies: Mutex::new(BTreeMap::new()),
        unexpected: AtomicU64::new(0),
        first_unexpected: Mutex::new(Vec::new()),
        rpcs: AtomicU64::new(0),
    });

    // Sampling, from the start of the load to its end.
    let t0 = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampling_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let in_hold = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, errors, in_hold, done) =
            (samples.clone(), sampling_errors.clone(), in_hold.clone(), done.clone());
        let (pid, metrics, store) = (d.pid, d.metrics, dir.path().join("data/sled"));
        tokio::task::spawn_blocking(move || {
            while !done.load(Ordering::Relaxed) {
                match sample(pid, metrics, &store, t0, in_hold.load(Ordering::Relaxed)) {
                    Ok(s) => samples.lock().unwrap().push(s),
                    Err(e) => errors.lock().unwrap().push(e),
                }
                let next = Instant::now() + every;
                while Instant::now() < next && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };

    // Ramp: find the capacity.
    let mut ramp = Vec::new();
    let (mut best, mut best_callers) = (0.0f64, RAMP[0]);
    for callers in RAMP {
        let rate = closed_loop(&world, callers, RAMP_LEVEL).await;
        eprintln!("ramp: {callers} callers: {rate:.0} ops/s");
        ramp.push((callers, rate));
        if rate > best {
            best = rate;
            best_callers = callers;
        }
    }
    let ramp_secs = t0.elapsed().as_secs_f64();
    let hold_len = Duration::from_secs_f64((seconds as f64 - ramp_secs).max(30.0));
    let target = best * load;
    let callers = best_callers.max(8);
    eprintln!(
        "hold: {target:.0} ops/s ({:.0}% of {best:.0}) for {:.0} s with {callers} callers",
        load * 100.0,
        hold_len.as_secs_f64()
    );
    let rpcs_before = world.rpcs.load(Ordering::Relaxed);
    let hold_start = t0.elapsed().as_secs_f64();
    in_hold.store(true, Ordering::Relaxed);
    let lat_before: BTreeMap<Op, usize> = world
        .latencies
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (*k, v.len()))
        .collect();
    let (achieved, most_late) = paced(&world, callers, target, hold_len).await;
    let hold_rpcs = (world.rpcs.load(Ordering::Relaxed) - rpcs_before) as f64 / hold_len.as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    // The server's own view, before it stops.
    let server_view = scrape(d.metrics).unwrap_or_default();

    // Stop sigild: a clean exit after SIGTERM.
    let mut d = d;
    let alive_at_end = d.child.try_wait().unwrap().is_none();
    let clean_exit = d.stop();

    // The verdict.
    let samples = samples.lock().unwrap().clone();
    let mut failures = Vec::new();
    let unexpected = world.unexpected.load(Ordering::Relaxed);
    if unexpected > 0 {
        failures.push(format!(
            "{unexpected} unexpected RPC outcomes, first: {:#?}",
            world.first_unexpected.lock().unwrap()
        ));
    }
    if !alive_at_end {
        failures.push("sigild died during the run".into());
    }
    if !clean_exit {
        failures.push("sigild did not exit cleanly within 30 s of SIGTERM".into());
    }
    for e in sampling_errors.lock().unwrap().iter().take(3) {
        failures.push(format!("a sample failed: {e}"));
    }
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.hold && s.t >= hold_start + warmup)
        .collect();
    let third = steady.len() / 3;
    let (mut rss_first, mut rss_last, mut fd_first, mut fd_last) = (0.0, 0.0, 0, 0);
    if third == 0 {
        failures.push(format!(
            "too few samples after the warm-up to compare ({}): lengthen SOAK_SECONDS or shorten SOAK_SAMPLE_SECONDS",
            steady.len()
        ));
    } else {
        let first = &steady[..third];
        let last = &steady[steady.len() - third..];
        rss_first = median(first.iter().map(|s| s.rss).collect());
        rss_last = median(last.iter().map(|s| s.rss).collect());
        let allowed = rss_first * (1.0 + RSS_GROWTH) + RSS_SLACK as f64;
        if rss_last > allowed {
            failures.push(format!(
                "RSS grew from {} (first third) to {} (last third), over the {} allowed",
                mib(rss_first),
                mib(rss_last),
                mib(allowed)
            ));
        }
        fd_first = first.iter().map(|s| s.fds).max().unwrap_or(0);
        fd_last = last.iter().map(|s| s.fds).max().unwrap_or(0);
        if fd_last > fd_first + FD_SLACK {
            failures.push(format!(
                "open file descriptors grew from at most {fd_first} (first third) to {fd_last} (last third)"
            ));
        }
    }
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        if let Some(s) = samples.iter().find(|s| s.sessions_open > s.pool_size) {
            failures.push(format!(
                "{} HSM sessions open at {:.0} s, over the pool's {}",
                s.sessions_open, s.t, s.pool_size
            ));
        }
        if last.sessions_open > first.sessions_open {
            failures.push(format!(
                "HSM sessions grew from {} to {}",
                first.sessions_open, last.sessions_open
            ));
        }
    }

    // The summary.
    println!("## Ramp (closed loop, {} s a level)", RAMP_LEVEL.as_secs());
    println!();
    println!("| callers | ops/s |\n|---|---|");
    for (c, r) in &ramp {
        println!("| {c} | {r:.0} |");
    }
    println!();
    println!("## Hold");
    println!();
    println!("| | |\n|---|---|");
    println!("| capacity (best ramp level) | {best:.0} ops/s at {best_callers} callers |");
    println!(
        "| target ({:.0}%) / achieved | {target:.0} / {achieved:.0} ops/s ({hold_rpcs:.0} RPC/s), {callers} callers, {:.0} s |",
        load * 100.0,
        hold_len.as_secs_f64()
    );
    println!(
        "| most a call started late | {:.0} ms |",
        most_late.as_secs_f64() * 1000.0
    );
    println!("| unexpected RPC outcomes | {unexpected} |");
    println!(
        "| RSS, median of first / last third after {warmup:.0} s of warm-up | {} / {} ({:+.1}%; allowed +{:.0}% + {}) |",
        mib(rss_first),
        mib(rss_last),
        if rss_first > 0.0 {
            (rss_last / rss_first - 1.0) * 100.0
        } else {
            0.0
        },
        RSS_GROWTH * 100.0,
        mib(RSS_SLACK as f64)
    );
    println!("| open fds, most in first / last third | {fd_first} / {fd_last} (allowed +{FD_SLACK}) |");
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        println!(
            "| HSM sessions open, first / last sample (pool) | {} / {} ({}) |",
            first.sessions_open, last.sessions_open, last.pool_size
        );
        println!(
            "| threads, first / last sample | {} / {} |",
            first.threads, last.threads
        );
    }
    println!(
        "| sigild exit after SIGTERM | {} |",
        if clean_exit {
            "clean"
        } else {
            "not clean, or none within 30 s"
        }
    );
    println!();
    println!("| operation (hold) | count | p50 ms | p99 ms |\n|---|---|---|---|");
    for (op, lat) in world.latencies.lock().unwrap().iter() {
        let from = lat_before.get(op).copied().unwrap_or(0);
        let mut v = lat[from..].to_vec();
        v.sort_unstable();
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            op.name(),
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
    println!();
    println!("## sigild's metrics at the end (the whole run)\n");
    println!("| series | count | p50 ≤ ms | p99 ≤ ms | max ≤ ms |\n|---|---|---|---|---|");
    for (label, name, filter) in [
        (
            "CompleteApproval, OK",
            "sigil_rpc_duration_seconds",
            "method=\"CompleteApproval\",service=\"sigil.v1.ApprovalService\"",
        ),
        ("store commit (sled)", "sigil_store_commit_duration_seconds", ""),
        ("store sync (sled)", "sigil_store_sync_duration_seconds", ""),
        (
            "HSM sign_approval",
            "sigil_hsm_operation_duration_seconds",
            "op=\"sign_approval\"",
        ),
        ("HSM decrypt", "sigil_hsm_operation_duration_seconds", "op=\"decrypt\""),
    ] {
        let filter = if label.ends_with(", OK") {
            format!("code=\"OK\",{filter}")
        } else {
            filter.to_string()
        };
        let h = Histogram::read(&server_view, name, &filter);
        println!(
            "| {label} | {:.0} | {} | {} | {} |",
            h.count,
            h.quantile_ms(0.5),
            h.quantile_ms(0.99),
            h.quantile_ms(1.0)
        );
    }
    println!(
        "\nRPCs answered by code: {}; HSM errors: {:.0}; lockouts: {:.0}\n",
        [
            "OK",
            "INVALID_ARGUMENT",
            "PERMISSION_DENIED",
            "FAILED_PRECONDITION",
            "RESOURCE_EXHAUSTED",
            "UNAVAILABLE",
            "INTERNAL"
        ]
        .iter()
        .map(|c| format!(
            "{c} {:.0}",
            metric(&server_view, "sigil_rpc_requests_total", &format!("code=\"{c}\""))
        ))
        .collect::<Vec<_>>()
        .join(", "),
        metric(&server_view, "sigil_hsm_errors_total", ""),
        metric(&server_view, "sigil_lockouts_total", "")
    );
    println!("## Samples\n");
    println!(
        "| t (s) | phase | RSS | fds | threads | HSM sessions | RPCs answered | store on disk |\n|---|---|---|---|---|---|---|---|"
    );
    for s in &samples {
        println!(
            "| {:.0} | {} | {} | {} | {} | {}/{} | {} | {} |",
            s.t,
            if !s.hold {
                "ramp"
            } else if s.t < hold_start + warmup {
                "warm-up"
            } else {
                "hold"
            },
            mib(s.rss as f64),
            s.fds,
            s.threads,
            s.sessions_open,
            s.pool_size,
            s.rpcs,
            mib(s.store as f64)
        );
    }
    println!();
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    drop(d);
    drop(dir);
    if failures.is_empty() {
        println!("soak passed");
    } else {
        println!("soak FAILED:");
        for f in &failures {
            println!("- {f}");
        }
        eprintln!("sigild's log:\n{log}");
        std::process::exit(1);
    }
}
