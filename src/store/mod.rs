//! Storage: one interface, several backends.
//!
//! Sigil keeps its state as versioned records in a few tables. Every
//! security-relevant transition (challenge consumed, approval redeemed, TOTP
//! step used, failure counter) is one [`Batch`] of conditional writes that
//! the backend applies atomically — all or nothing — and makes durable
//! before [`Store::commit`] returns. A condition that does not hold
//! ([`Expect`]) makes the whole batch fail with [`StoreError::Conflict`] and
//! writes nothing.
//!
//! The shape maps one to one onto SQL: `Expect::Absent` is
//! `INSERT … ON CONFLICT DO NOTHING` checked by row count,
//! `Expect::Version(v)` is `UPDATE … WHERE version = v` checked by row count,
//! inside one transaction. The embedded default is [`sled`](sled_store).
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

mod account_groups;
pub mod codec;
mod disk;
mod expiry_blocks;
mod log_blocks;
pub mod meta;
pub mod packed;
pub mod record_groups;
/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sled` (the default: embedded, one node) or `postgres` (several
    /// replicas on one database).
    pub backend: Backend,
    /// Directory of the sled store.
    pub path: PathBuf,
    /// postgres: the environment variable holding the connection string
    /// (libpq `key=value` or a `postgresql://` URL). Never logged.
    pub dsn_env: String,
    /// postgres: a file holding the connection string instead (read at
    /// start-up; takes precedence over `dsn_env`). Never logged.
    pub dsn_file: Option<PathBuf>,
    /// postgres: database connections per replica.
    pub pool_size: u32,
    /// Recent commits are written from the write-ahead log into sled at
    /// least this often (milliseconds)...
    pub checkpoint_interval_ms: u64,
    /// ... or as soon as this many keys were written since the last time ...
    pub checkpoint_keys: usize,
    /// ... or this many MiB of keys and values.
    pub checkpoint_mib: usize,
    /// When checkpoints fail or fall far behind, how long a commit waits
    /// for one (milliseconds) before it is refused (`UNAVAILABLE`).
    pub backpressure_wait_ms: u64,
    /// The most memory sled's page cache may hold, MiB (24; sled's own
    /// default is 1024). It fills as the store grows.
    pub cache_mib: u64,
}

/// The storage backend (`[store] backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The embedded store (sled with Sigil's write-ahead log).
    #[default]
    Sled,
    /// PostgreSQL, shared by every replica.
    Postgres,
}

impl StoreConfig {
    /// The PostgreSQL connection string, from `dsn_file` or `dsn_env`.
    /// Errors name where it was looked for, never its content.
    pub fn dsn(&self) -> Result<String, StoreError> {
        if let Some(p) = &self.dsn_file {
            let text = std::fs::read_to_string(p)
                .map_err(|e| StoreError::Unavailable(format!("cannot read store.dsn_file {}: {e}", p.display())))?;
            let dsn = text.trim().to_string();
            if dsn.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "store.dsn_file {} is empty",
                    p.display()
                )));
            }
            return Ok(dsn);
        }
        match std::env::var(&self.dsn_env) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(StoreError::Unavailable(format!(
                "store.backend is postgres but no connection string was given: set {} (store.dsn_env) or store.dsn_file",
                self.dsn_env
            ))),
        }
    }

    /// Opens the configured store. Blocking (call it off the async
    /// workers).
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self.backend {
            Backend::Sled => {
                if let Some(parent) = self.path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
                }
                Ok(Arc::new(SledStore::open_with(&self.path, self.tuning())?))
            }
            Backend::Postgres => Ok(Arc::new(pg_store::PgStore::open(&self.dsn()?, self.pool_size)?)),
        }
    }

    /// Where the store is, for the start-up line (never the DSN).
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Sled => format!("sled at {}", self.path.display()),
            Backend::Postgres => format!(
                "PostgreSQL (connection string from {})",
                match &self.dsn_file {
                    Some(p) => p.display().to_string(),
                    None => format!("${}", self.dsn_env),
                }
            ),
        }
    }

    /// The store's checkpoint tuning from this section.
    pub fn tuning(&self) -> crate::store::sled_store::Tuning {
        crate::store::sled_store::Tuning {
            checkpoint_interval: std::time::Duration::from_millis(self.checkpoint_interval_ms),
            checkpoint_keys: self.checkpoint_keys,
            checkpoint_bytes: self.checkpoint_mib << 20,
            backpressure_wait: std::time::Duration::from_millis(self.backpressure_wait_ms),
            cache_bytes: self.cache_mib << 20,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        let t = crate::store::sled_store::Tuning::default();
        Self {
            backend: Backend::Sled,
            path: "data/sled".into(),
            dsn_env: "SIGIL_PG_DSN".into(),
            dsn_file: None,
            pool_size: 16,
            checkpoint_interval_ms: t.checkpoint_interval.as_millis() as u64,
            checkpoint_keys: t.checkpoint_keys,
            checkpoint_mib: t.checkpoint_bytes >> 20,
            backpressure_wait_ms: t.backpressure_wait.as_millis() as u64,
            cache_mib: t.cache_bytes >> 20,
        }
    }
}

