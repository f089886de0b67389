//! Serving Sigil: mTLS listener, health, reflection, graceful shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::account::AccountApi;
use crate::api::admin::AdminApi;
use crate::api::events::EventApi;
use crate::api::{ApprovalApi, FactorApi};
use crate::config::ServerConfig;
use crate::core::Sigil;
use crate::error::Error;
use crate::pb;

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
}

impl Running {
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

/// Starts serving on `listener` until [`Running::stop`] or `signal` fires.
pub async fn start(
    sigil: Arc<Sigil>,
    tls: ServerTlsConfig,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, Error> {
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
    let sweeper = tokio::spawn(sweep_loop(sigil.clone(), sweep_stop_rx));
    let shutdown = async move {
        tokio::select! {
            _ = stop_rx => {},
            _ = signal => {},
        }
        tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
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
        let _ = sweep_stop_tx.send(true);
        if let Err(e) = sweeper.await {
            tracing::error!(error = %e, "background sweeper failed");
        }
    };
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| Error::Unavailable(format!("TLS configuration refused: {e}")))?
        .add_service(health)
        .add_service(reflection)
        .add_service(pb::factor_service_server::FactorServiceServer::new(FactorApi::new(
            sigil.clone(),
        )))
        .add_service(pb::approval_service_server::ApprovalServiceServer::new(
            ApprovalApi::new(sigil.clone()),
        ))
        .add_service(pb::account_service_server::AccountServiceServer::new(AccountApi::new(
            sigil.clone(),
        )))
        .add_service(pb::admin_service_server::AdminServiceServer::new(AdminApi::new(
            sigil.clone(),
        )))
        .add_service(pb::event_service_server::EventServiceServer::new(EventApi::new(sigil)));
    // serve_with_incoming ignores Server::tcp_nodelay: set TCP_NODELAY on each
    // accepted socket here, or small responses wait for the client's delayed
    // ACK (~40 ms per CompleteApproval).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        task,
    })
}

/// The background sweep ("sweeper"): address holds ending, audit
/// checkpoints. Runs every `protection.sweep_interval_seconds` until told to
/// stop, then does one last sweep so the final audit entries are
/// checkpointed.
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
