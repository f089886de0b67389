//! Approval-key life cycle: rotation with pre-publication and overlap.
//!
//! ```text
//!   rotate ──▶ next ──(pre-publication delay)──▶ active ──(next activates)──▶ retiring
//!                                                                               │
//!                     (every approval it signed has expired: exp + leeway) ◀────┘
//!                                                   ▼
//!                                                retired (unpublished; destroyed if configured)
//! ```
//! A `next` key is published before it signs, so engines that cache the key
//! set already know it when the first approval signed by it arrives. A
//! `retiring` key is still published but no longer signs. The ring lives in
//! the store (`meta/approval-keys`); every replica's background sweep
//! applies the due transitions and reloads the ring, and every transition is
//! in the audit log.
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::approval::ApprovalConfig;
use crate::audit::AuditEntry;
use crate::error::{Error, Reason};
use crate::factor::Factors;
use crate::kernel::Kernel;
use crate::signer::HsmSection;
use crate::signer::{PublishedKey, APPROVAL_KEY_PREFIX};
use crate::store::{codec, meta};
use crate::store::{Batch, Table};

/// The configuration sections key management uses.
#[derive(Debug, Clone, Default)]
pub struct KeysConfig {
    /// Pre-publication, lifetimes (when a retiring key's approvals expire).
    pub approval: ApprovalConfig,
    /// Key labels.
    pub hsm: HsmSection,
}

/// Approval-key rotation and the secrets key.
pub struct Keys {
    pub(crate) k: Arc<Kernel>,
    pub(crate) factors: Arc<Factors>,
    pub(crate) cfg: KeysConfig,
}

impl Keys {
    /// Key management over the factor service (for re-wrapping secrets).
    pub fn new(k: Arc<Kernel>, factors: Arc<Factors>, cfg: KeysConfig) -> Keys {
        Keys { k, factors, cfg }
    }
}

/// Life-cycle state of an approval key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// Signing.
    Active,
    /// Published, no longer signing, until its approvals have expired.
    Retiring,
    /// Unpublished; never verifies again.
    Retired,
}

impl KeyState {
    /// The name published in the JWK `status` member.
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
        }
    }
}

/// One key of the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// HSM label.
    pub label: String,
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// State.
    pub state: KeyState,
    /// When it was generated.
    pub created_at: i64,
    /// When it becomes (or became) active.
    pub activate_at: i64,
    /// When a retiring key retires (0 otherwise).
    pub retire_at: i64,
}

/// The approval keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    /// Record version.
    pub v: u32,
    /// Keys, oldest first.
    pub keys: Vec<KeyEntry>,
}

impl crate::store::codec::Record for KeyRing {
    const NAME: &'static str = "key ring";
}

impl KeyRing {
    fn published(&self) -> Vec<PublishedKey> {
        self.keys
            .iter()
            .filter(|k| k.state != KeyState::Retired)
            .map(|k| PublishedKey {
                label: k.label.clone(),
                status: k.state.name().into(),
            })
            .collect()
    }
}

/// An unfinished re-wrap: secrets move from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rewrap {
    v: u32,
    from: String,
    to: String,
    started_at: i64,
}

impl crate::store::codec::Record for Rewrap {
    const NAME: &'static str = "rewrap";
}

/// Progress of a re-wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapProgress {
    /// Key the secrets leave.
    pub from: String,
    /// Key they move to.
    pub to: String,
    /// Records moved so far in this run.
    pub moved: u64,
    /// Records still under `from`.
    pub remaining: u64,
    /// Every record moved and the old key destroyed.
    pub done: bool,
}

impl Keys {
    /// The stored key ring and its version; without one, the configured
    /// key as the only, active key (version 0).
    pub fn key_ring(&self) -> Result<(KeyRing, u64), Error> {
        if let Some(v) = self.k.store.get(Table::Meta, meta::KEY_RING)? {
            return Ok((codec::decode(&v.value)?, v.version));
        }
        let keys = self.k.signer.keys();
        if keys.active_label.is_empty() {
            return Err(Error::Unavailable(format!(
                "approval key '{}' is not on token '{}' and no key ring is stored: on a new installation `make hsm` (or `sigil hsm init`) creates it; if it existed before, restore it from the HSM's backup instead of creating another",
                self.cfg.hsm.approval_key_label, self.cfg.hsm.token_label
            )));
        }
        Ok((
            KeyRing {
                v: 1,
                keys: vec![KeyEntry {
                    label: keys.active_label.clone(),
                    kid: keys.active_kid.clone(),
                    state: KeyState::Active,
                    created_at: 0,
                    activate_at: 0,
                    retire_at: 0,
                }],
            },
            0,
        ))
    }

