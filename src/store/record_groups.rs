//! How the embedded store keeps challenges and approvals in sled: in
//! groups of the records created in the same second, one sled key per
//! group.
//!
//! A busy day leaves hundreds of thousands of challenges and approvals in
//! the store (kept past their expiry, an hour and a day, so that a late
//! answer or redemption is told "expired" and a replay "already used").
//! sled costs a few hundred bytes of its own for every key it holds and
//! writes every key a checkpoint touches on its own (see
//! [`super::log_blocks`]): one key per record made these two tables most of
//! the store's file and most of each checkpoint's work.
//!
//! Their ids therefore say when they were made: a *timed id* is the table's
//! prefix (`ch_` for challenges, none for approvals' `jti`), the creation
//! time in Unix seconds as 10 lowercase hex digits, and 16 random bytes as
//! 22 base64url characters. Keys sort by time, and a second's records are
//! written together and (for a challenge and the approval it leads to)
//! updated together. sled keeps every key of that exact shape in a tree of
//! its own (`<table>.groups`), in the group `time << 8 | first random
//! character`: the records of one second, split 64 ways so that a group
//! stays a few kilobytes at thousands of approvals a second. The key's
//! order is the groups' order. A group's value is its entries in key order
//! ([`super::expiry_blocks::encode_keyed`]), packed like any value. A
//! checkpoint rewrites each group it touches once; applying the same
//! post-images twice gives the same groups, which is what replay after a
//! crash needs. Keys of any other shape (records made before store format
//! 5) stay one sled key each in the table's own tree.
//!
//! Above the sled layer nothing changes: a table still holds one key per
//! record, and PostgreSQL and backups see the same keys and bytes.
use super::expiry_blocks::{decode_keyed, encode_keyed, Bucket};
use super::{StoreError, Table};

/// Hex digits of the time in a timed id.
const TIME_DIGITS: usize = 10;
/// Characters of the random part (16 bytes, base64url without padding).
const RANDOM_CHARS: usize = 22;
/// The largest time a timed id can carry (40 bits of seconds).
const TIME_MAX: u64 = (1 << (4 * TIME_DIGITS)) - 1;

/// The prefix of table `t`'s timed ids, if sled groups that table.
pub fn id_prefix(t: Table) -> Option<&'static [u8]> {
    match t {
        Table::Challenges => Some(b"ch_"),
        Table::Approvals => Some(b""),
        _ => None,
    }
}

/// A timed id: `prefix`, `secs` (clamped to 0..2^40) as 10 lowercase hex
/// digits, then `random` (16 bytes) as 22 base64url characters.
pub fn timed_id(prefix: &str, secs: i64, random: &[u8]) -> String {
    let secs = u64::try_from(secs).unwrap_or(0).min(TIME_MAX);
    format!("{prefix}{secs:010x}{}", sigil_verify::b64url::encode(random))
}

/// The value of a lowercase hex digit.
fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        _ => None,
    }
}

/// The group holding `key`, a key of the table whose ids start with
/// `prefix`, if it is a timed id (exactly that shape: older ids stay out).
pub fn group_of(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    if rest.len() != TIME_DIGITS + RANDOM_CHARS {
        return None;
    }
    let mut secs = 0;
    for b in &rest[..TIME_DIGITS] {
        secs = secs * 16 + hex(*b)?;
    }
    Some(secs << 8 | u64::from(rest[TIME_DIGITS]))
}

/// The time digits of `rest` read as far as they are hex, the rest of the
/// 10 digits filled with `fill`; and whether all 10 were read.
fn time_bound(rest: &[u8], fill: u64) -> (u64, bool) {
    let mut secs = 0;
    for i in 0..TIME_DIGITS {
        match rest.get(i).and_then(|b| hex(*b)) {
            Some(d) => secs = secs * 16 + d,
            None => {
                for _ in i..TIME_DIGITS {
                    secs = secs * 16 + fill;
                }
                return (secs, false);
            }
        }
    }
    (secs, true)
}

/// The first group that can hold a timed key `>= from`, or None when none
/// can.
pub fn first_group_from(prefix: &[u8], from: &[u8]) -> Option<u64> {
    if from <= prefix {
        return Some(0);
    }
    // Greater than the prefix without starting with it: greater than every
    // key that does.
    let rest = from.strip_prefix(prefix)?;
    let (secs, whole) = time_bound(rest, 0);
    let first = if whole {
        rest.get(TIME_DIGITS).copied().unwrap_or(0)
    } else {
        0
    };
    Some(secs << 8 | u64::from(first))
}

/// The last group that can hold a timed key `<= through`, or None when
/// none can.
pub fn last_group_through(prefix: &[u8], through: &[u8]) -> Option<u64> {
    if through < prefix {
        return None;
    }
    let Some(rest) = through.strip_prefix(prefix) else {
        return Some(u64::MAX);
    };
    let (secs, whole) = time_bound(rest, 15);
    let last = if whole {
        rest.get(TIME_DIGITS).copied().unwrap_or(0)
    } else {
        0xFF
    };
    Some(secs << 8 | u64::from(last))
}

/// The groups that can hold a timed key starting with `start`, or None.
pub fn groups_with_prefix(prefix: &[u8], start: &[u8]) -> Option<(u64, u64)> {
    let lo = first_group_from(prefix, start)?;
    let mut through = start.to_vec();
    through.resize(prefix.len().max(start.len()) + TIME_DIGITS + RANDOM_CHARS, 0xFF);
    let hi = last_group_through(prefix, &through)?;
    (lo <= hi).then_some((lo, hi))
}

