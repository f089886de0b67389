//! `sigil backup` and `sigil restore`: the store, saved from the running
//! service and put back with the service stopped.
use std::path::{Path, PathBuf};

use clap::Args;
use sigil::config::Config;
use sigil::Error;

use crate::conn::{confirm, Conn};
use crate::rpc::Admin;
use crate::unix_now;

/// The arguments of `sigil backup`.
#[derive(Args)]
pub struct Backup {
    #[command(flatten)]
    conn: Conn,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

/// The arguments of `sigil restore`.
#[derive(Args)]
pub struct Restore {
    /// The backup file.
    file: PathBuf,
    /// The highest event cursor consumers were given; required when the
    /// live store is gone, so that new events never reuse a cursor.
    #[arg(long)]
    events_after: Option<u64>,
    /// Confirm without a prompt (required when not at a terminal).
    #[arg(long)]
    yes: bool,
}

/// `sigil backup`: fetches a backup, checks that it decodes, and writes it
/// to `--out` (through a `.partial` file, so that `--out` is whole or absent).
pub async fn backup(args: Backup, config: Option<&Path>) -> Result<(), Error> {
    let Backup { conn, out } = args;
    let mut admin = Admin::connect(&conn, config).await?;
    let start = std::time::Instant::now();
    let data = admin.backup().await?;
    sigil::backup::decode(&data)?;
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, &data).map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &out).map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", out.display())))?;
    println!(
        "backup written to {} ({} bytes, {:.1} s)",
        out.display(),
        data.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `sigil restore`: after confirmation, replaces the configured store with
/// a backup, keeping the previous store beside it.
pub fn restore(args: Restore, config: Option<&Path>) -> Result<(), Error> {
    let Restore {
        file,
        events_after,
        yes,
    } = args;
    let cfg = Config::load(config)?;
    if cfg.store.backend == sigil::store::Backend::Postgres {
        return restore_postgres(&cfg, &file, events_after, yes);
    }
    let store = cfg.store.path.display().to_string();
    confirm(
        &format!("replace the store with the backup {}", file.display()),
        &store,
        yes,
    )?;
    let now = unix_now()?;
    let opts = sigil::backup::RestoreOptions { events_after };
    let (h, previous) = sigil::backup::restore_with(&file, &cfg.store.path, now, &opts)?;
    println!(
        "restored {} records taken at {} into {}; approvals issued and challenges opened before now, and TOTP codes up to the next time step, are refused",
        h.records,
        h.taken_at,
        cfg.store.path.display()
    );
    if let Some(p) = previous {
        println!("the previous store is kept at {}", p.display());
    }
    Ok(())
}

/// `sigil restore` into the PostgreSQL database of the configuration
/// (every replica stopped): one transaction; the previous records stay in
/// a table of their own.
fn restore_postgres(cfg: &Config, file: &Path, events_after: Option<u64>, yes: bool) -> Result<(), Error> {
    confirm(
        &format!("replace the PostgreSQL store with the backup {}", file.display()),
        &cfg.store.describe(),
        yes,
    )?;
    let store = sigil::store::pg_store::PgStore::open(&cfg.store.dsn()?, 2)?;
    let now = unix_now()?;
    let opts = sigil::backup::RestoreOptions { events_after };
    let (h, kept) = sigil::backup::restore_postgres(file, &store, now, &opts)?;
    println!(
        "restored {} records taken at {} into PostgreSQL; approvals issued and challenges opened before now, and TOTP codes up to the next time step, are refused",
        h.records, h.taken_at
    );
    println!("the previous records are kept in table {kept}");
    Ok(())
}
