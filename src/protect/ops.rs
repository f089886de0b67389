//! Operations on the protections: whitelist, anti-phishing code,
//! revocation, suspension, the background sweep, the account protection
//! report, and reading events and audit.
use sigil_verify::b64url;

use super::address::{self, AddressRecord};
use super::{decode, encode, AntiPhishing, GlobalRecord, Snapshot, Suspension, GLOBAL_KEY};
use crate::approval::intent::check_id;
use crate::approval::Action;
use crate::audit::{self, AuditEntry, Checkpoint};
use crate::core::Sigil;
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::store::{Batch, LogEntry, Table};

/// Most users one per-user revocation call may name.
pub const MAX_REVOKE_USERS: usize = 10_000;
/// Days an anti-phishing code must have been set for the protection programme.
pub const ANTI_PHISHING_MIN_DAYS: i64 = 21;

/// Who a revocation or suspension applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every user.
    All,
    /// These users.
    Users(Vec<String>),
}

/// One item of the account protection report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItem {
    /// Stable name, e.g. `anti_phishing_code_set_21_days`.
    pub name: &'static str,
    /// Whether the condition holds.
    pub ok: bool,
    /// What it was decided on.
    pub evidence: String,
}

fn label_ok(label: &str) -> Result<(), Error> {
    if label.len() > 64 || label.chars().any(char::is_control) {
        return Err(Error::invalid("label", "at most 64 bytes, no control characters"));
    }
    Ok(())
}

