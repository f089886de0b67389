//! Staff quorums: the `approvers` and `quorum` claims of an approval that
//! staff members approved, and their offline re-verification against the
//! staff keys Sigil publishes (`StaffService/GetStaffKeys`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::b64url;
use crate::error::{excerpt, VerifyError};
use crate::jws::Claims;
use crate::webauthn::{verify_webauthn_evidence, WebauthnEvidence};

/// One staff member's approval, as listed in an approval's `approvers`
/// claim: who, and the WebAuthn assertion their key made over
/// `SHA-256("sigil-webauthn-v1" || nonce || intent_sha256)` with its own
/// nonce (the evidence names the credential).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverEvidence {
    /// The staff member's id.
    pub staff_id: String,
    /// Their assertion over this approval's intent.
    pub webauthn: WebauthnEvidence,
}

/// One quorum an approval met, as listed in its `quorum` claim: at least
/// `m` distinct staff members among `of` approved it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumClaim {
    /// The policy rule that asked for it.
    pub rule: String,
    /// How many distinct staff members must approve.
    pub m: u32,
    /// The staff ids that may count.
    pub of: Vec<String>,
}

/// A staff member's published WebAuthn credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffKey {
    /// The staff member's id.
    pub staff_id: String,
    /// The exchange user account the staff member holds, if any: they
    /// may not approve that account's withdrawals.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    /// The credential id (unpadded base64url).
    pub credential_id: String,
    /// The credential's public key: an uncompressed SEC1 P-256 point
    /// (`0x04 || X || Y`, 65 bytes), unpadded base64url.
    pub public_key: String,
    /// When the key was removed (lost, stolen, suspected cloned), if it
    /// was: it verifies only approvals issued before that moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<i64>,
}

/// The staff keys Sigil publishes (`StaffService/GetStaffKeys`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffKeySet {
    /// Every usable staff credential.
    pub keys: Vec<StaffKey>,
}

/// Re-verifies the staff quorums of an approval whose signature and
/// claims [`Verifier::verify`](crate::Verifier::verify) (or one of its
/// siblings) has already checked, given the staff keys Sigil publishes.
///
/// Refuses ([`VerifyError::QuorumNotMet`], [`VerifyError::BadEvidence`],
/// or [`VerifyError::Malformed`] for a malformed quorum or staff key)
/// unless:
/// - every entry of `approvers` names a published credential of its staff
///   member, and its assertion verifies for this approval's intent digest
///   ([`verify_webauthn_evidence`], with `expected_origin` when given):
///   one altered byte in any approver's evidence refuses the approval;
/// - no approver's key was removed (`removed_at`) at or before the
///   approval's `iat`;
/// - no approver is the approval's subject (`sub`) or holds it as their
///   own account (the `user_id` of any of their published keys);
/// - no public key answers for two staff members (a key shared between
///   staff ids is one person, who cannot count twice);
/// - each `quorum` entry is well formed (`m` ≥ 1, `m` ≤ the size of `of`,
///   no repeated staff id) and at least `m` distinct staff members of its
///   `of` are among the approvers (one person counts once whatever number
///   of keys they used);
/// - there are approvers only if there is a quorum.
///
/// Returns the distinct staff ids that approved, sorted.
pub fn verify_quorum(
    claims: &Claims,
    staff: &StaffKeySet,
    expected_origin: Option<&str>,
) -> Result<Vec<String>, VerifyError> {
    if claims.quorum.is_empty() {
        if claims.approvers.is_empty() {
            return Ok(Vec::new());
        }
        return Err(VerifyError::QuorumNotMet(
            "the approval lists approvers but no quorum they answer".to_owned(),
        ));
    }
    let digest = claims.intent.digest();
    let mut keys: BTreeMap<(&str, &str), &StaffKey> = BTreeMap::new();
    // Staff members holding the subject's account through any of their
    // keys: the user_id is the person's, whichever key they approve with.
    let mut holders_of_sub = BTreeSet::new();
    for k in &staff.keys {
        keys.insert((k.staff_id.as_str(), k.credential_id.as_str()), k);
        if !k.user_id.is_empty() && k.user_id == claims.sub {
            holders_of_sub.insert(k.staff_id.as_str());
        }
    }
    let mut approved = BTreeSet::new();
    // Public key (decoded point) -> the staff member it answered for.
    let mut key_owner: BTreeMap<Vec<u8>, &str> = BTreeMap::new();
    for a in &claims.approvers {
        let key = keys
            .get(&(a.staff_id.as_str(), a.webauthn.credential_id.as_str()))
            .ok_or_else(|| {
                VerifyError::QuorumNotMet(format!(
                    "approver {:?} used credential {:?}, which is not among the published staff keys; reload them",
                    excerpt(&a.staff_id),
                    excerpt(&a.webauthn.credential_id)
                ))
            })?;
        if key.removed_at.is_some_and(|at| at <= claims.iat) {
            return Err(VerifyError::QuorumNotMet(format!(
                "approver {:?} used credential {:?}, which was removed before this approval was issued",
                excerpt(&a.staff_id),
                excerpt(&a.webauthn.credential_id)
            )));
        }
        if a.staff_id == claims.sub || holders_of_sub.contains(a.staff_id.as_str()) {
            return Err(VerifyError::QuorumNotMet(format!(
                "approver {:?} is the user whose action this is; nobody approves their own",
                excerpt(&a.staff_id)
            )));
        }
        let point = b64url::decode(&key.public_key).map_err(|e| {
            VerifyError::Malformed(format!(
                "staff key of {:?} is not unpadded base64url: {e}",
                excerpt(&a.staff_id)
            ))
        })?;
        verify_webauthn_evidence(&a.webauthn, &digest, &point, expected_origin).map_err(|e| match e {
            VerifyError::BadEvidence(why) => {
                VerifyError::BadEvidence(format!("approver {:?}: {why}", excerpt(&a.staff_id)))
            }
            other => other,
        })?;
        let owner = *key_owner.entry(point).or_insert(a.staff_id.as_str());
        if owner != a.staff_id {
            return Err(VerifyError::QuorumNotMet(format!(
                "approvers {:?} and {:?} used the same public key; one person counts once",
                excerpt(owner),
                excerpt(&a.staff_id)
            )));
        }
        approved.insert(a.staff_id.as_str());
    }
    for q in &claims.quorum {
        let pool: BTreeSet<&str> = q.of.iter().map(String::as_str).collect();
        if pool.len() != q.of.len() {
            return Err(VerifyError::Malformed(format!(
                "quorum {:?} names a staff member twice",
                excerpt(&q.rule)
            )));
        }
        if q.m == 0 || q.m as usize > pool.len() {
            return Err(VerifyError::Malformed(format!(
                "quorum {:?} asks for {} of {} staff members",
                excerpt(&q.rule),
                q.m,
                pool.len()
            )));
        }
        let count = approved.iter().filter(|s| pool.contains(**s)).count();
        if count < q.m as usize {
            return Err(VerifyError::QuorumNotMet(format!(
                "quorum {:?} needs {} of its {} staff members, {count} approved",
                excerpt(&q.rule),
                q.m,
                pool.len()
            )));
        }
    }
    Ok(approved.into_iter().map(str::to_owned).collect())
}
