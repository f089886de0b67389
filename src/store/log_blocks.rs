//! How the embedded store keeps the audit and event logs in sled: in
//! blocks of [`LOG_BLOCK`] consecutive entries, one sled key per block.
//!
//! sled costs a few hundred bytes of its own for every key it holds (its
//! leaves split at 16 keys, each write adds a fragment to a page until the
//! page is consolidated, and segments are cleaned only once half empty), so
//! a log of a million small entries took several times its size on disk,
//! and as many entries in sled's page table in memory. In blocks, a log
//! costs one key per 64 entries, and a block compresses better than its
//! entries one by one (they repeat each other).
//!
//! Everything above the sled layer still sees one key per entry (the
//! sequence number, 8 bytes big-endian) and its stored bytes (version,
//! chain hash, entry); the block is how sled holds them. A block is the
//! key `seq / 64` (8 bytes big-endian) with, as its value, a header and
//! the entries in sequence order, packed like any value
//! ([`super::packed`]). Two layouts are read:
//!
//! - header `0` (8 zero bytes; stores of format 2 and 3): each entry
//!   `seq (u64 BE) || length (u32 BE) || stored bytes`;
//! - header `1` (written since format 4): each entry `seq (u64 BE) ||
//!   form (u8) || length (u32 BE) || bytes`. Form 1: the bytes are the
//!   stored bytes. Form 0: the stored bytes without their chain hash,
//!   which is [`super::chain_hash`] of the entry before (the previous one
//!   in the block, with the sequence number one lower) and this entry: it
//!   is written only where the stored hash is exactly that, so reading
//!   gives back the same bytes. The hashes (32 random bytes per entry)
//!   were over half of a packed block. A value changed inside a block
//!   changes the derived hashes after it, so `verify_log` finds the change
//!   at the next hash that is kept (the next block's first entry, or the
//!   log head) and names that entry rather than the changed one.
//!
//! Writing an
//! entry rewrites its block with the entry added (or removed, when a log
//! is pruned): a checkpoint rewrites each block it touches once. Applying
//! the same post-images twice gives the same blocks, which is what replay
//! after a crash needs.
use std::collections::BTreeMap;

use super::packed;
use super::{chain_hash, StoreError};

/// Entries per block.
pub const LOG_BLOCK: u64 = 64;

/// One block's entries: sequence number → stored bytes.
pub type Block = BTreeMap<u64, Vec<u8>>;

/// The number of the block holding `seq` (its sled key, 8 bytes big-endian).
pub fn block_of(seq: u64) -> u64 {
    seq / LOG_BLOCK
}

/// The sequence number a log key names, if it is one (8 bytes).
pub fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// The smallest sequence number whose key can be `>= from` or start with
/// `from`: `from` cut or padded with zeros to 8 bytes.
pub fn lower_bound(from: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = from.len().min(8);
    b[..n].copy_from_slice(&from[..n]);
    u64::from_be_bytes(b)
}

/// The largest sequence number whose key can be `<= through` or start
/// with `through`: `through` cut or padded with 0xFF to 8 bytes.
pub fn upper_bound(through: &[u8]) -> u64 {
    let mut b = [0xFFu8; 8];
    let n = through.len().min(8);
    b[..n].copy_from_slice(&through[..n]);
    u64::from_be_bytes(b)
}

/// The header of the layout with derived chain hashes.
const HEADER_DERIVED: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];
/// Where a log entry's chain hash sits in its stored bytes (after the
/// version).
const HASH: std::ops::Range<usize> = 8..40;

/// The chain hash stored in an entry's bytes, if they are long enough.
fn stored_hash(v: &[u8]) -> Option<&[u8; 32]> {
    v.get(HASH).and_then(|h| h.try_into().ok())
}

/// A block as sled holds it.
pub fn encode(block: &Block) -> Result<Vec<u8>, StoreError> {
    let mut plain = Vec::with_capacity(8 + block.values().map(|v| 13 + v.len()).sum::<usize>());
    plain.extend_from_slice(&HEADER_DERIVED);
    let mut prev: Option<(u64, &[u8; 32])> = None;
    for (seq, v) in block {
        let hash = stored_hash(v);
        let derived = match (prev, hash) {
            (Some((p, ph)), Some(h)) if p.checked_add(1) == Some(*seq) => chain_hash(ph, *seq, &v[HASH.end..]) == *h,
            _ => false,
        };
        let body: &[u8] = if derived { &v[..HASH.start] } else { v };
        let len = u32::try_from(v.len())
            .map_err(|_| StoreError::Corrupt(format!("log entry {seq} is too large to store")))?;
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.push(u8::from(!derived));
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(body);
        if derived {
            plain.extend_from_slice(&v[HASH.end..]);
        }
        prev = hash.map(|h| (*seq, h));
    }
    packed::pack(&plain)
}

