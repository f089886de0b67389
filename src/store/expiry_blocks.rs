//! How the embedded store keeps the expiry index in sled: one sled key per
//! second of purge time, holding every index entry due in that second.
//!
//! The expiry index ([`super::meta::EXPIRY_PREFIX`]) has an entry for
//! every challenge, ceremony and approval until the sweep purges it: after
//! a busy day, more keys than any table. sled costs a few hundred bytes of
//! its own for every key it holds (see [`super::log_blocks`]), so the index
//! took more room on disk than the records it points at. Entries are
//! written in the order of their purge time (a record's expiry plus its
//! table's grace), so a second's entries arrive together, in the one or
//! two checkpoints of that second, and the sweep removes them together.
//!
//! Above the sled layer nothing changes: table `meta` still holds one key
//! per entry, `expiry/<purge time, u64 BE><table><record key>`. sled keeps
//! those keys (the prefix followed by at least the 8 bytes of a time) in a
//! tree of their own, as the key `<purge time, u64 BE>` with, as its value,
//! the second's entries in key order, each `length (u32 BE) || key after
//! the time || length (u32 BE) || stored bytes`, behind a zero header and
//! packed like any value ([`super::packed`]). A checkpoint rewrites each
//! second it touches once; applying the same post-images twice gives the
//! same buckets, which is what replay after a crash needs.
use std::collections::BTreeMap;

use super::log_blocks::{lower_bound, upper_bound};
use super::meta::EXPIRY_PREFIX;
use super::packed;
use super::StoreError;

/// One second's entries: the whole `meta` key → stored bytes.
pub type Bucket = BTreeMap<Vec<u8>, Vec<u8>>;

/// The purge second whose bucket holds the `meta` key `key`, if sled keeps
/// that key in a bucket (the expiry prefix and at least 8 bytes of time);
/// every other `meta` key stays in the `meta` tree.
pub fn bucket_of(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(EXPIRY_PREFIX)?;
    Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
}

/// The first bucket that can hold a key `>= from`, or None when no bucketed
/// key is (every one is greater than the prefix and starts with it).
pub fn first_bucket_from(from: &[u8]) -> Option<u64> {
    if from <= EXPIRY_PREFIX {
        return Some(0);
    }
    // A time is 8 bytes big-endian, as a log's sequence number is.
    Some(lower_bound(from.strip_prefix(EXPIRY_PREFIX)?))
}

/// The last bucket that can hold a key `<= through`, or None when none can.
pub fn last_bucket_through(through: &[u8]) -> Option<u64> {
    match through.strip_prefix(EXPIRY_PREFIX) {
        Some(rest) => Some(upper_bound(rest)),
        None if through < EXPIRY_PREFIX => None,
        None => Some(u64::MAX),
    }
}

/// The buckets that can hold a key starting with `prefix`, or None.
pub fn buckets_with_prefix(prefix: &[u8]) -> Option<(u64, u64)> {
    if EXPIRY_PREFIX.starts_with(prefix) {
        return Some((0, u64::MAX));
    }
    let rest = prefix.strip_prefix(EXPIRY_PREFIX)?;
    Some((lower_bound(rest), upper_bound(rest)))
}

/// Bucket `at` as sled holds it; every key must belong to it.
pub fn encode(at: u64, bucket: &Bucket) -> Result<Vec<u8>, StoreError> {
    let head = [EXPIRY_PREFIX, &at.to_be_bytes()].concat();
    encode_keyed(
        &head,
        bucket,
        |k| bucket_of(k) == Some(at),
        &format!("expiry index bucket {at}"),
    )
}

/// The entries of bucket `at` read from sled.
pub fn decode(at: u64, raw: &[u8]) -> Result<Bucket, StoreError> {
    let head = [EXPIRY_PREFIX, &at.to_be_bytes()].concat();
    decode_keyed(&head, raw, |_| true, &format!("expiry index bucket {at}"))
}

