//! The real binaries in a temp dir: `sigil hsm init` makes the token,
//! `sigild` serves on a free port with the shared test certificates. Used
//! by the binary, crash and deny-list tests.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sigil::client::connect_as;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::harness::*;

/// A running `sigild`; killed when dropped, so a failing test leaves none.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    /// Its log lines (stderr, without terminal colours).
    pub log: Arc<Mutex<Vec<String>>>,
    /// From spawn to its "listening on" line.
    pub listening: Duration,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Waits (up to 20 s) for a log line containing every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "sigild never logged {needles:?}; log: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{name} failed");
    }
}

/// The environment of `sigil` and `sigild` for a test dir: its own token
/// (SoftHSM config in `dir`), store in `dir/data/sled`, config
/// `dir/sigil.toml`, the shared test certificates; `rust_log` filters the
/// log.
pub fn daemon_env(cmd: &mut Command, dir: &Path, rust_log: &str) {
    let certs = certs_dir();
    cmd.current_dir(dir)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .env("SIGIL_HSM_PIN", "it-daemon-pin-1")
        .env("SIGIL_HSM_SO_PIN", "it-daemon-so-pin-1")
        .env("SIGIL_STORE_PATH", dir.join("data/sled"))
        .env("SIGIL_TLS_CERT", certs.join("server.pem"))
        .env("SIGIL_TLS_KEY", certs.join("server.key"))
        .env("SIGIL_CLIENT_CA", certs.join("ca.pem"))
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .env("SIGIL_CONFIG", dir.join("sigil.toml"))
        .env_remove("SIGIL_DENY_LIST");
}

/// A configuration for tests of the binaries themselves and of
/// persistence: withdrawals without the whitelist and the security-change
/// lock (tested elsewhere).
pub const PROTECTIONS_OFF: &str =
    "version = 1\n[protection]\nrequire_whitelisted_address = false\nsecurity_change_lock_seconds = 0\n";

/// Prepares `dir` for the binaries: writes `sigil.toml` with `toml`, then
/// makes the token with [`init_token`]; returns what that printed.
pub fn prepare(dir: &Path, toml: &str) -> String {
    std::fs::write(dir.join("sigil.toml"), toml).unwrap();
    init_token(dir)
}

/// The current TOTP step by the real clock (the binaries run on it).
pub fn real_step() -> u64 {
    sigil::factor::totp::step_at(now_secs())
}

/// Unix seconds by the real clock.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Writes the SoftHSM config of `dir` (tokens in `dir/tokens`) and runs the
/// real `sigil hsm init`; returns what it printed.
pub fn init_token(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    sigil_hsm::write_softhsm_conf(&dir.join("softhsm2.conf"), &dir.join("tokens")).unwrap();
    let mut init = Command::new(env!("CARGO_BIN_EXE_sigil"));
    daemon_env(&mut init, dir, "warn");
    let out = init.args(["hsm", "init"]).output().unwrap();
    assert!(
        out.status.success(),
        "sigil hsm init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Starts `sigild` on a free port and waits for its "listening on" line.
pub fn start_daemon(dir: &Path, rust_log: &str) -> Daemon {
    start_daemon_with(dir, rust_log, &[])
}

/// [`start_daemon`] with more environment variables for this process only.
pub fn start_daemon_with(dir: &Path, rust_log: &str, env: &[(&str, &str)]) -> Daemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigild"));
    daemon_env(&mut cmd, dir, rust_log);
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .env("SIGIL_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("sigild: {line}");
            sink.lock().unwrap().push(plain(&line));
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let listening = t0.elapsed();
    assert!(
        line.contains("listening on https://127.0.0.1:"),
        "sigild said: {line:?}"
    );
    // Keep reading stdout so that sigild never blocks on a full pipe.
    std::thread::spawn(move || for _ in stdout.lines().map_while(Result::ok) {});
    Daemon {
        child,
        url: format!("https://127.0.0.1:{port}"),
        log,
        listening,
    }
}

/// Log lines without terminal colours.
pub fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SIGTERM, then waits (up to 20 s) for a clean exit.
pub fn sigterm(d: Daemon) {
    let mut d = d;
    d.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            assert!(status.success(), "sigild exited with {status} after SIGTERM");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sigild did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A frontend's factor client and an engine's approval client of `url`.
pub async fn clients(
    url: &str,
) -> (
    FactorServiceClient<tonic::transport::Channel>,
    ApprovalServiceClient<tonic::transport::Channel>,
) {
    let d = certs_dir();
    let f = connect_as(url, &d, "frontend").await.unwrap();
    let e = connect_as(url, &d, "withdrawal-engine").await.unwrap();
    (FactorServiceClient::new(f), ApprovalServiceClient::new(e))
}

/// Health SERVING and a real RPC answered, over fresh mTLS connections.
pub async fn wait_ready(url: &str) {
    let ch = connect_as(url, &certs_dir(), "frontend").await.unwrap();
    let st = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    FactorServiceClient::new(ch)
        .list_factors(pb::ListFactorsRequest {
            user_id: "crash-nobody".into(),
        })
        .await
        .unwrap();
}

/// The overall health status `url` reports now.
pub async fn health(url: &str) -> ServingStatus {
    let ch = connect_as(url, &certs_dir(), "frontend").await.unwrap();
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Polls health until it reports `want`; returns how long that took.
pub async fn wait_health(url: &str, want: ServingStatus, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if health(url).await == want {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "health did not turn {want:?} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the real `sigil audit verify --checkpoint`; returns (entries, checkpoints).
pub fn audit_verify(url: &str) -> (u64, u64) {
    let certs = certs_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args(["audit", "verify", "--checkpoint", "--server", url])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("admin.pem"))
        .arg("--key")
        .arg(certs.join("admin.key"))
        .env_remove("SIGIL_URL")
        .env_remove("SIGIL_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("audit log ok"),
        "sigil audit verify: {text}"
    );
    // "audit log ok: N entries, M signed checkpoint(s) verified with key K"
    let num = |after: &str| -> u64 {
        text.split(after)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("audit log ok:"), num("entries,"))
}
