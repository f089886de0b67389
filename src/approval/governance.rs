//! The stored, versioned policy and its guarded changes.
//!
//! The policy file (or `[policy]`) is only the first version: at the first
//! start it is written to the store as version 1. From then on the stored
//! version decides, and a change is a request ([`QuorumRequest`] of kind
//! policy change) that needs the current `[governance]` quorum of staff
//! keys, each signing the change's intent (`change_policy`, the request id
//! as withdrawal id, `sha256:<base64url SHA-256 of the proposed text>` as
//! memo), and takes effect only `governance.delay_seconds` after the quorum
//! (default 48 h), cancellable until then. A change proposed on an older
//! version than the one in force when its delay ends is cancelled instead
//! of silently undoing the other.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, Intent};

use super::quorum::{QuorumRequest, RequestKind, RequestState};
use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::protect::policy::QuorumNeed;
use crate::store::{meta, Batch};

/// The `meta` key of the policy in force.
pub const POLICY_KEY: &[u8] = b"policy";
/// The action name of a policy change's intent.
pub const CHANGE_POLICY_ACTION: &str = "change_policy";
/// The largest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The policy in force (table `meta`, key `policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Record format version.
    pub v: u32,
    /// The policy's version: 1 for the file's, +1 per change.
    pub version: u64,
    /// The policy.
    pub policy: Policy,
    /// Its text (TOML) as proposed (version 1: as serialised from the file).
    pub text: String,
    /// Unpadded base64url SHA-256 of `text`.
    pub sha256: String,
    /// When it took effect.
    pub activated_at: i64,
    /// The request that changed it (empty for version 1).
    #[serde(default)]
    pub request_id: String,
}

impl Record for PolicyRecord {
    const NAME: &'static str = "policy";
    fn format_version(&self) -> u32 {
        self.v
    }
}

