//! The write-ahead log: the durable path of the embedded store.
//!
//! Every committed [`Batch`](super::Batch) becomes one record holding the
//! post-image of every key it wrote (the stored bytes, or "deleted"). A
//! record is durable once the file holding it has been `fdatasync`ed; group
//! commit lets one sync cover every record written before it began, so
//! concurrent commits share syncs instead of queueing for one each. The
//! records one sync covers are written as one **group**, and a group's
//! write starts only after the previous group's sync returned (in the same
//! file or, across a rotation, in the file before).
//!
//! Files are `NNNNNNNNNNNNNNNNNNNN.wal` in one directory, numbered upwards.
//! A new file is usually one prepared ahead (`next.prep`): already written
//! full of zeros and synced, so that a sync of the records written into it
//! has no file size or block allocation to make durable, only the records.
//! A zero tail ends a file cleanly. Replaying post-images in order is
//! idempotent, so a record may be replayed over state that already holds
//! it. The files and their names reach the disk through [`Disk`].
//!
//! # Format (version 2; integers big-endian)
//! - file: `"SIGILWAL" | version u32 | crc32c(the 12 bytes before) u32`,
//!   then groups, then optionally zeros;
//! - group: `0x53475250 u32 | body_len u32 | first_lsn u64 |
//!   crc32c(body) u32 | crc32c(the 20 header bytes before) u32 | body`;
//! - body: records with consecutive LSNs from `first_lsn`, each
//!   `len u32 | crc32c(payload) u32 | payload`, where
//!   `payload = lsn u64 | count u32 | count × op` and
//!   `op = table u8 | kind u8 (0 put, 1 delete) | key_len u32 | key | [value_len u32 | value]`.
//!
//! Files without the header are version 1 (records without groups) and
//! are still read.
//!
//! # What replay accepts
//! A crash or power cut can leave exactly one group that was written but
//! not synced: the last one of the log. Its pages may reach the disk in
//! any order or not at all, so it may be unreadable while later parts of it
//! (even whole records) are intact, and — when it is the closed file's last
//! group of a rotation — the next file may already exist, holding only its
//! header and zeros. None of its records was acknowledged. So replay reads
//! groups in order across the files and, at the **first unreadable group**:
//! - if no readable group follows it anywhere (later in its file or in a
//!   later file), it is the torn tail of a crash: it and everything after
//!   it are dropped, with a warning saying how many bytes;
//! - if a readable group follows it whose LSNs continue the log (later in
//!   its file, or anywhere in a later file), that group was written after
//!   the bad one was synced, so the bad one held acknowledged records: this
//!   is damage no crash produces, and the store refuses to start, naming
//!   the file and the byte offset. (Group bytes with older LSNs, say inside
//!   a stored value, prove nothing.)
//!
//! Version-1 files had no groups: in the last one, anything after the
//! first unreadable record is a torn tail; a readable record in a later
//! file still makes it damage.
//!
//! Readable groups whose LSNs do not follow on (a gap inside synced data)
//! and files of a newer format version are refused the same way.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::disk::{Disk, DiskFile};
use super::{StoreError, Table};

/// Slice-by-16 tables: records are a few KiB, checksummed on every commit.
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
/// Largest record accepted when reading (a batch is far smaller).
const MAX_RECORD: usize = 256 << 20;
/// Name of the file prepared as the next log file.
const PREPARED: &str = "next.prep";
/// Name of that file while it is being written.
const PREPARING: &str = "next.prep.tmp";
/// A file is prepared only after one that held at least this much (under
/// light load a sync's cost does not matter, and zeros would be wasted).
pub(crate) const PREPARE_MIN: u64 = 256 << 10;
/// A prepared file is sized after the file it follows (a checkpoint
/// interval's worth of records) plus a quarter, up to this; records past
/// its end grow it as an ordinary append.
const PREPARE_MAX: u64 = 64 << 20;
/// Magic bytes at the start of a version-2 log file.
const FILE_MAGIC: &[u8; 8] = b"SIGILWAL";
/// The log format this code writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Bytes of the file header.
const FILE_HEADER: usize = 16;
/// First four bytes of a group header ("SGRP").
const GROUP_MAGIC: u32 = 0x5347_5250;
/// Bytes of a group header.
const GROUP_HEADER: usize = 24;

/// One key's post-image: `Some(stored bytes)` or `None` (deleted).
pub type PostImage = (Table, Vec<u8>, Option<Vec<u8>>);

/// A replayed record.
pub(crate) struct Record {
    pub lsn: u64,
    pub ops: Vec<PostImage>,
}

/// What replay found.
#[derive(Default)]
pub(crate) struct Replayed {
    /// The readable records, in LSN order.
    pub records: Vec<Record>,
    /// The numbers of the log files read (all to be removed once the
    /// records are in the main store).
    pub files: Vec<u64>,
    /// Bytes dropped as the torn tail of a crash (0 if none).
    pub dropped_bytes: u64,
}

/// The log being written.
pub(crate) struct Wal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    prepare_min: u64,
    state: Mutex<State>,
    done: Condvar,
    /// Wakes the sync thread ([`Wal::run_syncer`]) when an asynchronous
    /// waiter asks for a record to become durable.
    syncer_cv: Condvar,
    /// The durable LSN (and failure), for asynchronous waiters.
    mark: tokio::sync::watch::Sender<Mark>,
}

/// A log file open for writing.
type LogFile = Arc<dyn DiskFile>;

/// A rotation between [`Wal::begin_rotate`] and [`Wal::finish_rotate`]:
/// the closed file and its records still to be written and synced.
pub(crate) struct Rotation {
    closed: u64,
    file: LogFile,
    pos: u64,
    buf: Vec<u8>,
    last: u64,
}

impl Rotation {
    /// The LSN of the closed file's last record.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// What asynchronous waiters watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    durable: u64,
    failed: bool,
}

struct State {
    file: LogFile,
    file_no: u64,
    /// Where the next write goes in `file` (past its last group).
    pos: u64,
    /// Bytes of groups in the file closed by the last rotation.
    closed_len: u64,
    /// A rotation has closed a file whose last records are not yet synced:
    /// nothing written after them may count as durable before they do, so
    /// no sync starts meanwhile.
    rotating: bool,
    /// The next group: room for its header, then the encoded records not
    /// yet handed to a writer.
    buf: Vec<u8>,
    /// Last LSN handed out (and encoded into `buf` or written).
    last_lsn: u64,
    /// Every record up to this LSN is durable.
    durable: u64,
    /// A group-commit leader is writing and syncing.
    writing: bool,
    /// A write or sync failed: nothing written since can be trusted.
    failed: Option<String>,
    /// Highest LSN an asynchronous waiter wants durable.
    wanted: u64,
    /// The sync thread should exit.
    stop: bool,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("write-ahead log: cannot {what} {}: {e}", path.display()))
}

fn file_name(no: u64) -> String {
    format!("{no:020}.wal")
}

/// A group buffer with room for its header and no records.
fn new_group() -> Vec<u8> {
    let mut b = Vec::with_capacity(1 << 16);
    b.resize(GROUP_HEADER, 0);
    b
}

