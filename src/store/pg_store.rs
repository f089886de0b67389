//! The PostgreSQL backend: several Sigil replicas on one database.
//!
//! Every record lives in one table, `sigil_records (tbl, key, version,
//! value)`, with the same shape as the embedded store: a log entry is a
//! record keyed by its 8-byte big-endian sequence number, and a log's head
//! (sequence and chain hash) is a record in table `meta`. A [`Batch`] is
//! one transaction whose conditions are checked by row count and held by
//! row locks until it commits: `INSERT … ON CONFLICT DO NOTHING`,
//! `UPDATE … WHERE version = $n` and `DELETE … WHERE version = $n` (a
//! concurrent writer of the row is waited for, then its version decides);
//! a checked record is read `FOR SHARE`; a key checked absent is claimed
//! with a placeholder row that is deleted before commit. So every
//! condition still holds when the batch commits, at `READ COMMITTED`,
//! without aborting concurrent approvals. A serialization failure
//! (SQLSTATE 40001, which serializable engines such as CockroachDB
//! return) or a deadlock (40P01) retries the whole batch; a condition that
//! does not hold is [`StoreError::Conflict`] and writes nothing.
//!
//! Appends go through the log's head record, locked (`FOR UPDATE`) and
//! updated in the same transaction: appenders queue on that row, so
//! each log stays one gapless hash chain whose sequence numbers follow
//! commit order. A reader that has seen entry `n` can never later find an
//! entry below `n` committing (the outbox gap): entry `n + 1` cannot be
//! written before the transaction that wrote `n` committed.
//!
//! Pruning a log's oldest entries ([`Op::Prune`]) locks its floor record
//! the same way, so two replicas pruning at once queue and the second
//! finds the floor moved (a conflict, nothing written).
//!
//! No advisory locks and no LISTEN/NOTIFY are used for correctness: the
//! same statements run on Postgres-wire engines that are serializable by
//! default (CockroachDB, YugabyteDB).
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{IsolationLevel, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use super::{
    chain_hash, decode_log_head, log_floor_key, log_head_key, Batch, Expect, LogEntry, Op, Store, StoreError, Table,
    Versioned,
};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: (version, name, statements).
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "records",
    "CREATE TABLE IF NOT EXISTS sigil_records (
        tbl SMALLINT NOT NULL,
        key BYTEA NOT NULL,
        version BIGINT NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (tbl, key)
    )",
)];

/// How many times a batch is tried again after a serialization failure.
const MAX_RETRIES: usize = 64;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// A store in a PostgreSQL database.
pub struct PgStore {
    /// Some until the store is dropped (see its `Drop`).
    pool: Option<Pool>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a client blocks on its own runtime: the connections go
        // away off any async worker this store is dropped on.
        if let Some(pool) = self.pool.take() {
            blocking(move || drop(pool));
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it may carry a password.
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// A database error as a store error, without the connection string: the
/// server's own reason and SQLSTATE when it gave one.
fn db(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Unavailable(format!(
            "database refused a statement: {} (SQLSTATE {})",
            d.message(),
            d.code().code()
        )),
        None if e.is_closed() => StoreError::Unavailable("database connection closed (is the server down?)".into()),
        None => StoreError::Unavailable(format!("database unreachable: {e}")),
    }
}

fn pool_err(e: r2d2::Error) -> StoreError {
    StoreError::Unavailable(format!("no database connection: {e}"))
}

/// Runs `f`, which blocks on the database client, so that it may be
/// called from anywhere: on a multi-threaded tokio worker it runs in
/// `block_in_place` (the client drives its own runtime, which may not be
/// started from inside another's worker); elsewhere (plain threads,
/// blocking threads) it runs as it is.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// True for the errors after which the whole transaction is tried again.
fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

fn tbl(t: Table) -> i16 {
    i16::from(t.tag())
}

fn version_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt("record version out of range".into()))
}

