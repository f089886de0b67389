//! Prometheus metrics: one process-wide registry, written to by every
//! layer, read by the `/metrics` endpoint (`server`) when `[metrics]
//! listen` is set.
//!
//! Imports nothing of Sigil's, so the lowest layers (the store, the signer)
//! can record into it. Every label takes its values from a small closed set
//! (method names the server knows, reason and kind names, operation
//! names), never from request input, so no caller can grow the number of
//! series. The metrics are listed with their meaning in README.md
//! ("Metrics").
//!
//! Recording never fails and never blocks on I/O: a metric that cannot be
//! recorded (a label count mistake) is skipped.
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Deserialize;

/// `[metrics]`: the Prometheus endpoint. Off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics` (plain HTTP, no TLS, no
    /// authentication: bind it to loopback or an internal interface).
    /// None: no endpoint. `SIGIL_METRICS_LISTEN` (empty: none).
    pub listen: Option<SocketAddr>,
}

/// Latency buckets, seconds: 100 µs to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Metrics {
    registry: Registry,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    rpc_in_flight: IntGauge,
    approvals_issued: IntCounterVec,
    approvals_redeemed: IntCounterVec,
    approval_refusals: IntCounterVec,
    hsm_duration: HistogramVec,
    hsm_errors: IntCounterVec,
    hsm_up: IntGauge,
    hsm_sessions: IntGaugeVec,
    hsm_pool_size: IntGauge,
    store_commit: HistogramVec,
    store_sync: HistogramVec,
    store_checkpoint: HistogramVec,
    lockouts: IntCounterVec,
    ready: IntGauge,
}

/// Builds and registers every metric. Fails only on a programming error
/// (an invalid or duplicate name), which the unit test below catches.
fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        registry.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let histogram = |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(SECONDS.to_vec()), labels)?;
        registry.register(Box::new(h.clone()))?;
        Ok(h)
    };
    let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
        let g = IntGauge::new(name, help)?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let hsm_sessions = IntGaugeVec::new(
        Opts::new(
            "sigil_hsm_sessions",
            "PKCS#11 sessions of the HSM pool, by state (idle, in_use), at scrape time",
        ),
        &["state"],
    )?;
    registry.register(Box::new(hsm_sessions.clone()))?;
    let build_info = IntGauge::with_opts(
        Opts::new("sigil_build_info", "Always 1; the version of this build in its label")
            .const_label("version", env!("CARGO_PKG_VERSION")),
    )?;
    build_info.set(1);
    registry.register(Box::new(build_info.clone()))?;
    let hsm_up = gauge(
        "sigil_hsm_up",
        "1 while the HSM answers with every key serving needs; 0 during an outage (also after a failed operation, until the next readiness check)",
    )?;
    hsm_up.set(1);
    Ok(Metrics {
        rpc_requests: counter(
            "sigil_rpc_requests_total",
            "gRPC calls answered, by service, method and status code",
            &["service", "method", "code"],
        )?,
        rpc_duration: histogram(
            "sigil_rpc_duration_seconds",
            "gRPC call latency, from the request's arrival to the end of the answer, by service, method and status code",
            &["service", "method", "code"],
        )?,
        rpc_in_flight: gauge("sigil_rpc_in_flight", "gRPC calls being answered now")?,
        approvals_issued: counter(
            "sigil_approvals_issued_total",
            "Approvals issued (CompleteApproval or Approve answered OK), by the kind of factor that proved them",
            &["kind"],
        )?,
        approvals_redeemed: counter(
            "sigil_approvals_redeemed_total",
            "Approvals redeemed (RedeemApproval answered OK), by whether the call repeated an earlier redemption",
            &["replayed"],
        )?,
        approval_refusals: counter(
            "sigil_approval_refusals_total",
            "Approval calls refused, by stage (begin, complete, approve, redeem) and reason (ErrorInfo.reason)",
            &["stage", "reason"],
        )?,
        hsm_duration: histogram(
            "sigil_hsm_operation_duration_seconds",
            "HSM operation latency (session checkout included), by operation",
            &["op"],
        )?,
        hsm_errors: counter("sigil_hsm_errors_total", "HSM operations that failed, by operation", &["op"])?,
        hsm_up,
        hsm_sessions,
        hsm_pool_size: gauge("sigil_hsm_pool_size", "PKCS#11 sessions the HSM pool may hold")?,
        store_commit: histogram(
            "sigil_store_commit_duration_seconds",
            "Time for the store to check and apply one batch, by backend (sled: without the log sync, see \
             sigil_store_sync_duration_seconds; postgres: the whole transaction with its COMMIT and retries)",
            &["backend"],
        )?,
        store_sync: histogram(
            "sigil_store_sync_duration_seconds",
            "Time to make writes durable, by backend (sled: one write-ahead-log write and fsync, shared by \
             every commit waiting for it; postgres: the COMMIT round trip)",
            &["backend"],
        )?,
        store_checkpoint: histogram(
            "sigil_store_checkpoint_duration_seconds",
            "Time of each phase of the embedded store's checkpoints (write-ahead log into sled), by phase: \
             apply (records into sled's buffers), barrier (sled's flush and the fsync of its files), marker \
             (recording the position and deleting the covered log files)",
            &["phase"],
        )?,
        lockouts: counter(
            "sigil_lockouts_total",
            "Lockouts started after repeated failures, by factor kind (unknown_id: attempts naming credentials \
             the user does not have)",
            &["kind"],
        )?,
        ready: gauge(
            "sigil_ready",
            "1 while the gRPC server serves, 0 before it starts and once it shuts down",
        )?,
        registry,
    })
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "metrics could not be defined; none are recorded");
        None
    }
});

