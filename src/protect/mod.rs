//! The incident's protections: per-user and global protection state,
//! revocation epochs, suspensions, the security-change lock, the
//! anti-phishing code, policy, address whitelist and velocity rules.
//!
//! Revocation is O(1) for any number of users: the global record carries an
//! epoch, each user record carries its own, and every factor, challenge and
//! approval remembers both epochs from when it was created. Anything whose
//! epochs are not the current ones is dead. Revoking everyone is one write.
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::{Store, Table};

pub mod address;
pub mod address_format;
pub mod amount;
pub mod ops;
pub mod policy;

/// Key of the global record in [`Table::Meta`].
pub const GLOBAL_KEY: &[u8] = b"global";

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

/// The epochs something was created under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epochs {
    /// Global epoch.
    pub global: u64,
    /// User epoch.
    pub user: u64,
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
        let (global, global_version) = match store.get(Table::Meta, GLOBAL_KEY)? {
            Some(v) => (decode(&v.value, "global")?, v.version),
            None => (GlobalRecord::default(), 0),
        };
        let (user, user_version) = match store.get(Table::Users, user_id.as_bytes())? {
            Some(v) => (decode(&v.value, "user")?, v.version),
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
            return Err(Error::FailedPrecondition(format!(
                "{what} refused: all approvals are suspended ({}; by {}{})",
                s.reason,
                s.by,
                s.until.map(|u| format!("; until {u}")).unwrap_or_default()
            )));
        }
        if let Some(s) = self.user.suspension.as_ref().filter(|s| s.active(now)) {
            return Err(Error::FailedPrecondition(format!(
                "{what} refused: approvals for this user are suspended ({}; by {}{})",
                s.reason,
                s.by,
                s.until.map(|u| format!("; until {u}")).unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The anti-phishing code, if set.
    pub fn anti_phishing_code(&self) -> Option<String> {
        self.user.anti_phishing.as_ref().map(|a| a.code.clone())
    }
}

/// Decodes a JSON record.
pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|e| Error::Internal(format!("{what} record unreadable: {e}")))
}

/// Encodes a JSON record.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(format!("cannot encode record: {e}")))
}
