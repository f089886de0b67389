//! How the embedded store keeps users and their factors in sled: one sled
//! key per user holding the user's record and every factor of theirs.
//!
//! Every approval rewrites a user's protection record (`users`, key = user
//! id) and the factor that answered (`factors`, key = `user id 0x00 factor
//! id`): two sled keys, each costing a few hundred bytes of sled's own (see
//! [`super::log_blocks`]) and each written on its own by a checkpoint.
//! sled keeps them together instead, in the tree `accounts`, as the key
//! `user id` whose value is the account: a header, then the user's record
//! if there is one and each factor in key order, each `form (u8: 0 the
//! user, 1 a factor) || length (u32 BE) || key after the user id and its
//! 0x00 (empty for the user) || length (u32 BE) || stored bytes`, packed
//! like any value ([`super::packed`]). A checkpoint rewrites each account
//! it touches once; applying the same post-images twice gives the same
//! accounts, which is what replay after a crash needs.
//!
//! A user key holding 0x00, and a factor key without one, stay one sled key
//! each in their table's own tree. Either way a key's account grows with
//! the key (the account of a factor key is the part before its first 0x00,
//! which sorts before anything longer), so reading the accounts in order
//! reads each table's keys in order. Above the sled layer nothing changes.
use std::collections::BTreeMap;

use super::expiry_blocks::{put_part, take_part};
use super::packed;
use super::{StoreError, Table};

