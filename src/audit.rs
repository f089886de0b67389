//! The audit log: every decision, append-only and hash-chained, with
//! checkpoints signed by a separate HSM key.
//!
//! Each entry is appended in the same atomic batch as the change it
//! describes (refusals get a batch of their own). The store chains entries:
//! `hash_n = SHA-256(hash_{n-1} || n as 8 bytes BE || entry)`. A checkpoint
//! signs `("sigil-audit-checkpoint-v1", n, hash_n, time)` with the audit key
//! (ES256, inside the HSM). A [`Verifier`] recomputes the chain a page at
//! a time, checks every checkpoint's signature and that the chain passes
//! through it, and names the first entry that does not fit.
//!
//! The log is bounded by archiving: its oldest entries go to a file
//! ([`archive`]) cut at a signed checkpoint, then are pruned from the
//! store, which keeps an [`AuditAnchor`] (the cut's sequence number, hash
//! and checkpoint). The live log verifies from the anchor; the archives
//! and the live log verify as one chain. The chain of heads is what an RFC 9162
//! Merkle tree would later replace; entries and checkpoints keep their form.
use std::collections::BTreeMap;

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, Jwk};

use crate::error::Error;
use crate::store::codec;
use crate::store::{chain_hash, meta, Batch, LogEntry, Store, Table};

pub mod archive;

/// One audited decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Record version.
    pub v: u32,
    /// When.
    pub at: i64,
    /// Who asked: a role (`frontend`, `withdrawal-engine`, `admin`) or `system`.
    pub actor: String,
    /// The user concerned; empty for service-wide actions.
    pub user_id: String,
    /// What, e.g. `approval.issue`, `approval.begin`, `factor.enroll`, `admin.revoke`.
    pub action: String,
    /// `ok` or `refused`.
    pub outcome: String,
    /// Why (for refusals), or a summary.
    pub reason: String,
    /// Details (ids, digests, device signals). Never secrets.
    pub details: BTreeMap<String, String>,
}

impl crate::store::codec::Record for AuditEntry {
    const NAME: &'static str = "audit entry";
}

impl AuditEntry {
    /// A successful decision.
    pub fn ok(at: i64, actor: &str, user_id: &str, action: &str) -> AuditEntry {
        AuditEntry {
            v: 1,
            at,
            actor: actor.into(),
            user_id: user_id.into(),
            action: action.into(),
            outcome: "ok".into(),
            reason: String::new(),
            details: BTreeMap::new(),
        }
    }

    /// A refusal and its reason.
    pub fn refused(at: i64, actor: &str, user_id: &str, action: &str, reason: &str) -> AuditEntry {
        let mut e = AuditEntry::ok(at, actor, user_id, action);
        e.outcome = "refused".into();
        e.reason = reason.into();
        e
    }

    /// Adds a detail.
    pub fn with(mut self, k: &str, v: impl Into<String>) -> AuditEntry {
        self.details.insert(k.to_string(), v.into());
        self
    }

    /// Adds a count `n` as detail `k`, only when it is not zero.
    pub fn with_nonzero(self, k: &str, n: usize) -> AuditEntry {
        if n == 0 {
            self
        } else {
            self.with(k, n.to_string())
        }
    }

    /// Adds the entry to a batch.
    pub fn append_to(&self, batch: &mut Batch) -> Result<(), Error> {
        let bytes = codec::encode(self)?;
        batch.append(Table::Audit, bytes);
        Ok(())
    }

    /// Decodes a stored entry.
    pub fn decode(b: &[u8]) -> Result<AuditEntry, Error> {
        codec::decode(b)
    }
}

/// A signed checkpoint (table `checkpoints`, key = seq as 8 bytes BE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Record version.
    pub v: u32,
    /// The audit entry it covers (the head when signed).
    pub seq: u64,
    /// Chain hash at `seq`, base64url.
    pub hash: String,
    /// When it was signed.
    pub at: i64,
    /// `kid` of the audit key.
    pub kid: String,
    /// ES256 signature (r||s, base64url) over [`checkpoint_message`].
    pub signature: String,
}

impl crate::store::codec::Record for Checkpoint {
    const NAME: &'static str = "checkpoint";
}

/// The bytes a checkpoint signs.
pub fn checkpoint_message(seq: u64, hash: &[u8; 32], at: i64) -> Vec<u8> {
    let mut m = b"sigil-audit-checkpoint-v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&at.to_be_bytes());
    m
}

