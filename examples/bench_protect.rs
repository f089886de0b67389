//! Benchmarks for the hardware factor and the protections, from one run:
//!
//! 1. **WebAuthn approvals per second**: 8 concurrent clients over mTLS,
//!    each with its own software security key (webauthn-authenticator-rs
//!    `SoftToken`, user verification on), each running `BeginApproval` +
//!    `CompleteApproval` (assertion over the intent-bound challenge) for its
//!    own user, beside the raw SoftHSM ES256 signing rate (8 threads)
//!    measured in the same process, and their ratio.
//! 2. **Revoking every factor of every user** with 1,000, 100,000 and
//!    1,000,000 enrolled users: wall time and the number of store writes of
//!    the revocation (expected: constant — one write of the global epoch,
//!    plus its event and audit entry), and a check that a factor of the last
//!    user is revoked afterwards.
//!
//! 3. **Re-wrapping 100,000 factor secrets** under a new HSM AES key
//!    (`rewrap_secrets`, batches of 1,000): secrets/s, beside the raw HSM
//!    AES-GCM rate (one decrypt + one encrypt, the work per secret) measured
//!    in the same run on one thread, and their ratio.
//! 4. **Backup of a store with 100,000 users** (each with a factor and a
//!    protection record): MB/s and file size.
//!
//! Like `bench.rs`, it runs a real in-process server with its own SoftHSM
//! token, sled store and certificates in a temp dir. Run with
//! `cargo run --release --example bench_protect` (part of `make bench`).
//! `SIGIL_BENCH_REVOKE_MAX` (default 1000000) caps the largest population.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sigil::client::connect_as;
use sigil::clock::TestClock;
use sigil::config::Config;
use sigil::factor::{FactorRecord, Material, State};
use sigil::ops::Scope;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use sigil::signer::Signer;
use sigil::store::{Batch, LogEntry, SledStore, Store, StoreError, Table, Versioned};
use sigil::{server, Sigil};
use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::WebauthnAuthenticator;

const T0: i64 = 1_800_000_000;
const CLIENTS: usize = 8;
const ORIGIN: &str = "https://localhost:8443";

/// A store that counts the writes (ops) of every committed batch.
struct Counting {
    inner: SledStore,
    ops: AtomicU64,
}

impl Store for Counting {
    fn get(&self, t: Table, k: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(t, k)
    }
    fn scan_prefix(&self, t: Table, p: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        self.inner.scan_prefix(t, p)
    }
    fn scan_page(&self, t: Table, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        self.inner.scan_page(t, after, limit)
    }
    fn commit(&self, b: &Batch) -> Result<Vec<u64>, StoreError> {
        let r = self.inner.commit(b)?;
        let writes = b
            .ops
            .iter()
            .filter(|o| !matches!(o, sigil::store::Op::Check { .. }))
            .count();
        self.ops.fetch_add(writes as u64, Ordering::SeqCst);
        Ok(r)
    }
    fn read_log(&self, t: Table, after: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.read_log(t, after, limit)
    }
    fn log_head(&self, t: Table) -> Result<(u64, [u8; 32]), StoreError> {
        self.inner.log_head(t)
    }
    fn len(&self, t: Table) -> Result<usize, StoreError> {
        self.inner.len(t)
    }
    fn snapshot(&self) -> Result<Vec<(Table, Vec<u8>, Versioned)>, StoreError> {
        self.inner.snapshot()
    }
}

/// An active TOTP factor record, as enrollment would leave it.
fn active_totp(
    user: &str,
    factor_id: String,
    secret: sigil::factor::WrappedSecret,
    last_step: Option<u64>,
) -> FactorRecord {
    FactorRecord {
        factor_id,
        user_id: user.to_string(),
        state: State::Active,
        nickname: "authenticator".into(),
        created_at: T0,
        confirm_before: T0,
        last_used_at: 0,
        failures: 0,
        locked_until: 0,
        epochs: Default::default(),
        suspected_cloned: false,
        enrolled_with_step_up: false,
        material: Material::Totp { secret, last_step },
    }
}

