//! The audit log and the event stream: reading them, audit checkpoints,
//! archiving and pruning the audit log, and event consumers'
//! acknowledgements.
use sigil_verify::b64url;

use super::*;
use crate::audit::{self, AuditAnchor, AuditEntry, Checkpoint, Verifier};
use crate::events::{ConsumerRecord, Event};
use crate::store::{chain_hash, codec, log_floor, meta, Batch, LogEntry, Table};

/// The `PRUNED` refusal of a position in a log whose entries (`what`) up
/// to `floor` are gone; `hint` says what to do.
fn pruned(what: &str, floor: u64, hint: &str) -> Error {
    Error::out_of_range(Reason::Pruned, format!("{what} up to {floor} were pruned; {hint}"))
        .with_meta("pruned_through", floor.to_string())
}

/// A consumer name: 1 to 64 letters, digits, `.`, `_`, `-`, `:`.
fn check_consumer(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "consumer",
            "1 to 64 characters: letters, digits, '.', '_', '-', ':'",
        ))
    }
}

impl Ops {
    /// Signs a checkpoint of the audit log's head if it moved since the
    /// last one. Returns the checkpoint (new or latest).
    pub fn checkpoint_audit(&self) -> Result<Option<Checkpoint>, Error> {
        let (seq, hash) = self.k.store.log_head(Table::Audit)?;
        if seq == 0 {
            return Ok(None);
        }
        if let Some(last) = self.checkpoints()?.pop() {
            if last.seq >= seq {
                return Ok(Some(last));
            }
        }
        self.sign_checkpoint(seq, &hash).map(Some)
    }

    /// Signs a checkpoint of entry `seq` of the live audit log (where an
    /// archive is to be cut), after checking that its stored chain hash
    /// follows from the entry before it. A checkpoint already there is
    /// returned as it is; the anchor's for the anchor's entry.
    pub fn checkpoint_audit_at(&self, seq: u64) -> Result<Checkpoint, Error> {
        let store = self.k.store.as_ref();
        if let Some((a, _)) = audit::anchor(store)? {
            if seq == a.seq {
                return Ok(a.checkpoint);
            }
            if seq < a.seq {
                return Err(pruned(
                    "audit entries",
                    a.seq,
                    "they are in an archive, with their checkpoints",
                ));
            }
        }
        if let Some(v) = store.get(Table::Checkpoints, &seq.to_be_bytes())? {
            return codec::decode(&v.value);
        }
        let (head, _) = store.log_head(Table::Audit)?;
        if seq == 0 || seq > head {
            return Err(Error::invalid(
                "seq",
                format!("name an entry of the live audit log (it ends at {head})"),
            ));
        }
        let (floor, floor_hash) = log_floor(store, Table::Audit)?;
        if seq <= floor {
            return Err(pruned("audit entries", floor, "they are in an archive"));
        }
        let (prev, entry) = if seq - 1 > floor {
            let page = store.read_log(Table::Audit, seq - 2, 2)?;
            match page.as_slice() {
                [p, e] if p.seq == seq - 1 && e.seq == seq => (p.hash, e.clone()),
                _ => {
                    return Err(Error::Internal(format!(
                        "audit entries {} and {seq} are not both there",
                        seq - 1
                    )))
                }
            }
        } else {
            let page = store.read_log(Table::Audit, seq - 1, 1)?;
            match page.first() {
                Some(e) if e.seq == seq => (floor_hash, e.clone()),
                _ => return Err(Error::Internal(format!("audit entry {seq} is not there"))),
            }
        };
        if chain_hash(&prev, seq, &entry.value) != entry.hash {
            return Err(Error::Internal(format!(
                "audit entry {seq} does not chain on the one before it: no checkpoint is signed over it \
                 (run `sigil audit verify`)"
            )));
        }
        self.sign_checkpoint(seq, &entry.hash)
    }

