//! The durable event outbox.
//!
//! Every user-facing change appends an [`Event`] to the `events` log in the
//! same atomic batch as the change itself, so an event exists if and only if
//! the change happened. `WatchEvents(after_cursor)` streams the log from a
//! cursor (the sequence number); delivery is at-least-once and resumable
//! across restarts with no gaps. Each event carries the user's anti-phishing
//! code, so messages built from it prove they come from the exchange.
//!
//! The log is bounded: the sweep prunes events every known consumer has
//! acknowledged (a [`ConsumerRecord`] per named consumer, written by
//! `AckEvents`) once they are old enough, and every event past a maximum
//! age whatever the consumers say. A cursor before the pruned part is
//! refused (`PRUNED`), never silently moved past what was deleted.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::codec;
use crate::store::{meta, Batch, Store, Table};

/// Kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A withdrawal address was added (its hold started).
    AddressAdded,
    /// An address's hold ended: withdrawals to it are possible.
    AddressUsable,
    /// An address was removed.
    AddressRemoved,
    /// A factor was enrolled (activated).
    FactorEnrolled,
    /// A factor was removed.
    FactorRemoved,
    /// Factors were revoked by an admin.
    FactorRevoked,
    /// A WebAuthn credential's counter went backwards.
    FactorSuspectedCloned,
    /// An approval was issued.
    ApprovalIssued,
    /// An approval was redeemed.
    ApprovalRedeemed,
    /// Approvals were suspended or resumed.
    SuspensionChanged,
    /// A factor locked after repeated failures.
    Lockout,
    /// The anti-phishing code changed.
    AntiPhishingCodeChanged,
    /// The store was restored from a backup.
    Restored,
    /// An action was held by policy for a staff quorum (details: request
    /// id, rules, and the intent's asset, amount and destination).
    ApprovalHeld,
    /// A held action got the approval of one staff member.
    StaffApproved,
    /// A held action or a delayed approval was cancelled (by the user or a
    /// staff member) during its wait.
    ApprovalCancelled,
    /// A request waited for its staff quorum longer than allowed and was
    /// cancelled.
    QuorumRequestExpired,
    /// A policy change was proposed (it needs a staff quorum and a delay).
    PolicyChangeProposed,
    /// A policy change got its quorum; it applies after its delay.
    PolicyChangeApproved,
    /// A policy change took effect.
    PolicyChangeActivated,
    /// A staff member was added or registered a key.
    StaffChanged,
}

impl EventKind {
    /// The snake_case name.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Record version.
    pub v: u32,
    /// What happened.
    pub kind: EventKind,
    /// The user concerned; empty for service-wide events.
    pub user_id: String,
    /// When.
    pub at: i64,
    /// The user's anti-phishing code at the time, if set.
    pub anti_phishing_code: Option<String>,
    /// Details (ids, assets, reasons). Never secrets.
    pub details: BTreeMap<String, String>,
}

impl crate::store::codec::Record for Event {
    const NAME: &'static str = "event";
}

impl Event {
    /// A new event.
    pub fn new(kind: EventKind, user_id: &str, at: i64, anti_phishing_code: Option<String>) -> Event {
        Event {
            v: 1,
            kind,
            user_id: user_id.to_string(),
            at,
            anti_phishing_code,
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    pub fn with(mut self, k: &str, v: impl Into<String>) -> Event {
        self.details.insert(k.to_string(), v.into());
        self
    }

    /// Adds the event to a batch.
    pub fn append_to(&self, batch: &mut Batch) -> Result<(), Error> {
        let bytes = codec::encode(self)?;
        batch.append(Table::Events, bytes);
        Ok(())
    }

    /// Decodes a stored event.
    pub fn decode(b: &[u8]) -> Result<Event, Error> {
        codec::decode(b)
    }
}

/// A named event consumer's acknowledgement (table `meta`, key
/// `consumer/<name>`): it has handled every event up to `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    /// Record version.
    pub v: u32,
    /// The last cursor acknowledged.
    pub cursor: u64,
    /// When it was acknowledged (service clock).
    pub at: i64,
}

impl crate::store::codec::Record for ConsumerRecord {
    const NAME: &'static str = "event consumer";

    fn format_version(&self) -> u32 {
        self.v
    }
}

/// Every named consumer with its record and record version, by name.
pub fn consumers(store: &dyn Store) -> Result<Vec<(String, ConsumerRecord, u64)>, Error> {
    store
        .scan_prefix(Table::Meta, meta::CONSUMER_PREFIX)?
        .into_iter()
        .map(|(k, v)| {
            let name = String::from_utf8_lossy(&k[meta::CONSUMER_PREFIX.len()..]).to_string();
            Ok((name, codec::decode(&v.value)?, v.version))
        })
        .collect()
}
