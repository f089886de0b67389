//! Helpers of the key life cycle tests: a server without background
//! sweeps, approvals issued and redeemed, audit entries, the wrapping keys
//! of factor secrets, backups, and the load loop that approves and redeems
//! while keys rotate. The key set itself is in `tokens`.
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sigil::factor::{totp, FactorRecord};
use sigil::pb;
use sigil::store::Table;
use sigil_verify::{CachingVerifier, JwkSet, KeySource};

use crate::support::harness::*;
use crate::support::tokens::*;

/// A server whose background sweep never runs during a test: the test
/// applies key transitions itself (`sweep`), and snapshots stay comparable.
pub async fn start_quiet() -> TestServer {
    TestServer::start_with(|c| {
        relaxed(c);
        c.protection.sweep_interval_seconds = 3600;
    })
    .await
}

/// Runs the sweep (due key transitions) on a blocking thread.
pub async fn sweep(s: &TestServer) {
    let sg = s.sigil().clone();
    tokio::task::spawn_blocking(move || sg.sweep()).await.unwrap().unwrap();
}

/// Begin + complete a withdrawal approval with the TOTP code of the step
/// `now` falls in. The clock is not moved.
pub async fn issue(
    a: &mut Approvals,
    user: &str,
    wid: &str,
    seed: &[u8],
    now: i64,
) -> Result<pb::CompleteApprovalResponse, tonic::Status> {
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(user, wid)),
            device: None,
        })
        .await?
        .into_inner();
    let code = totp::code_at_step(seed, totp::step_at(now));
    Ok(a.complete_approval(totp_proof(&b.challenge_id, user, &code, ""))
        .await?
        .into_inner())
}

