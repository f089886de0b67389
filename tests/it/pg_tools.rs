//! The operator tools on PostgreSQL, through the real binaries: `sigil
//! migrate` from the embedded store, and backup and restore (the restore
//! epoch holds).
use std::path::Path;
use std::process::{Command, Output};

use sigil::client::connect_as;
use sigil::pb;
use sigil::pb::admin_service_client::AdminServiceClient;
use tonic_types::StatusExt;

use crate::support::daemon::*;
use crate::support::harness::*;
use crate::support::pg;

/// Runs the real `sigil` in `dir`'s environment with the database `dsn`.
fn cli(dir: &Path, dsn: &str, args: &[&str]) -> (Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigil"));
    daemon_env(&mut cmd, dir, "warn");
    let out = cmd.env("SIGIL_PG_DSN", dsn).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

/// Enrolls `user` (confirmed with the previous step) and approves a
/// withdrawal with the current step's code; returns the approval.
async fn enroll_and_approve(url: &str, user: &str, wid: &str) -> (String, Vec<u8>, u64) {
    let (seed, step) = pg::enroll(url, user).await;
    let ch = pg::begin_withdrawal(url, user, wid).await;
    let token = pg::engine(url)
        .await
        .complete_approval(totp_proof(&ch, user, &pg::code(&seed, step), ""))
        .await
        .unwrap()
        .into_inner()
        .approval;
    (token, seed, step)
}

fn redeem(token: &str, key: &str) -> pb::RedeemApprovalRequest {
    pb::RedeemApprovalRequest {
        approval: token.into(),
        expected_intent: expected_of(token),
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_copies_the_embedded_store_into_postgres_and_refuses_a_used_target() {
    let Some(dsn) = pg::pg_database("sigil_m") else { return };
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), PROTECTIONS_OFF);
    let d = start_daemon(dir.path(), "warn");
    wait_ready(&d.url).await;
    let (token, _, _) = enroll_and_approve(&d.url, "mia", "wd-1").await;
    let (entries_before, _) = audit_verify(&d.url);
    sigterm(d);

    let sled = dir.path().join("data/sled");
    let from = format!("sled:{}", sled.display());
    let (out, text) = cli(dir.path(), &dsn, &["migrate", "--from", &from, "--to", "postgres"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("one unbroken chain"), "{text}");
    // A second run finds the target in use and writes nothing.
    let (out, text) = cli(dir.path(), &dsn, &["migrate", "--from", &from, "--to", "postgres"]);
    assert!(!out.status.success());
    assert!(text.contains("already holds Sigil records"), "{text}");
    // Bad arguments are refused plainly.
    let (out, text) = cli(dir.path(), &dsn, &["migrate", "--from", "mysql:x", "--to", "postgres"]);
    assert!(!out.status.success() && text.contains("sled:PATH"), "{text}");

    // sigild on PostgreSQL carries on where the embedded store stopped.
    std::fs::write(dir.path().join("sigil.toml"), pg::PG_TOML).unwrap();
    let d = start_daemon_with(dir.path(), "warn", &[("SIGIL_PG_DSN", dsn.as_str())]);
    wait_ready(&d.url).await;
    let (_, mut e) = clients(&d.url).await;
    e.redeem_approval(redeem(&token, "engine-1"))
        .await
        .expect("redeem after migration");
    let (entries_after, _) = audit_verify(&d.url);
    assert!(entries_after > entries_before, "{entries_after} <= {entries_before}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_and_restore_on_postgres_keep_the_restore_epoch() {
    let Some(dsn) = pg::pg_database("sigil_m") else { return };
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), pg::PG_TOML);
    let env = [("SIGIL_PG_DSN", dsn.as_str())];
    let d = start_daemon_with(dir.path(), "warn", &env);
    wait_ready(&d.url).await;
    let (before, _, _) = enroll_and_approve(&d.url, "bea", "wd-1").await;
    let mut admin = AdminServiceClient::new(connect_as(&d.url, &certs_dir(), "admin").await.unwrap());
    let mut stream = admin.backup(pb::BackupRequest {}).await.unwrap().into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        data.extend_from_slice(&chunk.data);
    }
    let file = dir.path().join("sigil.backup");
    std::fs::write(&file, &data).unwrap();
    sigterm(d);

    let (out, text) = cli(dir.path(), &dsn, &["restore", file.to_str().unwrap(), "--yes"]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("previous records are kept in table sigil_records_pre_restore_"),
        "{text}"
    );

    let d = start_daemon_with(dir.path(), "warn", &env);
    wait_ready(&d.url).await;
    let (_, mut e) = clients(&d.url).await;
    // Issued before the restore: refused, whatever the backup says.
    let st = e.redeem_approval(redeem(&before, "engine-1")).await.unwrap_err();
    let info = st.get_error_details().error_info().unwrap().reason.clone();
    assert_eq!(info, "SUPERSEDED", "{st:?}");
    audit_verify(&d.url);
}