impl Sigil {
    /// Adds a withdrawal address, usable after the hold. Needs an
    /// `add_address` approval whose intent has this asset, network,
    /// destination and (as memo) label.
    #[allow(clippy::too_many_arguments)]
    pub fn add_address(
        &self,
        actor: &str,
        user_id: &str,
        asset: &str,
        network: &str,
        addr: &str,
        label: &str,
        approval: &str,
    ) -> Result<AddressRecord, Error> {
        check_id("user_id", user_id)?;
        check_id("asset", asset)?;
        check_id("network", network)?;
        check_id("address", addr)?;
        label_ok(label)?;
        self.cfg.check_asset_network("", asset, network)?;
        address::validate(&self.cfg, "address", network, addr)?;
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let mut batch = Batch::new();
        let (a, n, d, l) = (
            asset.to_string(),
            network.to_string(),
            addr.to_string(),
            label.to_string(),
        );
        self.step_up(
            approval,
            Action::AddAddress,
            user_id,
            &snap,
            move |i| {
                if i.asset != a || i.network != n || i.destination != d || i.memo != l {
                    Err(format!(
                        "{} {} on {} labelled '{}'",
                        i.asset, i.destination, i.network, i.memo
                    ))
                } else {
                    Ok(())
                }
            },
            &mut batch,
        )?;
        let key = address::key(user_id, network, addr);
        if self.store.get(Table::Addresses, &key)?.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "{addr} ({network}) is already on the whitelist"
            )));
        }
        let rec = AddressRecord {
            v: 1,
            user_id: user_id.into(),
            asset: asset.into(),
            network: network.into(),
            address: addr.into(),
            label: label.into(),
            added_at: now,
            usable_at: now + self.cfg.protection.address_hold_seconds,
            usable_announced: false,
        };
        batch.insert(Table::Addresses, key, encode(&rec)?);
        Event::new(EventKind::AddressAdded, user_id, now, snap.anti_phishing_code())
            .with("asset", asset)
            .with("network", network)
            .with("address", addr)
            .with("label", label)
            .with("usable_at", rec.usable_at.to_string())
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, user_id, "address.add")
            .with("network", network)
            .with("address", addr)
            .with("usable_at", rec.usable_at.to_string())
            .append_to(&mut batch)?;
        self.commit(&batch)?;
        Ok(rec)
    }

    /// A user's whitelisted addresses.
    pub fn list_addresses(&self, user_id: &str) -> Result<Vec<AddressRecord>, Error> {
        check_id("user_id", user_id)?;
        self.store
            .scan_prefix(Table::Addresses, &address::user_prefix(user_id))?
            .into_iter()
            .map(|(_, v)| decode(&v.value, "address"))
            .collect()
    }

    /// Removes a whitelisted address. Needs a `remove_address` approval for
    /// this network and destination.
    pub fn remove_address(
        &self,
        actor: &str,
        user_id: &str,
        network: &str,
        addr: &str,
        approval: &str,
    ) -> Result<(), Error> {
        check_id("user_id", user_id)?;
        check_id("network", network)?;
        check_id("address", addr)?;
        let key = address::key(user_id, network, addr);
        let stored = self
            .store
            .get(Table::Addresses, &key)?
            .ok_or_else(|| Error::NotFound(format!("{addr} ({network}) is not on the whitelist of '{user_id}'")))?;
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let mut batch = Batch::new();
        let (n, d) = (network.to_string(), addr.to_string());
        self.step_up(
            approval,
            Action::RemoveAddress,
            user_id,
            &snap,
            move |i| {
                if i.network == n && i.destination == d {
                    Ok(())
                } else {
                    Err(format!("{} on {}", i.destination, i.network))
                }
            },
            &mut batch,
        )?;
        batch.delete(Table::Addresses, key, stored.version);
        Event::new(EventKind::AddressRemoved, user_id, now, snap.anti_phishing_code())
            .with("network", network)
            .with("address", addr)
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, user_id, "address.remove")
            .with("network", network)
            .with("address", addr)
            .append_to(&mut batch)?;
        self.commit(&batch)?;
        Ok(())
    }

    /// Sets the anti-phishing code. Needs a `change_anti_phishing_code`
    /// approval whose memo is the new code; starts the security-change lock.
    pub fn set_anti_phishing_code(&self, actor: &str, user_id: &str, code: &str, approval: &str) -> Result<i64, Error> {
        check_id("user_id", user_id)?;
        check_anti_phishing_code("code", code)?;
        let now = self.now()?;
        let snap = self.snapshot(user_id)?;
        let mut batch = Batch::new();
        let c = code.to_string();
        self.step_up(
            approval,
            Action::ChangeAntiPhishingCode,
            user_id,
            &snap,
            move |i| {
                if i.memo == c {
                    Ok(())
                } else {
                    Err("another anti-phishing code".into())
                }
            },
            &mut batch,
        )?;
        let mut user = snap.user.clone();
        user.anti_phishing = Some(AntiPhishing {
            code: code.into(),
            set_at: now,
        });
        user.security_locked_until = user
            .security_locked_until
            .max(now + self.cfg.protection.security_change_lock_seconds);
        user.security_lock_reason = "anti-phishing code changed".into();
        self.put_user(&mut batch, user_id, &snap, &user)?;
        Event::new(EventKind::AntiPhishingCodeChanged, user_id, now, Some(code.to_string())).append_to(&mut batch)?;
        AuditEntry::ok(now, actor, user_id, "anti_phishing.set").append_to(&mut batch)?;
        self.commit(&batch)?;
        Ok(now)
    }

    /// Revokes every factor of every user (one write, whatever the number
    /// of users) or of the listed users. Outstanding challenges and
    /// unredeemed approvals die with them. Returns the users affected
    /// (None for all).
    pub fn revoke_factors(&self, actor: &str, scope: Scope, reason: &str) -> Result<Option<usize>, Error> {
        if reason.trim().is_empty() || reason.len() > 512 {
            return Err(Error::invalid("reason", "is required (at most 512 bytes)"));
        }
        let now = self.now()?;
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
                    let snap = self.snapshot(u)?;
                    let mut user = snap.user.clone();
                    user.epoch += 1;
                    user.revoked_at = Some(now);
                    self.put_user(&mut batch, u, &snap, &user)?;
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
        self.commit(&batch)?;
        tracing::warn!(?count, reason, "factors revoked");
        Ok(count)
    }

    /// Suspends approvals and redemptions globally or for users.
    pub fn suspend(&self, actor: &str, scope: Scope, reason: &str, until: Option<i64>) -> Result<(), Error> {
        if reason.trim().is_empty() || reason.len() > 512 {
            return Err(Error::invalid("reason", "is required (at most 512 bytes)"));
        }
        let now = self.now()?;
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
        let now = self.now()?;
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
                    let snap = self.snapshot(u)?;
                    let mut user = snap.user.clone();
                    user.suspension = s.clone();
                    self.put_user(&mut batch, u, &snap, &user)?;
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
        self.commit(&batch)?;
        Ok(())
    }

    fn global(&self) -> Result<(GlobalRecord, u64), Error> {
        Ok(match self.store.get(Table::Meta, GLOBAL_KEY)? {
            Some(v) => (decode(&v.value, "global")?, v.version),
            None => (GlobalRecord::default(), 0),
        })
    }

    fn put_global(&self, batch: &mut Batch, g: &GlobalRecord, version: u64) -> Result<(), Error> {
        let mut g = g.clone();
        g.v = 1;
        if version == 0 {
            batch.insert(Table::Meta, GLOBAL_KEY, encode(&g)?);
        } else {
            batch.update(Table::Meta, GLOBAL_KEY, version, encode(&g)?);
        }
        Ok(())
    }

    /// Deletes records that can no longer matter: challenges an hour past
    /// their expiry, registration ceremonies past theirs, and approvals a day
    /// past theirs (an expired approval is refused on its `exp`; an unknown
    /// `jti` is refused too). Returns how many were deleted.
    pub fn purge_expired(&self) -> Result<usize, Error> {
        #[derive(serde::Deserialize)]
        struct Expiry {
            #[serde(default)]
            expires_at: i64,
            #[serde(default)]
            exp: i64,
        }
        let now = self.now()?;
        let mut deleted = 0;
        for (table, grace) in [
            (Table::Challenges, 3_600),
            (Table::Ceremonies, 0),
            (Table::Approvals, 86_400),
        ] {
            let mut batch = Batch::new();
            for (k, v) in self.store.scan_prefix(table, b"")? {
                let Ok(e) = serde_json::from_slice::<Expiry>(&v.value) else {
                    continue;
                };
                let until = e.expires_at.max(e.exp);
                if until > 0 && until + grace < now {
                    batch.delete(table, k, v.version);
                }
                if batch.ops.len() >= 1_000 {
                    deleted += self.commit_purge(&batch)?;
                    batch = Batch::new();
                }
            }
            deleted += self.commit_purge(&batch)?;
        }
        Ok(deleted)
    }

    fn commit_purge(&self, batch: &Batch) -> Result<usize, Error> {
        match self.commit(batch) {
            Ok(_) => Ok(batch.ops.len()),
            Err(Error::FailedPrecondition(_)) => Ok(0), // touched meanwhile; next sweep
            Err(e) => Err(e),
        }
    }

    /// Background work due at the current time: announce addresses whose
    /// hold ended, apply key transitions, purge expired records, and sign an
    /// audit checkpoint when the log grew. Returns the number of addresses
    /// announced.
    pub fn sweep(&self) -> Result<usize, Error> {
        let now = self.now()?;
        self.purge_expired()?;
        let mut announced = 0;
        for (key, v) in self.store.scan_prefix(Table::Addresses, b"")? {
            let mut rec: AddressRecord = decode(&v.value, "address")?;
            if rec.usable_announced || now < rec.usable_at {
                continue;
            }
            rec.usable_announced = true;
            let snap = self.snapshot(&rec.user_id)?;
            let mut batch = Batch::new();
            batch.update(Table::Addresses, key, v.version, encode(&rec)?);
            Event::new(EventKind::AddressUsable, &rec.user_id, now, snap.anti_phishing_code())
                .with("network", rec.network.clone())
                .with("address", rec.address.clone())
                .append_to(&mut batch)?;
            match self.commit(&batch) {
                Ok(_) => announced += 1,
                Err(Error::FailedPrecondition(_)) => {} // changed meanwhile; next sweep
                Err(e) => return Err(e),
            }
        }
        self.advance_keys()?;
        self.sync_keys()?;
        self.sync_secrets_key()?;
        self.checkpoint_audit()?;
        Ok(announced)
    }

    /// Signs a checkpoint of the audit log's head if it moved since the
    /// last one. Returns the checkpoint (new or latest).
    pub fn checkpoint_audit(&self) -> Result<Option<Checkpoint>, Error> {
        let (seq, hash) = self.store.log_head(Table::Audit)?;
        if seq == 0 {
            return Ok(None);
        }
        if let Some(last) = self.checkpoints()?.pop() {
            if last.seq >= seq {
                return Ok(Some(last));
            }
        }
        let at = self.now()?;
        let sig = self.signer.sign_audit(&audit::checkpoint_message(seq, &hash, at))?;
        let c = Checkpoint {
            v: 1,
            seq,
            hash: b64url::encode(&hash),
            at,
            kid: self.signer.audit_jwk().kid.clone(),
            signature: b64url::encode(&sig),
        };
        let mut batch = Batch::new();
        batch.insert(Table::Checkpoints, seq.to_be_bytes().to_vec(), encode(&c)?);
        match self.commit(&batch) {
            Ok(_) | Err(Error::FailedPrecondition(_)) => Ok(Some(c)),
            Err(e) => Err(e),
        }
    }

    /// Every audit checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        self.store
            .scan_prefix(Table::Checkpoints, b"")?
            .into_iter()
            .map(|(_, v)| decode(&v.value, "checkpoint"))
            .collect()
    }

    /// Raw audit log entries after `after` (for export and verification).
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, Error> {
        Ok(self.store.read_log(Table::Audit, after, limit)?)
    }

    /// Verifies the whole audit log and its checkpoints.
    pub fn verify_audit(&self) -> Result<audit::Report, Error> {
        let mut entries = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.read_log(Table::Audit, after, 10_000)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            entries.extend(page);
        }
        Ok(audit::verify(&entries, &self.checkpoints()?, self.signer.audit_jwk()))
    }

    /// Events after `after`, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Event)>, Error> {
        self.store
            .read_log(Table::Events, after, limit)?
            .into_iter()
            .map(|e| Ok((e.seq, Event::decode(&e.value)?)))
            .collect()
    }

    /// The account protection programme report for `user_id` at `as_of`.
    pub fn protection_status(&self, user_id: &str, as_of: i64) -> Result<Vec<ReportItem>, Error> {
        check_id("user_id", user_id)?;
        let snap: Snapshot = self.snapshot(user_id)?;
        let live = self.live_factors(user_id, &snap)?;
        let kinds: Vec<String> = Action::ALL
            .iter()
            .map(|a| {
                let k: Vec<&str> = self.cfg.policy.action(*a).kinds.iter().map(|k| k.name()).collect();
                format!("{}: {}", a.name(), k.join("/"))
            })
            .collect();
        let mut items = vec![ReportItem {
            name: "mfa_required_for_all_actions",
            ok: !live.is_empty(),
            evidence: format!(
                "every action needs an approval from a verified factor ({}); the user has {} active factor(s)",
                kinds.join("; "),
                live.len()
            ),
        }];
        let deadline = as_of - ANTI_PHISHING_MIN_DAYS * 86_400;
        items.push(match &snap.user.anti_phishing {
            Some(a) => ReportItem {
                name: "anti_phishing_code_set_21_days",
                ok: a.set_at <= deadline,
                evidence: format!("set at {}; needs to be set at or before {deadline}", a.set_at),
            },
            None => ReportItem {
                name: "anti_phishing_code_set_21_days",
                ok: false,
                evidence: "no anti-phishing code set".into(),
            },
        });
        items.push(ReportItem {
            name: "no_compromised_device_signal",
            ok: snap.user.compromised_device_at.is_none_or(|t| t > as_of),
            evidence: match snap.user.compromised_device_at {
                Some(t) => format!("a device reported jailbroken/rooted at {t}"),
                None => "no device ever reported jailbroken/rooted".into(),
            },
        });
        let cloned: Vec<String> = live
            .iter()
            .filter(|(f, _)| f.suspected_cloned)
            .map(|(f, _)| f.factor_id.clone())
            .collect();
        items.push(ReportItem {
            name: "no_factor_suspected_cloned",
            ok: cloned.is_empty(),
            evidence: if cloned.is_empty() {
                "no factor's counter ever went backwards".into()
            } else {
                format!("suspected cloned: {}", cloned.join(", "))
            },
        });
        Ok(items)
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