/// Fills in the header of a group buffer (from [`new_group`], records
/// appended) and returns the whole group, or None if it holds no record.
fn seal_group(buf: &mut [u8]) -> Option<&[u8]> {
    if buf.len() <= GROUP_HEADER {
        return None;
    }
    // The first record's payload starts with its LSN.
    let first_lsn = u64::from_be_bytes(buf[GROUP_HEADER + 8..GROUP_HEADER + 16].try_into().ok()?);
    let body_len = (buf.len() - GROUP_HEADER) as u32;
    let body_crc = CRC.checksum(&buf[GROUP_HEADER..]);
    buf[0..4].copy_from_slice(&GROUP_MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&body_len.to_be_bytes());
    buf[8..16].copy_from_slice(&first_lsn.to_be_bytes());
    buf[16..20].copy_from_slice(&body_crc.to_be_bytes());
    let header_crc = CRC.checksum(&buf[0..20]);
    buf[20..24].copy_from_slice(&header_crc.to_be_bytes());
    Some(buf)
}

/// The 16-byte header of a log file.
fn file_header() -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    let crc = CRC.checksum(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The numbered log files in `dir`, oldest first.
pub(crate) fn list(disk: &dyn Disk, dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for name in disk.list(dir).map_err(|e| io_err("read", dir, e))? {
        let Some(stem) = name.strip_suffix(".wal") else {
            continue;
        };
        if let Ok(no) = stem.parse::<u64>() {
            out.push((no, dir.join(&name)));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a log file's header into the new, empty file `f` (at `path`)
/// and syncs it; its name is not yet durable.
fn write_header(f: &dyn DiskFile, path: &Path) -> Result<(), StoreError> {
    f.write_at(&file_header(), 0)
        .and_then(|_| f.sync_data())
        .map_err(|e| io_err("write", path, e))
}

/// Removes the prepared next file and one left half-prepared, if any:
/// zeros, never records.
fn remove_prepared(disk: &dyn Disk, dir: &Path) -> Result<(), StoreError> {
    for name in [PREPARED, PREPARING] {
        let p = dir.join(name);
        if disk.exists(&p) {
            disk.remove(&p).map_err(|e| io_err("remove", &p, e))?;
        }
    }
    Ok(())
}

fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), StoreError> {
    disk.sync_dir(dir).map_err(|e| io_err("sync", dir, e))
}

/// Appends one framed record to `out`.
fn encode(out: &mut Vec<u8>, lsn: u64, ops: &[PostImage]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_be_bytes());
    for (t, k, v) in ops {
        out.push(t.tag());
        out.push(if v.is_some() { 0 } else { 1 });
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        if let Some(v) = v {
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    let payload_len = (out.len() - start - 8) as u32;
    let crc = CRC.checksum(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }
}

fn decode_payload(p: &[u8]) -> Option<Record> {
    let mut c = Cursor { b: p };
    let lsn = c.u64()?;
    let n = c.u32()? as usize;
    let mut ops = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let h = c.take(2)?;
        let (t, kind) = (Table::from_tag(h[0])?, h[1]);
        let kl = c.u32()? as usize;
        let k = c.take(kl)?.to_vec();
        let v = match kind {
            0 => {
                let vl = c.u32()? as usize;
                Some(c.take(vl)?.to_vec())
            }
            1 => None,
            _ => return None,
        };
        ops.push((t, k, v));
    }
    if !c.b.is_empty() {
        return None;
    }
    Some(Record { lsn, ops })
}

/// The record framed at the start of `b`, and its framed length.
fn record_at(b: &[u8]) -> Option<(Record, usize)> {
    let mut c = Cursor { b };
    let len = c.u32()? as usize;
    let crc = c.u32()?;
    if len > MAX_RECORD {
        return None;
    }
    let payload = c.take(len)?;
    if CRC.checksum(payload) != crc {
        return None;
    }
    decode_payload(payload).map(|r| (r, 8 + len))
}

/// The group at the start of `b`: its records (consecutive LSNs from the
/// header's) and its length. None if any part of it is unreadable.
fn group_at(b: &[u8]) -> Option<(Vec<Record>, usize)> {
    let mut c = Cursor { b };
    if c.u32()? != GROUP_MAGIC {
        return None;
    }
    let body_len = c.u32()? as usize;
    let first_lsn = c.u64()?;
    let body_crc = c.u32()?;
    let header_crc = c.u32()?;
    if CRC.checksum(&b[..20]) != header_crc {
        return None;
    }
    let body = c.take(body_len)?;
    if CRC.checksum(body) != body_crc {
        return None;
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let (r, n) = record_at(&body[at..])?;
        // LSNs never wrap: a group whose LSNs would pass u64::MAX is
        // unreadable, not a panic or a wrap to 0.
        if Some(r.lsn) != first_lsn.checked_add(out.len() as u64) {
            return None;
        }
        out.push(r);
        at += n;
    }
    if out.is_empty() {
        return None;
    }
    Some((out, GROUP_HEADER + body_len))
}

/// Encodes one framed record (`len | crc32c(payload) | payload`, see the
/// module docs) of `lsn` and `ops`, byte for byte as the log writes it
/// inside a group.
pub fn encode_record(lsn: u64, ops: &[PostImage]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, lsn, ops);
    out
}

/// Reads the framed record at the start of `bytes` as replay does: its
/// LSN, its post-images and its framed length (bytes after it are left
/// alone). None when it is unreadable: short, over the size limit, a
/// checksum that does not match, an unknown table or op kind, or bytes
/// left over inside its payload.
pub fn decode_record(bytes: &[u8]) -> Option<(u64, Vec<PostImage>, usize)> {
    record_at(bytes).map(|(r, n)| (r.lsn, r.ops, n))
}

/// A record as read from a group: its LSN and its post-images.
pub type LoggedRecord = (u64, Vec<PostImage>);

/// Seals framed records (from [`encode_record`], concatenated, LSNs
/// consecutive) into one group with its header, byte for byte as the log
/// writes it. None when `records` is too short to hold a record.
pub fn encode_group(records: &[u8]) -> Option<Vec<u8>> {
    if records.len() < 16 {
        return None;
    }
    let mut buf = new_group();
    buf.extend_from_slice(records);
    seal_group(&mut buf)?;
    Some(buf)
}

/// Reads the group at the start of `bytes` as replay does: its records
/// (`(lsn, post-images)`, consecutive LSNs from the header's) and its
/// length. None if any part of it is unreadable.
pub fn decode_group(bytes: &[u8]) -> Option<(Vec<LoggedRecord>, usize)> {
    group_at(bytes).map(|(records, n)| (records.into_iter().map(|r| (r.lsn, r.ops)).collect(), n))
}

/// What replay reads from the bytes of one log file ([`scan_file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileScan {
    /// The LSNs of the readable records before the first unreadable part.
    pub lsns: Vec<u64>,
    /// Where the first unreadable part starts (a zero tail does not count).
    pub bad_at: Option<usize>,
    /// A readable group that continues the log follows `bad_at`: the
    /// unreadable part was synced, so replay refuses it as damage.
    pub readable_after: bool,
}

/// Parses the bytes of one log file (either format version) exactly as
/// replay does; `last_lsn` is the last readable record before this file (0
/// if none). Err (with a message) for a file of a newer format version.
pub fn scan_file(bytes: &[u8], last_lsn: u64) -> Result<FileScan, String> {
    let parsed = parse_file(Path::new("scanned.wal"), bytes, last_lsn).map_err(|e| e.to_string())?;
    Ok(FileScan {
        lsns: parsed.records.iter().map(|r| r.lsn).collect(),
        bad_at: parsed.bad_at,
        readable_after: parsed.readable_after,
    })
}

/// One log file, parsed.
struct Parsed {
    /// The readable records before the first unreadable part.
    records: Vec<Record>,
    /// Where the first unreadable part starts (not counting a zero tail).
    bad_at: Option<usize>,
    /// A readable group (or, in a version-1 file, record) exists after
    /// `bad_at`: the unreadable part was synced, so it is damage.
    readable_after: bool,
    /// The file holds at least one readable group or record.
    any_readable: bool,
}

/// Whether a readable group starts anywhere from `from` on whose first LSN
/// is after `last`. Only a group that continues the log counts: stale or
/// forged group bytes (say, inside a stored value) carry older LSNs.
fn continuing_group_after(bytes: &[u8], from: usize, last: u64) -> bool {
    (from..bytes.len().saturating_sub(GROUP_HEADER - 1)).any(|i| {
        bytes[i..i + 4] == GROUP_MAGIC.to_be_bytes()
            && group_at(&bytes[i..]).is_some_and(|(g, _)| g.first().is_some_and(|r| r.lsn > last))
    })
}

/// Parses a version-2 file (header already checked) from `FILE_HEADER` on.
/// `last_lsn`: the last readable record before this file (0 if none).
fn parse_v2(bytes: &[u8], last_lsn: u64) -> Parsed {
    let mut records = Vec::new();
    let mut at = FILE_HEADER;
    while at < bytes.len() {
        if let Some((recs, n)) = group_at(&bytes[at..]) {
            records.extend(recs);
            at += n;
            continue;
        }
        if bytes[at..].iter().all(|b| *b == 0) {
            break;
        }
        let last = records.last().map_or(last_lsn, |r: &Record| r.lsn);
        let readable_after = continuing_group_after(bytes, at + 1, last);
        return Parsed {
            any_readable: !records.is_empty() || readable_after,
            records,
            bad_at: Some(at),
            readable_after,
        };
    }
    Parsed {
        any_readable: !records.is_empty(),
        records,
        bad_at: None,
        readable_after: false,
    }
}

/// Parses a version-1 file (records, no groups).
fn parse_v1(bytes: &[u8]) -> Parsed {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        if let Some((r, n)) = record_at(&bytes[at..]) {
            records.push(r);
            at += n;
            continue;
        }
        if bytes[at..].iter().all(|b| *b == 0) {
            break;
        }
        // Version 1 wrote many records in one unframed write, whose pages
        // a power cut may keep out of order: a readable record later in
        // the same file proves nothing. A later file still does.
        let later = (at + 1..bytes.len()).any(|i| record_at(&bytes[i..]).is_some());
        return Parsed {
            any_readable: !records.is_empty() || later,
            records,
            bad_at: Some(at),
            readable_after: false,
        };
    }
    Parsed {
        any_readable: !records.is_empty(),
        records,
        bad_at: None,
        readable_after: false,
    }
}