    fn put_ring(&self, batch: &mut Batch, ring: &KeyRing, version: u64) -> Result<(), Error> {
        let bytes = codec::encode(ring)?;
        if version == 0 {
            batch.insert(Table::Meta, meta::KEY_RING, bytes);
        } else {
            batch.update(Table::Meta, meta::KEY_RING, version, bytes);
        }
        Ok(())
    }

    /// Publishes the stored ring's keys (startup, and every sweep, so all
    /// replicas follow the same ring).
    pub fn sync_keys(&self) -> Result<(), Error> {
        let (ring, _) = self.key_ring()?;
        self.k.signer.publish(&ring.published())
    }

    /// Starts a rotation: a new non-extractable key in the HSM, published at
    /// once as `next`, active after the pre-publication delay (at once with
    /// `immediately`). Refused while another rotation is pending.
    pub fn rotate_approval_key(&self, actor: &str, immediately: bool) -> Result<KeyEntry, Error> {
        let now = self.k.now()?;
        let (mut ring, version) = self.key_ring()?;
        if let Some(n) = ring.keys.iter().find(|k| k.state == KeyState::Next) {
            return Err(Error::refused(
                Reason::RotationPending,
                format!(
                    "a rotation is already pending: key {} becomes active at {}; wait for it (or rotate with --now after it)",
                    n.kid, n.activate_at
                ),
            )
            .retry_at(n.activate_at, now));
        }
        let label = format!(
            "{APPROVAL_KEY_PREFIX}-{now}-{}",
            sigil_verify::b64url::encode(&self.k.random(4)?)
        );
        let pk = self.k.signer.hsm().generate_ec_key(&label)?;
        let kid = sigil_verify::Jwk::from_p256_point(&pk.x, &pk.y).kid;
        let delay = if immediately {
            0
        } else {
            self.cfg.approval.key_prepublish_seconds
        };
        let entry = KeyEntry {
            label,
            kid,
            state: KeyState::Next,
            created_at: now,
            activate_at: now + delay,
            retire_at: 0,
        };
        ring.v = 1;
        ring.keys.push(entry.clone());
        let mut batch = Batch::new();
        self.put_ring(&mut batch, &ring, version)?;
        AuditEntry::ok(now, actor, "", "keys.rotate")
            .with("kid", entry.kid.clone())
            .with("activate_at", entry.activate_at.to_string())
            .append_to(&mut batch)?;
        if let Err(e) = self.k.commit(&batch) {
            // Nothing refers to the new key: take it off the token again.
            let _ = self.k.signer.hsm().destroy_key(&entry.label);
            return Err(match e {
                Error::Conflict(_) => {
                    Error::Conflict("the key ring changed concurrently (another rotation?); retry".into())
                }
                other => other,
            });
        }
        self.advance_keys()?;
        self.sync_keys()?;
        tracing::warn!(kid = %entry.kid, activate_at = entry.activate_at, "approval key rotation started");
        // Answer with the key as it stands now (active already with `immediately`).
        let (ring, _) = self.key_ring()?;
        Ok(ring.keys.into_iter().find(|k| k.kid == entry.kid).unwrap_or(entry))
    }

