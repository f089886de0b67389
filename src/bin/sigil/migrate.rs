//! `sigil migrate --from sled:PATH --to postgres`: copies an embedded
//! store into an empty PostgreSQL database, with sigild stopped.
use std::path::{Path, PathBuf};

use clap::Args;
use sigil::config::Config;
use sigil::store::pg_store::PgStore;
use sigil::store::{verify_log, SledStore, Store, StoreError, Table};
use sigil::Error;

/// The arguments of `sigil migrate`.
#[derive(Args)]
pub struct Migrate {
    /// The source store: `sled:PATH` (the directory of `[store] path`).
    #[arg(long)]
    from: String,
    /// The target: `postgres` (the connection string from the config's
    /// `[store] dsn_env` or `dsn_file`).
    #[arg(long)]
    to: String,
}

/// Copies every record, versions kept, in one transaction; refuses a
/// target that holds any record; then checks the target: the same number
/// of records in every table, and the event and audit logs each one
/// unbroken chain ending where the source's does.
pub fn migrate(args: Migrate, config: Option<&Path>) -> Result<(), Error> {
    let path = match args.from.split_once(':') {
        Some(("sled", p)) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(Error::invalid(
                "from",
                "must be sled:PATH (the directory of the embedded store)",
            ))
        }
    };
    if args.to != "postgres" {
        return Err(Error::invalid("to", "must be postgres"));
    }
    let cfg = Config::load(config)?;
    let source = SledStore::open(&path).map_err(|e| {
        Error::Unavailable(format!(
            "cannot open the store at {} (is sigild still running? stop it first): {e}",
            path.display()
        ))
    })?;
    let records = source.snapshot()?;
    let dsn = cfg.store.dsn()?;
    let target = PgStore::open(&dsn, 2)?;
    println!(
        "sigil: copying {} records from {} to PostgreSQL",
        records.len(),
        path.display()
    );
    match target.load_into_empty(&records) {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            return Err(Error::invalid(
                "to",
                "the target database already holds Sigil records: migrate only into an empty database (nothing was written)",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    for t in Table::ALL {
        let (a, b) = (source.len(t)?, target.len(t)?);
        if a != b {
            return Err(Error::Internal(format!(
                "table {}: {a} records in the source, {b} in the target; the target is not usable",
                t.name()
            )));
        }
    }
    for log in [Table::Events, Table::Audit] {
        let src = verify_log(&source, log)?;
        let dst = verify_log(&target, log)?;
        if src != dst {
            return Err(Error::Internal(format!(
                "the {} log ends differently in the target (head {}) than in the source (head {})",
                log.name(),
                dst.0,
                src.0
            )));
        }
        println!("sigil: {} log: head at {}, one unbroken chain", log.name(), dst.0);
    }
    println!(
        "sigil: migrated {} records; set [store] backend = \"postgres\" and start sigild",
        records.len()
    );
    Ok(())
}