    /// Signs and stores a checkpoint of entry `seq` with chain hash
    /// `hash`; a checkpoint stored there meanwhile wins.
    fn sign_checkpoint(&self, seq: u64, hash: &[u8; 32]) -> Result<Checkpoint, Error> {
        let at = self.k.now()?;
        let sig = self.k.signer.sign_audit(&audit::checkpoint_message(seq, hash, at))?;
        let c = Checkpoint {
            v: 1,
            seq,
            hash: b64url::encode(hash),
            at,
            kid: self.k.signer.audit_jwk().kid.clone(),
            signature: b64url::encode(&sig),
        };
        let mut batch = Batch::new();
        batch.insert(Table::Checkpoints, seq.to_be_bytes().to_vec(), codec::encode(&c)?);
        match self.k.commit(&batch) {
            Ok(_) => Ok(c),
            Err(Error::Conflict(_)) => match self.k.store.get(Table::Checkpoints, &seq.to_be_bytes())? {
                Some(v) => codec::decode(&v.value),
                None => Ok(c),
            },
            Err(e) => Err(e),
        }
    }

    /// The audit checkpoints of the live log (from the anchor on), oldest
    /// first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        let from = self.audit_anchor()?.map_or(0, |a| a.seq);
        self.k
            .store
            .scan_prefix(Table::Checkpoints, b"")?
            .into_iter()
            .map(|(_, v)| codec::decode::<Checkpoint>(&v.value))
            .filter(|c| c.as_ref().map_or(true, |c| c.seq >= from))
            .collect()
    }

    /// Where the live audit log starts, if entries were archived.
    pub fn audit_anchor(&self) -> Result<Option<AuditAnchor>, Error> {
        Ok(audit::anchor(self.k.store.as_ref())?.map(|(a, _)| a))
    }

    /// Raw audit log entries after `after`, at most `limit` (for export and
    /// verification): the live log, which starts after the anchor.
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, Error> {
        let from = self.audit_anchor()?.map_or(0, |a| a.seq);
        Ok(self.k.store.read_log(Table::Audit, after.max(from), limit)?)
    }

    /// Verifies the live audit log and its checkpoints, a page at a time:
    /// the whole log, or from the anchor's signed checkpoint once entries
    /// were archived (the report's `from`).
    pub fn verify_audit(&self) -> Result<audit::Report, Error> {
        let key = self.k.signer.audit_jwk();
        let mut v = match self.audit_anchor()? {
            Some(a) => match Verifier::from_checkpoint(key, &a.checkpoint) {
                Ok(v) => v,
                Err(b) => {
                    return Ok(audit::Report {
                        from: a.seq,
                        entries: 0,
                        checkpoints: 0,
                        first_broken: Some(b),
                    })
                }
            },
            None => Verifier::new(key),
        };
        for c in self.checkpoints()? {
            if c.seq > v.position().0 && v.checkpoint(&c).is_err() {
                return Ok(v.finish());
            }
        }
        loop {
            let page = self.audit_entries(v.position().0, 1_000)?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                if v.entry(e).is_err() {
                    return Ok(v.finish());
                }
            }
        }
        Ok(v.finish())
    }

    /// Prunes the audit entries up to `through` from the store once they
    /// are archived: refused unless the live chain hash of entry `through`
    /// is `hash` (as the archive holds it) and a signed checkpoint covers
    /// it. Records the anchor (the cut, its hash and checkpoint) and the
    /// `audit.prune` entry, then deletes the entries and the checkpoints
    /// before the cut in bounded batches (the sweep finishes them if this
    /// is interrupted). The same cut again answers the same anchor.
    /// Returns the entries deleted by this call and the anchor.
    pub fn prune_audit(&self, actor: &str, through: u64, hash: &[u8]) -> Result<(u64, AuditAnchor), Error> {
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| Error::invalid("chain_hash", "must be the 32-byte chain hash of the cut"))?;
        if through == 0 {
            return Err(Error::invalid("through_seq", "name the last entry to prune"));
        }
        let store = self.k.store.as_ref();
        let now = self.k.now()?;
        let anchor = audit::anchor(store)?;
        let mismatch = |what: String| {
            Error::refused(
                Reason::AuditChainMismatch,
                format!(
                    "{what}, the archive's is {}: the archive is not of this log, or was altered; nothing was pruned",
                    b64url::encode(&hash)
                ),
            )
        };
        if let Some((a, _)) = &anchor {
            if through < a.seq {
                return Err(pruned(
                    "audit entries",
                    a.seq,
                    "an archive must start after the last one's cut",
                ));
            }
            if through == a.seq {
                if a.hash != b64url::encode(&hash) {
                    return Err(mismatch(format!("the chain hash of entry {through} is {}", a.hash)));
                }
                let n = self.finish_audit_prune()?;
                return Ok((n, a.clone()));
            }
        }
        let (head, _) = store.log_head(Table::Audit)?;
        if through > head {
            return Err(Error::invalid(
                "through_seq",
                format!("the audit log ends at entry {head}"),
            ));
        }
        let live = store.read_log(Table::Audit, through - 1, 1)?;
        let entry = live
            .first()
            .filter(|e| e.seq == through)
            .ok_or_else(|| Error::Internal(format!("audit entry {through} is not in the store")))?;
        if entry.hash != hash {
            return Err(mismatch(format!(
                "the live chain hash of entry {through} is {}",
                b64url::encode(&entry.hash)
            )));
        }
        let not_checkpointed = || {
            Error::refused(
                Reason::AuditNotCheckpointed,
                format!(
                    "no signed checkpoint covers entry {through}: have one signed there (CheckpointAudit with \
                     seq {through}; `sigil audit archive` does) and archive again; nothing was pruned"
                ),
            )
        };
        let c: Checkpoint = match store.get(Table::Checkpoints, &through.to_be_bytes())? {
            Some(v) => codec::decode(&v.value)?,
            None => return Err(not_checkpointed()),
        };
        if audit::checkpoint_hash(&c) != Some(hash) {
            return Err(mismatch(format!(
                "the signed checkpoint of entry {through} says {}",
                c.hash
            )));
        }
        if Verifier::from_checkpoint(self.k.signer.audit_jwk(), &c).is_err() {
            return Err(not_checkpointed());
        }
        let new = AuditAnchor {
            v: 1,
            seq: through,
            hash: b64url::encode(&hash),
            checkpoint: c,
            at: now,
        };
        let (floor, _) = log_floor(store, Table::Audit)?;
        let first = floor.saturating_add(self.cfg.retention.prune_batch).min(through);
        let mut batch = Batch::new();
        match &anchor {
            Some((_, version)) => batch.update(Table::Meta, meta::AUDIT_ANCHOR, *version, codec::encode(&new)?),
            None => batch.insert(Table::Meta, meta::AUDIT_ANCHOR, codec::encode(&new)?),
        };
        batch.prune(Table::Audit, floor, first);
        AuditEntry::ok(now, actor, "", "audit.prune")
            .with("through_seq", through.to_string())
            .with("chain_hash", new.hash.clone())
            .with("previous_anchor", anchor.as_ref().map_or(0, |(a, _)| a.seq).to_string())
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
        tracing::info!(through, "audit entries archived; pruning them from the store");
        let n = (first - floor) + self.finish_audit_prune()?;
        Ok((n, new))
    }

    /// Deletes what an archive cut leaves in the store — the entries up to
    /// the anchor and the checkpoints before it — in batches of
    /// `retention.prune_batch`. Returns the entries deleted. Called by
    /// [`Ops::prune_audit`] and by the sweep (which finishes a cut an
    /// interruption left).
    pub fn finish_audit_prune(&self) -> Result<u64, Error> {
        let store = self.k.store.as_ref();
        let Some((a, _)) = audit::anchor(store)? else {
            return Ok(0);
        };
        let step = self.cfg.retention.prune_batch;
        let mut pruned = 0;
        loop {
            let (floor, _) = log_floor(store, Table::Audit)?;
            if floor >= a.seq {
                break;
            }
            let through = floor.saturating_add(step).min(a.seq);
            let mut batch = Batch::new();
            batch.prune(Table::Audit, floor, through);
            match self.k.commit(&batch) {
                Ok(_) => pruned += through - floor,
                Err(Error::Conflict(_)) => {} // another replica pruned; read the floor again
                Err(e) => return Err(e),
            }
        }
        let before: Vec<_> = store
            .scan_prefix(Table::Checkpoints, b"")?
            .into_iter()
            .filter(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).is_ok_and(|s| u64::from_be_bytes(s) < a.seq))
            .collect();
        for chunk in before.chunks(usize::try_from(step).unwrap_or(usize::MAX).max(1)) {
            let mut batch = Batch::new();
            for (k, v) in chunk {
                batch.delete(Table::Checkpoints, k.clone(), v.version);
            }
            match self.k.commit(&batch) {
                Ok(_) | Err(Error::Conflict(_)) => {} // a conflict: another replica deleted them
                Err(e) => return Err(e),
            }
        }
        Ok(pruned)
    }

    /// Events after `after`, at most `limit`. A cursor before the pruned
    /// part of the stream is refused (`PRUNED`, `pruned_through`): events
    /// after it are gone, and skipping them silently would lose them.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Event)>, Error> {
        let page = self.k.store.read_log(Table::Events, after, limit)?;
        // The floor is read after the page: a floor at or below `after`
        // now means nothing after `after` had been pruned when it was read.
        let (floor, _) = log_floor(self.k.store.as_ref(), Table::Events)?;
        if after < floor {
            return Err(pruned(
                "events",
                floor,
                &format!("cursor {after} is behind them (retention). Resume after cursor {floor} to accept the gap"),
            ));
        }
        page.into_iter()
            .map(|e| Ok((e.seq, Event::decode(&e.value)?)))
            .collect()
    }

    /// Records that the named consumer has handled every event up to
    /// `cursor`. The first acknowledgement makes it known (audited
    /// `events.consumer_added`): from then on events are pruned before
    /// `retention.events_max_age` only once it acknowledged them. Returns
    /// the last cursor pruned so far.
    pub fn ack_events(&self, actor: &str, consumer: &str, cursor: u64) -> Result<u64, Error> {
        check_consumer(consumer)?;
        let store = self.k.store.as_ref();
        let (head, _) = store.log_head(Table::Events)?;
        if cursor > head {
            return Err(Error::invalid("cursor", format!("is past the newest event ({head})")));
        }
        let (floor, _) = log_floor(store, Table::Events)?;
        if cursor < floor {
            return Err(pruned(
                "events",
                floor,
                &format!(
                    "consumer {consumer} at cursor {cursor} is behind them (retention). Resume after cursor \
                     {floor} to accept the gap"
                ),
            ));
        }
        let now = self.k.now()?;
        let key = meta::consumer_key(consumer);
        let rec = codec::encode(&ConsumerRecord { v: 1, cursor, at: now })?;
        for _ in 0..3 {
            let mut batch = Batch::new();
            match store.get(Table::Meta, &key)? {
                Some(v) => {
                    batch.update(Table::Meta, key.clone(), v.version, rec.clone());
                }
                None => {
                    batch.insert(Table::Meta, key.clone(), rec.clone());
                    AuditEntry::ok(now, actor, "", "events.consumer_added")
                        .with("consumer", consumer)
                        .with("cursor", cursor.to_string())
                        .append_to(&mut batch)?;
                }
            }
            match self.k.commit(&batch) {
                Ok(_) => return Ok(floor),
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "consumer {consumer} was acknowledged concurrently; nothing was written, retry"
        )))
    }
}