pub mod pg_store;
#[cfg(test)]
mod sim;
pub mod sled_store;
mod wal;

/// The write-ahead log's on-disk framing (records, groups, whole files),
/// written and read exactly as the embedded store does. The store needs
/// none of this from outside; it is public so that fuzzing and property
/// tests reach the log's parser.
pub mod wal_format {
    pub use super::wal::{
        decode_group, decode_record, encode_group, encode_record, scan_file, FileScan, LoggedRecord, PostImage,
    };
}

use serde::Deserialize;
pub use sled_store::SledStore;
use std::path::PathBuf;

/// The tables Sigil stores records in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Factors, keyed `user_id 0x00 factor_id`.
    Factors,
    /// Open and consumed approval challenges, keyed by challenge id.
    Challenges,
    /// Issued approvals, keyed by `jti`.
    Approvals,
    /// Service metadata: global revocation epoch and suspension, log heads.
    Meta,
    /// Per-user protection state, keyed by user id.
    Users,
    /// Whitelisted withdrawal addresses, keyed `user 0x00 network 0x00 address`.
    Addresses,
    /// The event outbox: an append-only log keyed by sequence number
    /// (its oldest entries pruned by retention).
    Events,
    /// The audit log: an append-only, hash-chained log keyed by sequence
    /// number (its oldest entries pruned once archived).
    Audit,
    /// Signed audit checkpoints, keyed by the audit sequence they cover.
    Checkpoints,
    /// Server-side WebAuthn registration ceremonies, keyed by ceremony id.
    Ceremonies,
    /// Unique credential identifiers (WebAuthn credential ids, YubiKey
    /// public ids) → `user 0x00 factor_id`.
    Credentials,
    /// Staff members (approvers and admins with their WebAuthn keys),
    /// keyed by staff id.
    Staff,
    /// Requests held for a staff quorum or a delay (withdrawals and policy
    /// changes), keyed by request id.
    Quorum,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 13] = [
        Table::Factors,
        Table::Challenges,
        Table::Approvals,
        Table::Meta,
        Table::Users,
        Table::Addresses,
        Table::Events,
        Table::Audit,
        Table::Checkpoints,
        Table::Ceremonies,
        Table::Credentials,
        Table::Staff,
        Table::Quorum,
    ];

    /// The table's name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Factors => "factors",
            Table::Challenges => "challenges",
            Table::Approvals => "approvals",
            Table::Meta => "meta",
            Table::Users => "users",
            Table::Addresses => "addresses",
            Table::Events => "events",
            Table::Audit => "audit",
            Table::Checkpoints => "checkpoints",
            Table::Ceremonies => "ceremonies",
            Table::Credentials => "credentials",
            Table::Staff => "staff",
            Table::Quorum => "quorum",
        }
    }

    /// The table's one-byte tag (its position in [`Table::ALL`]), as the
    /// write-ahead log, backups and the expiry index store it.
    pub fn tag(self) -> u8 {
        Table::ALL.iter().position(|x| *x == self).unwrap_or(0) as u8
    }

    /// The table of a tag written by [`Table::tag`].
    pub fn from_tag(tag: u8) -> Option<Table> {
        Table::ALL.get(tag as usize).copied()
    }

    /// True for the append-only logs ([`Op::Append`] and [`Op::Prune`]
    /// targets).
    pub fn is_log(self) -> bool {
        matches!(self, Table::Events | Table::Audit)
    }
}

/// A stored value with its version. Versions start at 1 and grow by one on
/// every write of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Version of this value.
    pub version: u64,
    /// The record bytes.
    pub value: Vec<u8>,
}

/// A write's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this version.
    Version(u64),
}

