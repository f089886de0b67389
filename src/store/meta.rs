//! The keys of table `meta` and the small records stored under them.
//!
//! Every singleton record of the service lives here by name, so a reader
//! (backup, restore, migration) finds them all in one place.
use serde::{Deserialize, Serialize};

use super::codec::{self, Record};
use super::{Store, Table};
use crate::error::Error;

/// The deployment id (random, made when the store was created; a restore
/// checks the backup came from the same deployment).
pub const DEPLOYMENT: &[u8] = b"deployment";
/// The global protection record (revocation epoch, global suspension).
pub const GLOBAL: &[u8] = b"global";
/// The approval key ring.
pub const KEY_RING: &[u8] = b"approval-keys";
/// The label of the HSM key that wraps factor secrets.
pub const SECRETS_KEY: &[u8] = b"secrets-key";
/// A re-wrap of factor secrets in progress.
pub const SECRETS_REWRAP: &[u8] = b"secrets-rewrap";
/// The restore record, once the store was restored from a backup.
pub const RESTORE: &[u8] = b"restore";
/// The key id (RFC 7638 thumbprint) of the audit checkpoint key of the HSM
/// this deployment was created with: a store opened with another
/// deployment's HSM is refused.
pub const AUDIT_KEY_ID: &[u8] = b"audit-key-id";

/// Where the live audit log starts once its oldest entries were archived
/// and pruned (`audit::AuditAnchor`).
pub const AUDIT_ANCHOR: &[u8] = b"audit-anchor";
/// The prefix of event consumers' records (`consumer/<name>`: the cursor
/// each named consumer acknowledged, `events::ConsumerRecord`).
pub const CONSUMER_PREFIX: &[u8] = b"consumer/";

/// Every meta key that names one record (log heads and floors are per log:
/// [`super::log_head_key`], [`super::log_floor_key`]; consumers are per
/// name: [`consumer_key`]).
pub const ALL: [&[u8]; 8] = [
    DEPLOYMENT,
    GLOBAL,
    KEY_RING,
    SECRETS_KEY,
    SECRETS_REWRAP,
    RESTORE,
    AUDIT_KEY_ID,
    AUDIT_ANCHOR,
];

/// The meta key of the event consumer `name`.
pub fn consumer_key(name: &str) -> Vec<u8> {
    [CONSUMER_PREFIX, name.as_bytes()].concat()
}

/// The restore epoch kept in a restored store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// When the restore happened: approvals issued and challenges opened at
    /// or before it are refused, and so is every TOTP step up to the floor
    /// the TOTP module derives from it.
    pub restored_at: i64,
    /// When the backup was taken.
    pub backup_taken_at: i64,
}

impl Record for RestoreRecord {
    const NAME: &'static str = "restore";
}

/// The restore record of a store, if it was restored.
pub fn restore_record(store: &dyn Store) -> Result<Option<RestoreRecord>, Error> {
    match store.get(Table::Meta, RESTORE)? {
        Some(v) => Ok(Some(codec::decode(&v.value)?)),
        None => Ok(None),
    }
}

/// Set once every challenge, ceremony and approval of the store has an
/// expiry index entry (records written before the index existed, or
/// restored from a backup made before it, are indexed by the first sweep
/// that finds this key missing).
pub const EXPIRY_INDEXED: &[u8] = b"expiry-indexed";
/// The prefix of the expiry index: `expiry/<purge time, u64 big-endian>
/// <table><record key>` → empty, one entry per challenge, ceremony and
/// approval, written in the batch that creates the record. The sweep reads
/// the entries that are due, in time order, instead of every record.
pub const EXPIRY_PREFIX: &[u8] = b"expiry/";

/// How long after its own expiry a record of `table` is kept (challenges
/// an hour, so that a late answer is told "expired" rather than "unknown";
/// approvals a day, so that a late redemption is told "expired" and a
/// replay "already redeemed"), or None for tables without expiry.
pub fn purge_grace(table: Table) -> Option<i64> {
    match table {
        Table::Challenges => Some(3_600),
        Table::Ceremonies => Some(0),
        Table::Approvals => Some(86_400),
        Table::Quorum => Some(30 * 86_400),
        _ => None,
    }
}

/// The expiry index key of the record `key` of `table` that expires at
/// `expires_at` (purged `purge_grace` later).
pub fn expiry_key(table: Table, key: &[u8], expires_at: i64) -> Vec<u8> {
    let grace = purge_grace(table).unwrap_or(0);
    let at = expires_at.saturating_add(grace).max(0) as u64;
    let mut k = Vec::with_capacity(EXPIRY_PREFIX.len() + 9 + key.len());
    k.extend_from_slice(EXPIRY_PREFIX);
    k.extend_from_slice(&at.to_be_bytes());
    k.push(table.tag());
    k.extend_from_slice(key);
    k
}

/// Reads an expiry index key: (purge time, table, record key).
pub fn parse_expiry_key(k: &[u8]) -> Option<(i64, Table, &[u8])> {
    let rest = k.strip_prefix(EXPIRY_PREFIX)?;
    if rest.len() < 9 {
        return None;
    }
    let at = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let table = Table::from_tag(rest[8])?;
    purge_grace(table)?;
    Some((i64::try_from(at).ok()?, table, &rest[9..]))
}

/// Adds to `batch` the expiry index entry of a new record.
pub fn index_expiry(batch: &mut super::Batch, table: Table, key: &[u8], expires_at: i64) {
    batch.insert(Table::Meta, expiry_key(table, key, expires_at), Vec::new());
}