/// What every key of group `id` starts with.
fn head(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut h = prefix.to_vec();
    h.extend_from_slice(format!("{:010x}", id >> 8).as_bytes());
    h.push(id as u8);
    h
}

/// Group `id` of the table whose ids start with `prefix`, as sled holds it;
/// every key must belong to it.
pub fn encode(prefix: &[u8], id: u64, group: &Bucket) -> Result<Vec<u8>, StoreError> {
    encode_keyed(
        &head(prefix, id),
        group,
        |k| group_of(prefix, k) == Some(id),
        &format!("record group {id:x}"),
    )
}

/// The entries of group `id` read from sled.
pub fn decode(prefix: &[u8], id: u64, raw: &[u8]) -> Result<Bucket, StoreError> {
    if id >> 8 > TIME_MAX {
        return Err(StoreError::Corrupt(format!("record group key {id:x} is malformed")));
    }
    decode_keyed(
        &head(prefix, id),
        raw,
        |k| group_of(prefix, k) == Some(id),
        &format!("record group {id:x}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::expiry_blocks::bounds_around;
    use crate::store::packed;

    fn id(prefix: &str, secs: i64, fill: u8) -> Vec<u8> {
        timed_id(prefix, secs, &[fill; 16]).into_bytes()
    }

    #[test]
    fn timed_ids_have_their_shape_and_sort_by_time() {
        let a = timed_id("ch_", 1_765_000_000, &[0; 16]);
        assert_eq!(a, "ch_006933c340AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(a.len(), 3 + 32);
        assert!(id("", 5, 0xFF) < id("", 6, 0));
        assert!(id("ch_", -3, 1) == id("ch_", 0, 1));
        assert_eq!(
            group_of(b"", &id("", i64::MAX, 0)),
            Some(TIME_MAX << 8 | u64::from(b'A'))
        );
    }

    #[test]
    fn only_keys_of_the_exact_shape_are_grouped() {
        let k = id("ch_", 0x1234, 0xF8);
        assert_eq!(group_of(b"ch_", &k), Some(0x1234 << 8 | u64::from(b'-')));
        // Another table's prefix, a random id of the older shape (22
        // characters), one character more or less, an upper-case digit.
        assert_eq!(group_of(b"", &k), None);
        assert_eq!(group_of(b"ch_", b"ch_AbCdEfGhIjKlMnOpQrStUv"), None);
        assert_eq!(group_of(b"", b"0123456789abcdefghijkl"), None);
        assert_eq!(group_of(b"ch_", &k[..k.len() - 1]), None);
        assert_eq!(group_of(b"ch_", &[k.as_slice(), b"x"].concat()), None);
        let mut upper = k.clone();
        upper[12] = b'A';
        assert_eq!(group_of(b"ch_", &upper), None);
    }

    #[test]
    fn groups_round_trip_and_refuse_strays() {
        let prefix = b"ch_";
        let at = 1_765_000_000;
        let g = group_of(prefix, &id("ch_", at, 0)).unwrap();
        let group: Bucket = (0..50u8)
            .map(|i| {
                let mut r = [0u8; 16];
                r[1..].fill(i);
                (timed_id("ch_", at, &r).into_bytes(), vec![i; 40])
            })
            .collect();
        assert!(group.keys().all(|k| group_of(prefix, k) == Some(g)), "{group:?}");
        let raw = encode(prefix, g, &group).unwrap();
        assert_eq!(decode(prefix, g, &raw).unwrap(), group);
        let stray: Bucket = [(id("ch_", at + 1, 0), vec![])].into();
        assert!(encode(prefix, g, &stray).is_err());
        // Cut anywhere inside the entries: refused or (between entries) a
        // shorter group, never a wrong one.
        let plain = packed::unpack(&raw).unwrap();
        for cut in 9..plain.len() {
            if let Ok(short) = decode(prefix, g, &plain[..cut]) {
                assert!(short.len() < group.len() && short.iter().all(|(k, v)| group.get(k) == Some(v)));
            }
        }
    }

    /// Every timed key within a bound lies in the groups the bound names,
    /// for bounds of every length around the keys.
    #[test]
    fn bounds_cover_every_key_they_must() {
        for prefix in [&b""[..], b"ch_"] {
            let p = std::str::from_utf8(prefix).unwrap();
            let keys: Vec<Vec<u8>> = vec![
                id(p, 0, 0),
                id(p, 7, 0xFF),
                id(p, 0x0a0b, 0x3C),
                id(p, 0xabcdef, 0xF8),
                id(p, TIME_MAX as i64, 0x80),
            ];
            let bounds = bounds_around(
                &[b"", b"a", b"ch", b"ch_", b"z", b"~"],
                &keys,
                &[0, b'0', b'9', b'A', b'a', b'g', 0xFF],
            );
            for b in &bounds {
                for k in &keys {
                    let g = group_of(prefix, k).unwrap();
                    if k.as_slice() >= b.as_slice() {
                        assert!(
                            first_group_from(prefix, b).is_some_and(|lo| lo <= g),
                            "{b:?} from {k:?}"
                        );
                    }
                    if k.as_slice() <= b.as_slice() {
                        assert!(
                            last_group_through(prefix, b).is_some_and(|hi| hi >= g),
                            "{b:?} through {k:?}"
                        );
                    }
                    if k.starts_with(b) {
                        assert!(
                            groups_with_prefix(prefix, b).is_some_and(|(lo, hi)| lo <= g && g <= hi),
                            "prefix {b:?} of {k:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(first_group_from(b"ch_", b"d"), None);
        assert_eq!(last_group_through(b"ch_", b"cg"), None);
        assert_eq!(groups_with_prefix(b"ch_", b"qr_"), None);
    }
}
