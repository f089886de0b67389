//! `sigil revoke`, `sigil suspend`, `sigil resume`: taking factors and
//! approvals away from everyone or from named users.
use std::path::Path;

use clap::Args;
use sigil::Error;

use crate::conn::{confirm, Conn};
use crate::rpc::Admin;

/// The arguments of `sigil revoke`.
#[derive(Args)]
pub struct Revoke {
    #[command(flatten)]
    conn: Conn,
    /// Every user (one write, whatever their number).
    #[arg(long, conflicts_with = "user")]
    all: bool,
    /// A user (repeatable).
    #[arg(long)]
    user: Vec<String>,
    /// Why (recorded in the audit log and the events).
    #[arg(long)]
    reason: String,
    /// Confirm without a prompt (required when not at a terminal).
    #[arg(long)]
    yes: bool,
}

/// The arguments of `sigil suspend`.
#[derive(Args)]
pub struct Suspend {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, conflicts_with = "user")]
    all: bool,
    #[arg(long)]
    user: Vec<String>,
    #[arg(long)]
    reason: String,
    /// End of the suspension, Unix seconds (default: until resumed).
    #[arg(long, default_value_t = 0)]
    until: i64,
}

/// The arguments of `sigil resume`.
#[derive(Args)]
pub struct Resume {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, conflicts_with = "user")]
    all: bool,
    #[arg(long)]
    user: Vec<String>,
}

/// `sigil revoke`: revokes every factor of every user (`--all`, after
/// confirmation) or of the named users.
pub async fn revoke(args: Revoke, config: Option<&Path>) -> Result<(), Error> {
    let target = args.conn.resolve(config)?;
    if args.all {
        confirm("revoke every factor of every user", &target.url, args.yes)?;
    }
    let users = Admin::open(target)
        .await?
        .revoke_factors(args.all, args.user, args.reason)
        .await?;
    if users < 0 {
        println!("revoked every factor of every user");
    } else {
        println!("revoked every factor of {users} user(s)");
    }
    Ok(())
}

/// `sigil suspend`: suspends approvals and redemptions.
pub async fn suspend(args: Suspend, config: Option<&Path>) -> Result<(), Error> {
    Admin::connect(&args.conn, config)
        .await?
        .suspend_approvals(args.all, args.user, args.reason, args.until)
        .await?;
    println!("suspended");
    Ok(())
}

/// `sigil resume`: lifts a suspension.
pub async fn resume(args: Resume, config: Option<&Path>) -> Result<(), Error> {
    Admin::connect(&args.conn, config)
        .await?
        .resume_approvals(args.all, args.user)
        .await?;
    println!("resumed");
    Ok(())
}
