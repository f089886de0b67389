//! Staff quorums, delays and cancellation.
//!
//! A policy rule (`[[actions.<action>.quorum]]`) can hold an action, once
//! the user's own factor has answered, for M of N named staff members and
//! for a delay:
//!
//! ```text
//! CompleteApproval ──▶ request AWAITING_QUORUM ──staff approvals (M)──▶ approval signed, nbf = now + delay
//!                         │ expires after quorum.request_timeout           (DELAYED until nbf, then ISSUED)
//!                         └──────── cancel (user with a factor, staff with a key) until nbf ───────▶ CANCELLED
//! ```
//!
//! Every staff approval is a WebAuthn assertion by the staff member's own
//! key over `SHA-256("sigil-webauthn-v1" || nonce || intent_sha256)`, with a
//! fresh nonce per ceremony: the key signs the exact action. The approval
//! issued when the quorum is met lists every approver with their evidence
//! (claims `approvers` and `quorum`), so a verifier holding the published
//! staff keys re-checks each signature (`sigil_verify::verify_quorum`).
//!
//! A delayed approval carries `nbf`: `RedeemApproval` refuses it before
//! `nbf` and after a cancellation, and an engine verifying offline checks it
//! against a signed cancellation list issued at or after `nbf`
//! ([`Approvals::cancellations`]).
//!
//! Policy changes are requests of the same kind (see `governance.rs`).
use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, ApproverEvidence, CancellationList, Claims, Intent, QuorumClaim, WebauthnEvidence};

use super::*;
use crate::audit::AuditEntry;
use crate::events::{Event, EventKind};
use crate::factor::webauthn::{AssertionError, StoredCredential};
use crate::model::{check_id, Epochs};
use crate::protect::policy::QuorumNeed;
use crate::store::{meta, Batch};

/// Roles a staff member may have.
pub const STAFF_ROLES: [&str; 2] = ["admin", "approver"];
/// The `amr` value added to an approval that a staff quorum approved
/// (RFC 8176 "multiple-channel authentication": several people's keys).
pub const AMR_QUORUM: &str = "mca";
/// The action name of the intent staff sign to cancel a request.
pub const CANCEL_ACTION: &str = "cancel_approval";
/// The action name of the intent staff sign to approve another staff
/// member's new key.
pub const STAFF_KEY_ACTION: &str = "add_staff_key";
/// The `meta` key marking that the staff quorum is formed (its time).
pub const STAFF_FORMED_KEY: &[u8] = b"staff/quorum-formed";
/// The `meta` record every key registration while setting up rewrites (a
/// conditional write: concurrent ones conflict).
pub const STAFF_SETUP_KEY: &[u8] = b"staff/setup";

/// `[quorum]`: staff quorums, delayed approvals and policy changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuorumConfig {
    /// A request still waiting for its staff quorum this long after it was
    /// made is cancelled (default 24 h).
    pub request_timeout_seconds: i64,
    /// The longest delay a policy rule or the governance may set (default
    /// 30 days).
    pub max_delay_seconds: i64,
    /// The shortest delay the governance may set for policy changes
    /// (default 1 h): a quorum cannot make later changes instant.
    pub min_policy_delay_seconds: i64,
    /// How long an approval issued after a staff quorum or a delay stays
    /// valid (from its `nbf`, or its issue when not delayed; default 1 h):
    /// the engine learns of it from the event stream or by polling.
    pub redeem_window_seconds: i64,
    /// A staff member's newly registered key counts for quorums only this
    /// long after registration (default 24 h), so that an administrator
    /// cannot register a key for someone else and approve at once.
    pub staff_key_hold_seconds: i64,
    /// A cancellation list vouches only for cancellations this long before
    /// it was made (its `iat` is backdated by it; default 30 s), so that a
    /// cancellation decided just before an approval's `nbf`, on another
    /// replica or with a slightly different clock, is always in a list an
    /// engine accepts for that approval. An engine can verify a delayed
    /// approval offline from `nbf` + this.
    pub cancellation_list_lag_seconds: i64,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        Self {
            request_timeout_seconds: 86_400,
            max_delay_seconds: 30 * 86_400,
            min_policy_delay_seconds: 3_600,
            redeem_window_seconds: 3_600,
            staff_key_hold_seconds: 86_400,
            cancellation_list_lag_seconds: 30,
        }
    }
}

impl QuorumConfig {
    /// Checks the bounds of every setting.
    pub fn validate(&self) -> Result<(), Error> {
        if !(60..=30 * 86_400).contains(&self.request_timeout_seconds) {
            return Err(Error::invalid(
                "quorum.request_timeout_seconds",
                "must be between 60 and 2592000 (30 days)",
            ));
        }
        if !(0..=365 * 86_400).contains(&self.max_delay_seconds) {
            return Err(Error::invalid(
                "quorum.max_delay_seconds",
                "must be between 0 and 31536000 (a year)",
            ));
        }
        if !(60..=7 * 86_400).contains(&self.redeem_window_seconds) {
            return Err(Error::invalid(
                "quorum.redeem_window_seconds",
                "must be between 60 and 604800 (7 days)",
            ));
        }
        if self.min_policy_delay_seconds < 0 || self.min_policy_delay_seconds > self.max_delay_seconds {
            return Err(Error::invalid(
                "quorum.min_policy_delay_seconds",
                "must be between 0 and quorum.max_delay_seconds",
            ));
        }
        if !(0..=600).contains(&self.cancellation_list_lag_seconds) {
            return Err(Error::invalid(
                "quorum.cancellation_list_lag_seconds",
                "must be between 0 and 600",
            ));
        }
        if !(0..=30 * 86_400).contains(&self.staff_key_hold_seconds) {
            return Err(Error::invalid(
                "quorum.staff_key_hold_seconds",
                "must be between 0 and 2592000 (30 days)",
            ));
        }
        Ok(())
    }
}

/// A staff member (table `staff`, key = staff id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffRecord {
    /// Record format version.
    pub v: u32,
    /// The staff id.
    pub staff_id: String,
    /// `admin` or `approver`.
    pub role: String,
    /// A name to show.
    pub display_name: String,
    /// The exchange user account the staff member holds, if any: they may
    /// not approve that account's actions.
    #[serde(default)]
    pub user_id: String,
    /// When added.
    pub created_at: i64,
    /// Who added them (the caller's role).
    pub created_by: String,
    /// Their WebAuthn keys.
    #[serde(default)]
    pub keys: Vec<StaffKeyRecord>,
    /// Set when removed: the record stays as a tombstone, so that the id
    /// is never given to someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<i64>,
}

/// One WebAuthn key of a staff member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffKeyRecord {
    /// The credential (public data only).
    pub credential: StoredCredential,
    /// When registered.
    pub added_at: i64,
    /// When it was approved: at once while the staff quorum is not formed
    /// yet (setting up), else by a governance quorum of other staff keys
    /// (request `request_id`). None: waiting for that quorum.
    #[serde(default)]
    pub approved_at: Option<i64>,
    /// The request that approves it, once the staff quorum is formed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// It counts for quorums from this time: its approval plus
    /// `quorum.staff_key_hold_seconds` (0 while waiting).
    pub usable_at: i64,
    /// Its counter went backwards: it answers nothing any more.
    #[serde(default)]
    pub suspected_cloned: bool,
    /// Removed (lost, stolen, suspected cloned): it answers nothing, and is
    /// published with this time so that approvals it gave before still
    /// verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<i64>,
}

impl StaffKeyRecord {
    /// Whether the key may answer at `now`, in a store restored at
    /// `restored_at` (0: never): approved, past its hold, not removed nor
    /// suspected cloned, and registered after the restore (a restore could
    /// bring back a key removed since the backup).
    pub fn usable(&self, now: i64, restored_at: i64) -> bool {
        self.approved_at.is_some()
            && now >= self.usable_at
            && !self.suspected_cloned
            && self.removed_at.is_none()
            && self.added_at > restored_at
    }

    /// Approved, not removed, registered after the restore (whether or not
    /// past its hold): it counts towards forming the staff quorum.
    fn standing(&self, restored_at: i64) -> bool {
        self.approved_at.is_some() && !self.suspected_cloned && self.removed_at.is_none() && self.added_at > restored_at
    }
}

impl StaffRecord {
    /// The keys that may answer at `now` (none once removed).
    pub fn usable_keys(&self, now: i64, restored_at: i64) -> Vec<StoredCredential> {
        if self.removed_at.is_some() {
            return Vec::new();
        }
        self.keys
            .iter()
            .filter(|k| k.usable(now, restored_at))
            .map(|k| k.credential.clone())
            .collect()
    }
}

impl Record for StaffRecord {
    const NAME: &'static str = "staff";
    fn format_version(&self) -> u32 {
        self.v
    }
}

/// What a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A user's action (a withdrawal, usually) that policy holds.
    Action,
    /// A change of the policy.
    PolicyChange,
    /// A new staff key, once the staff quorum is formed: it needs the
    /// governance quorum of other staff keys.
    StaffKey,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for staff approvals.
    AwaitingQuorum,
    /// Approved; waiting for its delay (an action's approval is issued with
    /// `nbf`; a policy change applies at `not_before`). Cancellable.
    Delayed,
    /// The approval is issued and valid (no delay, or the delay is over).
    Issued,
    /// Cancelled during its wait.
    Cancelled,
    /// Waited for its quorum too long.
    Expired,
    /// A policy change that took effect.
    Activated,
}

