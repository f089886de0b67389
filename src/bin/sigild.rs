//! `sigild`: the Sigil server.
//!
//! ```text
//! sigild [--config sigil.toml] [--listen 127.0.0.1:50051]
//! ```
//! Reads the configuration (file, then `SIGIL_*` environment, then flags),
//! opens the HSM token and the store, and serves gRPC over mutual TLS until
//! SIGTERM or SIGINT, then drains in-flight calls and exits.
/// mimalloc: many small, short-lived allocations on several threads at once
/// (gRPC, records, PKCS#11 buffers) are cheaper than with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sigil::clock::SystemClock;
use sigil::config::Config;
use sigil::signer::{read_pin, Signer};
use sigil::store::SledStore;
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
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
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
    let pin = read_pin(&cfg.hsm)?;
    let c = cfg.clone();
    let signer = tokio::task::spawn_blocking(move || Signer::open(&c, pin))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    if let Some(parent) = cfg.store.path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
    }
    let store = Arc::new(SledStore::open_with(&cfg.store.path, cfg.store.tuning())?);
    let tls = server::tls_config(&cfg.server)?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", cfg.server.listen)))?;
    let kid = signer.active_kid().to_string();
    let sigil = Arc::new(Sigil::new(cfg.clone(), store, signer, Arc::new(SystemClock))?);
    let running = server::start(sigil, tls, listener, server::termination()).await?;
    println!(
        "sigild listening on https://{} (mTLS only; client roles from certificates), store {}, approval key kid {kid}",
        running.addr,
        cfg.store.path.display()
    );
    running.stop_when_done().await
}
