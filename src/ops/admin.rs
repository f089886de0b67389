use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::model::check_id;
use crate::protect::address::AddressRecord;
use crate::protect::{self, GlobalRecord, Snapshot, Suspension};
use crate::store::{codec, meta, Batch, Table};

/// When a challenge, ceremony or approval record expires (`expires_at` or
/// `exp`), if it says.
fn record_expiry(value: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Expiry {
        #[serde(default)]
        expires_at: i64,
        #[serde(default)]
        exp: i64,
    }
    let e = serde_json::from_slice::<Expiry>(value).ok()?;
    Some(e.expires_at.max(e.exp)).filter(|t| *t > 0)
}

/// Records the sweep reads at a time (one page of [`crate::store::Store::scan_page`]).
const SWEEP_PAGE: usize = 1_000;

impl Ops {
    /// Revokes every factor of every user (one write, whatever the number
    /// of users) or of the listed users. Outstanding challenges and
    /// unredeemed approvals die with them. Returns the users affected
    /// (None for all).
    pub fn revoke_factors(&self, actor: &str, scope: Scope, reason: &str) -> Result<Option<usize>, Error> {
        if reason.trim().is_empty() || reason.len() > 512 {
            return Err(Error::invalid("reason", "is required (at most 512 bytes)"));
        }
        let now = self.k.now()?;
        let mut batch = Batch::new();
        let count = match &scope {
            Scope::All => {
                let (mut g, version) = self.global()?;
                g.epoch += 1;
                g.revoked_at = Some(now);
                self.put_global(&mut batch, &g, version)?;
                Event::new(EventKind::FactorRevoked, "", now, None)
                    .with("scope", "all")
                    .with("reason", reason)
                    .append_to(&mut batch)?;
                AuditEntry::ok(now, actor, "", "admin.revoke_all")
                    .with("reason", reason)
                    .with("epoch", g.epoch.to_string())
                    .append_to(&mut batch)?;
                None
            }
            Scope::Users(users) => {
                if users.is_empty() || users.len() > MAX_REVOKE_USERS {
                    return Err(Error::invalid(
                        "user_ids",
                        format!("name 1 to {MAX_REVOKE_USERS} users, or all"),
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                for u in users {
                    check_id("user_ids", u)?;
                    if !seen.insert(u.as_str()) {
                        continue;
                    }
                    let snap = Snapshot::load(self.k.store.as_ref(), u)?;
                    let mut user = snap.user.clone();
                    user.epoch += 1;
                    user.revoked_at = Some(now);
                    protect::put_user(&mut batch, u, &snap, &user)?;
                    Event::new(EventKind::FactorRevoked, u, now, snap.anti_phishing_code())
                        .with("reason", reason)
                        .append_to(&mut batch)?;
                    AuditEntry::ok(now, actor, u, "admin.revoke")
                        .with("reason", reason)
                        .append_to(&mut batch)?;
                }
                Some(seen.len())
            }
        };
        self.k.commit(&batch)?;
        tracing::warn!(?count, reason, "factors revoked");
        Ok(count)
    }

    /// Suspends approvals and redemptions globally or for users.
    pub fn suspend(&self, actor: &str, scope: Scope, reason: &str, until: Option<i64>) -> Result<(), Error> {
        if reason.trim().is_empty() || reason.len() > 512 {
            return Err(Error::invalid("reason", "is required (at most 512 bytes)"));
        }
        let now = self.k.now()?;
        if until.is_some_and(|u| u <= now) {
            return Err(Error::invalid(
                "until",
                "must be in the future (or 0 for until resumed)",
            ));
        }
        let s = Suspension {
            reason: reason.into(),
            by: actor.into(),
            since: now,
            until,
        };
        self.set_suspension(actor, scope, Some(s), now)
    }

    /// Lifts a suspension.
    pub fn resume(&self, actor: &str, scope: Scope) -> Result<(), Error> {
        let now = self.k.now()?;
        self.set_suspension(actor, scope, None, now)
    }

    fn set_suspension(&self, actor: &str, scope: Scope, s: Option<Suspension>, now: i64) -> Result<(), Error> {
        let mut batch = Batch::new();
        let what = if s.is_some() { "admin.suspend" } else { "admin.resume" };
        let reason = s.as_ref().map(|s| s.reason.clone()).unwrap_or_default();
        match scope {
            Scope::All => {
                let (mut g, version) = self.global()?;
                g.suspension = s.clone();
                self.put_global(&mut batch, &g, version)?;
                Event::new(EventKind::SuspensionChanged, "", now, None)
                    .with("scope", "all")
                    .with("suspended", s.is_some().to_string())
                    .with("reason", reason.clone())
                    .append_to(&mut batch)?;
                AuditEntry::ok(now, actor, "", what)
                    .with("scope", "all")
                    .with("reason", reason)
                    .append_to(&mut batch)?;
            }
            Scope::Users(users) => {
                if users.is_empty() || users.len() > MAX_REVOKE_USERS {
                    return Err(Error::invalid(
                        "user_ids",
                        format!("name 1 to {MAX_REVOKE_USERS} users, or all"),
                    ));
                }
                for u in &users {
                    check_id("user_ids", u)?;
                    let snap = Snapshot::load(self.k.store.as_ref(), u)?;
                    let mut user = snap.user.clone();
                    user.suspension = s.clone();
                    protect::put_user(&mut batch, u, &snap, &user)?;
                    Event::new(EventKind::SuspensionChanged, u, now, snap.anti_phishing_code())
                        .with("suspended", s.is_some().to_string())
                        .with("reason", reason.clone())
                        .append_to(&mut batch)?;
                    AuditEntry::ok(now, actor, u, what)
                        .with("reason", reason.clone())
                        .append_to(&mut batch)?;
                }
            }
        }
        self.k.commit(&batch)?;
        Ok(())
    }

    fn global(&self) -> Result<(GlobalRecord, u64), Error> {
        Ok(match self.k.store.get(Table::Meta, meta::GLOBAL)? {
            Some(v) => (codec::decode(&v.value)?, v.version),
            None => (GlobalRecord::default(), 0),
        })
    }

    fn put_global(&self, batch: &mut Batch, g: &GlobalRecord, version: u64) -> Result<(), Error> {
        let mut g = g.clone();
        g.v = 1;
        if version == 0 {
            batch.insert(Table::Meta, meta::GLOBAL, codec::encode(&g)?);
        } else {
            batch.update(Table::Meta, meta::GLOBAL, version, codec::encode(&g)?);
        }
        Ok(())
    }

    /// Deletes records that can no longer matter: challenges an hour past
    /// their expiry, registration ceremonies past theirs, and approvals a day
    /// past theirs (an expired approval is refused on its `exp`; an unknown
    /// `jti` is refused too). Returns how many were deleted.
    pub fn purge_expired(&self) -> Result<usize, Error> {
        let now = self.k.now()?;
        if self.k.store.get(Table::Meta, meta::EXPIRY_INDEXED)?.is_none() {
            self.index_expiries()?;
        }
        // The index is read in time order, a page at a time, and only as far
        // as what is due: a sweep costs what it deletes, not the size of the
        // tables (which hold up to a day of approvals).
        let mut deleted = 0;
        let mut after = meta::EXPIRY_PREFIX.to_vec();
        loop {
            let page = self.k.store.scan_page(Table::Meta, Some(&after), SWEEP_PAGE)?;
            let more = page.len() >= SWEEP_PAGE;
            let mut batch = Batch::new();
            let mut records = 0;
            let mut reached_now = false;
            for (k, v) in page {
                if !k.starts_with(meta::EXPIRY_PREFIX) {
                    reached_now = true;
                    break;
                }
                let Some((at, table, key)) = meta::parse_expiry_key(&k) else {
                    tracing::warn!("dropping a malformed expiry index entry");
                    batch.delete(Table::Meta, k.clone(), v.version);
                    after = k;
                    continue;
                };
                if at >= now {
                    reached_now = true;
                    break;
                }
                batch.delete(Table::Meta, k.clone(), v.version);
                if let Some(rec) = self.k.store.get(table, key)? {
                    match record_expiry(&rec.value) {
                        // Its expiry moved since it was indexed: index it again.
                        Some(until) if meta::expiry_key(table, key, until) > k => {
                            meta::index_expiry(&mut batch, table, key, until)
                        }
                        Some(_) => {
                            batch.delete(table, key.to_vec(), rec.version);
                            records += 1;
                        }
                        None => tracing::warn!(table = table.name(), "a record without expiry was indexed; kept"),
                    }
                }
                after = k;
            }
            if self.commit_purge(&batch)? > 0 {
                deleted += records;
            }
            if reached_now || !more {
                break;
            }
        }
        Ok(deleted)
    }

    /// Adds the expiry index entries of records written before the index
    /// existed (a store made by an earlier version, or restored from its
    /// backup), then marks the store indexed. Runs once, in pages; a page
    /// that meets a concurrent write is retried at the next sweep.
    fn index_expiries(&self) -> Result<(), Error> {
        for table in Table::ALL.into_iter().filter(|t| meta::purge_grace(*t).is_some()) {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.k.store.scan_page(table, after.as_deref(), SWEEP_PAGE)?;
                let more = page.len() >= SWEEP_PAGE;
                let mut batch = Batch::new();
                for (k, v) in page {
                    if let Some(until) = record_expiry(&v.value) {
                        let entry = meta::expiry_key(table, &k, until);
                        if self.k.store.get(Table::Meta, &entry)?.is_none() {
                            batch.insert(Table::Meta, entry, Vec::new());
                        }
                    }
                    after = Some(k);
                }
                if self.commit_purge(&batch)? < batch.ops.len() {
                    return Ok(());
                }
                if !more {
                    break;
                }
            }
        }
        let mut batch = Batch::new();
        batch.insert(Table::Meta, meta::EXPIRY_INDEXED, b"1".to_vec());
        self.commit_purge(&batch)?;
        Ok(())
    }

    fn commit_purge(&self, batch: &Batch) -> Result<usize, Error> {
        if batch.is_empty() {
            return Ok(0);
        }
        match self.k.commit(batch) {
            Ok(_) => Ok(batch.ops.len()),
            Err(Error::Conflict(_)) => Ok(0), // touched meanwhile; next sweep
            Err(e) => Err(e),
        }
    }

    /// Purges expired records and announces addresses whose hold ended
    /// (part of [`crate::Sigil::sweep`]). Returns the number of addresses
    /// announced.
    pub fn sweep(&self) -> Result<usize, Error> {
        let now = self.k.now()?;
        self.purge_expired()?;
        let mut announced = 0;
        let mut after: Option<Vec<u8>> = None;
        let mut page = Vec::new();
        loop {
            let Some((key, v)) = page.pop() else {
                page = self.k.store.scan_page(Table::Addresses, after.as_deref(), SWEEP_PAGE)?;
                let Some(last) = page.last() else { break };
                after = Some(last.0.clone());
                // Taken from the end: oldest key first.
                page.reverse();
                continue;
            };
            let mut rec: AddressRecord = codec::decode(&v.value)?;
            if rec.usable_announced || now < rec.usable_at {
                continue;
            }
            rec.usable_announced = true;
            let snap = Snapshot::load(self.k.store.as_ref(), &rec.user_id)?;
            let mut batch = Batch::new();
            batch.update(Table::Addresses, key, v.version, codec::encode(&rec)?);
            Event::new(EventKind::AddressUsable, &rec.user_id, now, snap.anti_phishing_code())
                .with("network", rec.network.clone())
                .with("address", rec.address.clone())
                .append_to(&mut batch)?;
            match self.k.commit(&batch) {
                Ok(_) => announced += 1,
                Err(Error::Conflict(_)) => {} // changed meanwhile; next sweep
                Err(e) => return Err(e),
            }
        }
        Ok(announced)
    }
}