    /// Applies the transitions that are due: `next` → `active` (the old
    /// active key → `retiring` until every approval it signed has expired),
    /// `retiring` → `retired` (destroyed in the HSM if configured).
    pub fn advance_keys(&self) -> Result<bool, Error> {
        let now = self.k.now()?;
        let (mut ring, version) = self.key_ring()?;
        let mut changes: Vec<(String, &'static str)> = Vec::new();
        let mut destroy = Vec::new();
        if let Some(i) = ring
            .keys
            .iter()
            .position(|k| k.state == KeyState::Next && k.activate_at <= now)
        {
            let overlap = self.cfg.approval.ttl_seconds + self.cfg.approval.leeway_seconds;
            for k in ring.keys.iter_mut().filter(|k| k.state == KeyState::Active) {
                k.state = KeyState::Retiring;
                k.retire_at = now + overlap;
                changes.push((k.kid.clone(), "retiring"));
            }
            ring.keys[i].state = KeyState::Active;
            changes.push((ring.keys[i].kid.clone(), "active"));
        }
        for k in ring
            .keys
            .iter_mut()
            .filter(|k| k.state == KeyState::Retiring && k.retire_at <= now)
        {
            k.state = KeyState::Retired;
            changes.push((k.kid.clone(), "retired"));
            if self.cfg.approval.destroy_retired_keys {
                destroy.push(k.label.clone());
            }
        }
        if changes.is_empty() {
            return Ok(false);
        }
        ring.v = 1;
        let mut batch = Batch::new();
        self.put_ring(&mut batch, &ring, version)?;
        for (kid, state) in &changes {
            AuditEntry::ok(now, "system", "", "keys.transition")
                .with("kid", kid.clone())
                .with("state", *state)
                .append_to(&mut batch)?;
        }
        match self.k.commit(&batch) {
            Ok(_) => {}
            Err(Error::Conflict(_)) => return Ok(false), // another replica did it
            Err(e) => return Err(e),
        }
        self.sync_keys()?;
        for label in destroy {
            if let Err(e) = self.k.signer.hsm().destroy_key(&label) {
                tracing::warn!(error = %e, label, "could not destroy a retired approval key");
            }
        }
        for (kid, state) in changes {
            tracing::warn!(kid, state, "approval key state changed");
        }
        Ok(true)
    }
}

impl Keys {
    /// Applies the stored secrets-key label (after a re-wrap, new secrets
    /// use the new key, also after a restart).
    pub fn sync_secrets_key(&self) -> Result<(), Error> {
        if let Some(r) = self.k.store.get(Table::Meta, meta::SECRETS_REWRAP)? {
            let r: Rewrap = codec::decode(&r.value)?;
            return self.k.signer.set_secrets_label(&r.to);
        }
        if let Some(v) = self.k.store.get(Table::Meta, meta::SECRETS_KEY)? {
            let label =
                String::from_utf8(v.value).map_err(|_| Error::Internal("secrets key label unreadable".into()))?;
            return self.k.signer.set_secrets_label(&label);
        }
        self.k.signer.set_secrets_label(&self.cfg.hsm.secrets_key_label)
    }

