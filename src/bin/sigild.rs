//! `sigild`: the Sigil server.
//!
//! ```text
//! sigild [--config sigil.toml] [--listen 127.0.0.1:50051] [--log-format text|json]
//! ```
//! Reads the configuration (file, then `SIGIL_*` environment, then flags),
//! opens the HSM token and the store, and serves gRPC over mutual TLS until
//! SIGTERM or SIGINT, then drains in-flight calls and exits. SIGHUP re-reads
//! the client certificate deny-list (`[server] deny_list`); a malformed file
//! is logged and the previous list stays in force. With `[metrics] listen`
//! set it also serves Prometheus metrics at `http://<listen>/metrics`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or
//! as one JSON object a line (`--log-format json`, `SIGIL_LOG_FORMAT`).
/// mimalloc, set to give freed memory back promptly (see `sigil-alloc`).
#[global_allocator]
static GLOBAL: sigil_alloc::Allocator = sigil_alloc::Allocator;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sigil::clock::SystemClock;
use sigil::config::Config;
use sigil::denylist::DenyListHandle;
use sigil::signer::{read_pin, Signer};
use sigil::{server, Error, Sigil};

#[derive(Parser)]
#[command(
    name = "sigild",
    version,
    about = "Sigil: HSM-signed, intent-bound withdrawal approvals over mTLS gRPC"
)]
struct Args {
    /// Configuration file (TOML). Defaults suit `make run`.
    #[arg(long, env = "SIGIL_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides the file and SIGIL_LISTEN).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Log format on stderr: `text` for people, `json` (one object a line:
    /// timestamp, level, target, fields, spans) for log collectors.
    #[arg(long, env = "SIGIL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Installs the log subscriber: stderr, `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigild: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        cfg.server.listen = l;
    }
    // Before the HSM and the store: a malformed deny-list fails fast.
    let deny_list = Arc::new(DenyListHandle::from_config(&cfg.server)?);
    if let Some(p) = deny_list.path() {
        tracing::info!(path = %p.display(), entries = deny_list.current().len(), "client certificate deny-list loaded");
    }
    // Installed before serving, so a SIGHUP never ends the process.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::Unavailable(format!("cannot install the SIGHUP handler: {e}")))?;
    let pin = read_pin(&cfg.hsm)?;
    let c = cfg.clone();
    let signer = tokio::task::spawn_blocking(move || Signer::open(&c, pin))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let store_cfg = cfg.store.clone();
    let store = tokio::task::spawn_blocking(move || store_cfg.open())
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let tls = server::tls_config(&cfg.server)?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", cfg.server.listen)))?;
    let kid = signer.active_kid().to_string();
    let c = cfg.clone();
    let sigil = Arc::new(
        tokio::task::spawn_blocking(move || Sigil::new(c, store, signer, Arc::new(SystemClock)))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??,
    );
    // Before serving: a metrics address that cannot be bound stops the start.
    let _metrics = match cfg.metrics.listen {
        Some(addr) => Some(server::serve_metrics(addr, sigil.clone()).await?),
        None => None,
    };
    let running = server::start_with_deny_list(sigil, deny_list.clone(), tls, listener, server::termination()).await?;
    #[cfg(unix)]
    tokio::spawn(reload_on_hangup(hangups, deny_list));
    println!(
        "sigild listening on https://{} (mTLS only; client roles from certificates), store {}, approval key kid {kid}",
        running.addr,
        cfg.store.describe()
    );
    running.stop_when_done().await
}

/// Re-reads the deny-list on every SIGHUP; a refused file keeps the old list.
#[cfg(unix)]
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, deny_list: Arc<DenyListHandle>) {
    while hangups.recv().await.is_some() {
        let Some(path) = deny_list.path().map(|p| p.display().to_string()) else {
            tracing::info!("SIGHUP: no [server] deny_list is configured; nothing to reload");
            continue;
        };
        let d = deny_list.clone();
        match tokio::task::spawn_blocking(move || d.reload()).await {
            Ok(Ok(entries)) => tracing::info!(path, entries, "SIGHUP: client certificate deny-list reloaded"),
            Ok(Err(e)) => tracing::error!(
                error = %e,
                entries = deny_list.current().len(),
                "SIGHUP: deny-list reload refused; the previous list stays in force"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: deny-list reload failed; the previous list stays in force"),
        }
    }
}
