//! The load of the kill -9 test: workers that enroll, approve and redeem
//! against the real `sigild`, the ledger of what it acknowledged, and the
//! checks of that ledger after each restart.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sigil::client::connect_as;
use sigil::factor::totp;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::daemon::*;
use crate::support::harness::*;

/// Concurrent load clients.
pub const WORKERS: usize = 4;

/// xorshift64*: enough to pick kill moments and actions from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A user whose enrollment was acknowledged.
pub struct User {
    /// The worker that uses it (one at a time, so its steps stay ordered).
    pub owner: usize,
    pub seed: Vec<u8>,
    pub factor_id: String,
    /// Highest step ever sent for it, acknowledged or not.
    pub last_tried: u64,
}

/// A TOTP code the server acknowledged (enrollment or approval).
pub struct Used {
    pub user: String,
    pub step: u64,
    pub code: String,
    pub checked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Redemption {
    /// The approval was acknowledged; no redemption was sent: after the
    /// restart it must redeem.
    NotSent,
    /// A redemption was sent, not (yet) acknowledged.
    Sent,
    /// Known redeemed: acknowledged, or refused as already redeemed.
    Redeemed,
}

pub struct Approval {
    pub token: String,
    pub expires_at: i64,
    pub state: Redemption,
}

#[derive(Default)]
pub struct Counts {
    pub enrollments: u64,
    pub approvals: u64,
    pub redemptions: u64,
    /// Expected refusals: the loser of a concurrent double redemption and
    /// re-redemptions of redeemed approvals.
    pub refusals: u64,
    pub double_redeems: u64,
    /// Calls cut off by the kill (not acknowledged).
    pub lost: u64,
}

#[derive(Default)]
pub struct Ledger {
    pub users: BTreeMap<String, User>,
    pub used: Vec<Used>,
    pub approvals: HashMap<String, Approval>,
    /// jti of approvals known redeemed, to re-redeem at random.
    pub redeemed: Vec<String>,
    /// Successful redemptions per jti; more than one is a violation.
    pub redeem_oks: HashMap<String, u32>,
    pub counts: Counts,
    /// Answers a live daemon should not have given.
    pub unexpected: Vec<String>,
    /// Broken guarantees.
    pub violations: Vec<String>,
}

impl Ledger {
    /// Records a successful redemption of `jti`.
    pub fn redeem_ok(&mut self, jti: &str) {
        let n = self.redeem_oks.entry(jti.to_string()).or_insert(0);
        *n += 1;
        if *n > 1 {
            self.violations.push(format!("approval {jti} was redeemed {n} times"));
        }
        self.counts.redemptions += 1;
        self.mark_redeemed(jti);
    }

    pub fn mark_redeemed(&mut self, jti: &str) {
        let a = self.approvals.get_mut(jti).unwrap();
        if a.state != Redemption::Redeemed {
            a.state = Redemption::Redeemed;
            self.redeemed.push(jti.to_string());
        }
    }
}

pub fn already_redeemed(st: &Status) -> bool {
    st.code() == Code::FailedPrecondition && st.message().contains("already redeemed")
}

pub static NEXT_USER: AtomicU64 = AtomicU64::new(0);

pub struct Worker {
    pub id: usize,
    pub f: FactorServiceClient<Channel>,
    pub a: ApprovalServiceClient<Channel>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub rng: Rng,
}

impl Worker {
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }

    /// Enrolls and confirms a TOTP factor for a new user.
    pub async fn enroll(&mut self) -> Result<(), Status> {
        let user = format!("crash-{}", NEXT_USER.fetch_add(1, Ordering::SeqCst));
        let e = self
            .f
            .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
                user_id: user.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
        let step = real_step();
        let code = totp::code_at_step(&seed, step);
        self.f
            .confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
                user_id: user.clone(),
                factor_id: e.factor_id.clone(),
                code: code.clone(),
            })
            .await?;
        let mut l = self.ledger();
        l.users.insert(
            user.clone(),
            User {
                owner: self.id,
                seed,
                factor_id: e.factor_id,
                last_tried: step,
            },
        );
        l.used.push(Used {
            user,
            step,
            code,
            checked: false,
        });
        l.counts.enrollments += 1;
        Ok(())
    }

    /// One of this worker's users with a fresh step in the window.
    pub fn pick_user(&mut self) -> Option<String> {
        let cur = real_step();
        let l = self.ledger.lock().unwrap();
        let free: Vec<&String> = l
            .users
            .iter()
            .filter(|(_, u)| u.owner == self.id && u.last_tried < cur + 1)
            .map(|(n, _)| n)
            .collect();
        if free.is_empty() {
            return None;
        }
        Some(free[self.rng.below(free.len() as u64) as usize].clone())
    }

    /// Begin + complete an approval with a fresh step of `user`, then
    /// redeem it (sometimes twice at once).
    pub async fn approve(&mut self, user: &str) -> Result<(), Status> {
        let (seed, factor_id, step) = {
            let mut l = self.ledger();
            let u = l.users.get_mut(user).unwrap();
            let cur = real_step();
            let step = (u.last_tried + 1).max(cur);
            if step > cur + 1 {
                return Ok(());
            }
            // Counted as tried before it is sent: a step the dead daemon
            // may have accepted is never offered again.
            u.last_tried = step;
            (u.seed.clone(), u.factor_id.clone(), step)
        };
        let intent = withdrawal(user, &format!("wd-{user}-{step}"));
        let b = self
            .a
            .begin_approval(pb::BeginApprovalRequest {
                intent: Some(intent.clone()),
                device: None,
            })
            .await?
            .into_inner();
        let code = totp::code_at_step(&seed, step);
        let done = self
            .a
            .complete_approval(totp_proof(&b.challenge_id, user, &code, &factor_id))
            .await?
            .into_inner();
        let jti = done.jti.clone();
        // Some approvals are left for after the restart: issued and
        // acknowledged, they must still be redeemable then (once).
        let later = self.rng.below(8) == 0;
        {
            let mut l = self.ledger();
            l.used.push(Used {
                user: user.to_string(),
                step,
                code,
                checked: false,
            });
            l.approvals.insert(
                jti.clone(),
                Approval {
                    token: done.approval.clone(),
                    expires_at: done.expires_at,
                    state: if later { Redemption::NotSent } else { Redemption::Sent },
                },
            );
            l.counts.approvals += 1;
        }
        if later {
            return Ok(());
        }
        let req = pb::RedeemApprovalRequest {
            approval: done.approval,
            expected_intent: Some(intent),
            idempotency_key: String::new(),
        };
        if self.rng.below(4) == 0 {
            // Two redemptions at once: exactly one may succeed.
            let mut other = self.a.clone();
            let (r1, r2) = tokio::join!(self.a.redeem_approval(req.clone()), other.redeem_approval(req));
            let mut l = self.ledger();
            l.counts.double_redeems += 1;
            let mut oks = 0;
            let mut first_err = None;
            for r in [r1, r2] {
                match r {
                    Ok(_) => {
                        oks += 1;
                        l.redeem_ok(&jti);
                    }
                    Err(st) if already_redeemed(&st) => l.counts.refusals += 1,
                    Err(st) => first_err = first_err.or(Some(st)),
                }
            }
            if let Some(st) = first_err {
                return Err(st);
            }
            if oks != 1 {
                l.violations
                    .push(format!("approval {jti}: {oks} of two concurrent redemptions succeeded"));
            }
        } else {
            self.a.redeem_approval(req).await?;
            self.ledger().redeem_ok(&jti);
        }
        Ok(())
    }

    /// Redeems an approval already known redeemed: must be refused.
    pub async fn redeem_again(&mut self) -> Result<(), Status> {
        let pick = {
            let l = self.ledger.lock().unwrap();
            if l.redeemed.is_empty() {
                return Ok(());
            }
            let jti = l.redeemed[self.rng.below(l.redeemed.len() as u64) as usize].clone();
            let a = &l.approvals[&jti];
            (a.expires_at > now_secs() + 5).then(|| (jti, a.token.clone()))
        };
        let Some((jti, token)) = pick else { return Ok(()) };
        let r = self
            .a
            .redeem_approval(pb::RedeemApprovalRequest {
                expected_intent: expected_of(&token),
                idempotency_key: String::new(),
                approval: token,
            })
            .await;
        match r {
            Ok(_) => {
                self.ledger().redeem_ok(&jti);
                Ok(())
            }
            Err(st) if already_redeemed(&st) => {
                self.ledger().counts.refusals += 1;
                Ok(())
            }
            Err(st) => Err(st),
        }
    }
}

