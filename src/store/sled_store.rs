//! The embedded backend: sled, behind a write-ahead log.
//!
//! Each [`Table`] is a sled tree; each value is stored as an 8-byte
//! big-endian version followed by the record bytes, which sled keeps
//! compressed against a fixed dictionary where that makes them smaller
//! ([`super::packed`]; stores that may hold such values are format 2).
//! The logs, the expiry index, the challenges and approvals with timed
//! ids, and users with their factors are not kept one key per entry but in
//! blocks ([`super::log_blocks`]), per-second buckets
//! ([`super::expiry_blocks`]), per-second groups ([`super::record_groups`])
//! and accounts ([`super::account_groups`]); stores keeping the index so
//! are format 3, format 4 once log blocks may leave out the chain hashes
//! they can derive, and format 5 with the groups and accounts.
//!
//! The durable path does not go through sled. A [`Batch`] is decided under
//! one write lock against the current state, becomes one record of
//! post-images in the [write-ahead log](super::wal) and is applied to an
//! in-memory table of recent writes (the *active* memtable); [`Store::commit`]
//! returns once that record is synced. Group commit lets one `fdatasync`
//! cover every commit waiting for it. Reads look in the active memtable,
//! then in the *frozen* one, then in sled.
//!
//! A background checkpointer, about once a second (sooner when the active
//! memtable grows large): freezes the active memtable while the log moves on
//! to a new file, writes the frozen entries to sled key by key (not as one
//! sled batch, whose global lock would hold back every read meanwhile; see
//! `write_to_sled`) and then the log position they reach (in a tree of the
//! store's own), runs a **durability barrier** — sled's flush, which on Linux only starts
//! write-back with `sync_file_range`, then an `fsync` of every sled file
//! and directory — records that position in the marker
//! file `sigil-store.json` (written, synced, renamed, directory synced), and
//! only then deletes the older log files and drops the frozen memtable.
//! Opening the store replays whatever log files remain into sled first
//! (post-images in order, so replaying a record sled already has is
//! harmless), with the same barrier and marker before those files go.
//!
//! Opening refuses, before writing anything: a directory holding something
//! other than a Sigil store; a marker or log of a newer format; a log that
//! is damaged rather than torn (the exact rule is in the docs of
//! `src/store/wal.rs`). After opening sled it refuses a sled that holds an
//! older position than the marker says was made durable (a truncated or
//! rolled-back sled file), or one the log does not follow on from.
//!
//! A failed log write or sync fails the store closed: every later call
//! returns [`StoreError::Unavailable`] until the service is restarted and the
//! log replayed.
//!
//! Reads may see a commit whose record is still being synced (and which a
//! crash at that moment would lose). Nothing is acknowledged on such a read:
//! every decision is itself a commit, which is acknowledged only once its
//! own record is durable, and records become durable in order, so a commit
//! is never acknowledged before one it read from.
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::disk::{Disk, OsDisk};
use super::wal::{PostImage, Wal};
use super::{account_groups, expiry_blocks, log_blocks, packed, record_groups};
use super::{
    chain_hash, decode_log_head, log_floor_key, log_head_key, Batch, Durability, DurableWait, Expect, LogEntry, Op,
    Store, StoreError, Table, Ticket, Versioned,
};

/// Recent writes of one table: key → stored bytes, or `None` for deleted.
type MemTable = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// One memtable per table, in [`Table::ALL`] order.
type Tables = Vec<MemTable>;

fn empty_tables() -> Tables {
    (0..Table::ALL.len()).map(|_| MemTable::new()).collect()
}

/// When the checkpointer runs.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// At the latest this long after a write.
    pub checkpoint_interval: Duration,
    /// Or as soon as the active memtable holds this many keys.
    pub checkpoint_keys: usize,
    /// Or this many bytes of keys and values.
    pub checkpoint_bytes: usize,
    /// How long a commit waits for a checkpoint once the active memtable is
    /// far past a trigger (see `BACKPRESSURE_FACTOR`) before it is refused.
    pub backpressure_wait: Duration,
    /// The most memory sled's page cache may use, in bytes (24 MiB; sled's
    /// own default is 1 GiB). The cache fills as the store grows. sled also
    /// keeps a table of every page of the store in memory, which grows with
    /// the store (about 80 MiB at 1.1 GiB on disk), whatever this says.
    pub cache_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_keys: 50_000,
            checkpoint_bytes: 16 << 20,
            backpressure_wait: Duration::from_secs(5),
            cache_bytes: 24 << 20,
        }
    }
}

/// Commits wait (up to `Tuning::backpressure_wait`, then are refused) once
/// the active memtable is this many times past a checkpoint trigger:
/// checkpoints are failing or far behind, and memory must not grow without
/// bound.
const BACKPRESSURE_FACTOR: usize = 4;

/// What checkpoints have cost so far (see [`SledStore::checkpoint_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CheckpointStats {
    /// Checkpoints that wrote something into sled.
    pub checkpoints: u64,
    /// Time spent writing records into sled (sled's own buffers).
    pub apply: Duration,
    /// Time spent in the durability barrier: sled's flush, then an fsync
    /// of every sled file and directory.
    pub barrier: Duration,
    /// Time spent recording the applied position (marker file: write,
    /// sync, rename, directory sync) and deleting the covered log files.
    pub marker_and_removal: Duration,
}

/// sled-backed [`Store`].
pub struct SledStore {
    inner: Arc<Inner>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    /// Where checkpoints put the log's records (sled).
    base: Box<dyn Base>,
    /// The file system of the log and the marker file.
    disk: Arc<dyn Disk>,
    /// The store directory.
    path: PathBuf,
    mem: RwLock<Mem>,
    wal: Arc<Wal>,
    tuning: Tuning,
    /// Wakes the checkpointer early (memtable large, or shutting down).
    wake: Mutex<bool>,
    wake_cv: Condvar,
    stop: AtomicBool,
    /// One checkpoint at a time (the checkpointer, or a direct call).
    checkpointing: Mutex<()>,
    /// What checkpoints cost.
    stats: Mutex<CheckpointStats>,
    /// Counts memtable freezes; commits held back by back-pressure wait on it.
    freezes: Mutex<u64>,
    frozen_cv: Condvar,
}

