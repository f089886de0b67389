//! `sigil keys`: the approval keys and the secrets key.
use std::path::Path;

use clap::Subcommand;
use sigil::Error;

use crate::conn::{confirm, Conn};
use crate::rpc::Admin;

/// The `sigil keys` commands.
#[derive(Subcommand)]
pub enum KeysCmd {
    /// Rotate the approval key: publish a new key now as `next`, active
    /// after the pre-publication delay (or at once with --now).
    Rotate {
        #[command(flatten)]
        conn: Conn,
        /// Activate the new key at once (verifiers that have not fetched it
        /// yet refuse its approvals until they do).
        #[arg(long)]
        now: bool,
        /// Confirm without a prompt (required when not at a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// List approval keys and their states.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Re-wrap every factor secret under a new HSM AES key (online,
    /// resumable: run it again after an interruption).
    RotateSecrets {
        #[command(flatten)]
        conn: Conn,
        /// Records per batch.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
}

/// Runs a `sigil keys` command.
pub async fn run(cmd: KeysCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        KeysCmd::Rotate { conn, now, yes } => rotate(&conn, now, yes, config).await,
        KeysCmd::List { conn } => list(&conn, config).await,
        KeysCmd::RotateSecrets { conn, batch } => rotate_secrets(&conn, batch, config).await,
    }
}

/// `sigil keys rotate`: starts an approval-key rotation (confirmed first
/// when the new key is to be active at once).
async fn rotate(conn: &Conn, now: bool, yes: bool, config: Option<&Path>) -> Result<(), Error> {
    let target = conn.resolve(config)?;
    if now {
        confirm("rotate the approval key with immediate activation", &target.url, yes)?;
    }
    let k = Admin::open(target).await?.rotate_approval_key(now).await?;
    println!("new approval key {} ({}), active at {}", k.kid, k.state, k.activate_at);
    Ok(())
}

/// `sigil keys list`: one line per approval key.
async fn list(conn: &Conn, config: Option<&Path>) -> Result<(), Error> {
    for k in Admin::connect(conn, config).await?.list_approval_keys().await? {
        println!(
            "{}  {:8}  label {}  created {}  active from {}  retires {}",
            k.kid, k.state, k.label, k.created_at, k.activate_at, k.retire_at
        );
    }
    Ok(())
}

/// `sigil keys rotate-secrets`: re-wraps every factor secret, printing
/// the server's progress as it comes.
async fn rotate_secrets(conn: &Conn, batch: u32, config: Option<&Path>) -> Result<(), Error> {
    let mut progress = Admin::connect(conn, config).await?.rotate_secrets_key(batch).await?;
    while let Some(p) = progress.next().await? {
        if p.done {
            println!("done: every secret is under {}; {} destroyed", p.to_key, p.from_key);
        } else {
            println!(
                "{} -> {}: {} moved, {} remaining",
                p.from_key, p.to_key, p.moved, p.remaining
            );
        }
    }
    Ok(())
}