/// Drives load until `killed` is set; errors after that are the kill's.
pub async fn worker(id: usize, url: String, ledger: Arc<Mutex<Ledger>>, killed: Arc<AtomicBool>, seed: u64) {
    let certs = certs_dir();
    let connected = async {
        let f = connect_as(&url, &certs, "frontend").await?;
        let a = connect_as(&url, &certs, "withdrawal-engine").await?;
        Ok::<_, sigil::Error>((f, a))
    }
    .await;
    let (f, a) = match connected {
        Ok(c) => c,
        Err(e) => {
            if !killed.load(Ordering::SeqCst) {
                ledger
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("worker {id} connect: {e}"));
            }
            return;
        }
    };
    let mut w = Worker {
        id,
        f: FactorServiceClient::new(f),
        a: ApprovalServiceClient::new(a),
        ledger,
        rng: Rng::new(seed),
    };
    while !killed.load(Ordering::SeqCst) {
        let r = match w.rng.below(8) {
            0 => w.redeem_again().await,
            n => match w.pick_user() {
                Some(u) if n > 2 => w.approve(&u).await,
                _ => w.enroll().await,
            },
        };
        if let Err(st) = r {
            let mut l = w.ledger();
            if killed.load(Ordering::SeqCst) {
                l.counts.lost += 1;
                return;
            }
            l.unexpected
                .push(format!("worker {id}: {:?}: {}", st.code(), st.message()));
        }
    }
}