/// Parses a whole log file of either version.
fn parse_file(path: &Path, bytes: &[u8], last_lsn: u64) -> Result<Parsed, StoreError> {
    if bytes.len() >= FILE_HEADER && &bytes[..8] == FILE_MAGIC {
        let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let crc = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if CRC.checksum(&bytes[..12]) == crc {
            if version > FORMAT_VERSION {
                return Err(StoreError::Corrupt(format!(
                    "write-ahead log file {} is format version {version}, newer than this Sigil reads \
                     ({FORMAT_VERSION}); start the newer Sigil that wrote it (nothing was changed)",
                    path.display()
                )));
            }
            if version == FORMAT_VERSION {
                return Ok(parse_v2(bytes, last_lsn));
            }
        }
        // A header that does not read: whether a readable group that
        // continues the log follows decides between damage and a crash
        // during the file's creation.
        let readable_after = continuing_group_after(bytes, 1, last_lsn);
        return Ok(Parsed {
            records: Vec::new(),
            bad_at: Some(0),
            readable_after,
            any_readable: readable_after,
        });
    }
    Ok(parse_v1(bytes))
}

/// The refusal for an unreadable group with synced data after it.
fn damaged(file: &Path, at: usize, later: Option<&PathBuf>) -> StoreError {
    let after = match later {
        Some(l) => format!("the later file {} holds synced records", l.display()),
        None => "records after it in the same file were synced".to_string(),
    };
    StoreError::Corrupt(format!(
        "write-ahead log file {} is damaged at byte {at}: the group there is unreadable but {after}, so it \
         held acknowledged commits (a crash cannot leave this). Sigil refuses to start rather than lose them. \
         Restore the store from a backup (`sigil restore`), keeping a copy of the log directory for analysis",
        file.display()
    ))
}

impl Wal {
    /// Reads every log file in `dir` (created if missing), oldest first,
    /// by the rules in the module docs: a torn tail is dropped, damage and
    /// gaps are refused with the file and offset named.
    pub fn replay(disk: &dyn Disk, dir: &Path) -> Result<Replayed, StoreError> {
        disk.create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        let files = list(disk, dir)?;
        let mut records = Vec::new();
        let mut nos = Vec::new();
        let mut last_lsn: Option<u64> = None;
        // The first unreadable part: (file, offset), and bytes from it on.
        let mut cut: Option<(PathBuf, usize)> = None;
        let mut dropped = 0u64;
        for (no, path) in &files {
            let bytes = disk.read(path).map_err(|e| io_err("read", path, e))?;
            let parsed = parse_file(path, &bytes, last_lsn.unwrap_or(0))?;
            nos.push(*no);
            if let Some((bad_file, bad_at)) = &cut {
                if parsed.any_readable {
                    return Err(damaged(bad_file, *bad_at, Some(path)));
                }
                dropped += bytes.iter().filter(|b| **b != 0).count() as u64;
                continue;
            }
            for r in parsed.records {
                // LSNs are handed out one by one, across files: a gap means
                // records were lost (say, the end of an older file zeroed),
                // which a zero tail alone would not show.
                if last_lsn.is_some_and(|l| l.checked_add(1) != Some(r.lsn)) {
                    return Err(StoreError::Corrupt(format!(
                        "write-ahead log file {} has records missing or out of order (record {} after {}): \
                         synced records were lost, which no crash does; refusing to start without them. \
                         Restore the store from a backup (`sigil restore`), keeping a copy of {} for analysis",
                        path.display(),
                        r.lsn,
                        last_lsn.unwrap_or(0),
                        dir.display()
                    )));
                }
                last_lsn = Some(r.lsn);
                records.push(r);
            }
            if let Some(at) = parsed.bad_at {
                if parsed.readable_after {
                    return Err(damaged(path, at, None));
                }
                // Up to the last non-zero byte: a prepared file's unused
                // zeros were never data.
                let end = bytes.iter().rposition(|b| *b != 0).map_or(at, |i| i + 1).max(at);
                dropped += (end - at) as u64;
                cut = Some((path.clone(), at));
            }
        }
        if let Some((file, at)) = &cut {
            tracing::warn!(
                file = %file.display(),
                offset = at,
                dropped_bytes = dropped,
                "the write-ahead log ends in a group torn by a crash (never acknowledged); dropped it"
            );
        }
        Ok(Replayed {
            records,
            files: nos,
            dropped_bytes: dropped,
        })
    }

