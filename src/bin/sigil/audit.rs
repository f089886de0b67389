//! `sigil audit`: reading the audit log and verifying its hash chain and
//! signed checkpoints here, independently of the server, a page at a time
//! (the server ends a page before about 1 MiB), whatever the log's length.
use std::path::Path;

use clap::Subcommand;
use sigil::audit::{Broken, Checkpoint, Verifier};
use sigil::store::LogEntry;
use sigil::Error;

use crate::conn::Conn;
use crate::rpc::{Admin, AuditFilter};

/// Entries asked for per page: the server ends a page before about 1 MiB,
/// which usually comes first.
const PAGE: u32 = 10_000;

/// The `sigil audit` commands.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Read the whole audit log a page at a time with its signed
    /// checkpoints, recompute the hash chain here, check every checkpoint
    /// signature against the audit key, and report the first entry that
    /// does not fit (exit 1).
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
        let r = admin.read_audit(after, PAGE, &filter).await?;
        for e in &r.entries {
            println!("{} {}", e.seq, String::from_utf8_lossy(&e.raw));
        }
        if r.next_after_seq == after {
            return Ok(());
        }
        after = r.next_after_seq;
    }
}

/// `sigil audit verify`: reads the log a page at a time and the
/// checkpoints (after having one signed, with `checkpoint`), and checks
/// them against the audit key, holding only a page and the chain's running
/// state; a log that does not verify is an error naming the first entry
/// that does not fit.
async fn verify(conn: &Conn, checkpoint: bool, config: Option<&Path>) -> Result<(), Error> {
    let mut admin = Admin::connect(conn, config).await?;
    if checkpoint {
        admin.checkpoint_audit().await?;
    }
    let cps = admin.audit_checkpoints().await?;
    let key: sigil_verify::Jwk = serde_json::from_str(&cps.audit_key_jwk_json)
        .map_err(|e| Error::Internal(format!("audit key unreadable: {e}")))?;
    let mut v = Verifier::new(&key);
    for c in cps.checkpoints {
        v.checkpoint(&Checkpoint {
            v: 1,
            seq: c.seq,
            hash: c.hash,
            at: c.at,
            kid: c.kid,
            signature: c.signature,
        })
        .map_err(broken)?;
    }
    let mut after = 0;
    loop {
        let r = admin.read_audit(after, PAGE, &AuditFilter::default()).await?;
        for e in r.entries {
            let hash: [u8; 32] = e
                .chain_hash
                .as_slice()
                .try_into()
                .map_err(|_| Error::Internal(format!("entry {} has a malformed chain hash", e.seq)))?;
            v.entry(&LogEntry {
                seq: e.seq,
                hash,
                value: e.raw,
            })
            .map_err(broken)?;
        }
        if r.next_after_seq == after {
            break;
        }
        after = r.next_after_seq;
    }
    let report = v.finish();
    match report.first_broken {
        None => {
            println!(
                "audit log ok: {} entries, {} signed checkpoint(s) verified with key {}",
                report.entries, report.checkpoints, key.kid
            );
            Ok(())
        }
        Some(b) => Err(broken(b)),
    }
}

/// A chain that does not verify, as the command's error.
fn broken((seq, why): Broken) -> Error {
    Error::Internal(format!("audit log BROKEN at entry {seq}: {why}"))
}