impl RequestState {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            RequestState::AwaitingQuorum => "awaiting_quorum",
            RequestState::Delayed => "delayed",
            RequestState::Issued => "issued",
            RequestState::Cancelled => "cancelled",
            RequestState::Expired => "expired",
            RequestState::Activated => "activated",
        }
    }
}

/// One staff member's approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffApproval {
    /// Who.
    pub staff_id: String,
    /// When.
    pub at: i64,
    /// Their assertion over the request's intent.
    pub evidence: WebauthnEvidence,
}

/// A held request (table `quorum`, key = request id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumRequest {
    /// Record format version.
    pub v: u32,
    /// Its id (`qr_…`).
    pub request_id: String,
    /// What it holds.
    pub kind: RequestKind,
    /// The user whose action it is (empty for a policy change).
    pub user_id: String,
    /// The staff member who proposed a policy change.
    #[serde(default)]
    pub proposed_by: String,
    /// The intent staff sign (a policy change: `change_policy`, the request
    /// id as withdrawal id, the policy's SHA-256 as memo).
    pub intent: Intent,
    /// The quorums it needs.
    pub needs: Vec<QuorumNeed>,
    /// The delay once approved, seconds.
    pub delay_seconds: i64,
    /// Staff approvals so far.
    #[serde(default)]
    pub approvals: Vec<StaffApproval>,
    /// Where it stands.
    pub state: RequestState,
    /// When made.
    pub created_at: i64,
    /// The quorum must be met before this time.
    pub expires_at: i64,
    /// Once approved: the approval's `nbf` / the policy change's effect.
    #[serde(default)]
    pub not_before: i64,
    /// The issued approval's jti.
    #[serde(default)]
    pub jti: String,
    /// The issued approval (compact JWS).
    #[serde(default)]
    pub token: String,
    /// The issued approval's `exp`.
    #[serde(default)]
    pub exp: i64,
    /// What the user's factor proved (RFC 8176).
    #[serde(default)]
    pub amr: Vec<String>,
    /// The user's WebAuthn evidence, when a security key answered.
    #[serde(default)]
    pub user_webauthn: Option<WebauthnEvidence>,
    /// Revocation epochs when made.
    #[serde(default)]
    pub epochs: Epochs,
    /// Who closed it (cancelled it): `user` or `staff:<id>`, or the sweep.
    #[serde(default)]
    pub closed_by: String,
    /// When it was closed.
    #[serde(default)]
    pub closed_at: i64,
    /// A policy change: the proposed policy (TOML as proposed).
    #[serde(default)]
    pub policy_text: String,
    /// A policy change: the version it replaces.
    #[serde(default)]
    pub base_version: u64,
}

impl Record for QuorumRequest {
    const NAME: &'static str = "quorum request";
    fn format_version(&self) -> u32 {
        self.v
    }
}

impl QuorumRequest {
    /// A new request waiting for `needs` (delay, approvals and the rest
    /// empty): the caller sets what its kind adds.
    pub fn new(
        request_id: String,
        kind: RequestKind,
        intent: Intent,
        needs: Vec<QuorumNeed>,
        now: i64,
        expires_at: i64,
    ) -> Self {
        QuorumRequest {
            v: 1,
            request_id,
            kind,
            user_id: String::new(),
            proposed_by: String::new(),
            intent,
            needs,
            delay_seconds: 0,
            approvals: Vec::new(),
            state: RequestState::AwaitingQuorum,
            created_at: now,
            expires_at,
            not_before: 0,
            jti: String::new(),
            token: String::new(),
            exp: 0,
            amr: Vec::new(),
            user_webauthn: None,
            epochs: Epochs::default(),
            closed_by: String::new(),
            closed_at: 0,
            policy_text: String::new(),
            base_version: 0,
        }
    }

    /// The state as seen at `now` (a delayed approval whose `nbf` passed
    /// is issued).
    pub fn state_at(&self, now: i64) -> RequestState {
        match self.state {
            RequestState::Delayed if self.kind == RequestKind::Action && now >= self.not_before => RequestState::Issued,
            s => s,
        }
    }

    /// The distinct staff ids that approved.
    pub fn approvers(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.approvals.iter().map(|a| a.staff_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether every quorum is met.
    pub fn quorum_met(&self) -> bool {
        let ids = self.approvers();
        self.needs
            .iter()
            .all(|n| ids.iter().filter(|s| n.of.iter().any(|o| o == *s)).count() >= n.m as usize)
    }

    /// The intent a staff member signs to cancel this request.
    pub fn cancel_intent(&self) -> Intent {
        Intent {
            action: CANCEL_ACTION.into(),
            user_id: self.user_id.clone(),
            memo: self.request_id.clone(),
            ..Default::default()
        }
    }
}

/// What a staff member decides about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaffDecision {
    /// Counts towards the quorum.
    Approve,
    /// Cancels the request (or the delayed approval).
    Cancel,
}

/// A staff assertion ceremony (table `ceremonies`, key `sd_…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffCeremony {
    /// Record format version.
    pub v: u32,
    /// `decision` or `registration`.
    pub purpose: String,
    /// Who.
    pub staff_id: String,
    /// The request (decisions).
    #[serde(default)]
    pub request_id: String,
    /// The decision (decisions).
    #[serde(default)]
    pub decision: Option<StaffDecision>,
    /// The nonce committed in the challenge (base64url).
    #[serde(default)]
    pub nonce: String,
    /// The WebAuthn ceremony state.
    pub state: String,
    /// Until when.
    pub expires_at: i64,
}

impl Record for StaffCeremony {
    const NAME: &'static str = "staff ceremony";
    fn format_version(&self) -> u32 {
        self.v
    }
}

/// A begun staff ceremony.
#[derive(Debug, Clone)]
pub struct StaffCeremonyStarted {
    /// Its id.
    pub ceremony_id: String,
    /// The WebAuthn options JSON (`{"publicKey": …}`).
    pub options_json: String,
    /// The digest of the intent the key signs (decisions).
    pub intent_sha256: [u8; 32],
    /// The intent the key signs (decisions).
    pub intent: Intent,
    /// Until when.
    pub expires_at: i64,
}

impl Approvals {
    // -----------------------------------------------------------------
    // Staff members
    // -----------------------------------------------------------------

