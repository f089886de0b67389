//! Serving Sigil: mTLS listener, health, reflection, graceful shutdown,
//! and the client certificate deny-list guard in front of every service;
//! every call measured (`exporter`), and the `/metrics` endpoint.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::account::AccountApi;
use crate::api::admin::AdminApi;
use crate::api::auth::{leaf_facts, DenyListChecked, LeafFacts};
use crate::api::events::EventApi;
use crate::api::{ApprovalApi, FactorApi};
use crate::audit::AuditEntry;
use crate::config::ServerConfig;
use crate::core::Sigil;
use crate::denylist::{CertId, DenyListHandle, Match};
use crate::error::Error;
use crate::pb;

mod exporter;

pub use exporter::{serve_metrics, MetricsEndpoint};

/// Encoded file descriptor set of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sigil_descriptor");

/// Reads the server identity and client CA, for mutual TLS.
pub fn tls_config(cfg: &ServerConfig) -> Result<ServerTlsConfig, Error> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p)
            .map_err(|e| Error::Unavailable(format!("cannot read {what} {}: {e} (run `make certs`)", p.display())))
    };
    let cert = read(&cfg.cert, "server certificate")?;
    let key = read(&cfg.key, "server key")?;
    let ca = read(&cfg.client_ca, "client CA")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

/// A running server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    deny_list: Arc<DenyListHandle>,
}

impl Running {
    /// The client certificate deny-list this server enforces
    /// ([`DenyListHandle::reload`] re-reads its file).
    pub fn deny_list(&self) -> &Arc<DenyListHandle> {
        &self.deny_list
    }

    /// Waits until the server ends on its own (its shutdown signal fired).
    pub async fn stop_when_done(mut self) -> Result<(), Error> {
        let _keep = self.stop.take();
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Internal(format!("server ended with an error: {e}"))),
            Err(e) => Err(Error::Internal(format!("server task failed: {e}"))),
        }
    }

    /// Graceful stop: health goes NOT_SERVING, new connections are refused,
    /// in-flight calls finish, then the task ends.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Internal(format!("server ended with an error: {e}"))),
            Err(e) => Err(Error::Internal(format!("server task failed: {e}"))),
        }
    }
}

/// Starts serving on `listener` until [`Running::stop`] or `signal` fires,
/// enforcing the deny-list `[server] deny_list` names (read now: a
/// malformed file refuses the start).
pub async fn start(
    sigil: Arc<Sigil>,
    tls: ServerTlsConfig,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, Error> {
    let deny_list = Arc::new(DenyListHandle::from_config(&sigil.config().server)?);
    start_with_deny_list(sigil, deny_list, tls, listener, signal).await
}

/// [`start`] with a deny-list already loaded (`sigild` loads it before
/// opening the HSM, to fail fast, and reloads it on SIGHUP).
/// [`Sigil::reload_deny_list`] reaches the same list.
pub async fn start_with_deny_list(
    sigil: Arc<Sigil>,
    deny_list: Arc<DenyListHandle>,
    tls: ServerTlsConfig,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, Error> {
    sigil.set_deny_list(deny_list.clone());
    let guard = Guard {
        sigil: sigil.clone(),
        deny_list: deny_list.clone(),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener has no address: {e}")))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::approval_service_server::ApprovalServiceServer<ApprovalApi>>()
        .await;
    reporter
        .set_serving::<pb::factor_service_server::FactorServiceServer<FactorApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let closing = sigil.clone();
    let (sweep_stop_tx, sweep_stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweep_loop(sigil.clone(), sweep_stop_rx.clone()));
    let readiness = tokio::spawn(readiness_loop(sigil.clone(), reporter.clone(), sweep_stop_rx));
    let shutdown = async move {
        tokio::select! {
            _ = stop_rx => {},
            _ = signal => {},
        }
        tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
        crate::metrics::set_ready(false);
        let _ = sweep_stop_tx.send(true);
        if let Err(e) = readiness.await {
            tracing::error!(error = %e, "readiness checker failed");
        }
        reporter
            .set_not_serving::<pb::approval_service_server::ApprovalServiceServer<ApprovalApi>>()
            .await;
        reporter
            .set_not_serving::<pb::factor_service_server::FactorServiceServer<FactorApi>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        closing.begin_shutdown();
        if let Err(e) = sweeper.await {
            tracing::error!(error = %e, "background sweeper failed");
        }
    };
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| Error::Unavailable(format!("TLS configuration refused: {e}")))?
        .layer(exporter::RpcMetricsLayer::new(&[
            FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ]))
        .add_service(guard.wrap(health))
        .add_service(guard.wrap(reflection))
        .add_service(
            guard.wrap(pb::factor_service_server::FactorServiceServer::new(FactorApi::new(
                sigil.clone(),
            ))),
        )
        .add_service(guard.wrap(pb::approval_service_server::ApprovalServiceServer::new(
            ApprovalApi::new(sigil.clone()),
        )))
        .add_service(
            guard.wrap(pb::account_service_server::AccountServiceServer::new(AccountApi::new(
                sigil.clone(),
            ))),
        )
        .add_service(
            guard.wrap(pb::admin_service_server::AdminServiceServer::new(AdminApi::new(
                sigil.clone(),
            ))),
        )
        .add_service(guard.wrap(pb::staff_service_server::StaffServiceServer::new(
            crate::api::staff::StaffApi::new(sigil.clone()),
        )))
        .add_service(guard.wrap(pb::event_service_server::EventServiceServer::new(EventApi::new(sigil))));
    // serve_with_incoming ignores Server::tcp_nodelay: set TCP_NODELAY on each
    // accepted socket here, or small responses wait for the client's delayed
    // ACK (~40 ms per CompleteApproval).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
    crate::metrics::set_ready(true);
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        task,
        deny_list,
    })
}

