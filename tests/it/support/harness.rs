//! Test harness: a real Sigil server on 127.0.0.1:0 with its own SoftHSM
//! token, sled store and certificates in a temp dir, reached over real mTLS.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use secrecy::SecretString;
use sigil::client::connect_as;
use sigil::clock::TestClock;
use sigil::config::Config;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use sigil::server::{self, Running};
use sigil::signer::Signer;
use sigil::store::SledStore;
use sigil::Sigil;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Test clock start: 2027-01-15T08:00:00Z.
pub const T0: i64 = 1_800_000_000;

struct Env {
    _hsm_dir: TempDir,
    certs: TempDir,
}

static ENV: OnceLock<Env> = OnceLock::new();
static TOKEN_INIT: Mutex<()> = Mutex::new(());
static NEXT_TOKEN: AtomicU32 = AtomicU32::new(0);

/// Runs `certs/gen.sh` into `dir`.
pub fn gen_certs(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen.sh");
    let st = Command::new("bash")
        .arg(&script)
        .arg("--force")
        .arg(dir)
        .output()
        .expect("run certs/gen.sh");
    assert!(
        st.status.success(),
        "certs/gen.sh failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// Mints one more client certificate signed by `dir`'s CA.
pub fn gen_client(dir: &Path, name: &str, uri: Option<&str>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen.sh");
    let mut c = Command::new("bash");
    c.arg(&script).arg("--client").arg(dir).arg(name);
    if let Some(u) = uri {
        c.arg(u);
    }
    let st = c.output().expect("run certs/gen.sh --client");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let hsm_dir = tempfile::tempdir().expect("tempdir");
        let tokens = hsm_dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = hsm_dir.path().join("softhsm2.conf");
        sigil_hsm::write_softhsm_conf(&conf, &tokens).expect("softhsm conf");
        // SoftHSM reads this once, at the first PKCS#11 call of the process.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let certs = tempfile::tempdir().expect("tempdir");
        gen_certs(certs.path());
        gen_client(certs.path(), "norole", None);
        gen_client(certs.path(), "badrole", Some("spiffe://sigil/role/superuser"));
        Env {
            _hsm_dir: hsm_dir,
            certs,
        }
    })
}

/// The process's shared certificate directory.
pub fn certs_dir() -> PathBuf {
    env().certs.path().to_path_buf()
}

/// PIN of every test token.
pub const PIN: &str = "it-user-pin-4711";

/// A fresh token with Sigil's keys; returns its label.
pub fn new_token(cfg: &mut Config) {
    let _ = env();
    let label = format!(
        "it-{}-{}",
        std::process::id() % 100_000,
        NEXT_TOKEN.fetch_add(1, Ordering::SeqCst)
    );
    cfg.hsm.token_label = label;
    cfg.hsm.pool_size = 4;
    let _g = TOKEN_INIT.lock().unwrap_or_else(|p| p.into_inner());
    sigil::signer::init_token(cfg, &SecretString::from("it-so-pin-0815"), &SecretString::from(PIN))
        .expect("create test token");
}

/// The protections of [`TestServer::start`] (no whitelist, no
/// security-change lock), for `start_with*` tweaks.
pub fn relaxed(c: &mut Config) {
    c.protection.require_whitelisted_address = false;
    c.protection.security_change_lock_seconds = 0;
}

/// A running in-process server.
pub struct TestServer {
    pub _dir: TempDir,
    pub cfg: Config,
    pub clock: Arc<TestClock>,
    pub sigil: Option<Arc<Sigil>>,
    running: Option<Running>,
    pub url: String,
    /// WebAuthn attestation roots (PEM) trusted by this server.
    pub attestation_roots: Vec<String>,
}

impl TestServer {
    /// A server whose withdrawal protections (whitelist, security-change
    /// lock) are off, for tests of the approval mechanics themselves.
    pub async fn start() -> TestServer {
        Self::start_with(relaxed).await
    }