/// Runs `f` over `items` in `WORKERS` concurrent tasks.
pub async fn in_parallel<T, F, Fut>(items: Vec<T>, f: F)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut chunks: Vec<Vec<T>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, it) in items.into_iter().enumerate() {
        chunks[i % WORKERS].push(it);
    }
    let mut set = tokio::task::JoinSet::new();
    for chunk in chunks {
        let f = f.clone();
        set.spawn(async move {
            for it in chunk {
                f(it).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Every acknowledged TOTP step still inside the window is refused again.
/// Returns (checked, skipped because the clock left the window).
pub async fn check_used_steps(url: &str, ledger: &Arc<Mutex<Ledger>>, seed: u64) -> (u64, u64) {
    let todo: Vec<(String, u64, String)> = {
        let mut l = ledger.lock().unwrap();
        l.used
            .iter_mut()
            .filter(|u| !u.checked)
            .map(|u| {
                u.checked = true;
                (u.user.clone(), u.step, u.code.clone())
            })
            .collect()
    };
    let checked = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let a = ApprovalServiceClient::new(connect_as(url, &certs_dir(), "withdrawal-engine").await.unwrap());
    let (c, s) = (checked.clone(), skipped.clone());
    in_parallel(todo, move |(user, step, code): (String, u64, String)| {
        let mut a = a.clone();
        let (checked, skipped) = (c.clone(), s.clone());
        async move {
            // Outside the ±1 window the refusal would prove nothing.
            if step + 1 < real_step() {
                skipped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let b = a
                .begin_approval(pb::BeginApprovalRequest {
                    intent: Some(withdrawal(&user, &format!("wd-replay-{user}-{step}"))),
                    device: None,
                })
                .await
                .unwrap()
                .into_inner();
            let r = a.complete_approval(totp_proof(&b.challenge_id, &user, &code, "")).await;
            match r {
                Ok(_) => panic!(
                    "seed={seed}: user {user}'s acknowledged TOTP step {step} was accepted again after a kill -9 and restart"
                ),
                Err(st) if st.code() == Code::PermissionDenied && st.message().contains("not accepted") => {}
                Err(st) if st.code() == Code::ResourceExhausted && st.message().contains("locked") => {}
                Err(st) => panic!("seed={seed}: replay of {user}'s step {step}: unexpected {st:?}"),
            }
            checked.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    (checked.load(Ordering::SeqCst), skipped.load(Ordering::SeqCst))
}

/// Every acknowledged redemption is refused as already redeemed; an
/// approval issued but not (knowingly) redeemed is redeemed now, once.
/// Returns (re-checked, redeemed now, skipped as expired).
pub async fn check_redemptions(url: &str, ledger: &Arc<Mutex<Ledger>>, seed: u64) -> (u64, u64, u64) {
    let todo: Vec<(String, String, Redemption, i64)> = {
        let l = ledger.lock().unwrap();
        l.approvals
            .iter()
            .map(|(jti, a)| (jti.clone(), a.token.clone(), a.state, a.expires_at))
            .collect()
    };
    let counts = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let a = ApprovalServiceClient::new(connect_as(url, &certs_dir(), "withdrawal-engine").await.unwrap());
    let (ledger2, counts2) = (ledger.clone(), counts.clone());
    in_parallel(todo, move |(jti, token, state, exp): (String, String, Redemption, i64)| {
        let mut a = a.clone();
        let (ledger, counts) = (ledger2.clone(), counts2.clone());
        async move {
            if exp <= now_secs() + 5 {
                counts.lock().unwrap().2 += 1;
                return;
            }
            let r = a
                .redeem_approval(pb::RedeemApprovalRequest {
                    expected_intent: expected_of(&token),
                    idempotency_key: String::new(),
                    approval: token,
                })
                .await;
            match (state, r) {
                (Redemption::Redeemed, Err(st)) if already_redeemed(&st) => counts.lock().unwrap().0 += 1,
                (Redemption::Redeemed, Ok(_)) => panic!(
                    "seed={seed}: approval {jti}, acknowledged as redeemed, was redeemed again after a kill -9 and restart"
                ),
                (Redemption::Sent | Redemption::NotSent, Ok(_)) => {
                    ledger.lock().unwrap().redeem_ok(&jti);
                    counts.lock().unwrap().1 += 1;
                }
                // A redemption cut off by the kill may have been written.
                (Redemption::Sent, Err(st)) if already_redeemed(&st) => {
                    let mut l = ledger.lock().unwrap();
                    l.counts.refusals += 1;
                    l.mark_redeemed(&jti);
                }
                (state, Err(st)) => panic!("seed={seed}: redeeming {jti} ({state:?}) after restart: {st:?}"),
            }
        }
    })
    .await;
    let c = *counts.lock().unwrap();
    c
}

/// Every acknowledged enrollment is an active factor. Returns how many.
pub async fn check_enrollments(url: &str, ledger: &Arc<Mutex<Ledger>>, seed: u64) -> u64 {
    let todo: Vec<(String, String)> = {
        let l = ledger.lock().unwrap();
        l.users.iter().map(|(n, u)| (n.clone(), u.factor_id.clone())).collect()
    };
    let n = todo.len() as u64;
    let f = FactorServiceClient::new(connect_as(url, &certs_dir(), "frontend").await.unwrap());
    in_parallel(todo, move |(user, factor_id): (String, String)| {
        let mut f = f.clone();
        async move {
            let list = f
                .list_factors(pb::ListFactorsRequest { user_id: user.clone() })
                .await
                .unwrap()
                .into_inner();
            assert!(
                list.factors
                    .iter()
                    .any(|x| x.factor_id == factor_id && x.state == pb::FactorState::Active as i32),
                "seed={seed}: user {user}'s acknowledged enrollment {factor_id} is not an active factor after a kill -9 and restart: {:?}",
                list.factors
            );
        }
    })
    .await;
    n
}
