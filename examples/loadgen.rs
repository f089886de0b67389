//! Approvals measured from outside: a load generator in its own process
//! against a release `sigild`.
//!
//! `make bench` builds the release binaries and runs this example
//! (`cargo run --release --features loadgen --example loadgen`). It starts
//! `target/release/sigild` as a child with a benchmark config and its own
//! SoftHSM token (random PIN, passed in the environment and never
//! printed), sled store and development PKI in a temp dir; the project's
//! token and store are never touched. Then, over mTLS, one HTTP/2
//! connection per client:
//!
//! 1. **Setup** (not timed): `LOADGEN_USERS` users (100,000) enroll TOTP
//!    (Begin + Confirm), so that no user approves twice in one 30 s step;
//!    one WebAuthn user per client registers a software security key
//!    (`webauthn-authenticator-rs` `SoftToken`, user verification on).
//! 2. **References, in the same run**: the CPU one ES256 signature costs
//!    SoftHSM (one session on sigild's token, one thread of this process,
//!    CPU time of that thread per signature), and the gRPC floor: sigild's
//!    CPU per `grpc.health.v1` Check (no store, no HSM). Beside them, the
//!    other fixed parts of an approval, each alone on one thread: SoftHSM's
//!    AES-GCM decryption of a TOTP seed under sigild's secrets key, and a
//!    WebAuthn assertion's P-256 signature check through webauthn-rs-core
//!    (as sigild checks assertions) and, for comparison, through ring.
//! 3. **Phases** at 1, 8 and 32 concurrent clients, each client one
//!    request in flight, `LOADGEN_SECONDS` (8) timed after a second of
//!    warm-up:
//!    - TOTP approval: BeginApproval + CompleteApproval;
//!    - TOTP approval in one call: `Approve` with the code;
//!    - WebAuthn approval: BeginApproval + CompleteApproval with an
//!      assertion from the client's software key;
//!    - RedeemApproval of approvals issued in the TOTP phases (topped up,
//!      untimed, before each level).
//!
//!    Each reports operations/s, p50/p99/p999 latency (client side, the
//!    whole operation), and **sigild's CPU µs per operation**
//!    (`/proc/<pid>/stat`, user + system, all threads, over the timed
//!    phase), with its ratio to the HSM's CPU per signature. A table then
//!    sets each approval's fixed parts (its HSM work, its P-256 check, its
//!    RPCs at the floor) beside what it measured.
//! 4. **Growth**: TOTP approvals at 32 clients until `LOADGEN_APPROVALS`
//!    (200,000) have been issued in all, then sigild's resident set
//!    (anonymous and file-backed, and its threads) and the store's size
//!    on disk; sigild is stopped (SIGTERM) and
//!    started again on that store, and the time from spawning it to
//!    `SERVING` is measured.
//!
//! Every approval returned is checked to be a compact JWS; every error is
//! counted and the run fails (exit status 1) on any. It prints the machine,
//! the versions and markdown tables, and draws throughput and p99 against
//! concurrency into `LOADGEN_PLOT` (`target/loadgen.png`).
//!
//! `LOADGEN_PROFILE=<dir>` records a CPU profile of sigild (`perf record`
//! with DWARF call graphs) during the TOTP phase at 8 clients (another
//! phase with `LOADGEN_PROFILE_PHASE`: `one-call`, `webauthn`, `redeem`)
//! into `<dir>/perf.data`; `scripts/flamegraph.sh` draws it.
//!
//! Knobs (environment): `LOADGEN_USERS`, `LOADGEN_SECONDS`,
//! `LOADGEN_APPROVALS`, `LOADGEN_CLIENTS` (`1,8,32`), `LOADGEN_CACHE_MIB`
//! (sled's page cache, `[store] cache_mib`; sigild's default), `LOADGEN_STORE`
//! (more `[store]` settings, `;` between them), `LOADGEN_PLOT`. For a
//! closer look: `LOADGEN_SLOW_MS=<ms>` prints every timed operation slower
//! than that with its wall-clock end (Unix ms), `BENCH_SIGILD_LOG=<filter>`
//! sets sigild's `RUST_LOG` (its log is `sigild.log` in the run's
//! directory), and `LOADGEN_KEEP=1` keeps that directory (token with its PINs in `pin` and `so-pin`, store,
//! certificates) and prints where it is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use secrecy::SecretString;
use sigil::client::connect_as;
use sigil::factor::totp;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic::transport::Channel;
use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::WebauthnAuthenticator;

