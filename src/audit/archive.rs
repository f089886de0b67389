//! Audit archive files: the oldest entries of the audit log, written out
//! before they are pruned from the store, in a form that verifies on its
//! own and chains onto the next archive and the live log.
//!
//! An archive is JSON lines. The first line is the [`Header`]: the
//! deployment, the entry the archive starts after (`after_seq`, its chain
//! hash, and the signed checkpoint there unless it is the start of the
//! log), the cut (`through_seq`, its chain hash, and the signed checkpoint
//! at the cut), the number of entries and the audit key. Then one line per
//! entry, in order, `{"seq":N,"hash":"<chain hash, base64url>","raw":"<the
//! entry as stored>"}`, each signed checkpoint of the range on the line
//! after the entry it covers, `{"checkpoint":{...}}`. The chain hash of
//! entry N is `SHA-256(hash of N-1 || N as 8 bytes BE || raw)`.
//!
//! Consecutive archives chain: the second starts after the first's cut.
//! [`verify_archive`] checks one file against the chain checked so far.
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, Jwk};

use super::{checkpoint_hash, Broken, Checkpoint, Verifier};
use crate::store::LogEntry;

/// The `format` of every archive this Sigil writes.
pub const FORMAT: &str = "sigil-audit-archive-v1";

/// The first line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// The deployment the entries come from.
    pub deployment_id: String,
    /// When the archive was written (Unix seconds, the operator's clock).
    pub created_at: i64,
    /// The entry the archive starts after (0: the start of the log).
    pub after_seq: u64,
    /// Its chain hash, base64url (32 zero bytes for 0).
    pub after_hash: String,
    /// The signed checkpoint at `after_seq` (the previous cut), unless it is 0.
    pub after_checkpoint: Option<Checkpoint>,
    /// The last entry in the archive: the cut.
    pub through_seq: u64,
    /// Its chain hash, base64url.
    pub through_hash: String,
    /// The signed checkpoint at the cut.
    pub checkpoint: Checkpoint,
    /// Entries in the archive (`through_seq - after_seq`).
    pub entries: u64,
    /// The audit key the checkpoints verify with.
    pub audit_key: Jwk,
}

/// A line after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    /// An audit entry.
    Entry {
        /// Sequence number.
        seq: u64,
        /// Chain hash, base64url.
        hash: String,
        /// The entry as stored (JSON text).
        raw: String,
    },
    /// A signed checkpoint of the entry on the line before.
    Checkpoint {
        /// The checkpoint.
        checkpoint: Checkpoint,
    },
}

impl Line {
    /// The line of a log entry (entries are JSON, so UTF-8; anything else
    /// is refused rather than written lossily).
    pub fn entry(e: &LogEntry) -> Result<Line, Broken> {
        let raw = String::from_utf8(e.value.clone()).map_err(|_| {
            (
                e.seq,
                format!("entry {} is not UTF-8 text; it cannot be archived", e.seq),
            )
        })?;
        Ok(Line::Entry {
            seq: e.seq,
            hash: b64url::encode(&e.hash),
            raw,
        })
    }
}

fn hash_of(s: &str) -> Option<[u8; 32]> {
    b64url::decode(s).ok()?.as_slice().try_into().ok()
}

/// Reads an archive's header (its first line) from `r`.
pub fn read_header(r: &mut impl BufRead, name: &str) -> Result<Header, String> {
    let mut first = String::new();
    r.read_line(&mut first)
        .map_err(|e| format!("{name}: cannot read it: {e}"))?;
    let h: Header = serde_json::from_str(first.trim_end())
        .map_err(|e| format!("{name} line 1: not a Sigil audit archive header ({e})"))?;
    if h.format != FORMAT {
        return Err(format!(
            "{name}: format {:?} is not one this Sigil reads ({FORMAT})",
            h.format
        ));
    }
    Ok(h)
}