/// An account's records: the user's stored bytes, and each factor's by
/// its whole key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: Option<Vec<u8>>,
    pub factors: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Account {
    /// Nothing left in it.
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.factors.is_empty()
    }

    /// The stored bytes of `key` of table `t`.
    pub fn get(&self, t: Table, key: &[u8]) -> Option<&Vec<u8>> {
        match t {
            Table::Users => self.user.as_ref(),
            _ => self.factors.get(key),
        }
    }

    /// Sets (or with None removes) `key` of table `t`.
    pub fn set(&mut self, t: Table, key: &[u8], value: Option<Vec<u8>>) {
        match (t, value) {
            (Table::Users, v) => self.user = v,
            (_, Some(v)) => {
                self.factors.insert(key.to_vec(), v);
            }
            (_, None) => {
                self.factors.remove(key);
            }
        }
    }

    /// About how many bytes it holds in memory.
    pub fn bytes(&self) -> usize {
        let user = self.user.as_ref().map_or(0, |v| v.len());
        user + self.factors.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>() + 64
    }

    /// The entries of table `t` in it, in key order.
    pub fn entries(&self, t: Table, account: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        match t {
            Table::Users => self.user.iter().map(|v| (account.to_vec(), v.clone())).collect(),
            _ => self.factors.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// Whether sled keeps table `t` in accounts.
pub fn grouped(t: Table) -> bool {
    matches!(t, Table::Users | Table::Factors)
}

/// The account holding `key` of table `t`, if sled keeps it in one.
pub fn account_of(t: Table, key: &[u8]) -> Option<&[u8]> {
    let account = match t {
        Table::Users if !key.contains(&0) => key,
        Table::Factors => &key[..key.iter().position(|b| *b == 0)?],
        _ => return None,
    };
    (!account.is_empty()).then_some(account)
}

/// The part of `bound` before its first 0x00 (all of it when none).
fn cut(bound: &[u8]) -> &[u8] {
    &bound[..bound.iter().position(|b| *b == 0).unwrap_or(bound.len())]
}

/// The account bound of a key bound of table `t`, either way: every key
/// `>= b` lies in an account `>= bound(t, b)`, every key `<= b` in one
/// `<= bound(t, b)`.
pub fn bound(t: Table, b: &[u8]) -> &[u8] {
    match t {
        Table::Factors => cut(b),
        _ => b,
    }
}

/// The one account that can hold keys of table `t` starting with
/// `prefix`, when only one can (a factor prefix naming its whole user id);
/// otherwise each such key lies in an account whose key starts with
/// `prefix`.
pub fn single_account(t: Table, prefix: &[u8]) -> Option<&[u8]> {
    match t {
        Table::Factors if prefix.contains(&0) => Some(cut(prefix)),
        _ => None,
    }
}

/// Header of an account as sled holds it.
const HEADER: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 2];
/// Form byte of the user's record.
const FORM_USER: u8 = 0;
/// Form byte of a factor.
const FORM_FACTOR: u8 = 1;

/// An account's key for messages: printable, and short.
fn shown(account: &[u8]) -> String {
    let s = String::from_utf8_lossy(&account[..account.len().min(64)]);
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Account `account` as sled holds it; every key must belong to it.
pub fn encode(account: &[u8], a: &Account) -> Result<Vec<u8>, StoreError> {
    let mut plain = Vec::with_capacity(
        16 + a.user.as_ref().map_or(0, Vec::len) + a.factors.iter().map(|(k, v)| 9 + k.len() + v.len()).sum::<usize>(),
    );
    plain.extend_from_slice(&HEADER);
    let too_large = |_| StoreError::Corrupt(format!("a record of account {} is too large", shown(account)));
    let put = |out: &mut Vec<u8>, part: &[u8]| put_part(out, part).map_err(too_large);
    if let Some(v) = &a.user {
        plain.push(FORM_USER);
        put(&mut plain, b"")?;
        put(&mut plain, v)?;
    }
    for (k, v) in &a.factors {
        if account_of(Table::Factors, k) != Some(account) {
            return Err(StoreError::Corrupt(format!(
                "a factor key does not belong to account {}",
                shown(account)
            )));
        }
        plain.push(FORM_FACTOR);
        put(&mut plain, &k[account.len() + 1..])?;
        put(&mut plain, v)?;
    }
    packed::pack(&plain)
}

/// The account `account` read from sled.
pub fn decode(account: &[u8], raw: &[u8]) -> Result<Account, StoreError> {
    let plain = packed::unpack(raw)?;
    let bad = |why: &str| StoreError::Corrupt(format!("account {} is damaged: {why}", shown(account)));
    if plain.get(..8) != Some(&HEADER[..]) {
        return Err(bad("no account header"));
    }
    let mut pos = 8;
    let take = |pos: &mut usize| take_part(&plain, pos).map_err(bad);
    let mut a = Account::default();
    while pos < plain.len() {
        let form = plain[pos];
        pos += 1;
        let rest = take(&mut pos)?;
        let value = take(&mut pos)?.to_vec();
        match form {
            FORM_USER if rest.is_empty() && a.user.is_none() && a.factors.is_empty() => a.user = Some(value),
            FORM_FACTOR => {
                let key = [account, &[0], rest].concat();
                if a.factors.keys().next_back().is_some_and(|last| *last >= key) {
                    return Err(bad("factors out of order"));
                }
                a.factors.insert(key, value);
            }
            _ => return Err(bad("an entry of an unknown form or out of place")),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::expiry_blocks::bounds_around;

    fn factor(user: &str, id: &str) -> Vec<u8> {
        [user.as_bytes(), &[0], id.as_bytes()].concat()
    }

    #[test]
    fn accounts_round_trip_and_refuse_damage() {
        let mut a = Account {
            user: Some(b"user record".to_vec()),
            ..Account::default()
        };
        for i in 0..5 {
            a.factors.insert(factor("alice", &format!("f_{i}")), vec![i; 60]);
        }
        let raw = encode(b"alice", &a).unwrap();
        assert_eq!(decode(b"alice", &raw).unwrap(), a);
        let only_factors = Account {
            user: None,
            ..a.clone()
        };
        assert_eq!(
            decode(b"alice", &encode(b"alice", &only_factors).unwrap()).unwrap(),
            only_factors
        );
        // Another user's factor is not written into this account.
        let mut stray = a.clone();
        stray.factors.insert(factor("alicf", "x"), vec![]);
        assert!(encode(b"alice", &stray).is_err());
        // Cut anywhere: refused, or a shorter account of the same records.
        let plain = packed::unpack(&raw).unwrap();
        for cut in 0..plain.len() {
            if let Ok(short) = decode(b"alice", &plain[..cut]) {
                assert!(short.factors.len() < a.factors.len());
                assert!(short.factors.iter().all(|(k, v)| a.factors.get(k) == Some(v)));
            }
        }
        let mut unknown = plain.clone();
        unknown[8] = 7;
        assert!(decode(b"alice", &unknown)
            .unwrap_err()
            .to_string()
            .contains("unknown form"));
    }

    #[test]
    fn which_keys_are_kept_in_accounts() {
        assert_eq!(account_of(Table::Users, b"alice"), Some(&b"alice"[..]));
        assert_eq!(account_of(Table::Users, b"a\0b"), None);
        assert_eq!(account_of(Table::Users, b""), None);
        assert_eq!(account_of(Table::Factors, &factor("alice", "f_1")), Some(&b"alice"[..]));
        assert_eq!(account_of(Table::Factors, b"a\0b\0c"), Some(&b"a"[..]));
        assert_eq!(account_of(Table::Factors, b"nonul"), None);
        assert_eq!(account_of(Table::Factors, b"\0f"), None);
        assert_eq!(account_of(Table::Approvals, b"alice"), None);
    }

    /// Every key within a bound lies in the accounts the bound names, for
    /// bounds of every length around the keys.
    #[test]
    fn bounds_cover_every_key_they_must() {
        let users: Vec<Vec<u8>> = ["a", "ab", "abc", "b", "b\x01"]
            .iter()
            .map(|u| u.as_bytes().to_vec())
            .collect();
        let factors: Vec<Vec<u8>> = vec![
            factor("a", "f"),
            factor("ab", ""),
            factor("ab", "\0x"),
            factor("ab", "zz"),
            factor("abc", "f_1"),
            factor("b\x01", "g"),
        ];
        for (t, keys) in [(Table::Users, &users), (Table::Factors, &factors)] {
            let bounds = bounds_around(&[b"", b"~"], keys, &[0, 1, b'b', 0xFF]);
            for b in &bounds {
                for k in keys {
                    let acc = account_of(t, k).unwrap();
                    if k.as_slice() >= b.as_slice() {
                        assert!(acc >= bound(t, b), "{b:?} from {k:?}");
                    }
                    if k.as_slice() <= b.as_slice() {
                        assert!(acc <= bound(t, b), "{b:?} through {k:?}");
                    }
                    if k.starts_with(b) {
                        match single_account(t, b) {
                            Some(one) => assert_eq!(one, acc, "prefix {b:?} of {k:?}"),
                            None => assert!(acc.starts_with(b), "prefix {b:?} of {k:?}"),
                        }
                    }
                }
            }
        }
    }
}
