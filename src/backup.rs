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
//! **restore epoch** ([`RestoreRecord`]), because the backup cannot know what
//! was redeemed or used after it was taken:
//! - every approval issued and every challenge opened at or before the
//!   restore moment is refused (WebAuthn assertions and YubiKey HMAC
//!   responses answer a challenge, so none made before the restore counts
//!   after it);
//! - every TOTP time step up to `step_at(restored_at) + WINDOW` is refused:
//!   that is the newest step a code could have been accepted for before the
//!   restore, given the ±1 step window;
//! - a Yubico OTP factor enrolled before the restore is refused until it is
//!   enrolled again: its OTPs carry their own counters, which the restored
//!   record may be behind.
//!
//! The append-only logs are history and are not rolled back: the events and
//! the audit log (with its signed checkpoints) are taken from the live store
//! whenever it is at least as far along as the backup, so event cursors keep
//! growing across a restore and the audit chain keeps every entry written
//! between the backup and the restore. A log travels with where it starts:
//! its floor (entries pruned by retention or archived), the audit anchor
//! (the signed checkpoint the live audit log verifies from) and the event
//! consumers' acknowledgements. The restore itself is in the audit log and
//! the event stream.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::AuditEntry;
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::kernel::Kernel;
use crate::store::codec;
use crate::store::meta;
use crate::store::{decode_log_head, log_floor_key, log_head_key, Batch, LogHead, SledStore, Store, Table, Versioned};

/// Magic bytes at the start of a backup.
pub const MAGIC: &[u8; 8] = b"SIGILBK1";
/// The format version this Sigil writes and reads.
pub const FORMAT_VERSION: u32 = 1;
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

pub use crate::store::meta::{restore_record, RestoreRecord};

