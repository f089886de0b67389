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

/// One issued withdrawal, for velocity rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentWithdrawal {
    /// When the approval was issued.
    pub at: i64,
    /// Asset.
    pub asset: String,
    /// Canonical amount.
    pub amount: String,
}

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

impl Record for UserRecord {
    const NAME: &'static str = "user";
    fn format_version(&self) -> u32 {
        self.v.max(1)
    }
}

/// Adds the write of a user's new protection record to `batch`,
/// conditional on the version read in `snap`.
pub fn put_user(batch: &mut Batch, user_id: &str, snap: &Snapshot, rec: &UserRecord) -> Result<(), Error> {
    let mut rec = rec.clone();
    rec.v = 1;
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
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        Self {
            address_hold_seconds: 86_400,
            security_change_lock_seconds: 86_400,
            require_whitelisted_address: true,
            policy_file: None,
            sweep_interval_seconds: 30,
        }
    }
}
