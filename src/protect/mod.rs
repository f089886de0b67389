//! The incident's protections: per-user and global protection state,
//! revocation epochs, suspensions, the security-change lock, the
//! anti-phishing code, policy, address whitelist and velocity rules.
//!
//! Revocation is O(1) for any number of users: the global record carries an
//! epoch, each user record carries its own, and every factor, challenge and
//! approval remembers both epochs from when it was created. Anything whose
//! epochs are not the current ones is dead. Revoking everyone is one write.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Reason};
use crate::store::codec::{self, Record};
use crate::store::{meta, Batch, Op, Store, Table};

pub mod address;
pub mod address_format;
pub mod amount;
pub mod assets;
pub mod policy;

pub use crate::model::Epochs;
use std::path::PathBuf;

/// A suspension of approvals and redemptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// Why, as given by the admin or the rule.
    pub reason: String,
    /// Who: an admin (role) or `velocity rule`.
    pub by: String,
    /// Since when.
    pub since: i64,
    /// Until when; None = until resumed.
    pub until: Option<i64>,
}

impl Suspension {
    /// True while in force at `now`.
    pub fn active(&self, now: i64) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

/// Service-wide protection state (table `meta`, key `global`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRecord {
    /// Record version.
    #[serde(default)]
    pub v: u32,
    /// Revocation epoch: bumped by "revoke every factor of every user".
    pub epoch: u64,
    /// When the last global revocation happened.
    pub revoked_at: Option<i64>,
    /// Global suspension.
    pub suspension: Option<Suspension>,
}

/// The anti-phishing code a user chose, shown in every message Sigil sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiPhishing {
    /// The code.
    pub code: String,
    /// When it was set.
    pub set_at: i64,
}

/// Issued withdrawals of one asset, for velocity rules: one withdrawal, or
/// several issued close together, summed (see [`UserRecord::record_withdrawal`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentWithdrawal {
    /// When the (latest of the) approval(s) was issued.
    pub at: i64,
    /// Asset.
    pub asset: String,
    /// Canonical amount (their sum).
    pub amount: String,
    /// How many withdrawals this entry sums.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Withdrawals of the last hour issued in the same minute share an entry;
/// older ones, in the same quarter of an hour.
const FINE_SECONDS: i64 = 60;
const COARSE_SECONDS: i64 = 900;
/// The longest window a velocity rule looks at (`max_amount_24h`,
/// `velocity_24h_above`).
pub(crate) const VELOCITY_WINDOW: i64 = 86_400;
/// The window of the count rules (`max_count_1h`).
pub(crate) const COUNT_WINDOW: i64 = 3_600;

/// Per-user protection state (table `users`, key = user id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Record version.
    #[serde(default)]
    pub v: u32,
    /// Per-user revocation epoch.
    pub epoch: u64,
    /// Withdrawals refused while now < this (after security changes).
    pub security_locked_until: i64,
    /// Why the lock was set.
    pub security_lock_reason: String,
    /// Per-user suspension.
    pub suspension: Option<Suspension>,
    /// The anti-phishing code.
    pub anti_phishing: Option<AntiPhishing>,
    /// Last time a device reported itself compromised (jailbroken/rooted).
    pub compromised_device_at: Option<i64>,
    /// Withdrawals issued in the last 24 h.
    pub recent: Vec<RecentWithdrawal>,
    /// Last time factors of this user were revoked.
    pub revoked_at: Option<i64>,
    /// Attempts naming a WebAuthn credential id or YubiKey public id that
    /// is not the user's (rate limited like a factor's failures).
    #[serde(default)]
    pub unknown_id_failures: u32,
    /// Such attempts are refused, unchecked, until this time.
    #[serde(default)]
    pub unknown_id_locked_until: i64,
}

