use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::model::{check_id, Action};
use crate::protect::address::{self, AddressRecord};
use crate::protect::{self, AntiPhishing, Snapshot};
use crate::store::{codec, Batch, Table};

impl Ops {
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
        self.cfg.assets.check_asset_network("", asset, network)?;
        address::validate(&self.cfg.assets, "address", network, addr)?;
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let mut batch = Batch::new();
        let (a, n, d, l) = (
            asset.to_string(),
            network.to_string(),
            addr.to_string(),
            label.to_string(),
        );
        self.approvals.step_up(
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
        if self.k.store.get(Table::Addresses, &key)?.is_some() {
            return Err(Error::refused(
                Reason::AddressAlreadyWhitelisted,
                format!("{addr} ({network}) is already on the whitelist"),
            ));
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
        batch.insert(Table::Addresses, key, codec::encode(&rec)?);
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
        self.k.commit(&batch)?;
        Ok(rec)
    }

    /// A user's whitelisted addresses.
    pub fn list_addresses(&self, user_id: &str) -> Result<Vec<AddressRecord>, Error> {
        check_id("user_id", user_id)?;
        self.k
            .store
            .scan_prefix(Table::Addresses, &address::user_prefix(user_id))?
            .into_iter()
            .map(|(_, v)| codec::decode(&v.value))
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
            .k
            .store
            .get(Table::Addresses, &key)?
            .ok_or_else(|| Error::NotFound(format!("{addr} ({network}) is not on the whitelist of '{user_id}'")))?;
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let mut batch = Batch::new();
        let (n, d) = (network.to_string(), addr.to_string());
        self.approvals.step_up(
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
        self.k.commit(&batch)?;
        Ok(())
    }

    /// Sets the anti-phishing code. Needs a `change_anti_phishing_code`
    /// approval whose memo is the new code; starts the security-change lock.
    pub fn set_anti_phishing_code(&self, actor: &str, user_id: &str, code: &str, approval: &str) -> Result<i64, Error> {
        check_id("user_id", user_id)?;
        protect::check_anti_phishing_code("code", code)?;
        let now = self.k.now()?;
        let snap = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let mut batch = Batch::new();
        let c = code.to_string();
        self.approvals.step_up(
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
        protect::put_user(&mut batch, user_id, &snap, &user)?;
        Event::new(EventKind::AntiPhishingCodeChanged, user_id, now, Some(code.to_string())).append_to(&mut batch)?;
        AuditEntry::ok(now, actor, user_id, "anti_phishing.set").append_to(&mut batch)?;
        self.k.commit(&batch)?;
        Ok(now)
    }

    /// The account protection programme report for `user_id` at `as_of`.
    pub fn protection_status(&self, user_id: &str, as_of: i64) -> Result<Vec<ReportItem>, Error> {
        check_id("user_id", user_id)?;
        let snap: Snapshot = Snapshot::load(self.k.store.as_ref(), user_id)?;
        let live = self.factors.live_factors(user_id, &snap)?;
        let policy = self.approvals.policy()?;
        let kinds: Vec<String> = Action::ALL
            .iter()
            .map(|a| {
                let k: Vec<&str> = policy.action(*a).kinds.iter().map(|k| k.name()).collect();
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