    /// Removes the files numbered `replayed` (their records are in the
    /// main store, durably) and starts a new, empty file after them.
    /// `prepare_min`: see [`PREPARE_MIN`].
    pub fn start(
        disk: Arc<dyn Disk>,
        dir: &Path,
        replayed: &[u64],
        last_lsn: u64,
        prepare_min: u64,
    ) -> Result<Wal, StoreError> {
        remove_prepared(disk.as_ref(), dir)?;
        for no in replayed {
            let p = dir.join(file_name(*no));
            disk.remove(&p).map_err(|e| io_err("remove", &p, e))?;
            sync_dir(disk.as_ref(), dir)?;
        }
        let file_no = replayed.last().copied().unwrap_or(0) + 1;
        let file = Self::create(disk.as_ref(), dir, file_no)?;
        Ok(Wal {
            disk,
            dir: dir.to_path_buf(),
            prepare_min,
            state: Mutex::new(State {
                file,
                file_no,
                pos: FILE_HEADER as u64,
                closed_len: 0,
                rotating: false,
                buf: new_group(),
                last_lsn,
                durable: last_lsn,
                writing: false,
                failed: None,
                wanted: 0,
                stop: false,
            }),
            done: Condvar::new(),
            syncer_cv: Condvar::new(),
            mark: tokio::sync::watch::Sender::new(Mark {
                durable: last_lsn,
                failed: false,
            }),
        })
    }

    /// The log file numbered `no`, durably named and headed: the prepared
    /// file renamed, if there is one, else a new file.
    fn create(disk: &dyn Disk, dir: &Path, no: u64) -> Result<LogFile, StoreError> {
        let p = dir.join(file_name(no));
        let prepared = dir.join(PREPARED);
        let made = if disk.exists(&prepared) {
            disk.rename(&prepared, &p).map_err(|e| io_err("rename", &prepared, e))?;
            disk.open_write(&p).map_err(|e| io_err("open", &p, e))
        } else {
            // Never into an existing file's old bytes.
            let f = disk.create(&p, true).map_err(|e| io_err("create", &p, e))?;
            write_header(f.as_ref(), &p).map(|_| f)
        };
        let res = made.and_then(|f| sync_dir(disk, dir).map(|_| f));
        if res.is_err() {
            // It holds no record yet: gone, a later attempt can make it
            // again instead of finding it in the way.
            let _ = disk.remove(&p);
        }
        res
    }

    /// Prepares the next log file, if none is ready and the last file
    /// closed was busy: zeros, sized after that file, synced. Called by the
    /// checkpointer, off the commit path, never during a rotation. A
    /// failure only means the next file starts empty.
    pub fn prepare_next(&self) -> Result<(), StoreError> {
        let used = self.lock()?.closed_len;
        if used < self.prepare_min {
            return Ok(());
        }
        self.prepare_sized((used + used / 4).clamp(4096, PREPARE_MAX))
    }