fn setup_hsm(dir: &Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    sigil_hsm::write_softhsm_conf(&conf, &tokens).unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen.sh");
    let ok = std::process::Command::new("bash")
        .arg(script)
        .arg("--force")
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(ok.status.success());
}

fn config(dir: &Path, label: &str) -> Config {
    let mut cfg = Config::for_test(dir);
    cfg.server.cert = dir.join("../certs/server.pem");
    cfg.server.key = dir.join("../certs/server.key");
    cfg.server.client_ca = dir.join("../certs/ca.pem");
    cfg.hsm.token_label = label.into();
    cfg.hsm.pool_size = 8;
    cfg.hsm.pin_env = "SIGIL_BENCH_PIN_UNSET".into();
    cfg.protection.require_whitelisted_address = false;
    cfg.protection.security_change_lock_seconds = 0;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&cfg.hsm.pin_file, "bench-pin-1").unwrap();
    sigil::signer::init_token(
        &cfg,
        &SecretString::from("bench-so-1"),
        &SecretString::from("bench-pin-1"),
    )
    .unwrap();
    cfg
}

fn raw_rate(signer: &Signer, threads: usize, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let n = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < deadline {
                    signer.sign_raw(b"raw signing reference").unwrap();
                    n.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    n.load(Ordering::Relaxed) as f64 / secs
}

async fn webauthn_bench(root: &Path) -> (f64, f64, usize) {
    let dir = root.join("wa");
    let cfg = config(&dir, "bench-wa");
    let c2 = cfg.clone();
    let signer = tokio::task::spawn_blocking(move || Signer::open(&c2, SecretString::from("bench-pin-1")))
        .await
        .unwrap()
        .unwrap();
    let store = Arc::new(SledStore::open(&cfg.store.path).unwrap());
    let clock = Arc::new(TestClock::new(T0));
    let sigil = Arc::new(Sigil::new(cfg.clone(), store, signer, clock).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server::start(
        sigil.clone(),
        server::tls_config(&cfg.server).unwrap(),
        listener,
        std::future::pending(),
    )
    .await
    .unwrap();
    let url = format!("https://127.0.0.1:{}", running.addr.port());
    let certs = root.join("certs");
    let per_client = 150;
    let mut tasks = Vec::new();
    // Register one key per client (not timed), then approve in a loop (timed).
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    for c in 0..CLIENTS {
        let (url, certs, barrier) = (url.clone(), certs.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let ch = connect_as(&url, &certs, "frontend").await.unwrap();
            let mut f = FactorServiceClient::new(ch.clone());
            let mut a = ApprovalServiceClient::new(ch);
            let user = format!("wa-user-{c}");
            let (mut auth, _) = SoftToken::new(true).unwrap();
            let b = f
                .begin_webauthn_registration(pb::BeginWebauthnRegistrationRequest {
                    user_id: user.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let ccr: CreationChallengeResponse = serde_json::from_str(&b.options_json).unwrap();
            let reg = auth.do_registration(Url::parse(ORIGIN).unwrap(), ccr).unwrap();
            f.finish_webauthn_registration(pb::FinishWebauthnRegistrationRequest {
                user_id: user.clone(),
                ceremony_id: b.ceremony_id,
                response_json: serde_json::to_string(&reg).unwrap(),
            })
            .await
            .unwrap();
            barrier.wait().await;
            for i in 0..per_client {
                let intent = pb::Intent {
                    action: "withdrawal".into(),
                    user_id: user.clone(),
                    withdrawal_id: format!("wd-{i}"),
                    asset: "BTC".into(),
                    network: "bitcoin".into(),
                    amount: "0.5".into(),
                    destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
                    memo: String::new(),
                };
                let b = a
                    .begin_approval(pb::BeginApprovalRequest {
                        intent: Some(intent),
                        device: None,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let rcr: RequestChallengeResponse = serde_json::from_str(&b.webauthn_request_options_json).unwrap();
                let rsp = auth.do_authentication(Url::parse(ORIGIN).unwrap(), rcr).unwrap();
                a.complete_approval(pb::CompleteApprovalRequest {
                    challenge_id: b.challenge_id,
                    user_id: user.clone(),
                    proof: Some(pb::complete_approval_request::Proof::Webauthn(pb::WebauthnProof {
                        response_json: serde_json::to_string(&rsp).unwrap(),
                    })),
                })
                .await
                .unwrap();
            }
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = CLIENTS * per_client;
    let s2 = sigil.clone();
    let raw = tokio::task::spawn_blocking(move || raw_rate(s2.signer(), CLIENTS, 3.0))
        .await
        .unwrap();
    running.stop().await.unwrap();
    (total as f64 / elapsed, raw, total)
}

fn revoke_bench(root: &Path, users: usize, label: &str) -> (Duration, u64, Duration) {
    let dir = root.join(label);
    let cfg = config(&dir, label);
    let signer = Signer::open(&cfg, SecretString::from("bench-pin-1")).unwrap();
    let store = Arc::new(Counting {
        inner: SledStore::open(&cfg.store.path).unwrap(),
        ops: AtomicU64::new(0),
    });
    let load = Instant::now();
    let mut batch = Batch::new();
    for u in 0..users {
        let user = format!("user-{u:07}");
        // Fillers never verified: their secret is never unwrapped.
        let filler = sigil::factor::WrappedSecret {
            key_label: "unused".into(),
            blob: String::new(),
        };
        let f = active_totp(&user, format!("f_{u:07}"), filler, None);
        batch.insert(
            Table::Factors,
            FactorRecord::key(&user, &f.factor_id),
            f.encode().unwrap(),
        );
        if batch.ops.len() == 20_000 {
            store.inner.commit(&batch).unwrap();
            batch = Batch::new();
        }
    }
    store.inner.commit(&batch).unwrap();
    let load = load.elapsed();
    let sigil = Sigil::new(cfg, store.clone(), signer, Arc::new(TestClock::new(T0 + 10))).unwrap();
    let before = store.ops.load(Ordering::SeqCst);
    let t = Instant::now();
    sigil.ops().revoke_factors("admin", Scope::All, "benchmark").unwrap();
    let elapsed = t.elapsed();
    let writes = store.ops.load(Ordering::SeqCst) - before;
    let last = format!("user-{:07}", users - 1);
    let listed = sigil.enroll().list_factors(&last).unwrap();
    assert!(
        listed.iter().all(|(_, s)| *s == sigil::enroll::Standing::Revoked),
        "last user's factor revoked"
    );
    (elapsed, writes, load)
}

fn rewrap_and_backup_bench(root: &Path, users: usize) {
    let dir = root.join("rw");
    let cfg = config(&dir, "bench-rw");
    let signer = Signer::open(&cfg, SecretString::from("bench-pin-1")).unwrap();
    let store = Arc::new(SledStore::open(&cfg.store.path).unwrap());
    let sigil = Sigil::new(cfg.clone(), store.clone(), signer, Arc::new(TestClock::new(T0))).unwrap();
    let label = sigil.signer().secrets_label();
    let load = Instant::now();
    let mut batch = Batch::new();
    for u in 0..users {
        let user = format!("user-{u:07}");
        let factor_id = format!("f_{u:07}");
        let aad = {
            let mut a = b"sigil-secret-v1\0".to_vec();
            a.extend_from_slice(user.as_bytes());
            a.push(0);
            a.extend_from_slice(factor_id.as_bytes());
            a
        };
        let secret = sigil.signer().wrap_with(&label, &[7u8; 20], &aad).unwrap();
        let f = active_totp(&user, factor_id.clone(), secret, Some(1));
        batch.insert(
            Table::Factors,
            FactorRecord::key(&user, &factor_id),
            f.encode().unwrap(),
        );
        batch.insert(Table::Users, user.into_bytes(), br#"{"v":1,"epoch":0,"security_locked_until":0,"security_lock_reason":"","suspension":null,"anti_phishing":null,"compromised_device_at":null,"recent":[],"revoked_at":null}"#.to_vec());
        if batch.ops.len() >= 20_000 {
            store.commit(&batch).unwrap();
            batch = Batch::new();
        }
    }
    store.commit(&batch).unwrap();
    let load = load.elapsed();
    // Raw AES reference: one decrypt + one encrypt per secret, one thread, as the re-wrap does.
    let blob = sigil.signer().wrap_with(&label, &[7u8; 20], b"aad").unwrap();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(2) {
        let p = sigil.signer().unwrap_secret(&blob, b"aad").unwrap();
        sigil.signer().wrap_with(&label, &p, b"aad").unwrap();
        n += 1;
    }
    let raw = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let r = sigil.keys().rewrap_secrets("admin", 1000, |_| true).unwrap();
    let rw = t.elapsed().as_secs_f64();
    assert!(r.done && r.moved as usize == users, "{r:?}");
    let mut out = Vec::new();
    let t = Instant::now();
    let (h, bytes) = sigil.backup(&mut out).unwrap();
    let bt = t.elapsed().as_secs_f64();
    println!(
        "## Re-wrap of {users} factor secrets (batches of 1000; loading them took {:.1} s, not timed)\n",
        load.as_secs_f64()
    );
    println!("| measure | value |\n|---|---|");
    println!("| re-wrap | {:.0} secrets/s ({:.1} s) |", users as f64 / rw, rw);
    println!("| raw HSM AES-256-GCM decrypt+encrypt pairs/s (1 thread, same run) | {raw:.0} |");
    println!("| ratio | {:.2} |\n", users as f64 / rw / raw);
    println!("## Backup of a store with {users} users\n");
    println!("| measure | value |\n|---|---|");
    println!("| records | {} |", h.records);
    println!("| file size | {:.1} MB |", bytes as f64 / 1e6);
    println!("| time | {:.2} s |", bt);
    println!("| throughput | {:.1} MB/s |\n", bytes as f64 / 1e6 / bt);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    setup_hsm(root.path());
    println!("# Sigil benchmark: WebAuthn approvals and revocation\n");
    let (rate, raw, n) = webauthn_bench(root.path()).await;
    println!("## WebAuthn approvals ({CLIENTS} concurrent clients over mTLS, soft security keys with UV)\n");
    println!("| measure | value |\n|---|---|");
    println!("| approvals (begin + complete) | {n} |");
    println!("| end-to-end WebAuthn approvals/s | {rate:.0} |");
    println!("| raw SoftHSM ES256 signatures/s (8 threads, same run) | {raw:.0} |");
    println!("| ratio | {:.2} |\n", rate / raw);
    let max: usize = std::env::var("SIGIL_BENCH_REVOKE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("## Revoke every factor of every user\n");
    println!("| enrolled users | revoke-all time | store writes | (loading the users, not timed) |\n|---|---|---|---|");
    let root2 = root.path().to_path_buf();
    let rows = tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        for (i, users) in [1_000usize, 100_000, 1_000_000]
            .into_iter()
            .filter(|u| *u <= max)
            .enumerate()
        {
            rows.push((users, revoke_bench(&root2, users, &format!("rv{i}"))));
        }
        rows
    })
    .await
    .unwrap();
    for (users, (t, writes, load)) in rows {
        println!(
            "| {users} | {:.2} ms | {writes} | {:.1} s |",
            t.as_secs_f64() * 1000.0,
            load.as_secs_f64()
        );
    }
    println!();
    let n: usize = std::env::var("SIGIL_BENCH_REWRAP_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let root3 = root.path().to_path_buf();
    tokio::task::spawn_blocking(move || rewrap_and_backup_bench(&root3, n))
        .await
        .unwrap();
}
