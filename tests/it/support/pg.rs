//! Helpers of the tests that need PostgreSQL (`SIGIL_TEST_PG_DSN`, set by
//! `make test`): a database of their own, and clients of real replicas.
use sigil::client::connect_as;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::support::daemon::real_step;
use crate::support::harness::{certs_dir, withdrawal};

/// The test server's connection string, or None: the test is skipped with
/// a note, unless `SIGIL_REQUIRE_PG=1` (then a missing server fails it).
pub fn test_server() -> Option<String> {
    match std::env::var("SIGIL_TEST_PG_DSN") {
        Ok(dsn) => Some(dsn),
        Err(_) => {
            assert!(
                std::env::var("SIGIL_REQUIRE_PG").map_or(true, |v| v != "1"),
                "SIGIL_REQUIRE_PG=1 but SIGIL_TEST_PG_DSN is not set"
            );
            eprintln!("note: SIGIL_TEST_PG_DSN not set; PostgreSQL test skipped (make test sets it)");
            None
        }
    }
}

/// A new, empty database on the test server (named `<prefix>_<pid>_<n>`)
/// and its connection string, or None (skipped). Call from a
/// multi-threaded test runtime: the database client blocks.
pub fn pg_database(prefix: &str) -> Option<String> {
    let admin = test_server()?;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    tokio::task::block_in_place(|| {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to the test server");
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    });
    Some(format!("{admin} dbname={name}"))
}

/// `sigil.toml` for replicas on PostgreSQL, protections off.
pub const PG_TOML: &str = "version = 1\n[protection]\nrequire_whitelisted_address = false\nsecurity_change_lock_seconds = 0\nsweep_interval_seconds = 1\n[store]\nbackend = \"postgres\"\n";

/// The TOTP code of `seed` at `step`.
pub fn code(seed: &[u8], step: u64) -> String {
    sigil::factor::totp::code_at_step(seed, step)
}

/// An engine's approval client of `url`.
pub async fn engine(url: &str) -> ApprovalServiceClient<Channel> {
    ApprovalServiceClient::new(connect_as(url, &certs_dir(), "withdrawal-engine").await.unwrap())
}

/// A frontend's factor client of `url`.
pub async fn frontend(url: &str) -> FactorServiceClient<Channel> {
    FactorServiceClient::new(connect_as(url, &certs_dir(), "frontend").await.unwrap())
}

/// Enrolls TOTP for `user` on `url`, confirmed with the previous step's
/// code (inside the ±1 window; tried again across a step boundary), so
/// the returned step and the next are unused. Returns (seed, step).
pub async fn enroll(url: &str, user: &str) -> (Vec<u8>, u64) {
    let mut f = frontend(url).await;
    let e = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
    for _ in 0..3 {
        let step = real_step();
        let r = f
            .confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
                user_id: user.into(),
                factor_id: e.factor_id.clone(),
                code: code(&seed, step - 1),
            })
            .await;
        match r {
            Ok(_) => return (seed, step),
            Err(st) if real_step() != step => eprintln!("{user}: confirmation across a step boundary ({st:?}); again"),
            Err(st) => panic!("{user}: confirmation refused: {st:?}"),
        }
    }
    panic!("{user}: never confirmed");
}

/// BeginApproval of a withdrawal by `user` on `url`; the challenge id.
pub async fn begin_withdrawal(url: &str, user: &str, wid: &str) -> String {
    engine(url)
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(user, wid)),
            device: None,
        })
        .await
        .unwrap()
        .into_inner()
        .challenge_id
}

/// The `ErrorInfo.reason` of a refusal ("" without one).
pub fn reason(st: &tonic::Status) -> String {
    st.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}
