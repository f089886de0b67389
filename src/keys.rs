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

use crate::audit::AuditEntry;
use crate::core::Sigil;
use crate::error::Error;
use crate::signer::{PublishedKey, APPROVAL_KEY_PREFIX};
use crate::store::{Batch, Table};

/// Meta key of the key ring.
pub const RING_KEY: &[u8] = b"approval-keys";

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

impl Sigil {
    /// The stored key ring and its version; without one, the configured
    /// key as the only, active key (version 0).
    pub fn key_ring(&self) -> Result<(KeyRing, u64), Error> {
        if let Some(v) = self.store.get(Table::Meta, RING_KEY)? {
            return Ok((crate::protect::decode(&v.value, "key ring")?, v.version));
        }
        let keys = self.signer.keys();
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
        let bytes = crate::protect::encode(ring)?;
        if version == 0 {
            batch.insert(Table::Meta, RING_KEY, bytes);
        } else {
            batch.update(Table::Meta, RING_KEY, version, bytes);
        }
        Ok(())
    }

    /// Publishes the stored ring's keys (startup, and every sweep, so all
    /// replicas follow the same ring).
    pub fn sync_keys(&self) -> Result<(), Error> {
        let (ring, _) = self.key_ring()?;
        self.signer.publish(&ring.published())
    }

    /// Starts a rotation: a new non-extractable key in the HSM, published at
    /// once as `next`, active after the pre-publication delay (at once with
    /// `immediately`). Refused while another rotation is pending.
    pub fn rotate_approval_key(&self, actor: &str, immediately: bool) -> Result<KeyEntry, Error> {
        let now = self.now()?;
        let (mut ring, version) = self.key_ring()?;
        if let Some(n) = ring.keys.iter().find(|k| k.state == KeyState::Next) {
            return Err(Error::FailedPrecondition(format!(
                "a rotation is already pending: key {} becomes active at {}; wait for it (or rotate with --now after it)",
                n.kid, n.activate_at
            )));
        }
        let label = format!(
            "{APPROVAL_KEY_PREFIX}-{now}-{}",
            sigil_verify::b64url::encode(&self.random(4)?)
        );
        let pk = self.signer.hsm().generate_ec_key(&label)?;
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
        if let Err(e) = self.commit(&batch) {
            // Nothing refers to the new key: take it off the token again.
            let _ = self.signer.hsm().destroy_key(&entry.label);
            return Err(match e {
                Error::FailedPrecondition(_) => {
                    Error::FailedPrecondition("the key ring changed concurrently (another rotation?); retry".into())
                }
                other => other,
            });
        }
        self.advance_keys()?;
        self.sync_keys()?;
        tracing::warn!(kid = %entry.kid, activate_at = entry.activate_at, "approval key rotation started");
        Ok(entry)
    }

    /// Applies the transitions that are due: `next` → `active` (the old
    /// active key → `retiring` until every approval it signed has expired),
    /// `retiring` → `retired` (destroyed in the HSM if configured).
    pub fn advance_keys(&self) -> Result<bool, Error> {
        let now = self.now()?;
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
        match self.commit(&batch) {
            Ok(_) => {}
            Err(Error::FailedPrecondition(_)) => return Ok(false), // another replica did it
            Err(e) => return Err(e),
        }
        self.sync_keys()?;
        for label in destroy {
            if let Err(e) = self.signer.hsm().destroy_key(&label) {
                tracing::warn!(error = %e, label, "could not destroy a retired approval key");
            }
        }
        for (kid, state) in changes {
            tracing::warn!(kid, state, "approval key state changed");
        }
        Ok(true)
    }
}