    /// Adds a staff member (no key yet). Their keys count for quorums only
    /// once registered and past `quorum.staff_key_hold_seconds`.
    pub fn add_staff(
        &self,
        actor: &str,
        staff_id: &str,
        role: &str,
        display_name: &str,
        user_id: &str,
    ) -> Result<StaffRecord, Error> {
        check_id("staff_id", staff_id)?;
        if !STAFF_ROLES.contains(&role) {
            return Err(Error::invalid(
                "role",
                format!(
                    "staff members have role 'admin' or 'approver', not '{}'",
                    crate::error::excerpt(role)
                ),
            ));
        }
        if display_name.len() > 64 || display_name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "display_name",
                "at most 64 bytes, no control characters",
            ));
        }
        if !user_id.is_empty() {
            check_id("user_id", user_id)?;
        }
        let now = self.k.now()?;
        if let Some(v) = self.k.store.get(Table::Staff, staff_id.as_bytes())? {
            let old: StaffRecord = codec::decode(&v.value)?;
            if let Some(at) = old.removed_at {
                return Err(Error::refused(
                    Reason::AlreadyEnrolled,
                    format!("staff id '{staff_id}' was removed at {at}; staff ids are never given to someone else, choose another"),
                ));
            }
            return Err(Error::refused(
                Reason::AlreadyEnrolled,
                format!("staff member '{staff_id}' already exists"),
            ));
        }
        let rec = StaffRecord {
            v: 1,
            staff_id: staff_id.into(),
            role: role.into(),
            display_name: if display_name.is_empty() {
                staff_id.into()
            } else {
                display_name.into()
            },
            user_id: user_id.into(),
            created_at: now,
            created_by: actor.into(),
            keys: Vec::new(),
            removed_at: None,
        };
        let mut batch = Batch::new();
        batch.insert(Table::Staff, staff_id.as_bytes(), codec::encode(&rec)?);
        Event::new(EventKind::StaffChanged, "", now, None)
            .with("staff_id", staff_id)
            .with("change", "added")
            .with("role", role)
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, "", "staff.add")
            .with("staff_id", staff_id)
            .with("role", role)
            .with("user_id", user_id)
            .append_to(&mut batch)?;
        self.k.commit(&batch).map_err(|e| match e {
            Error::Conflict(_) => Error::refused(
                Reason::AlreadyEnrolled,
                format!("staff member '{staff_id}' already exists"),
            ),
            other => other,
        })?;
        Ok(rec)
    }

    /// Removes one key of a staff member (`credential_id`), or the staff
    /// member with all their keys (`credential_id` empty). What the removed
    /// key (or staff member) approved on requests still waiting for their
    /// quorum no longer counts; approvals already issued stay (cancel a
    /// delayed one with another key).
    pub fn remove_staff(&self, actor: &str, staff_id: &str, credential_id: &str, reason: &str) -> Result<(), Error> {
        if reason.trim().is_empty() || reason.len() > 512 || reason.chars().any(char::is_control) {
            return Err(Error::invalid(
                "reason",
                "is required (at most 512 bytes, no control characters)",
            ));
        }
        let (mut staff, version) = self.staff(staff_id)?;
        if let Some(at) = staff.removed_at {
            return Err(Error::NotFound(format!(
                "staff member '{staff_id}' was already removed at {at}"
            )));
        }
        let now = self.k.now()?;
        let mut batch = Batch::new();
        let change = if credential_id.is_empty() {
            staff.removed_at = Some(now);
            for k in staff.keys.iter_mut().filter(|k| k.removed_at.is_none()) {
                k.removed_at = Some(now);
            }
            "removed"
        } else {
            let Some(k) = staff
                .keys
                .iter_mut()
                .find(|k| k.credential.credential_id == credential_id && k.removed_at.is_none())
            else {
                return Err(Error::NotFound(format!(
                    "staff member '{staff_id}' has no key {}",
                    crate::error::excerpt(credential_id)
                )));
            };
            k.removed_at = Some(now);
            "key_removed"
        };
        batch.update(Table::Staff, staff_id.as_bytes(), version, codec::encode(&staff)?);
        let withdrawn = self.withdraw_approvals(&mut batch, staff_id, credential_id)?;
        Event::new(EventKind::StaffChanged, "", now, None)
            .with("staff_id", staff_id)
            .with("change", change)
            .with("credential_id", credential_id)
            .with("reason", reason)
            .with("approvals_withdrawn", withdrawn.join(" "))
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, "", "staff.remove")
            .with("approvals_withdrawn", withdrawn.join(" "))
            .with("staff_id", staff_id)
            .with("credential_id", credential_id)
            .with("reason", reason)
            .append_to(&mut batch)?;
        self.k.commit(&batch).map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "staff member '{staff_id}' or a request they approved changed meanwhile; nothing was removed, try again"
            )),
            other => other,
        })?;
        Ok(())
    }

    /// Adds to `batch` the removal of what `staff_id`'s key `credential_id`
    /// (any of their keys when empty) approved on requests still waiting
    /// for their quorum. Returns those requests' ids.
    fn withdraw_approvals(&self, batch: &mut Batch, staff_id: &str, credential_id: &str) -> Result<Vec<String>, Error> {
        let mut withdrawn = Vec::new();
        for (key, v) in self.k.store.scan_prefix(Table::Quorum, b"")? {
            let mut r: QuorumRequest = codec::decode(&v.value)?;
            if r.state != RequestState::AwaitingQuorum {
                continue;
            }
            let before = r.approvals.len();
            r.approvals.retain(|a| {
                a.staff_id != staff_id || !(credential_id.is_empty() || a.evidence.credential_id == credential_id)
            });
            if r.approvals.len() != before {
                withdrawn.push(r.request_id.clone());
                batch.update(Table::Quorum, key, v.version, codec::encode(&r)?);
            }
        }
        Ok(withdrawn)
    }

    /// When the store was restored from a backup (0: never).
    pub(crate) fn restored_at(&self) -> Result<i64, Error> {
        Ok(meta::restore_record(self.k.store.as_ref())?.map_or(0, |r| r.restored_at))
    }

    /// Whether the staff quorum is formed: enough staff members hold
    /// approved keys to meet the governance quorum (recorded once, in
    /// `meta`, at the moment it happened; a restore from a backup opens
    /// the setting-up again). Until then a staff key is approved when
    /// registered; from then on it needs the governance quorum of others.
    pub fn staff_quorum_formed(&self) -> Result<bool, Error> {
        let restored_at = self.restored_at()?;
        Ok(match self.k.store.get(Table::Meta, STAFF_FORMED_KEY)? {
            Some(v) => {
                let at: i64 = serde_json::from_slice(&v.value).unwrap_or(i64::MAX);
                at > restored_at
            }
            None => false,
        })
    }

    /// Refuses staff approvals while the staff quorum is not formed: keys
    /// approved while setting up count only once set-up is over, so that
    /// no key an administrator registered alone approves anything before
    /// (cancelling needs no quorum and stays open).
    fn check_formed(&self) -> Result<(), Error> {
        if self.staff_quorum_formed()? {
            return Ok(());
        }
        Err(Error::refused(
            Reason::QuorumNotMet,
            format!(
                "the staff quorum is not formed yet: fewer than {} staff members hold security keys (the governance quorum); staff approvals count once it is",
                self.policy()?.governance.required
            ),
        ))
    }

    /// Adds the "staff quorum formed" mark to `batch` when `staff` (the
    /// staff as they will be once `batch` commits) can meet the governance
    /// quorum and the mark is not set yet (or predates a restore).
    fn mark_formed(&self, batch: &mut Batch, staff: &[StaffRecord], now: i64) -> Result<(), Error> {
        let restored_at = self.restored_at()?;
        let people = staff
            .iter()
            .filter(|s| s.removed_at.is_none() && s.keys.iter().any(|k| k.standing(restored_at)))
            .count();
        if people < self.policy()?.governance.required as usize {
            return Ok(());
        }
        let at = serde_json::to_vec(&now).map_err(|e| Error::Internal(format!("cannot encode a time: {e}")))?;
        match self.k.store.get(Table::Meta, STAFF_FORMED_KEY)? {
            None => {
                batch.insert(Table::Meta, STAFF_FORMED_KEY, at);
            }
            Some(v) if !self.staff_quorum_formed()? => {
                batch.update(Table::Meta, STAFF_FORMED_KEY, v.version, at);
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// A staff member, or NOT_FOUND naming the id.
    pub fn staff(&self, staff_id: &str) -> Result<(StaffRecord, u64), Error> {
        check_id("staff_id", staff_id)?;
        let v = self.k.store.get(Table::Staff, staff_id.as_bytes())?.ok_or_else(|| {
            Error::NotFound(format!(
                "unknown staff id '{staff_id}'; add the staff member first (sigil staff add)"
            ))
        })?;
        Ok((codec::decode(&v.value)?, v.version))
    }

    /// Every staff member, by id.
    pub fn list_staff(&self) -> Result<Vec<StaffRecord>, Error> {
        let mut out = Vec::new();
        for (_, v) in self.k.store.scan_prefix(Table::Staff, b"")? {
            out.push(codec::decode::<StaffRecord>(&v.value)?);
        }
        out.sort_by(|a, b| a.staff_id.cmp(&b.staff_id));
        Ok(out)
    }

    /// The staff keys verifiers re-check approvals with: every approved key
    /// of every staff member (keys still in their hold are listed: they
    /// have signed nothing yet, but listing them early lets verifiers cache
    /// the set), removed ones with the time of their removal, so that
    /// approvals they gave before it still verify and none after.
    pub fn staff_keys(&self) -> Result<sigil_verify::StaffKeySet, Error> {
        let mut keys = Vec::new();
        for s in self.list_staff()? {
            for k in s.keys.iter().filter(|k| k.approved_at.is_some()) {
                keys.push(sigil_verify::StaffKey {
                    staff_id: s.staff_id.clone(),
                    user_id: s.user_id.clone(),
                    credential_id: k.credential.credential_id.clone(),
                    public_key: k.credential.public_key_sec1.clone(),
                    removed_at: k.removed_at,
                });
            }
        }
        Ok(sigil_verify::StaffKeySet { keys })
    }

    /// Starts the registration of a WebAuthn key for a staff member.
    pub fn begin_staff_key_registration(&self, actor: &str, staff_id: &str) -> Result<StaffCeremonyStarted, Error> {
        let (staff, _) = self.staff(staff_id)?;
        if let Some(at) = staff.removed_at {
            return Err(Error::refused(
                Reason::FactorRevoked,
                format!("staff member '{staff_id}' was removed at {at}"),
            ));
        }
        let now = self.k.now()?;
        let restored_at = self.restored_at()?;
        // Keys from before a restore are registered again (the same
        // authenticator may answer); the others may not register twice.
        let exclude: Vec<StoredCredential> = staff
            .keys
            .iter()
            .filter(|k| k.added_at > restored_at && k.removed_at.is_none())
            .map(|k| k.credential.clone())
            .collect();
        let mut handle = b"staff:".to_vec();
        handle.extend_from_slice(staff_id.as_bytes());
        handle.truncate(64);
        let (options, state) = self.factors.webauthn.begin_registration(
            &handle,
            &format!("staff:{staff_id}"),
            &staff.display_name,
            &exclude,
        )?;
        let ceremony_id = self.k.new_id("sk_")?;
        let expires_at = now + self.factors.webauthn.policy().ceremony_ttl_seconds;
        let c = StaffCeremony {
            v: 1,
            purpose: "registration".into(),
            staff_id: staff_id.into(),
            request_id: String::new(),
            decision: None,
            nonce: String::new(),
            state,
            expires_at,
        };
        let mut batch = Batch::new();
        batch.insert(Table::Ceremonies, ceremony_id.as_bytes(), codec::encode(&c)?);
        meta::index_expiry(&mut batch, Table::Ceremonies, ceremony_id.as_bytes(), expires_at);
        AuditEntry::ok(now, actor, "", "staff.key.begin")
            .with("staff_id", staff_id)
            .with("ceremony_id", ceremony_id.clone())
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
        Ok(StaffCeremonyStarted {
            ceremony_id,
            options_json: options,
            intent_sha256: [0; 32],
            intent: Intent::default(),
            expires_at,
        })
    }

    /// Loads a staff ceremony for `staff_id` (NOT_FOUND, expired, another
    /// staff member's, another purpose).
    fn staff_ceremony(
        &self,
        ceremony_id: &str,
        staff_id: &str,
        purpose: &str,
        now: i64,
    ) -> Result<(StaffCeremony, u64), Error> {
        check_id("ceremony_id", ceremony_id)?;
        let stored = self
            .k
            .store
            .get(Table::Ceremonies, ceremony_id.as_bytes())?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "ceremony '{ceremony_id}' not found (used or expired?); begin again"
                ))
            })?;
        let c: StaffCeremony = codec::decode(&stored.value)
            .map_err(|_| Error::NotFound(format!("ceremony '{ceremony_id}' is not a staff ceremony; begin again")))?;
        if c.purpose != purpose || c.staff_id != staff_id {
            return Err(Error::denied(
                Reason::ChallengeNotForUser,
                format!("ceremony '{ceremony_id}' was not started for this {purpose} by staff member '{staff_id}'"),
            ));
        }
        if now >= c.expires_at {
            return Err(Error::refused(
                Reason::ChallengeExpired,
                format!("ceremony '{ceremony_id}' expired at {}; begin again", c.expires_at),
            ));
        }
        Ok((c, stored.version))
    }

    /// Finishes a staff key registration: the key counts for quorums after
    /// `quorum.staff_key_hold_seconds`.
    pub fn finish_staff_key_registration(
        &self,
        actor: &str,
        staff_id: &str,
        ceremony_id: &str,
        response_json: &str,
    ) -> Result<StaffRecord, Error> {
        if response_json.is_empty() || response_json.len() > crate::factor::webauthn::MAX_RESPONSE_BYTES {
            return Err(Error::invalid("response_json", "is required and at most 64 KiB"));
        }
        let now = self.k.now()?;
        let (staff, sversion) = self.staff(staff_id)?;
        let (c, cversion) = self.staff_ceremony(ceremony_id, staff_id, "registration", now)?;
        let cred = match self.factors.webauthn.finish_registration(&c.state, response_json) {
            Ok(cred) => cred,
            Err(Error::InvalidArgument { reason, .. }) => return Err(Error::invalid("response_json", reason)),
            Err(e) => {
                let mut b = Batch::new();
                b.delete(Table::Ceremonies, ceremony_id.as_bytes(), cversion);
                self.k.audit_refusal(
                    AuditEntry::refused(now, actor, "", "staff.key.add", &e.to_string()).with("staff_id", staff_id),
                    b,
                );
                return Err(e);
            }
        };
        if let Some(at) = staff.removed_at {
            return Err(Error::refused(
                Reason::FactorRevoked,
                format!("staff member '{staff_id}' was removed at {at}"),
            ));
        }
        let restored_at = self.restored_at()?;
        // The same staff member registering again, after a restore, a key
        // they held before it: the stale entry gives way.
        let mut again = false;
        for other in self.list_staff()? {
            if let Some(k) = other.keys.iter().find(|k| {
                k.credential.credential_id == cred.credential_id || k.credential.public_key_sec1 == cred.public_key_sec1
            }) {
                if other.staff_id == staff_id
                    && k.added_at <= restored_at
                    && k.removed_at.is_none()
                    && !k.suspected_cloned
                    && k.credential.credential_id == cred.credential_id
                    && k.credential.public_key_sec1 == cred.public_key_sec1
                {
                    again = true;
                    continue;
                }
                return Err(Error::refused(
                    Reason::AlreadyEnrolled,
                    format!(
                        "this security key (credential {}) is already registered for staff member '{}'; one key belongs to one person",
                        k.credential.credential_id, other.staff_id
                    ),
                ));
            }
        }
        let formed = self.staff_quorum_formed()?;
        let mut rec = staff;
        if again {
            rec.keys.retain(|k| k.credential.credential_id != cred.credential_id);
        }
        let mut batch = Batch::new();
        batch.delete(Table::Ceremonies, ceremony_id.as_bytes(), cversion);
        if !formed {
            // Decided on the mark as read: a formation racing this
            // registration makes it conflict.
            let version = self
                .k
                .store
                .get(Table::Meta, STAFF_FORMED_KEY)?
                .map_or(0, |v| v.version);
            batch.check(Table::Meta, STAFF_FORMED_KEY, version);
        }
        // One key, one person: the credential id and the public key are
        // unique across staff members, atomically (a key registered again
        // after a restore keeps its entries, conditioned on them).
        for index in [
            format!("staff-credential/{}", cred.credential_id),
            format!("staff-public-key/{}", cred.public_key_sec1),
        ] {
            match self.k.store.get(Table::Credentials, index.as_bytes())? {
                Some(v) if again && v.value == staff_id.as_bytes() => {
                    batch.check(Table::Credentials, index.into_bytes(), v.version);
                }
                _ => {
                    batch.insert(Table::Credentials, index.into_bytes(), staff_id.as_bytes().to_vec());
                }
            }
        }
        let mut key = StaffKeyRecord {
            credential: cred.clone(),
            added_at: now,
            approved_at: None,
            request_id: String::new(),
            usable_at: 0,
            suspected_cloned: false,
            removed_at: None,
        };
        let approval = if formed {
            // The staff quorum is formed: the key needs the governance
            // quorum of staff keys before it counts.
            let req = self.staff_key_request(&rec, &cred, now)?;
            key.request_id = req.request_id.clone();
            batch.insert(Table::Quorum, req.request_id.as_bytes(), codec::encode(&req)?);
            Event::new(EventKind::ApprovalHeld, "", now, None)
                .with("request_id", req.request_id.clone())
                .with("act", STAFF_KEY_ACTION)
                .with("staff_id", staff_id)
                .with("credential_id", cred.credential_id.clone())
                .with("quorum", format!("{} of {}", req.needs[0].m, req.needs[0].of.join(" ")))
                .with("notify", "staff")
                .append_to(&mut batch)?;
            format!("request {}", req.request_id)
        } else {
            // Setting up: approved at once, counting after the hold.
            key.approved_at = Some(now);
            key.usable_at = now + self.cfg.quorum.staff_key_hold_seconds;
            "setting up".to_string()
        };
        let usable_at = key.usable_at;
        rec.keys.push(key);
        batch.update(Table::Staff, staff_id.as_bytes(), sversion, codec::encode(&rec)?);
        if !formed {
            // Registrations while setting up are serialised on one record,
            // so that two at once cannot both miss forming the quorum.
            match self.k.store.get(Table::Meta, STAFF_SETUP_KEY)? {
                Some(v) => batch.update(Table::Meta, STAFF_SETUP_KEY, v.version, now.to_string().into_bytes()),
                None => batch.insert(Table::Meta, STAFF_SETUP_KEY, now.to_string().into_bytes()),
            };
            let mut all: Vec<StaffRecord> = self
                .list_staff()?
                .into_iter()
                .filter(|s| s.staff_id != staff_id)
                .collect();
            all.push(rec.clone());
            self.mark_formed(&mut batch, &all, now)?;
        }
        Event::new(EventKind::StaffChanged, "", now, None)
            .with("staff_id", staff_id)
            .with("change", "key_added")
            .with("credential_id", cred.credential_id.clone())
            .with("approved_by", approval.clone())
            .with("usable_at", usable_at.to_string())
            .with("notify", "staff")
            .append_to(&mut batch)?;
        AuditEntry::ok(now, actor, "", "staff.key.add")
            .with("staff_id", staff_id)
            .with("credential_id", cred.credential_id)
            .with("approved_by", approval)
            .with("usable_at", usable_at.to_string())
            .append_to(&mut batch)?;
        self.k.commit(&batch).map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "staff member '{staff_id}' or the ceremony changed meanwhile, or this key was registered by another call; nothing was registered, begin again"
            )),
            other => other,
        })?;
        Ok(rec)
    }

    // -----------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------

    /// A request, or NOT_FOUND naming it.
    pub fn request(&self, request_id: &str) -> Result<(QuorumRequest, u64), Error> {
        check_id("request_id", request_id)?;
        let v = self
            .k
            .store
            .get(Table::Quorum, request_id.as_bytes())?
            .ok_or_else(|| Error::NotFound(format!("request '{request_id}' not found")))?;
        Ok((codec::decode(&v.value)?, v.version))
    }

    /// Requests, newest first: one user's (`user_id`), or all; closed ones
    /// (cancelled, expired, activated, issued and past their delay) only
    /// with `include_closed`.
    pub fn list_requests(&self, user_id: &str, include_closed: bool) -> Result<Vec<QuorumRequest>, Error> {
        if !user_id.is_empty() {
            check_id("user_id", user_id)?;
        }
        let now = self.k.now()?;
        let mut out = Vec::new();
        for (_, v) in self.k.store.scan_prefix(Table::Quorum, b"")? {
            let r: QuorumRequest = codec::decode(&v.value)?;
            if !user_id.is_empty() && r.user_id != user_id {
                continue;
            }
            let open = matches!(r.state_at(now), RequestState::AwaitingQuorum | RequestState::Delayed);
            if open || include_closed {
                out.push(r);
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.request_id.cmp(&a.request_id)));
        Ok(out)
    }

    /// Holds an answered action for its staff quorum: adds the request's
    /// event and audit entry to `batch` and returns the request, for the
    /// caller to insert once it has its final state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hold_for_quorum(
        &self,
        batch: &mut Batch,
        actor: &str,
        ch: &ChallengeRecord,
        challenge_id: &str,
        needs: Vec<QuorumNeed>,
        delay_seconds: i64,
        amr: &[String],
        webauthn: Option<WebauthnEvidence>,
        epochs: Epochs,
        anti_phishing: Option<String>,
        now: i64,
    ) -> Result<QuorumRequest, Error> {
        let request_id = self.k.new_id("qr_")?;
        let req = QuorumRequest {
            user_id: ch.user_id.clone(),
            delay_seconds,
            amr: amr.to_vec(),
            user_webauthn: webauthn,
            epochs,
            ..QuorumRequest::new(
                request_id.clone(),
                RequestKind::Action,
                ch.intent.clone(),
                needs,
                now,
                now + self.cfg.quorum.request_timeout_seconds,
            )
        };
        let rules: Vec<String> = req
            .needs
            .iter()
            .map(|n| format!("{} ({} of {})", n.rule, n.m, n.of.join(" ")))
            .collect();
        Event::new(EventKind::ApprovalHeld, &ch.user_id, now, anti_phishing)
            .with("request_id", request_id.clone())
            .with("act", ch.intent.action.clone())
            .with("asset", ch.intent.asset.clone())
            .with("amount", ch.intent.amount.clone())
            .with("destination", ch.intent.destination.clone())
            .with("quorum", rules.join("; "))
            .with("delay_seconds", delay_seconds.to_string())
            .with("expires_at", req.expires_at.to_string())
            .with("notify", "user staff")
            .append_to(batch)?;
        AuditEntry::ok(now, actor, &ch.user_id, "approval.held")
            .with("challenge_id", challenge_id)
            .with("request_id", request_id)
            .with("act", ch.intent.action.clone())
            .with("intent_sha256", b64url::encode(&ch.intent.digest()))
            .with("quorum", rules.join("; "))
            .with("delay_seconds", delay_seconds.to_string())
            .append_to(batch)?;
        Ok(req)
    }

    /// Signs the approval of an action request whose quorum (if any) is met:
    /// `nbf` = now + delay when there is one, valid for
    /// `quorum.redeem_window_seconds` from then. Returns the token, the
    /// approval record and the claims.
    pub(crate) fn sign_held(&self, req: &QuorumRequest, now: i64) -> Result<(String, ApprovalRecord, Claims), Error> {
        let jti = self.k.new_timed_id("", now)?;
        let nbf = (req.delay_seconds > 0).then(|| now + req.delay_seconds);
        let start = nbf.unwrap_or(now);
        // A delay alone and no quorum: the user's own factor's usual
        // lifetime is too short to wait for; the window applies.
        let exp = start + self.cfg.quorum.redeem_window_seconds;
        let mut amr = req.amr.clone();
        if !req.needs.is_empty() && !amr.iter().any(|a| a == AMR_QUORUM) {
            amr.push(AMR_QUORUM.into());
        }
        let mut seen = std::collections::BTreeSet::new();
        let approvers: Vec<ApproverEvidence> = req
            .approvals
            .iter()
            .filter(|a| seen.insert(a.staff_id.clone()))
            .map(|a| ApproverEvidence {
                staff_id: a.staff_id.clone(),
                webauthn: a.evidence.clone(),
            })
            .collect();
        let claims = Claims {
            iss: self.cfg.approval.issuer.clone(),
            aud: self.cfg.approval.audience.clone(),
            sub: req.user_id.clone(),
            jti: jti.clone(),
            iat: now,
            exp,
            nbf,
            act: req.intent.action.clone(),
            intent_sha256: b64url::encode(&req.intent.digest()),
            intent: req.intent.clone(),
            amr,
            webauthn: req.user_webauthn.clone(),
            approvers,
            quorum: req
                .needs
                .iter()
                .map(|n| QuorumClaim {
                    rule: n.rule.clone(),
                    m: n.m,
                    of: n.of.clone(),
                })
                .collect(),
        };
        let (token, kid) = self.k.signer.sign(&claims)?;
        let record = ApprovalRecord {
            v: APPROVAL_HELD_VERSION,
            user_id: req.user_id.clone(),
            act: claims.act.clone(),
            intent_sha256: claims.intent_sha256.clone(),
            kid,
            iat: now,
            exp,
            redeemed_at: None,
            redeemed_key: None,
            epochs: req.epochs,
            nbf,
            cancelled_at: None,
            request_id: req.request_id.clone(),
        };
        Ok((token, record, claims))
    }

    /// Adds the approval of `req` to `batch` (record, expiry, event) and
    /// moves `req` to DELAYED or ISSUED.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_issued(
        &self,
        batch: &mut Batch,
        req: &mut QuorumRequest,
        token: String,
        record: &ApprovalRecord,
        claims: &Claims,
        anti_phishing: Option<String>,
        now: i64,
    ) -> Result<(), Error> {
        batch.insert(Table::Approvals, claims.jti.as_bytes(), codec::encode(record)?);
        meta::index_expiry(batch, Table::Approvals, claims.jti.as_bytes(), claims.exp);
        // The request is kept `purge_grace` past its approval's expiry.
        meta::index_expiry(batch, Table::Quorum, req.request_id.as_bytes(), claims.exp);
        req.jti = claims.jti.clone();
        req.token = token;
        req.exp = claims.exp;
        req.not_before = claims.nbf.unwrap_or(now);
        req.state = if claims.nbf.is_some() {
            RequestState::Delayed
        } else {
            RequestState::Issued
        };
        Event::new(EventKind::ApprovalIssued, &req.user_id, now, anti_phishing)
            .with("jti", claims.jti.clone())
            .with("act", claims.act.clone())
            .with("asset", req.intent.asset.clone())
            .with("amount", req.intent.amount.clone())
            .with("destination", req.intent.destination.clone())
            .with("request_id", req.request_id.clone())
            .with("not_before", req.not_before.to_string())
            .with("approvers", req.approvers().join(" "))
            .with("notify", "user staff")
            .append_to(batch)?;
        Ok(())
    }

    /// The request that approves `cred`, a new key of `staff`, once the
    /// staff quorum is formed: the governance quorum of the policy in force
    /// (its `staff`, or every staff member with a usable key), each key
    /// signing the new key's credential id and public key.
    fn staff_key_request(
        &self,
        staff: &StaffRecord,
        cred: &StoredCredential,
        now: i64,
    ) -> Result<QuorumRequest, Error> {
        let g = self.policy()?.governance.clone();
        let restored_at = self.restored_at()?;
        // Other staff members: nobody approves their own new key.
        let pool: Vec<String> = if g.staff.is_empty() {
            self.list_staff()?
                .into_iter()
                .filter(|s| s.staff_id != staff.staff_id && !s.usable_keys(now, restored_at).is_empty())
                .map(|s| s.staff_id)
                .collect()
        } else {
            g.staff.iter().filter(|s| **s != staff.staff_id).cloned().collect()
        };
        if (g.required as usize) > pool.len() {
            return Err(Error::refused(
                Reason::QuorumNotMet,
                format!(
                    "a new staff key needs {} staff approvals, but only {} staff member(s) can approve; nothing was registered",
                    g.required,
                    pool.len()
                ),
            ));
        }
        let request_id = self.k.new_id("qr_")?;
        let intent = Intent {
            action: STAFF_KEY_ACTION.into(),
            withdrawal_id: request_id.clone(),
            memo: format!("{} {} {}", staff.staff_id, cred.credential_id, cred.public_key_sec1),
            ..Default::default()
        };
        let needs = vec![QuorumNeed {
            rule: "governance".into(),
            m: g.required,
            of: pool,
        }];
        Ok(QuorumRequest {
            proposed_by: staff.staff_id.clone(),
            ..QuorumRequest::new(
                request_id,
                RequestKind::StaffKey,
                intent,
                needs,
                now,
                now + self.cfg.quorum.request_timeout_seconds,
            )
        })
    }

    /// A new staff key got its quorum: it is approved and counts after the
    /// hold.
    fn approve_staff_key(
        &self,
        batch: &mut Batch,
        owner: &mut StaffRecord,
        req: &mut QuorumRequest,
        now: i64,
    ) -> Result<(), Error> {
        let key = owner
            .keys
            .iter_mut()
            .find(|k| k.request_id == req.request_id && k.removed_at.is_none())
            .ok_or_else(|| {
                Error::refused(
                    Reason::RequestClosed,
                    format!("the key of request '{}' was removed meanwhile", req.request_id),
                )
            })?;
        key.approved_at = Some(now);
        key.usable_at = now + self.cfg.quorum.staff_key_hold_seconds;
        req.state = RequestState::Activated;
        req.closed_by = "quorum".into();
        req.closed_at = now;
        meta::index_expiry(batch, Table::Quorum, req.request_id.as_bytes(), now);
        Event::new(EventKind::StaffChanged, "", now, None)
            .with("staff_id", owner.staff_id.clone())
            .with("change", "key_approved")
            .with("credential_id", key.credential.credential_id.clone())
            .with("request_id", req.request_id.clone())
            .with("approvers", req.approvers().join(" "))
            .with("usable_at", key.usable_at.to_string())
            .with("notify", "staff")
            .append_to(batch)?;
        Ok(())
    }

    /// Refuses a request that no longer accepts decisions at `now` (a
    /// cancellation of an approval already redeemed says so first).
    fn check_open(&self, req: &QuorumRequest, decision: StaffDecision, now: i64) -> Result<(), Error> {
        let id = &req.request_id;
        let restored_at = self.restored_at()?;
        if req.created_at <= restored_at && matches!(req.state, RequestState::AwaitingQuorum | RequestState::Delayed) {
            return Err(Error::refused(
                Reason::Superseded,
                format!(
                    "request '{id}' was made before the store was restored from a backup (at {restored_at}); what happened to it since the backup is lost, so it is closed: ask again"
                ),
            ));
        }
        if decision == StaffDecision::Cancel && !req.jti.is_empty() {
            if let Some(stored) = self.k.store.get(Table::Approvals, req.jti.as_bytes())? {
                let rec: ApprovalRecord = codec::decode(&stored.value)?;
                if let Some(at) = rec.redeemed_at {
                    return Err(Error::refused(
                        Reason::ApprovalAlreadyRedeemed,
                        format!(
                            "the approval of request '{id}' (jti {}) was already redeemed at {at}; it cannot be cancelled",
                            req.jti
                        ),
                    ));
                }
            }
        }
        match (req.state, decision) {
            (RequestState::AwaitingQuorum, _) if now >= req.expires_at => Err(Error::refused(
                Reason::RequestClosed,
                format!(
                    "request '{id}' waited for its quorum until {} and expired",
                    req.expires_at
                ),
            )),
            (RequestState::AwaitingQuorum, _) => Ok(()),
            (RequestState::Delayed, StaffDecision::Cancel) if now < req.not_before => Ok(()),
            (RequestState::Delayed, StaffDecision::Cancel) => Err(Error::refused(
                Reason::RequestClosed,
                format!(
                    "request '{id}' can no longer be cancelled: its delay ended at {}",
                    req.not_before
                ),
            )),
            (RequestState::Delayed | RequestState::Issued, StaffDecision::Approve) => Err(Error::refused(
                Reason::RequestClosed,
                format!("request '{id}' already has its quorum; nothing more to approve"),
            )),
            (RequestState::Issued, StaffDecision::Cancel) => Err(Error::refused(
                Reason::RequestClosed,
                format!("request '{id}' can no longer be cancelled: its approval is issued and valid"),
            )),
            (s, _) => Err(Error::refused(
                if s == RequestState::Cancelled {
                    Reason::ApprovalCancelled
                } else {
                    Reason::RequestClosed
                },
                format!("request '{id}' is {}; nothing more can be decided", s.name()),
            )),
        }
    }

    /// Refuses a staff member who may not approve `req`.
    fn check_may_approve(&self, req: &QuorumRequest, staff: &StaffRecord) -> Result<(), Error> {
        let sid = &staff.staff_id;
        if req.kind == RequestKind::StaffKey && *sid == req.proposed_by {
            return Err(Error::denied(
                Reason::StaffNotAllowed,
                format!("staff member '{sid}' cannot approve their own new key; other staff members do"),
            ));
        }
        if !req.needs.iter().any(|n| n.of.iter().any(|o| o == sid)) {
            let pools: Vec<String> = req
                .needs
                .iter()
                .map(|n| format!("{}: {}", n.rule, n.of.join(", ")))
                .collect();
            return Err(Error::denied(
                Reason::StaffNotAllowed,
                format!(
                    "staff member '{sid}' is not among the approvers of request '{}' ({})",
                    req.request_id,
                    pools.join("; ")
                ),
            ));
        }
        if req.kind == RequestKind::Action
            && (*sid == req.user_id || (!staff.user_id.is_empty() && staff.user_id == req.user_id))
        {
            return Err(Error::denied(
                Reason::StaffNotAllowed,
                format!(
                    "staff member '{sid}' cannot approve their own withdrawal (user '{}')",
                    req.user_id
                ),
            ));
        }
        if req.approvals.iter().any(|a| a.staff_id == *sid) {
            return Err(Error::denied(
                Reason::StaffNotAllowed,
                format!(
                    "staff member '{sid}' already approved request '{}'; one person counts once, whatever keys they hold",
                    req.request_id
                ),
            ));
        }
        Ok(())
    }

    /// Starts a staff decision: an assertion over the request's intent (to
    /// approve) or over its cancel intent (to cancel), with a fresh nonce.
    pub fn begin_staff_decision(
        &self,
        actor: &str,
        request_id: &str,
        staff_id: &str,
        decision: StaffDecision,
    ) -> Result<StaffCeremonyStarted, Error> {
        let (req, _) = self.request(request_id)?;
        let (staff, _) = self.staff(staff_id)?;
        let now = self.k.now()?;
        self.check_open(&req, decision, now)?;
        if decision == StaffDecision::Approve {
            self.check_may_approve(&req, &staff)?;
        }
        let creds = staff.usable_keys(now, self.restored_at()?);
        if creds.is_empty() {
            let live = staff.keys.iter().filter(|k| k.removed_at.is_none());
            let waiting = live.clone().find(|k| k.approved_at.is_none());
            let hint = match (
                live.filter(|k| k.approved_at.is_some())
                    .map(|k| k.usable_at)
                    .filter(|u| *u > now)
                    .min(),
                waiting,
            ) {
                (Some(at), _) => format!("; a key approved recently counts from {at}"),
                (None, Some(k)) => format!(
                    "; its key waits for the staff quorum's approval (request {})",
                    k.request_id
                ),
                (None, None) if staff.removed_at.is_some() => "; they were removed".into(),
                (None, None) => "; register one (sigil staff register-key)".into(),
            };
            return Err(Error::refused(
                Reason::NoUsableFactor,
                format!("staff member '{staff_id}' has no usable security key{hint}"),
            ));
        }
        if decision == StaffDecision::Approve {
            self.check_formed()?;
        }
        let intent = match decision {
            StaffDecision::Approve => req.intent.clone(),
            StaffDecision::Cancel => req.cancel_intent(),
        };
        let digest = intent.digest();
        let nonce = self.k.random(16)?;
        let challenge = sigil_verify::webauthn_challenge(&nonce, &digest);
        let (options, state) = self.factors.webauthn.begin_assertion(&creds, &challenge, true)?;
        let ceremony_id = self.k.new_id("sd_")?;
        let expires_at = now + self.cfg.approval.challenge_ttl_seconds;
        let c = StaffCeremony {
            v: 1,
            purpose: "decision".into(),
            staff_id: staff_id.into(),
            request_id: request_id.into(),
            decision: Some(decision),
            nonce: b64url::encode(&nonce),
            state,
            expires_at,
        };
        let mut batch = Batch::new();
        batch.insert(Table::Ceremonies, ceremony_id.as_bytes(), codec::encode(&c)?);
        meta::index_expiry(&mut batch, Table::Ceremonies, ceremony_id.as_bytes(), expires_at);
        batch.deferred();
        AuditEntry::ok(now, actor, &req.user_id, "staff.decision.begin")
            .with("request_id", request_id)
            .with("staff_id", staff_id)
            .with(
                "decision",
                if decision == StaffDecision::Approve {
                    "approve"
                } else {
                    "cancel"
                },
            )
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
        Ok(StaffCeremonyStarted {
            ceremony_id,
            options_json: options,
            intent_sha256: digest,
            intent,
            expires_at,
        })
    }

    /// Completes a staff decision with the staff member's assertion: an
    /// approval counts (and, once the quorum is met, the approval is
    /// issued or the policy change scheduled); a cancellation cancels.
    pub fn complete_staff_decision(
        &self,
        actor: &str,
        request_id: &str,
        staff_id: &str,
        ceremony_id: &str,
        response_json: &str,
    ) -> Result<QuorumRequest, Error> {
        if response_json.is_empty() {
            return Err(Error::invalid("response_json", "is required"));
        }
        if response_json.len() > crate::factor::webauthn::MAX_RESPONSE_BYTES {
            return Err(Error::invalid("response_json", "is larger than 64 KiB"));
        }
        let now = self.k.now()?;
        let (c, cversion) = self.staff_ceremony(ceremony_id, staff_id, "decision", now)?;
        if c.request_id != request_id {
            return Err(Error::denied(
                Reason::ChallengeNotForUser,
                format!(
                    "ceremony '{ceremony_id}' was started for request '{}', not '{request_id}'",
                    c.request_id
                ),
            ));
        }
        let decision = c.decision.unwrap_or(StaffDecision::Approve);
        let (mut req, rversion) = self.request(request_id)?;
        let (mut staff, sversion) = self.staff(staff_id)?;
        let req_user = req.user_id.clone();
        let refuse = |e: Error| {
            let mut b = Batch::new();
            b.delete(Table::Ceremonies, ceremony_id.as_bytes(), cversion);
            self.k.audit_refusal(
                AuditEntry::refused(now, actor, &req_user, "staff.decision", &e.to_string())
                    .with("request_id", request_id)
                    .with("staff_id", staff_id),
                b,
            );
            e
        };
        self.check_open(&req, decision, now).map_err(&refuse)?;
        if decision == StaffDecision::Approve {
            self.check_may_approve(&req, &staff).map_err(&refuse)?;
            self.check_formed().map_err(&refuse)?;
        }
        let restored_at = self.restored_at()?;
        let creds = staff.usable_keys(now, restored_at);
        let assertion = match self.factors.webauthn.finish_assertion(&c.state, response_json, &creds) {
            Ok(a) => a,
            Err(AssertionError::PossiblyCloned { credential_id }) => {
                let e = Error::denied(
                    Reason::FactorSuspectedCloned,
                    format!("staff key {credential_id} may be cloned (its counter did not increase); it answers nothing any more"),
                );
                self.flag_cloned(actor, staff_id, &credential_id, ceremony_id, cversion, &e, now)?;
                return Err(e);
            }
            Err(AssertionError::Failed(Error::InvalidArgument { reason, .. })) => {
                return Err(Error::invalid("response_json", reason))
            }
            Err(AssertionError::Failed(e)) => return Err(refuse(e)),
        };
        for k in staff
            .keys
            .iter_mut()
            .filter(|k| k.credential.credential_id == assertion.credential_id)
        {
            k.credential.counter = assertion.counter;
        }
        let nonce = b64url::decode(&c.nonce).map_err(|_| Error::Internal("staff ceremony nonce unreadable".into()))?;
        let evidence = assertion.evidence(&nonce);
        let mut batch = Batch::new();
        batch.delete(Table::Ceremonies, ceremony_id.as_bytes(), cversion);
        let snap = if req.kind == RequestKind::Action {
            Some(crate::protect::Snapshot::load(self.k.store.as_ref(), &req.user_id)?)
        } else {
            None
        };
        if let (Some(snap), StaffDecision::Approve) = (&snap, decision) {
            // The user's factors revoked since: nothing is approved for them.
            if snap.epochs() != req.epochs {
                return Err(refuse(Error::refused(
                    Reason::Superseded,
                    format!(
                        "request '{request_id}' died when user '{}''s factors were revoked; they must enroll again and ask anew",
                        req.user_id
                    ),
                )));
            }
            // A revocation racing this decision is caught at redemption:
            // the approval carries the request's epochs.
        }
        let anti_phishing = snap.as_ref().and_then(|s| s.anti_phishing_code());
        let what = match decision {
            StaffDecision::Approve => {
                req.approvals.push(StaffApproval {
                    staff_id: staff_id.into(),
                    at: now,
                    evidence: evidence.clone(),
                });
                Event::new(EventKind::StaffApproved, &req.user_id, now, anti_phishing.clone())
                    .with("request_id", request_id)
                    .with("staff_id", staff_id)
                    .with("approvers", req.approvers().join(" "))
                    .with("notify", "user staff")
                    .append_to(&mut batch)?;
                // Approvals by keys removed or flagged since no longer
                // count, decided on the approvers' records as read (a
                // removal racing this decision makes it conflict).
                self.drop_unusable_approvals(&mut batch, &mut req, staff_id, restored_at)?;
                if req.quorum_met() {
                    match req.kind {
                        RequestKind::Action => {
                            let (token, record, claims) = self.sign_held(&req, now)?;
                            self.add_issued(&mut batch, &mut req, token, &record, &claims, anti_phishing, now)?;
                        }
                        RequestKind::PolicyChange => self.schedule_policy(&mut batch, &mut req, now)?,
                        RequestKind::StaffKey => {
                            let (mut owner, oversion) = self.staff(&req.proposed_by)?;
                            self.approve_staff_key(&mut batch, &mut owner, &mut req, now)
                                .map_err(&refuse)?;
                            batch.update(
                                Table::Staff,
                                req.proposed_by.as_bytes(),
                                oversion,
                                codec::encode(&owner)?,
                            );
                        }
                    }
                }
                "staff.approve"
            }
            StaffDecision::Cancel => {
                self.add_cancel(&mut batch, &mut req, &format!("staff:{staff_id}"), anti_phishing, now)?;
                "staff.cancel"
            }
        };
        batch.update(Table::Staff, staff_id.as_bytes(), sversion, codec::encode(&staff)?);
        batch.update(Table::Quorum, request_id.as_bytes(), rversion, codec::encode(&req)?);
        AuditEntry::ok(now, actor, &req.user_id, what)
            .with("request_id", request_id)
            .with("staff_id", staff_id)
            .with("credential_id", evidence.credential_id.clone())
            .with(
                "intent_sha256",
                b64url::encode(&match decision {
                    StaffDecision::Approve => req.intent.digest(),
                    StaffDecision::Cancel => req.cancel_intent().digest(),
                }),
            )
            .with("state", req.state.name())
            .with("jti", req.jti.clone())
            .append_to(&mut batch)?;
        self.k.commit(&batch).map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "request '{request_id}' or staff member '{staff_id}' changed while deciding (another decision won); nothing was written, begin again"
            )),
            other => other,
        })?;
        tracing::info!(request = %request_id, staff = %staff_id, state = req.state.name(), "staff decision");
        Ok(req)
    }

    /// Drops from `req` the approvals of other staff members (not
    /// `decider`, whose record this decision writes) whose key no longer
    /// stands (removed or flagged), or who were removed, and conditions
    /// `batch` on their records as read.
    fn drop_unusable_approvals(
        &self,
        batch: &mut Batch,
        req: &mut QuorumRequest,
        decider: &str,
        restored_at: i64,
    ) -> Result<(), Error> {
        let others: Vec<String> = req
            .approvers()
            .into_iter()
            .filter(|s| *s != decider)
            .map(String::from)
            .collect();
        for id in others {
            let (rec, version) = self.staff(&id)?;
            batch.check(Table::Staff, id.as_bytes(), version);
            let usable: Vec<&str> = rec
                .keys
                .iter()
                .filter(|k| rec.removed_at.is_none() && k.standing(restored_at))
                .map(|k| k.credential.credential_id.as_str())
                .collect();
            req.approvals
                .retain(|a| a.staff_id != id || usable.contains(&a.evidence.credential_id.as_str()));
        }
        Ok(())
    }

    /// Flags a staff key whose counter went backwards: removed at once (a
    /// write of its owner's record alone, retried on the current record so
    /// that a concurrent decision, maybe by the clone, cannot make the flag
    /// be lost), then what it approved on waiting requests withdrawn (a
    /// second write; should it not land, those approvals still do not
    /// count: a decision completing a quorum drops approvals by flagged
    /// keys).
    #[allow(clippy::too_many_arguments)]
    fn flag_cloned(
        &self,
        actor: &str,
        staff_id: &str,
        credential_id: &str,
        ceremony_id: &str,
        ceremony_version: u64,
        e: &Error,
        now: i64,
    ) -> Result<(), Error> {
        let mut last = None;
        'flagged: {
            for attempt in 0..16 {
                let (mut staff, version) = self.staff(staff_id)?;
                for k in staff
                    .keys
                    .iter_mut()
                    .filter(|k| k.credential.credential_id == credential_id)
                {
                    k.suspected_cloned = true;
                    k.removed_at.get_or_insert(now);
                }
                let mut b = Batch::new();
                if attempt == 0 {
                    b.delete(Table::Ceremonies, ceremony_id.as_bytes(), ceremony_version);
                }
                b.update(Table::Staff, staff_id.as_bytes(), version, codec::encode(&staff)?);
                Event::new(EventKind::StaffChanged, "", now, None)
                    .with("staff_id", staff_id)
                    .with("change", "key_suspected_cloned")
                    .with("credential_id", credential_id)
                    .with("notify", "staff")
                    .append_to(&mut b)?;
                AuditEntry::refused(now, actor, "", "staff.decision", &e.to_string())
                    .with("staff_id", staff_id)
                    .with("credential_id", credential_id)
                    .append_to(&mut b)?;
                match self.k.commit(&b) {
                    Ok(_) => break 'flagged,
                    Err(Error::Conflict(m)) => last = Some(m),
                    Err(other) => return Err(other),
                }
            }
            return Err(Error::Conflict(format!(
                "staff key {credential_id} may be cloned, but flagging it met concurrent changes ({}); try again",
                last.unwrap_or_default()
            )));
        }
        let mut withdrawn = Vec::new();
        for _ in 0..8 {
            let mut b = Batch::new();
            withdrawn = self.withdraw_approvals(&mut b, staff_id, credential_id)?;
            if withdrawn.is_empty() {
                return Ok(());
            }
            Event::new(EventKind::StaffChanged, "", now, None)
                .with("staff_id", staff_id)
                .with("change", "approvals_withdrawn")
                .with("credential_id", credential_id)
                .with("approvals_withdrawn", withdrawn.join(" "))
                .with("notify", "staff")
                .append_to(&mut b)?;
            match self.k.commit(&b) {
                Ok(_) => return Ok(()),
                Err(Error::Conflict(_)) => continue,
                Err(other) => return Err(other),
            }
        }
        tracing::warn!(
            staff_id,
            credential_id,
            requests = %withdrawn.join(" "),
            "a possibly cloned staff key is removed, but withdrawing its approvals kept meeting concurrent changes; they no longer count when a quorum completes"
        );
        Ok(())
    }

    /// Adds the cancellation of `req` to `batch`: the request is cancelled
    /// and, when its approval was issued with a delay, the approval record
    /// too (conditional on it: a redemption racing the cancellation wins or
    /// loses as a whole).
    fn add_cancel(
        &self,
        batch: &mut Batch,
        req: &mut QuorumRequest,
        by: &str,
        anti_phishing: Option<String>,
        now: i64,
    ) -> Result<(), Error> {
        if !req.jti.is_empty() {
            let stored = self.k.store.get(Table::Approvals, req.jti.as_bytes())?.ok_or_else(|| {
                Error::refused(
                    Reason::RequestClosed,
                    format!(
                        "the approval of request '{}' has expired and been purged",
                        req.request_id
                    ),
                )
            })?;
            let mut rec: ApprovalRecord = codec::decode(&stored.value)?;
            if let Some(at) = rec.redeemed_at {
                return Err(Error::refused(
                    Reason::ApprovalAlreadyRedeemed,
                    format!(
                        "the approval of request '{}' (jti {}) was already redeemed at {at}; it cannot be cancelled",
                        req.request_id, req.jti
                    ),
                ));
            }
            rec.cancelled_at = Some(now);
            batch.update(
                Table::Approvals,
                req.jti.as_bytes(),
                stored.version,
                codec::encode(&rec)?,
            );
        }
        req.state = RequestState::Cancelled;
        req.closed_by = by.into();
        req.closed_at = now;
        meta::index_expiry(batch, Table::Quorum, req.request_id.as_bytes(), now);
        Event::new(EventKind::ApprovalCancelled, &req.user_id, now, anti_phishing)
            .with("request_id", req.request_id.clone())
            .with("jti", req.jti.clone())
            .with("by", by)
            .with(
                "kind",
                match req.kind {
                    RequestKind::Action => "action",
                    RequestKind::PolicyChange => "policy_change",
                    RequestKind::StaffKey => "staff_key",
                },
            )
            .with("notify", "user staff")
            .append_to(batch)?;
        Ok(())
    }

    /// Cancels a held request or a delayed approval on the user's behalf:
    /// `approval` is the user's approval of action `cancel_approval` whose
    /// memo is the request id (from BeginApproval + CompleteApproval, so
    /// the user proved a factor); it is redeemed in the same write.
    pub fn cancel_by_user(&self, actor: &str, request_id: &str, approval: &str) -> Result<QuorumRequest, Error> {
        check_id("request_id", request_id)?;
        if approval.is_empty() {
            return Err(Error::invalid(
                "approval",
                "is required: the user's approval of action cancel_approval with the request id as memo",
            ));
        }
        if approval.len() > 64 * 1024 {
            return Err(Error::invalid("approval", "is larger than 64 KiB"));
        }
        let now = self.k.now()?;
        let (mut req, rversion) = self.request(request_id)?;
        if req.kind != RequestKind::Action {
            return Err(Error::invalid(
                "request_id",
                format!("request '{request_id}' is a policy change: staff cancel it with their keys"),
            ));
        }
        let expected = req.cancel_intent();
        let claims = self
            .k
            .signer
            .verifier()
            .verify_for(approval, &expected, now)
            .map_err(verify_error)?;
        self.check_open(&req, StaffDecision::Cancel, now)?;
        let snap = crate::protect::Snapshot::load(self.k.store.as_ref(), &req.user_id)?;
        let mut batch = Batch::new();
        self.add_redeem(&claims, &snap, now, &mut batch)?;
        self.add_cancel(&mut batch, &mut req, "user", snap.anti_phishing_code(), now)?;
        batch.update(Table::Quorum, request_id.as_bytes(), rversion, codec::encode(&req)?);
        AuditEntry::ok(now, actor, &req.user_id, "approval.cancel")
            .with("request_id", request_id)
            .with("jti", req.jti.clone())
            .with("cancel_jti", claims.jti.clone())
            .append_to(&mut batch)?;
        self.k.commit(&batch).map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "request '{request_id}' changed while cancelling (approved, redeemed or cancelled meanwhile?); nothing was written"
            )),
            other => other,
        })?;
        Ok(req)
    }

    /// For BeginApproval of `cancel_approval`: the request must be the
    /// user's and still cancellable.
    pub(crate) fn check_user_may_cancel(&self, user_id: &str, request_id: &str, now: i64) -> Result<(), Error> {
        let (req, _) = self.request(request_id).map_err(|e| match e {
            Error::NotFound(m) => Error::invalid("intent.memo", m),
            other => other,
        })?;
        if req.user_id != user_id || req.kind != RequestKind::Action {
            return Err(Error::invalid(
                "intent.memo",
                format!("request '{request_id}' is not one of user '{user_id}''s"),
            ));
        }
        self.check_open(&req, StaffDecision::Cancel, now)
    }

    /// The signed list of cancelled approvals that have not expired
    /// (compact JWS, `typ` `sigil-cancellations+jwt`).
    pub fn cancellations(&self) -> Result<(String, CancellationList), Error> {
        let now = self.k.now()?;
        let iat = now - self.cfg.quorum.cancellation_list_lag_seconds;
        let mut cancelled = Vec::new();
        for (_, v) in self.k.store.scan_prefix(Table::Quorum, b"")? {
            let r: QuorumRequest = codec::decode(&v.value)?;
            // Every cancelled approval that has not expired at the list's iat.
            if r.state == RequestState::Cancelled && !r.jti.is_empty() && r.exp > iat {
                cancelled.push(r.jti);
            }
        }
        cancelled.sort();
        // Backdated: a cancellation decided before `iat` has surely
        // committed by now, even on another replica.
        let list = CancellationList {
            iss: self.cfg.approval.issuer.clone(),
            aud: self.cfg.approval.audience.clone(),
            iat,
            cancelled,
        };
        let token = self.k.signer.sign_cancellations(&list)?;
        Ok((token, list))
    }

    /// The sweep's part: requests past their quorum deadline expire (with
    /// an event), and policy changes past their delay take effect. Returns
    /// how many requests changed.
    pub fn sweep_requests(&self) -> Result<usize, Error> {
        let now = self.k.now()?;
        let restored_at = self.restored_at()?;
        let mut changed = 0;
        let mut failed = 0;
        for (key, v) in self.k.store.scan_prefix(Table::Quorum, b"")? {
            // One record that cannot be handled (unreadable, a policy that
            // no longer parses) is logged and skipped; the others go on.
            match self.sweep_request(&key, &v, now, restored_at) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                // A decision or another replica's sweep won: the next sweep
                // looks again.
                Err(Error::Conflict(_)) => {}
                Err(e) => {
                    failed += 1;
                    tracing::error!(request = %String::from_utf8_lossy(&key), error = %e, "held request not swept");
                }
            }
        }
        if failed > 0 {
            return Err(Error::Internal(format!(
                "{failed} held request(s) could not be swept (see the log); the others were"
            )));
        }
        Ok(changed)
    }

    /// The sweep of one request; true when it changed.
    fn sweep_request(
        &self,
        key: &[u8],
        v: &crate::store::Versioned,
        now: i64,
        restored_at: i64,
    ) -> Result<bool, Error> {
        let mut r: QuorumRequest = codec::decode(&v.value)?;
        let mut batch = Batch::new();
        let open = matches!(r.state, RequestState::AwaitingQuorum | RequestState::Delayed);
        let anti_phishing = |r: &QuorumRequest| -> Result<Option<String>, Error> {
            if r.user_id.is_empty() {
                return Ok(None);
            }
            Ok(crate::protect::Snapshot::load(self.k.store.as_ref(), &r.user_id)?.anti_phishing_code())
        };
        if open && r.created_at <= restored_at {
            // Made before the store was restored: what happened to it since
            // the backup is lost (a cancellation, a removed key), so it is
            // closed rather than resumed; a delayed approval with it (then
            // in the cancellation lists).
            let by = "the store was restored from a backup";
            if r.kind == RequestKind::Action && r.state == RequestState::Delayed {
                let redeemed = match self.k.store.get(Table::Approvals, r.jti.as_bytes())? {
                    Some(a) => codec::decode::<ApprovalRecord>(&a.value)?.redeemed_at.is_some(),
                    // Purged: a day past its expiry.
                    None => false,
                };
                if redeemed || r.exp <= now {
                    // Redeemed before the backup, or expired (nothing can
                    // redeem it any more): nothing left to close.
                    return Ok(false);
                }
                let code = anti_phishing(&r)?;
                self.add_cancel(&mut batch, &mut r, by, code, now)?;
            } else {
                r.state = RequestState::Cancelled;
                r.closed_by = by.into();
                r.closed_at = now;
                meta::index_expiry(&mut batch, Table::Quorum, key, now);
                Event::new(EventKind::ApprovalCancelled, &r.user_id, now, anti_phishing(&r)?)
                    .with("request_id", r.request_id.clone())
                    .with("by", by)
                    .with("notify", "user staff")
                    .append_to(&mut batch)?;
            }
            AuditEntry::ok(now, "sweep", &r.user_id, "quorum.close")
                .with("request_id", r.request_id.clone())
                .with("reason", "restored")
                .append_to(&mut batch)?;
        } else if r.state == RequestState::AwaitingQuorum && now >= r.expires_at {
            r.state = RequestState::Expired;
            r.closed_by = "sweep".into();
            r.closed_at = now;
            meta::index_expiry(&mut batch, Table::Quorum, key, now);
            Event::new(EventKind::QuorumRequestExpired, &r.user_id, now, anti_phishing(&r)?)
                .with("request_id", r.request_id.clone())
                .with("approvers", r.approvers().join(" "))
                .with("expired_at", r.expires_at.to_string())
                .with("notify", "user staff")
                .append_to(&mut batch)?;
            AuditEntry::ok(now, "sweep", &r.user_id, "quorum.expire")
                .with("request_id", r.request_id.clone())
                .append_to(&mut batch)?;
        } else if r.state == RequestState::Delayed && r.kind == RequestKind::PolicyChange && now >= r.not_before {
            self.activate_policy(&mut batch, &mut r, now)?;
        } else {
            return Ok(false);
        }
        batch.update(Table::Quorum, key.to_vec(), v.version, codec::encode(&r)?);
        self.k.commit(&batch)?;
        Ok(true)
    }
}