/// One conditional write.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store `value` under `key` if `expect` holds.
    Put {
        /// Table written.
        table: Table,
        /// Record key.
        key: Vec<u8>,
        /// Record bytes.
        value: Vec<u8>,
        /// Condition.
        expect: Expect,
    },
    /// Write nothing, but fail the batch unless `key` still has `version`
    /// (or is absent, for version 0). Makes a decision depend atomically on
    /// a record read earlier (e.g. the revocation epoch).
    Check {
        /// Table read.
        table: Table,
        /// Record key.
        key: Vec<u8>,
        /// Version the record must still have; 0 = must be absent.
        version: u64,
    },
    /// Append `value` to a log table ([`Table::Events`] or [`Table::Audit`]).
    /// The backend assigns the next sequence number (gapless, in commit
    /// order) and chains the entry: it stores
    /// `SHA-256(previous hash || seq as 8 bytes BE || value)` before the value.
    Append {
        /// The log.
        log: Table,
        /// Entry bytes.
        value: Vec<u8>,
    },
    /// Deletes the oldest entries of a log ([`Table::Events`] or
    /// [`Table::Audit`]): those with sequence numbers in
    /// `after + 1 ..= through`. `after` must be the log's floor (the
    /// newest entry deleted so far, 0 if none: see [`log_floor`]); another
    /// floor fails the batch ([`StoreError::Conflict`]). The floor then
    /// names the newest entry deleted, with its chain hash, so the entries
    /// left still chain from it. Entries past the head are never touched;
    /// a range holding no entry deletes nothing and leaves the floor as it
    /// is. Every entry deleted is one write: the caller bounds the range.
    Prune {
        /// The log.
        log: Table,
        /// The log's floor, as read.
        after: u64,
        /// The newest sequence number to delete.
        through: u64,
    },
    /// Delete `key` if it exists with version `version`.
    Delete {
        /// Table written.
        table: Table,
        /// Record key.
        key: Vec<u8>,
        /// Version the record must have.
        version: u64,
    },
}

/// When [`Store::commit`] may return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Once the batch is durable (the default).
    #[default]
    Sync,
    /// As soon as the batch is applied: a crash right after may lose it.
    /// The batch still becomes durable before any later `Sync` commit
    /// returns (batches become durable in commit order), and within the
    /// backend's flush interval otherwise. Only for writes whose loss
    /// refuses something rather than allows it, such as a new challenge
    /// (lost, its answer is refused as unknown) and its audit entry.
    Deferred,
}

/// Writes applied together, atomically, or not at all.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
    /// When the commit may return.
    pub durability: Durability,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a write that creates `key` (it must not exist).
    pub fn insert(&mut self, table: Table, key: impl Into<Vec<u8>>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value,
            expect: Expect::Absent,
        });
        self
    }

    /// Adds a write that replaces `key` if it still has `version`.
    pub fn update(&mut self, table: Table, key: impl Into<Vec<u8>>, version: u64, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value,
            expect: Expect::Version(version),
        });
        self
    }

    /// Adds a delete of `key` if it still has `version`.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>, version: u64) -> &mut Self {
        self.ops.push(Op::Delete {
            table,
            key: key.into(),
            version,
        });
        self
    }

    /// Adds a check that `key` still has `version` (0: still absent).
    pub fn check(&mut self, table: Table, key: impl Into<Vec<u8>>, version: u64) -> &mut Self {
        self.ops.push(Op::Check {
            table,
            key: key.into(),
            version,
        });
        self
    }

    /// Adds an entry to a log.
    pub fn append(&mut self, log: Table, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Append { log, value });
        self
    }

    /// Adds the deletion of a log's entries `after + 1 ..= through`, where
    /// `after` is the log's floor as read (see [`Op::Prune`]).
    pub fn prune(&mut self, log: Table, after: u64, through: u64) -> &mut Self {
        self.ops.push(Op::Prune { log, after, through });
        self
    }

    /// Lets the commit return before the batch is durable (see
    /// [`Durability::Deferred`]).
    pub fn deferred(&mut self) -> &mut Self {
        self.durability = Durability::Deferred;
        self
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// One entry of an append-only log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Sequence number, from 1, gapless.
    pub seq: u64,
    /// The stored chain hash: SHA-256(previous hash || seq BE || value).
    pub hash: [u8; 32],
    /// The entry.
    pub value: Vec<u8>,
}