/// Where the live audit log starts once entries were archived and pruned
/// (table `meta`, key [`meta::AUDIT_ANCHOR`]): entries `1..=seq` are in
/// archive files, and the live chain goes on from `hash`, which the
/// signed `checkpoint` vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// Record version.
    pub v: u32,
    /// The last archived entry.
    pub seq: u64,
    /// Its chain hash, base64url.
    pub hash: String,
    /// The signed checkpoint at `seq`.
    pub checkpoint: Checkpoint,
    /// When the entries up to it were pruned.
    pub at: i64,
}

impl crate::store::codec::Record for AuditAnchor {
    const NAME: &'static str = "audit anchor";

    fn format_version(&self) -> u32 {
        self.v
    }
}

/// The audit log's anchor, if entries were archived and pruned.
pub fn anchor(store: &dyn Store) -> Result<Option<(AuditAnchor, u64)>, Error> {
    match store.get(Table::Meta, meta::AUDIT_ANCHOR)? {
        Some(v) => Ok(Some((codec::decode(&v.value)?, v.version))),
        None => Ok(None),
    }
}

/// A checkpoint's chain hash, if well formed.
pub fn checkpoint_hash(c: &Checkpoint) -> Option<[u8; 32]> {
    b64url::decode(&c.hash).ok()?.as_slice().try_into().ok()
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Where the check started: entries up to this one were not checked
    /// (archived; the chain was taken from a signed checkpoint there).
    /// 0: from the start of the log.
    pub from: u64,
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signature and position verified.
    pub checkpoints: u64,
    /// The first entry that does not fit, and why.
    pub first_broken: Option<(u64, String)>,
}