/// Rows of `key, version, value` as records.
fn records(rows: Vec<postgres::Row>) -> Vec<(Vec<u8>, Versioned)> {
    rows.into_iter()
        .map(|r| {
            (
                r.get(0),
                Versioned {
                    version: r.get::<_, i64>(1) as u64,
                    value: r.get(2),
                },
            )
        })
        .collect()
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Why one attempt at a batch stopped.
enum Attempt {
    /// A condition does not hold: the batch is refused.
    Conflict,
    /// Serialization failure or deadlock: try again.
    Retry,
    /// Anything else.
    Failed(StoreError),
}

impl From<postgres::Error> for Attempt {
    fn from(e: postgres::Error) -> Self {
        if retryable(&e) {
            Attempt::Retry
        } else {
            Attempt::Failed(db(e))
        }
    }
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Failed(e)
    }
}

impl PgStore {
    /// Connects (DSN in libpq key/value or URL form), applies the
    /// migrations this build knows, and refuses a database whose schema is
    /// newer than this build. Connection failures are `Unavailable`; the
    /// message never contains the DSN.
    pub fn open(dsn: &str, pool_size: u32) -> Result<PgStore, StoreError> {
        blocking(|| PgStore::open_blocking(dsn, pool_size))
    }

    fn open_blocking(dsn: &str, pool_size: u32) -> Result<PgStore, StoreError> {
        let config: postgres::Config = dsn.parse().map_err(|_| {
            StoreError::Unavailable(
                "the PostgreSQL connection string is not valid (libpq key=value or postgresql:// URL)".into(),
            )
        })?;
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            // A broken connection is found without a round trip
            // (`has_broken`) and its call refused; no test query per use.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(5))
            .build(manager)
            .map_err(pool_err)?;
        let store = PgStore { pool: Some(pool) };
        store.migrate()?;
        Ok(store)
    }

    fn pool(&self) -> Result<&Pool, StoreError> {
        self.pool
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the database store was closed".into()))
    }

    /// The schema version recorded in the database (0: none yet).
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        blocking(|| self.schema_version_blocking())
    }

    fn schema_version_blocking(&self) -> Result<i32, StoreError> {
        let mut c = self.pool()?.get().map_err(pool_err)?;
        let exists: bool = c
            .query_one("SELECT to_regclass('sigil_schema_migrations') IS NOT NULL", &[])
            .map_err(db)?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let v: Option<i32> = c
            .query_one("SELECT max(version) FROM sigil_schema_migrations", &[])
            .map_err(db)?
            .get(0);
        Ok(v.unwrap_or(0))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.pool()?.get().map_err(pool_err)?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS sigil_schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .map_err(db)?;
        drop(c);
        let current = self.schema_version_blocking()?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {current}; this build knows up to {SCHEMA_VERSION}: upgrade Sigil (nothing was written)"
            )));
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            let mut tx = c.transaction().map_err(db)?;
            tx.batch_execute(sql).map_err(db)?;
            // Two replicas starting together: the second finds it recorded.
            tx.execute(
                "INSERT INTO sigil_schema_migrations (version, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[version, name],
            )
            .map_err(db)?;
            match tx.commit() {
                Ok(()) => tracing::info!(version, name, "database migration applied"),
                Err(e) if retryable(&e) || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(db(e)),
            }
        }
        Ok(())
    }

    /// One try at `batch` in a serializable transaction.
    fn try_commit(&self, batch: &Batch) -> Result<Vec<u64>, Attempt> {
        let mut c = self.pool()?.get().map_err(pool_err)?;
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()?;
        let seqs = apply(&mut tx, batch)?;
        let t0 = Instant::now();
        tx.commit()?;
        crate::metrics::store_sync("postgres", t0.elapsed());
        Ok(seqs)
    }

    /// Runs `f` in one `SERIALIZABLE` transaction on a pooled connection
    /// (the rare whole-store operations: loading, replacing); `f` commits.
    fn in_serializable<T>(
        &self,
        f: impl FnOnce(postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .map_err(db)?;
            f(tx)
        })
    }

    /// Loads `records` — a snapshot or a backup, versions kept — into a
    /// database that holds no record yet, in one transaction. Refuses a
    /// database that holds any record (nothing is written then).
    pub fn load_into_empty(&self, records: &[(Table, Vec<u8>, Versioned)]) -> Result<(), StoreError> {
        self.in_serializable(|mut tx| {
            let n: i64 = tx
                .query_one("SELECT count(*) FROM sigil_records", &[])
                .map_err(db)?
                .get(0);
            if n != 0 {
                return Err(StoreError::Conflict);
            }
            insert_all(&mut tx, records)?;
            tx.commit().map_err(db)
        })
    }

    /// The table a restore at `at` keeps the previous records in.
    pub fn pre_restore_table(at: i64) -> String {
        format!("sigil_records_pre_restore_{}", at.max(0))
    }

    /// Replaces every record with `records` (versions kept) and applies
    /// `then` on top, in one transaction: a restore at `at`. The previous
    /// records stay in table [`PgStore::pre_restore_table`]`(at)`.
    pub fn replace_all(
        &self,
        records: &[(Table, Vec<u8>, Versioned)],
        then: &Batch,
        at: i64,
    ) -> Result<(), StoreError> {
        let kept = PgStore::pre_restore_table(at);
        self.in_serializable(|mut tx| {
            tx.batch_execute(&format!("ALTER TABLE sigil_records RENAME TO {kept}"))
                .map_err(db)?;
            tx.batch_execute(MIGRATIONS[0].2).map_err(db)?;
            insert_all(&mut tx, records)?;
            match apply(&mut tx, then) {
                Ok(_) => {}
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Conflict) | Err(Attempt::Retry) => return Err(StoreError::Conflict),
            }
            tx.commit().map_err(db)
        })
    }
}