fn inc(c: &IntCounterVec, labels: &[&str]) {
    if let Ok(m) = c.get_metric_with_label_values(labels) {
        m.inc();
    }
}

fn observe(h: &HistogramVec, labels: &[&str], d: Duration) {
    if let Ok(m) = h.get_metric_with_label_values(labels) {
        m.observe(d.as_secs_f64());
    }
}

/// A gRPC call answered with `code` (its canonical name, e.g. `OK`,
/// `INVALID_ARGUMENT`) after `took`.
pub fn rpc_answered(service: &str, method: &str, code: &str, took: Duration) {
    if let Some(m) = &*METRICS {
        inc(&m.rpc_requests, &[service, method, code]);
        observe(&m.rpc_duration, &[service, method, code], took);
    }
}

/// A gRPC call began (+1) or ended (-1).
pub fn rpc_in_flight(delta: i64) {
    if let Some(m) = &*METRICS {
        m.rpc_in_flight.add(delta);
    }
}

/// An approval was issued, proved by a factor of `kind`.
pub fn approval_issued(kind: &str) {
    if let Some(m) = &*METRICS {
        inc(&m.approvals_issued, &[kind]);
    }
}

/// An approval was redeemed (`replayed`: the call repeated an earlier
/// redemption with the same idempotency key).
pub fn approval_redeemed(replayed: bool) {
    if let Some(m) = &*METRICS {
        inc(&m.approvals_redeemed, &[if replayed { "true" } else { "false" }]);
    }
}

/// An approval call (`stage`: begin, complete, approve, redeem) was refused for
/// `reason` (the `ErrorInfo.reason` name).
pub fn approval_refused(stage: &str, reason: &str) {
    if let Some(m) = &*METRICS {
        inc(&m.approval_refusals, &[stage, reason]);
    }
}

/// An HSM operation `op` ended after `took`, as `outcome` says.
pub fn hsm_operation(op: &str, took: Duration, outcome: HsmOutcome) {
    let Some(m) = &*METRICS else { return };
    observe(&m.hsm_duration, &[op], took);
    match outcome {
        HsmOutcome::Ok => m.hsm_up.set(1),
        HsmOutcome::Refused => inc(&m.hsm_errors, &[op]),
        HsmOutcome::Unavailable => {
            inc(&m.hsm_errors, &[op]);
            m.hsm_up.set(0);
        }
    }
}

/// How an HSM operation ended, for [`hsm_operation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsmOutcome {
    /// It succeeded.
    Ok,
    /// The HSM answered and refused it (no such key, a bad tag, ...).
    Refused,
    /// The HSM could not serve it (module, session, token, timeout).
    Unavailable,
}