    /// Re-wraps every factor secret under a new HSM AES key, in batches of
    /// `batch_size`, online: each record moves in one conditional write, so
    /// verification keeps working and no record is ever under two keys.
    /// Resumable: an interrupted run leaves its state in the store and the
    /// next call continues with the same new key. `progress` is called after
    /// every batch; returning false stops (as a crash would) and leaves the
    /// rest for a later call. The old key is destroyed after the last record
    /// moved.
    pub fn rewrap_secrets(
        &self,
        actor: &str,
        batch_size: usize,
        mut progress: impl FnMut(&RewrapProgress) -> bool,
    ) -> Result<RewrapProgress, Error> {
        let batch_size = batch_size.clamp(1, 10_000);
        let now = self.k.now()?;
        let state = match self.k.store.get(Table::Meta, meta::SECRETS_REWRAP)? {
            Some(v) => codec::decode::<Rewrap>(&v.value)?,
            None => {
                let from = self.k.signer.secrets_label();
                let to = format!(
                    "sigil-secrets-{now}-{}",
                    sigil_verify::b64url::encode(&self.k.random(4)?)
                );
                // The HSM must work before anything is written: make the new key
                // and move one secret through it (in memory only).
                self.k.signer.hsm().generate_aes_key(&to)?;
                let probe = self
                    .k
                    .store
                    .scan_prefix(Table::Factors, b"")?
                    .into_iter()
                    .map(|(_, v)| crate::factor::FactorRecord::decode(&v))
                    .collect::<Result<Vec<_>, Error>>()?
                    .into_iter()
                    .find(|f| f.secret().is_some_and(|w| w.key_label == from));
                if let Some(f) = probe {
                    if let Err(e) = self.factors.rewrapped(&f, &to) {
                        let _ = self.k.signer.hsm().destroy_key(&to);
                        return Err(e);
                    }
                }
                let st = Rewrap {
                    v: 1,
                    from,
                    to,
                    started_at: now,
                };
                let mut batch = Batch::new();
                batch.insert(Table::Meta, meta::SECRETS_REWRAP, codec::encode(&st)?);
                AuditEntry::ok(now, actor, "", "keys.rewrap.start")
                    .with("from", st.from.clone())
                    .with("to", st.to.clone())
                    .append_to(&mut batch)?;
                if let Err(e) = self.k.commit(&batch) {
                    let _ = self.k.signer.hsm().destroy_key(&st.to);
                    return Err(e);
                }
                st
            }
        };
        self.k.signer.set_secrets_label(&state.to)?;
        let mut report = RewrapProgress {
            from: state.from.clone(),
            to: state.to.clone(),
            moved: 0,
            remaining: 0,
            done: false,
        };
        loop {
            let pending: Vec<(Vec<u8>, crate::factor::FactorRecord, u64)> = self
                .k
                .store
                .scan_prefix(Table::Factors, b"")?
                .into_iter()
                .map(|(k, v)| Ok((k, crate::factor::FactorRecord::decode(&v)?, v.version)))
                .collect::<Result<Vec<_>, Error>>()?
                .into_iter()
                .filter(|(_, f, _)| f.secret().is_some_and(|w| w.key_label == state.from))
                .collect();
            report.remaining = pending.len() as u64;
            if pending.is_empty() {
                break;
            }
            // One scan, then the records in batches; a batch that meets a
            // concurrent update is left for the next scan.
            for chunk in pending.chunks(batch_size) {
                let mut batch = Batch::new();
                for (k, f, version) in chunk {
                    let moved = self.factors.rewrapped(f, &state.to)?;
                    batch.update(Table::Factors, k.clone(), *version, moved.encode()?);
                }
                let n = batch.ops.len() as u64;
                match self.k.commit(&batch) {
                    Ok(_) => {
                        report.moved += n;
                        report.remaining = report.remaining.saturating_sub(n);
                    }
                    Err(Error::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                if !progress(&report) {
                    return Ok(report);
                }
            }
        }
        // Every record moved: the new key is the secrets key; the old one goes.
        let mut batch = Batch::new();
        let stored = self
            .k
            .store
            .get(Table::Meta, meta::SECRETS_REWRAP)?
            .ok_or_else(|| Error::Internal("re-wrap state vanished".into()))?;
        batch.delete(Table::Meta, meta::SECRETS_REWRAP, stored.version);
        match self.k.store.get(Table::Meta, meta::SECRETS_KEY)? {
            Some(v) => batch.update(Table::Meta, meta::SECRETS_KEY, v.version, state.to.clone().into_bytes()),
            None => batch.insert(Table::Meta, meta::SECRETS_KEY, state.to.clone().into_bytes()),
        };
        AuditEntry::ok(self.k.now()?, actor, "", "keys.rewrap.done")
            .with("from", state.from.clone())
            .with("to", state.to.clone())
            .append_to(&mut batch)?;
        self.k.commit(&batch)?;
        // A secret wrapped under the old key by an enrollment that read the
        // label just before the switch may have landed after the last scan:
        // move any such straggler before the old key goes.
        for (k, v) in self.k.store.scan_prefix(Table::Factors, b"")? {
            // Unreadable records stop the re-wrap: the old key must not go
            // while a secret it wraps might remain.
            let f = crate::factor::FactorRecord::decode(&v)?;
            if f.secret().is_none_or(|w| w.key_label != state.from) {
                continue;
            }
            let moved = self.factors.rewrapped(&f, &state.to)?;
            let mut b = Batch::new();
            b.update(Table::Factors, k, v.version, moved.encode()?);
            self.k.commit(&b)?;
            report.moved += 1;
        }
        if self.k.signer.hsm().key_exists(&state.from)? {
            self.k.signer.hsm().destroy_key(&state.from)?;
        }
        report.done = true;
        progress(&report);
        tracing::warn!(from = %state.from, to = %state.to, "factor secrets re-wrapped; old key destroyed");
        Ok(report)
    }
}