struct Mem {
    active: Tables,
    active_keys: usize,
    /// Bytes of keys and values written to `active` (overwrites counted again).
    active_bytes: usize,
    frozen: Arc<Tables>,
    /// The LSN of the newest record in `frozen`.
    frozen_lsn: u64,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`, replaying any
    /// write-ahead log left by a previous run.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Tuning::default())
    }

    /// [`SledStore::open`] with explicit checkpoint tuning.
    pub fn open_with(path: &Path, tuning: Tuning) -> Result<Self, StoreError> {
        let disk: Arc<dyn Disk> = Arc::new(OsDisk);
        let base = || -> Result<Box<dyn Base>, StoreError> { Ok(Box::new(SledBase::open(path, tuning.cache_bytes)?)) };
        Self::open_parts(path, tuning, disk, base, super::wal::PREPARE_MIN)
    }

    /// Opens the store in `path` on these parts: the log's file system and
    /// the main store. The real store is [`OsDisk`] and sled; the crash
    /// simulator puts models under both.
    pub(crate) fn open_parts(
        path: &Path,
        tuning: Tuning,
        disk: Arc<dyn Disk>,
        open_base: impl FnOnce() -> Result<Box<dyn Base>, StoreError>,
        prepare_min: u64,
    ) -> Result<Self, StoreError> {
        // Everything that can be checked without writing comes first: a
        // store refused for these reasons is left exactly as it was.
        check_dir(disk.as_ref(), path)?;
        let found = read_marker(disk.as_ref(), path)?;
        let mut marker = found.as_ref().map(|m| m.applied_lsn);
        let fresh = !disk.exists(path) || disk.list(path).map(|n| n.is_empty()).unwrap_or(false);
        if fresh {
            // Marked as Sigil's before sled creates anything in it.
            write_marker(disk.as_ref(), path, 0)?;
            marker = Some(0);
        }
        let wal_dir = path.join("wal");
        let replayed = if disk.exists(&wal_dir) {
            Wal::replay(disk.as_ref(), &wal_dir)?
        } else {
            super::wal::Replayed::default()
        };
        let base = open_base()?;
        let applied = base.applied_lsn()?;
        if let Some(m) = marker.filter(|m| applied.unwrap_or(0) < *m) {
            return Err(StoreError::Corrupt(format!(
                "the sled files in {} hold writes only up to log position {} but the store's last \
                 checkpoint made {m} durable: they were truncated, replaced or rolled back. Refusing to \
                 start on missing data (the write-ahead log was left as it is); restore the store from a backup \
                 (`sigil restore`)",
                path.display(),
                applied.unwrap_or(0)
            )));
        }
        disk.create_dir_all(&wal_dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", wal_dir.display())))?;
        let (records, files, dropped) = (replayed.records, replayed.files, replayed.dropped_bytes);
        if let (Some(first), Some(a)) = (records.first(), applied) {
            if first.lsn > a + 1 {
                return Err(StoreError::Corrupt(format!(
                    "the write-ahead log in {} starts at record {} but sled holds records only up to {a}: \
                     the records between are missing. Refusing to start (nothing was changed); restore the \
                     store from a backup (`sigil restore`)",
                    wal_dir.display(),
                    first.lsn
                )));
            }
        }
        let last_lsn = records
            .last()
            .map(|r| r.lsn)
            .unwrap_or(0)
            .max(applied.unwrap_or(0))
            .max(marker.unwrap_or(0));
        let records_replayed = !records.is_empty();
        if !fresh && found.as_ref().is_none_or(|m| m.format < STORE_FORMAT) {
            // Marked with this format after every check and before anything
            // of it (a packed value) is written, so that an older build
            // refuses the store rather than misread it; the position stays.
            write_marker(disk.as_ref(), path, marker.unwrap_or(0))?;
            marker = Some(marker.unwrap_or(0));
        }
        base.upgrade()?;
        if records_replayed {
            let mut tables = empty_tables();
            for r in records {
                for (t, k, v) in r.ops {
                    tables[t as usize].insert(k, v);
                }
            }
            base.apply(&tables, last_lsn)?;
            base.barrier()?;
            tracing::info!(
                files = files.len(),
                last_lsn,
                dropped_torn_bytes = dropped,
                "replayed the write-ahead log left by the previous run into the store"
            );
        }
        // Recorded before the log files covering it go (unless the marker
        // already says so and no record was replayed).
        if records_replayed || marker != Some(last_lsn) {
            write_marker(disk.as_ref(), path, last_lsn)?;
        }
        let wal = Wal::start(disk.clone(), &wal_dir, &files, last_lsn, prepare_min)?;
        let inner = Arc::new(Inner {
            base,
            disk,
            path: path.to_path_buf(),
            mem: RwLock::new(Mem {
                active: empty_tables(),
                active_keys: 0,
                active_bytes: 0,
                frozen: Arc::new(empty_tables()),
                frozen_lsn: 0,
            }),
            wal: Arc::new(wal),
            tuning,
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            checkpointing: Mutex::new(()),
            stats: Mutex::new(CheckpointStats::default()),
            freezes: Mutex::new(0),
            frozen_cv: Condvar::new(),
        });
        let bg = inner.clone();
        let handle = std::thread::Builder::new()
            .name("sigil-checkpoint".into())
            .spawn(move || bg.run_checkpointer())
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store checkpointer: {e}")))?;
        let wal = inner.wal.clone();
        let syncer = match std::thread::Builder::new()
            .name("sigil-wal-sync".into())
            .spawn(move || wal.run_syncer())
        {
            Ok(h) => h,
            Err(e) => {
                inner.stop.store(true, Ordering::SeqCst);
                inner.wake_checkpointer();
                let _ = handle.join();
                return Err(StoreError::Unavailable(format!(
                    "cannot start the write-ahead log's sync thread: {e}"
                )));
            }
        };
        Ok(Self {
            inner,
            checkpointer: Mutex::new(Some(handle)),
            syncer: Mutex::new(Some(syncer)),
        })
    }

    /// Creates a store at `path` (which must not exist) holding exactly
    /// `records`, durably.
    pub fn create_from(path: &Path, records: &[(Table, Vec<u8>, Versioned)]) -> Result<SledStore, StoreError> {
        if path.exists() {
            return Err(StoreError::Unavailable(format!("{} already exists", path.display())));
        }
        let s = SledStore::open(path)?;
        let mut tables = empty_tables();
        for (t, k, v) in records {
            tables[*t as usize].insert(k.clone(), Some(encode(v.version, &v.value)));
        }
        let lsn = s.inner.wal.last_lsn()?;
        s.inner.base.apply(&tables, lsn)?;
        s.inner.base.barrier()?;
        Ok(s)
    }

    /// What the checkpoints of this store have cost so far.
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        self.inner.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Writes everything committed so far into sled and flushes it (the
    /// checkpointer does this on its own; tests and shutdown call it).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.checkpoint()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake_checkpointer();
        if let Ok(mut h) = self.checkpointer.lock() {
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
        // Deferred commits made after the last checkpoint's rotation.
        let res = self.inner.wal.last_lsn().and_then(|l| self.inner.wal.wait_durable(l));
        if let Err(e) = res {
            tracing::error!(error = %e, "could not make the last deferred commits durable at shutdown");
        }
        self.inner.wal.stop_syncer();
        if let Ok(mut h) = self.syncer.lock() {
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
        // What the log prepared for load that has ended.
        match self.inner.wal.settle() {
            Ok(()) => tracing::info!("store closed"),
            Err(e) => {
                tracing::warn!(error = %e, "could not trim the write-ahead log at shutdown (the next start does)")
            }
        }
    }
}

/// How often sled's own flusher thread runs. The checkpointer makes every
/// checkpoint durable itself (`flush` and the barrier); the flusher is
/// there for what only it does in sled 0.34: cleaning segments, moving the
/// pages still live out of a segment mostly superseded so that the segment
/// can be reused (for at most half of each period). Without it sled
/// cleaned only as pages happened to be rewritten (the load generator's
/// full run, once stopped: 294 MB without, 276 MB with).
const SLED_FLUSH_MS: u64 = 1000;

/// How long opening waits for sled's lock on the store directory.
#[cfg(not(test))]
const LOCK_WAIT: Duration = Duration::from_secs(5);
#[cfg(test)]
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Opens sled at `path`. Its lock on the directory can outlive a store
/// dropped a moment ago (sled's own IO threads let go of it a little
/// later), so a held lock is retried for up to [`LOCK_WAIT`]; another
/// process holding it is then reported.
fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let res = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(SLED_FLUSH_MS))
            .open();
        match res {
            Ok(db) => return Ok(db),
            Err(e) if lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                let hint = if lock_held(&e) {
                    " (is another sigild or sigil command using this store?)"
                } else {
                    ""
                };
                return Err(StoreError::Unavailable(format!(
                    "cannot open sled store at {}: {e}{hint}",
                    path.display()
                )));
            }
        }
    }
}

/// Keys and stored bytes, in key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The main store that checkpoints write the log's records into: sled, or
/// a model of it in the crash simulator. Values are stored bytes (version
/// header and record).
pub(crate) trait Base: Send + Sync {
    /// The stored bytes of a key.
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries with keys from `from` on, in key order.
    fn range_from(&self, t: Table, from: &[u8], limit: usize) -> Result<Entries, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, t: Table, prefix: &[u8]) -> Result<Entries, StoreError>;
    /// Every entry with a key from `from` through `through`, in key order.
    fn range(&self, t: Table, from: &[u8], through: &[u8]) -> Result<Entries, StoreError>;
    /// Every key of a table.
    fn keys(&self, t: Table) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Writes memtables (`None` deletes) and records that the log is
    /// applied up to `lsn`. Not durable before [`Base::barrier`].
    fn apply(&self, tables: &Tables, lsn: u64) -> Result<(), StoreError>;
    /// Makes everything applied so far durable, against power loss.
    fn barrier(&self) -> Result<(), StoreError>;
    /// The log position applied so far (None for a store written before
    /// positions were recorded).
    fn applied_lsn(&self) -> Result<Option<u64>, StoreError>;
    /// Brings what an older format left into this one; called on every
    /// open, after every check and before anything else is written. A
    /// crash part way is finished by the next open. Nothing by default.
    fn upgrade(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Name of the sled tree holding the store's own bookkeeping.
const STORE_TREE: &str = "__sigil_store";
/// Key of the applied log position in that tree.
const APPLIED_KEY: &[u8] = b"applied_lsn";
/// Name of the marker file that makes a directory a Sigil store.
pub const MARKER: &str = "sigil-store.json";
/// The marker while it is being written.
const MARKER_TMP: &str = "sigil-store.json.tmp";
/// The store layout this code writes: 2 since sled may hold packed values
/// ([`super::packed`]), which a build reading format 1 would misread; 3
/// since the expiry index is kept in buckets ([`super::expiry_blocks`]),
/// which a build reading format 2 would not see; 4 since log blocks may
/// leave out the chain hashes they can derive ([`super::log_blocks`]),
/// which a build reading format 3 would refuse as damage; 5 since
/// challenges and approvals with timed ids are kept in groups
/// ([`super::record_groups`]) and users with their factors in accounts
/// ([`super::account_groups`]), which a build reading format 4 would not
/// see.
const STORE_FORMAT: u32 = 5;
/// How many decoded groups `SledBase` keeps for commits' reads (the
/// current second's challenges and approvals fall in up to 64 groups each)
/// ...
const KEPT_GROUPS: usize = 512;
/// ... and about how many bytes of keys and values they may hold (an
/// expiry bucket of a busy second holds thousands of entries).
const KEPT_BYTES: usize = 8 << 20;
/// How many decoded accounts `SledBase` keeps for reads: an approval's
/// reads of its user's account come within milliseconds of each other,
/// a fraction of a second of approvals at thousands a second...
const KEPT_ACCOUNTS: usize = 1024;
/// ... and about how many bytes they may hold.
const KEPT_ACCOUNT_BYTES: usize = 1 << 20;
/// The sled tree of the expiry index's buckets.
const EXPIRY_TREE: &str = "meta.expiry";
/// The sled tree of users and their factors ([`account_groups`]).
const ACCOUNTS_TREE: &str = "accounts";

/// How sled keeps the keys of a table that it holds in groups rather than
/// one sled key each: the expiry index of `meta`, a bucket per second
/// ([`expiry_blocks`]), and the challenges and approvals with timed ids, a
/// group per second and first random character ([`record_groups`]). Keys
/// the grouping does not claim stay in the table's own tree; either way a
/// group's number (its sled key, 8 bytes big-endian) grows with its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouping {
    Expiry,
    Timed(&'static [u8]),
}

impl Grouping {
    /// The grouping of table `t`'s keys, if sled groups any.
    fn of(t: Table) -> Option<Grouping> {
        if t == Table::Meta {
            return Some(Grouping::Expiry);
        }
        record_groups::id_prefix(t).map(Grouping::Timed)
    }

    /// The sled tree of table `t`'s groups.
    fn tree_name(self, t: Table) -> String {
        match self {
            Grouping::Expiry => EXPIRY_TREE.to_string(),
            Grouping::Timed(_) => format!("{}.groups", t.name()),
        }
    }

    /// The group holding `key`, if the grouping claims it.
    fn group_of(self, key: &[u8]) -> Option<u64> {
        match self {
            Grouping::Expiry => expiry_blocks::bucket_of(key),
            Grouping::Timed(p) => record_groups::group_of(p, key),
        }
    }

    /// The first group that can hold a key `>= from`.
    fn first_from(self, from: &[u8]) -> Option<u64> {
        match self {
            Grouping::Expiry => expiry_blocks::first_bucket_from(from),
            Grouping::Timed(p) => record_groups::first_group_from(p, from),
        }
    }

    /// The last group that can hold a key `<= through`.
    fn last_through(self, through: &[u8]) -> Option<u64> {
        match self {
            Grouping::Expiry => expiry_blocks::last_bucket_through(through),
            Grouping::Timed(p) => record_groups::last_group_through(p, through),
        }
    }

    /// The groups that can hold a key starting with `prefix`.
    fn with_prefix(self, prefix: &[u8]) -> Option<(u64, u64)> {
        match self {
            Grouping::Expiry => expiry_blocks::buckets_with_prefix(prefix),
            Grouping::Timed(p) => record_groups::groups_with_prefix(p, prefix),
        }
    }

    /// Group `id` read from sled.
    fn decode(self, id: u64, raw: &[u8]) -> Result<expiry_blocks::Bucket, StoreError> {
        match self {
            Grouping::Expiry => expiry_blocks::decode(id, raw),
            Grouping::Timed(p) => record_groups::decode(p, id, raw),
        }
    }

    /// Group `id` as sled holds it.
    fn encode(self, id: u64, group: &expiry_blocks::Bucket) -> Result<Vec<u8>, StoreError> {
        match self {
            Grouping::Expiry => expiry_blocks::encode(id, group),
            Grouping::Timed(p) => record_groups::encode(p, id, group),
        }
    }
}

/// Values decoded for reads, by where they were read from, each with the
/// bytes it was decoded from: an answer only while sled holds those very
/// bytes. Bounded in count and in bytes; what eviction keeps is the newer
/// half.
struct Kept<K, V> {
    items: std::collections::HashMap<K, KeptItem<V>>,
    /// Counts insertions: the newer half is what eviction keeps.
    age: u64,
    /// Bytes of every kept value, as their keepers counted them.
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

/// A decoded value and the bytes it was decoded from.
struct KeptItem<V> {
    age: u64,
    bytes: usize,
    raw: sled::IVec,
    value: Arc<V>,
}

impl<K: std::hash::Hash + Eq, V> Kept<K, V> {
    fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            items: std::collections::HashMap::new(),
            age: 0,
            bytes: 0,
            max_items,
            max_bytes,
        }
    }

    /// The value `at` decoded from exactly `raw`, if kept.
    fn get(&self, at: &K, raw: &sled::IVec) -> Option<Arc<V>> {
        self.items
            .get(at)
            .filter(|k| k.raw == *raw)
            .map(|k| Arc::clone(&k.value))
    }

    /// Keeps `value` (decoded from `raw`, about `bytes` in memory) as `at`,
    /// first letting the older half go when the limits would be passed.
    fn keep(&mut self, at: K, raw: sled::IVec, value: Arc<V>, bytes: usize) {
        if let Some(old) = self.items.remove(&at) {
            self.bytes -= old.bytes;
        }
        while !self.items.is_empty() && (self.items.len() >= self.max_items || self.bytes + bytes > self.max_bytes) {
            let mut ages: Vec<u64> = self.items.values().map(|k| k.age).collect();
            ages.sort_unstable();
            let median = ages[ages.len() / 2];
            self.items.retain(|_, k| k.age > median);
            self.bytes = self.items.values().map(|k| k.bytes).sum();
        }
        self.age += 1;
        self.bytes += bytes;
        self.items.insert(
            at,
            KeptItem {
                age: self.age,
                bytes,
                raw,
                value,
            },
        );
    }
}

/// What `raw`, read from sled at `at`, decodes to: the kept value while
/// sled still holds those bytes, else decoded now (and kept).
fn kept_or_decode<K: std::hash::Hash + Eq, V>(
    kept: &Mutex<Kept<K, V>>,
    at: K,
    raw: sled::IVec,
    decode: impl FnOnce(&[u8]) -> Result<V, StoreError>,
    size: impl FnOnce(&V) -> usize,
) -> Result<Arc<V>, StoreError> {
    if let Some(v) = kept.lock().ok().and_then(|kept| kept.get(&at, &raw)) {
        return Ok(v);
    }
    let v = Arc::new(decode(&raw)?);
    let bytes = size(&v);
    if let Ok(mut kept) = kept.lock() {
        kept.keep(at, raw, Arc::clone(&v), bytes);
    }
    Ok(v)
}

/// sled as the main store.
struct SledBase {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// The groups of the tables sled keeps in groups, in [`Table::ALL`]
    /// order (None for the others).
    groups: Vec<Option<(Grouping, sled::Tree)>>,
    /// The groups `get` decoded last, by (table, group).
    kept: Mutex<Kept<(usize, u64), expiry_blocks::Bucket>>,
    /// The accounts reads decoded last, by account.
    kept_accounts: Mutex<Kept<Vec<u8>, account_groups::Account>>,
    /// Users and their factors, an account per user.
    accounts: sled::Tree,
    own: sled::Tree,
    path: PathBuf,
}

impl SledBase {
    fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = open_sled(path, cache_bytes)?;
        let mut trees = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            trees.push(db.open_tree(tree_name(t)).map_err(unavailable)?);
        }
        let own = db.open_tree(STORE_TREE).map_err(unavailable)?;
        let mut groups = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            groups.push(match Grouping::of(t) {
                Some(g) => Some((g, db.open_tree(g.tree_name(t)).map_err(unavailable)?)),
                None => None,
            });
        }
        let accounts = db.open_tree(ACCOUNTS_TREE).map_err(unavailable)?;
        Ok(Self {
            db,
            trees,
            groups,
            kept: Mutex::new(Kept::new(KEPT_GROUPS, KEPT_BYTES)),
            kept_accounts: Mutex::new(Kept::new(KEPT_ACCOUNTS, KEPT_ACCOUNT_BYTES)),
            accounts,
            own,
            path: path.to_path_buf(),
        })
    }

    /// Account `account`, if sled holds one. An approval reads its user's
    /// account several times (the user, the factors, the versions its
    /// commits check), so the accounts decoded last are kept and used again
    /// while sled holds the very bytes they were decoded from.
    fn account(&self, account: &[u8]) -> Result<Option<Arc<account_groups::Account>>, StoreError> {
        let Some(raw) = self.accounts.get(account).map_err(unavailable)? else {
            return Ok(None);
        };
        kept_or_decode(
            &self.kept_accounts,
            account.to_vec(),
            raw,
            |raw| account_groups::decode(account, raw),
            |a| account.len() + a.bytes(),
        )
        .map(Some)
    }

    /// The entries of table `t` in the accounts `items` reads, whose keys
    /// pass `keep`, in key order, at most `limit`.
    fn account_entries<I>(
        &self,
        t: Table,
        items: I,
        limit: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Entries, StoreError>
    where
        I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    {
        let read = |k: &[u8], raw: &[u8]| Ok(account_groups::decode(k, raw)?.entries(t, k));
        entries_of_groups(items, limit, read, keep)
    }

    /// Users and factors kept one key each by stores of format 4 and older
    /// are moved into accounts: copied a chunk at a time, made durable, and
    /// only then removed from their trees. A crash before the removal is
    /// done leaves the rest where it was, and the next open copies it again
    /// (nothing writes those records meanwhile: the move comes before the
    /// log's replay and before any request).
    fn upgrade_accounts(&self) -> Result<(), StoreError> {
        let empty = MemTable::new();
        let mut moved = 0;
        for t in [Table::Users, Table::Factors] {
            let own = &self.trees[t as usize];
            moved += copy_in_chunks(
                own,
                b"",
                |k| account_groups::account_of(t, k).is_some(),
                |chunk| {
                    let (users, factors) = if t == Table::Users {
                        (chunk, &empty)
                    } else {
                        (&empty, chunk)
                    };
                    write_accounts(&self.accounts, users, factors)
                },
            )?;
        }
        if moved == 0 {
            return Ok(());
        }
        self.barrier()?;
        for t in [Table::Users, Table::Factors] {
            remove_copied(&self.trees[t as usize], b"", |k| {
                account_groups::account_of(t, k).is_some()
            })?;
        }
        self.barrier()?;
        tracing::info!(
            records = moved,
            "moved users and factors into accounts (store format 5)"
        );
        Ok(())
    }

    /// How sled groups table `t`'s keys, and the tree of its groups.
    fn grouped(&self, t: Table) -> Option<(Grouping, &sled::Tree)> {
        self.groups[t as usize].as_ref().map(|(g, tree)| (*g, tree))
    }

    /// The log entries with sequence numbers `lo..=hi` whose keys pass
    /// `keep`, in order, at most `limit`.
    fn log_entries(
        &self,
        t: Table,
        lo: u64,
        hi: u64,
        limit: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Entries, StoreError> {
        if lo > hi {
            return Ok(Vec::new());
        }
        let (first, last) = (log_blocks::block_of(lo), log_blocks::block_of(hi));
        let read = |k: &[u8], raw: &[u8]| -> Result<Entries, StoreError> {
            let block = read_block(t, k, raw)?;
            Ok(block
                .range(lo..=hi)
                .map(|(seq, v)| (seq.to_be_bytes().to_vec(), v.clone()))
                .collect())
        };
        grouped_entries(&self.trees[t as usize], first, last, limit, read, keep)
    }

    /// One key of group `id` of table `t`. Every commit reads the keys it
    /// writes (their versions), under the store's write lock: a new
    /// challenge, approval or expiry index entry, or the sweep's deletions,
    /// a second's keys one after another, in groups a checkpoint of that
    /// second may already have written. Decoding a group for each would
    /// hold every commit back (about a second for the sweep's page of 1,000
    /// deletions from one expiry bucket), so the groups decoded last are
    /// kept and used again while sled holds the very bytes they were
    /// decoded from.
    fn group_get(
        &self,
        t: Table,
        g: Grouping,
        tree: &sled::Tree,
        id: u64,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(raw) = tree.get(id.to_be_bytes()).map_err(unavailable)? else {
            return Ok(None);
        };
        let group = kept_or_decode(
            &self.kept,
            (t as usize, id),
            raw,
            |raw| g.decode(id, raw),
            |group| group.iter().map(|(k, v)| k.len() + v.len() + 64).sum(),
        )?;
        Ok(group.get(key).cloned())
    }

    /// The entries of table `t`'s groups `lo..=hi` whose keys pass `keep`,
    /// in key order, at most `limit`.
    fn group_entries(
        &self,
        g: Grouping,
        tree: &sled::Tree,
        lo: u64,
        hi: u64,
        limit: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Entries, StoreError> {
        let read = |k: &[u8], raw: &[u8]| Ok(read_group(g, k, raw)?.into_iter().collect());
        grouped_entries(tree, lo, hi, limit, read, keep)
    }

    /// Entries of table `t`'s own tree (packed values read back) in key
    /// order, at most `limit`.
    fn tree_entries<I>(&self, items: I, limit: usize) -> Result<Entries, StoreError>
    where
        I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    {
        let mut out = Vec::new();
        for item in items.take(limit) {
            let (k, v) = item.map_err(unavailable)?;
            out.push((k.to_vec(), packed::unpack(&v)?));
        }
        Ok(out)
    }

    /// Format 2 and older kept the expiry index as one key per entry in the
    /// `meta` tree: copied into buckets a chunk at a time, made durable, and
    /// only then removed from `meta`. A crash before the removal is done
    /// leaves the rest where it was, and the next open copies it again
    /// (writing an entry into its bucket again changes nothing).
    fn upgrade_expiry_index(&self) -> Result<(), StoreError> {
        let meta = &self.trees[Table::Meta as usize];
        let Some((grouping, expiry)) = self.grouped(Table::Meta) else {
            return Ok(());
        };
        let bucketed = |k: &[u8]| expiry_blocks::bucket_of(k).is_some();
        let moved = copy_in_chunks(meta, super::meta::EXPIRY_PREFIX, bucketed, |chunk| {
            write_groups(grouping, expiry, chunk.iter())
        })?;
        if moved == 0 {
            return Ok(());
        }
        self.barrier()?;
        remove_copied(meta, super::meta::EXPIRY_PREFIX, bucketed)?;
        self.barrier()?;
        tracing::info!(entries = moved, "moved the expiry index into buckets (store format 3)");
        Ok(())
    }
}

/// Entries an upgrade copies at a time (few in tests, so that theirs
/// cross chunk edges).
#[cfg(not(test))]
const UPGRADE_CHUNK: usize = 4096;
#[cfg(test)]
const UPGRADE_CHUNK: usize = 16;

/// Hands the entries of `tree` whose keys start with `prefix` and pass
/// `keep` (values read back from their packed form) to `write`,
/// [`UPGRADE_CHUNK`] at a time, for an upgrade to copy them elsewhere; `tree` itself is left as it
/// is. Returns how many there were.
fn copy_in_chunks(
    tree: &sled::Tree,
    prefix: &[u8],
    keep: impl Fn(&[u8]) -> bool,
    mut write: impl FnMut(&MemTable) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    let mut copied = 0;
    let mut chunk = MemTable::new();
    for item in tree.scan_prefix(prefix) {
        let (k, v) = item.map_err(unavailable)?;
        if keep(&k) {
            chunk.insert(k.to_vec(), Some(packed::unpack(&v)?));
        }
        if chunk.len() == UPGRADE_CHUNK {
            copied += chunk.len();
            write(&std::mem::take(&mut chunk))?;
        }
    }
    if !chunk.is_empty() {
        copied += chunk.len();
        write(&chunk)?;
    }
    Ok(copied)
}

/// Removes from `tree` the keys starting with `prefix` that pass `copied`:
/// what [`copy_in_chunks`] handed over, once its copy is durable.
fn remove_copied(tree: &sled::Tree, prefix: &[u8], copied: impl Fn(&[u8]) -> bool) -> Result<(), StoreError> {
    for item in tree.scan_prefix(prefix).keys() {
        let k = item.map_err(unavailable)?;
        if copied(&k) {
            tree.remove(k).map_err(unavailable)?;
        }
    }
    Ok(())
}

/// The entries of the groups (log blocks, expiry buckets) keyed `lo..=hi`
/// (8 bytes big-endian) in `tree`, as `read` gives each group's, whose keys
/// pass `keep`, in order, at most `limit`.
fn grouped_entries(
    tree: &sled::Tree,
    lo: u64,
    hi: u64,
    limit: usize,
    read: impl Fn(&[u8], &[u8]) -> Result<Entries, StoreError>,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Entries, StoreError> {
    if lo > hi {
        return Ok(Vec::new());
    }
    entries_of_groups(tree.range(lo.to_be_bytes()..=hi.to_be_bytes()), limit, read, keep)
}

/// The entries of the groups `items` reads from sled (log blocks, expiry
/// buckets, record groups, accounts), as `read` gives each group's, whose
/// keys pass `keep`, in order, at most `limit`.
fn entries_of_groups(
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    limit: usize,
    read: impl Fn(&[u8], &[u8]) -> Result<Entries, StoreError>,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Entries, StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for item in items {
        let (k, raw) = item.map_err(unavailable)?;
        for (key, v) in read(&k, &raw)? {
            if keep(&key) {
                out.push((key, v));
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Two key-ordered lists of disjoint keys as one, at most `limit` long.
fn merge_entries(a: Entries, b: Entries, limit: usize) -> Entries {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut all: BTreeMap<Vec<u8>, Vec<u8>> = a.into_iter().collect();
    all.extend(b);
    all.into_iter().take(limit).collect()
}

/// Writes the users' and factors' memtable entries that sled keeps in
/// accounts into them: each account touched is read, changed and written
/// once (removed once empty). Post-images, so writing the same entries
/// again changes nothing.
fn write_accounts(tree: &sled::Tree, users: &MemTable, factors: &MemTable) -> Result<(), StoreError> {
    type Changes<'a> = Vec<(Table, &'a [u8], &'a Option<Vec<u8>>)>;
    let mut by_account: BTreeMap<&[u8], Changes<'_>> = BTreeMap::new();
    for (t, mt) in [(Table::Users, users), (Table::Factors, factors)] {
        for (k, v) in mt {
            if let Some(account) = account_groups::account_of(t, k) {
                by_account.entry(account).or_default().push((t, k, v));
            }
        }
    }
    for (account, changes) in by_account {
        let mut a = match tree.get(account).map_err(unavailable)? {
            Some(raw) => account_groups::decode(account, &raw)?,
            None => account_groups::Account::default(),
        };
        for (t, k, v) in changes {
            a.set(t, k, v.clone());
        }
        if a.is_empty() {
            tree.remove(account).map(drop)
        } else {
            tree.insert(account, account_groups::encode(account, &a)?).map(drop)
        }
        .map_err(unavailable)?;
    }
    Ok(())
}

/// A group as read from its tree (the key names its number).
fn read_group(g: Grouping, key: &[u8], raw: &[u8]) -> Result<expiry_blocks::Bucket, StoreError> {
    let id = log_blocks::seq_of(key).ok_or_else(|| StoreError::Corrupt(format!("a {g:?} group key is malformed")))?;
    g.decode(id, raw)
}

/// Writes the entries the grouping claims among a memtable's entries (in
/// key order, so each group's come together) into their groups: each group
/// touched is read, changed and written once. Post-images, so writing the
/// same entries again changes nothing.
fn write_groups<'a>(
    g: Grouping,
    tree: &sled::Tree,
    entries: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) -> Result<(), StoreError> {
    let changes = entries.filter_map(|(k, v)| g.group_of(k).map(|id| Ok((id, k.clone(), v.clone()))));
    rewrite_groups(
        tree,
        changes,
        |id, raw| g.decode(id, raw),
        |id, group| g.encode(id, group),
    )
}

/// Applies post-images to the groups (log blocks, expiry buckets) of
/// `tree` their keys fall in, the changes of a group coming one after
/// another: each group (the key `id`, 8 bytes big-endian) is read with
/// `decode`, changed, and written with `encode` (removed once empty), once.
fn rewrite_groups<K: Ord>(
    tree: &sled::Tree,
    changes: impl Iterator<Item = Result<(u64, K, Option<Vec<u8>>), StoreError>>,
    decode: impl Fn(u64, &[u8]) -> Result<BTreeMap<K, Vec<u8>>, StoreError>,
    encode: impl Fn(u64, &BTreeMap<K, Vec<u8>>) -> Result<Vec<u8>, StoreError>,
) -> Result<(), StoreError> {
    let load = |id: u64| -> Result<BTreeMap<K, Vec<u8>>, StoreError> {
        match tree.get(id.to_be_bytes()).map_err(unavailable)? {
            Some(raw) => decode(id, &raw),
            None => Ok(BTreeMap::new()),
        }
    };
    let store = |id: u64, group: &BTreeMap<K, Vec<u8>>| -> Result<(), StoreError> {
        if group.is_empty() {
            tree.remove(id.to_be_bytes()).map(drop)
        } else {
            tree.insert(id.to_be_bytes(), encode(id, group)?).map(drop)
        }
        .map_err(unavailable)
    };
    let mut open: Option<(u64, BTreeMap<K, Vec<u8>>)> = None;
    for change in changes {
        let (id, key, value) = change?;
        let group = match &mut open {
            Some((at, group)) if *at == id => group,
            _ => {
                if let Some((at, group)) = open.take() {
                    store(at, &group)?;
                }
                &mut open.insert((id, load(id)?)).1
            }
        };
        match value {
            Some(v) => group.insert(key, v),
            None => group.remove(&key),
        };
    }
    if let Some((at, group)) = open {
        store(at, &group)?;
    }
    Ok(())
}

/// The sled tree a table lives in. The logs are kept in blocks
/// ([`log_blocks`]) in trees of their own; the trees named after them
/// held one key per entry (stores of format 1) and are emptied into
/// blocks when such a store is opened ([`Base::upgrade`]).
fn tree_name(t: Table) -> String {
    if t.is_log() {
        format!("{}.blocks", t.name())
    } else {
        t.name().to_string()
    }
}

/// A block of log `t` as read from its tree (the key names its number).
fn read_block(t: Table, key: &[u8], raw: &[u8]) -> Result<log_blocks::Block, StoreError> {
    let id =
        log_blocks::seq_of(key).ok_or_else(|| StoreError::Corrupt(format!("{} block key is malformed", t.name())))?;
    log_blocks::decode(id, raw)
}

/// Writes one log's memtable into its blocks: each block it touches is
/// read, changed and written once. Post-images, so writing the same
/// memtable again changes nothing.
fn write_log_blocks(tree: &sled::Tree, t: Table, mt: &MemTable) -> Result<(), StoreError> {
    // Keys are 8-byte big-endian sequence numbers, so the memtable's order
    // is theirs and each block's entries come together.
    let changes = mt.iter().map(|(k, v)| {
        let seq = log_blocks::seq_of(k).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{} key of {} bytes is not a sequence number",
                t.name(),
                k.len()
            ))
        })?;
        Ok((log_blocks::block_of(seq), seq, v.clone()))
    });
    rewrite_groups(tree, changes, log_blocks::decode, |_, block| log_blocks::encode(block))
}

impl Base for SledBase {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if t.is_log() {
            let Some(seq) = log_blocks::seq_of(key) else {
                return Ok(None);
            };
            return Ok(self.log_entries(t, seq, seq, 1, |_| true)?.pop().map(|(_, v)| v));
        }
        if let Some((g, tree)) = self.grouped(t) {
            if let Some(id) = g.group_of(key) {
                return self.group_get(t, g, tree, id, key);
            }
        }
        if let Some(account) = account_groups::account_of(t, key) {
            return Ok(self.account(account)?.and_then(|a| a.get(t, key).cloned()));
        }
        self.trees[t as usize]
            .get(key)
            .map_err(unavailable)?
            .map(|v| packed::unpack(&v))
            .transpose()
    }

    fn range_from(&self, t: Table, from: &[u8], limit: usize) -> Result<Entries, StoreError> {
        if t.is_log() {
            return self.log_entries(t, log_blocks::lower_bound(from), u64::MAX, limit, |k| k >= from);
        }
        let own = self.tree_entries(self.trees[t as usize].range(from..), limit)?;
        if account_groups::grouped(t) {
            let lo = account_groups::bound(t, from);
            let accounts = self.account_entries(t, self.accounts.range(lo..), limit, |k| k >= from)?;
            return Ok(merge_entries(own, accounts, limit));
        }
        let Some((g, tree)) = self.grouped(t) else {
            return Ok(own);
        };
        let grouped = match g.first_from(from) {
            Some(lo) => self.group_entries(g, tree, lo, u64::MAX, limit, |k| k >= from)?,
            None => Vec::new(),
        };
        Ok(merge_entries(own, grouped, limit))
    }

    fn scan_prefix(&self, t: Table, prefix: &[u8]) -> Result<Entries, StoreError> {
        if t.is_log() {
            let (lo, hi) = (log_blocks::lower_bound(prefix), log_blocks::upper_bound(prefix));
            return self.log_entries(t, lo, hi, usize::MAX, |k| k.starts_with(prefix));
        }
        let own = self.tree_entries(self.trees[t as usize].scan_prefix(prefix), usize::MAX)?;
        if account_groups::grouped(t) {
            let keep = |k: &[u8]| k.starts_with(prefix);
            let accounts = match account_groups::single_account(t, prefix) {
                Some(one) => match self.account(one)? {
                    Some(a) => a.entries(t, one).into_iter().filter(|(k, _)| keep(k)).collect(),
                    None => Vec::new(),
                },
                None => self.account_entries(t, self.accounts.scan_prefix(prefix), usize::MAX, keep)?,
            };
            return Ok(merge_entries(own, accounts, usize::MAX));
        }
        let Some((g, tree)) = self.grouped(t) else {
            return Ok(own);
        };
        let grouped = match g.with_prefix(prefix) {
            Some((lo, hi)) => self.group_entries(g, tree, lo, hi, usize::MAX, |k| k.starts_with(prefix))?,
            None => Vec::new(),
        };
        Ok(merge_entries(own, grouped, usize::MAX))
    }

    fn range(&self, t: Table, from: &[u8], through: &[u8]) -> Result<Entries, StoreError> {
        if t.is_log() {
            let (lo, hi) = (log_blocks::lower_bound(from), log_blocks::upper_bound(through));
            return self.log_entries(t, lo, hi, usize::MAX, |k| k >= from && k <= through);
        }
        if from > through {
            return Ok(Vec::new());
        }
        let own = self.tree_entries(self.trees[t as usize].range(from..=through), usize::MAX)?;
        if account_groups::grouped(t) {
            let (lo, hi) = (account_groups::bound(t, from), account_groups::bound(t, through));
            if lo > hi {
                return Ok(own);
            }
            let accounts = self.account_entries(t, self.accounts.range(lo..=hi), usize::MAX, |k| {
                k >= from && k <= through
            })?;
            return Ok(merge_entries(own, accounts, usize::MAX));
        }
        let Some((g, tree)) = self.grouped(t) else {
            return Ok(own);
        };
        let grouped = match (g.first_from(from), g.last_through(through)) {
            (Some(lo), Some(hi)) => self.group_entries(g, tree, lo, hi, usize::MAX, |k| k >= from && k <= through)?,
            _ => Vec::new(),
        };
        Ok(merge_entries(own, grouped, usize::MAX))
    }

    fn keys(&self, t: Table) -> Result<Vec<Vec<u8>>, StoreError> {
        if t.is_log() {
            // A block at a time: a log's keys without holding all its entries.
            let mut out = Vec::new();
            for item in self.trees[t as usize].iter() {
                let (k, raw) = item.map_err(unavailable)?;
                out.extend(
                    read_block(t, &k, &raw)?
                        .into_keys()
                        .map(|seq| seq.to_be_bytes().to_vec()),
                );
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        for k in self.trees[t as usize].iter().keys() {
            out.push(k.map_err(unavailable)?.to_vec());
        }
        if let Some((g, tree)) = self.grouped(t) {
            for item in tree.iter() {
                let (k, raw) = item.map_err(unavailable)?;
                out.extend(read_group(g, &k, &raw)?.into_keys());
            }
            out.sort_unstable();
        }
        if account_groups::grouped(t) {
            for item in self.accounts.iter() {
                let (k, raw) = item.map_err(unavailable)?;
                out.extend(
                    account_groups::decode(&k, &raw)?
                        .entries(t, &k)
                        .into_iter()
                        .map(|(key, _)| key),
                );
            }
            out.sort_unstable();
        }
        Ok(out)
    }

    fn apply(&self, tables: &Tables, lsn: u64) -> Result<(), StoreError> {
        write_to_sled(&self.trees, &self.groups, &self.accounts, tables)?;
        // After the records: sled recovers a prefix of its own writes, so
        // a position that survives means the records before it did.
        self.own.insert(APPLIED_KEY, &lsn.to_be_bytes()).map_err(unavailable)?;
        Ok(())
    }

    fn barrier(&self) -> Result<(), StoreError> {
        // sled's flush writes its buffers and starts write-back with
        // sync_file_range, which is no durability barrier (it flushes
        // neither the drive's cache nor file sizes): fsync every sled file
        // and directory after it.
        self.db.flush().map_err(unavailable)?;
        super::disk::fsync_tree(&self.path, &["wal", MARKER])
            .map_err(|e| StoreError::Unavailable(format!("cannot sync the sled files in {}: {e}", self.path.display())))
    }

    fn upgrade(&self) -> Result<(), StoreError> {
        // Format 1 kept a log as one key per entry in the tree named after
        // it: copied into blocks a chunk at a time, made durable, and only
        // then is that tree dropped. A crash before the drop leaves every
        // entry where it was, and the next open copies them again (writing
        // an entry into its block again changes nothing).
        let names = self.db.tree_names();
        for t in Table::ALL.into_iter().filter(|t| t.is_log()) {
            if !names.iter().any(|n| n.as_ref() == t.name().as_bytes()) {
                continue;
            }
            let legacy = self.db.open_tree(t.name()).map_err(unavailable)?;
            let entries = copy_in_chunks(
                &legacy,
                b"",
                |_| true,
                |chunk| write_log_blocks(&self.trees[t as usize], t, chunk),
            )?;
            self.barrier()?;
            self.db.drop_tree(t.name()).map_err(unavailable)?;
            tracing::info!(log = t.name(), entries, "moved a log into blocks (store format 2)");
        }
        self.upgrade_expiry_index()?;
        self.upgrade_accounts()
    }

    fn applied_lsn(&self) -> Result<Option<u64>, StoreError> {
        match self.own.get(APPLIED_KEY).map_err(unavailable)? {
            None => Ok(None),
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                Ok(Some(u64::from_be_bytes(b)))
            }
            Some(_) => Err(StoreError::Corrupt(
                "the store's applied log position is malformed".into(),
            )),
        }
    }
}

/// The store's marker file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    format: u32,
    /// The log position every checkpoint up to now made durable in sled.
    applied_lsn: u64,
}

/// Refuses a directory that holds something other than a Sigil store
/// (before anything is written to it).
fn check_dir(disk: &dyn Disk, path: &Path) -> Result<(), StoreError> {
    if !disk.exists(path) {
        return Ok(());
    }
    let names = disk
        .list(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot read the store directory {}: {e}", path.display())))?;
    let has = |n: &str| names.iter().any(|x| x == n);
    // A store made before the marker existed has sled's files and a log;
    // a crash while a new store was being created leaves only Sigil's and
    // sled's own names (sled makes `blobs/`, then `conf`, then `db`).
    let own =
        |n: &String| matches!(n.as_str(), "wal" | "blobs" | "conf" | "db") || n == MARKER_TMP || n.starts_with("snap.");
    if names.iter().all(own) || has(MARKER) {
        return Ok(());
    }
    Err(StoreError::Corrupt(format!(
        "{} is not a Sigil store (no {MARKER}, no sled files; it holds {}): point [store] path at an empty \
         or new directory, or at an existing Sigil store. Nothing was changed",
        path.display(),
        names.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )))
}

/// The marker file, if there is one.
fn read_marker(disk: &dyn Disk, path: &Path) -> Result<Option<Marker>, StoreError> {
    let p = path.join(MARKER);
    if !disk.exists(&p) {
        return Ok(None);
    }
    let bytes = disk
        .read(&p)
        .map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", p.display())))?;
    let m: Marker = serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "{} is unreadable ({e}); it is written atomically, so this is damage: restore the store from a \
             backup",
            p.display()
        ))
    })?;
    if m.format > STORE_FORMAT {
        return Err(StoreError::Corrupt(format!(
            "the store in {} is format {}, newer than this Sigil reads ({STORE_FORMAT}); run the newer Sigil \
             (nothing was changed)",
            path.display(),
            m.format
        )));
    }
    Ok(Some(m))
}

/// Records durably (write, sync, rename, sync the directory) that sled
/// holds the log up to `lsn`.
fn write_marker(disk: &dyn Disk, path: &Path, lsn: u64) -> Result<(), StoreError> {
    let p = path.join(MARKER);
    let tmp = path.join(MARKER_TMP);
    let bytes = serde_json::to_vec(&Marker {
        format: STORE_FORMAT,
        applied_lsn: lsn,
    })
    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let io = |e: std::io::Error| StoreError::Unavailable(format!("cannot write {}: {e}", p.display()));
    disk.create_dir_all(path).map_err(io)?;
    let f = disk.create(&tmp, false).map_err(io)?;
    f.write_at(&bytes, 0).and_then(|_| f.sync_data()).map_err(io)?;
    disk.rename(&tmp, &p).map_err(io)?;
    disk.sync_dir(path).map_err(io)
}

/// sled could not lock the store directory (sled 0.34 reports it as an
/// I/O error of kind `Other` with this message).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Unavailable("store lock poisoned".into())
}

fn decode(raw: &[u8]) -> Result<Versioned, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt("value shorter than its version header".into()));
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&raw[..8]);
    Ok(Versioned {
        version: u64::from_be_bytes(v),
        value: raw[8..].to_vec(),
    })
}

fn encode(version: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn version_of(raw: &Option<Vec<u8>>) -> Result<Option<u64>, StoreError> {
    match raw {
        None => Ok(None),
        Some(r) => decode(r).map(|v| Some(v.version)),
    }
}

/// Writes memtables into sled, key by key.
///
/// Not with `Tree::apply_batch`: sled 0.34 runs a batch under its global
/// concurrency-control write lock, which holds back every read of every
/// tree (`Tree::get` takes the read side) for the whole batch. A second's
/// worth of records took about 100 ms to apply, and every request that
/// read from sled meanwhile waited: a periodic stall of all clients. The
/// batch's atomicity is not needed here: the frozen memtable answers every
/// read of these keys until the whole apply and its barrier are done, and
/// after a crash the log is replayed from the last recorded position
/// (post-images, idempotent), so a partly applied checkpoint is completed.
fn write_to_sled(
    trees: &[sled::Tree],
    groups: &[Option<(Grouping, sled::Tree)>],
    accounts: &sled::Tree,
    tables: &Tables,
) -> Result<(), StoreError> {
    write_accounts(
        accounts,
        &tables[Table::Users as usize],
        &tables[Table::Factors as usize],
    )?;
    for (i, mt) in tables.iter().enumerate() {
        let tree = &trees[i];
        if let Some(t) = Table::ALL.get(i).filter(|t| t.is_log()) {
            write_log_blocks(tree, *t, mt)?;
            continue;
        }
        let grouping = groups.get(i).and_then(Option::as_ref);
        if let Some((g, group_tree)) = grouping {
            write_groups(*g, group_tree, mt.iter())?;
        }
        let table = Table::ALL[i];
        for (k, v) in mt {
            if grouping.is_some_and(|(g, _)| g.group_of(k).is_some()) || account_groups::account_of(table, k).is_some()
            {
                continue;
            }
            match v {
                Some(v) => tree.insert(k.as_slice(), packed::pack(v)?).map(drop),
                None => tree.remove(k.as_slice()).map(drop),
            }
            .map_err(unavailable)?;
        }
    }
    Ok(())
}

impl Mem {
    /// The newest memtable entry for a key: `Some(None)` means deleted,
    /// `None` means "ask sled".
    fn lookup(&self, t: Table, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.active[t as usize]
            .get(key)
            .or_else(|| self.frozen[t as usize].get(key))
    }

    /// Memtable entries of `t` from `from` on (frozen first, then active, so
    /// newer entries overwrite older ones when collected in order).
    fn overlay_from<'a>(
        &'a self,
        t: Table,
        from: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        self.frozen[t as usize]
            .range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .chain(
                self.active[t as usize].range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded)),
            )
    }
}

impl Inner {
    fn read(&self) -> Result<RwLockReadGuard<'_, Mem>, StoreError> {
        self.wal.failed()?;
        self.mem.read().map_err(poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Mem>, StoreError> {
        self.wal.failed()?;
        self.mem.write().map_err(poisoned)
    }

    /// Asks the checkpointer to run now rather than at its next interval.
    fn wake_checkpointer(&self) {
        if let Ok(mut w) = self.wake.lock() {
            *w = true;
        }
        self.wake_cv.notify_all();
    }

    fn over_limit(&self, mem: &Mem) -> bool {
        let t = &self.tuning;
        mem.active_keys >= t.checkpoint_keys.saturating_mul(BACKPRESSURE_FACTOR)
            || mem.active_bytes >= t.checkpoint_bytes.saturating_mul(BACKPRESSURE_FACTOR)
    }

    /// Wakes the checkpointer and waits for its next freeze, until `deadline`.
    fn wait_for_freeze(&self, deadline: std::time::Instant) -> Result<(), StoreError> {
        let refused = || {
            StoreError::Unavailable(
                "the store's checkpoints into sled are failing or far behind; writes are refused until they \
                 catch up (see the service log)"
                    .into(),
            )
        };
        let n = self.freezes.lock().map_err(poisoned)?;
        let seen = *n;
        self.wake_checkpointer();
        let mut n = n;
        while *n == seen {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(refused());
            }
            n = self.frozen_cv.wait_timeout(n, left).map_err(poisoned)?.0;
        }
        Ok(())
    }

    fn raw_get(&self, mem: &Mem, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match mem.lookup(t, key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(t, key),
        }
    }

    /// Every live (key, stored bytes) of `t` whose key starts with `prefix`,
    /// in key order.
    fn merged_prefix(&self, mem: &Mem, t: Table, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.base.scan_prefix(t, prefix)? {
            out.insert(k, v);
        }
        for (k, v) in mem.overlay_from(t, prefix) {
            if !k.starts_with(prefix) {
                continue;
            }
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    /// Up to `limit` live entries (key, stored bytes) of `t` with keys after
    /// `after`, in order: sled's entries merged with the memtables, read
    /// from sled in chunks until `limit` entries survive the merge (a chunk
    /// may be mostly deleted in the memtables) or sled has no more.
    fn merged_page(&self, mem: &Mem, t: Table, after: Option<&[u8]>, limit: usize) -> Result<Entries, StoreError> {
        let limit = limit.max(1);
        // The smallest key after `after`.
        let mut from: Vec<u8> = after.map(|a| [a, &[0u8][..]].concat()).unwrap_or_default();
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        loop {
            let chunk = self.base.range_from(t, &from, limit)?;
            let last = (chunk.len() >= limit).then(|| chunk[chunk.len() - 1].0.clone());
            out.extend(chunk);
            // The memtables' word on every key in [from, last] (or from on,
            // when sled has nothing beyond).
            for (k, v) in mem.overlay_from(t, &from) {
                if last.as_ref().is_some_and(|l| k > l) {
                    continue;
                }
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
            match last {
                Some(l) if out.len() < limit => from = [l.as_slice(), &[0u8][..]].concat(),
                _ => break,
            }
        }
        Ok(out.into_iter().take(limit).collect())
    }

    /// The live entries (key, stored bytes) of log `t` with sequence
    /// numbers in `after + 1 ..= through`, in order.
    fn log_range(&self, mem: &Mem, t: Table, after: u64, through: u64) -> Result<Entries, StoreError> {
        if through <= after {
            return Ok(Vec::new());
        }
        let (from, to) = ((after + 1).to_be_bytes(), through.to_be_bytes());
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = self.base.range(t, &from, &to)?.into_iter().collect();
        for (k, v) in mem.overlay_from(t, &from) {
            if k.as_slice() > &to[..] {
                continue;
            }
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().collect())
    }

    fn run_checkpointer(&self) {
        loop {
            {
                let Ok(mut w) = self.wake.lock() else { return };
                if !*w {
                    match self.wake_cv.wait_timeout(w, self.tuning.checkpoint_interval) {
                        Ok((g, _)) => w = g,
                        Err(_) => return,
                    }
                }
                *w = false;
            }
            let failed = self.checkpoint().is_err_and(|e| {
                tracing::error!(error = %e, "store checkpoint failed; the write-ahead log keeps every commit, retrying");
                true
            });
            if self.stop.load(Ordering::SeqCst) {
                // A checkpoint already under way when the stop came leaves
                // what was committed after its rotation: one more takes it
                // into sled (with nothing left it does nothing), so that a
                // clean stop leaves no record for the next start to replay.
                if !failed {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "the last store checkpoint failed; the write-ahead log keeps every commit for the next start");
                    }
                }
                return;
            }
            if failed {
                // Back off instead of retrying at once when woken early.
                std::thread::sleep(self.tuning.checkpoint_interval);
            }
        }
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = self.checkpointing.lock().map_err(poisoned)?;
        // A frozen memtable left by a failed attempt goes first.
        self.apply_frozen(None)?;
        // Only checkpoints empty the active memtable, and they take turns.
        if self.read()?.active_keys == 0 {
            return Ok(());
        }
        // File I/O happens off the store's write lock: commits wait only
        // for the switch to the new file and the freeze, never for a sync.
        let next = self.wal.open_next()?;
        let rotation = {
            let mut mem = self.write()?;
            let r = self.wal.begin_rotate(next)?;
            mem.frozen = Arc::new(std::mem::replace(&mut mem.active, empty_tables()));
            mem.frozen_lsn = r.last();
            mem.active_keys = 0;
            mem.active_bytes = 0;
            r
        };
        if let Ok(mut n) = self.freezes.lock() {
            *n += 1;
        }
        self.frozen_cv.notify_all();
        let closed = self.wal.finish_rotate(rotation)?;
        self.apply_frozen(Some(closed))?;
        if let Err(e) = self.wal.prepare_next() {
            tracing::warn!(error = %e, "could not prepare the next write-ahead log file; it will start empty");
        }
        Ok(())
    }

    /// Writes the frozen memtable into sled, makes sled durable (a real
    /// barrier, see [`Base::barrier`]), records that in the marker file,
    /// and only then deletes the log files it came from and drops it.
    /// Callers hold `checkpointing`.
    fn apply_frozen(&self, closed: Option<u64>) -> Result<(), StoreError> {
        let (frozen, lsn) = {
            let mem = self.read()?;
            (mem.frozen.clone(), mem.frozen_lsn)
        };
        if frozen.iter().all(|m| m.is_empty()) {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        self.base.apply(&frozen, lsn)?;
        let t1 = std::time::Instant::now();
        self.base.barrier()?;
        let t2 = std::time::Instant::now();
        write_marker(self.disk.as_ref(), &self.path, lsn)?;
        // After a failed attempt the closed file's number is not known here;
        // the next successful checkpoint removes every older file as well.
        if let Some(no) = closed {
            self.wal.remove_through(no)?;
        }
        let t3 = std::time::Instant::now();
        crate::metrics::store_checkpoint("apply", t1 - t0);
        crate::metrics::store_checkpoint("barrier", t2 - t1);
        crate::metrics::store_checkpoint("marker", t3 - t2);
        tracing::debug!(
            apply_ms = (t1 - t0).as_secs_f64() * 1e3,
            barrier_ms = (t2 - t1).as_secs_f64() * 1e3,
            marker_ms = (t3 - t2).as_secs_f64() * 1e3,
            "store checkpoint"
        );
        if let Ok(mut st) = self.stats.lock() {
            st.checkpoints += 1;
            st.apply += t1 - t0;
            st.barrier += t2 - t1;
            st.marker_and_removal += t3 - t2;
        }
        let mut mem = self.write()?;
        if Arc::ptr_eq(&mem.frozen, &frozen) {
            mem.frozen = Arc::new(empty_tables());
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn ready(&self) -> Result<(), StoreError> {
        self.inner.wal.failed()
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        let mem = self.inner.read()?;
        match self.inner.raw_get(&mem, table, key)? {
            None => Ok(None),
            Some(raw) => decode(&raw).map(Some),
        }
    }

    fn scan_page(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        let mem = self.inner.read()?;
        self.inner
            .merged_page(&mem, table, after, limit)?
            .into_iter()
            .map(|(k, v)| decode(&v).map(|v| (k, v)))
            .collect()
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        let mem = self.inner.read()?;
        self.inner
            .merged_prefix(&mem, table, prefix)?
            .into_iter()
            .map(|(k, v)| decode(&v).map(|v| (k, v)))
            .collect()
    }

    fn commit(&self, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        let t0 = std::time::Instant::now();
        let (seqs, lsn) = self.apply(batch, true)?;
        if lsn > 0 {
            crate::metrics::store_commit("sled", t0.elapsed());
        }
        if batch.durability == Durability::Sync && lsn > 0 {
            self.inner.wal.wait_durable(lsn)?;
        }
        Ok(seqs)
    }

    /// Unlike [`Store::commit`], never waits for room: its callers run on
    /// async workers, so a store whose checkpoints are far behind refuses
    /// it at once (`Unavailable`, nothing written).
    fn commit_pending(&self, batch: &Batch) -> Result<(Vec<u64>, Ticket), StoreError> {
        let t0 = std::time::Instant::now();
        let (seqs, lsn) = self.apply(batch, false)?;
        if lsn > 0 {
            crate::metrics::store_commit("sled", t0.elapsed());
        }
        if batch.durability == Durability::Sync && lsn > 0 {
            let wal: Arc<dyn DurableWait> = self.inner.wal.clone();
            return Ok((seqs, Ticket::pending(lsn, wal)));
        }
        Ok((seqs, Ticket::ready()))
    }

    fn read_log(&self, log: Table, after: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        let mem = self.inner.read()?;
        // No commit can run while `mem` is held, so every entry read below
        // is in a record up to this LSN; they are returned only once it is
        // durable, so a reader never sees an entry a crash could take back.
        let visible = self.inner.wal.last_lsn()?;
        let mut merged = BTreeMap::new();
        let deleted = mem.overlay_from(log, &start).filter(|(_, v)| v.is_none()).count();
        for (k, v) in self.inner.base.range_from(log, &start, limit.saturating_add(deleted))? {
            merged.insert(k, v);
        }
        for (k, v) in mem.overlay_from(log, &start) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        drop(mem);
        self.inner.wal.wait_durable(visible)?;
        let mut out = Vec::new();
        for (k, raw) in merged.into_iter().take(limit) {
            let v = decode(&raw)?;
            if k.len() != 8 || v.value.len() < 32 {
                return Err(StoreError::Corrupt(format!(
                    "{} entry has a malformed key or value",
                    log.name()
                )));
            }
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&k);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&v.value[..32]);
            out.push(LogEntry {
                seq: u64::from_be_bytes(seq),
                hash,
                value: v.value[32..].to_vec(),
            });
        }
        Ok(out)
    }

    fn log_head(&self, log: Table) -> Result<(u64, [u8; 32]), StoreError> {
        // Like read_log: a head (which audit checkpoints sign) is returned
        // only once it is durable.
        let (raw, visible) = {
            let mem = self.inner.read()?;
            (
                self.inner.raw_get(&mem, Table::Meta, &log_head_key(log))?,
                self.inner.wal.last_lsn()?,
            )
        };
        self.inner.wal.wait_durable(visible)?;
        let head = raw.map(|r| decode(&r)).transpose()?;
        let (_, seq, hash) = decode_log_head(head.as_ref())?;
        Ok((seq, hash))
    }

    fn len(&self, table: Table) -> Result<usize, StoreError> {
        let mem = self.inner.read()?;
        // The newest memtable state of every key the memtables know.
        let mut overlay: BTreeMap<&Vec<u8>, bool> = BTreeMap::new();
        for (k, v) in mem.overlay_from(table, &[]) {
            overlay.insert(k, v.is_some());
        }
        // sled keys the memtables do not know (the checkpointer only writes
        // keys they know, so this part cannot change under us), plus the
        // live keys of the memtables.
        let mut n = overlay.values().filter(|live| **live).count();
        for k in self.inner.base.keys(table)? {
            if !overlay.contains_key(&k) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn snapshot(&self) -> Result<Vec<(Table, Vec<u8>, Versioned)>, StoreError> {
        // Holding the read lock keeps every commit out until the copy is done.
        let mem = self.inner.read()?;
        let visible = self.inner.wal.last_lsn()?;
        let mut out = Vec::new();
        for t in Table::ALL {
            for (k, v) in self.inner.merged_prefix(&mem, t, &[])? {
                out.push((t, k, decode(&v)?));
            }
        }
        drop(mem);
        // A backup never holds a commit that a crash could take back.
        self.inner.wal.wait_durable(visible)?;
        Ok(out)
    }
}

impl SledStore {
    /// Decides `batch` against the current state, logs it and applies it
    /// to the memtable; returns its sequence numbers and its LSN (0 for an
    /// empty batch). The record is not yet durable. Over the memtable's
    /// limit it waits for a checkpoint (up to `Tuning::backpressure_wait`)
    /// if `may_wait`, and is refused otherwise.
    fn apply(&self, batch: &Batch, may_wait: bool) -> Result<(Vec<u64>, u64), StoreError> {
        if batch.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let inner = &*self.inner;
        let lsn;
        let mut seqs = Vec::new();
        {
            let mut mem = inner.write()?;
            let wait = if may_wait {
                inner.tuning.backpressure_wait
            } else {
                Duration::ZERO
            };
            let deadline = std::time::Instant::now() + wait;
            while inner.over_limit(&mem) {
                // Let the checkpointer catch up, without holding the lock it needs.
                drop(mem);
                inner.wait_for_freeze(deadline)?;
                mem = inner.write()?;
            }
            // Post-images of this batch, newest last; reads see them first.
            let mut staged: Vec<PostImage> = Vec::with_capacity(batch.ops.len() + 2);
            let current =
                |staged: &[PostImage], mem: &Mem, t: Table, key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
                    match staged.iter().rev().find(|(st, sk, _)| *st == t && sk.as_slice() == key) {
                        Some((_, _, v)) => Ok(v.clone()),
                        None => inner.raw_get(mem, t, key),
                    }
                };
            for op in &batch.ops {
                match op {
                    Op::Check { table, key, version } => {
                        let want = if *version == 0 { None } else { Some(*version) };
                        if version_of(&current(&staged, &mem, *table, key)?)? != want {
                            return Err(StoreError::Conflict);
                        }
                    }
                    Op::Append { log, value } => {
                        if !log.is_log() {
                            return Err(StoreError::Corrupt(format!("{} is not a log", log.name())));
                        }
                        let head_key = log_head_key(*log);
                        let head = current(&staged, &mem, Table::Meta, &head_key)?
                            .map(|r| decode(&r))
                            .transpose()?;
                        let (hv, seq, prev) = decode_log_head(head.as_ref())?;
                        let seq = seq + 1;
                        let hash = chain_hash(&prev, seq, value);
                        let mut entry = hash.to_vec();
                        entry.extend_from_slice(value);
                        staged.push((*log, seq.to_be_bytes().to_vec(), Some(encode(1, &entry))));
                        let mut head_val = seq.to_be_bytes().to_vec();
                        head_val.extend_from_slice(&hash);
                        staged.push((Table::Meta, head_key, Some(encode(hv + 1, &head_val))));
                        seqs.push(seq);
                    }
                    Op::Put {
                        table,
                        key,
                        value,
                        expect,
                    } => {
                        let cur = version_of(&current(&staged, &mem, *table, key)?)?;
                        let next = match (expect, cur) {
                            (Expect::Absent, None) => 1,
                            (Expect::Version(want), Some(have)) if *want == have => have + 1,
                            _ => return Err(StoreError::Conflict),
                        };
                        staged.push((*table, key.clone(), Some(encode(next, value))));
                    }
                    Op::Prune { log, after, through } => {
                        if !log.is_log() {
                            return Err(StoreError::Corrupt(format!("{} is not a log", log.name())));
                        }
                        let floor_key = log_floor_key(*log);
                        let floor = current(&staged, &mem, Table::Meta, &floor_key)?
                            .map(|r| decode(&r))
                            .transpose()?;
                        let (fv, floor, _) = decode_log_head(floor.as_ref())?;
                        if floor != *after {
                            return Err(StoreError::Conflict);
                        }
                        let doomed = inner.log_range(&mem, *log, *after, *through)?;
                        let Some((last_key, last)) = doomed.last() else {
                            continue;
                        };
                        let last = decode(last)?;
                        if last_key.len() != 8 || last.value.len() < 32 {
                            return Err(StoreError::Corrupt(format!(
                                "{} entry has a malformed key or value",
                                log.name()
                            )));
                        }
                        let mut floor_val = last_key.clone();
                        floor_val.extend_from_slice(&last.value[..32]);
                        for (k, _) in doomed {
                            staged.push((*log, k, None));
                        }
                        staged.push((Table::Meta, floor_key, Some(encode(fv + 1, &floor_val))));
                    }
                    Op::Delete { table, key, version } => {
                        if version_of(&current(&staged, &mem, *table, key)?)? != Some(*version) {
                            return Err(StoreError::Conflict);
                        }
                        staged.push((*table, key.clone(), None));
                    }
                }
            }
            lsn = inner.wal.append(&staged)?;
            for (t, k, v) in staged {
                mem.active_bytes += k.len() + v.as_ref().map_or(0, Vec::len);
                if mem.active[t as usize].insert(k, v).is_none() {
                    mem.active_keys += 1;
                }
            }
            if mem.active_keys >= inner.tuning.checkpoint_keys || mem.active_bytes >= inner.tuning.checkpoint_bytes {
                inner.wake_checkpointer();
            }
        }
        Ok((seqs, lsn))
    }
}

impl DurableWait for Wal {
    fn wait(&self, lsn: u64) -> Result<(), StoreError> {
        self.wait_durable(lsn)
    }

    fn wait_async(&self, lsn: u64) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(self.durable(lsn))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn conditional_writes_are_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = Batch::new();
        b.insert(Table::Challenges, b"c1".to_vec(), b"one".to_vec());
        s.commit(&b).unwrap();
        // Second insert of the same key conflicts and takes the other write down with it.
        let mut b = Batch::new();
        b.insert(Table::Approvals, b"a1".to_vec(), b"x".to_vec());
        b.insert(Table::Challenges, b"c1".to_vec(), b"two".to_vec());
        assert_eq!(s.commit(&b), Err(StoreError::Conflict));
        assert_eq!(s.get(Table::Approvals, b"a1").unwrap(), None);
        // Update with the right version works once; with the stale one it conflicts.
        let v = s.get(Table::Challenges, b"c1").unwrap().unwrap();
        assert_eq!(v.version, 1);
        let mut b = Batch::new();
        b.update(Table::Challenges, b"c1".to_vec(), 1, b"used".to_vec());
        s.commit(&b).unwrap();
        assert_eq!(s.commit(&b), Err(StoreError::Conflict));
        let v = s.get(Table::Challenges, b"c1").unwrap().unwrap();
        assert_eq!((v.version, v.value.as_slice()), (2, &b"used"[..]));
        let mut b = Batch::new();
        b.delete(Table::Challenges, b"c1".to_vec(), 1);
        assert_eq!(s.commit(&b), Err(StoreError::Conflict));
        let mut b = Batch::new();
        b.delete(Table::Challenges, b"c1".to_vec(), 2);
        s.commit(&b).unwrap();
        assert_eq!(s.len(Table::Challenges).unwrap(), 0);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.insert(Table::Factors, b"u\0f".to_vec(), b"rec".to_vec());
            s.commit(&b).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.scan_prefix(Table::Factors, b"u\0").unwrap().len(), 1);
    }

    /// A store dropped a moment ago may still hold sled's lock briefly:
    /// opening waits for it; a store still open elsewhere is reported.
    #[test]
    fn opening_waits_for_a_lock_just_released_and_names_a_held_one() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.insert(Table::Meta, b"k".to_vec(), b"v".to_vec()).deferred();
            let _ = s.commit(&b);
            drop(s);
        }
        let held = SledStore::open(dir.path()).unwrap();
        let e = match SledStore::open(dir.path()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a store open twice"),
        };
        assert!(e.contains("another sigild"), "{e}");
        drop(held);
    }

    /// Small deterministic generator for the model test.
    pub(super) struct XorShift(pub(super) u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(super) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn model_snapshot(model: &BTreeMap<Vec<u8>, (u64, Vec<u8>)>) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
        model.iter().map(|(k, (v, b))| (k.clone(), *v, b.clone())).collect()
    }

    fn store_snapshot(s: &SledStore) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
        s.snapshot()
            .unwrap()
            .into_iter()
            .filter(|(t, _, _)| *t == Table::Factors)
            .map(|(_, k, v)| (k, v.version, v.value))
            .collect()
    }

    /// A clean stop leaves the write-ahead log empty (no record for the
    /// next start to replay, no prepared file), also when the stop comes
    /// while a checkpoint is under way and commits went on after its
    /// rotation: stores stopped right after a burst of commits, with
    /// checkpoints every few milliseconds, each reopened to find every
    /// commit.
    #[test]
    fn a_clean_stop_leaves_the_log_empty() {
        let tuning = Tuning {
            checkpoint_interval: Duration::from_millis(2),
            checkpoint_keys: 50,
            ..Tuning::default()
        };
        let mut left = Vec::new();
        for round in 0..12u64 {
            let dir = tempfile::tempdir().unwrap();
            {
                let s = SledStore::open_with(dir.path(), tuning).unwrap();
                for i in 0..400u64 {
                    let mut b = Batch::new();
                    b.insert(Table::Meta, format!("k{i:04}").into_bytes(), vec![7u8; 300]);
                    s.commit(&b).unwrap();
                }
                drop(s);
            }
            let wal = dir.path().join("wal");
            let replay = Wal::replay(&super::super::disk::OsDisk, &wal).unwrap();
            let names = std::fs::read_dir(&wal).unwrap().count();
            if !replay.records.is_empty() || names != 1 {
                left.push((round, replay.records.len(), names));
            }
            let s = SledStore::open_with(dir.path(), tuning).unwrap();
            assert_eq!(s.scan_prefix(Table::Meta, b"k").unwrap().len(), 400);
        }
        assert!(left.is_empty(), "(round, records, files) left in the log: {left:?}");
    }

    /// Random inserts, updates and deletes (some conflicting) against a
    /// plain map, with checkpoints after every few keys: reads, scans and
    /// counts agree with the map whether a key sits in the active memtable,
    /// the frozen one or sled, and after reopening.
    #[test]
    fn reads_agree_with_a_model_across_checkpoints_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            checkpoint_interval: Duration::from_millis(5),
            checkpoint_keys: 7,
            checkpoint_bytes: 1 << 20,
            backpressure_wait: Duration::from_secs(5),
            ..Tuning::default()
        };
        let mut model: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = BTreeMap::new();
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        {
            let s = SledStore::open_with(dir.path(), tuning).unwrap();
            for round in 0..1500u64 {
                let key = format!("u{}\0f{}", rng.below(6), rng.below(8)).into_bytes();
                let cur = model.get(&key).cloned();
                let value = format!("v{round}").into_bytes();
                let mut b = Batch::new();
                let honest = rng.below(5) != 0;
                match (cur.clone(), rng.below(3)) {
                    (None, _) => {
                        b.insert(Table::Factors, key.clone(), value.clone());
                    }
                    (Some((v, _)), 0) => {
                        b.delete(Table::Factors, key.clone(), if honest { v } else { v + 1 });
                    }
                    (Some((v, _)), _) => {
                        b.update(
                            Table::Factors,
                            key.clone(),
                            if honest { v } else { v + 3 },
                            value.clone(),
                        );
                    }
                }
                b.append(Table::Events, format!("e{round}").into_bytes());
                let res = s.commit(&b);
                if cur.is_none() || honest {
                    res.unwrap();
                    match (&cur, &b.ops[0]) {
                        (_, Op::Delete { .. }) => {
                            model.remove(&key);
                        }
                        (None, _) => {
                            model.insert(key.clone(), (1, value));
                        }
                        (Some((v, _)), _) => {
                            model.insert(key.clone(), (v + 1, value));
                        }
                    }
                } else {
                    assert_eq!(res, Err(StoreError::Conflict), "round {round}");
                }
                if round % 97 == 0 {
                    s.checkpoint().unwrap();
                }
                if round % 50 == 0 {
                    let user = format!("u{}\0", rng.below(6)).into_bytes();
                    let got: Vec<_> = s
                        .scan_prefix(Table::Factors, &user)
                        .unwrap()
                        .into_iter()
                        .map(|(k, v)| (k, v.version, v.value))
                        .collect();
                    let want: Vec<_> = model_snapshot(&model)
                        .into_iter()
                        .filter(|(k, _, _)| k.starts_with(&user))
                        .collect();
                    assert_eq!(got, want, "scan at round {round}");
                    assert_eq!(s.len(Table::Factors).unwrap(), model.len(), "len at round {round}");
                }
                let got = s.get(Table::Factors, &key).unwrap().map(|v| (v.version, v.value));
                assert_eq!(got, model.get(&key).cloned(), "get at round {round}");
            }
            assert_eq!(store_snapshot(&s), model_snapshot(&model));
            let events = s.read_log(Table::Events, 0, 10_000).unwrap();
            assert!(events.windows(2).all(|p| p[1].seq == p[0].seq + 1));
            assert_eq!(s.read_log(Table::Events, 10, 5).unwrap()[0].seq, 11);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(store_snapshot(&s), model_snapshot(&model));
        assert_eq!(s.len(Table::Factors).unwrap(), model.len());
    }

    /// Checkpoints racing each other and a writer: every read right after
    /// a commit sees that commit, and `len` never counts a key twice or
    /// misses one while the checkpointer moves keys into sled.
    #[test]
    fn racing_checkpoints_lose_nothing_and_len_stays_exact() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(
            SledStore::open_with(
                dir.path(),
                Tuning {
                    checkpoint_interval: Duration::from_millis(1),
                    checkpoint_keys: 3,
                    checkpoint_bytes: 1 << 20,
                    backpressure_wait: Duration::from_secs(5),
                    ..Tuning::default()
                },
            )
            .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        s.checkpoint().unwrap();
                    }
                })
            })
            .collect();
        let mut b = Batch::new();
        b.insert(Table::Meta, b"counter".to_vec(), b"0".to_vec());
        s.commit(&b).unwrap();
        for i in 1..=600u64 {
            let mut b = Batch::new();
            b.update(Table::Meta, b"counter".to_vec(), i, i.to_string().into_bytes())
                .insert(Table::Approvals, format!("jti-{i:05}").into_bytes(), b"x".to_vec());
            s.commit(&b).unwrap();
            let got = s.get(Table::Meta, b"counter").unwrap().unwrap();
            assert_eq!(got.version, i + 1, "stale read after commit {i}");
            assert_eq!(s.len(Table::Approvals).unwrap(), i as usize, "len after commit {i}");
        }
        stop.store(true, Ordering::SeqCst);
        for r in racers {
            r.join().unwrap();
        }
        drop(Arc::try_unwrap(s).ok().unwrap());
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Table::Meta, b"counter").unwrap().unwrap().version, 601);
        assert_eq!(s.len(Table::Approvals).unwrap(), 600);
    }

    /// While checkpoints cannot run, the memtable grows only so far: then
    /// commits wait, and are refused (nothing written) when no checkpoint
    /// comes in time; they are accepted again once one has caught up.
    #[test]
    fn stalled_checkpoints_refuse_writes_instead_of_growing_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_with(
            dir.path(),
            Tuning {
                checkpoint_interval: Duration::from_millis(1),
                checkpoint_keys: 10,
                checkpoint_bytes: usize::MAX,
                backpressure_wait: Duration::from_millis(50),
                ..Tuning::default()
            },
        )
        .unwrap();
        let insert = |i: usize| {
            let mut b = Batch::new();
            b.insert(Table::Approvals, format!("jti-{i:04}").into_bytes(), b"x".to_vec());
            s.commit(&b)
        };
        let refused_at = {
            let _stall = s.inner.checkpointing.lock().unwrap();
            (0..100)
                .find(|i| insert(*i).is_err())
                .expect("writes are refused at some point")
        };
        assert_eq!(refused_at, 10 * BACKPRESSURE_FACTOR);
        assert_eq!(
            s.len(Table::Approvals).unwrap(),
            refused_at,
            "the refused write left nothing"
        );
        s.checkpoint().unwrap();
        insert(refused_at).unwrap();
        assert_eq!(s.len(Table::Approvals).unwrap(), refused_at + 1);
    }

    /// A commit handing its sync wait to an async caller does not wait for
    /// room either: with checkpoints stalled it is refused at once (an
    /// async worker is never parked), and accepted again after one.
    #[test]
    fn stalled_checkpoints_refuse_pending_commits_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(
            SledStore::open_with(
                dir.path(),
                Tuning {
                    checkpoint_interval: Duration::from_millis(1),
                    checkpoint_keys: 10,
                    checkpoint_bytes: usize::MAX,
                    backpressure_wait: Duration::from_secs(3600),
                    ..Tuning::default()
                },
            )
            .unwrap(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let bg = s.clone();
        std::thread::spawn(move || {
            let _stall = bg.inner.checkpointing.lock().unwrap();
            let refused = (0..100).find_map(|i| {
                let mut b = Batch::new();
                b.insert(Table::Approvals, format!("jti-{i:04}").into_bytes(), b"x".to_vec());
                bg.commit_pending(&b).err().map(|e| (i, e))
            });
            // A deferred commit made while collecting (BeginApproval on an
            // async worker) takes the same path: refused, not parked.
            let (deferred, ticket) = crate::store::collect_durability(|| {
                let mut b = Batch::new();
                b.insert(Table::Challenges, b"ch-deferred".to_vec(), b"x".to_vec())
                    .deferred();
                crate::store::commit_collected(bg.as_ref(), &b)
            });
            assert!(matches!(deferred, Err(StoreError::Unavailable(_))), "{deferred:?}");
            assert!(ticket.is_ready());
            tx.send(refused).unwrap();
        });
        let (refused_at, err) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a pending commit waited for room instead of being refused")
            .expect("writes are refused at some point");
        assert_eq!(refused_at, 10 * BACKPRESSURE_FACTOR);
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(
            s.len(Table::Approvals).unwrap(),
            refused_at,
            "the refused write left nothing"
        );
        s.checkpoint().unwrap();
        let mut b = Batch::new();
        b.insert(Table::Approvals, b"jti-after".to_vec(), b"x".to_vec());
        let (_, ticket) = s.commit_pending(&b).unwrap();
        ticket.wait().unwrap();
    }

    const CRASH_DIR: &str = "SIGIL_STORE_CRASH_CHILD_DIR";

    /// Not a test on its own: the child half of
    /// `acknowledged_commits_and_read_log_entries_survive_a_crash_before_any_checkpoint`. With the
    /// variable set, it commits, reports each acknowledged commit, then exits
    /// without dropping anything (no checkpoint, no sled flush).
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR) else {
            return;
        };
        let s = SledStore::open_with(
            Path::new(&dir),
            Tuning {
                checkpoint_interval: Duration::from_secs(3600),
                checkpoint_keys: usize::MAX,
                checkpoint_bytes: usize::MAX,
                backpressure_wait: Duration::from_secs(5),
                ..Tuning::default()
            },
        )
        .unwrap();
        for i in 0..200u32 {
            let mut b = Batch::new();
            b.insert(
                Table::Approvals,
                format!("jti-{i:04}").into_bytes(),
                b"redeemed".to_vec(),
            )
            .append(Table::Audit, format!("a{i}").into_bytes());
            s.commit(&b).unwrap();
        }
        // A deferred commit is durable once a later synced commit returns.
        let mut b = Batch::new();
        b.insert(Table::Approvals, b"jti-deferred-1".to_vec(), b"x".to_vec())
            .deferred();
        s.commit(&b).unwrap();
        let mut b = Batch::new();
        b.insert(Table::Approvals, b"jti-0200".to_vec(), b"x".to_vec());
        s.commit(&b).unwrap();
        // A log reader only sees entries that are durable.
        let mut b = Batch::new();
        b.insert(Table::Approvals, b"jti-deferred-2".to_vec(), b"x".to_vec())
            .append(Table::Audit, b"read-back".to_vec())
            .deferred();
        s.commit(&b).unwrap();
        let seen = s.read_log(Table::Audit, 200, 10).unwrap();
        assert_eq!(seen.len(), 1);
        // Last, so that no later synced commit covers them: commits collected
        // by `collect_durability` are durable once their ticket completes,
        // awaited with no thread blocked (the log's sync thread syncs).
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for i in 0..50u32 {
            let (r, ticket) = crate::store::collect_durability(|| {
                let mut b = Batch::new();
                b.insert(
                    Table::Approvals,
                    format!("jti-async-{i:02}").into_bytes(),
                    b"x".to_vec(),
                );
                crate::store::commit_collected(&s, &b)
            });
            r.unwrap();
            assert!(!ticket.is_ready(), "a collected commit hands over its durability wait");
            rt.block_on(ticket.durable()).unwrap();
        }
        println!("ACKED 200");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::process::exit(0);
    }

    #[test]
    fn acknowledged_commits_and_read_log_entries_survive_a_crash_before_any_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::sled_store::tests::crash_child", "--nocapture"])
            .env(CRASH_DIR, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("ACKED 200"), "child did not finish: {stdout}");
        // Every acknowledged commit was only in the log.
        assert!(std::fs::read_dir(dir.path().join("wal")).unwrap().count() >= 1);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(Table::Approvals).unwrap(), 253);
        assert!(s.get(Table::Approvals, b"jti-async-49").unwrap().is_some());
        assert!(s.get(Table::Approvals, b"jti-deferred-1").unwrap().is_some());
        assert!(s.get(Table::Approvals, b"jti-deferred-2").unwrap().is_some());
        assert_eq!(s.log_head(Table::Audit).unwrap().0, 201);
        let audit = s.read_log(Table::Audit, 0, 1000).unwrap();
        let mut prev = [0u8; 32];
        for e in &audit {
            assert_eq!(e.hash, chain_hash(&prev, e.seq, &e.value));
            prev = e.hash;
        }
        // A redeemed approval stays redeemed: inserting it again conflicts.
        let mut b = Batch::new();
        b.insert(Table::Approvals, b"jti-0007".to_vec(), b"again".to_vec());
        assert_eq!(s.commit(&b), Err(StoreError::Conflict));
        // Replayed records are now in sled; the log starts afresh.
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(Table::Approvals).unwrap(), 253);
        assert!(s.get(Table::Approvals, b"jti-async-49").unwrap().is_some());
    }

    /// A prune spanning entries already in sled and entries still in the
    /// memtables deletes exactly its range, reads skip the deleted keys
    /// wherever they sit, and the prune survives a checkpoint and a reopen
    /// (it is replayed from the write-ahead log like any commit).
    #[test]
    fn pruning_reaches_sled_and_the_memtables_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let floor_hash;
        {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..100u32 {
                let mut b = Batch::new();
                b.append(Table::Events, format!("e{i}").into_bytes());
                s.commit(&b).unwrap();
                if i == 49 {
                    s.checkpoint().unwrap();
                }
            }
            floor_hash = s.read_log(Table::Events, 69, 1).unwrap()[0].hash;
            let mut b = Batch::new();
            b.prune(Table::Events, 0, 70);
            s.commit(&b).unwrap();
            let rest = s.read_log(Table::Events, 0, 10).unwrap();
            assert_eq!(
                rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (71..=80).collect::<Vec<_>>()
            );
            assert_eq!(s.len(Table::Events).unwrap(), 30);
            assert_eq!(crate::store::verify_log(&s, Table::Events).unwrap().0, 100);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(Table::Events).unwrap(), 30);
        assert_eq!(crate::store::log_floor(&s, Table::Events).unwrap(), (70, floor_hash));
        s.checkpoint().unwrap();
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.read_log(Table::Events, 0, 1).unwrap()[0].seq, 71);
        assert_eq!(crate::store::verify_log(&s, Table::Events).unwrap().0, 100);
    }

    #[test]
    fn logs_are_gapless_and_chained_and_checks_guard_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let mut handles = Vec::new();
        for t in 0..4 {
            let s = s.clone();
            handles.push(std::thread::spawn(move || {
                for i in 0..25 {
                    let mut b = Batch::new();
                    b.append(Table::Events, format!("{t}-{i}").into_bytes());
                    s.commit(&b).unwrap();
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        let entries = s.read_log(Table::Events, 0, 1000).unwrap();
        assert_eq!(entries.len(), 100);
        let mut prev = [0u8; 32];
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.hash, chain_hash(&prev, e.seq, &e.value));
            prev = e.hash;
        }
        assert_eq!(s.log_head(Table::Events).unwrap(), (100, prev));
        assert_eq!(s.read_log(Table::Events, 98, 10).unwrap().len(), 2);
        // A check on a record that changed fails the whole batch, appends included.
        let mut b = Batch::new();
        b.insert(Table::Meta, b"g".to_vec(), b"1".to_vec());
        s.commit(&b).unwrap();
        let mut b = Batch::new();
        b.check(Table::Meta, b"g".to_vec(), 0)
            .append(Table::Events, b"x".to_vec());
        assert_eq!(s.commit(&b), Err(StoreError::Conflict));
        let mut b = Batch::new();
        b.check(Table::Meta, b"g".to_vec(), 1)
            .append(Table::Events, b"x".to_vec());
        assert_eq!(s.commit(&b).unwrap(), vec![101]);
    }
}

#[cfg(test)]
mod bad_input {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::super::disk::OsDisk;
    use super::super::wal::list;
    use super::tests::XorShift;
    use super::*;

    /// Every file under `dir` with its bytes.
    fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    fn refusal(path: &Path) -> String {
        match SledStore::open(path) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} was opened", path.display()),
        }
    }

    fn filled(dir: &Path) {
        let s = SledStore::open(dir).unwrap();
        for i in 0..300u32 {
            let mut b = Batch::new();
            b.insert(Table::Approvals, format!("jti-{i:04}").into_bytes(), vec![7u8; 200]);
            s.commit(&b).unwrap();
        }
        s.checkpoint().unwrap();
        let mut b = Batch::new();
        b.insert(Table::Approvals, b"in-the-log".to_vec(), b"x".to_vec());
        s.commit(&b).unwrap();
    }

    /// The raw values sled holds for a table (the store must be closed).
    fn raw_sled(dir: &Path, t: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = open_sled(dir, 1 << 20).unwrap();
        let tree = db.open_tree(tree_name(t)).unwrap();
        tree.iter()
            .map(|i| i.unwrap())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// A closed store holding one record of table `t` at `key`, one key
    /// in the table's own tree (as stores of format 4 and older held users,
    /// and every store holds an approval with an id that is not timed),
    /// whose value as sled holds it is `rewrite` of the packed record.
    fn one_record_rewritten(dir: &Path, t: Table, key: &[u8], rewrite: impl FnOnce(Vec<u8>) -> Vec<u8>) {
        drop(SledStore::open(dir).unwrap());
        let db = open_sled(dir, 1 << 20).unwrap();
        let tree = db.open_tree(t.name()).unwrap();
        tree.insert(key, rewrite(packed::pack(&encode(1, RECORD.as_bytes())).unwrap()))
            .unwrap();
        db.flush().unwrap();
    }

    /// Marks a closed store as one a format-1 build wrote; the marker's path.
    fn mark_format_1(dir: &Path) -> PathBuf {
        mark_format(dir, 1)
    }

    /// Marks a closed store as one a build of `format` wrote; the marker's path.
    fn mark_format(dir: &Path, format: u32) -> PathBuf {
        let m = dir.join(MARKER);
        let text = std::fs::read_to_string(&m)
            .unwrap()
            .replace(&format!("\"format\":{STORE_FORMAT}"), &format!("\"format\":{format}"));
        std::fs::write(&m, text).unwrap();
        m
    }

    const RECORD: &str = r#"{"v":1,"at":1796640000,"actor":"withdrawal-engine","user_id":"user-0042","action":"approval.issue","outcome":"ok","reason":"","details":{"act":"withdrawal","amr":"otp"}}"#;

    /// Records reach sled packed (smaller), read back exactly, also after
    /// a reopen, and the store says format 2.
    #[test]
    fn records_are_packed_in_sled_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..50u32 {
                let mut b = Batch::new();
                b.insert(
                    Table::Approvals,
                    format!("jti-{i:04}").into_bytes(),
                    RECORD.as_bytes().to_vec(),
                );
                b.append(Table::Audit, RECORD.as_bytes().to_vec());
                s.commit(&b).unwrap();
            }
            s.checkpoint().unwrap();
        }
        let raw = raw_sled(dir.path(), Table::Approvals);
        assert_eq!(raw.len(), 50);
        for (_, v) in &raw {
            assert_eq!(v[0], 1, "value not packed");
            assert!(v.len() < 8 + RECORD.len() / 2, "{} bytes", v.len());
        }
        // The audit log: entries 1..=50 in block 0, one packed sled value
        // much smaller than the entries.
        let raw = raw_sled(dir.path(), Table::Audit);
        assert_eq!(raw.len(), 1);
        assert_eq!((raw[0].0.as_slice(), raw[0].1[0]), (&0u64.to_be_bytes()[..], 1));
        assert!(
            raw[0].1.len() < 50 * (8 + 32 + RECORD.len()) / 3,
            "{} bytes",
            raw[0].1.len()
        );
        let marker: Marker = serde_json::from_slice(&std::fs::read(dir.path().join(MARKER)).unwrap()).unwrap();
        assert_eq!(marker.format, STORE_FORMAT);
        let s = SledStore::open(dir.path()).unwrap();
        let v = s.get(Table::Approvals, b"jti-0007").unwrap().unwrap();
        assert_eq!((v.version, v.value.as_slice()), (1, RECORD.as_bytes()));
        let audit = s.read_log(Table::Audit, 0, 100).unwrap();
        assert_eq!(audit.len(), 50);
        assert!(audit.iter().all(|e| e.value == RECORD.as_bytes()));
        assert_eq!(crate::store::verify_log(&s, Table::Audit).unwrap().0, 50);
    }

    /// A store written before packing (format 1, every value as is) opens,
    /// is marked with this format before anything is packed into it, and
    /// holds old and new values side by side.
    #[test]
    fn a_format_1_store_is_read_and_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // What an older build left: plain values, a format-1 marker.
        one_record_rewritten(dir.path(), Table::Approvals, b"old", |v| packed::unpack(&v).unwrap());
        assert_eq!(raw_sled(dir.path(), Table::Approvals)[0].1[0], 0);
        let m = mark_format_1(dir.path());
        {
            let s = SledStore::open(dir.path()).unwrap();
            let marker: Marker = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
            assert_eq!(marker.format, STORE_FORMAT);
            assert_eq!(
                s.get(Table::Approvals, b"old").unwrap().unwrap().value,
                RECORD.as_bytes()
            );
            let mut b = Batch::new();
            b.insert(Table::Approvals, b"new".to_vec(), RECORD.as_bytes().to_vec());
            s.commit(&b).unwrap();
            s.checkpoint().unwrap();
        }
        let raw: BTreeMap<_, _> = raw_sled(dir.path(), Table::Approvals).into_iter().collect();
        assert_eq!((raw[&b"old".to_vec()][0], raw[&b"new".to_vec()][0]), (0, 1));
        let s = SledStore::open(dir.path()).unwrap();
        let all = s.scan_prefix(Table::Approvals, b"").unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|(_, v)| v.value == RECORD.as_bytes()));
    }

    /// Users and factors kept one key each (format 4 and older) are moved
    /// into accounts when the store is opened: the same records, readable
    /// every way and written like any other afterwards, the old trees left
    /// with only the keys accounts do not take; also when a crash cut the
    /// move short (records in both places).
    #[test]
    fn format_4_users_and_factors_are_moved_into_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let factor = |u: &str, f: &str| [u.as_bytes(), &[0], f.as_bytes()].concat();
        let mut users: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut factors: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for i in 0..40 {
            users.insert(format!("user-{i:02}").into_bytes(), format!("u{i}").into_bytes());
            for f in 0..i % 3 {
                factors.insert(
                    factor(&format!("user-{i:02}"), &format!("f_{f}")),
                    format!("f{i}.{f}").into_bytes(),
                );
            }
        }
        // Kept one key each whatever the format: a user id holding 0x00,
        // a factor key without one.
        users.insert(b"odd\0user".to_vec(), b"odd".to_vec());
        factors.insert(b"no-separator".to_vec(), b"odd".to_vec());
        drop(SledStore::open(dir.path()).unwrap());
        {
            let db = open_sled(dir.path(), 1 << 20).unwrap();
            for (t, model) in [(Table::Users, &users), (Table::Factors, &factors)] {
                let tree = db.open_tree(t.name()).unwrap();
                for (k, v) in model {
                    tree.insert(k.as_slice(), packed::pack(&encode(1, v)).unwrap()).unwrap();
                }
            }
            // As if a move had been cut short: one account already there.
            let a = account_groups::Account {
                user: Some(encode(1, &users[&b"user-05".to_vec()])),
                factors: [(factor("user-05", "f_0"), encode(1, &factors[&factor("user-05", "f_0")]))].into(),
            };
            db.open_tree(ACCOUNTS_TREE)
                .unwrap()
                .insert(b"user-05", account_groups::encode(b"user-05", &a).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let m = mark_format(dir.path(), 4);
        let prefixes: [&[u8]; 6] = [b"", b"user-0", b"user-05", b"user-05\0", b"user-05\0f_1", b"o"];
        let starts = [(None, 3), (Some(&b"user-1"[..]), 4), (Some(&b"user-05\0f_0"[..]), 1)];
        let check =
            |s: &SledStore, users: &BTreeMap<Vec<u8>, Vec<u8>>, factors: &BTreeMap<Vec<u8>, Vec<u8>>, at: &str| {
                for (t, model) in [(Table::Users, users), (Table::Factors, factors)] {
                    assert_reads(s, t, model, &prefixes, &starts, &format!("{} {at}", t.name()));
                }
            };
        {
            let s = SledStore::open(dir.path()).unwrap();
            let marker: Marker = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
            assert_eq!(marker.format, STORE_FORMAT);
            check(&s, &users, &factors, "after the move");
            let v = s.get(Table::Factors, &factor("user-07", "f_0")).unwrap().unwrap();
            let mut b = Batch::new();
            b.delete(Table::Factors, factor("user-07", "f_0"), v.version);
            b.update(Table::Users, b"user-07".to_vec(), 1, b"changed".to_vec());
            b.insert(Table::Factors, factor("user-07", "f_9"), b"new".to_vec());
            s.commit(&b).unwrap();
            s.checkpoint().unwrap();
        }
        factors.remove(&factor("user-07", "f_0"));
        users.insert(b"user-07".to_vec(), b"changed".to_vec());
        factors.insert(factor("user-07", "f_9"), b"new".to_vec());
        let s = SledStore::open(dir.path()).unwrap();
        check(&s, &users, &factors, "after reopening");
        drop(s);
        let mut left: Vec<Vec<u8>> = raw_sled(dir.path(), Table::Users).into_iter().map(|(k, _)| k).collect();
        left.extend(raw_sled(dir.path(), Table::Factors).into_iter().map(|(k, _)| k));
        assert_eq!(left, vec![b"odd\0user".to_vec(), b"no-separator".to_vec()]);
        let db = open_sled(dir.path(), 1 << 20).unwrap();
        assert_eq!(db.open_tree(ACCOUNTS_TREE).unwrap().len(), 40);
    }

    /// A log kept one key per entry (format 1) is moved into blocks when
    /// the store is opened: the same entries, the chain intact, the old
    /// tree gone; also when a crash cut the move short.
    #[test]
    fn a_format_1_log_is_moved_into_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..150u32 {
                let mut b = Batch::new();
                b.append(Table::Audit, format!("{RECORD}{i}").into_bytes());
                b.append(Table::Events, format!("e{i}").into_bytes());
                s.commit(&b).unwrap();
            }
            s.checkpoint().unwrap();
            (
                s.read_log(Table::Audit, 0, 1000).unwrap(),
                s.read_log(Table::Events, 0, 1000).unwrap(),
            )
        };
        // What an older build left: one key per entry, plain, and (as if
        // a move had been cut short) the first block of the audit log
        // already written too.
        {
            let db = open_sled(dir.path(), 1 << 20).unwrap();
            for (t, entries) in [(Table::Audit, &before.0), (Table::Events, &before.1)] {
                let legacy = db.open_tree(t.name()).unwrap();
                for e in entries {
                    let mut v = e.hash.to_vec();
                    v.extend_from_slice(&e.value);
                    legacy.insert(e.seq.to_be_bytes(), encode(1, &v)).unwrap();
                }
                let blocks = db.open_tree(tree_name(t)).unwrap();
                for (k, _) in blocks.iter().map(|i| i.unwrap()).skip(usize::from(t == Table::Audit)) {
                    blocks.remove(k).unwrap();
                }
            }
            db.flush().unwrap();
        }
        mark_format_1(dir.path());
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.read_log(Table::Audit, 0, 1000).unwrap(), before.0);
            assert_eq!(s.read_log(Table::Events, 0, 1000).unwrap(), before.1);
            assert_eq!(crate::store::verify_log(&s, Table::Audit).unwrap().0, 150);
            assert_eq!(s.len(Table::Events).unwrap(), 150);
            let mut b = Batch::new();
            b.append(Table::Audit, b"after".to_vec());
            assert_eq!(s.commit(&b).unwrap(), vec![151]);
            s.checkpoint().unwrap();
        }
        let db = open_sled(dir.path(), 1 << 20).unwrap();
        let names: Vec<String> = db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        assert!(!names.iter().any(|n| n == "audit" || n == "events"), "{names:?}");
        assert_eq!(db.open_tree(tree_name(Table::Audit)).unwrap().len(), 3);
    }

    /// A log entry changed inside a block where its hash is derived (so
    /// the derived hashes after it change with it) is still found by
    /// `verify_log`: at the next hash the block or log head keeps.
    #[test]
    fn a_changed_entry_in_a_block_with_derived_hashes_is_found() {
        for victim in [100u64, 140] {
            let dir = tempfile::tempdir().unwrap();
            {
                let s = SledStore::open(dir.path()).unwrap();
                for i in 0..150u32 {
                    let mut b = Batch::new();
                    b.append(Table::Audit, format!("{RECORD}{i}").into_bytes());
                    s.commit(&b).unwrap();
                }
                s.checkpoint().unwrap();
                assert_eq!(crate::store::verify_log(&s, Table::Audit).unwrap().0, 150);
            }
            {
                let db = open_sled(dir.path(), 1 << 20).unwrap();
                let tree = db.open_tree(tree_name(Table::Audit)).unwrap();
                let key = log_blocks::block_of(victim).to_be_bytes();
                let mut plain = packed::unpack(&tree.get(key).unwrap().unwrap()).unwrap();
                let mut at = 8;
                loop {
                    let seq = u64::from_be_bytes(plain[at..at + 8].try_into().unwrap());
                    let form = plain[at + 8];
                    let len = u32::from_be_bytes(plain[at + 9..at + 13].try_into().unwrap()) as usize;
                    let body = if form == 0 { len - 32 } else { len };
                    if seq == victim {
                        assert_eq!(form, 0, "entry {victim} keeps its hash");
                        plain[at + 13 + body - 1] ^= 0x01;
                        break;
                    }
                    at += 13 + body;
                }
                tree.insert(key, packed::pack(&plain).unwrap()).unwrap();
                db.flush().unwrap();
            }
            let s = SledStore::open(dir.path()).unwrap();
            assert!(
                crate::store::verify_log(&s, Table::Audit).is_err(),
                "entry {victim} changed unseen"
            );
        }
    }

    /// Reads of a log in blocks agree with one key per entry for every
    /// kind of bound, across block edges, after pruning.
    #[test]
    fn log_reads_cross_block_edges_and_follow_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for i in 1..=200u32 {
            let mut b = Batch::new();
            b.append(Table::Events, format!("e{i}").into_bytes());
            s.commit(&b).unwrap();
        }
        s.checkpoint().unwrap();
        let all = s.read_log(Table::Events, 0, 1000).unwrap();
        assert_eq!(all.len(), 200);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1 && e.value == format!("e{}", i + 1).into_bytes()));
        assert_eq!(
            s.read_log(Table::Events, 60, 10)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            (61..=70).collect::<Vec<_>>()
        );
        let got = s.get(Table::Events, &128u64.to_be_bytes()).unwrap().unwrap();
        assert_eq!(&got.value[32..], b"e128");
        assert_eq!(s.get(Table::Events, b"not-a-seq").unwrap(), None);
        let mut b = Batch::new();
        b.prune(Table::Events, 0, 130);
        s.commit(&b).unwrap();
        s.checkpoint().unwrap();
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(Table::Events).unwrap(), 70);
        assert_eq!(s.read_log(Table::Events, 0, 1).unwrap()[0].seq, 131);
        assert_eq!(crate::store::verify_log(&s, Table::Events).unwrap().0, 200);
        // Blocks 0 and 1 are gone whole; block 2 keeps 131..=191.
        drop(s);
        let raw = raw_sled(dir.path(), Table::Events);
        assert_eq!(raw.iter().map(|(k, _)| k[7]).collect::<Vec<_>>(), vec![2, 3]);
    }

    /// A `meta` key of the kind the model test below draws: plain names,
    /// an expiry prefix too short to name a time (kept in the `meta` tree),
    /// and expiry index entries over a few seconds.
    fn meta_key(rng: &mut XorShift) -> Vec<u8> {
        // Keys of the expiry prefix that name no whole time stay in the
        // `meta` tree: one sorts between the challenges' and the
        // approvals' seconds, one after every second.
        let between = [&b"expiry/"[..], &[0, 0, 0, 0, 0, 1]].concat();
        let plain: [&[u8]; 7] = [
            b"global",
            b"consumer/a",
            b"consumer/b",
            b"expiry-indexed",
            b"expiry/ab",
            &between,
            b"zz",
        ];
        match rng.below(3) {
            // A time and nothing after it: kept in its bucket too.
            0 if rng.below(8) == 0 => [&b"expiry/"[..], &(1_000u64 + 86_400).to_be_bytes()].concat(),
            0 => plain[rng.below(7) as usize].to_vec(),
            _ => crate::store::meta::expiry_key(
                [Table::Challenges, Table::Approvals][rng.below(2) as usize],
                format!("id{}", rng.below(12)).as_bytes(),
                1_000 + rng.below(4) as i64,
            ),
        }
    }

    /// Every way of reading `meta` agrees with a plain map, whether an
    /// expiry index entry sits in a memtable or in its bucket in sled.
    fn assert_meta_reads(s: &SledStore, model: &BTreeMap<Vec<u8>, Vec<u8>>, at: &str) {
        // One second of approvals' entries (some buckets but not others),
        // every approvals' second, and every second.
        let approvals = crate::store::meta::expiry_key(Table::Approvals, b"", 1_002);
        let prefixes: [&[u8]; 9] = [
            b"",
            b"exp",
            b"expiry/",
            &approvals[..15],
            &approvals[..16],
            &approvals[..14],
            &approvals[..12],
            b"consumer/",
            b"q",
        ];
        let starts = [(None, 3), (Some(&b"expiry/"[..]), 4), (Some(&b"expiry-indexed"[..]), 1)];
        assert_reads(s, Table::Meta, model, &prefixes, &starts, at);
    }

    /// Every way of reading table `t` agrees with a plain map: prefix scans
    /// of `prefixes`, pages of every size in `starts` from every start
    /// there, `len` and `get`.
    fn assert_reads(
        s: &SledStore,
        t: Table,
        model: &BTreeMap<Vec<u8>, Vec<u8>>,
        prefixes: &[&[u8]],
        starts: &[(Option<&[u8]>, usize)],
        at: &str,
    ) {
        for p in prefixes {
            let got: Vec<_> = s
                .scan_prefix(t, p)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.value))
                .collect();
            let want: Vec<_> = model
                .iter()
                .filter(|(k, _)| k.starts_with(p))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(got, want, "prefix {p:?} {at}");
        }
        for (start, limit) in starts.iter().copied() {
            let mut after = start.map(<[u8]>::to_vec);
            let mut got = Vec::new();
            loop {
                let page = s.scan_page(t, after.as_deref(), limit).unwrap();
                assert!(page.len() <= limit);
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                got.extend(page.into_iter().map(|(k, _)| k));
            }
            let want: Vec<_> = model
                .keys()
                .filter(|k| start.is_none_or(|a| k.as_slice() > a))
                .cloned()
                .collect();
            assert_eq!(got, want, "pages of {limit} after {start:?} {at}");
        }
        assert_eq!(s.len(t).unwrap(), model.len(), "len {at}");
        for k in model.keys() {
            assert_eq!(s.get(t, k).unwrap().map(|v| v.value).as_ref(), model.get(k), "{at}");
        }
    }

    /// The expiry index kept in buckets: random inserts and deletes of
    /// `meta` keys of every kind, checkpoints every few rounds; reads agree
    /// with a map throughout and after reopening, and sled's `meta` tree
    /// holds no expiry index entry that names a time.
    #[test]
    fn meta_reads_agree_with_a_model_with_the_expiry_index_in_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            checkpoint_interval: Duration::from_millis(5),
            checkpoint_keys: 5,
            ..Tuning::default()
        };
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = XorShift(0x0e1b_1d5e_77aa_0003);
        {
            let s = SledStore::open_with(dir.path(), tuning).unwrap();
            for round in 0..600u64 {
                let key = meta_key(&mut rng);
                let mut b = Batch::new();
                match s.get(Table::Meta, &key).unwrap() {
                    Some(v) if rng.below(2) == 0 => {
                        b.delete(Table::Meta, key.clone(), v.version);
                        model.remove(&key);
                    }
                    Some(v) => {
                        b.update(Table::Meta, key.clone(), v.version, format!("r{round}").into_bytes());
                        model.insert(key, format!("r{round}").into_bytes());
                    }
                    None => {
                        b.insert(Table::Meta, key.clone(), Vec::new());
                        model.insert(key, Vec::new());
                    }
                }
                s.commit(&b).unwrap();
                if round % 13 == 0 {
                    s.checkpoint().unwrap();
                }
                if round % 40 == 0 {
                    assert_meta_reads(&s, &model, &format!("at round {round}"));
                }
            }
            s.checkpoint().unwrap();
            assert_meta_reads(&s, &model, "at the end");
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_meta_reads(&s, &model, "after reopening");
        drop(s);
        let db = open_sled(dir.path(), 1 << 20).unwrap();
        let meta: Vec<_> = db
            .open_tree(Table::Meta.name())
            .unwrap()
            .iter()
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect();
        assert!(meta.iter().all(|k| expiry_blocks::bucket_of(k).is_none()), "{meta:?}");
        assert_eq!(
            meta.iter().any(|k| k.as_slice() == b"expiry/ab"),
            model.contains_key(&b"expiry/ab"[..])
        );
        let buckets = db.open_tree(EXPIRY_TREE).unwrap().len();
        let seconds: std::collections::BTreeSet<_> = model.keys().filter_map(|k| expiry_blocks::bucket_of(k)).collect();
        assert_eq!(buckets, seconds.len());
    }

    /// A key of a challenge (`t` = challenges) or approval: mostly timed
    /// ids of a few seconds and first random characters, some of the
    /// older shape or near misses, which stay in the table's own tree.
    fn timed_key(t: Table, rng: &mut XorShift) -> Vec<u8> {
        let prefix = std::str::from_utf8(record_groups::id_prefix(t).unwrap()).unwrap();
        let mut random = [0u8; 16];
        random[0] = [0x00, 0x04, 0x7C, 0xF8, 0xFC][rng.below(5) as usize];
        random[15] = rng.below(6) as u8;
        let timed = record_groups::timed_id(prefix, 1_000 + rng.below(3) as i64, &random).into_bytes();
        match rng.below(6) {
            // The older shape (22 random characters), and a timed id one
            // character short: both sort among the timed ones.
            0 => format!("{prefix}00000003e8{}", rng.below(4)).into_bytes(),
            1 => timed[..timed.len() - 1].to_vec(),
            2 => format!("{prefix}AbCdEfGhIjKlMnOpQrSt{:02}", rng.below(3)).into_bytes(),
            _ => timed,
        }
    }

    /// Challenges and approvals with timed ids kept in groups: random
    /// inserts, updates and deletes of keys of every shape, checkpoints
    /// every few rounds; reads agree with a map throughout and after
    /// reopening, the tables' own trees hold no timed id, and there is one
    /// group per second and first random character.
    #[test]
    fn timed_records_agree_with_a_model_in_groups() {
        for t in [Table::Challenges, Table::Approvals] {
            let dir = tempfile::tempdir().unwrap();
            let tuning = Tuning {
                checkpoint_interval: Duration::from_millis(5),
                checkpoint_keys: 5,
                ..Tuning::default()
            };
            let prefix = record_groups::id_prefix(t).unwrap();
            let second = [prefix, b"00000003e9"].concat();
            let prefixes: [&[u8]; 8] = [
                b"",
                prefix,
                &second,
                &second[..second.len() - 1],
                b"ch_0",
                b"0",
                b"A",
                b"z",
            ];
            let starts = [(None, 3), (Some(&second[..]), 4), (Some(&b"ch_"[..]), 1)];
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut rng = XorShift(0x7e1d_1d5e_77aa_0005 ^ t as u64);
            {
                let s = SledStore::open_with(dir.path(), tuning).unwrap();
                for round in 0..500u64 {
                    let key = timed_key(t, &mut rng);
                    let mut b = Batch::new();
                    match s.get(t, &key).unwrap() {
                        Some(v) if rng.below(3) == 0 => {
                            b.delete(t, key.clone(), v.version);
                            model.remove(&key);
                        }
                        Some(v) => {
                            b.update(t, key.clone(), v.version, format!("r{round}").into_bytes());
                            model.insert(key, format!("r{round}").into_bytes());
                        }
                        None => {
                            b.insert(t, key.clone(), b"new".to_vec());
                            model.insert(key, b"new".to_vec());
                        }
                    }
                    s.commit(&b).unwrap();
                    if round % 11 == 0 {
                        s.checkpoint().unwrap();
                    }
                    if round % 50 == 0 {
                        assert_reads(
                            &s,
                            t,
                            &model,
                            &prefixes,
                            &starts,
                            &format!("{} at round {round}", t.name()),
                        );
                    }
                }
                s.checkpoint().unwrap();
                assert_reads(&s, t, &model, &prefixes, &starts, "at the end");
            }
            let s = SledStore::open(dir.path()).unwrap();
            assert_reads(&s, t, &model, &prefixes, &starts, "after reopening");
            // A timed id nobody made, in a group that exists: absent.
            let missing = record_groups::timed_id(std::str::from_utf8(prefix).unwrap(), 1_000, &[0xAA; 16]);
            assert!(s.get(t, missing.as_bytes()).unwrap().is_none());
            drop(s);
            let db = open_sled(dir.path(), 1 << 20).unwrap();
            let own: Vec<_> = db
                .open_tree(t.name())
                .unwrap()
                .iter()
                .keys()
                .map(|k| k.unwrap().to_vec())
                .collect();
            assert!(
                own.iter().all(|k| record_groups::group_of(prefix, k).is_none()),
                "{own:?}"
            );
            assert!(
                !own.is_empty()
                    && model
                        .keys()
                        .filter(|k| record_groups::group_of(prefix, k).is_none())
                        .count()
                        == own.len()
            );
            let groups = db.open_tree(format!("{}.groups", t.name())).unwrap().len();
            let ids: std::collections::BTreeSet<_> = model
                .keys()
                .filter_map(|k| record_groups::group_of(prefix, k))
                .collect();
            assert!(ids.len() > 10, "{ids:?}");
            assert_eq!(groups, ids.len());
        }
    }

    /// The decoded values kept for reads stay within their bounds, in
    /// count and in bytes, and what they keep is the newest.
    #[test]
    fn kept_values_stay_bounded_and_keep_the_newest() {
        let mut kept: Kept<(usize, u64), expiry_blocks::Bucket> = Kept::new(KEPT_GROUPS, KEPT_BYTES);
        let group = |n: usize| -> Arc<expiry_blocks::Bucket> {
            Arc::new((0..n).map(|i| (i.to_be_bytes().to_vec(), Vec::new())).collect())
        };
        let raw = |i: u64| sled::IVec::from(&i.to_be_bytes()[..]);
        for i in 0..5_000u64 {
            kept.keep((1, i), raw(i), group(2), 100);
            assert!(kept.items.len() <= KEPT_GROUPS);
            assert!(kept.get(&(1, i), &raw(i)).is_some());
        }
        // Bytes: large values push the older out.
        for i in 0..100u64 {
            kept.keep((2, i), raw(i), group(1), 400_000);
            assert!(kept.bytes <= KEPT_BYTES, "{}", kept.bytes);
            assert_eq!(kept.bytes, kept.items.values().map(|k| k.bytes).sum::<usize>());
        }
        assert!(kept.get(&(2, 99), &raw(99)).is_some() && kept.get(&(2, 0), &raw(0)).is_none());
        // Other bytes for the same place: not an answer.
        assert!(kept.get(&(2, 99), &raw(98)).is_none());
    }

    /// The decoded buckets kept for reads never answer for bytes sled no
    /// longer holds: every read after a checkpoint changed a bucket sees
    /// the change.
    #[test]
    fn kept_buckets_follow_every_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let key = |id: &str, at: i64| crate::store::meta::expiry_key(Table::Approvals, id.as_bytes(), at);
        let get = |k: &[u8]| s.get(Table::Meta, k).unwrap().map(|v| v.version);
        let commit = |b: Batch| {
            s.commit(&b).unwrap();
            s.checkpoint().unwrap();
        };
        let mut b = Batch::new();
        b.insert(Table::Meta, key("a", 100), Vec::new());
        for at in 101..110 {
            b.insert(Table::Meta, key("z", at), Vec::new());
        }
        commit(b);
        assert_eq!((get(&key("a", 100)), get(&key("b", 100))), (Some(1), None));
        // Other seconds read in between (more than are kept) push nothing
        // wrong out or in.
        for at in 101..110 {
            assert_eq!((get(&key("z", at)), get(&key("a", at))), (Some(1), None));
        }
        let mut b = Batch::new();
        b.insert(Table::Meta, key("b", 100), Vec::new());
        b.update(Table::Meta, key("a", 100), 1, b"x".to_vec());
        commit(b);
        assert_eq!((get(&key("a", 100)), get(&key("b", 100))), (Some(2), Some(1)));
        let mut b = Batch::new();
        b.delete(Table::Meta, key("a", 100), 2);
        b.delete(Table::Meta, key("b", 100), 1);
        commit(b);
        assert_eq!((get(&key("a", 100)), get(&key("b", 100))), (None, None));
        let mut b = Batch::new();
        b.insert(Table::Meta, key("a", 100), Vec::new());
        commit(b);
        assert_eq!(get(&key("a", 100)), Some(1));
    }

    /// The decoded accounts kept for reads never answer for bytes sled no
    /// longer holds: every read after a checkpoint changed an account (its
    /// user, a factor, or nothing left in it) sees the change, through
    /// `get` and through a scan of the user's factors.
    #[test]
    fn kept_accounts_follow_every_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let commit = |b: Batch| {
            s.commit(&b).unwrap();
            s.checkpoint().unwrap();
        };
        let user = |id: &str| {
            s.get(Table::Users, id.as_bytes())
                .unwrap()
                .map(|v| (v.version, v.value))
        };
        let factors = |id: &str| -> Vec<(Vec<u8>, u64)> {
            let prefix = [id.as_bytes(), &[0]].concat();
            let all = s.scan_prefix(Table::Factors, &prefix).unwrap();
            all.into_iter().map(|(k, v)| (k, v.version)).collect()
        };
        let fk = |id: &str, f: &str| [id.as_bytes(), &[0], f.as_bytes()].concat();
        let mut b = Batch::new();
        b.insert(Table::Users, b"u1".to_vec(), b"one".to_vec());
        b.insert(Table::Factors, fk("u1", "f1"), b"totp".to_vec());
        commit(b);
        assert_eq!(user("u1"), Some((1, b"one".to_vec())));
        assert_eq!(factors("u1"), vec![(fk("u1", "f1"), 1)]);
        // More accounts read in between than are kept.
        for i in 0..(KEPT_ACCOUNTS + 10) {
            assert_eq!(user(&format!("x{i}")), None);
        }
        let mut b = Batch::new();
        b.update(Table::Users, b"u1".to_vec(), 1, b"two".to_vec());
        b.insert(Table::Factors, fk("u1", "f2"), b"webauthn".to_vec());
        commit(b);
        assert_eq!(user("u1"), Some((2, b"two".to_vec())));
        assert_eq!(factors("u1"), vec![(fk("u1", "f1"), 1), (fk("u1", "f2"), 1)]);
        let mut b = Batch::new();
        b.delete(Table::Factors, fk("u1", "f1"), 1);
        commit(b);
        assert_eq!(factors("u1"), vec![(fk("u1", "f2"), 1)]);
        assert_eq!(user("u1"), Some((2, b"two".to_vec())));
        let mut b = Batch::new();
        b.delete(Table::Users, b"u1".to_vec(), 2);
        b.delete(Table::Factors, fk("u1", "f2"), 1);
        commit(b);
        assert_eq!((user("u1"), factors("u1")), (None, Vec::new()));
        let mut b = Batch::new();
        b.insert(Table::Users, b"u1".to_vec(), b"three".to_vec());
        commit(b);
        assert_eq!(user("u1"), Some((1, b"three".to_vec())));
    }

    /// A store that kept the expiry index one key per entry in `meta`
    /// (format 2) has it moved into buckets when it is opened: the same
    /// entries, readable and sweepable; also when a crash cut the move
    /// short (entries in both places).
    #[test]
    fn a_format_2_expiry_index_is_moved_into_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut rng = XorShift(0x2222_3333_4444_5555);
            for _ in 0..200 {
                let key = meta_key(&mut rng);
                if model.contains_key(&key) {
                    continue;
                }
                let mut b = Batch::new();
                b.insert(Table::Meta, key.clone(), b"x".to_vec());
                s.commit(&b).unwrap();
                model.insert(key, b"x".to_vec());
            }
            s.checkpoint().unwrap();
        }
        // What a format-2 build left: every entry one key in `meta`, and (as
        // if a move had been cut short) the first bucket still there too.
        {
            let db = open_sled(dir.path(), 1 << 20).unwrap();
            let meta = db.open_tree(Table::Meta.name()).unwrap();
            let buckets = db.open_tree(EXPIRY_TREE).unwrap();
            for (i, item) in buckets.iter().enumerate() {
                let (k, raw) = item.unwrap();
                for (key, v) in read_group(Grouping::Expiry, &k, &raw).unwrap() {
                    meta.insert(key, packed::pack(&v).unwrap()).unwrap();
                }
                if i > 0 {
                    buckets.remove(k).unwrap();
                }
            }
            db.flush().unwrap();
        }
        let m = mark_format(dir.path(), 2);
        {
            let s = SledStore::open(dir.path()).unwrap();
            let marker: Marker = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
            assert_eq!(marker.format, STORE_FORMAT);
            assert_meta_reads(&s, &model, "after the move");
            // The moved entries are written like any other afterwards.
            let gone = model
                .keys()
                .find(|k| expiry_blocks::bucket_of(k).is_some())
                .unwrap()
                .clone();
            let v = s.get(Table::Meta, &gone).unwrap().unwrap();
            let mut b = Batch::new();
            b.delete(Table::Meta, gone.clone(), v.version);
            s.commit(&b).unwrap();
            model.remove(&gone);
            s.checkpoint().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_meta_reads(&s, &model, "after reopening");
        drop(s);
        let db = open_sled(dir.path(), 1 << 20).unwrap();
        let meta = db.open_tree(Table::Meta.name()).unwrap();
        assert!(meta
            .iter()
            .keys()
            .all(|k| expiry_blocks::bucket_of(&k.unwrap()).is_none()));
    }

    /// A value sled holds in an encoding this build does not know is
    /// refused as damage, not misread.
    #[test]
    fn a_value_in_an_unknown_encoding_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        one_record_rewritten(dir.path(), Table::Approvals, b"u", |mut v| {
            v[0] = 7;
            v
        });
        let s = SledStore::open(dir.path()).unwrap();
        let e = s.get(Table::Approvals, b"u").unwrap_err();
        assert!(matches!(&e, StoreError::Corrupt(m) if m.contains("encoding 7")), "{e}");
    }

    #[test]
    fn a_directory_that_is_not_a_store_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"someone's files").unwrap();
        std::fs::create_dir(dir.path().join("photos")).unwrap();
        let before = tree(dir.path());
        let e = refusal(dir.path());
        assert!(
            e.contains("is not a Sigil store") && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
        assert_eq!(tree(dir.path()), before);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_log_of_a_newer_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        let wal = dir.path().join("wal");
        let (_, file) = list(&OsDisk, &wal).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[8..12].copy_from_slice(&(super::super::wal::FORMAT_VERSION + 1).to_be_bytes());
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&bytes[..12]);
        bytes[12..16].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(&file, &bytes).unwrap();
        let before = tree(dir.path());
        let e = refusal(dir.path());
        assert!(e.contains("newer") && e.contains(&file.display().to_string()), "{e}");
        assert_eq!(tree(dir.path()), before);
    }

    #[test]
    fn a_store_of_a_newer_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        std::fs::write(dir.path().join(MARKER), br#"{"format":9,"applied_lsn":1}"#).unwrap();
        let before = tree(dir.path());
        let e = refusal(dir.path());
        assert!(e.contains("newer") && e.contains("format 9"), "{e}");
        assert_eq!(tree(dir.path()), before);
    }

    /// sled's data file cut short: refused (or sled itself refuses), never
    /// served with the checkpointed records missing.
    #[test]
    fn a_truncated_sled_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        let db = dir.path().join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let before = tree(dir.path());
        let e = refusal(dir.path());
        println!("refused: {e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        // sled's own recovery trims the torn end of its file when it
        // opens (nothing that was not lost already); Sigil's log and marker
        // are left exactly as they were, so the data can still be
        // examined and the log replayed onto a restored sled.
        let after = tree(dir.path());
        for (p, b) in &before {
            let ours = p.starts_with(dir.path().join("wal")) || p.ends_with(MARKER);
            if ours {
                assert_eq!(after.get(p), Some(b), "{} changed", p.display());
            }
        }
    }
}