impl UserRecord {
    /// Records a withdrawal issued at `now` for the velocity rules, keeping
    /// the list bounded however many the user makes: entries older than a
    /// day are dropped, withdrawals of the same asset in the same minute
    /// (the same quarter of an hour once older than an hour) are summed
    /// into one entry dated by the latest of them. At most about 150
    /// entries per asset remain. A summed entry counts in a window as long
    /// as its latest withdrawal does, so velocity rules may count a
    /// withdrawal up to a minute (within the hour) or 15 minutes (within
    /// the day) longer than exactly; never shorter.
    pub fn record_withdrawal(&mut self, now: i64, asset: &str, amount: &str) {
        self.recent.retain(|r| r.at > now - VELOCITY_WINDOW);
        self.recent.push(RecentWithdrawal {
            at: now,
            asset: asset.into(),
            amount: amount.into(),
            count: 1,
        });
        let granule = |at: i64| {
            if at > now - COUNT_WINDOW {
                (0, at.div_euclid(FINE_SECONDS))
            } else {
                (1, at.div_euclid(COARSE_SECONDS))
            }
        };
        let mut out: Vec<RecentWithdrawal> = Vec::with_capacity(self.recent.len());
        let mut index: std::collections::HashMap<(String, (u8, i64)), usize> = std::collections::HashMap::new();
        for r in self.recent.drain(..) {
            let key = (r.asset.clone(), granule(r.at));
            if let Some(&i) = index.get(&key) {
                let into = &mut out[i];
                let sum = amount::parse(&into.amount)
                    .zip(amount::parse(&r.amount))
                    .and_then(|(a, b)| a.checked_add(b));
                if let (Some(sum), Some(count)) = (sum, into.count.checked_add(r.count)) {
                    into.amount = amount::format(sum);
                    into.count = count;
                    into.at = into.at.max(r.at);
                    continue;
                }
                // Not summable (cannot happen with canonical amounts): kept
                // apart, and later ones join this one.
            }
            index.insert(key, out.len());
            out.push(r);
        }
        self.recent = out;
    }
}

/// Protection state read for one decision, with the versions needed to make
/// the decision's write conditional on it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Global state.
    pub global: GlobalRecord,
    /// Its store version (0: absent).
    pub global_version: u64,
    /// The user's state.
    pub user: UserRecord,
    /// Its store version (0: absent).
    pub user_version: u64,
}

impl Snapshot {
    /// Reads the global and the user's records.
    pub fn load(store: &dyn Store, user_id: &str) -> Result<Snapshot, Error> {
        let (global, global_version) = match store.get(Table::Meta, meta::GLOBAL)? {
            Some(v) => (codec::decode(&v.value)?, v.version),
            None => (GlobalRecord::default(), 0),
        };
        let (user, user_version) = match store.get(Table::Users, user_id.as_bytes())? {
            Some(v) => (codec::decode(&v.value)?, v.version),
            None => (UserRecord::default(), 0),
        };
        Ok(Snapshot {
            global,
            global_version,
            user,
            user_version,
        })
    }

    /// The current epochs.
    pub fn epochs(&self) -> Epochs {
        Epochs {
            global: self.global.epoch,
            user: self.user.epoch,
        }
    }

    /// Refuses while approvals are suspended globally or for this user.
    pub fn check_not_suspended(&self, now: i64, what: &str) -> Result<(), Error> {
        if let Some(s) = self.global.suspension.as_ref().filter(|s| s.active(now)) {
            return Err(suspended(
                format!(
                    "{what} refused: all approvals are suspended ({}; by {}{})",
                    s.reason,
                    s.by,
                    s.until.map(|u| format!("; until {u}")).unwrap_or_default()
                ),
                s.until,
                now,
            ));
        }
        if let Some(s) = self.user.suspension.as_ref().filter(|s| s.active(now)) {
            return Err(suspended(
                format!(
                    "{what} refused: approvals for this user are suspended ({}; by {}{})",
                    s.reason,
                    s.by,
                    s.until.map(|u| format!("; until {u}")).unwrap_or_default()
                ),
                s.until,
                now,
            ));
        }
        Ok(())
    }

    /// The anti-phishing code, if set.
    pub fn anti_phishing_code(&self) -> Option<String> {
        self.user.anti_phishing.as_ref().map(|a| a.code.clone())
    }
}