/// The chain hash of a log entry.
pub fn chain_hash(prev: &[u8; 32], seq: u64, value: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(value);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Walks a whole log and checks it: every hash chained on the one before,
/// from the log's floor (where pruning stopped; the start of the log if
/// nothing was pruned), and the head record agreeing with the last entry.
/// Sequence numbers go up by one; only the event log may jump forward,
/// where a restore set its cursor floor (the head then says the floor, with
/// the last entry's hash). Returns the head's sequence number and hash.
pub fn verify_log(store: &dyn Store, log: Table) -> Result<(u64, [u8; 32]), StoreError> {
    let jumps = log == Table::Events;
    let (mut after, mut prev) = log_floor(store, log)?;
    loop {
        let page = store.read_log(log, after, 10_000)?;
        if page.is_empty() {
            break;
        }
        for e in page {
            if e.seq <= after || (e.seq != after + 1 && !jumps) {
                return Err(StoreError::Corrupt(format!(
                    "{} log: entry {} follows {after}",
                    log.name(),
                    e.seq
                )));
            }
            if e.hash != chain_hash(&prev, e.seq, &e.value) {
                return Err(StoreError::Corrupt(format!(
                    "{} log: entry {} breaks the chain",
                    log.name(),
                    e.seq
                )));
            }
            prev = e.hash;
            after = e.seq;
        }
    }
    let (seq, hash) = store.log_head(log)?;
    if hash != prev || seq < after || (seq > after && !jumps) {
        return Err(StoreError::Corrupt(format!(
            "{} log: its head says {seq}, the entries end at {after}",
            log.name()
        )));
    }
    Ok((seq, hash))
}

/// Meta key of a log's head record.
pub fn log_head_key(log: Table) -> Vec<u8> {
    format!("loghead/{}", log.name()).into_bytes()
}

/// Meta key of a log's floor record: the newest entry pruned
/// ([`Op::Prune`]), stored like a head (`seq u64 BE | hash`).
pub fn log_floor_key(log: Table) -> Vec<u8> {
    format!("logfloor/{}", log.name()).into_bytes()
}

/// A log's floor: the sequence number and chain hash of the newest entry
/// pruned, (0, zeros) when none was. The entries left start after it and
/// chain from its hash.
pub fn log_floor(store: &dyn Store, log: Table) -> Result<(u64, [u8; 32]), StoreError> {
    let raw = store.get(Table::Meta, &log_floor_key(log))?;
    let (_, seq, hash) = decode_log_head(raw.as_ref())?;
    Ok((seq, hash))
}

/// A log head: its record version, the last sequence number and the
/// chain hash.
pub type LogHead = (u64, u64, [u8; 32]);

/// A log head record (`seq u64 BE | hash`, stored under [`log_head_key`]);
/// zeros for a log with no entry yet.
pub fn decode_log_head(raw: Option<&Versioned>) -> Result<LogHead, StoreError> {
    match raw {
        None => Ok((0, 0, [0u8; 32])),
        Some(v) if v.value.len() == 40 => {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&v.value[..8]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&v.value[8..]);
            Ok((v.version, u64::from_be_bytes(seq), hash))
        }
        Some(_) => Err(StoreError::Corrupt("log head has the wrong length".into())),
    }
}

/// What a store operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A condition of the batch did not hold; nothing was written.
    Conflict,
    /// The backend cannot be reached or refused to write durably.
    Unavailable(String),
    /// A stored value is not in the expected format.
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("conditional write conflicted"),
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
            StoreError::Corrupt(m) => write!(f, "store corrupt: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        use crate::error::Error;
        match e {
            StoreError::Conflict => {
                Error::Conflict("the record changed concurrently; nothing was written, retry".into())
            }
            StoreError::Unavailable(m) => Error::Unavailable(format!("store unavailable: {m}")),
            StoreError::Corrupt(m) => Error::Internal(format!("store data unusable: {m}")),
        }
    }
}

/// Waits for a backend's commits to become durable (see [`Ticket`]).
pub trait DurableWait: Send + Sync {
    /// Blocks until the commit with position `lsn` is durable.
    fn wait(&self, lsn: u64) -> Result<(), StoreError>;
    /// Completes once the commit with position `lsn` is durable, without
    /// blocking a thread.
    fn wait_async(&self, lsn: u64) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>>;
}

/// A promise that commits made so far become durable: see
/// [`Store::commit_pending`]. Tickets of one store merge into the newest.
#[derive(Clone, Default)]
pub struct Ticket {
    pending: Option<(u64, Arc<dyn DurableWait>)>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pending {
            Some((lsn, _)) => write!(f, "Ticket(pending {lsn})"),
            None => f.write_str("Ticket(ready)"),
        }
    }
}

impl Ticket {
    /// A ticket with nothing to wait for.
    pub fn ready() -> Self {
        Self::default()
    }

    /// A ticket for the commit at `lsn` of the backend behind `waiter`.
    pub fn pending(lsn: u64, waiter: Arc<dyn DurableWait>) -> Self {
        Self {
            pending: Some((lsn, waiter)),
        }
    }

    /// Waits for the newer of the two (commits of one store become durable
    /// in order, so the newer covers both).
    pub fn merge(&mut self, other: Ticket) {
        match (&self.pending, &other.pending) {
            (_, None) => {}
            (Some((a, _)), Some((b, _))) if a >= b => {}
            _ => *self = other,
        }
    }

