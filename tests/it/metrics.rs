//! The Prometheus endpoint of a real `sigild` (`[metrics] listen`): every
//! documented series is there, and a flow of approvals, refusals and a
//! lockout moves the counts it should.
use crate::support::calls::raw_call;
use crate::support::daemon::*;
use crate::support::harness::*;
use crate::support::observe::*;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_calls_approvals_refusals_hsm_and_store_work() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    prepare(
        dir.path(),
        &format!("{PROTECTIONS_OFF}[metrics]\nlisten = \"{metrics}\"\n"),
    );
    let d = start_daemon(dir.path(), "warn");
    wait_ready(&d.url).await;

    let (status, _, body) = http_get(metrics, "/");
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = http_get(metrics, "/metrics/extra");
    assert_eq!(status, 404);

    let before = Scrape::take(metrics);
    assert_eq!(
        before.value("sigil_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert_eq!(before.value("sigil_ready", &[]), 1.0);
    assert_eq!(before.value("sigil_hsm_up", &[]), 1.0);
    assert!(before.has("sigil_rpc_in_flight"));

    full_flow(&d.url, "metrics").await;
    // A method the server does not serve is counted under "unknown".
    let ch = sigil::client::connect_as(&d.url, &certs_dir(), "frontend")
        .await
        .unwrap();
    let st = raw_call(ch, "/sigil.v1.ApprovalService/NoSuchMethod", Vec::new()).await;
    assert_eq!(st.code(), tonic::Code::Unimplemented);

    let after = Scrape::take(metrics);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        let (b, a) = (before.value(name, labels), after.value(name, labels));
        assert!(a > b, "{name}{labels:?} did not increase: {b} -> {a}");
        a - b
    };
    let approval = [("service", "sigil.v1.ApprovalService")];
    let complete = |code| {
        [
            ("service", "sigil.v1.ApprovalService"),
            ("method", "CompleteApproval"),
            ("code", code),
        ]
    };
    assert_eq!(moved("sigil_rpc_requests_total", &complete("OK")), 3.0);
    moved("sigil_rpc_requests_total", &complete("PERMISSION_DENIED"));
    moved("sigil_rpc_requests_total", &complete("RESOURCE_EXHAUSTED"));
    assert_eq!(moved("sigil_rpc_duration_seconds_count", &complete("OK")), 3.0);
    moved(
        "sigil_rpc_duration_seconds_bucket",
        &[complete("OK").as_slice(), &[("le", "+Inf")]].concat(),
    );
    moved(
        "sigil_rpc_requests_total",
        &[
            ("service", "sigil.v1.FactorService"),
            ("method", "BeginTotpEnrollment"),
            ("code", "OK"),
        ],
    );
    moved(
        "sigil_rpc_requests_total",
        &[("method", "RedeemApproval"), ("code", "FAILED_PRECONDITION")],
    );
    moved(
        "sigil_rpc_requests_total",
        &[("service", "unknown"), ("method", "unknown"), ("code", "UNIMPLEMENTED")],
    );
    moved(
        "sigil_rpc_requests_total",
        &[("method", "RotateApprovalKey"), ("code", "OK")],
    );
    assert!(after.value("sigil_rpc_requests_total", &approval) > 10.0);

    assert_eq!(moved("sigil_approvals_issued_total", &[("kind", "totp")]), 1.0);
    assert_eq!(moved("sigil_approvals_issued_total", &[("kind", "yubikey_hmac")]), 1.0);
    assert_eq!(moved("sigil_approvals_issued_total", &[("kind", "yubikey_otp")]), 1.0);
    assert_eq!(moved("sigil_approvals_redeemed_total", &[("replayed", "false")]), 3.0);
    moved(
        "sigil_approval_refusals_total",
        &[("stage", "complete"), ("reason", "FACTOR_REJECTED")],
    );
    moved(
        "sigil_approval_refusals_total",
        &[("stage", "complete"), ("reason", "FACTOR_LOCKED")],
    );
    assert_eq!(
        moved(
            "sigil_approval_refusals_total",
            &[("stage", "redeem"), ("reason", "APPROVAL_ALREADY_REDEEMED")],
        ),
        1.0
    );
    assert_eq!(moved("sigil_lockouts_total", &[("kind", "totp")]), 1.0);

    assert_eq!(
        moved("sigil_hsm_operation_duration_seconds_count", &[("op", "sign_approval")]),
        3.0
    );
    moved("sigil_hsm_operation_duration_seconds_count", &[("op", "encrypt")]);
    moved("sigil_hsm_operation_duration_seconds_count", &[("op", "decrypt")]);
    moved("sigil_store_commit_duration_seconds_count", &[("backend", "sled")]);
    moved("sigil_store_sync_duration_seconds_count", &[("backend", "sled")]);

    // The pool: every session exists, none leaked, none busy between calls.
    let size = after.value("sigil_hsm_pool_size", &[]);
    assert_eq!(size, 4.0);
    assert_eq!(
        after.value("sigil_hsm_sessions", &[("state", "idle")])
            + after.value("sigil_hsm_sessions", &[("state", "in_use")]),
        size
    );
    assert_eq!(after.value("sigil_hsm_errors_total", &[]), 0.0);
    assert_eq!(after.value("sigil_hsm_up", &[]), 1.0);
    // Every call has ended.
    assert_eq!(after.value("sigil_rpc_in_flight", &[]), 0.0);
    sigterm(d);
}
