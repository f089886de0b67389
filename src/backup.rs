//! Backup and restore.
//!
//! A backup is a consistent snapshot of the whole store (writers wait while
//! it is taken), written as:
//!
//! ```text
//! "SIGILBK1" | u32 BE format version | u32 BE header length | header JSON
//! { u8 table | u32 BE key length | key | u64 BE version | u32 BE value length | value }*
//! 0xFF | 32-byte SHA-256 of everything before it
//! ```
//! The header names the deployment, the time and the record count. Factor
//! secrets stay encrypted under the HSM key, so a backup holds no secret in
//! the clear.
//!
//! A restore (service stopped) checks the whole file first — format version,
//! trailing hash (a truncated or altered file is refused), deployment — then
//! builds the restored store beside the current one and swaps it in; on any
//! error the current store is left as it was. The restored store carries a
//! **restore epoch**: every approval issued before the restore moment and
//! every TOTP step at or before it is refused, because the backup cannot
//! know what was redeemed or used after it was taken. The restore is in the
//! audit log and the event stream.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::AuditEntry;
use crate::core::{Sigil, DEPLOYMENT_KEY};
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::store::{Batch, SledStore, Store, Table, Versioned};

/// Magic bytes at the start of a backup.
pub const MAGIC: &[u8; 8] = b"SIGILBK1";
/// The format version this Sigil writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Meta key of the restore record.
pub const RESTORE_KEY: &[u8] = b"restore";

/// A backup's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Deployment the backup comes from.
    pub deployment_id: String,
    /// When it was taken.
    pub taken_at: i64,
    /// Number of records.
    pub records: u64,
}

/// The restore epoch kept in the restored store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// When the restore happened: approvals issued and TOTP steps used at or
    /// before it are refused.
    pub restored_at: i64,
    /// When the backup was taken.
    pub backup_taken_at: i64,
}

fn table_index(t: Table) -> u8 {
    Table::ALL.iter().position(|x| *x == t).unwrap_or(0) as u8
}

/// The restore record of a store, if it was restored.
pub fn restore_record(store: &dyn Store) -> Result<Option<RestoreRecord>, Error> {
    match store.get(Table::Meta, RESTORE_KEY)? {
        Some(v) => Ok(Some(crate::protect::decode(&v.value, "restore")?)),
        None => Ok(None),
    }
}

impl Sigil {
    /// Writes a consistent backup to `out`. Returns its header and size.
    pub fn backup(&self, out: &mut dyn Write) -> Result<(Header, u64), Error> {
        let records = self.store.snapshot()?;
        let header = Header {
            deployment_id: self.deployment_id()?,
            taken_at: self.now()?,
            records: records.len() as u64,
        };
        let bytes = encode(&header, &records)?;
        out.write_all(&bytes)
            .map_err(|e| Error::Unavailable(format!("cannot write the backup: {e}")))?;
        Ok((header, bytes.len() as u64))
    }
}

/// Encodes a backup.
pub fn encode(header: &Header, records: &[(Table, Vec<u8>, Versioned)]) -> Result<Vec<u8>, Error> {
    let h = serde_json::to_vec(header).map_err(|e| Error::Internal(e.to_string()))?;
    let mut out = Vec::with_capacity(
        64 + records
            .iter()
            .map(|(_, k, v)| k.len() + v.value.len() + 17)
            .sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    for (t, k, v) in records {
        out.push(table_index(*t));
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&v.version.to_be_bytes());
        out.extend_from_slice(&(v.value.len() as u32).to_be_bytes());
        out.extend_from_slice(&v.value);
    }
    out.push(0xFF);
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    Ok(out)
}

/// The records of a store, as a backup carries them.
pub type Records = Vec<(Table, Vec<u8>, Versioned)>;