pub async fn redeem(a: &mut Approvals, token: &str) -> Result<pb::RedeemApprovalResponse, tonic::Status> {
    a.redeem_approval(pb::RedeemApprovalRequest {
        expected_intent: expected_of(token),
        idempotency_key: String::new(),
        approval: token.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Every audit entry.
pub async fn audit(s: &TestServer) -> Vec<pb::AuditRecord> {
    let mut adm = s.admin().await;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = adm
            .read_audit(pb::ReadAuditRequest {
                after_seq: after,
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if r.entries.is_empty() {
            return out;
        }
        after = r.next_after_seq;
        out.extend(r.entries);
    }
}

pub fn has_entry(entries: &[pb::AuditRecord], action: &str, details: &[(&str, &str)]) -> bool {
    entries.iter().any(|e| {
        e.action == action
            && e.outcome == "ok"
            && details
                .iter()
                .all(|(k, v)| e.details.get(*k).map(String::as_str) == Some(*v))
    })
}

/// The wrapping key label of every factor record: (user, factor, label).
pub fn factor_labels(s: &TestServer) -> Vec<(String, String, String)> {
    s.sigil()
        .store()
        .scan_prefix(Table::Factors, b"")
        .unwrap()
        .iter()
        .map(|(_, v)| {
            let f = FactorRecord::decode(v).unwrap();
            let label = f.secret().expect("a TOTP factor has a secret").key_label.clone();
            (f.user_id, f.factor_id, label)
        })
        .collect()
}

/// Every user of `users` approves once at the current step, and the
/// approval redeems; then the clock moves to the next step.
pub async fn all_approve(s: &TestServer, users: &[(String, Vec<u8>)], tag: &str) {
    let mut a = s.approvals("withdrawal-engine").await;
    let now = s.clock.now_secs();
    for (u, seed) in users {
        let r = issue(&mut a, u, &format!("wd-{tag}"), seed, now)
            .await
            .unwrap_or_else(|e| panic!("{u} cannot approve ({tag}): {e:?}"));
        redeem(&mut a, &r.approval)
            .await
            .unwrap_or_else(|e| panic!("{u}'s approval does not redeem ({tag}): {e:?}"));
    }
    s.clock.advance(30);
}

/// Takes a backup through the gRPC Backup stream into `file`.
pub async fn backup_to(s: &TestServer, file: &Path) -> Vec<u8> {
    let mut stream = s.admin().await.backup(pb::BackupRequest {}).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    std::fs::write(file, &bytes).unwrap();
    bytes
}

/// Phases of the rotation, as the load loop sees them.
pub const BEFORE: u8 = 0;
pub const NEXT_PUBLISHED: u8 = 1;
pub const ACTIVATING: u8 = 2;
pub const ACTIVE: u8 = 3;
pub const RETIRED: u8 = 4;

/// One approval of the load loop: the phase when it was begun and when it
/// was issued, and the kid that signed it.
pub struct Issued {
    pub phase_before: u8,
    pub phase_after: u8,
    pub kid: String,
}

/// An approval waiting for the engine.
pub struct Pending {
    pub n: u64,
    pub step: u64,
    pub user: String,
    pub wid: String,
    pub token: String,
}

/// The engine's side: fetch Sigil's key set (into the set the caching
/// verifier's source reads), verify each approval offline against the
/// engine's own intent, redeem it.
pub async fn engine<S: KeySource + 'static>(
    a: &mut Approvals,
    shared: &Mutex<JwkSet>,
    verifier: &Arc<CachingVerifier<S>>,
    load: &Load,
    due: Vec<Pending>,
    now: i64,
) {
    match a.get_approval_keys(pb::GetApprovalKeysRequest {}).await {
        Ok(r) => *shared.lock().unwrap() = jwks_of(&r.into_inner()),
        Err(e) => load.fail(format!("GetApprovalKeys: {e:?}")),
    }
    for p in due {
        let kid = header_kid(&p.token);
        let intent = domain_intent(&withdrawal(&p.user, &p.wid));
        let (v, tok) = (verifier.clone(), p.token.clone());
        let checked = tokio::task::spawn_blocking(move || v.verify_for(&tok, &intent, now))
            .await
            .unwrap();
        if let Err(e) = checked {
            load.fail(format!("offline verification of approval {} (kid {kid}): {e}", p.n));
        }
        if let Err(e) = redeem(a, &p.token).await {
            load.fail(format!("redemption of approval {} (kid {kid}): {e:?}", p.n));
        }
    }
}

#[derive(Default)]
pub struct Load {
    pub phase: AtomicU8,
    pub stop: AtomicBool,
    pub done: AtomicUsize,
    /// The TOTP step at which every user had approved already (the loop
    /// waits for the clock).
    pub idle_at: AtomicU64,
    pub failures: Mutex<Vec<String>>,
    pub issued: Mutex<Vec<Issued>>,
}

impl Load {
    pub fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// Waits until `n` more approvals went through the whole loop, or every
    /// user has approved at the current step. Either way no approval begun
    /// before the last clock move is still in flight, so the clock may move
    /// again without pushing a TOTP code out of its window.
    pub async fn settle(&self, clock: &sigil::clock::TestClock, n: usize) {
        let target = self.done.load(Ordering::SeqCst) + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.done.load(Ordering::SeqCst) < target
            && self.idle_at.load(Ordering::SeqCst) != totp::step_at(clock.now_secs())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load loop stalled; failures so far: {:?}",
                self.failures.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A key source that asks the server (GetApprovalKeys over mTLS) on every
/// fetch, from a synchronous closure, and counts the fetches.
pub fn server_source(
    a: Approvals,
    fetches: Arc<AtomicU64>,
) -> impl Fn() -> Result<JwkSet, String> + Send + Sync + 'static {
    type Reply = std::sync::mpsc::Sender<Result<JwkSet, String>>;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    tokio::spawn(async move {
        let mut a = a;
        while let Some(reply) = rx.recv().await {
            let r = a
                .get_approval_keys(pb::GetApprovalKeysRequest {})
                .await
                .map_err(|e| format!("GetApprovalKeys failed: {e}"))
                .and_then(|r| serde_json::from_str(&r.into_inner().jwks_json).map_err(|e| e.to_string()));
            let _ = reply.send(r);
        }
    });
    move || {
        fetches.fetch_add(1, Ordering::SeqCst);
        let (rtx, rrx) = std::sync::mpsc::channel();
        tx.send(rtx).map_err(|e| e.to_string())?;
        rrx.recv_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?
    }
}

pub async fn approve_otp(
    s: &TestServer,
    otp: String,
    wid: &str,
) -> Result<tonic::Response<pb::CompleteApprovalResponse>, tonic::Status> {
    let mut a = s.approvals("withdrawal-engine").await;
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("yuri", wid)),
            device: None,
        })
        .await?
        .into_inner();
    a.complete_approval(pb::CompleteApprovalRequest {
        challenge_id: b.challenge_id,
        user_id: "yuri".into(),
        proof: Some(pb::complete_approval_request::Proof::YubikeyOtp(pb::YubikeyOtpProof {
            otp,
        })),
    })
    .await
}