    /// A server with the product's default protections.
    pub async fn start_strict() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_with_roots(tweak, Vec::new()).await
    }

    /// Like `start_with`, trusting these WebAuthn attestation roots (PEM).
    pub async fn start_with_roots(tweak: impl FnOnce(&mut Config), attestation_roots: Vec<String>) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = certs_dir();
        let mut cfg = Config::for_test(dir.path());
        cfg.server.cert = certs.join("server.pem");
        cfg.server.key = certs.join("server.key");
        cfg.server.client_ca = certs.join("ca.pem");
        cfg.hsm.pin_env = "SIGIL_IT_PIN_NOT_SET".into();
        std::fs::write(&cfg.hsm.pin_file, PIN).expect("pin file");
        new_token(&mut cfg);
        tweak(&mut cfg);
        let mut s = TestServer {
            _dir: dir,
            cfg,
            clock: Arc::new(TestClock::new(T0)),
            sigil: None,
            running: None,
            url: String::new(),
            attestation_roots,
        };
        s.boot().await;
        s
    }

    async fn boot(&mut self) {
        let cfg = self.cfg.clone();
        let pin = sigil::signer::read_pin(&cfg.hsm).expect("pin");
        let signer = tokio::task::spawn_blocking(move || Signer::open(&cfg, pin))
            .await
            .unwrap()
            .expect("signer");
        let store = Arc::new(SledStore::open_with(&self.cfg.store.path, self.cfg.store.tuning()).expect("store"));
        let sigil = Arc::new(
            Sigil::with_attestation_roots(
                self.cfg.clone(),
                store,
                signer,
                self.clock.clone(),
                &self.attestation_roots,
            )
            .expect("sigil"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls = server::tls_config(&self.cfg.server).expect("tls");
        let running = server::start(sigil.clone(), tls, listener, std::future::pending())
            .await
            .expect("start");
        self.url = format!("https://127.0.0.1:{}", running.addr.port());
        self.sigil = Some(sigil);
        self.running = Some(running);
    }

    /// Graceful stop, then a new server over the same store, token and clock.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    /// Graceful stop; releases the store.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
        self.sigil = None;
        // Let the store's last handles (held by finished tasks) go.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    pub fn sigil(&self) -> &Arc<Sigil> {
        self.sigil.as_ref().expect("server running")
    }

    pub async fn channel(&self, role: &str) -> Channel {
        connect_as(&self.url, &certs_dir(), role).await.expect("connect")
    }

    pub async fn factors(&self, role: &str) -> FactorServiceClient<Channel> {
        FactorServiceClient::new(self.channel(role).await)
    }

    pub async fn approvals(&self, role: &str) -> ApprovalServiceClient<Channel> {
        ApprovalServiceClient::new(self.channel(role).await)
    }

    pub async fn account(&self, role: &str) -> sigil::pb::account_service_client::AccountServiceClient<Channel> {
        sigil::pb::account_service_client::AccountServiceClient::new(self.channel(role).await)
    }

    pub async fn admin(&self) -> sigil::pb::admin_service_client::AdminServiceClient<Channel> {
        sigil::pb::admin_service_client::AdminServiceClient::new(self.channel("admin").await)
    }

    pub async fn events(&self, role: &str) -> sigil::pb::event_service_client::EventServiceClient<Channel> {
        sigil::pb::event_service_client::EventServiceClient::new(self.channel(role).await)
    }

    /// Adds `addr` to `user`'s whitelist with an add_address approval.
    pub async fn whitelist(&self, user: &str, seed: &[u8], network: &str, addr: &str) -> pb::WhitelistedAddress {
        let asset = if network.starts_with("bitcoin") { "BTC" } else { "ETH" };
        let intent = pb::Intent {
            action: "add_address".into(),
            user_id: user.into(),
            asset: asset.into(),
            network: network.into(),
            destination: addr.into(),
            memo: "cold wallet".into(),
            ..Default::default()
        };
        let tok = self.approve(&intent, seed).await;
        self.account("frontend")
            .await
            .add_address(pb::AddAddressRequest {
                user_id: user.into(),
                asset: asset.into(),
                network: network.into(),
                address: addr.into(),
                label: "cold wallet".into(),
                approval: tok,
            })
            .await
            .expect("add address")
            .into_inner()
            .address
            .expect("address")
    }

    /// Collects events after `cursor` until none arrive for a moment.
    pub async fn collect_events(&self, cursor: u64) -> Vec<pb::Event> {
        self.collect_events_as("admin", cursor).await
    }

    /// The same, watching with `role`'s certificate.
    pub async fn collect_events_as(&self, role: &str, cursor: u64) -> Vec<pb::Event> {
        let mut c = self.events(role).await;
        let mut stream = c
            .watch_events(pb::WatchEventsRequest { after_cursor: cursor })
            .await
            .expect("watch")
            .into_inner();
        let mut out = Vec::new();
        while let Ok(Some(Ok(e))) = tokio::time::timeout(std::time::Duration::from_millis(700), stream.message())
            .await
            .map(|r| r.transpose())
        {
            out.push(e);
        }
        out
    }

    /// TOTP code of `secret` at the test clock's current time (+ `steps`).
    pub fn code(&self, secret: &[u8], steps: i64) -> String {
        let now = self.clock.now_secs() + steps * 30;
        sigil::factor::totp::code_at_step(secret, sigil::factor::totp::step_at(now))
    }

    /// Enrolls and confirms a TOTP factor for `user`; returns (factor id, seed).
    pub async fn enroll_totp(&self, user: &str) -> (String, Vec<u8>) {
        let mut f = self.factors("frontend").await;
        let e = f
            .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
                user_id: user.into(),
                ..Default::default()
            })
            .await
            .expect("begin enrollment")
            .into_inner();
        let seed = data_encoding::BASE32_NOPAD
            .decode(e.secret_base32.as_bytes())
            .expect("base32");
        f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
            user_id: user.into(),
            factor_id: e.factor_id.clone(),
            code: self.code(&seed, 0),
        })
        .await
        .expect("confirm enrollment");
        // The confirming step is used: move to the next one.
        self.clock.advance(30);
        (e.factor_id, seed)
    }

    /// Begin + complete a withdrawal approval with TOTP; returns the JWS.
    pub async fn approve(&self, intent: &pb::Intent, seed: &[u8]) -> String {
        let mut a = self.approvals("withdrawal-engine").await;
        let b = a
            .begin_approval(pb::BeginApprovalRequest {
                intent: Some(intent.clone()),
                device: None,
            })
            .await
            .expect("begin approval")
            .into_inner();
        let r = a
            .complete_approval(totp_proof(&b.challenge_id, &intent.user_id, &self.code(seed, 0), ""))
            .await
            .expect("complete approval")
            .into_inner();
        self.clock.advance(30);
        r.approval
    }
}