/// Writes a consistent backup of `k`'s store to `out`. Returns its header
/// and size.
pub fn backup(k: &Kernel, out: &mut dyn Write) -> Result<(Header, u64), Error> {
    {
        let records = k.store.snapshot()?;
        let header = Header {
            deployment_id: k.deployment_id()?,
            taken_at: k.now()?,
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
        out.push(t.tag());
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

/// Where `log`'s head record sits in a backup's records, and what it says
/// (record version, last sequence number, chain hash).
fn backup_log_head(records: &Records, log: Table) -> Result<(Option<usize>, LogHead), Error> {
    let key = log_head_key(log);
    let pos = records.iter().position(|(t, k, _)| *t == Table::Meta && *k == key);
    let head = decode_log_head(pos.map(|i| &records[i].2)).map_err(|_| {
        Error::invalid(
            "backup",
            format!("the {} log head is malformed; nothing was restored", log.name()),
        )
    })?;
    Ok((pos, head))
}

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
        let table = Table::from_tag(t).ok_or_else(|| bad("unknown table"))?;
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
///
/// Two kinds of state follow the live store rather than the backup:
/// - **key state** (approval-key ring, secrets key, re-wrap progress)
///   follows the HSM, which a restore does not roll back;
/// - **the append-only logs** (events, audit with its signed checkpoints)
///   are history, which a restore does not undo. Of the live store's log
///   and the backup's, the longer one is kept whole (the live one on a
///   tie), so every event cursor handed out before the restore is below
///   every cursor after it, and the audit entries written between the
///   backup and the restore stay in the live chain.
pub fn restore(file: &Path, store_path: &Path, now: i64) -> Result<(Header, Option<PathBuf>), Error> {
    restore_with(file, store_path, now, &RestoreOptions::default())
}

/// Options of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// The highest event cursor consumers may have been given. Required
    /// when the live store is gone (nothing else knows how far the event
    /// stream went); events after the restore start above it (and above
    /// the live store's and the backup's). `Some(0)` says no consumer read
    /// past the backup.
    pub events_after: Option<u64>,
}

/// What a restore writes: the backup's records with the live store's logs,
/// key ring and secrets key carried over, and what came from where.
struct Plan {
    records: Records,
    kept_from: Vec<(Table, &'static str)>,
}

/// Decides what a restore writes, from the backup and the live store (if
/// one holds this deployment). Refuses a backup of another deployment, and
/// a restore without a live store unless `opts.events_after` says where the
/// event stream stood.
fn plan(
    header: &Header,
    mut records: Records,
    current: Option<&dyn Store>,
    where_: &str,
    opts: &RestoreOptions,
) -> Result<Plan, Error> {
    let mut kept_from: Vec<(Table, &'static str)> = Vec::new();
    let mut live = false;
    if let Some(current) = current {
        if let Some(v) = current.get(Table::Meta, meta::DEPLOYMENT)? {
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
            live = true;
        }
    }
    if let Some(current) = current.filter(|_| live) {
        let mut carried: Vec<(Table, Vec<u8>, Option<Versioned>)> = Vec::new();
        for key in [meta::KEY_RING, meta::SECRETS_KEY, meta::SECRETS_REWRAP] {
            carried.push((Table::Meta, key.to_vec(), current.get(Table::Meta, key)?));
        }
        for log in [Table::Events, Table::Audit] {
            let (live_head, _) = current.log_head(log)?;
            let (_, (_, backup_head, _)) = backup_log_head(&records, log)?;
            if live_head < backup_head {
                kept_from.push((log, "backup"));
                continue;
            }
            kept_from.push((log, "live store"));
            let mut tables = vec![log];
            if log == Table::Audit {
                // Checkpoints sign heads of the chain they came with.
                tables.push(Table::Checkpoints);
            }
            for t in tables {
                records.retain(|(rt, _, _)| *rt != t);
                for (k, v) in current.scan_prefix(t, b"")? {
                    records.push((t, k, v));
                }
            }
            // Where the log starts (pruned entries: its floor; archived
            // audit entries: the anchor) and who acknowledged what of it
            // travel with it.
            for key in [log_head_key(log), log_floor_key(log)] {
                carried.push((Table::Meta, key.clone(), current.get(Table::Meta, &key)?));
            }
            if log == Table::Audit {
                carried.push((
                    Table::Meta,
                    meta::AUDIT_ANCHOR.to_vec(),
                    current.get(Table::Meta, meta::AUDIT_ANCHOR)?,
                ));
            } else {
                records.retain(|(t, k, _)| !(*t == Table::Meta && k.starts_with(meta::CONSUMER_PREFIX)));
                for (k, v) in current.scan_prefix(Table::Meta, meta::CONSUMER_PREFIX)? {
                    records.push((Table::Meta, k, v));
                }
            }
        }
        for (table, key, value) in carried {
            records.retain(|(t, k, _)| !(*t == table && *k == key));
            if let Some(v) = value {
                records.push((table, key, v));
            }
        }
    }
    if !live && opts.events_after.is_none() {
        return Err(Error::invalid(
            "events_after",
            format!(
                "there is no live store at {where_} to continue the event stream from (it is missing, \
                 empty or holds no deployment): say the highest event cursor your consumers were given \
                 (`--events-after N`; 0 if none read past the backup) so that new events never reuse a \
                 cursor; nothing was restored"
            ),
        ));
    }
    if let Some(floor) = opts.events_after {
        let (pos, (version, seq, hash)) = backup_log_head(&records, Table::Events)?;
        if floor > seq {
            // The stream jumps: no entry between the old head and the
            // floor exists, and readers skip the gap.
            let mut value = floor.to_be_bytes().to_vec();
            value.extend_from_slice(&hash);
            if let Some(i) = pos {
                records.remove(i);
            }
            records.push((
                Table::Meta,
                log_head_key(Table::Events),
                Versioned {
                    version: version + 1,
                    value,
                },
            ));
            kept_from.push((Table::Events, "cursor floor"));
        }
    }
    Ok(Plan { records, kept_from })
}

/// The writes that mark a restored store: the restore record (the restore
/// epoch), the `restored` event and the `store.restore` audit entry.
/// `restore_version` is the version of a restore record already among the
/// restored records, if any.
fn restore_batch(
    header: &Header,
    plan: &Plan,
    now: i64,
    opts: &RestoreOptions,
    previous: Option<String>,
) -> Result<Batch, Error> {
    let rec = RestoreRecord {
        restored_at: now,
        backup_taken_at: header.taken_at,
    };
    let restore_version = plan
        .records
        .iter()
        .find(|(t, k, _)| *t == Table::Meta && k.as_slice() == meta::RESTORE)
        .map(|(_, _, v)| v.version);
    let mut batch = Batch::new();
    match restore_version {
        Some(v) => batch.update(Table::Meta, meta::RESTORE, v, codec::encode(&rec)?),
        None => batch.insert(Table::Meta, meta::RESTORE, codec::encode(&rec)?),
    };
    Event::new(EventKind::Restored, "", now, None)
        .with("backup_taken_at", header.taken_at.to_string())
        .with(
            "note",
            "approvals issued and challenges opened before the restore are refused, and so are TOTP codes of any time step up to one after the restore moment's",
        )
        .with("totp_floor_step", rec.totp_floor_step().to_string())
        .append_to(&mut batch)?;
    let mut entry = AuditEntry::ok(now, "operator", "", "store.restore")
        .with("backup_taken_at", header.taken_at.to_string())
        .with("records", header.records.to_string());
    for (log, from) in &plan.kept_from {
        entry = entry.with(&format!("{}_log_from", log.name()), *from);
    }
    if let Some(n) = opts.events_after {
        entry = entry.with("events_after", n.to_string());
    }
    if let Some(p) = previous {
        entry = entry.with("previous_store", p);
    }
    entry.append_to(&mut batch)?;
    Ok(batch)
}

/// [`restore`] with options.
pub fn restore_with(
    file: &Path,
    store_path: &Path,
    now: i64,
    opts: &RestoreOptions,
) -> Result<(Header, Option<PathBuf>), Error> {
    let bytes =
        std::fs::read(file).map_err(|e| Error::invalid("backup", format!("cannot read {}: {e}", file.display())))?;
    let (header, records) = decode(&bytes)?;
    // A live store is one holding a deployment: an empty or new directory
    // (a replacement volume) knows nothing of the event stream or the keys.
    let has_entries = std::fs::read_dir(store_path).is_ok_and(|mut d| d.next().is_some());
    let current = if has_entries {
        Some(SledStore::open(store_path).map_err(|e| {
            Error::Unavailable(format!(
                "cannot open the current store (is sigild still running? stop it first): {e}"
            ))
        })?)
    } else {
        None
    };
    let plan = plan(
        &header,
        records,
        current.as_ref().map(|c| c as &dyn Store),
        &store_path.display().to_string(),
        opts,
    )?;
    drop(current);
    let tmp = store_path.with_extension(format!("restore-{now}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| Error::Unavailable(format!("cannot clear {}: {e}", tmp.display())))?;
    }
    let keep = store_path.with_extension(format!("pre-restore-{now}"));
    let built = (|| -> Result<(), Error> {
        let store = SledStore::create_from(&tmp, &plan.records)?;
        let previous = store_path.exists().then(|| keep.display().to_string());
        let batch = restore_batch(&header, &plan, now, opts, previous)?;
        store.commit(&batch)?;
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let previous = if store_path.exists() {
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

/// Restores a backup into a PostgreSQL store, with every replica stopped:
/// the same rules as [`restore_with`] (same file format, the live logs
/// kept, the restore epoch written), in one transaction that keeps the
/// previous records in a table of their own. Returns the header and that
/// table's name.
pub fn restore_postgres(
    file: &Path,
    store: &crate::store::pg_store::PgStore,
    now: i64,
    opts: &RestoreOptions,
) -> Result<(Header, String), Error> {
    let bytes =
        std::fs::read(file).map_err(|e| Error::invalid("backup", format!("cannot read {}: {e}", file.display())))?;
    let (header, records) = decode(&bytes)?;
    let plan = plan(&header, records, Some(store), "the PostgreSQL database", opts)?;
    let kept = crate::store::pg_store::PgStore::pre_restore_table(now);
    let batch = restore_batch(&header, &plan, now, opts, Some(format!("table {kept}")))?;
    store.replace_all(&plan.records, &batch, now)?;
    Ok((header, kept))
}