/// Inserts records with their versions.
fn insert_all(tx: &mut postgres::Transaction<'_>, records: &[(Table, Vec<u8>, Versioned)]) -> Result<(), StoreError> {
    let stmt = tx
        .prepare("INSERT INTO sigil_records (tbl, key, version, value) VALUES ($1, $2, $3, $4)")
        .map_err(db)?;
    for (t, k, v) in records {
        tx.execute(&stmt, &[&tbl(*t), k, &version_i64(v.version)?, &v.value])
            .map_err(db)?;
    }
    Ok(())
}

/// Applies a batch's operations inside `tx`, checking every condition by
/// row count; returns the sequence numbers of its appends.
fn apply(tx: &mut postgres::Transaction<'_>, batch: &Batch) -> Result<Vec<u64>, Attempt> {
    // Keys this transaction holds absent: a placeholder row of version 0
    // claims the key in the unique index, so a concurrent insert of it
    // waits for this transaction. Placeholders are deleted before commit
    // and never seen by anyone else.
    let mut placeholders: Vec<(i16, Vec<u8>)> = Vec::new();
    let mut seqs = Vec::new();
    for op in &batch.ops {
        match op {
            Op::Put {
                table,
                key,
                value,
                expect: Expect::Absent,
            } => {
                let t = tbl(*table);
                let n = if let Some(i) = placeholders.iter().position(|(pt, pk)| *pt == t && pk == key) {
                    placeholders.remove(i);
                    tx.execute(
                        "UPDATE sigil_records SET value = $3, version = 1 WHERE tbl = $1 AND key = $2 AND version = 0",
                        &[&t, key, value],
                    )?
                } else {
                    tx.execute(
                        "INSERT INTO sigil_records (tbl, key, version, value) VALUES ($1, $2, 1, $3) ON CONFLICT DO NOTHING",
                        &[&t, key, value],
                    )?
                };
                if n != 1 {
                    return Err(Attempt::Conflict);
                }
            }
            Op::Put {
                table,
                key,
                value,
                expect: Expect::Version(v),
            } => {
                // Waits for a concurrent writer of the row, then checks the
                // version it committed: a changed record is a conflict.
                let n = tx.execute(
                    "UPDATE sigil_records SET value = $3, version = version + 1 WHERE tbl = $1 AND key = $2 AND version = $4",
                    &[&tbl(*table), key, value, &version_i64(*v)?],
                )?;
                if n != 1 || *v == 0 {
                    return Err(Attempt::Conflict);
                }
            }
            Op::Check { table, key, version: 0 } => {
                let t = tbl(*table);
                if placeholders.iter().any(|(pt, pk)| *pt == t && pk == key) {
                    continue;
                }
                let n = tx.execute(
                    "INSERT INTO sigil_records (tbl, key, version, value) VALUES ($1, $2, 0, '') ON CONFLICT DO NOTHING",
                    &[&t, key],
                )?;
                if n != 1 {
                    // The record exists (or was just committed by another).
                    return Err(Attempt::Conflict);
                }
                placeholders.push((t, key.clone()));
            }
            Op::Check { table, key, version } => {
                // A share lock keeps the record as checked until commit.
                let row = tx.query_opt(
                    "SELECT version FROM sigil_records WHERE tbl = $1 AND key = $2 FOR SHARE",
                    &[&tbl(*table), key],
                )?;
                let found = row.map(|r| r.get::<_, i64>(0)).unwrap_or(0);
                if found != version_i64(*version)? {
                    return Err(Attempt::Conflict);
                }
            }
            Op::Delete { table, key, version } => {
                let n = tx.execute(
                    "DELETE FROM sigil_records WHERE tbl = $1 AND key = $2 AND version = $3",
                    &[&tbl(*table), key, &version_i64(*version)?],
                )?;
                if n != 1 || *version == 0 {
                    return Err(Attempt::Conflict);
                }
            }
            Op::Prune { log, after, through } => {
                if !log.is_log() {
                    return Err(StoreError::Corrupt(format!("{} is not a log", log.name())).into());
                }
                // Pruners queue on the floor row (or, before there is one,
                // on a placeholder claiming its key).
                let floor_key = log_floor_key(*log);
                let row = tx.query_opt(
                    "SELECT version, value FROM sigil_records WHERE tbl = $1 AND key = $2 FOR UPDATE",
                    &[&tbl(Table::Meta), &floor_key],
                )?;
                let floor = row.map(|r| Versioned {
                    version: r.get::<_, i64>(0) as u64,
                    value: r.get(1),
                });
                let (floor_version, floor, _) = decode_log_head(floor.as_ref())?;
                if floor != *after {
                    return Err(Attempt::Conflict);
                }
                if floor_version == 0 {
                    // No floor row to lock yet: claim its key with a
                    // placeholder, so a concurrent pruner waits for this
                    // transaction and then finds the key taken.
                    let n = tx.execute(
                        "INSERT INTO sigil_records (tbl, key, version, value) VALUES ($1, $2, 0, '') ON CONFLICT DO NOTHING",
                        &[&tbl(Table::Meta), &floor_key],
                    )?;
                    if n != 1 {
                        return Err(Attempt::Conflict);
                    }
                }
                let last = tx.query_opt(
                    "SELECT key, substring(value from 1 for 32) FROM sigil_records
                     WHERE tbl = $1 AND key > $2 AND key <= $3 ORDER BY key DESC LIMIT 1",
                    &[
                        &tbl(*log),
                        &after.to_be_bytes().to_vec(),
                        &through.to_be_bytes().to_vec(),
                    ],
                )?;
                let Some(last) = last.filter(|_| through > after) else {
                    if floor_version == 0 {
                        tx.execute(
                            "DELETE FROM sigil_records WHERE tbl = $1 AND key = $2 AND version = 0",
                            &[&tbl(Table::Meta), &floor_key],
                        )?;
                    }
                    continue;
                };
                let (key, hash): (Vec<u8>, Vec<u8>) = (last.get(0), last.get(1));
                if key.len() != 8 || hash.len() != 32 {
                    return Err(
                        StoreError::Corrupt(format!("{} entry has a malformed key or value", log.name())).into(),
                    );
                }
                tx.execute(
                    "DELETE FROM sigil_records WHERE tbl = $1 AND key > $2 AND key <= $3",
                    &[&tbl(*log), &after.to_be_bytes().to_vec(), &key],
                )?;
                let mut new_floor = key;
                new_floor.extend_from_slice(&hash);
                // The placeholder (version 0) becomes version 1.
                let n = tx.execute(
                    "UPDATE sigil_records SET value = $3, version = version + 1 WHERE tbl = $1 AND key = $2 AND version = $4",
                    &[&tbl(Table::Meta), &floor_key, &new_floor, &version_i64(floor_version)?],
                )?;
                if n != 1 {
                    return Err(Attempt::Conflict);
                }
            }
            Op::Append { log, value } => {
                // Appenders queue on the log's head row: each reads the head
                // the previous one committed, so sequence numbers follow
                // commit order without a gap.
                let head_key = log_head_key(*log);
                let row = tx.query_opt(
                    "SELECT version, value FROM sigil_records WHERE tbl = $1 AND key = $2 FOR UPDATE",
                    &[&tbl(Table::Meta), &head_key],
                )?;
                let head = row.map(|r| Versioned {
                    version: r.get::<_, i64>(0) as u64,
                    value: r.get(1),
                });
                let (head_version, seq, prev) = decode_log_head(head.as_ref())?;
                let seq = seq + 1;
                let hash = chain_hash(&prev, seq, value);
                let mut stored = hash.to_vec();
                stored.extend_from_slice(value);
                let n = tx.execute(
                    "INSERT INTO sigil_records (tbl, key, version, value) VALUES ($1, $2, 1, $3) ON CONFLICT DO NOTHING",
                    &[&tbl(*log), &seq.to_be_bytes().to_vec(), &stored],
                )?;
                if n != 1 {
                    // Another replica took this sequence number first (the
                    // very first entry, before any head row existed).
                    return Err(Attempt::Retry);
                }
                let mut new_head = seq.to_be_bytes().to_vec();
                new_head.extend_from_slice(&hash);
                let n = if head_version == 0 {
                    tx.execute(
                        "INSERT INTO sigil_records (tbl, key, version, value) VALUES ($1, $2, 1, $3) ON CONFLICT DO NOTHING",
                        &[&tbl(Table::Meta), &head_key, &new_head],
                    )?
                } else {
                    tx.execute(
                        "UPDATE sigil_records SET value = $3, version = version + 1 WHERE tbl = $1 AND key = $2 AND version = $4",
                        &[&tbl(Table::Meta), &head_key, &new_head, &version_i64(head_version)?],
                    )?
                };
                if n != 1 {
                    return Err(Attempt::Retry);
                }
                seqs.push(seq);
            }
        }
    }
    for (t, k) in placeholders {
        tx.execute(
            "DELETE FROM sigil_records WHERE tbl = $1 AND key = $2 AND version = 0",
            &[&t, &k],
        )?;
    }
    Ok(seqs)
}

