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

use super::{Batch, Expect, Op, Store, StoreError, Table, Versioned};

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    flush: GroupFlush,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open sled store at {}: {e}",
                    path.display()
                ))
            })?;
        let mut trees = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            trees.push(db.open_tree(t.name()).map_err(unavailable)?);
        }
        Ok(Self {
            db,
            trees,
            flush: GroupFlush::default(),
        })
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
        return Err(StoreError::Corrupt(
            "value shorter than its version header".into(),
        ));
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

fn op_table(op: &Op) -> Table {
    match op {
        Op::Put { table, .. } | Op::Delete { table, .. } => *table,
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

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(table).scan_prefix(prefix) {
            let (k, v) = item.map_err(unavailable)?;
            out.push((k.to_vec(), decode(&v)?));
        }
        Ok(out)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tables: Vec<Table> = batch.ops.iter().map(op_table).collect();
        tables.sort();
        tables.dedup();
        let trees: Vec<sled::Tree> = tables.iter().map(|t| self.tree(*t).clone()).collect();
        let result = trees.as_slice().transaction(|txs| {
            for op in &batch.ops {
                let idx = tables.iter().position(|t| *t == op_table(op)).unwrap_or(0);
                let tx = &txs[idx];
                match op {
                    Op::Put {
                        key, value, expect, ..
                    } => {
                        let cur = current_version(tx, key)?;
                        let next = match (expect, cur) {
                            (Expect::Absent, None) => 1,
                            (Expect::Version(want), Some(have)) if *want == have => have + 1,
                            _ => {
                                return Err(ConflictableTransactionError::Abort(
                                    StoreError::Conflict,
                                ))
                            }
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
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(unavailable(e)),
        }
        self.flush.durable(&self.db)
    }

    fn len(&self, table: Table) -> Result<usize, StoreError> {
        Ok(self.tree(table).len())
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
}