/// The entries of a block read from sled; `id` is its key's number, and
/// every entry must belong to it.
pub fn decode(id: u64, raw: &[u8]) -> Result<Block, StoreError> {
    let plain = packed::unpack(raw)?;
    let bad = |why: &str| StoreError::Corrupt(format!("log block {id} is damaged: {why}"));
    let derived_layout = match plain.get(..8) {
        Some(h) if h == [0u8; 8] => false,
        Some(h) if h == HEADER_DERIVED => true,
        _ => return Err(bad("no block header")),
    };
    let head = if derived_layout { 13 } else { 12 };
    let mut block = Block::new();
    let mut at = 8;
    while at < plain.len() {
        let Some(h) = plain.get(at..at + head) else {
            return Err(bad("an entry header is cut short"));
        };
        let seq = u64::from_be_bytes(h[..8].try_into().map_err(|_| bad("entry header"))?);
        let form = if derived_layout { h[8] } else { 1 };
        let len = u32::from_be_bytes(h[head - 4..].try_into().map_err(|_| bad("entry header"))?) as usize;
        at += head;
        if block_of(seq) != id || block.keys().next_back().is_some_and(|last| *last >= seq) {
            return Err(bad("entries out of place or out of order"));
        }
        let stored = match form {
            1 => {
                let v = plain.get(at..at + len).ok_or_else(|| bad("an entry is cut short"))?;
                at += len;
                v.to_vec()
            }
            0 => {
                // The stored bytes less their hash, which chains on the
                // entry before.
                let body = len.checked_sub(HASH.len()).filter(|b| *b >= HASH.start);
                let v = body
                    .and_then(|b| plain.get(at..at + b))
                    .ok_or_else(|| bad("an entry is cut short"))?;
                at += v.len();
                let prev = block
                    .iter()
                    .next_back()
                    .filter(|(p, _)| p.checked_add(1) == Some(seq))
                    .and_then(|(_, pv)| stored_hash(pv))
                    .ok_or_else(|| bad("a derived chain hash has no entry before it"))?;
                let hash = chain_hash(prev, seq, &v[HASH.start..]);
                let mut out = Vec::with_capacity(len);
                out.extend_from_slice(&v[..HASH.start]);
                out.extend_from_slice(&hash);
                out.extend_from_slice(&v[HASH.start..]);
                out
            }
            _ => return Err(bad("an entry of an unknown form")),
        };
        block.insert(seq, stored);
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Vec<u8> {
        let mut v = 1u64.to_be_bytes().to_vec();
        v.extend_from_slice(&[seq as u8; 32]);
        v.extend_from_slice(format!(r#"{{"v":1,"at":{seq},"actor":"frontend","action":"approval.begin"}}"#).as_bytes());
        v
    }

    #[test]
    fn blocks_round_trip_and_bounds_cover_every_key_form() {
        let block: Block = (128..192).map(|s| (s, entry(s))).collect();
        let raw = encode(&block).unwrap();
        assert!(raw.len() < block.values().map(Vec::len).sum::<usize>() / 2);
        assert_eq!(decode(2, &raw).unwrap(), block);
        assert_eq!(block_of(191), 2);
        assert_eq!(seq_of(&7u64.to_be_bytes()), Some(7));
        assert_eq!(seq_of(b"short"), None);
        assert_eq!((lower_bound(&[]), upper_bound(&[])), (0, u64::MAX));
        assert_eq!(lower_bound(&[0, 0, 0, 0, 0, 0, 1]), 256);
        assert_eq!(upper_bound(&[0, 0, 0, 0, 0, 0, 1]), 511);
        assert_eq!(lower_bound(&300u64.to_be_bytes()), 300);
        assert_eq!(upper_bound(&300u64.to_be_bytes()), 300);
    }

    /// The stored bytes of a log whose entries chain: `(seq, version ||
    /// hash || value)` from `first`, the one before `first` hashing to
    /// `prev`.
    fn chained(prev: [u8; 32], first: u64, n: u64) -> Vec<(u64, Vec<u8>)> {
        let mut prev = prev;
        (first..first + n)
            .map(|seq| {
                let value = format!(r#"{{"v":1,"at":{seq},"actor":"frontend","action":"approval.begin"}}"#);
                let hash = chain_hash(&prev, seq, value.as_bytes());
                prev = hash;
                (seq, [&1u64.to_be_bytes()[..], &hash, value.as_bytes()].concat())
            })
            .collect()
    }

    /// Entries that chain keep only the first hash in the block; reading
    /// gives back every stored byte. An entry that does not chain (a
    /// damaged or rewritten hash, a gap, a short value) keeps its own.
    #[test]
    fn chained_hashes_are_derived_and_read_back_exactly() {
        let block: Block = chained([7u8; 32], 128, 64).into_iter().collect();
        let raw = encode(&block).unwrap();
        assert_eq!(decode(2, &raw).unwrap(), block);
        let explicit: Block = (128..192).map(|s| (s, entry(s))).collect();
        let explicit_raw = encode(&explicit).unwrap();
        assert!(
            raw.len() * 3 < explicit_raw.len() * 2,
            "{} vs {}",
            raw.len(),
            explicit_raw.len()
        );
        let plain = packed::unpack(&raw).unwrap();
        assert_eq!(plain[..8], HEADER_DERIVED);
        assert_eq!(plain[16], 1, "the first entry keeps its hash");

        let mut odd = block.clone();
        odd.get_mut(&140).unwrap()[9] ^= 1; // a hash that does not chain
        odd.remove(&150); // a gap
        odd.insert(160, b"short".to_vec()); // no hash at all
        let raw = encode(&odd).unwrap();
        assert_eq!(decode(2, &raw).unwrap(), odd);
        // A block that starts mid-log (pruned before it) and an empty one.
        let tail: Block = chained([1u8; 32], 150, 20).into_iter().collect();
        assert_eq!(decode(2, &encode(&tail).unwrap()).unwrap(), tail);
        assert!(decode(5, &encode(&Block::new()).unwrap()).unwrap().is_empty());
    }

    /// Blocks written before hashes were derived (header 0) read as before.
    #[test]
    fn blocks_of_the_first_layout_are_read() {
        let block: Block = chained([0u8; 32], 64, 10).into_iter().collect();
        let mut plain = vec![0u8; 8];
        for (seq, v) in &block {
            plain.extend_from_slice(&seq.to_be_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v);
        }
        assert_eq!(decode(1, &plain).unwrap(), block);
    }

    /// A derived hash needs the entry before it; an unknown form is damage.
    #[test]
    fn damaged_derived_blocks_are_refused() {
        let block: Block = chained([3u8; 32], 0, 3).into_iter().collect();
        let plain = packed::unpack(&encode(&block).unwrap()).unwrap();
        let first_len = 13 + block[&0].len();
        // Drop the first entry: the second's hash has nothing to chain on.
        let orphan = [&plain[..8], &plain[8 + first_len..]].concat();
        assert!(decode(0, &orphan)
            .unwrap_err()
            .to_string()
            .contains("no entry before it"));
        let mut unknown = plain.clone();
        unknown[16] = 9;
        assert!(decode(0, &unknown).unwrap_err().to_string().contains("unknown form"));
        for cut in 9..plain.len() {
            if let Ok(b) = decode(0, &plain[..cut]) {
                assert!(b.iter().all(|(k, v)| block.get(k) == Some(v)), "cut at {cut}");
            }
        }
    }

    #[test]
    fn damaged_blocks_are_refused() {
        let block: Block = (128..140).map(|s| (s, entry(s))).collect();
        let raw = encode(&block).unwrap();
        // Decoded under the wrong block number: entries out of place.
        assert!(decode(3, &raw).unwrap_err().to_string().contains("out of place"));
        // A plain block cut short.
        let mut plain = vec![0u8; 8];
        plain.extend_from_slice(&5u64.to_be_bytes());
        plain.extend_from_slice(&100u32.to_be_bytes());
        plain.extend_from_slice(b"short");
        assert!(decode(0, &plain).unwrap_err().to_string().contains("cut short"));
        assert!(decode(0, &plain[..14]).unwrap_err().to_string().contains("cut short"));
        assert!(decode(0, &[1]).is_err());
    }
}