impl Store for PgStore {
    fn ready(&self) -> Result<(), StoreError> {
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            c.simple_query("SELECT 1").map_err(db)?;
            Ok(())
        })
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            let row = c
                .query_opt(
                    "SELECT version, value FROM sigil_records WHERE tbl = $1 AND key = $2",
                    &[&tbl(table), &key],
                )
                .map_err(db)?;
            Ok(row.map(|r| Versioned {
                version: r.get::<_, i64>(0) as u64,
                value: r.get(1),
            }))
        })
    }

    fn scan_page(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            let rows = match after {
                Some(after) => c.query(
                    "SELECT key, version, value FROM sigil_records WHERE tbl = $1 AND key > $2 AND version > 0 \
                     ORDER BY key LIMIT $3",
                    &[&tbl(table), &after, &limit],
                ),
                None => c.query(
                    "SELECT key, version, value FROM sigil_records WHERE tbl = $1 AND version > 0 ORDER BY key LIMIT $2",
                    &[&tbl(table), &limit],
                ),
            }
            .map_err(db)?;
            Ok(records(rows))
        })
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            let rows = match prefix_end(prefix) {
                Some(end) => c.query(
                    "SELECT key, version, value FROM sigil_records WHERE tbl = $1 AND key >= $2 AND key < $3 ORDER BY key",
                    &[&tbl(table), &prefix, &end],
                ),
                None => c.query(
                    "SELECT key, version, value FROM sigil_records WHERE tbl = $1 AND key >= $2 ORDER BY key",
                    &[&tbl(table), &prefix],
                ),
            }
            .map_err(db)?;
            Ok(records(rows))
        })
    }

    fn commit(&self, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        blocking(|| {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let t0 = Instant::now();
            for attempt in 0..MAX_RETRIES {
                match self.try_commit(batch) {
                    Ok(seqs) => {
                        crate::metrics::store_commit("postgres", t0.elapsed());
                        return Ok(seqs);
                    }
                    Err(Attempt::Conflict) => return Err(StoreError::Conflict),
                    Err(Attempt::Failed(e)) => return Err(e),
                    Err(Attempt::Retry) => {
                        // Back off a little, growing, so competing replicas spread out.
                        std::thread::sleep(Duration::from_micros(200 * (attempt as u64 + 1).min(50)));
                    }
                }
            }
            Err(StoreError::Unavailable(
                "the database kept refusing the transaction under contention; nothing was written".into(),
            ))
        })
    }

    fn read_log(&self, log: Table, after: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = c
                .query(
                    "SELECT key, value FROM sigil_records WHERE tbl = $1 AND key > $2 ORDER BY key LIMIT $3",
                    &[&tbl(log), &after.to_be_bytes().to_vec(), &limit],
                )
                .map_err(db)?;
            rows.into_iter()
                .map(|r| {
                    let key: Vec<u8> = r.get(0);
                    let value: Vec<u8> = r.get(1);
                    let seq: [u8; 8] = key
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("log key is not a sequence number".into()))?;
                    if value.len() < 32 {
                        return Err(StoreError::Corrupt("log entry shorter than its hash".into()));
                    }
                    let (h, v) = value.split_at(32);
                    let mut hash = [0u8; 32];
                    hash.copy_from_slice(h);
                    Ok(LogEntry {
                        seq: u64::from_be_bytes(seq),
                        hash,
                        value: v.to_vec(),
                    })
                })
                .collect()
        })
    }

    fn log_head(&self, log: Table) -> Result<(u64, [u8; 32]), StoreError> {
        let head = self.get(Table::Meta, &log_head_key(log))?;
        let (_, seq, hash) = decode_log_head(head.as_ref())?;
        Ok((seq, hash))
    }

    fn len(&self, table: Table) -> Result<usize, StoreError> {
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            let n: i64 = c
                .query_one("SELECT count(*) FROM sigil_records WHERE tbl = $1", &[&tbl(table)])
                .map_err(db)?
                .get(0);
            Ok(n as usize)
        })
    }

    fn snapshot(&self) -> Result<Vec<(Table, Vec<u8>, Versioned)>, StoreError> {
        blocking(|| {
            let mut c = self.pool()?.get().map_err(pool_err)?;
            // One consistent view: a repeatable-read, read-only transaction.
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db)?;
            let rows = tx
                .query(
                    "SELECT tbl, key, version, value FROM sigil_records ORDER BY tbl, key",
                    &[],
                )
                .map_err(db)?;
            tx.commit().map_err(db)?;
            rows.into_iter()
                .map(|r| {
                    let t: i16 = r.get(0);
                    let table = usize::try_from(t)
                        .ok()
                        .and_then(|i| Table::ALL.get(i).copied())
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown table number {t}")))?;
                    Ok((
                        table,
                        r.get(1),
                        Versioned {
                            version: r.get::<_, i64>(2) as u64,
                            value: r.get(3),
                        },
                    ))
                })
                .collect()
        })
    }

    fn blocks_caller(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_the_next_key_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