/// The rule for an anti-phishing code: 1 to 32 characters, no control
/// characters. Checked when it is set and, on its approval's memo, at
/// BeginApproval.
pub(crate) fn check_anti_phishing_code(field: &str, code: &str) -> Result<(), Error> {
    if code.is_empty() || code.chars().count() > 32 || code.chars().any(char::is_control) {
        return Err(Error::invalid(field, "1 to 32 characters, no control characters"));
    }
    Ok(())
}

/// A [`Reason::Suspended`] refusal, with its end when it has one.
fn suspended(message: String, until: Option<i64>, now: i64) -> Error {
    let e = Error::refused(Reason::Suspended, message);
    match until {
        Some(u) => e.retry_at(u, now),
        None => e,
    }
}

impl Record for GlobalRecord {
    const NAME: &'static str = "global";
    fn format_version(&self) -> u32 {
        self.v.max(1)
    }
}

/// The version of a user record whose velocity history sums several
/// withdrawals in one entry (`count` > 1): a build that does not know
/// `count` refuses to read it rather than count such an entry once.
pub const USER_SUMMED_VERSION: u32 = 2;

impl Record for UserRecord {
    const NAME: &'static str = "user";
    const VERSION: u32 = USER_SUMMED_VERSION;
    fn format_version(&self) -> u32 {
        self.v.max(1)
    }
}

/// The format version a user record is written in: 1 while every entry of
/// its velocity history is one withdrawal, so that such records stay
/// readable to builds without summed entries.
fn user_format_version(rec: &UserRecord) -> u32 {
    if rec.recent.iter().any(|r| r.count != 1) {
        USER_SUMMED_VERSION
    } else {
        1
    }
}

/// Adds the write of a user's new protection record to `batch`,
/// conditional on the version read in `snap`.
pub fn put_user(batch: &mut Batch, user_id: &str, snap: &Snapshot, rec: &UserRecord) -> Result<(), Error> {
    let mut rec = rec.clone();
    rec.v = user_format_version(&rec);
    let bytes = codec::encode(&rec)?;
    // This write is conditional on the same version: it subsumes a
    // check of the record added earlier to the batch (e.g. by a step-up).
    let key = user_id.as_bytes();
    batch.ops.retain(
        |op| !matches!(op, Op::Check { table: Table::Users, key: k, version } if k.as_slice() == key && *version == snap.user_version),
    );
    if snap.user_version == 0 {
        batch.insert(Table::Users, user_id.as_bytes(), bytes);
    } else {
        batch.update(Table::Users, user_id.as_bytes(), snap.user_version, bytes);
    }
    Ok(())
}

/// Adds a check that the global record is unchanged since `snap`.
pub fn check_global(batch: &mut Batch, snap: &Snapshot) {
    batch.check(Table::Meta, meta::GLOBAL, snap.global_version);
}

/// Adds checks that the global and the user's records are unchanged since `snap`.
pub fn check_snapshot(batch: &mut Batch, user_id: &str, snap: &Snapshot) {
    check_global(batch, snap);
    batch.check(Table::Users, user_id.as_bytes(), snap.user_version);
}

/// `[protection]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectionConfig {
    /// A new whitelisted address is usable only after this hold, seconds.
    pub address_hold_seconds: i64,
    /// Withdrawals are locked this long after a factor or anti-phishing change, seconds.
    pub security_change_lock_seconds: i64,
    /// Withdrawals only to whitelisted, usable addresses.
    pub require_whitelisted_address: bool,
    /// Policy file (TOML); replaces the inline `[policy]` section.
    pub policy_file: Option<PathBuf>,
    /// Seconds between background sweeps (address holds ending, audit checkpoints).
    pub sweep_interval_seconds: u64,
    /// The most factors a user may hold at once, active and pending
    /// together (1 to 256). Every approval reads and rewrites the user's
    /// factors, so this also bounds what one approval costs. Pending
    /// enrollments past their deadline do not count: beginning an
    /// enrollment removes them.
    pub max_factors_per_user: usize,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        Self {
            address_hold_seconds: 86_400,
            security_change_lock_seconds: 86_400,
            require_whitelisted_address: true,
            policy_file: None,
            sweep_interval_seconds: 30,
            max_factors_per_user: 16,
        }
    }
}

#[cfg(test)]
mod velocity_tests {
    use super::*;
    use proptest::prelude::*;

