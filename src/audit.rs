//! The audit log: every decision, append-only and hash-chained, with
//! checkpoints signed by a separate HSM key.
//!
//! Each entry is appended in the same atomic batch as the change it
//! describes (refusals get a batch of their own). The store chains entries:
//! `hash_n = SHA-256(hash_{n-1} || n as 8 bytes BE || entry)`. A checkpoint
//! signs `("sigil-audit-checkpoint-v1", n, hash_n, time)` with the audit key
//! (ES256, inside the HSM). [`verify`] recomputes the chain, checks every
//! checkpoint's signature and that the chain passes through it, and names
//! the first entry that does not fit. The chain of heads is what an RFC 9162
//! Merkle tree would later replace; entries and checkpoints keep their form.
use std::collections::{BTreeMap, HashMap};

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, Jwk};

use crate::error::Error;
use crate::store::codec;
use crate::store::{chain_hash, Batch, LogEntry, Table};

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

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
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

/// Recomputes the chain of `entries` (all of them, from seq 1, in order) and
/// checks `checkpoints` against it with the audit key `key`.
pub fn verify(entries: &[LogEntry], checkpoints: &[Checkpoint], key: &Jwk) -> Report {
    let mut report = Report {
        entries: 0,
        checkpoints: 0,
        first_broken: None,
    };
    let mut prev = [0u8; 32];
    let mut hashes: HashMap<u64, [u8; 32]> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if e.seq != expected_seq {
            report.first_broken = Some((
                expected_seq,
                format!("entry {expected_seq} is missing (next is {})", e.seq),
            ));
            return report;
        }
        let h = chain_hash(&prev, e.seq, &e.value);
        if h != e.hash {
            report.first_broken = Some((
                e.seq,
                format!("entry {} does not match its chain hash (altered)", e.seq),
            ));
            return report;
        }
        if AuditEntry::decode(&e.value).is_err() {
            report.first_broken = Some((e.seq, format!("entry {} is not a valid audit entry", e.seq)));
            return report;
        }
        hashes.insert(e.seq, h);
        prev = h;
        report.entries += 1;
    }
    let point = match (b64url::decode(&key.x), b64url::decode(&key.y)) {
        (Ok(x), Ok(y)) if x.len() == 32 && y.len() == 32 => [&[4u8][..], &x, &y].concat(),
        _ => {
            report.first_broken = Some((0, "the audit key is malformed".into()));
            return report;
        }
    };
    let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
    for c in checkpoints {
        let hash = match b64url::decode(&c.hash) {
            Ok(h) if h.len() == 32 => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&h);
                a
            }
            _ => {
                report.first_broken = Some((c.seq, format!("checkpoint at {} is malformed", c.seq)));
                return report;
            }
        };
        let sig_ok = c.kid == key.kid
            && b64url::decode(&c.signature)
                .map(|s| pk.verify(&checkpoint_message(c.seq, &hash, c.at), &s).is_ok())
                .unwrap_or(false);
        if !sig_ok {
            report.first_broken = Some((
                c.seq,
                format!("checkpoint at {} has no valid signature by the audit key", c.seq),
            ));
            return report;
        }
        match hashes.get(&c.seq) {
            Some(h) if *h == hash => report.checkpoints += 1,
            Some(_) => {
                report.first_broken = Some((
                    c.seq,
                    format!(
                        "the log was rewritten: entry {} differs from the signed checkpoint",
                        c.seq
                    ),
                ));
                return report;
            }
            None => {
                report.first_broken = Some((
                    c.seq,
                    format!(
                        "entry {} is covered by a signed checkpoint but missing (truncated)",
                        c.seq
                    ),
                ));
                return report;
            }
        }
    }
    report
}
