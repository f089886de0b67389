//! Keeping the logs bounded: the `[retention]` section and the part of the
//! sweep that prunes.
//!
//! **Events.** A consumer is *known* once it acknowledged a cursor
//! (`AckEvents`, recorded per name in table `meta`). Events every known
//! consumer has acknowledged are pruned once `events_min_age` old; every
//! event is pruned once `events_max_age` old, acknowledged or not, so a
//! consumer that vanished holds the stream back for at most that long (and
//! is forgotten once it acknowledged nothing for that long). With no known
//! consumer only the maximum age prunes. Consumers that never acknowledge
//! are protected by the maximum age alone.
//!
//! **Audit.** The audit log is pruned only behind an archive (`sigil audit
//! archive`, [`Ops::prune_audit`]); the sweep finishes a cut an
//! interruption left.
//!
//! Each sweep deletes at most `prune_batch` events (one commit, audited
//! `events.prune`), so a large backlog goes over several sweeps.
use serde::{Deserialize, Deserializer};

use super::*;
use crate::audit::AuditEntry;
use crate::events::{self, Event};
use crate::store::{log_floor, meta, Batch, Table};

/// `[retention]`: how long the event stream keeps events, and how much one
/// prune deletes. Durations are `"30d"`, `"12h"`, `"15m"`, `"90s"` or
/// seconds as an integer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Events every known consumer acknowledged are pruned once this old
    /// (seconds).
    #[serde(deserialize_with = "duration")]
    pub events_min_age: i64,
    /// Every event is pruned once this old, acknowledged or not (seconds);
    /// `"off"`: never.
    #[serde(deserialize_with = "optional_duration")]
    pub events_max_age: Option<i64>,
    /// Most log entries one prune deletes (one write each).
    pub prune_batch: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events_min_age: 3_600,
            events_max_age: Some(30 * 86_400),
            prune_batch: 10_000,
        }
    }
}

impl RetentionConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), Error> {
        if self.events_min_age < 0 {
            return Err(Error::invalid("retention.events_min_age", "cannot be negative"));
        }
        if let Some(max) = self.events_max_age {
            if max < 60 || max < self.events_min_age {
                return Err(Error::invalid(
                    "retention.events_max_age",
                    "must be at least a minute and at least events_min_age (or \"off\")",
                ));
            }
        }
        if !(100..=1_000_000).contains(&self.prune_batch) {
            return Err(Error::invalid(
                "retention.prune_batch",
                "must be between 100 and 1000000",
            ));
        }
        Ok(())
    }
}

/// Seconds in a duration such as `30d`, `12h`, `15m`, `90s` or `3600`.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as \"30d\", \"12h\", \"15m\" or \"90s\""))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("'{text}': the unit must be s, m, h, d or w")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("'{text}' is too long"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(i64),
    Text(String),
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match DurationText::deserialize(d)? {
        DurationText::Seconds(n) => Ok(n),
        DurationText::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match DurationText::deserialize(d)? {
        DurationText::Seconds(n) => Ok(Some(n)),
        DurationText::Text(t) if t.trim() == "off" => Ok(None),
        DurationText::Text(t) => parse_duration(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Audit entries deleted (finishing an archive cut).
    pub audit: u64,
    /// Event consumers forgotten.
    pub consumers_forgotten: usize,
}

impl Ops {
    /// The retention part of the sweep: forgets consumers silent for
    /// longer than the maximum age, prunes at most `prune_batch` events,
    /// and finishes an interrupted audit cut.
    pub fn apply_retention(&self) -> Result<Pruned, Error> {
        let consumers_forgotten = self.forget_silent_consumers()?;
        let events = self.prune_events()?;
        let audit = self.finish_audit_prune()?;
        if events > 0 || audit > 0 || consumers_forgotten > 0 {
            tracing::info!(events, audit, consumers_forgotten, "logs pruned");
        }
        Ok(Pruned {
            events,
            audit,
            consumers_forgotten,
        })
    }

    /// Deletes the records of consumers that acknowledged nothing for
    /// `events_max_age` (audited `events.consumer_forgotten`).
    fn forget_silent_consumers(&self) -> Result<usize, Error> {
        let Some(max) = self.cfg.retention.events_max_age else {
            return Ok(0);
        };
        let now = self.k.now()?;
        let mut batch = Batch::new();
        for (name, rec, version) in events::consumers(self.k.store.as_ref())? {
            if rec.at < now.saturating_sub(max) {
                batch.delete(Table::Meta, meta::consumer_key(&name), version);
                AuditEntry::ok(now, "system", "", "events.consumer_forgotten")
                    .with("consumer", name)
                    .with("cursor", rec.cursor.to_string())
                    .with("last_ack_at", rec.at.to_string())
                    .append_to(&mut batch)?;
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch
            .ops
            .iter()
            .filter(|o| matches!(o, crate::store::Op::Delete { .. }))
            .count();
        match self.k.commit(&batch) {
            Ok(_) => Ok(n),
            Err(Error::Conflict(_)) => Ok(0), // acknowledged meanwhile; next sweep
            Err(e) => Err(e),
        }
    }

    /// Prunes the oldest events that every known consumer acknowledged and
    /// that are `events_min_age` old, or that are `events_max_age` old: at
    /// most `prune_batch`, in one audited commit. Returns how many.
    pub fn prune_events(&self) -> Result<u64, Error> {
        let r = &self.cfg.retention;
        let store = self.k.store.as_ref();
        let now = self.k.now()?;
        let acked = events::consumers(store)?
            .into_iter()
            .filter(|(_, rec, _)| r.events_max_age.is_none_or(|m| rec.at >= now.saturating_sub(m)))
            .map(|(_, rec, _)| rec.cursor)
            .min();
        if acked.is_none() && r.events_max_age.is_none() {
            return Ok(0);
        }
        let (floor, _) = log_floor(store, Table::Events)?;
        let limit = usize::try_from(r.prune_batch).unwrap_or(usize::MAX);
        let (mut through, mut count, mut by_age) = (floor, 0u64, 0u64);
        for e in store.read_log(Table::Events, floor, limit)? {
            let at = Event::decode(&e.value)?.at;
            let aged = r.events_max_age.is_some_and(|m| at <= now.saturating_sub(m));
            let done = acked.is_some_and(|a| e.seq <= a) && at <= now.saturating_sub(r.events_min_age);
            if !(aged || done) {
                break;
            }
            through = e.seq;
            count += 1;
            if !done {
                by_age += 1;
            }
        }
        if count == 0 {
            return Ok(0);
        }
        let mut batch = Batch::new();
        batch.prune(Table::Events, floor, through);
        AuditEntry::ok(now, "system", "", "events.prune")
            .with("through_cursor", through.to_string())
            .with("events", count.to_string())
            .with("unacknowledged_past_max_age", by_age.to_string())
            .append_to(&mut batch)?;
        match self.k.commit(&batch) {
            Ok(_) => Ok(count),
            Err(Error::Conflict(_)) => Ok(0), // another replica pruned; next sweep
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("3600"), Ok(3_600));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        for bad in ["", "d", "1y", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