/// The part at `pos` of bytes written as `length (u32 BE) || part`,
/// moving `pos` past it; or why it cannot be read.
pub(super) fn take_part<'a>(plain: &'a [u8], pos: &mut usize) -> Result<&'a [u8], &'static str> {
    let len = plain
        .get(*pos..*pos + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .ok_or("a length is cut short")?;
    let len = u32::from_be_bytes(len) as usize;
    let part = plain.get(*pos + 4..*pos + 4 + len).ok_or("an entry is cut short")?;
    *pos += 4 + len;
    Ok(part)
}

/// Appends `length (u32 BE) || part`, as [`take_part`] reads it; refused
/// (nothing appended) when the part is too large for its length.
pub(super) fn put_part(out: &mut Vec<u8>, part: &[u8]) -> Result<(), std::num::TryFromIntError> {
    let len = u32::try_from(part.len())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
    Ok(())
}

/// A group of keys that all start with `head` (and pass `belongs`) as sled
/// holds it: a zero header, then each entry in key order as `length (u32
/// BE) || key after the head || length (u32 BE) || stored bytes`, packed
/// ([`packed`]). `what` names the group in errors.
pub(super) fn encode_keyed(
    head: &[u8],
    bucket: &Bucket,
    belongs: impl Fn(&[u8]) -> bool,
    what: &str,
) -> Result<Vec<u8>, StoreError> {
    let mut plain = Vec::with_capacity(8 + bucket.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>());
    plain.extend_from_slice(&[0u8; 8]);
    for (k, v) in bucket {
        if !k.starts_with(head) || !belongs(k) {
            return Err(StoreError::Corrupt(format!("a key does not belong to {what}")));
        }
        for part in [&k[head.len()..], v.as_slice()] {
            put_part(&mut plain, part).map_err(|_| StoreError::Corrupt(format!("an entry of {what} is too large")))?;
        }
    }
    packed::pack(&plain)
}

/// The entries of a group written by [`encode_keyed`] with the same
/// `head`; every key must pass `belongs` and come after the one before.
pub(super) fn decode_keyed(
    head: &[u8],
    raw: &[u8],
    belongs: impl Fn(&[u8]) -> bool,
    what: &str,
) -> Result<Bucket, StoreError> {
    let plain = packed::unpack(raw)?;
    let bad = |why: &str| StoreError::Corrupt(format!("{what} is damaged: {why}"));
    if plain.len() < 8 || plain[..8] != [0u8; 8] {
        return Err(bad("no bucket header"));
    }
    let mut pos = 8;
    let take = |pos: &mut usize| take_part(&plain, pos).map_err(bad);
    let mut bucket = Bucket::new();
    while pos < plain.len() {
        let key = [head, take(&mut pos)?].concat();
        let value = take(&mut pos)?.to_vec();
        if !belongs(&key) {
            return Err(bad("a key does not belong to it"));
        }
        if bucket.keys().next_back().is_some_and(|last| *last >= key) {
            return Err(bad("entries out of order"));
        }
        bucket.insert(key, value);
    }
    Ok(bucket)
}

/// Bounds around `keys` for tests of the functions that map key bounds to
/// groups: `fixed`, then every prefix of every key, alone and followed by
/// each byte of `extra`.
#[cfg(test)]
pub(super) fn bounds_around(fixed: &[&[u8]], keys: &[Vec<u8>], extra: &[u8]) -> Vec<Vec<u8>> {
    let mut bounds: Vec<Vec<u8>> = fixed.iter().map(|b| b.to_vec()).collect();
    for k in keys {
        for n in 0..=k.len() {
            bounds.push(k[..n].to_vec());
            for e in extra {
                bounds.push([&k[..n], &[*e]].concat());
            }
        }
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(at: u64, id: &str) -> Vec<u8> {
        [EXPIRY_PREFIX, &at.to_be_bytes(), &[3], id.as_bytes()].concat()
    }

    #[test]
    fn buckets_round_trip() {
        let at = 1_765_000_000;
        let bucket: Bucket = (0..300)
            .map(|i| (key(at, &format!("appr-{i:05}-Yk3Jd9s")), 1u64.to_be_bytes().to_vec()))
            .collect();
        let raw = encode(at, &bucket).unwrap();
        assert!(raw.len() < bucket.keys().map(Vec::len).sum::<usize>() / 2);
        assert_eq!(decode(at, &raw).unwrap(), bucket);
        assert_eq!(decode(at, &encode(at, &Bucket::new()).unwrap()).unwrap(), Bucket::new());
        // A key of another second is not written into this one.
        let stray: Bucket = [(key(at + 1, "x"), vec![])].into();
        assert!(encode(at, &stray).is_err());
    }

    #[test]
    fn only_expiry_keys_with_a_time_are_bucketed() {
        assert_eq!(bucket_of(&key(42, "id")), Some(42));
        assert_eq!(bucket_of(&[EXPIRY_PREFIX, &[0u8; 8]].concat()), Some(0));
        assert_eq!(bucket_of(&[EXPIRY_PREFIX, &[1u8; 7]].concat()), None);
        assert_eq!(bucket_of(b"expiry-indexed"), None);
        assert_eq!(bucket_of(b"global"), None);
    }

    /// Every bucketed key within a bound lies in the buckets the bound
    /// names, for bounds of every length around the keys.
    #[test]
    fn bounds_cover_every_key_they_must() {
        let keys = [
            key(0, ""),
            key(7, "a"),
            key(256, "b"),
            key(u64::MAX, "c"),
            key(0x0102, ""),
        ];
        let bounds = bounds_around(&[b"", b"a", b"expiry", b"expiry-", b"z"], &keys, &[0xFF]);
        for b in &bounds {
            for k in &keys {
                let at = bucket_of(k).unwrap();
                if k.as_slice() >= b.as_slice() {
                    assert!(first_bucket_from(b).is_some_and(|lo| lo <= at), "{b:?} from {k:?}");
                }
                if k.as_slice() <= b.as_slice() {
                    assert!(last_bucket_through(b).is_some_and(|hi| hi >= at), "{b:?} through {k:?}");
                }
                if k.starts_with(b) {
                    assert!(
                        buckets_with_prefix(b).is_some_and(|(lo, hi)| lo <= at && at <= hi),
                        "prefix {b:?} of {k:?}"
                    );
                }
            }
        }
        assert_eq!(first_bucket_from(b"global"), None);
        assert_eq!(last_bucket_through(b"audit-anchor"), None);
        assert_eq!(buckets_with_prefix(b"consumer/"), None);
    }

    #[test]
    fn damaged_buckets_are_refused() {
        let bucket: Bucket = [(key(9, "a"), vec![1, 2]), (key(9, "b"), vec![])].into();
        let raw = encode(9, &bucket).unwrap();
        let plain = packed::unpack(&raw).unwrap();
        // Cut anywhere but between entries: refused. Between the two: the
        // first entry alone.
        let first = 8 + 4 + (key(9, "a").len() - 15) + 4 + 2;
        for cut in 9..plain.len() {
            match decode(9, &plain[..cut]) {
                Ok(b) => assert!(cut == first && b.len() == 1 && b.get(&key(9, "a")) == Some(&vec![1, 2])),
                Err(e) => assert!(e.to_string().contains("cut short"), "{e}"),
            }
        }
        let mut headless = plain.clone();
        headless[7] = 1;
        assert!(decode(9, &headless).unwrap_err().to_string().contains("header"));
        // Out of order: the second entry first.
        let mut swapped = vec![0u8; 8];
        for (k, v) in bucket.iter().rev() {
            for part in [&k[15..], v.as_slice()] {
                swapped.extend_from_slice(&(part.len() as u32).to_be_bytes());
                swapped.extend_from_slice(part);
            }
        }
        assert!(decode(9, &swapped).unwrap_err().to_string().contains("order"));
    }
}
