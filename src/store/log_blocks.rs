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
//! sequence number, 8 bytes big-endian) and its stored bytes; the block
//! is how sled holds them. A block is the key `seq / 64` (8 bytes
//! big-endian) with, as its value, the entries in sequence order, each
//! `seq (u64 BE) || length (u32 BE) || stored bytes`, packed like any
//! value ([`super::packed`]) behind a zero version header. Writing an
//! entry rewrites its block with the entry added (or removed, when a log
//! is pruned): a checkpoint rewrites each block it touches once. Applying
//! the same post-images twice gives the same blocks, which is what replay
//! after a crash needs.
use std::collections::BTreeMap;

use super::packed;
use super::StoreError;

/// Entries per block.
pub const LOG_BLOCK: u64 = 64;

/// One block's entries: sequence number → stored bytes.
pub type Block = BTreeMap<u64, Vec<u8>>;

/// The sled key of the block holding `seq`.
pub fn block_key(seq: u64) -> [u8; 8] {
    (seq / LOG_BLOCK).to_be_bytes()
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

/// A block as sled holds it.
pub fn encode(block: &Block) -> Result<Vec<u8>, StoreError> {
    let mut plain = Vec::with_capacity(8 + block.values().map(|v| 12 + v.len()).sum::<usize>());
    plain.extend_from_slice(&[0u8; 8]);
    for (seq, v) in block {
        let len = u32::try_from(v.len())
            .map_err(|_| StoreError::Corrupt(format!("log entry {seq} is too large to store")))?;
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(v);
    }
    packed::pack(&plain)
}

/// The entries of a block read from sled; `id` is its key's number, and
/// every entry must belong to it.
pub fn decode(id: u64, raw: &[u8]) -> Result<Block, StoreError> {
    let plain = packed::unpack(raw)?;
    let bad = |why: &str| StoreError::Corrupt(format!("log block {id} is damaged: {why}"));
    if plain.len() < 8 || plain[..8] != [0u8; 8] {
        return Err(bad("no block header"));
    }
    let mut block = Block::new();
    let mut at = 8;
    while at < plain.len() {
        if plain.len() - at < 12 {
            return Err(bad("an entry header is cut short"));
        }
        let seq = u64::from_be_bytes(plain[at..at + 8].try_into().map_err(|_| bad("entry header"))?);
        let len = u32::from_be_bytes(plain[at + 8..at + 12].try_into().map_err(|_| bad("entry header"))?) as usize;
        at += 12;
        if plain.len() - at < len {
            return Err(bad("an entry is cut short"));
        }
        if seq / LOG_BLOCK != id || block.keys().next_back().is_some_and(|last| *last >= seq) {
            return Err(bad("entries out of place or out of order"));
        }
        block.insert(seq, plain[at..at + len].to_vec());
        at += len;
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
        assert_eq!(block_key(191), 2u64.to_be_bytes());
        assert_eq!(seq_of(&7u64.to_be_bytes()), Some(7));
        assert_eq!(seq_of(b"short"), None);
        assert_eq!((lower_bound(&[]), upper_bound(&[])), (0, u64::MAX));
        assert_eq!(lower_bound(&[0, 0, 0, 0, 0, 0, 1]), 256);
        assert_eq!(upper_bound(&[0, 0, 0, 0, 0, 0, 1]), 511);
        assert_eq!(lower_bound(&300u64.to_be_bytes()), 300);
        assert_eq!(upper_bound(&300u64.to_be_bytes()), 300);
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