/// Start-up refuses, with a clear message and writing nothing, a database
/// of another deployment (created with another HSM), a connection string
/// that is not one, and a server that does not answer; the password in the
/// connection string never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_refuses_another_deployments_database_and_bad_connection_strings() {
    let Some(dsn) = pg::pg_database("sigil_m") else { return };
    let first = tempfile::tempdir().unwrap();
    prepare(first.path(), pg::PG_TOML);
    let d = start_daemon_with(first.path(), "warn", &[("SIGIL_PG_DSN", dsn.as_str())]);
    wait_ready(&d.url).await;
    sigterm(d);
    let count = || -> i64 {
        tokio::task::block_in_place(|| {
            let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
            c.query_one(
                "SELECT (count(*) + coalesce(sum(version), 0))::bigint FROM sigil_records",
                &[],
            )
            .unwrap()
            .get(0)
        })
    };
    let before = count();

    // Another deployment: its own token (another audit key), same database.
    let other = tempfile::tempdir().unwrap();
    prepare(other.path(), pg::PG_TOML);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (env_dsn, needle) in [
        (dsn.clone(), "belongs to another deployment"),
        (
            "not a connection string password=hunter2-secret".to_string(),
            "connection string is not valid",
        ),
        (
            format!("host=127.0.0.1 port={closed} user=sigil password=hunter2-secret connect_timeout=2"),
            "no database connection",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigild"));
        daemon_env(&mut cmd, other.path(), "warn");
        let out = cmd.env("SIGIL_PG_DSN", &env_dsn).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "sigild started: {text}");
        assert!(text.contains(needle), "expected '{needle}': {text}");
        assert!(!text.contains("hunter2"), "the password leaked: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
    assert_eq!(count(), before, "a refused start-up wrote to the database");
}

/// A store whose logs were pruned migrates as it is: events past
/// retention stay pruned (a cursor behind them is refused on PostgreSQL
/// too), the archived audit log's anchor comes along, and `sigil audit
/// verify` on the target checks the live log from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_carries_pruned_logs_and_the_audit_anchor() {
    let Some(dsn) = pg::pg_database("sigil_m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let retention = "sweep_interval_seconds = 1\n[retention]\nevents_min_age = 0\n";
    prepare(dir.path(), &format!("{PROTECTIONS_OFF}{retention}"));
    let d = start_daemon(dir.path(), "warn");
    wait_ready(&d.url).await;
    enroll_and_approve(&d.url, "pia", "wd-1").await;
    let channel = connect_as(&d.url, &certs_dir(), "admin").await.unwrap();
    let mut events = pb::event_service_client::EventServiceClient::new(channel);
    let mut stream = events
        .watch_events(pb::WatchEventsRequest { after_cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut last = 0;
    while let Ok(Ok(Some(e))) = tokio::time::timeout(std::time::Duration::from_millis(700), stream.message()).await {
        last = e.cursor;
    }
    assert!(last > 0);
    drop(stream);
    let ack = pb::AckEventsRequest {
        consumer: "mailer".into(),
        cursor: last,
    };
    events.ack_events(ack.clone()).await.unwrap();
    // The sweep (every second) prunes what the only consumer handled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while events
        .ack_events(ack.clone())
        .await
        .unwrap()
        .into_inner()
        .pruned_through
        < last
    {
        assert!(std::time::Instant::now() < deadline, "events were not pruned");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let archive = dir.path().join("audit-archive.jsonl");
    let with_conn = |args: &[&str], url: &str| -> Vec<String> {
        let certs = certs_dir();
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        v.extend(["--server".to_string(), url.to_string()]);
        for (flag, file) in [("--ca", "ca.pem"), ("--cert", "admin.pem"), ("--key", "admin.key")] {
            v.extend([flag.to_string(), certs.join(file).display().to_string()]);
        }
        v
    };
    let args = with_conn(
        &["audit", "archive", "--out", archive.to_str().unwrap(), "--keep", "2"],
        &d.url,
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, text) = cli(dir.path(), &dsn, &args);
    assert!(out.status.success(), "{text}");
    sigterm(d);

    let sled = dir.path().join("data/sled");
    let from = format!("sled:{}", sled.display());
    let (out, text) = cli(dir.path(), &dsn, &["migrate", "--from", &from, "--to", "postgres"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("one unbroken chain"), "{text}");

    std::fs::write(dir.path().join("sigil.toml"), pg::PG_TOML).unwrap();
    let d = start_daemon_with(dir.path(), "warn", &[("SIGIL_PG_DSN", dsn.as_str())]);
    wait_ready(&d.url).await;
    let args = with_conn(&["audit", "verify", "--archive", archive.to_str().unwrap()], &d.url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, text) = cli(dir.path(), &dsn, &args);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("audit log ok"), "{text}");
    let (entries, _) = audit_verify(&d.url);
    assert!(entries > 0);
    let channel = connect_as(&d.url, &certs_dir(), "admin").await.unwrap();
    let st = pb::event_service_client::EventServiceClient::new(channel)
        .watch_events(pb::WatchEventsRequest { after_cursor: 0 })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::OutOfRange, "{st:?}");
    assert_eq!(st.get_error_details().error_info().unwrap().reason, "PRUNED");
}