/// The WebAuthn origin of the benchmark config.
const ORIGIN: &str = "https://localhost:8443";
/// The plot's font.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The token's approval key (`sigil hsm init`).
const APPROVAL_KEY: &str = "sigil-approval-1";
/// The AES key sigild encrypts factor secrets under (its default label).
const SECRETS_KEY: &str = "sigil-secrets-1";

/// A user with a TOTP factor and the newest step Sigil recorded for it.
struct TotpUser {
    id: String,
    seed: Vec<u8>,
    last_step: u64,
}

/// The enrolled TOTP users.
struct Users {
    /// Least recently used first.
    queue: Mutex<VecDeque<TotpUser>>,
    /// How often a client found every user used in the current step.
    waits: AtomicU64,
}

impl Users {
    /// A user who has not approved in the current step, waiting for the
    /// next step when every user has (counted: that wait is in the
    /// operation's latency, and the phase's rate is then the users', not
    /// sigild's).
    async fn take(&self) -> (TotpUser, u64) {
        let mut waited = false;
        loop {
            let step = totp::step_at(now_secs());
            {
                let mut q = self.queue.lock().unwrap();
                if q.front().is_some_and(|u| u.last_step < step) {
                    return (q.pop_front().unwrap(), step);
                }
            }
            if !waited {
                waited = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn give_back(&self, mut u: TotpUser, step: u64) {
        u.last_step = recorded_step(&u.seed, step);
        self.queue.lock().unwrap().push_back(u);
    }
}

fn totp_proof(seed: &[u8], step: u64) -> pb::complete_approval_request::Proof {
    pb::complete_approval_request::Proof::Totp(pb::TotpProof {
        code: totp::code_at_step(seed, step),
        factor_id: String::new(),
    })
}

/// What a phase runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Health,
    Totp,
    OneCall,
    Webauthn,
    Redeem,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Health => "gRPC floor: health Check",
            Kind::Totp => "TOTP approval (Begin + Complete)",
            Kind::OneCall => "TOTP approval in one call (Approve)",
            Kind::Webauthn => "WebAuthn approval (Begin + Complete)",
            Kind::Redeem => "RedeemApproval",
        }
    }
}

