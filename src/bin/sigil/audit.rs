//! `sigil audit`: reading the audit log and verifying its hash chain and
//! signed checkpoints here, independently of the server.
use std::path::Path;

use clap::Subcommand;
use sigil::Error;

use crate::conn::Conn;
use crate::rpc::{Admin, AuditFilter};

/// The `sigil audit` commands.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Fetch the whole audit log and its signed checkpoints, recompute the
    /// hash chain here, check every checkpoint signature against the audit
    /// key, and report the first entry that does not fit (exit 1).
    Verify {
        #[command(flatten)]
        conn: Conn,
        /// Ask the server to sign a checkpoint of the current head first.
        #[arg(long)]
        checkpoint: bool,
    },
    /// Print audit entries (optionally of one user / time range) as JSON lines.
    Read {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long, default_value_t = 0)]
        from: i64,
        #[arg(long, default_value_t = 0)]
        to: i64,
    },
}

/// Runs a `sigil audit` command.
pub async fn run(cmd: AuditCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        AuditCmd::Read { conn, user, from, to } => read(&conn, AuditFilter { user, from, to }, config).await,
        AuditCmd::Verify { conn, checkpoint } => verify(&conn, checkpoint, config).await,
    }
}

/// `sigil audit read`: prints the matching entries, one `seq json` line each.
async fn read(conn: &Conn, filter: AuditFilter, config: Option<&Path>) -> Result<(), Error> {
    let mut admin = Admin::connect(conn, config).await?;
    let mut after = 0;
    loop {
        let r = admin.read_audit(after, 1000, &filter).await?;
        for e in &r.entries {
            println!("{} {}", e.seq, String::from_utf8_lossy(&e.raw));
        }
        if r.next_after_seq == after {
            return Ok(());
        }
        after = r.next_after_seq;
    }
}

/// `sigil audit verify`: fetches the whole log and the checkpoints (after
/// having one signed, with `checkpoint`), and checks them against the
/// audit key; a log that does not verify is an error naming the first
/// entry that does not fit.
async fn verify(conn: &Conn, checkpoint: bool, config: Option<&Path>) -> Result<(), Error> {
    let mut admin = Admin::connect(conn, config).await?;
    if checkpoint {
        admin.checkpoint_audit().await?;
    }
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let r = admin.read_audit(after, 10_000, &AuditFilter::default()).await?;
        for e in r.entries {
            let hash: [u8; 32] = e
                .chain_hash
                .as_slice()
                .try_into()
                .map_err(|_| Error::Internal(format!("entry {} has a malformed chain hash", e.seq)))?;
            entries.push(sigil::store::LogEntry {
                seq: e.seq,
                hash,
                value: e.raw,
            });
        }
        if r.next_after_seq == after {
            break;
        }
        after = r.next_after_seq;
    }
    let cps = admin.audit_checkpoints().await?;
    let key: sigil_verify::Jwk = serde_json::from_str(&cps.audit_key_jwk_json)
        .map_err(|e| Error::Internal(format!("audit key unreadable: {e}")))?;
    let checkpoints: Vec<sigil::audit::Checkpoint> = cps
        .checkpoints
        .into_iter()
        .map(|c| sigil::audit::Checkpoint {
            v: 1,
            seq: c.seq,
            hash: c.hash,
            at: c.at,
            kid: c.kid,
            signature: c.signature,
        })
        .collect();
    let report = sigil::audit::verify(&entries, &checkpoints, &key);
    match report.first_broken {
        None => {
            println!(
                "audit log ok: {} entries, {} signed checkpoint(s) verified with key {}",
                report.entries, report.checkpoints, key.kid
            );
            Ok(())
        }
        Some((seq, why)) => Err(Error::Internal(format!("audit log BROKEN at entry {seq}: {why}"))),
    }
}