/// Decodes and checks a whole backup.
pub fn decode(bytes: &[u8]) -> Result<(Header, Records), Error> {
    let bad = |why: &str| Error::invalid("backup", why.to_string());
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("not a Sigil backup (wrong magic bytes)"));
    }
    let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version > FORMAT_VERSION {
        return Err(bad(&format!(
            "backup format version {version} is newer than this Sigil reads ({FORMAT_VERSION}); restore with a newer Sigil"
        )));
    }
    if bytes.len() < 12 + 4 + 1 + 32 {
        return Err(bad("the file is truncated"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != digest || body.last() != Some(&0xFF) {
        return Err(bad(
            "the file is truncated or altered (its SHA-256 trailer does not match); nothing was restored",
        ));
    }
    let mut pos = 12;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], Error> {
        let end = pos
            .checked_add(n)
            .filter(|e| *e <= body.len())
            .ok_or_else(|| bad("a record runs past the end"))?;
        let s = &body[*pos..end];
        *pos = end;
        Ok(s)
    };
    let u32_at = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let hlen = u32_at(take(&mut pos, 4)?);
    let header: Header = serde_json::from_slice(take(&mut pos, hlen)?).map_err(|e| bad(&format!("bad header: {e}")))?;
    let mut records = Vec::new();
    loop {
        let t = take(&mut pos, 1)?[0];
        if t == 0xFF {
            break;
        }
        let table = *Table::ALL.get(t as usize).ok_or_else(|| bad("unknown table"))?;
        let klen = u32_at(take(&mut pos, 4)?);
        let key = take(&mut pos, klen)?.to_vec();
        let mut ver = [0u8; 8];
        ver.copy_from_slice(take(&mut pos, 8)?);
        let vlen = u32_at(take(&mut pos, 4)?);
        let value = take(&mut pos, vlen)?.to_vec();
        records.push((
            table,
            key,
            Versioned {
                version: u64::from_be_bytes(ver),
                value,
            },
        ));
    }
    if pos != body.len() || records.len() as u64 != header.records {
        return Err(bad("the record count does not match the header"));
    }
    Ok((header, records))
}

/// Restores `file` into the store at `store_path` (the service must be
/// stopped). Returns the header and where the previous store was kept.
pub fn restore(file: &Path, store_path: &Path, now: i64) -> Result<(Header, Option<PathBuf>), Error> {
    let bytes =
        std::fs::read(file).map_err(|e| Error::invalid("backup", format!("cannot read {}: {e}", file.display())))?;
    let (header, records) = decode(&bytes)?;
    // Key state follows the HSM, which a restore does not roll back: the
    // current store's approval-key ring and secrets-key records replace the
    // backup's, so a key retired (or destroyed) since the backup stays so.
    let mut carried: Vec<(Vec<u8>, Option<Versioned>)> = Vec::new();
    if store_path.exists() {
        let current = SledStore::open(store_path).map_err(|e| {
            Error::Unavailable(format!(
                "cannot open the current store (is sigild still running? stop it first): {e}"
            ))
        })?;
        for key in [crate::keys::RING_KEY, crate::keys::SECRETS_KEY, crate::keys::REWRAP_KEY] {
            carried.push((key.to_vec(), current.get(Table::Meta, key)?));
        }
        if let Some(v) = current.get(Table::Meta, DEPLOYMENT_KEY)? {
            let id = String::from_utf8_lossy(&v.value).to_string();
            if id != header.deployment_id {
                return Err(Error::invalid(
                    "backup",
                    format!(
                        "the backup is from another deployment ({}); this store belongs to {id}",
                        header.deployment_id
                    ),
                ));
            }
        }
    }
    let tmp = store_path.with_extension(format!("restore-{now}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| Error::Unavailable(format!("cannot clear {}: {e}", tmp.display())))?;
    }
    let mut records = records;
    for (key, value) in &carried {
        records.retain(|(t, k, _)| !(*t == Table::Meta && k == key));
        if let Some(v) = value {
            records.push((Table::Meta, key.clone(), v.clone()));
        }
    }
    let built = (|| -> Result<(), Error> {
        let store = SledStore::create_from(&tmp, &records)?;
        let rec = RestoreRecord {
            restored_at: now,
            backup_taken_at: header.taken_at,
        };
        let mut batch = Batch::new();
        match store.get(Table::Meta, RESTORE_KEY)? {
            Some(v) => batch.update(Table::Meta, RESTORE_KEY, v.version, crate::protect::encode(&rec)?),
            None => batch.insert(Table::Meta, RESTORE_KEY, crate::protect::encode(&rec)?),
        };
        Event::new(EventKind::Restored, "", now, None)
            .with("backup_taken_at", header.taken_at.to_string())
            .with(
                "note",
                "approvals issued and TOTP steps used before the restore are refused",
            )
            .append_to(&mut batch)?;
        AuditEntry::ok(now, "operator", "", "store.restore")
            .with("backup_taken_at", header.taken_at.to_string())
            .with("records", header.records.to_string())
            .append_to(&mut batch)?;
        store.commit(&batch)?;
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let previous = if store_path.exists() {
        let keep = store_path.with_extension(format!("pre-restore-{now}"));
        std::fs::rename(store_path, &keep)
            .map_err(|e| Error::Unavailable(format!("cannot move the current store aside: {e}")))?;
        Some(keep)
    } else {
        None
    };
    std::fs::rename(&tmp, store_path)
        .map_err(|e| Error::Unavailable(format!("cannot move the restored store in place: {e}")))?;
    Ok((header, previous))
}
