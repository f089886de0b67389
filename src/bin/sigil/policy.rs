//! `sigil policy`: the stored policy in force and proposals to change it.
//! A proposal is a request like a held withdrawal: staff approve or cancel
//! it with `sigil pending approve|cancel <request_id>`.
use std::path::{Path, PathBuf};

use clap::Subcommand;
use sigil::Error;

use crate::conn::Conn;
use crate::pending::{print_table, tally, when};
use crate::rpc::Staff;
use crate::utc;

/// The `sigil policy` commands.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Print the policy in force (version, SHA-256, TOML text) and the
    /// changes proposed to it.
    Show {
        #[command(flatten)]
        conn: Conn,
    },
    /// Propose FILE (the whole new policy, TOML) as the next version (admin
    /// certificate). It takes effect after the [governance] quorum of the
    /// policy in force and its delay.
    Propose {
        #[command(flatten)]
        conn: Conn,
        /// The proposed policy (TOML).
        file: PathBuf,
        /// The proposing staff member (who cannot approve it themselves).
        #[arg(long, value_name = "STAFF_ID")]
        by: String,
    },
}

/// Runs a `sigil policy` command.
pub async fn run(cmd: PolicyCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        PolicyCmd::Show { conn } => show(&conn, config).await,
        PolicyCmd::Propose { conn, file, by } => propose(&conn, &file, &by, config).await,
    }
}

/// `sigil policy show`.
async fn show(conn: &Conn, config: Option<&Path>) -> Result<(), Error> {
    let p = Staff::connect(conn, config).await?.policy().await?;
    println!(
        "policy version {}  sha256 {}  in force since {}",
        p.version,
        p.sha256,
        utc(p.activated_at)
    );
    for l in p.policy_text.lines() {
        println!("{}", format!("    | {l}").trim_end());
    }
    if p.pending_changes.is_empty() {
        println!("no pending changes");
    } else {
        println!("pending changes (decide with sigil pending approve|cancel <request>):");
        print_table(&p.pending_changes);
    }
    Ok(())
}

/// `sigil policy propose`: proposes the file's text.
async fn propose(conn: &Conn, file: &Path, by: &str, config: Option<&Path>) -> Result<(), Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::invalid("file", format!("cannot read {}: {e}", file.display())))?;
    let p = Staff::connect(conn, config).await?.propose_policy(by, text).await?;
    println!(
        "proposed policy change {} by {} (replaces version {}, {}); approvals {}: {}",
        p.request_id,
        p.proposed_by,
        p.base_version,
        p.intent.as_ref().map(|i| i.memo.as_str()).unwrap_or_default(),
        tally(&p),
        when(&p)
    );
    for q in &p.quorum {
        println!("needs {} of [{}] ({})", q.required, q.staff.join(", "), q.rule);
    }
    println!(
        "then takes effect {} s after the quorum; staff decide with: \
         sigil pending approve|cancel {} --staff ID --soft-key FILE",
        p.delay_seconds, p.request_id
    );
    Ok(())
}