    /// Prepares a next log file of `size` bytes (its header, then zeros),
    /// if none is ready.
    fn prepare_sized(&self, size: u64) -> Result<(), StoreError> {
        let disk = self.disk.as_ref();
        let prepared = self.dir.join(PREPARED);
        if disk.exists(&prepared) {
            return Ok(());
        }
        let tmp = self.dir.join(PREPARING);
        let res = (|| {
            let f = disk.create(&tmp, false)?;
            f.write_at(&file_header(), 0)?;
            let zeros = vec![0u8; 1 << 20];
            let mut at = FILE_HEADER as u64;
            while at < size {
                let n = (size - at).min(zeros.len() as u64) as usize;
                f.write_at(&zeros[..n], at)?;
                at += n as u64;
            }
            f.sync_data()?;
            disk.rename(&tmp, &prepared)
        })();
        if let Err(e) = res {
            let _ = disk.remove(&tmp);
            return Err(io_err("prepare", &prepared, e));
        }
        sync_dir(disk, &self.dir)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("write-ahead log lock poisoned".into()))
    }

    fn fail(st: &State) -> Result<(), StoreError> {
        match &st.failed {
            Some(m) => Err(StoreError::Unavailable(format!(
                "write-ahead log failed earlier ({m}); restart the service once storage is healthy"
            ))),
            None => Ok(()),
        }
    }

    /// Whether a write or sync has failed (the store must refuse service).
    pub fn failed(&self) -> Result<(), StoreError> {
        Self::fail(&*self.lock()?)
    }

    /// The LSN of the newest record appended so far.
    pub fn last_lsn(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.last_lsn)
    }

    /// Adds a record of `ops` to the log (not yet durable) and returns its
    /// LSN. Callers hold the store's write lock, so LSN order is commit order.
    pub fn append(&self, ops: &[PostImage]) -> Result<u64, StoreError> {
        let mut st = self.lock()?;
        Self::fail(&st)?;
        let lsn = st.last_lsn + 1;
        let before = st.buf.len();
        encode(&mut st.buf, lsn, ops);
        if st.buf.len() - before - 8 > MAX_RECORD {
            st.buf.truncate(before);
            return Err(StoreError::Unavailable(format!(
                "a batch of {} writes is larger than the {} MiB a log record may hold",
                ops.len(),
                MAX_RECORD >> 20
            )));
        }
        st.last_lsn = lsn;
        Ok(lsn)
    }

    /// Returns once the record `lsn` is durable. The first waiter to find no
    /// write running becomes the leader: it writes and syncs everything
    /// buffered so far, for itself and every record before it.
    pub fn wait_durable(&self, lsn: u64) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        loop {
            if st.durable >= lsn {
                return Ok(());
            }
            Self::fail(&st)?;
            if st.writing || st.rotating {
                st = self
                    .done
                    .wait(st)
                    .map_err(|_| StoreError::Unavailable("write-ahead log lock poisoned".into()))?;
                continue;
            }
            st.writing = true;
            let target = st.last_lsn;
            let mut buf = std::mem::replace(&mut st.buf, new_group());
            let file = st.file.clone();
            let file_no = st.file_no;
            // The range is reserved now: a rotation meanwhile writes the
            // closed file's last records after it.
            let pos = st.pos;
            let group_len = if buf.len() > GROUP_HEADER { buf.len() } else { 0 };
            st.pos += group_len as u64;
            drop(st);
            let t0 = std::time::Instant::now();
            let res = match seal_group(&mut buf) {
                Some(group) => file.write_at(group, pos).and_then(|_| file.sync_data()),
                None => file.sync_data(),
            };
            crate::metrics::store_sync("sled", t0.elapsed());
            st = self.lock()?;
            st.writing = false;
            match res {
                // Never past a failure recorded meanwhile.
                Ok(()) if st.failed.is_none() => {
                    st.durable = st.durable.max(target);
                }
                Ok(()) => {}
                Err(e) => {
                    self.record_failure(&mut st, file_no, &e);
                }
            }
            self.publish(&st);
            self.done.notify_all();
        }
    }

    /// Fails the log after a write or sync of file `no` failed: nothing
    /// written since can be trusted. Returns the message recorded.
    fn record_failure(&self, st: &mut State, no: u64, e: &std::io::Error) -> String {
        let msg = format!(
            "write or sync of {} failed: {e}",
            self.dir.join(file_name(no)).display()
        );
        tracing::error!(error = %msg, "write-ahead log failed; the store refuses all further work");
        st.failed = Some(msg.clone());
        msg
    }

    /// Tells asynchronous waiters the durable LSN and whether the log failed.
    fn publish(&self, st: &State) {
        let now = Mark {
            durable: st.durable,
            failed: st.failed.is_some(),
        };
        self.mark.send_if_modified(|m| {
            let changed = *m != now;
            *m = now;
            changed
        });
    }

    /// Asks the sync thread to make the record `lsn` durable.
    fn request(&self, lsn: u64) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        Self::fail(&st)?;
        if st.stop && st.durable < lsn {
            return Err(StoreError::Unavailable("the store is shutting down".into()));
        }
        if st.durable < lsn && st.wanted < lsn {
            st.wanted = lsn;
            self.syncer_cv.notify_one();
        }
        Ok(())
    }

    /// Completes once the record `lsn` is durable, without blocking a
    /// thread: the sync thread writes and syncs for every waiter at once.
    pub async fn durable(&self, lsn: u64) -> Result<(), StoreError> {
        let mut rx = self.mark.subscribe();
        self.request(lsn)?;
        let m = *rx
            .wait_for(|m| m.durable >= lsn || m.failed)
            .await
            .map_err(|_| StoreError::Unavailable("write-ahead log closed".into()))?;
        if m.durable >= lsn {
            return Ok(());
        }
        Self::fail(&*self.lock()?)?;
        Err(StoreError::Unavailable(
            "the write-ahead log stopped before this write was durable".into(),
        ))
    }

    /// The sync thread: makes durable what asynchronous waiters asked for
    /// (see [`Wal::durable`]), sharing each sync among all of them and with
    /// any blocking waiter leading a sync at the time. Returns after
    /// [`Wal::stop_syncer`].
    pub fn run_syncer(&self) {
        self.sync_for_waiters();
        // Stopped (or its lock poisoned): waiters not yet served must not
        // wait forever.
        self.mark.send_modify(|m| m.failed = true);
    }

    fn sync_for_waiters(&self) {
        loop {
            let target = {
                let Ok(mut st) = self.lock() else { return };
                while !st.stop && (st.wanted <= st.durable || st.failed.is_some()) {
                    st = match self.syncer_cv.wait(st) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
                if st.stop {
                    return;
                }
                st.wanted
            };
            // A failure is recorded and published by `wait_durable`.
            let _ = self.wait_durable(target);
        }
    }

    /// Makes [`Wal::run_syncer`] return.
    pub fn stop_syncer(&self) {
        if let Ok(mut st) = self.lock() {
            st.stop = true;
        }
        self.syncer_cv.notify_all();
    }

    /// At a clean stop, once the syncer is stopped and every record is
    /// durable: the file prepared for the next rotation is removed, and the
    /// current file, when it holds no record (the last checkpoint took
    /// them all), is replaced by its header alone. A prepared file is
    /// zeros sized for the load of the last seconds, tens of MiB under
    /// load, that a stopped store has no use for. The replacement is
    /// written aside under the preparing name (removed by the next start
    /// if a crash leaves it) and renamed over the file, so a crash at any
    /// point leaves a log that replays the same: nothing.
    pub fn settle(&self) -> Result<(), StoreError> {
        let st = self.lock()?;
        let disk = self.disk.as_ref();
        remove_prepared(disk, &self.dir)?;
        let empty = st.failed.is_none()
            && !st.writing
            && st.pos == FILE_HEADER as u64
            && st.durable == st.last_lsn
            && st.buf.len() <= GROUP_HEADER;
        if empty {
            let tmp = self.dir.join(PREPARING);
            let p = self.dir.join(file_name(st.file_no));
            let f = disk.create(&tmp, true).map_err(|e| io_err("create", &tmp, e))?;
            write_header(f.as_ref(), &tmp)?;
            disk.rename(&tmp, &p).map_err(|e| io_err("rename", &tmp, e))?;
        }
        sync_dir(disk, &self.dir)
    }

    /// Closes the current file and continues in a new one, in one go:
    /// [`Wal::open_next`], [`Wal::begin_rotate`], [`Wal::finish_rotate`].
    /// Returns the number of the file closed: it and every older file hold
    /// only records up to now, durably.
    #[cfg(test)]
    pub fn rotate(&self) -> Result<u64, StoreError> {
        let next = self.open_next()?;
        let r = self.begin_rotate(next)?;
        self.finish_rotate(r)
    }

    /// Opens the file the next rotation continues in (the prepared file,
    /// renamed in, or a new empty one), durably named. No lock is held
    /// meanwhile; only the checkpointer rotates, one rotation at a time.
    pub fn open_next(&self) -> Result<LogFile, StoreError> {
        let no = self.lock()?.file_no + 1;
        Self::create(self.disk.as_ref(), &self.dir, no)
    }

    /// Makes `next` (from [`Wal::open_next`]) the file records go to from
    /// now on. No I/O: callers hold the store's write lock, so that no
    /// record is appended meanwhile, and release it before
    /// [`Wal::finish_rotate`], which they must call next.
    pub fn begin_rotate(&self, next: LogFile) -> Result<Rotation, StoreError> {
        let mut st = self.lock()?;
        Self::fail(&st)?;
        if st.rotating {
            return Err(StoreError::Unavailable(
                "write-ahead log: a rotation is already running".into(),
            ));
        }
        let r = Rotation {
            closed: st.file_no,
            file: std::mem::replace(&mut st.file, next),
            pos: st.pos,
            buf: std::mem::replace(&mut st.buf, new_group()),
            last: st.last_lsn,
        };
        st.file_no += 1;
        st.closed_len = r.pos + r.buf.len() as u64;
        st.pos = FILE_HEADER as u64;
        st.rotating = true;
        Ok(r)
    }

    /// Writes and syncs the closed file's last records (after any sync
    /// already running into it); until then no record of the new file
    /// counts as durable. Returns the closed file's number.
    pub fn finish_rotate(&self, r: Rotation) -> Result<u64, StoreError> {
        let mut st = self.lock()?;
        while st.writing {
            st = self
                .done
                .wait(st)
                .map_err(|_| StoreError::Unavailable("write-ahead log lock poisoned".into()))?;
        }
        // A group written before this one failed: its records are not on
        // disk, so nothing after them may count as durable.
        if let Err(e) = Self::fail(&st) {
            st.rotating = false;
            self.publish(&st);
            self.done.notify_all();
            return Err(e);
        }
        drop(st);
        let mut buf = r.buf;
        let res = match seal_group(&mut buf) {
            Some(group) => r.file.write_at(group, r.pos).and_then(|_| r.file.sync_data()),
            None => r.file.sync_data(),
        };
        let mut st = self.lock()?;
        st.rotating = false;
        let out = match res {
            Ok(()) if st.failed.is_none() => {
                st.durable = st.durable.max(r.last);
                Ok(r.closed)
            }
            Ok(()) => Self::fail(&st).map(|_| r.closed),
            Err(e) => Err(StoreError::Unavailable(self.record_failure(&mut st, r.closed, &e))),
        };
        self.publish(&st);
        self.done.notify_all();
        out
    }

    /// Deletes every file numbered up to `no` (their records are in the
    /// main store, durably).
    pub fn remove_through(&self, no: u64) -> Result<(), StoreError> {
        // Oldest first, each removal durable before the next: a crash never
        // leaves an older file behind a removed newer one.
        for (n, p) in list(self.disk.as_ref(), &self.dir)? {
            if n <= no {
                self.disk.remove(&p).map_err(|e| io_err("remove", &p, e))?;
                sync_dir(self.disk.as_ref(), &self.dir)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::disk::OsDisk;

    fn start(dir: &Path) -> Wal {
        Wal::start(Arc::new(OsDisk), dir, &[], 0, PREPARE_MIN).unwrap()
    }

    fn replay(dir: &Path) -> Result<(Vec<Record>, Vec<u64>), StoreError> {
        Wal::replay(&OsDisk, dir).map(|r| (r.records, r.files))
    }

    fn ops(i: u8) -> Vec<PostImage> {
        vec![
            (Table::Challenges, vec![b'c', i], Some(vec![i; 20])),
            (Table::Meta, b"loghead/audit".to_vec(), None),
        ]
    }

    /// The on-disk checksum is CRC-32C (Castagnoli): its standard check value.
    #[test]
    fn record_checksum_is_crc32c() {
        assert_eq!(CRC.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let w = start(dir.path());
        for i in 1..=3u8 {
            let lsn = w.append(&ops(i)).unwrap();
            w.wait_durable(lsn).unwrap();
        }
        drop(w);
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!(files, vec![1]);
        assert_eq!(recs.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(recs[1].ops, ops(2));
        // Tear the last record: the first two survive.
        let p = dir.path().join(file_name(1));
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 3).unwrap();
        let (recs, _) = replay(dir.path()).unwrap();
        assert_eq!(recs.len(), 2);
        // Flip a byte inside the first group: readable groups follow it,
        // so it was synced: damage, not a crash, and the log is refused,
        // naming the file and the offset.
        let mut bytes = std::fs::read(&p).unwrap();
        let g = (len as usize - FILE_HEADER) / 3; // three groups of the same size
        bytes[FILE_HEADER + 30] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        match replay(dir.path()) {
            Err(StoreError::Corrupt(m)) => {
                assert!(m.contains(&format!("damaged at byte {FILE_HEADER}")), "{m}");
                assert!(m.contains(&p.display().to_string()), "{m}");
            }
            other => panic!("expected the damage to be refused, got {:?}", other.map(|r| r.1)),
        }
        // A flip in the last whole group, with only the torn one after it,
        // reads as a crash: the records before it are kept.
        bytes[FILE_HEADER + 30] ^= 1;
        bytes[FILE_HEADER + g + 30] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let (recs, _) = replay(dir.path()).unwrap();
        assert_eq!(recs.len(), 1);
    }

    /// Power loss during one group's write can persist a later page of it
    /// and not an earlier one: whole records after the hole are readable,
    /// but none was acknowledged. The group is dropped, not refused.
    #[test]
    fn a_group_persisted_out_of_order_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let w = start(dir.path());
        let lsn = w.append(&ops(1)).unwrap();
        w.wait_durable(lsn).unwrap();
        let big = |i: u8| vec![(Table::Audit, vec![b'a', i], Some(vec![i; 700]))];
        let mut last = 0;
        for i in 2..=5u8 {
            last = w.append(&big(i)).unwrap();
        }
        w.wait_durable(last).unwrap();
        drop(w);
        let p = dir.path().join(file_name(1));
        let mut bytes = std::fs::read(&p).unwrap();
        let first_group = GROUP_HEADER + record_at(&bytes[FILE_HEADER + GROUP_HEADER..]).unwrap().1;
        let second = FILE_HEADER + first_group;
        // Its first sector never reached the disk; the rest did.
        let hole_end = (second / 512 + 1) * 512;
        for b in &mut bytes[second..hole_end] {
            *b = 0;
        }
        // The last record (framing 8, LSN and count 12, op 1 + 1 + 4 + 2 + 4 + 700) is whole.
        assert!(
            record_at(&bytes[bytes.len() - 732..]).is_some(),
            "a whole record after the hole"
        );
        std::fs::write(&p, &bytes).unwrap();
        let r = Wal::replay(&OsDisk, dir.path()).unwrap();
        assert_eq!(r.records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1]);
        assert_eq!(r.dropped_bytes, (bytes.len() - second) as u64);
    }

    /// A crash between opening the next file and syncing the closed file's
    /// last records leaves a torn end in the closed file and a next file
    /// holding only its header: a crash, not damage.
    #[test]
    fn a_torn_end_before_a_newer_file_without_records_is_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let w = start(dir.path());
        let lsn = w.append(&ops(1)).unwrap();
        w.wait_durable(lsn).unwrap();
        let next = w.open_next().unwrap();
        drop(next);
        drop(w);
        // Half of the closed file's last group reached the disk.
        let p = dir.path().join(file_name(1));
        let mut group = new_group();
        encode(&mut group, 2, &ops(2));
        let sealed = seal_group(&mut group).unwrap().to_vec();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(&sealed[..sealed.len() / 2]);
        std::fs::write(&p, &bytes).unwrap();
        assert!(dir.path().join(file_name(2)).exists());
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!(files, vec![1, 2]);
        assert_eq!(recs.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1]);
    }

    /// A prepared (zero-filled) file becomes the next log file: records go
    /// in at its start, its zero tail ends it cleanly (also when a newer
    /// file follows it), a torn record in it is dropped, and its size does
    /// not change while writing.
    #[test]
    fn prepared_files_hold_records_and_end_cleanly_at_their_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let w = start(dir.path());
        let lsn = w.append(&ops(1)).unwrap();
        w.wait_durable(lsn).unwrap();
        w.prepare_sized(64 << 10).unwrap();
        assert!(dir.path().join(PREPARED).exists());
        assert_eq!(w.rotate().unwrap(), 1);
        assert!(!dir.path().join(PREPARED).exists(), "the prepared file became file 2");
        let p2 = dir.path().join(file_name(2));
        assert_eq!(std::fs::metadata(&p2).unwrap().len(), 64 << 10);
        for i in 2..=4u8 {
            let lsn = w.append(&ops(i)).unwrap();
            w.wait_durable(lsn).unwrap();
        }
        assert_eq!(std::fs::metadata(&p2).unwrap().len(), 64 << 10, "written in place");
        // File 2, zero tail and all, is followed by file 3 (prepared too).
        w.prepare_sized(16 << 10).unwrap();
        assert_eq!(w.rotate().unwrap(), 2);
        let lsn = w.append(&ops(5)).unwrap();
        w.wait_durable(lsn).unwrap();
        // The closed file was small: no new file is prepared after it.
        w.prepare_next().unwrap();
        assert!(!dir.path().join(PREPARED).exists());
        drop(w);
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!(files, vec![1, 2, 3]);
        assert_eq!(recs.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(recs[3].ops, ops(4));
        // A record torn inside the zeros of the newest file is dropped like
        // a torn append.
        let p3 = dir.path().join(file_name(3));
        let mut bytes = std::fs::read(&p3).unwrap();
        let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
        let mut torn = Vec::new();
        encode(&mut torn, 6, &ops(6));
        bytes[end..end + torn.len() - 4].copy_from_slice(&torn[..torn.len() - 4]);
        std::fs::write(&p3, &bytes).unwrap();
        let (recs, _) = replay(dir.path()).unwrap();
        assert_eq!(recs.len(), 5);
        // Left-over prepared files are not read as log, and are removed.
        std::fs::write(dir.path().join(PREPARED), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join(PREPARING), vec![0u8; 100]).unwrap();
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!(recs.len(), 5);
        let w = Wal::start(Arc::new(OsDisk), dir.path(), &files, 5, PREPARE_MIN).unwrap();
        assert!(!dir.path().join(PREPARED).exists());
        assert!(!dir.path().join(PREPARING).exists());
        drop(w);
    }

    /// At a clean stop the log keeps no zeros prepared for the load: the
    /// next prepared file goes, and a current file holding no record is cut
    /// to its header; one holding records keeps them, and either way the
    /// log replays exactly what it held.
    #[test]
    fn settling_at_a_stop_drops_the_prepared_zeros_and_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let size = |no: u64| std::fs::metadata(dir.path().join(file_name(no))).unwrap().len();
        let w = start(dir.path());
        let lsn = w.append(&ops(1)).unwrap();
        w.wait_durable(lsn).unwrap();
        w.prepare_sized(64 << 10).unwrap();
        assert_eq!(w.rotate().unwrap(), 1);
        w.prepare_sized(64 << 10).unwrap();
        // File 2 (the prepared one, no record yet) and a prepared file 3.
        assert_eq!(size(2), 64 << 10);
        w.stop_syncer();
        w.settle().unwrap();
        assert!(!dir.path().join(PREPARED).exists());
        assert!(!dir.path().join(PREPARING).exists());
        assert_eq!(
            size(2),
            FILE_HEADER as u64,
            "an empty current file keeps its header alone"
        );
        assert!(size(1) > FILE_HEADER as u64);
        drop(w);
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!(files, vec![1, 2]);
        assert_eq!(recs.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1]);

        // A current file holding records keeps them.
        let w = Wal::start(Arc::new(OsDisk), dir.path(), &files, 1, PREPARE_MIN).unwrap();
        w.prepare_sized(64 << 10).unwrap();
        assert_eq!(w.rotate().unwrap(), 3);
        let lsn = w.append(&ops(2)).unwrap();
        w.wait_durable(lsn).unwrap();
        w.stop_syncer();
        w.settle().unwrap();
        assert_eq!(size(4), 64 << 10, "a file holding a record is left whole");
        drop(w);
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!(files, vec![3, 4]);
        assert_eq!(recs.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![2]);
        assert_eq!(recs[0].ops, ops(2));
    }

    /// Records lost from the end of an older file (zeroed, as a prepared
    /// file's unused tail looks) leave a gap in the LSNs: refused, not
    /// skipped.
    #[test]
    fn records_missing_between_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = start(dir.path());
        let mut sizes = Vec::new();
        for i in 1..=3u8 {
            let lsn = w.append(&ops(i)).unwrap();
            w.wait_durable(lsn).unwrap();
            sizes.push(std::fs::metadata(dir.path().join(file_name(1))).unwrap().len());
        }
        w.rotate().unwrap();
        let lsn = w.append(&ops(4)).unwrap();
        w.wait_durable(lsn).unwrap();
        drop(w);
        assert_eq!(replay(dir.path()).unwrap().0.len(), 4);
        let p1 = dir.path().join(file_name(1));
        let mut bytes = std::fs::read(&p1).unwrap();
        for b in &mut bytes[sizes[1] as usize..] {
            *b = 0;
        }
        std::fs::write(&p1, &bytes).unwrap();
        assert!(matches!(replay(dir.path()), Err(StoreError::Corrupt(m)) if m.contains("missing")));
    }

    /// Found by fuzzing (`wal_record`): a group whose LSNs would run past
    /// u64::MAX is unreadable; reading it overflowed (a panic in debug
    /// builds, LSNs wrapping to 0 in release builds).
    #[test]
    fn a_group_whose_lsns_would_wrap_is_unreadable() {
        let mut body = encode_record(u64::MAX, &ops(1));
        body.extend_from_slice(&encode_record(0, &ops(2)));
        let group = encode_group(&body).unwrap();
        assert!(decode_group(&group).is_none());
        // The same two records one LSN lower are a good group.
        let mut body = encode_record(u64::MAX - 1, &ops(1));
        body.extend_from_slice(&encode_record(u64::MAX, &ops(2)));
        let (records, _) = decode_group(&encode_group(&body).unwrap()).unwrap();
        assert_eq!(
            records.iter().map(|r| r.0).collect::<Vec<_>>(),
            [u64::MAX - 1, u64::MAX]
        );
    }

    /// A log file that ends at LSN u64::MAX followed by one starting over
    /// at 0 is refused as records missing, not read with wrapped LSNs.
    #[test]
    fn lsns_do_not_wrap_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = |lsn: u64| {
            let mut f = file_header().to_vec();
            f.extend_from_slice(&encode_group(&encode_record(lsn, &ops(1))).unwrap());
            f
        };
        std::fs::write(dir.path().join(file_name(1)), file(u64::MAX)).unwrap();
        std::fs::write(dir.path().join(file_name(2)), file(0)).unwrap();
        assert!(matches!(replay(dir.path()), Err(StoreError::Corrupt(m)) if m.contains("missing")));
    }

    /// During a rotation, records go on being appended to the new file,
    /// but none of them counts as durable before the closed file's last
    /// records are synced.
    #[test]
    fn a_rotation_does_not_block_appends_and_keeps_durability_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(start(dir.path()));
        let a = w.append(&ops(1)).unwrap();
        let next = w.open_next().unwrap();
        let r = w.begin_rotate(next).unwrap();
        let b = w.append(&ops(2)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let bg = w.clone();
        std::thread::spawn(move || tx.send(bg.wait_durable(b)).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "a record of the new file became durable first");
        assert_eq!(w.finish_rotate(r).unwrap(), 1);
        rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap().unwrap();
        w.wait_durable(a).unwrap();
        drop(w);
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!(files, vec![1, 2]);
        assert_eq!(recs.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 2]);
    }

    /// The real file system, except that one chosen write blocks until
    /// released and then fails (EIO), as a dying disk's would.
    struct FlakyDisk {
        fail_next: Arc<std::sync::atomic::AtomicBool>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    struct FlakyFile {
        inner: Arc<dyn DiskFile>,
        fail_next: Arc<std::sync::atomic::AtomicBool>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl DiskFile for FlakyFile {
        fn write_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
            if self.fail_next.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let (m, cv) = &*self.gate;
                let mut open = m.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                return Err(std::io::Error::other("injected EIO"));
            }
            self.inner.write_at(buf, pos)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.inner.sync_data()
        }
    }

    impl Disk for FlakyDisk {
        fn create_dir_all(&self, d: &Path) -> std::io::Result<()> {
            OsDisk.create_dir_all(d)
        }
        fn list(&self, d: &Path) -> std::io::Result<Vec<String>> {
            OsDisk.list(d)
        }
        fn read(&self, p: &Path) -> std::io::Result<Vec<u8>> {
            OsDisk.read(p)
        }
        fn exists(&self, p: &Path) -> bool {
            OsDisk.exists(p)
        }
        fn create(&self, p: &Path, new: bool) -> std::io::Result<Arc<dyn DiskFile>> {
            Ok(Arc::new(FlakyFile {
                inner: OsDisk.create(p, new)?,
                fail_next: self.fail_next.clone(),
                gate: self.gate.clone(),
            }))
        }
        fn open_write(&self, p: &Path) -> std::io::Result<Arc<dyn DiskFile>> {
            Ok(Arc::new(FlakyFile {
                inner: OsDisk.open_write(p)?,
                fail_next: self.fail_next.clone(),
                gate: self.gate.clone(),
            }))
        }
        fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
            OsDisk.rename(a, b)
        }
        fn remove(&self, p: &Path) -> std::io::Result<()> {
            OsDisk.remove(p)
        }
        fn sync_dir(&self, d: &Path) -> std::io::Result<()> {
            OsDisk.sync_dir(d)
        }
    }

    /// A group write that fails while a rotation is under way: the
    /// rotation's own sync of the closed file must not make the failed
    /// records count as durable, for any waiter.
    #[test]
    fn a_failed_group_write_is_never_acknowledged_by_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let disk = Arc::new(FlakyDisk {
            fail_next: fail_next.clone(),
            gate: gate.clone(),
        });
        let w = Arc::new(Wal::start(disk, dir.path(), &[], 0, PREPARE_MIN).unwrap());
        let a = w.append(&ops(1)).unwrap();
        w.wait_durable(a).unwrap();
        let b = w.append(&ops(2)).unwrap();
        fail_next.store(true, std::sync::atomic::Ordering::SeqCst);
        let leader = {
            let w = w.clone();
            std::thread::spawn(move || w.wait_durable(b))
        };
        // The leader is stuck in its (failing) write; a rotation begins.
        while fail_next.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let next = w.open_next().unwrap();
        let r = w.begin_rotate(next).unwrap();
        let (m, cv) = &*gate;
        *m.lock().unwrap() = true;
        cv.notify_all();
        assert!(leader.join().unwrap().is_err(), "the failed write was acknowledged");
        assert!(w.finish_rotate(r).is_err(), "the rotation went on after a failed write");
        assert!(
            w.wait_durable(b).is_err(),
            "a later waiter saw the failed record as durable"
        );
        w.wait_durable(a).unwrap();
    }

    #[test]
    fn damage_before_a_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = start(dir.path());
        let lsn = w.append(&ops(1)).unwrap();
        w.wait_durable(lsn).unwrap();
        assert_eq!(w.rotate().unwrap(), 1);
        let lsn = w.append(&ops(2)).unwrap();
        w.wait_durable(lsn).unwrap();
        drop(w);
        let (recs, files) = replay(dir.path()).unwrap();
        assert_eq!((recs.len(), files), (2, vec![1, 2]));
        let p = dir.path().join(file_name(1));
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(replay(dir.path()), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn concurrent_commits_share_syncs_and_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(start(dir.path()));
        let order = Arc::new(Mutex::new(()));
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let (w, order) = (w.clone(), order.clone());
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        let lsn = {
                            let _g = order.lock().unwrap();
                            w.append(&ops(i.wrapping_add(t))).unwrap()
                        };
                        w.wait_durable(lsn).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        drop(w);
        let (recs, _) = replay(dir.path()).unwrap();
        assert_eq!(recs.len(), 400);
        assert!(recs.windows(2).all(|p| p[1].lsn == p[0].lsn + 1));
    }

    /// Property tests of the record and group framing (`proptest`).
    mod props {
        use proptest::prelude::*;

        use super::super::*;

        fn op() -> impl Strategy<Value = PostImage> {
            (
                0..Table::ALL.len(),
                proptest::collection::vec(any::<u8>(), 0..24),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..48)),
            )
                .prop_map(|(t, k, v)| (Table::ALL[t], k, v))
        }

        fn ops() -> impl Strategy<Value = Vec<PostImage>> {
            proptest::collection::vec(op(), 0..6)
        }

        proptest! {
            /// A record decodes to what was encoded, with its framed length,
            /// and re-encodes to the same bytes.
            #[test]
            fn records_round_trip(lsn in any::<u64>(), ops in ops(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
                let bytes = encode_record(lsn, &ops);
                let mut with_tail = bytes.clone();
                with_tail.extend_from_slice(&tail);
                let (l, o, n) = decode_record(&with_tail).unwrap();
                prop_assert_eq!(l, lsn);
                prop_assert_eq!(&o, &ops);
                prop_assert_eq!(n, bytes.len());
                prop_assert_eq!(encode_record(l, &o), bytes);
            }

            /// A truncated record is unreadable.
            #[test]
            fn truncated_records_are_refused(lsn in any::<u64>(), ops in ops(), cut in any::<prop::sample::Index>()) {
                let bytes = encode_record(lsn, &ops);
                let n = cut.index(bytes.len());
                prop_assert!(decode_record(&bytes[..n]).is_none());
            }

            /// A bit flipped in a record's checksum or payload makes it
            /// unreadable; one flipped in its length never yields the same
            /// record's bytes read as another record.
            #[test]
            fn flipped_records_are_refused(lsn in any::<u64>(), ops in ops(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
                let bytes = encode_record(lsn, &ops);
                let mut flipped = bytes.clone();
                let i = at.index(bytes.len());
                flipped[i] ^= 1 << bit;
                match decode_record(&flipped) {
                    None => {}
                    Some((l, o, _)) => {
                        // Only a length flip can leave a checksum-valid
                        // prefix; it must not pass as the original.
                        prop_assert!(i < 4);
                        prop_assert!((l, &o) != (lsn, &ops));
                    }
                }
                if i >= 4 {
                    prop_assert!(decode_record(&flipped).is_none());
                }
            }

            /// A group of consecutive records round-trips; any flipped bit or
            /// truncation makes the whole group unreadable.
            #[test]
            fn groups_round_trip_and_detect_damage(
                first in 0u64..u64::MAX / 2,
                batches in proptest::collection::vec(ops(), 1..4),
                at in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let body: Vec<u8> = batches.iter().enumerate().flat_map(|(k, o)| encode_record(first + k as u64, o)).collect();
                let group = encode_group(&body).unwrap();
                let (records, n) = decode_group(&group).unwrap();
                prop_assert_eq!(n, group.len());
                let expected: Vec<(u64, Vec<PostImage>)> =
                    batches.iter().enumerate().map(|(k, o)| (first + k as u64, o.clone())).collect();
                prop_assert_eq!(records, expected);
                prop_assert!(decode_group(&group[..at.index(group.len())]).is_none());
                let mut flipped = group.clone();
                flipped[at.index(group.len())] ^= 1 << bit;
                prop_assert!(decode_group(&flipped).is_none());
            }
        }
    }
}