/// The HSM pool, read just before a scrape: sessions idle and in use, and
/// the pool's size.
pub fn set_hsm_sessions(idle: usize, in_use: usize, size: usize) {
    let Some(m) = &*METRICS else { return };
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    if let Ok(g) = m.hsm_sessions.get_metric_with_label_values(&["idle"]) {
        g.set(as_i64(idle));
    }
    if let Ok(g) = m.hsm_sessions.get_metric_with_label_values(&["in_use"]) {
        g.set(as_i64(in_use));
    }
    m.hsm_pool_size.set(as_i64(size));
}

/// The store (`backend`: sled, postgres) took one batch in `took`.
pub fn store_commit(backend: &str, took: Duration) {
    if let Some(m) = &*METRICS {
        observe(&m.store_commit, &[backend], took);
    }
}

/// The store (`backend`) made writes durable in `took`.
pub fn store_sync(backend: &str, took: Duration) {
    if let Some(m) = &*METRICS {
        observe(&m.store_sync, &[backend], took);
    }
}

/// One phase (`apply`, `barrier`, `marker`) of a checkpoint of the
/// embedded store took `took`.
pub fn store_checkpoint(phase: &str, took: Duration) {
    if let Some(m) = &*METRICS {
        observe(&m.store_checkpoint, &[phase], took);
    }
}

/// A lockout started on a factor of `kind` (or `unknown_id`).
pub fn lockout_started(kind: &str) {
    if let Some(m) = &*METRICS {
        inc(&m.lockouts, &[kind]);
    }
}

/// Whether the HSM handle serves (see `sigil_hsm::Hsm::health`).
pub fn set_hsm_up(up: bool) {
    if let Some(m) = &*METRICS {
        m.hsm_up.set(i64::from(up));
    }
}

/// The gRPC server serves (true) or not: shutting down, or not ready
/// (the HSM or the store cannot serve).
pub fn set_ready(ready: bool) {
    if let Some(m) = &*METRICS {
        m.ready.set(i64::from(ready));
    }
}

/// Every metric in the Prometheus text exposition format (0.0.4).
pub fn render() -> String {
    let Some(m) = &*METRICS else {
        return String::new();
    };
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "could not encode the metrics");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_and_rendered() {
        assert!(build().is_ok(), "a metric definition is refused");
        rpc_answered(
            "sigil.v1.ApprovalService",
            "BeginApproval",
            "OK",
            Duration::from_millis(3),
        );
        approval_issued("totp");
        approval_redeemed(false);
        approval_refused("complete", "FACTOR_REJECTED");
        hsm_operation("sign_approval", Duration::from_micros(800), HsmOutcome::Ok);
        hsm_operation("decrypt", Duration::from_micros(800), HsmOutcome::Refused);
        set_hsm_sessions(3, 1, 4);
        store_commit("sled", Duration::from_micros(50));
        store_sync("sled", Duration::from_micros(900));
        store_checkpoint("barrier", Duration::from_millis(30));
        lockout_started("totp");
        set_ready(true);
        let text = render();
        for name in [
            "sigil_build_info{version=\"",
            "sigil_rpc_requests_total{code=\"OK\",method=\"BeginApproval\",service=\"sigil.v1.ApprovalService\"}",
            "sigil_rpc_duration_seconds_bucket{",
            "sigil_rpc_in_flight ",
            "sigil_approvals_issued_total{kind=\"totp\"}",
            "sigil_approvals_redeemed_total{replayed=\"false\"}",
            "sigil_approval_refusals_total{reason=\"FACTOR_REJECTED\",stage=\"complete\"}",
            "sigil_hsm_operation_duration_seconds_count{op=\"sign_approval\"}",
            "sigil_hsm_errors_total{op=\"decrypt\"}",
            "sigil_hsm_up 1",
            "sigil_hsm_sessions{state=\"idle\"}",
            "sigil_hsm_pool_size 4",
            "sigil_store_commit_duration_seconds_count{backend=\"sled\"}",
            "sigil_store_sync_duration_seconds_count{backend=\"sled\"}",
            "sigil_store_checkpoint_duration_seconds_count{phase=\"barrier\"}",
            "sigil_lockouts_total{kind=\"totp\"}",
            "sigil_ready 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
