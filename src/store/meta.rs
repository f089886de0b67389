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