fn sha256_b64(text: &str) -> String {
    b64url::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

impl Approvals {
    /// The policy in force (cached; read again when its stored version
    /// changes, so a change made by another replica applies here too).
    pub fn policy(&self) -> Result<Arc<Policy>, Error> {
        let stored = self.k.store.get(Table::Meta, POLICY_KEY)?;
        let version = stored.as_ref().map_or(0, |v| v.version);
        if let Some((v, p)) = self
            .policy_cache
            .read()
            .map_err(|_| Error::Internal("policy cache poisoned".into()))?
            .as_ref()
        {
            if *v == version {
                return Ok(p.clone());
            }
        }
        let policy = match stored {
            Some(v) => Arc::new(codec::decode::<PolicyRecord>(&v.value)?.policy),
            None => Arc::new(self.cfg.policy.clone()),
        };
        *self
            .policy_cache
            .write()
            .map_err(|_| Error::Internal("policy cache poisoned".into()))? = Some((version, policy.clone()));
        Ok(policy)
    }

    /// The policy record in force (version 0, from the configuration, when
    /// none was stored yet).
    pub fn policy_record(&self) -> Result<(PolicyRecord, u64), Error> {
        match self.k.store.get(Table::Meta, POLICY_KEY)? {
            Some(v) => Ok((codec::decode(&v.value)?, v.version)),
            None => {
                let text = policy_text(&self.cfg.policy)?;
                Ok((
                    PolicyRecord {
                        v: 1,
                        version: 0,
                        policy: self.cfg.policy.clone(),
                        sha256: sha256_b64(&text),
                        text,
                        activated_at: 0,
                        request_id: String::new(),
                    },
                    0,
                ))
            }
        }
    }

    /// At start: stores the configured policy as version 1 when no policy
    /// is stored yet; otherwise says (in the log) when the configured one
    /// differs from the one in force, which it does not replace.
    pub fn init_policy(&self) -> Result<(), Error> {
        let (current, store_version) = self.policy_record()?;
        if store_version != 0 {
            if current.policy != self.cfg.policy {
                tracing::warn!(
                    version = current.version,
                    "the configured policy differs from the stored policy in force (version {}); the file is only \
                     the first version: propose a change (sigil policy propose) to change it",
                    current.version
                );
            }
            return Ok(());
        }
        let now = self.k.now()?;
        let rec = PolicyRecord {
            version: 1,
            activated_at: now,
            ..current
        };
        let mut batch = Batch::new();
        batch.insert(Table::Meta, POLICY_KEY, codec::encode(&rec)?);
        AuditEntry::ok(now, "sigild", "", "policy.initial")
            .with("version", "1")
            .with("sha256", rec.sha256.clone())
            .append_to(&mut batch)?;
        match self.k.commit(&batch) {
            Ok(_) | Err(Error::Conflict(_)) => Ok(()), // another replica stored it first
            Err(e) => Err(e),
        }
    }

    /// Proposes a policy change (TOML text). It needs the `[governance]`
    /// quorum of the policy in force and applies after its delay.
    pub fn propose_policy(&self, actor: &str, proposed_by: &str, text: &str) -> Result<QuorumRequest, Error> {
        crate::model::check_id("proposed_by", proposed_by)?;
        if text.trim().is_empty() {
            return Err(Error::invalid(
                "policy_text",
                "is required: the whole new policy, as TOML",
            ));
        }
        if text.len() > MAX_POLICY_BYTES {
            return Err(Error::invalid("policy_text", "is larger than 64 KiB"));
        }
        let proposed = Policy::from_toml(text).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::invalid("policy_text", reason),
            other => other,
        })?;
        proposed
            .check_delays(
                self.cfg.quorum.min_policy_delay_seconds,
                self.cfg.quorum.max_delay_seconds,
            )
            .map_err(as_policy_text_error)?;
        self.check_policy_assets(&proposed)?;
        // Who proposes is a label (the admin certificate names them); it
        // grants nothing: the change needs `required` staff keys, the
        // proposer's counting like anyone's.
        let (proposer, _) = self.staff(proposed_by).map_err(|e| match e {
            Error::NotFound(m) => Error::invalid("proposed_by", m),
            other => other,
        })?;
        if let Some(at) = proposer.removed_at {
            return Err(Error::invalid(
                "proposed_by",
                format!("staff member '{proposed_by}' was removed at {at}"),
            ));
        }
        // Staff members not removed (the pools count only them).
        let staff: Vec<_> = self
            .list_staff()?
            .into_iter()
            .filter(|s| s.removed_at.is_none())
            .collect();
        let known = |id: &str| staff.iter().any(|s| s.staff_id == id);
        for (place, id) in proposed.named_staff() {
            if !known(&id) {
                return Err(Error::invalid(
                    "policy_text",
                    format!("{place} names unknown (or removed) staff id '{id}'; add the staff member first"),
                ));
            }
        }
        if proposed.governance.staff.is_empty() && proposed.governance.required as usize > staff.len() {
            return Err(Error::invalid(
                "policy_text",
                format!(
                    "policy.governance: a quorum of {} is larger than the staff pool of {} (every staff member)",
                    proposed.governance.required,
                    staff.len()
                ),
            ));
        }
        let now = self.k.now()?;
        let (current, _) = self.policy_record()?;
        let g = &current.policy.governance;
        let pool: Vec<String> = if g.staff.is_empty() {
            staff.iter().map(|s| s.staff_id.clone()).collect()
        } else {
            g.staff.clone()
        };
        if (g.required as usize) > pool.len() {
            return Err(Error::refused(
                Reason::QuorumNotMet,
                format!(
                    "the policy in force needs {} staff approvals for a change, but its pool has only {} staff member(s); the change could never be approved",
                    g.required,
                    pool.len()
                ),
            ));
        }
        let request_id = self.k.new_id("qr_")?;
        let sha = sha256_b64(text);
        let intent = Intent {
            action: CHANGE_POLICY_ACTION.into(),
            withdrawal_id: request_id.clone(),
            memo: format!("sha256:{sha}"),
            ..Default::default()
        };
        let needs = vec![QuorumNeed {
            rule: "governance".into(),
            m: g.required,
            of: pool,
        }];
        let req = QuorumRequest {
            proposed_by: proposed_by.into(),
            delay_seconds: g.delay_seconds,
            policy_text: text.into(),
            base_version: current.version,
            ..QuorumRequest::new(
                request_id.clone(),
                RequestKind::PolicyChange,
                intent,
                needs,
                now,
                now + self.cfg.quorum.request_timeout_seconds,
            )
        };
        let mut batch = Batch::new();
        batch.insert(Table::Quorum, request_id.as_bytes(), codec::encode(&req)?);
        Event::new(EventKind::PolicyChangeProposed, "", now, None)
            .with("request_id", request_id.clone())
            .with("proposed_by", proposed_by)
            .with("sha256", sha.clone())
            .with("base_version", current.version.to_string())
            .with("required", g.required.to_string())
            .with("delay_seconds", g.delay_seconds.to_string())
            .with("notify", "staff")
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, "", "policy.propose")
            .with("request_id", request_id)
            .with("proposed_by", proposed_by)
            .with("sha256", sha)
            .with("base_version", current.version.to_string())
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
        Ok(req)
    }

    /// Refuses a proposed policy whose rules name assets that are not
    /// configured (they would never apply).
    fn check_policy_assets(&self, p: &Policy) -> Result<(), Error> {
        let mut named: Vec<(String, &str)> = p
            .velocity
            .iter()
            .map(|v| ("policy.velocity".to_string(), v.asset.as_str()))
            .collect();
        for (name, a) in &p.actions {
            for t in &a.thresholds {
                named.push((format!("policy.actions.{name}.thresholds"), t.asset.as_str()));
            }
            for q in &a.quorum {
                if let Some(asset) = &q.asset {
                    named.push((format!("policy.actions.{name}.quorum"), asset.as_str()));
                }
            }
        }
        for (field, asset) in named {
            if self.cfg.assets.max_decimals(asset).is_none() {
                return Err(Error::invalid(
                    "policy_text",
                    format!(
                        "{field}: asset '{asset}' is not configured (tickers are exact); the rule would never apply"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A policy change met its quorum: it applies after its delay (at once
    /// when the delay is 0).
    pub(crate) fn schedule_policy(&self, batch: &mut Batch, req: &mut QuorumRequest, now: i64) -> Result<(), Error> {
        req.state = RequestState::Delayed;
        req.not_before = now + req.delay_seconds;
        Event::new(EventKind::PolicyChangeApproved, "", now, None)
            .with("request_id", req.request_id.clone())
            .with("approvers", req.approvers().join(" "))
            .with("not_before", req.not_before.to_string())
            .with("notify", "staff")
            .append_to(batch)?;
        if req.delay_seconds == 0 {
            self.activate_policy(batch, req, now)?;
        }
        Ok(())
    }

    /// A policy change's delay is over: it takes effect, unless another
    /// change took effect since it was proposed (then it is cancelled).
    pub(crate) fn activate_policy(&self, batch: &mut Batch, req: &mut QuorumRequest, now: i64) -> Result<(), Error> {
        let (current, store_version) = self.policy_record()?;
        req.closed_at = now;
        meta::index_expiry(batch, Table::Quorum, req.request_id.as_bytes(), now);
        if current.version != req.base_version {
            req.state = RequestState::Cancelled;
            req.closed_by = format!("superseded by policy version {}", current.version);
            Event::new(EventKind::ApprovalCancelled, "", now, None)
                .with("request_id", req.request_id.clone())
                .with("kind", "policy_change")
                .with("by", req.closed_by.clone())
                .with("notify", "staff")
                .append_to(batch)?;
            return Ok(());
        }
        let policy = Policy::from_toml(&req.policy_text)?;
        let rec = PolicyRecord {
            v: 1,
            version: current.version + 1,
            policy,
            text: req.policy_text.clone(),
            sha256: sha256_b64(&req.policy_text),
            activated_at: now,
            request_id: req.request_id.clone(),
        };
        if store_version == 0 {
            batch.insert(Table::Meta, POLICY_KEY, codec::encode(&rec)?);
        } else {
            batch.update(Table::Meta, POLICY_KEY, store_version, codec::encode(&rec)?);
        }
        req.state = RequestState::Activated;
        req.closed_by = "delay over".into();
        Event::new(EventKind::PolicyChangeActivated, "", now, None)
            .with("request_id", req.request_id.clone())
            .with("version", rec.version.to_string())
            .with("sha256", rec.sha256.clone())
            .with("approvers", req.approvers().join(" "))
            .with("notify", "staff")
            .append_to(batch)?;
        AuditEntry::ok(now, "sweep", "", "policy.activate")
            .with("request_id", req.request_id.clone())
            .with("version", rec.version.to_string())
            .with("sha256", rec.sha256)
            .append_to(batch)?;
        Ok(())
    }
}

/// The TOML text of a policy.
pub fn policy_text(p: &Policy) -> Result<String, Error> {
    toml::to_string(p).map_err(|e| Error::Internal(format!("cannot write the policy as TOML: {e}")))
}

fn as_policy_text_error(e: Error) -> Error {
    match e {
        Error::InvalidArgument { reason, .. } => Error::invalid("policy_text", reason),
        other => other,
    }
}