    /// What the exact list says: the sum and the count of `asset`'s
    /// withdrawals with `at` in (t - window, t].
    fn exact(all: &[(i64, &str, u128)], asset: &str, t: i64, window: i64) -> (u128, u32) {
        all.iter()
            .filter(|(at, a, _)| *a == asset && *at > t - window && *at <= t)
            .fold((0, 0), |(s, c), (_, _, v)| (s + v, c + 1))
    }

    fn recorded(u: &UserRecord, asset: &str, t: i64, window: i64) -> (u128, u32) {
        u.recent
            .iter()
            .filter(|r| r.asset == asset && r.at > t - window)
            .fold((0, 0), |(s, c), r| (s + amount::parse(&r.amount).unwrap(), c + r.count))
    }

    #[test]
    fn a_busy_account_keeps_a_bounded_list_and_its_totals() {
        let mut u = UserRecord::default();
        // One withdrawal every 4 s for a day and a half.
        let mut t = 1_800_000_000;
        for _ in 0..32_400 {
            u.record_withdrawal(t, "BTC", "0.01");
            t += 4;
        }
        let last = t - 4;
        assert!(u.recent.len() <= 60 + 96 + 2, "{} entries", u.recent.len());
        let (sum, count) = recorded(&u, "BTC", last, 86_400);
        // 21,600 withdrawals in the last day, maybe a quarter hour more.
        assert!((21_600..=21_600 + 225).contains(&count), "{count}");
        assert_eq!(sum, amount::parse("0.01").unwrap() * count as u128);
        let (_, hour) = recorded(&u, "BTC", last, 3_600);
        assert!((900..=915).contains(&hour), "{hour}");
    }

    /// A record with summed entries is written as version 2, which a build
    /// reading only version 1 refuses; one without stays version 1.
    #[test]
    fn summed_history_is_a_new_format_version() {
        let mut u = UserRecord::default();
        u.record_withdrawal(1_800_000_000, "BTC", "1");
        assert_eq!(user_format_version(&u), 1);
        u.record_withdrawal(1_800_000_001, "BTC", "2");
        assert_eq!(u.recent.len(), 1);
        assert_eq!(user_format_version(&u), USER_SUMMED_VERSION);
        u.v = user_format_version(&u);
        let bytes = codec::encode(&u).unwrap();
        assert_eq!(codec::decode::<UserRecord>(&bytes).unwrap(), u);
        #[derive(Debug, Serialize, Deserialize)]
        struct OldUser {
            v: u32,
        }
        impl codec::Record for OldUser {
            const NAME: &'static str = "user";
            fn format_version(&self) -> u32 {
                self.v.max(1)
            }
        }
        let e = codec::decode::<OldUser>(&bytes).unwrap_err();
        assert!(e.to_string().contains("format version 2"), "{e}");
    }

    proptest! {
        /// Never fewer than exactly (the rules fail closed), and at most
        /// what a quarter hour more of history would add.
        #[test]
        fn summed_entries_never_undercount(
            steps in proptest::collection::vec((0i64..400, 0usize..3, 1u64..1_000_000), 1..300),
            later in 0i64..100_000,
        ) {
            let assets = ["BTC", "ETH", "USDT"];
            let mut u = UserRecord::default();
            let mut all = Vec::new();
            let mut t = 1_800_000_000i64;
            for (gap, a, v) in steps {
                t += gap;
                let amount = amount::format(v as u128);
                u.record_withdrawal(t, assets[a], &amount);
                all.push((t, assets[a], amount::parse(&amount).unwrap()));
            }
            let q = t + later;
            for asset in assets {
                for (window, slack) in [(3_600, FINE_SECONDS), (86_400, COARSE_SECONDS)] {
                    let (es, ec) = exact(&all, asset, q, window);
                    let (rs, rc) = recorded(&u, asset, q, window);
                    let (ms, mc) = exact(&all, asset, q, window + slack);
                    prop_assert!(es <= rs && rs <= ms, "sum {es} <= {rs} <= {ms}");
                    prop_assert!(ec <= rc && rc <= mc, "count {ec} <= {rc} <= {mc}");
                }
            }
        }
    }
}