impl Report {
    /// True when nothing is broken.
    pub fn ok(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Where a chain stops verifying: the entry, and why.
pub type Broken = (u64, String);

/// Checks an audit chain entry by entry, in order, holding only its
/// running state: the last sequence number and hash, and the signed
/// checkpoints not reached yet. A log of any length (or several archive
/// files and the live log after them) is checked a page at a time.
///
/// Checkpoints are given before or right after the entry they cover
/// ([`Verifier::checkpoint`]): each one's signature is checked at once,
/// its hash when the chain reaches (or is at) its entry. Once something
/// does not fit, every later call answers the same break.
#[derive(Debug)]
pub struct Verifier {
    /// The audit key: kid and SEC1 point (None if malformed).
    key: Option<(String, Vec<u8>)>,
    prev: [u8; 32],
    last: u64,
    from: u64,
    entries: u64,
    checkpoints: u64,
    ahead: BTreeMap<u64, [u8; 32]>,
    broken: Option<Broken>,
}

impl Verifier {
    /// A verifier of a whole log, from entry 1.
    pub fn new(key: &Jwk) -> Verifier {
        Verifier::from_anchor(key, 0, [0u8; 32])
    }

    /// A verifier that starts after entry `seq`, whose chain hash is
    /// `hash` (taken on trust: see [`Verifier::from_checkpoint`]).
    pub fn from_anchor(key: &Jwk, seq: u64, hash: [u8; 32]) -> Verifier {
        let key = match (b64url::decode(&key.x), b64url::decode(&key.y)) {
            (Ok(x), Ok(y)) if x.len() == 32 && y.len() == 32 => Some((key.kid.clone(), [&[4u8][..], &x, &y].concat())),
            _ => None,
        };
        let broken = key.is_none().then(|| (0, "the audit key is malformed".to_string()));
        Verifier {
            key,
            prev: hash,
            last: seq,
            from: seq,
            entries: 0,
            checkpoints: 0,
            ahead: BTreeMap::new(),
            broken,
        }
    }

    /// A verifier that starts after the entry a signed checkpoint covers,
    /// from the hash it signs: the chain before it is not checked (it was
    /// archived), the checkpoint vouches for where it ended.
    pub fn from_checkpoint(key: &Jwk, c: &Checkpoint) -> Result<Verifier, Broken> {
        let hash = checkpoint_hash(c).ok_or_else(|| (c.seq, format!("checkpoint at {} is malformed", c.seq)))?;
        let mut v = Verifier::from_anchor(key, c.seq, hash);
        v.checkpoint(c)?;
        Ok(v)
    }

    /// The last entry checked (or where the check started) and its hash.
    pub fn position(&self) -> (u64, [u8; 32]) {
        (self.last, self.prev)
    }

    /// Where the check started (0: at the start of the log).
    pub fn from(&self) -> u64 {
        self.from
    }

    fn fail(&mut self, at: u64, why: String) -> Result<(), Broken> {
        let b = self.broken.get_or_insert((at, why)).clone();
        Err(b)
    }

    /// Checks a signed checkpoint: its signature by the audit key now, and
    /// that the chain passes through its hash — now if it covers the last
    /// entry checked, else when the chain reaches its entry. A checkpoint
    /// of an entry already passed is out of place.
    pub fn checkpoint(&mut self, c: &Checkpoint) -> Result<(), Broken> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        let Some(hash) = checkpoint_hash(c) else {
            return self.fail(c.seq, format!("checkpoint at {} is malformed", c.seq));
        };
        let sig_ok = match &self.key {
            Some((kid, point)) => {
                *kid == c.kid
                    && b64url::decode(&c.signature)
                        .map(|s| {
                            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                                .verify(&checkpoint_message(c.seq, &hash, c.at), &s)
                                .is_ok()
                        })
                        .unwrap_or(false)
            }
            None => false,
        };
        if !sig_ok {
            return self.fail(
                c.seq,
                format!("checkpoint at {} has no valid signature by the audit key", c.seq),
            );
        }
        if c.seq == self.last && self.last > 0 {
            if hash != self.prev {
                return self.fail(
                    c.seq,
                    format!(
                        "the log was rewritten: entry {} differs from the signed checkpoint",
                        c.seq
                    ),
                );
            }
            self.checkpoints += 1;
            return Ok(());
        }
        if c.seq < self.last {
            return self.fail(
                c.seq,
                format!(
                    "checkpoint at {} is out of place: the chain was already checked to {}",
                    c.seq, self.last
                ),
            );
        }
        match self.ahead.get(&c.seq) {
            Some(h) if *h != hash => self.fail(
                c.seq,
                format!("two signed checkpoints at {} disagree about its hash", c.seq),
            ),
            _ => {
                self.ahead.insert(c.seq, hash);
                Ok(())
            }
        }
    }

    /// Checks the next entry: it follows the last one, its chain hash is
    /// right, it is an audit entry, and it agrees with any checkpoint of it.
    pub fn entry(&mut self, e: &LogEntry) -> Result<(), Broken> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        let expected = self.last + 1;
        if e.seq != expected {
            return self.fail(expected, format!("entry {expected} is missing (next is {})", e.seq));
        }
        let h = chain_hash(&self.prev, e.seq, &e.value);
        if h != e.hash {
            return self.fail(
                e.seq,
                format!("entry {} does not match its chain hash (altered)", e.seq),
            );
        }
        if AuditEntry::decode(&e.value).is_err() {
            return self.fail(e.seq, format!("entry {} is not a valid audit entry", e.seq));
        }
        self.prev = h;
        self.last = e.seq;
        self.entries += 1;
        if let Some(signed) = self.ahead.remove(&e.seq) {
            if signed != h {
                return self.fail(
                    e.seq,
                    format!(
                        "the log was rewritten: entry {} differs from the signed checkpoint",
                        e.seq
                    ),
                );
            }
            self.checkpoints += 1;
        }
        Ok(())
    }

    /// The outcome: the first break, or a checkpoint of an entry the chain
    /// never reached (the log was cut short).
    pub fn finish(mut self) -> Report {
        if self.broken.is_none() {
            if let Some((seq, _)) = self.ahead.iter().next() {
                self.broken = Some((
                    *seq,
                    format!("entry {seq} is covered by a signed checkpoint but missing (truncated)"),
                ));
            }
        }
        Report {
            from: self.from,
            entries: self.entries,
            checkpoints: self.checkpoints,
            first_broken: self.broken,
        }
    }
}

/// Recomputes the chain of `entries` (all of them, from seq 1, in order) and
/// checks `checkpoints` against it with the audit key `key`.
pub fn verify(entries: &[LogEntry], checkpoints: &[Checkpoint], key: &Jwk) -> Report {
    let mut v = Verifier::new(key);
    for c in checkpoints {
        if v.checkpoint(c).is_err() {
            return v.finish();
        }
    }
    for e in entries {
        if v.entry(e).is_err() {
            break;
        }
    }
    v.finish()
}