/// The verifier to check the archive whose header is `h` with, when it is
/// the first archive given: from the start of the log, or from the signed
/// checkpoint it starts after (the entries before it are not checked).
pub fn first_verifier(h: &Header, key: &Jwk, name: &str) -> Result<Verifier, Broken> {
    match (&h.after_checkpoint, h.after_seq) {
        (_, 0) => Ok(Verifier::new(key)),
        (Some(c), seq) if c.seq == seq && c.hash == h.after_hash => Verifier::from_checkpoint(key, c),
        (_, seq) => Err((
            seq,
            format!("{name}: its header has no signed checkpoint at entry {seq}, where it starts"),
        )),
    }
}

/// Checks one archive (header `h`, already read; the rest of the file in
/// `r`) as the continuation of the chain `v` has checked: it must start
/// where `v` stands, every entry must chain and every checkpoint verify,
/// and it must end at its cut, which its signed checkpoint covers.
/// `deployment` is the deployment the chain belongs to. Breaks name the
/// file and line.
pub fn verify_archive(
    h: &Header,
    r: impl BufRead,
    name: &str,
    v: &mut Verifier,
    deployment: &str,
) -> Result<(), Broken> {
    let (last, prev) = v.position();
    if h.deployment_id != deployment {
        return Err((
            h.after_seq + 1,
            format!("{name} comes from deployment {}, not {deployment}", h.deployment_id),
        ));
    }
    if h.after_seq > last {
        return Err((
            last + 1,
            format!(
                "entries {}..={} are missing: {name} starts after entry {}, the chain checked so far ends at {last} \
                 (is an archive missing, or out of order?)",
                last + 1,
                h.after_seq,
                h.after_seq
            ),
        ));
    }
    if h.after_seq < last {
        return Err((
            h.after_seq + 1,
            format!(
                "{name} starts after entry {}, but the chain was already checked to {last}: archives overlap or \
                 are out of order",
                h.after_seq
            ),
        ));
    }
    if hash_of(&h.after_hash) != Some(prev) {
        return Err((
            last,
            format!("{name} does not continue the chain: its hash of entry {last} differs"),
        ));
    }
    if h.checkpoint.seq != h.through_seq
        || checkpoint_hash(&h.checkpoint).is_none()
        || h.checkpoint.hash != h.through_hash
        || h.through_seq < h.after_seq
        || h.entries != h.through_seq - h.after_seq
    {
        return Err((
            h.after_seq + 1,
            format!("{name}: its header is inconsistent (cut, checkpoint or entry count)"),
        ));
    }
    v.checkpoint(&h.checkpoint)?;
    let at = |line: usize, b: Broken| (b.0, format!("{name} line {line}: {}", b.1));
    for (i, text) in r.lines().enumerate() {
        let line = i + 2;
        let text = text.map_err(|e| (v.position().0 + 1, format!("{name} line {line}: cannot read it: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&text)
            .map_err(|e| at(line, (v.position().0 + 1, format!("not an archive line ({e})"))))?;
        match parsed {
            Line::Entry { seq, hash, raw } => {
                if seq > h.through_seq {
                    return Err(at(
                        line,
                        (seq, format!("entry {seq} is past the archive's cut {}", h.through_seq)),
                    ));
                }
                let hash =
                    hash_of(&hash).ok_or_else(|| at(line, (seq, format!("entry {seq} has a malformed chain hash"))))?;
                v.entry(&LogEntry {
                    seq,
                    hash,
                    value: raw.into_bytes(),
                })
                .map_err(|b| at(line, b))?;
            }
            Line::Checkpoint { checkpoint } => v.checkpoint(&checkpoint).map_err(|b| at(line, b))?,
        }
    }
    let (end, _) = v.position();
    if end != h.through_seq {
        return Err((
            end + 1,
            format!(
                "{name} ends at entry {end}, its header says it holds entries through {} (truncated)",
                h.through_seq
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::*;
    use crate::audit::{checkpoint_message, AuditEntry};
    use crate::store::chain_hash;

    /// A software audit key, entries 1..=n chained, and checkpoints signed.
    struct Log {
        key: EcdsaKeyPair,
        jwk: Jwk,
        entries: Vec<LogEntry>,
    }

    impl Log {
        fn new(n: u64) -> Log {
            Log::with_action(n, "t")
        }

        fn with_action(n: u64, action: &str) -> Log {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
            let point = key.public_key().as_ref();
            let jwk = Jwk::from_p256_point(&point[1..33].try_into().unwrap(), &point[33..].try_into().unwrap());
            let mut entries = Vec::new();
            let mut prev = [0u8; 32];
            for seq in 1..=n {
                let value =
                    crate::store::codec::encode(&AuditEntry::ok(1_000, "admin", "", action).with("n", seq.to_string()))
                        .unwrap();
                let hash = chain_hash(&prev, seq, &value);
                entries.push(LogEntry { seq, hash, value });
                prev = hash;
            }
            Log { key, jwk, entries }
        }

        fn hash(&self, seq: u64) -> [u8; 32] {
            if seq == 0 {
                [0u8; 32]
            } else {
                self.entries[seq as usize - 1].hash
            }
        }

        fn checkpoint(&self, seq: u64) -> Checkpoint {
            let hash = self.hash(seq);
            let sig = self
                .key
                .sign(&SystemRandom::new(), &checkpoint_message(seq, &hash, 7))
                .unwrap();
            Checkpoint {
                v: 1,
                seq,
                hash: b64url::encode(&hash),
                at: 7,
                kid: self.jwk.kid.clone(),
                signature: b64url::encode(sig.as_ref()),
            }
        }

        /// The archive of entries `after + 1 ..= through`, checkpoints at
        /// `cps`, as text.
        fn archive(&self, after: u64, through: u64, cps: &[u64]) -> String {
            let h = Header {
                format: FORMAT.into(),
                deployment_id: "dep".into(),
                created_at: 9,
                after_seq: after,
                after_hash: b64url::encode(&self.hash(after)),
                after_checkpoint: (after > 0).then(|| self.checkpoint(after)),
                through_seq: through,
                through_hash: b64url::encode(&self.hash(through)),
                checkpoint: self.checkpoint(through),
                entries: through - after,
                audit_key: self.jwk.clone(),
            };
            let mut out = serde_json::to_string(&h).unwrap() + "\n";
            for e in &self.entries[after as usize..through as usize] {
                out += &(serde_json::to_string(&Line::entry(e).unwrap()).unwrap() + "\n");
                if cps.contains(&e.seq) {
                    let c = Line::Checkpoint {
                        checkpoint: self.checkpoint(e.seq),
                    };
                    out += &(serde_json::to_string(&c).unwrap() + "\n");
                }
            }
            out
        }
    }

    /// Checks archive texts in order, as `sigil audit verify` does.
    fn check(log: &Log, archives: &[&str]) -> Result<Verifier, Broken> {
        let mut v: Option<Verifier> = None;
        for (i, text) in archives.iter().enumerate() {
            let name = format!("a{i}");
            let mut r = std::io::BufReader::new(text.as_bytes());
            let h = read_header(&mut r, &name).map_err(|m| (0, m))?;
            if v.is_none() {
                v = Some(first_verifier(&h, &log.jwk, &name)?);
            }
            let Some(ver) = v.as_mut() else { unreachable!() };
            verify_archive(&h, r, &name, ver, "dep")?;
        }
        v.ok_or((0, "no archive".into()))
    }

    #[test]
    fn consecutive_archives_verify_as_one_chain_and_go_on_into_the_live_log() {
        let log = Log::new(30);
        let (a, b) = (log.archive(0, 10, &[4]), log.archive(10, 25, &[20]));
        let mut v = check(&log, &[&a, &b]).unwrap();
        assert_eq!(v.position(), (25, log.hash(25)));
        v.checkpoint(&log.checkpoint(30)).unwrap();
        for e in &log.entries[25..] {
            v.entry(e).unwrap();
        }
        let r = v.finish();
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.from, r.entries, r.checkpoints), (0, 30, 5));
        // The second alone starts from its signed anchor.
        let v = check(&log, &[&b]).unwrap();
        assert_eq!(v.from(), 10);
    }

    #[test]
    fn a_tampered_missing_or_truncated_archive_is_named() {
        let log = Log::new(30);
        let (a, b, c) = (
            log.archive(0, 10, &[]),
            log.archive(10, 20, &[]),
            log.archive(20, 30, &[]),
        );
        let tampered = a.replacen("\\\"n\\\":\\\"6\\\"", "\\\"n\\\":\\\"66\\\"", 1);
        assert_ne!(tampered, a);
        let e = check(&log, &[&tampered, &b]).unwrap_err();
        assert_eq!(e.0, 6, "{e:?}");
        assert!(e.1.contains("a0 line 7") && e.1.contains("altered"), "{e:?}");
        // The middle one missing.
        let e = check(&log, &[&a, &c]).unwrap_err();
        assert_eq!(e.0, 11, "{e:?}");
        assert!(e.1.contains("missing"), "{e:?}");
        // Out of order.
        let e = check(&log, &[&b, &a]).unwrap_err();
        assert!(e.1.contains("out of order"), "{e:?}");
        // Cut short.
        let short: String = a.lines().take(6).map(|l| format!("{l}\n")).collect();
        let e = check(&log, &[&short]).unwrap_err();
        assert_eq!(e.0, 6, "{e:?}");
        assert!(e.1.contains("truncated"), "{e:?}");
        // Entries and hashes rewritten consistently: the signed cut says no.
        let other = Log::with_action(30, "forged");
        let mut forged = other.archive(0, 10, &[]);
        let first = forged.lines().next().unwrap().to_string();
        let mut h: Header = serde_json::from_str(&first).unwrap();
        h.checkpoint = log.checkpoint(10);
        h.through_hash = h.checkpoint.hash.clone();
        h.audit_key = log.jwk.clone();
        forged = forged.replacen(&first, &serde_json::to_string(&h).unwrap(), 1);
        let e = check(&log, &[&forged]).unwrap_err();
        assert!(e.1.contains("rewritten") || e.1.contains("altered"), "{e:?}");
        // Another deployment's archive.
        let mut r = std::io::BufReader::new(a.as_bytes());
        let h = read_header(&mut r, "a").unwrap();
        let mut v = Verifier::new(&log.jwk);
        let e = verify_archive(&h, r, "a", &mut v, "another").unwrap_err();
        assert!(e.1.contains("deployment"), "{e:?}");
    }

    #[test]
    fn the_incremental_verifier_agrees_with_checking_a_whole_log() {
        let log = Log::new(12);
        let cps = [log.checkpoint(5), log.checkpoint(12)];
        assert!(crate::audit::verify(&log.entries, &cps, &log.jwk).ok());
        let mut altered = log.entries.clone();
        altered[7].value.push(b' ');
        let r = crate::audit::verify(&altered, &cps, &log.jwk);
        assert_eq!(r.first_broken.map(|b| b.0), Some(8));
        let r = crate::audit::verify(&log.entries[..10], &cps, &log.jwk);
        assert_eq!(r.first_broken.map(|b| b.0), Some(12), "a checkpoint past the end");
        // From a signed checkpoint: only what follows is checked.
        let mut v = Verifier::from_checkpoint(&log.jwk, &log.checkpoint(5)).unwrap();
        for e in &log.entries[5..] {
            v.entry(e).unwrap();
        }
        let r = v.finish();
        assert_eq!((r.from, r.entries, r.checkpoints, r.ok()), (5, 7, 1, true));
        let mut bad = log.checkpoint(5);
        bad.signature = log.checkpoint(6).signature;
        assert!(Verifier::from_checkpoint(&log.jwk, &bad).is_err());
    }
}