/// BeginApproval for `intent` as the withdrawal engine (no device signals).
pub async fn begin(s: &TestServer, intent: &pb::Intent) -> pb::BeginApprovalResponse {
    s.approvals("withdrawal-engine")
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .expect("begin approval")
        .into_inner()
}

pub fn totp_proof(challenge_id: &str, user: &str, code: &str, factor_id: &str) -> pb::CompleteApprovalRequest {
    pb::CompleteApprovalRequest {
        challenge_id: challenge_id.into(),
        user_id: user.into(),
        proof: Some(pb::complete_approval_request::Proof::Totp(pb::TotpProof {
            code: code.into(),
            factor_id: factor_id.into(),
        })),
    }
}

/// The Bitcoin address the tests withdraw to and whitelist.
pub const ADDR: &str = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq";

pub fn withdrawal(user: &str, wid: &str) -> pb::Intent {
    pb::Intent {
        action: "withdrawal".into(),
        user_id: user.into(),
        withdrawal_id: wid.into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        amount: "0.5".into(),
        destination: ADDR.into(),
        memo: String::new(),
    }
}

/// An `enroll_factor` intent naming what is enrolled (`kind:nickname`;
/// `webauthn:` for a security key without a nickname).
pub fn enroll_factor_intent(user: &str, memo: &str) -> pb::Intent {
    pb::Intent {
        action: "enroll_factor".into(),
        user_id: user.into(),
        memo: memo.into(),
        ..Default::default()
    }
}

pub fn domain_intent(i: &pb::Intent) -> sigil_verify::Intent {
    i.clone().into()
}

/// Snapshot of every record in every table (to prove a refusal wrote nothing).
pub fn snapshot(s: &Sigil) -> Vec<(String, Vec<u8>, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for t in sigil::store::Table::ALL {
        for (k, v) in s.store().scan_prefix(t, b"").expect("scan") {
            out.push((t.name().to_string(), k, v.version, v.value));
        }
    }
    out
}

/// [`snapshot`] without what a refused attempt may write: the user's
/// attempt counters (table `users`) and the audit log.
pub fn snapshot_but_attempts(s: &Sigil) -> Vec<(String, Vec<u8>, u64, Vec<u8>)> {
    but_attempts(snapshot(s))
}

/// A [`snapshot`] without the records a refused attempt may write.
pub fn but_attempts(snap: Vec<(String, Vec<u8>, u64, Vec<u8>)>) -> Vec<(String, Vec<u8>, u64, Vec<u8>)> {
    snap.into_iter()
        .filter(|(t, k, _, _)| t != "users" && t != "audit" && !(t == "meta" && k == b"loghead/audit"))
        .collect()
}

/// Asserts a status code and that the message mentions `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) -> tonic::Status {
    let st = r.expect_err("expected a refusal");
    assert_eq!(st.code(), code, "unexpected status: {st:?}");
    assert!(
        st.message().contains(needle),
        "message {:?} should mention {needle:?}",
        st.message()
    );
    st
}

/// What an engine sends as `expected_intent` with a redemption: its own
/// record of the withdrawal, here read from the token's claims (without
/// verifying them: Sigil does). None for anything that is not a JWS.
pub fn expected_of(token: impl AsRef<str>) -> Option<pb::Intent> {
    let payload = token.as_ref().split('.').nth(1)?;
    let bytes = sigil_verify::b64url::decode(payload).ok()?;
    let claims: sigil_verify::Claims = serde_json::from_slice(&bytes).ok()?;
    Some(claims.intent.into())
}

/// The factors of `user` as ListFactors shows them.
pub async fn factors(s: &TestServer, user: &str) -> Vec<pb::Factor> {
    s.factors("frontend")
        .await
        .list_factors(pb::ListFactorsRequest { user_id: user.into() })
        .await
        .unwrap()
        .into_inner()
        .factors
}

/// The factor as ListFactors shows it.
pub async fn factor(s: &TestServer, user: &str, factor_id: &str) -> pb::Factor {
    factors(s, user)
        .await
        .into_iter()
        .find(|f| f.factor_id == factor_id)
        .unwrap_or_else(|| panic!("factor {factor_id} of {user} not listed"))
}

/// The field a BadRequest detail names.
pub fn bad_request_field(st: &tonic::Status) -> String {
    let br = st.get_details_bad_request().expect("a BadRequest detail");
    br.field_violations[0].field.clone()
}
