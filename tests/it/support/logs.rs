//! Helpers of the log tests (retention, audit archives): entries and
//! events written in bulk straight into a test server's store, the
//! `sigil` CLI run against it, and refusals' reasons.
use std::collections::HashMap;

use sigil::audit::AuditEntry;
use sigil::events::{Event, EventKind};
use sigil::pb;
use sigil::store::Batch;
use tonic_types::StatusExt;

use crate::support::harness::*;

/// Appends `n` audit entries to the server's store in batches of 5,000
/// (a realistic size each: user, action, details), as if that many
/// decisions had been made.
pub async fn bulk_audit(s: &TestServer, n: u64) {
    let store = s.sigil().store().clone();
    let at = s.clock.now_secs();
    tokio::task::spawn_blocking(move || {
        for start in (0..n).step_by(5_000) {
            let mut b = Batch::new();
            for i in start..(start + 5_000).min(n) {
                AuditEntry::ok(at, "withdrawal-engine", &format!("user-{}", i % 997), "approval.issue")
                    .with("jti", format!("jti-{i:012}"))
                    .with("intent_sha256", "x3Qzq1cwP8yA2b0nW6dD0wJq1mK4tYbH9mS7rN2pL5c")
                    .with("amr", "otp")
                    .append_to(&mut b)
                    .unwrap();
            }
            store.commit(&b).expect("bulk commit");
        }
    })
    .await
    .unwrap();
}

/// Appends `n` events (as of the test clock now) to the server's store.
pub async fn bulk_events(s: &TestServer, n: u64) {
    let store = s.sigil().store().clone();
    let at = s.clock.now_secs();
    tokio::task::spawn_blocking(move || {
        let mut b = Batch::new();
        for i in 0..n {
            Event::new(EventKind::ApprovalIssued, &format!("user-{i}"), at, None)
                .with("jti", format!("jti-{i}"))
                .append_to(&mut b)
                .unwrap();
        }
        store.commit(&b).expect("bulk commit");
    })
    .await
    .unwrap();
}

/// Runs the real `sigil` against the test server with the admin
/// certificate; answers success and everything it printed.
pub fn cli(s: &TestServer, args: &[&str]) -> (bool, String) {
    let d = certs_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args(args)
        .args(["--server", &s.url])
        .arg("--ca")
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join("admin.pem"))
        .arg("--key")
        .arg(d.join("admin.key"))
        .env_remove("SIGIL_URL")
        .env_remove("SIGIL_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A refusal's `ErrorInfo` reason and metadata.
pub fn reason(st: &tonic::Status) -> (String, HashMap<String, String>) {
    let info = st
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {st:?}"));
    (info.reason, info.metadata)
}

/// The first item of an event stream from `after`: an event, or the
/// refusal that ended it.
pub async fn first_event(s: &TestServer, after: u64) -> Result<pb::Event, tonic::Status> {
    let mut c = s.events("frontend").await;
    let mut stream = c
        .watch_events(pb::WatchEventsRequest { after_cursor: after })
        .await?
        .into_inner();
    match tokio::time::timeout(std::time::Duration::from_secs(5), stream.message()).await {
        Ok(Ok(Some(e))) => Ok(e),
        Ok(Ok(None)) => panic!("the stream ended without an event"),
        Ok(Err(st)) => Err(st),
        Err(_) => panic!("no event within 5 s after cursor {after}"),
    }
}

/// Acknowledges `cursor` for `consumer`; answers the last cursor pruned.
pub async fn ack(s: &TestServer, consumer: &str, cursor: u64) -> Result<u64, tonic::Status> {
    s.events("frontend")
        .await
        .ack_events(pb::AckEventsRequest {
            consumer: consumer.into(),
            cursor,
        })
        .await
        .map(|r| r.into_inner().pruned_through)
}

/// Runs the sweep once, off the async workers.
pub async fn sweep(s: &TestServer) {
    let sg = s.sigil().clone();
    tokio::task::spawn_blocking(move || sg.sweep()).await.unwrap().unwrap();
}

/// The audit entries of the live log with this action.
pub fn audited(s: &TestServer, action: &str) -> Vec<AuditEntry> {
    s.sigil()
        .ops()
        .audit_entries(0, 1_000_000)
        .unwrap()
        .iter()
        .map(|e| AuditEntry::decode(&e.value).unwrap())
        .filter(|e| e.action == action)
        .collect()
}
