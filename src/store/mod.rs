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

pub mod sled_store;

pub use sled_store::SledStore;

/// The tables Sigil stores records in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Factors, keyed `user_id 0x00 factor_id`.
    Factors,
    /// Open and consumed approval challenges, keyed by challenge id.
    Challenges,
    /// Issued approvals, keyed by `jti`.
    Approvals,
    /// Service metadata (deployment id, schema version).
    Meta,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 4] = [
        Table::Factors,
        Table::Challenges,
        Table::Approvals,
        Table::Meta,
    ];

    /// The table's name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Factors => "factors",
            Table::Challenges => "challenges",
            Table::Approvals => "approvals",
            Table::Meta => "meta",
        }
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

/// Writes applied together, atomically, or not at all.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
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
    pub fn update(
        &mut self,
        table: Table,
        key: impl Into<Vec<u8>>,
        version: u64,
        value: Vec<u8>,
    ) -> &mut Self {
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

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
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

/// The storage interface every backend implements.
pub trait Store: Send + Sync {
    /// Reads one record.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Versioned>, StoreError>;
    /// Reads every record whose key starts with `prefix`, in key order.
    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError>;
    /// Applies `batch` atomically and durably, or returns an error having
    /// written nothing.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Number of records in a table (operations and tests).
    fn len(&self, table: Table) -> Result<usize, StoreError>;
}