/// The deny-list guard, wrapped around every service (health and
/// reflection too): each call's client leaf is matched against the list in
/// force when the call arrives. A denied call is answered
/// `UNAUTHENTICATED` here, with one `auth.denied` audit entry, and never
/// reaches the service; an admitted call carries [`DenyListChecked`], which
/// the role check requires.
#[derive(Clone)]
struct Guard {
    sigil: Arc<Sigil>,
    deny_list: Arc<DenyListHandle>,
}

impl Guard {
    fn wrap<S>(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }

    /// The refusal of a denied caller, after its audit entry is written
    /// (best effort: the refusal stands if the store cannot take it).
    async fn refuse(self, facts: Arc<LeafFacts>, id: CertId, matched: Match, rpc: String) -> http::Response<Body> {
        let serial = id.serial();
        let role = facts.role.map(|r| r.name()).unwrap_or("none");
        tracing::warn!(serial = %serial, role, rpc = %rpc, matched = matched.name(), "refused a client certificate on the deny-list");
        let message = format!("client certificate {serial} is on the deny-list; ask an operator for a new certificate");
        let sigil = self.sigil;
        let reason = message.clone();
        let audited = tokio::task::spawn_blocking(move || {
            let at = sigil.clock_now().unwrap_or_default();
            let actor = if role == "none" { "unknown" } else { role };
            let entry = AuditEntry::refused(at, actor, "", "auth.denied", &reason)
                .with("serial", serial)
                .with("spki_sha256", id.spki_sha256_hex())
                .with("role", role)
                .with("matched", matched.name())
                .with("rpc", crate::error::excerpt(&rpc));
            sigil.kernel().audit_refusal(entry, crate::store::Batch::default());
        })
        .await;
        if let Err(e) = audited {
            tracing::error!(error = %e, "could not audit a deny-list refusal");
        }
        crate::api::status::certificate_denied(message).into_http()
    }
}

/// A service behind the [`Guard`].
#[derive(Clone)]
struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type Refusal = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// The answer of a [`Guarded`] service: the service's own, or the refusal.
enum GuardedFuture<F> {
    Admitted(F),
    Refused(Refusal),
}

impl<F> Future for GuardedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            GuardedFuture::Admitted(f) => Pin::new(f).poll(cx),
            GuardedFuture::Refused(f) => f.as_mut().poll(cx),
        }
    }
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + Unpin + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = GuardedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(facts) = leaf_facts(req.extensions()) {
            if let Some(id) = facts.id.clone() {
                if let Some(matched) = self.guard.deny_list.current().matches(&id) {
                    let rpc = req.uri().path().to_string();
                    drop(req);
                    let refusal = self.guard.clone().refuse(facts, id, matched, rpc);
                    return GuardedFuture::Refused(Box::pin(async move { Ok(refusal.await) }));
                }
            }
        }
        req.extensions_mut().insert(DenyListChecked);
        // The clone that was made ready serves this call (tower's rule).
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        GuardedFuture::Admitted(ready.call(req))
    }
}

/// The background sweep ("sweeper"): address holds ending, audit
/// checkpoints. Runs every `protection.sweep_interval_seconds` until told to
/// stop, then does one last sweep so the final audit entries are
/// checkpointed.
/// How often health is brought in line with [`Sigil::ready`].
pub const READINESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the health service true: every [`READINESS_INTERVAL`] asks
/// [`Sigil::ready`] (the HSM answers with every key serving needs; the store
/// can write) and sets the overall status and the approval and factor
/// services to NOT_SERVING while it fails, SERVING again once it passes.
/// Transitions are logged. Ends when `stop` changes (shutdown then sets
/// NOT_SERVING for good).
async fn readiness_loop(
    sigil: Arc<Sigil>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(READINESS_INTERVAL) => {},
            _ = stop.changed() => return,
        }
        let s = sigil.clone();
        let verdict = match tokio::task::spawn_blocking(move || s.ready()).await {
            Ok(r) => r,
            Err(e) => Err(Error::Internal(format!("readiness check failed to run: {e}"))),
        };
        if *stop.borrow() {
            return;
        }
        let now = verdict.is_ok();
        crate::metrics::set_ready(now);
        crate::metrics::set_hsm_up(sigil.signer().hsm().health().serving);
        if now == serving {
            continue;
        }
        serving = now;
        let status = if now {
            tracing::warn!("ready again: health SERVING");
            tonic_health::ServingStatus::Serving
        } else {
            if let Err(e) = &verdict {
                tracing::error!(problem = %e, "cannot serve: health NOT_SERVING until this clears");
            }
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        for name in [
            <pb::approval_service_server::ApprovalServiceServer<ApprovalApi> as tonic::server::NamedService>::NAME,
            <pb::factor_service_server::FactorServiceServer<FactorApi> as tonic::server::NamedService>::NAME,
        ] {
            reporter.set_service_status(name, status).await;
        }
    }
}

async fn sweep_loop(sigil: Arc<Sigil>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = std::time::Duration::from_secs(sigil.config().protection.sweep_interval_seconds.max(1));
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.changed() => true,
        };
        let s = sigil.clone();
        match tokio::task::spawn_blocking(move || s.sweep()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sweep failed; retrying at the next interval"),
            Err(e) => tracing::error!(error = %e, "sweep task failed"),
        }
        if stopping {
            return;
        }
    }
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