    /// True when there is nothing to wait for.
    pub fn is_ready(&self) -> bool {
        self.pending.is_none()
    }

    /// Blocks until the commits behind this ticket are durable.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.pending {
            Some((lsn, w)) => w.wait(lsn),
            None => Ok(()),
        }
    }

    /// Completes once the commits behind this ticket are durable.
    pub async fn durable(self) -> Result<(), StoreError> {
        match self.pending {
            Some((lsn, w)) => w.wait_async(lsn).await,
            None => Ok(()),
        }
    }
}

thread_local! {
    static COLLECTING: std::cell::RefCell<Option<Ticket>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on this thread with durability waits collected instead of
/// made: every commit `f` makes through [`commit_collected`] returns once
/// applied (never waiting for room in the store), and the returned ticket
/// completes when all its [`Durability::Sync`] ones are durable. The caller must wait for the
/// ticket before anything `f` decided (its result, success or error)
/// leaves the service. `f` must not yield to other work on this thread.
pub fn collect_durability<T>(f: impl FnOnce() -> T) -> (T, Ticket) {
    struct Reset(Option<Ticket>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            COLLECTING.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = COLLECTING.with(|c| c.borrow_mut().replace(Ticket::ready()));
    let reset = Reset(prev);
    let out = f();
    let ticket = COLLECTING.with(|c| c.borrow_mut().take()).unwrap_or_default();
    drop(reset);
    (out, ticket)
}

/// Commits `batch`: durably, or, inside [`collect_durability`], applied
/// now with its durability wait handed to the collector.
pub fn commit_collected(store: &dyn Store, batch: &Batch) -> Result<Vec<u64>, StoreError> {
    // Collecting means running on an async worker: every commit, deferred
    // ones too, takes the path that never waits for room in the store.
    // A deferred commit's ticket is ready: nothing waits for its sync.
    if !COLLECTING.with(|c| c.borrow().is_some()) {
        return store.commit(batch);
    }
    let (seqs, ticket) = store.commit_pending(batch)?;
    COLLECTING.with(|c| {
        if let Some(t) = c.borrow_mut().as_mut() {
            t.merge(ticket);
        }
    });
    Ok(seqs)
}

/// The storage interface every backend implements.
pub trait Store: Send + Sync {
    /// Reads one record.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Versioned>, StoreError>;
    /// Reads every record whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError>;
    /// Reads up to `limit` records with keys after `after` (from the first
    /// key when `None`), in key order: a page of a table too large to read
    /// at once. Fewer than `limit` (none at the end) means the table has no
    /// more; continue after the last key returned. Each page is consistent
    /// in itself; records written between pages may or may not be seen.
    fn scan_page(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError>;
    /// Applies `batch` atomically and durably, or returns an error having
    /// written nothing. Returns the sequence numbers assigned to the batch's
    /// [`Op::Append`]s, in order.
    fn commit(&self, batch: &Batch) -> Result<Vec<u64>, StoreError>;
    /// Applies `batch` atomically like [`Store::commit`], but may return
    /// before it is durable, with a [`Ticket`] that completes once it is.
    /// Nothing that depends on the batch may leave the service before the
    /// ticket completes. Backends without a cheaper path commit durably
    /// and return a completed ticket.
    fn commit_pending(&self, batch: &Batch) -> Result<(Vec<u64>, Ticket), StoreError> {
        Ok((self.commit(batch)?, Ticket::ready()))
    }
    /// Log entries with sequence number > `after`, at most `limit`, in order:
    /// (seq, chained hash, value).
    fn read_log(&self, log: Table, after: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError>;
    /// The newest (seq, hash) of a log; (0, zeros) when empty.
    fn log_head(&self, log: Table) -> Result<(u64, [u8; 32]), StoreError>;
    /// Number of records in a table (operations and tests).
    fn len(&self, table: Table) -> Result<usize, StoreError>;
    /// Every record of every table, as of one instant: no commit is half
    /// in it (writers wait while it is taken). Log entries come as
    /// `hash || entry` with version 1, as stored.
    fn snapshot(&self) -> Result<Vec<(Table, Vec<u8>, Versioned)>, StoreError>;
    /// True when calls block their thread on network I/O (a database
    /// client): they must then run on blocking threads, never on the async
    /// workers.
    fn blocks_caller(&self) -> bool {
        false
    }

    /// Whether the store can serve now (a readiness check, cheap enough to
    /// run every second): `Err` while it refuses writes (a failed
    /// write-ahead log) or cannot reach its database.
    fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
