//! The embedded backend: sled.
//!
//! Each [`Table`] is a sled tree; each value is stored as an 8-byte
//! big-endian version followed by the record bytes. A [`Batch`] runs as one
//! sled transaction over the trees it touches; durability comes from a
//! group commit: writers that finish while an fsync is running share the
//! next one, so concurrent approvals do not pay one fsync each.
use std::path::Path;
use std::sync::{Condvar, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{chain_hash, log_head_key, Batch, Expect, LogEntry, Op, Store, StoreError, Table, Versioned};

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    flush: GroupFlush,
    /// Commits hold it shared; a snapshot holds it exclusively.
    gate: std::sync::RwLock<()>,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| StoreError::Unavailable(format!("cannot open sled store at {}: {e}", path.display())))?;
        let mut trees = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            trees.push(db.open_tree(t.name()).map_err(unavailable)?);
        }
        Ok(Self {
            db,
            trees,
            flush: GroupFlush::default(),
            gate: std::sync::RwLock::new(()),
        })
    }

    /// Creates a store at `path` (which must not exist) holding exactly
    /// `records`, durably.
    pub fn create_from(path: &Path, records: &[(Table, Vec<u8>, Versioned)]) -> Result<SledStore, StoreError> {
        if path.exists() {
            return Err(StoreError::Unavailable(format!("{} already exists", path.display())));
        }
        let s = SledStore::open(path)?;
        for (t, k, v) in records {
            s.tree(*t)
                .insert(k.as_slice(), encode(v.version, &v.value))
                .map_err(unavailable)?;
        }
        s.db.flush().map_err(unavailable)?;
        Ok(s)
    }

    fn tree(&self, t: Table) -> &sled::Tree {
        // Table::ALL order matches `trees`.
        &self.trees[t as usize]
    }
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
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

fn op_tables(op: &Op) -> Vec<Table> {
    match op {
        Op::Put { table, .. } | Op::Delete { table, .. } | Op::Check { table, .. } => vec![*table],
        Op::Append { log, .. } => vec![*log, Table::Meta],
    }
}

fn decode_head(raw: Option<Versioned>) -> Result<(u64, u64, [u8; 32]), StoreError> {
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

fn current_version(
    tree: &TransactionalTree,
    key: &[u8],
) -> Result<Option<u64>, ConflictableTransactionError<StoreError>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(raw) => decode(&raw)
            .map(|v| Some(v.version))
            .map_err(ConflictableTransactionError::Abort),
    }
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        match self.tree(table).get(key).map_err(unavailable)? {
            None => Ok(None),
            Some(raw) => decode(&raw).map(Some),
        }
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(table).scan_prefix(prefix) {
            let (k, v) = item.map_err(unavailable)?;
            out.push((k.to_vec(), decode(&v)?));
        }
        Ok(out)
    }

    fn commit(&self, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tables: Vec<Table> = batch.ops.iter().flat_map(op_tables).collect();
        tables.sort();
        tables.dedup();
        let trees: Vec<sled::Tree> = tables.iter().map(|t| self.tree(*t).clone()).collect();
        let pos = |t: Table| tables.iter().position(|x| *x == t).unwrap_or(0);
        let gate = self
            .gate
            .read()
            .map_err(|_| StoreError::Unavailable("store gate poisoned".into()))?;
        let result = trees.as_slice().transaction(|txs| {
            let mut seqs = Vec::new();
            for op in &batch.ops {
                let tx = &txs[pos(op_tables(op)[0])];
                match op {
                    Op::Check { key, version, .. } => {
                        let want = if *version == 0 { None } else { Some(*version) };
                        if current_version(tx, key)? != want {
                            return Err(ConflictableTransactionError::Abort(StoreError::Conflict));
                        }
                    }
                    Op::Append { log, value } => {
                        if !log.is_log() {
                            return Err(ConflictableTransactionError::Abort(StoreError::Corrupt(format!(
                                "{} is not a log",
                                log.name()
                            ))));
                        }
                        let meta = &txs[pos(Table::Meta)];
                        let head_key = log_head_key(*log);
                        let head = match meta.get(&head_key)? {
                            None => None,
                            Some(raw) => Some(decode(&raw).map_err(ConflictableTransactionError::Abort)?),
                        };
                        let (hv, seq, prev) = decode_head(head).map_err(ConflictableTransactionError::Abort)?;
                        let seq = seq + 1;
                        let hash = chain_hash(&prev, seq, value);
                        let mut entry = hash.to_vec();
                        entry.extend_from_slice(value);
                        tx.insert(&seq.to_be_bytes()[..], encode(1, &entry))?;
                        let mut head_val = seq.to_be_bytes().to_vec();
                        head_val.extend_from_slice(&hash);
                        meta.insert(head_key, encode(hv + 1, &head_val))?;
                        seqs.push(seq);
                    }
                    Op::Put { key, value, expect, .. } => {
                        let cur = current_version(tx, key)?;
                        let next = match (expect, cur) {
                            (Expect::Absent, None) => 1,
                            (Expect::Version(want), Some(have)) if *want == have => have + 1,
                            _ => return Err(ConflictableTransactionError::Abort(StoreError::Conflict)),
                        };
                        tx.insert(key.as_slice(), encode(next, value))?;
                    }
                    Op::Delete { key, version, .. } => {
                        if current_version(tx, key)? != Some(*version) {
                            return Err(ConflictableTransactionError::Abort(StoreError::Conflict));
                        }
                        tx.remove(key.as_slice())?;
                    }
                }
            }
            Ok(seqs)
        });
        drop(gate);
        let seqs = match result {
            Ok(seqs) => seqs,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(unavailable(e)),
        };
        self.flush.durable(&self.db)?;
        Ok(seqs)
    }

    fn read_log(&self, log: Table, after: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for item in self.tree(log).range(start..).take(limit) {
            let (k, raw) = item.map_err(unavailable)?;
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
        let (_, seq, hash) = decode_head(self.get(Table::Meta, &log_head_key(log))?)?;
        Ok((seq, hash))
    }

    fn len(&self, table: Table) -> Result<usize, StoreError> {
        Ok(self.tree(table).len())
    }

    fn snapshot(&self) -> Result<Vec<(Table, Vec<u8>, Versioned)>, StoreError> {
        let _gate = self
            .gate
            .write()
            .map_err(|_| StoreError::Unavailable("store gate poisoned".into()))?;
        let mut out = Vec::new();
        for t in Table::ALL {
            for item in self.tree(t).iter() {
                let (k, v) = item.map_err(unavailable)?;
                out.push((t, k.to_vec(), decode(&v)?));
            }
        }
        Ok(out)
    }
}

/// Group commit: one fsync covers every write that finished before it began.
#[derive(Default)]
struct GroupFlush {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out; a ticket is taken after its write is applied.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// An fsync is running.
    flushing: bool,
}

impl GroupFlush {
    fn durable(&self, db: &sled::Db) -> Result<(), StoreError> {
        let poisoned = |_| StoreError::Unavailable("flush coordinator poisoned".into());
        let mut st = self.state.lock().map_err(poisoned)?;
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if !st.flushing {
                st.flushing = true;
                let target = st.issued;
                drop(st);
                let res = db.flush();
                st = self.state.lock().map_err(poisoned)?;
                st.flushing = false;
                self.done.notify_all();
                match res {
                    Ok(_) => st.durable = st.durable.max(target),
                    Err(e) => return Err(unavailable(e)),
                }
            } else {
                st = self.done.wait(st).map_err(poisoned)?;
            }
        }
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