/// What every client shares.
struct World {
    users: Users,
    /// Issued approvals waiting to be redeemed, with their intents.
    issued: Mutex<Vec<(String, pb::Intent)>>,
    next_id: AtomicU64,
    total_approvals: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl World {
    fn wid(&self) -> String {
        format!("wd-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_errors.lock().unwrap();
        if f.len() < 5 {
            f.push(what);
        }
    }
}

/// One client: its channel, and its WebAuthn user and key.
struct Client {
    ch: Channel,
    wa_user: String,
    wa_key: SoftToken,
}

impl Client {
    async fn run(&mut self, kind: Kind, w: &World) -> Result<(), String> {
        let mut a = ApprovalServiceClient::new(self.ch.clone());
        let e = |what: &str, s: tonic::Status| format!("{what}: {:?} {}", s.code(), s.message());
        match kind {
            Kind::Health => {
                let r = tonic_health::pb::health_client::HealthClient::new(self.ch.clone())
                    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await
                    .map_err(|s| e("Check", s))?
                    .into_inner();
                if r.status() != tonic_health::pb::health_check_response::ServingStatus::Serving {
                    return Err(format!("Check: {:?}", r.status()));
                }
            }
            Kind::Totp | Kind::OneCall => {
                let (u, step) = w.users.take().await;
                let i = withdrawal(&u.id, &w.wid(), "0.25");
                let r = if kind == Kind::Totp {
                    let b = a
                        .begin_approval(pb::BeginApprovalRequest {
                            intent: Some(i.clone()),
                            device: None,
                        })
                        .await;
                    match b {
                        Ok(b) => a
                            .complete_approval(pb::CompleteApprovalRequest {
                                challenge_id: b.into_inner().challenge_id,
                                user_id: u.id.clone(),
                                proof: Some(totp_proof(&u.seed, step)),
                            })
                            .await
                            .map(|r| r.into_inner().approval)
                            .map_err(|s| e("CompleteApproval", s)),
                        Err(s) => Err(e("BeginApproval", s)),
                    }
                } else {
                    a.approve(pb::ApproveRequest {
                        intent: Some(i.clone()),
                        device: None,
                        proof: Some(one_call_proof(&u.seed, step)),
                    })
                    .await
                    .map(|r| r.into_inner().approval)
                    .map_err(|s| e("Approve", s))
                };
                w.users.give_back(u, step);
                let token = r?;
                if token.split('.').count() != 3 {
                    return Err("an approval is not a compact JWS".into());
                }
                w.total_approvals.fetch_add(1, Ordering::Relaxed);
                w.issued.lock().unwrap().push((token, i));
            }
            Kind::Webauthn => {
                let b = a
                    .begin_approval(pb::BeginApprovalRequest {
                        intent: Some(withdrawal(&self.wa_user, &w.wid(), "0.25")),
                        device: None,
                    })
                    .await
                    .map_err(|s| e("BeginApproval", s))?
                    .into_inner();
                let rcr: RequestChallengeResponse =
                    serde_json::from_str(&b.webauthn_request_options_json).map_err(|x| x.to_string())?;
                let rsp = self
                    .wa_key
                    .do_authentication(Url::parse(ORIGIN).unwrap(), rcr)
                    .map_err(|x| format!("soft key: {x:?}"))?;
                let done = a
                    .complete_approval(pb::CompleteApprovalRequest {
                        challenge_id: b.challenge_id,
                        user_id: self.wa_user.clone(),
                        proof: Some(pb::complete_approval_request::Proof::Webauthn(pb::WebauthnProof {
                            response_json: serde_json::to_string(&rsp).unwrap(),
                        })),
                    })
                    .await
                    .map_err(|s| e("CompleteApproval (WebAuthn)", s))?;
                if done.into_inner().approval.split('.').count() != 3 {
                    return Err("an approval is not a compact JWS".into());
                }
                w.total_approvals.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Redeem => {
                let Some((token, i)) = w.issued.lock().unwrap().pop() else {
                    return Err("no issued approval left to redeem (raise LOADGEN_SECONDS of the TOTP phases)".into());
                };
                let r = a
                    .redeem_approval(pb::RedeemApprovalRequest {
                        approval: token,
                        expected_intent: Some(i),
                        idempotency_key: String::new(),
                    })
                    .await
                    .map_err(|s| e("RedeemApproval", s))?
                    .into_inner();
                if r.replayed {
                    return Err("a first redemption reported as replayed".into());
                }
            }
        }
        Ok(())
    }
}

fn one_call_proof(seed: &[u8], step: u64) -> pb::approve_request::Proof {
    pb::approve_request::Proof::Totp(pb::TotpProof {
        code: totp::code_at_step(seed, step),
        factor_id: String::new(),
    })
}

/// One phase's figures.
struct Phase {
    kind: Kind,
    clients: usize,
    ops: u64,
    secs: f64,
    /// Latencies of the timed operations, µs, sorted.
    lat: Vec<u32>,
    /// sigild's CPU over the timed phase, µs.
    cpu: u64,
    /// Operations that waited for a fresh TOTP step, every user having
    /// approved in the current one (see [`Users::take`]).
    starved: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn cpu_per_op(&self) -> f64 {
        self.cpu as f64 / self.ops.max(1) as f64
    }
}

/// Runs `kind` on the first `n` clients: a second of warm-up, then `secs`
/// timed.
/// `profile`: this is a measured phase (a profile may be recorded), not a
/// top-up.
async fn phase(
    kind: Kind,
    clients: &mut [Option<Client>],
    n: usize,
    secs: f64,
    w: &Arc<World>,
    pid: u32,
    profile: bool,
) -> Phase {
    let timing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for slot in clients.iter_mut().take(n) {
        let mut c = slot.take().unwrap();
        let (w, timing, stop) = (w.clone(), timing.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ops = 0u64;
            let slow_us = env_num::<u32>("LOADGEN_SLOW_MS", 0).saturating_mul(1000);
            while !stop.load(Ordering::Relaxed) {
                let timed = timing.load(Ordering::Relaxed);
                let t = Instant::now();
                let r = c.run(kind, &w).await;
                let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match r {
                    Ok(()) if timed && timing.load(Ordering::Relaxed) => {
                        if slow_us > 0 && us > slow_us {
                            let end = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_millis();
                            eprintln!("slow: {} {:.1} ms, ended at {end}", kind.name(), f64::from(us) / 1000.0);
                        }
                        lat.push(us);
                        ops += 1;
                    }
                    Ok(()) => {}
                    Err(what) => {
                        w.error(what);
                        // Yields to the runtime: an error can come back at once.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (c, lat, ops)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A CPU profile of sigild over this phase (`LOADGEN_PROFILE=<dir>`: the
    // TOTP approvals at 8 clients).
    let perf = match std::env::var("LOADGEN_PROFILE") {
        Ok(dir) if profile && kind == profiled_kind() && n == 8 && !dir.is_empty() => {
            let out = PathBuf::from(dir).join("perf.data");
            Some(
                std::process::Command::new("perf")
                    .args(["record", "-q", "-F", "499", "--call-graph", "dwarf,16384", "-p"])
                    .arg(pid.to_string())
                    .arg("-o")
                    .arg(&out)
                    .args(["--", "sleep"])
                    .arg(format!("{secs}"))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("perf (Debian package linux-perf)"),
            )
        }
        _ => None,
    };
    let starved0 = w.users.waits.load(Ordering::Relaxed);
    let cpu0 = cpu_micros(pid);
    let t0 = Instant::now();
    timing.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    timing.store(false, Ordering::Relaxed);
    let cpu = cpu_micros(pid) - cpu0;
    let elapsed = t0.elapsed().as_secs_f64();
    let starved = w.users.waits.load(Ordering::Relaxed) - starved0;
    stop.store(true, Ordering::Relaxed);
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    let mut lat = Vec::new();
    let mut ops = 0;
    for (slot, t) in clients.iter_mut().zip(tasks) {
        let (c, l, o) = t.await.unwrap();
        *slot = Some(c);
        lat.extend(l);
        ops += o;
    }
    lat.sort_unstable();
    let p = Phase {
        kind,
        clients: n,
        ops,
        secs: elapsed,
        lat,
        cpu,
        starved,
    };
    eprintln!(
        "{} at {n}: {:.0}/s, p99 {:.1} ms, sigild {:.0} µs CPU per operation",
        kind.name(),
        p.rate(),
        percentile(&p.lat, 0.99),
        p.cpu_per_op()
    );
    p
}

/// The phase `LOADGEN_PROFILE` records (at 8 clients):
/// `LOADGEN_PROFILE_PHASE` = `totp` (the default), `one-call`, `webauthn`
/// or `redeem`.
fn profiled_kind() -> Kind {
    match std::env::var("LOADGEN_PROFILE_PHASE").as_deref() {
        Ok("one-call") => Kind::OneCall,
        Ok("webauthn") => Kind::Webauthn,
        Ok("redeem") => Kind::Redeem,
        _ => Kind::Totp,
    }
}

/// CPU µs per call of `op` on this thread over `secs` (after 200 calls to
/// warm up), and the calls per second.
fn cpu_per_call(secs: f64, mut op: impl FnMut()) -> (f64, f64) {
    for _ in 0..200 {
        op();
    }
    let (t0, c0) = (Instant::now(), thread_cpu_micros());
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        op();
        n += 1;
    }
    let cpu = (thread_cpu_micros() - c0) as f64 / n as f64;
    (cpu, n as f64 / t0.elapsed().as_secs_f64())
}

/// The run's token (`SOFTHSM2_CONF` points at its directory) with one
/// session.
fn one_session(pin: String) -> sigil_hsm::Hsm {
    let mut cfg = sigil_hsm::HsmConfig::new(sigil_hsm::softhsm_module_path(), "bench", SecretString::from(pin));
    cfg.pool_size = 1;
    sigil_hsm::Hsm::open(&cfg).unwrap()
}

/// CPU µs of one ES256 signature by SoftHSM (one session, this thread,
/// for `secs`), and the signatures per second.
fn hsm_sign_cpu(pin: String, secs: f64) -> (f64, f64) {
    let hsm = one_session(pin);
    let msg = vec![b'a'; 700];
    cpu_per_call(secs, || {
        hsm.sign_es256(APPROVAL_KEY, &msg).unwrap();
    })
}

/// CPU µs of one TOTP seed's decryption by SoftHSM (AES-GCM under the
/// run's secrets key, as every TOTP approval decrypts its factor's seed),
/// one session, this thread, for `secs`.
fn hsm_decrypt_cpu(pin: String, secs: f64) -> f64 {
    let hsm = one_session(pin);
    let aad = b"lg-user\0f_seed";
    let blob = hsm.encrypt(SECRETS_KEY, &[7u8; 20], aad).unwrap();
    cpu_per_call(secs, || {
        hsm.decrypt(SECRETS_KEY, &blob, aad).unwrap();
    })
    .0
}

/// CPU µs of one WebAuthn assertion's signature check (ES256, DER, over
/// authenticator data and the client data's hash), this thread, `secs`
/// each: through webauthn-rs-core, the way sigild checks every assertion,
/// and the same check with ring, for comparison.
fn p256_check_cpu(secs: f64) -> (f64, f64) {
    use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey};
    use webauthn_rs_core::proto::{COSEAlgorithm, COSEEC2Key, COSEKey, COSEKeyType, ECDSACurve};
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let signed = [[9u8; 37].as_slice(), &[5u8; 32]].concat();
    let sig = pair.sign(&rng, &signed).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    let cose = COSEKey {
        type_: COSEAlgorithm::ES256,
        key: COSEKeyType::EC_EC2(COSEEC2Key {
            curve: ECDSACurve::SECP256R1,
            x: public[1..33].to_vec(),
            y: public[33..65].to_vec(),
        }),
    };
    let core = cpu_per_call(secs, || {
        assert!(cose.verify_signature(sig.as_ref(), &signed).unwrap());
    });
    let with_ring = cpu_per_call(secs, || {
        let key = UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &public);
        key.verify(&signed, sig.as_ref()).unwrap();
    });
    (core.0, with_ring.0)
}

async fn enroll_totp(ch: Vec<Channel>, prefix: &str, n: usize) -> Vec<TotpUser> {
    let next = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut tasks = Vec::new();
    for c in 0..32 {
        let (ch, next, out, prefix) = (ch[c % ch.len()].clone(), next.clone(), out.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut f = FactorServiceClient::new(ch);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                if k >= n {
                    break;
                }
                let id = format!("{prefix}-{k}");
                let e = f
                    .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
                        user_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
                let step = totp::step_at(now_secs());
                f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
                    user_id: id.clone(),
                    factor_id: e.factor_id,
                    code: totp::code_at_step(&seed, step),
                })
                .await
                .unwrap();
                out.lock().unwrap().push(TotpUser {
                    id,
                    last_step: recorded_step(&seed, step),
                    seed,
                });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut v = std::mem::take(&mut *out.lock().unwrap());
    v.sort_by_key(|u| u.last_step);
    v
}

async fn register_webauthn(ch: Channel, user: &str) -> SoftToken {
    let mut f = FactorServiceClient::new(ch);
    let (mut key, _) = SoftToken::new(true).unwrap();
    let b = f
        .begin_webauthn_registration(pb::BeginWebauthnRegistrationRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ccr: CreationChallengeResponse = serde_json::from_str(&b.options_json).unwrap();
    let reg = key.do_registration(Url::parse(ORIGIN).unwrap(), ccr).unwrap();
    f.finish_webauthn_registration(pb::FinishWebauthnRegistrationRequest {
        user_id: user.into(),
        ceremony_id: b.ceremony_id,
        response_json: serde_json::to_string(&reg).unwrap(),
    })
    .await
    .unwrap();
    key
}

/// Waits until sigild answers a health Check with SERVING.
async fn wait_serving(d: &Daemon) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Ok(ch) = connect_as(&d.url, &d.certs, "withdrawal-engine").await {
            let r = tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await;
            if r.is_ok_and(|r| {
                r.into_inner().status() == tonic_health::pb::health_check_response::ServingStatus::Serving
            }) {
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "sigild not SERVING after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(us: f64) -> String {
    format!("{:.1}", us)
}

fn draw(path: &PathBuf, phases: &[Phase]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let font = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| format!("{FONT} is not a font plotters can read"))?;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let kinds = [Kind::Totp, Kind::OneCall, Kind::Webauthn, Kind::Redeem];
    let colors = [RED, BLUE, GREEN, MAGENTA];
    let drawn = || phases.iter().filter(|p| kinds.contains(&p.kind));
    let max_rate = drawn().map(Phase::rate).fold(0.0, f64::max) * 1.1;
    let max_p99 = drawn().map(|p| percentile(&p.lat, 0.99)).fold(0.0, f64::max) * 1.1;
    for (area, title, ymax, value) in [
        (&left, "approvals/s (operations/s)", max_rate, 0usize),
        (&right, "p99 latency, ms", max_p99, 1usize),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((1u32..40u32).log_scale(), 0.0..ymax.max(1.0))?;
        chart.configure_mesh().x_desc("concurrent clients").draw()?;
        for (kind, color) in kinds.iter().zip(colors) {
            let pts: Vec<(u32, f64)> = phases
                .iter()
                .filter(|p| p.kind == *kind)
                .map(|p| {
                    let y = if value == 0 { p.rate() } else { percentile(&p.lat, 0.99) };
                    (p.clients as u32, y)
                })
                .collect();
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(kind.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() {
    let mut dir = tempfile::tempdir().unwrap();
    let keep = std::env::var("LOADGEN_KEEP").is_ok_and(|v| v == "1");
    if keep {
        dir.disable_cleanup(true);
        eprintln!("the run's directory is kept: {}", dir.path().display());
    }
    // This process's own PKCS#11 session (the HSM reference) opens the
    // run's token: SoftHSM reads this at its first call.
    std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(dir, keep));
}

/// `keep`: the run's directory stays (`LOADGEN_KEEP=1`), with the token's PINs.
async fn run(dir: tempfile::TempDir, keep: bool) {
    let users: usize = env_num("LOADGEN_USERS", 100_000);
    let secs: f64 = env_num("LOADGEN_SECONDS", 8.0);
    let want_approvals: u64 = env_num("LOADGEN_APPROVALS", 200_000);
    let cache_mib: u64 = env_num(
        "LOADGEN_CACHE_MIB",
        sigil::store::sled_store::Tuning::default().cache_bytes >> 20,
    );
    let levels: Vec<usize> = std::env::var("LOADGEN_CLIENTS")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .map(|v| v.trim().parse().expect("LOADGEN_CLIENTS: numbers separated by commas"))
        .collect();
    let plot = PathBuf::from(
        std::env::var("LOADGEN_PLOT")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/loadgen.png").into()),
    );
    let max_clients = levels.iter().copied().max().unwrap_or(1);
    // Further `[store]` settings, one per line with `;` between (for
    // example `checkpoint_interval_ms = 250`).
    let store_extra = std::env::var("LOADGEN_STORE").unwrap_or_default().replace(';', "\n");
    let config = format!(
        "[store]\ncache_mib = {cache_mib}\n{store_extra}\n\
         [protection]\nrequire_whitelisted_address = false\nsecurity_change_lock_seconds = 0\n\
         [webauthn]\nrp_id = \"localhost\"\norigins = [\"{ORIGIN}\"]\n"
    );
    let setup = prepare(dir.path(), "bench", &config);
    if keep {
        // The kept directory's throwaway token, for starting sigild on it by
        // hand (see `examples/common/mod.rs`, `daemon_env`).
        setup.write_pins();
    }
    let mut d = setup.start();
    println!("# Approvals measured from outside (`examples/loadgen.rs`)");
    println!();
    println!("{}", machine_table(d.pid));
    let store_said = if store_extra.trim().is_empty() {
        "other `[store]` settings default".to_string()
    } else {
        format!("`{}`", store_extra.replace('\n', "; "))
    };
    println!("| config | sled page cache {cache_mib} MiB, {store_said}; whitelist and post-enrollment lock off |");
    println!();

    let mut channels = Vec::new();
    for _ in 0..max_clients {
        channels.push(connect_as(&d.url, &d.certs, "withdrawal-engine").await.unwrap());
    }
    let frontend = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(connect_as(&d.url, &d.certs, "frontend").await.unwrap());
        }
        v
    };
    let t_setup = Instant::now();
    let enrolled = enroll_totp(frontend.clone(), "lg", users).await;
    let enroll_secs = t_setup.elapsed().as_secs_f64();
    eprintln!("setup: {users} TOTP users enrolled in {enroll_secs:.1} s");
    let mut clients = Vec::new();
    for (k, ch) in channels.iter().enumerate() {
        let user = format!("lg-wa-{k}");
        let key = register_webauthn(frontend[k % frontend.len()].clone(), &user).await;
        clients.push(Some(Client {
            ch: ch.clone(),
            wa_user: user,
            wa_key: key,
        }));
    }
    let w = Arc::new(World {
        users: Users {
            queue: Mutex::new(enrolled.into()),
            waits: AtomicU64::new(0),
        },
        issued: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
        total_approvals: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_errors: Mutex::new(Vec::new()),
    });

    let pin = setup.pin().to_string();
    let (hsm_cpu, hsm_rate) = tokio::task::spawn_blocking(move || hsm_sign_cpu(pin, 3.0))
        .await
        .unwrap();
    eprintln!("SoftHSM ES256: {hsm_cpu:.1} µs CPU per signature ({hsm_rate:.0}/s on one session)");
    let pin = setup.pin().to_string();
    let hsm_decrypt = tokio::task::spawn_blocking(move || hsm_decrypt_cpu(pin, 2.0))
        .await
        .unwrap();
    let (p256_core, p256_ring) = tokio::task::spawn_blocking(move || p256_check_cpu(2.0)).await.unwrap();
    eprintln!(
        "SoftHSM seed decrypt: {hsm_decrypt:.1} µs; P-256 check: {p256_core:.1} µs (webauthn-rs-core), {p256_ring:.1} µs (ring)"
    );

    // Enrolling used up each user's current step.
    let next_step = ((totp::step_at(now_secs()) + 1) * 30) as i64;
    tokio::time::sleep(Duration::from_secs((next_step - now_secs()).max(0) as u64 + 1)).await;
    let mut phases = Vec::new();
    for kind in [Kind::Health, Kind::Totp, Kind::OneCall, Kind::Webauthn, Kind::Redeem] {
        for &n in &levels {
            if kind == Kind::Redeem {
                // Enough issued approvals for the phase (issued untimed): half
                // as many again as the previous level's rate, or the guess
                // below, whichever is more.
                let last = phases
                    .iter()
                    .rev()
                    .find(|p: &&Phase| p.kind == Kind::Redeem)
                    .map_or(0.0, |p| p.rate());
                // Without an earlier level to go by, a guess that grows
                // with the clients (measured here: ~2,100/s at 1 client,
                // ~5,500 at 8, ~6,200 at 32), so that a run of 32 clients
                // alone does not run out part way.
                let guess = (4_000.0 * (n as f64).sqrt()).min(10_000.0);
                let want = (secs + 1.0) * (last * 1.5).max(guess);
                while (w.issued.lock().unwrap().len() as f64) < want {
                    phase(Kind::Totp, &mut clients, max_clients, 2.0, &w, d.pid, false).await;
                }
            }
            phases.push(phase(kind, &mut clients, n, secs, &w, d.pid, true).await);
        }
    }

    // Growth: approvals until the wanted total, then memory and disk.
    let t_fill = Instant::now();
    while w.total_approvals.load(Ordering::Relaxed) < want_approvals {
        let left = want_approvals - w.total_approvals.load(Ordering::Relaxed);
        let chunk = (left as f64 / 2_500.0).clamp(1.0, 20.0);
        phase(Kind::Totp, &mut clients, max_clients, chunk, &w, d.pid, false).await;
        w.issued.lock().unwrap().clear();
    }
    if want_approvals > 0 {
        eprintln!(
            "growth: {want_approvals} approvals reached in {:.0} s",
            t_fill.elapsed().as_secs_f64()
        );
    }
    let rss = proc_status(d.pid, "VmRSS:").unwrap_or(0) * 1024;
    let hwm = proc_status(d.pid, "VmHWM:").unwrap_or(0) * 1024;
    // What the resident set is: the heap and stacks (anonymous) against the
    // binary and libraries (file-backed), and how many threads hold it.
    let anon = proc_status(d.pid, "RssAnon:").unwrap_or(0) * 1024;
    let file = proc_status(d.pid, "RssFile:").unwrap_or(0) * 1024;
    let threads = proc_status(d.pid, "Threads:").unwrap_or(0);
    let store = du(&setup.dir.join("data"));
    let log = du(&setup.dir.join("data/sled/wal"));
    let total = w.total_approvals.load(Ordering::Relaxed);
    let clean = d.stop();
    drop(d);
    // At rest: the write-ahead log's files of the last seconds (the one
    // being written, the one being checkpointed and the next one, prepared
    // at the last one's size) are gone once everything is in sled.
    let store_stopped = du(&setup.dir.join("data"));
    let log_stopped = du(&setup.dir.join("data/sled/wal"));
    let d2 = setup.start();
    let serving = wait_serving(&d2).await;
    let startup = d2.started_in + serving;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = proc_status(d2.pid, "VmRSS:").unwrap_or(0) * 1024;

    // Report.
    println!("## References (same run)\n");
    println!("| | |\n|---|---|");
    println!(
        "| SoftHSM ES256 sign, one session, one thread | **{hsm_cpu:.1} µs CPU** per signature ({hsm_rate:.0}/s) |"
    );
    println!(
        "| SoftHSM AES-GCM decrypt of a TOTP seed, one session, one thread | {hsm_decrypt:.1} µs CPU ({:.2}× the sign) |",
        hsm_decrypt / hsm_cpu
    );
    println!(
        "| WebAuthn assertion's P-256 check through webauthn-rs-core (as sigild checks it), one thread | {p256_core:.1} µs CPU ({:.2}× the sign) |",
        p256_core / hsm_cpu
    );
    println!(
        "| the same check with ring | {p256_ring:.1} µs CPU ({:.2}× the sign) |",
        p256_ring / hsm_cpu
    );
    println!(
        "| enrollment (setup) | {users} TOTP users in {enroll_secs:.1} s ({:.0}/s, 32 clients) |",
        users as f64 / enroll_secs
    );
    println!();
    println!("## Phases\n");
    println!("| operation | clients | ops/s | p50 ms | p99 ms | p999 ms | max ms | sigild CPU µs/op | ÷ HSM sign | cores busy |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in &phases {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.0} | {:.2}× | {:.2} |",
            p.kind.name(),
            p.clients,
            p.rate(),
            ms(percentile(&p.lat, 0.50)),
            ms(percentile(&p.lat, 0.99)),
            ms(percentile(&p.lat, 0.999)),
            ms(percentile(&p.lat, 1.0)),
            p.cpu_per_op(),
            p.cpu_per_op() / hsm_cpu,
            p.cpu as f64 / 1e6 / p.secs
        );
    }
    let starved: Vec<String> = phases
        .iter()
        .filter(|p| p.starved > 0)
        .map(|p| format!("{} at {} ({})", p.kind.name(), p.clients, p.starved))
        .collect();
    if !starved.is_empty() {
        println!(
            "\n**Every user had approved in the current TOTP step** in: {}. Those operations \
             waited for the next step, so their phase measured the users, not sigild: raise \
             `LOADGEN_USERS` or lower `LOADGEN_SECONDS`.",
            starved.join(", ")
        );
    }
    // What each approval cannot do without, from this run's references:
    // its HSM work, its P-256 check, and its gRPC calls at the floor.
    println!("\n## The fixed parts of an approval (same run)\n");
    println!(
        "Each approval's own HSM and signature work, measured alone on one thread above, plus its \
         RPCs at the gRPC floor measured at the same concurrency; \"the rest\" is everything else \
         sigild does (policy, records, the store's log and checkpoints, TLS and HTTP/2 above the \
         floor, and the fixed parts costing more on shared, busy cores than alone).\n"
    );
    println!("| operation | clients | fixed parts | fixed µs | ÷ HSM sign | measured µs | ÷ HSM sign | the rest µs |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &phases {
        let Some(floor) = phases
            .iter()
            .find(|h| h.kind == Kind::Health && h.clients == p.clients)
            .map(Phase::cpu_per_op)
        else {
            continue;
        };
        let (what, fixed) = match p.kind {
            Kind::Totp => ("sign + seed decrypt + 2 RPCs", hsm_cpu + hsm_decrypt + 2.0 * floor),
            Kind::OneCall => ("sign + seed decrypt + 1 RPC", hsm_cpu + hsm_decrypt + floor),
            Kind::Webauthn => ("sign + P-256 check + 2 RPCs", hsm_cpu + p256_core + 2.0 * floor),
            _ => continue,
        };
        println!(
            "| {} | {} | {what} | {fixed:.0} | {:.2}× | {:.0} | {:.2}× | {:.0} |",
            p.kind.name(),
            p.clients,
            fixed / hsm_cpu,
            p.cpu_per_op(),
            p.cpu_per_op() / hsm_cpu,
            p.cpu_per_op() - fixed
        );
    }
    println!();
    println!("## Growth and start-up\n");
    println!("| | |\n|---|---|");
    println!("| enrolled users | {} |", users + max_clients);
    println!("| approvals issued in all | {total} |");
    println!(
        "| sigild resident set (peak) | {} ({}) |",
        mib(rss as f64),
        mib(hwm as f64)
    );
    println!(
        "| of which anonymous (heap, stacks) / file-backed (binary, libraries); threads | {} / {}; {threads} |",
        mib(anon as f64),
        mib(file as f64)
    );
    println!(
        "| store on disk at the end of the load (sled + write-ahead log) | {} ({:.0} MB; the log {}) |",
        mib(store as f64),
        store as f64 / 1e6,
        mib(log as f64)
    );
    println!(
        "| store on disk once sigild stopped (sled; the log's files checkpointed) | {} ({:.0} MB; the log {}) |",
        mib(store_stopped as f64),
        store_stopped as f64 / 1e6,
        mib(log_stopped as f64)
    );
    println!(
        "| sigild resident set after a restart on that store, idle | {} |",
        mib(idle_rss as f64)
    );
    println!("| stop after SIGTERM | {} |", if clean { "clean" } else { "NOT clean" });
    println!(
        "| start-up to SERVING on that store | {:.0} ms (process to listening {:.0} ms) |",
        startup.as_secs_f64() * 1000.0,
        d2.started_in.as_secs_f64() * 1000.0
    );
    println!();
    match draw(&plot, &phases) {
        Ok(()) => println!("Plot: `{}`", plot.display()),
        Err(e) => println!("Plot not drawn: {e}"),
    }
    // Stopped here: `process::exit` below would skip its drop and leave
    // it running.
    drop(d2);
    let errors = w.errors.load(Ordering::Relaxed);
    if errors > 0 {
        println!("\n**{errors} errors**, first: {:#?}", w.first_errors.lock().unwrap());
        std::process::exit(1);
    }
}
