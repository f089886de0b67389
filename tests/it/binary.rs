//! The real binaries: `sigil hsm init` creates a token in a temp dir,
//! `sigild` serves over mTLS, stops cleanly on SIGTERM and, restarted,
//! still has every factor, used step and redeemed approval.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sigil::client::connect_as;
use sigil::factor::totp;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic::Code;

use crate::harness::*;

struct Daemon {
    child: Child,
    url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failing test must not leave a daemon behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envs(cmd: &mut Command, dir: &Path) {
    let certs = certs_dir();
    cmd.current_dir(dir)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .env("SIGIL_HSM_PIN", "bin-test-pin-1")
        .env("SIGIL_HSM_SO_PIN", "bin-test-so-pin-1")
        .env("SIGIL_STORE_PATH", dir.join("data/sled"))
        .env("SIGIL_TLS_CERT", certs.join("server.pem"))
        .env("SIGIL_TLS_KEY", certs.join("server.key"))
        .env("SIGIL_CLIENT_CA", certs.join("ca.pem"))
        .env("RUST_LOG", "warn")
        .env("SIGIL_CONFIG", dir.join("sigil.toml"));
}

fn start_daemon(dir: &Path) -> Daemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigild"));
    envs(&mut cmd, dir);
    let mut child = cmd
        .env("SIGIL_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("listening on https://127.0.0.1:"),
        "sigild said: {line:?}"
    );
    Daemon {
        child,
        url: format!("https://127.0.0.1:{port}"),
    }
}

fn sigterm(d: Daemon) {
    let mut d = d;
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(d.child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
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

async fn clients(
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

fn real_step() -> u64 {
    totp::step_at(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigild_binary_full_flow_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    // This test is about the binaries and persistence: withdrawals without
    // the whitelist and the security-change lock (tested elsewhere).
    std::fs::write(
        dir.path().join("sigil.toml"),
        "version = 1\n[protection]\nrequire_whitelisted_address = false\nsecurity_change_lock_seconds = 0\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
    sigil_hsm::write_softhsm_conf(&dir.path().join("softhsm2.conf"), &dir.path().join("tokens")).unwrap();
    let mut init = Command::new(env!("CARGO_BIN_EXE_sigil"));
    envs(&mut init, dir.path());
    let out = init.args(["hsm", "init"]).output().unwrap();
    assert!(
        out.status.success(),
        "sigil hsm init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("created token") && text.contains("approval key") && text.contains("secrets key"),
        "{text}"
    );
    assert!(!text.contains("bin-test-pin-1"), "the PIN is never printed");

    let d = start_daemon(dir.path());
    let (mut f, mut a) = clients(&d.url).await;
    let e = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "zoe".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
    let s0 = real_step();
    f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
        user_id: "zoe".into(),
        factor_id: e.factor_id.clone(),
        code: totp::code_at_step(&seed, s0),
    })
    .await
    .unwrap();
    let intent = withdrawal("zoe", "wd-bin-1");
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let code = totp::code_at_step(&seed, s0 + 1);
    let done = a
        .complete_approval(totp_proof(&b.challenge_id, "zoe", &code, ""))
        .await
        .unwrap()
        .into_inner();
    a.redeem_approval(pb::RedeemApprovalRequest {
        approval: done.approval.clone(),
        expected_intent: Some(intent),
    })
    .await
    .unwrap();
    drop((f, a));
    sigterm(d);

    let d = start_daemon(dir.path());
    let (mut f, mut a) = clients(&d.url).await;
    let list = f
        .list_factors(pb::ListFactorsRequest { user_id: "zoe".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.factors.len(), 1);
    assert_eq!(list.factors[0].state, pb::FactorState::Active as i32);
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("zoe", "wd-bin-2")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let r = a.complete_approval(totp_proof(&b.challenge_id, "zoe", &code, "")).await;
    assert_status(r, Code::PermissionDenied, "not accepted");
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&done.approval),
            approval: done.approval,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "already redeemed");
    drop((f, a));
    sigterm(d);
}
