//! Protobuf <-> domain conversions. The domain never sees prost types.
use sigil_verify::{Claims, Intent};

use crate::approval::DeviceSignals;
use crate::factor::{FactorRecord, Kind, State};
use crate::pb;

impl From<pb::Intent> for Intent {
    fn from(i: pb::Intent) -> Self {
        Intent {
            action: i.action,
            user_id: i.user_id,
            withdrawal_id: i.withdrawal_id,
            asset: i.asset,
            network: i.network,
            amount: i.amount,
            destination: i.destination,
            memo: i.memo,
        }
    }
}

impl From<Intent> for pb::Intent {
    fn from(i: Intent) -> Self {
        pb::Intent {
            action: i.action,
            user_id: i.user_id,
            withdrawal_id: i.withdrawal_id,
            asset: i.asset,
            network: i.network,
            amount: i.amount,
            destination: i.destination,
            memo: i.memo,
        }
    }
}

impl From<pb::DeviceSignals> for DeviceSignals {
    fn from(d: pb::DeviceSignals) -> Self {
        DeviceSignals {
            jailbroken: d.jailbroken,
            platform: d.platform,
            app_attestation: d.app_attestation,
        }
    }
}

impl From<Kind> for pb::FactorKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Totp => pb::FactorKind::Totp,
            Kind::Webauthn => pb::FactorKind::Webauthn,
            Kind::YubikeyHmac => pb::FactorKind::YubikeyHmac,
            Kind::YubikeyOtp => pb::FactorKind::YubikeyOtp,
        }
    }
}

/// A listed factor, revoked ones marked.
pub fn factor((f, standing): (FactorRecord, crate::enroll::Standing)) -> pb::Factor {
    let mut p = pb::Factor::from(f);
    if standing == crate::enroll::Standing::Revoked {
        p.state = pb::FactorState::Revoked as i32;
    }
    p
}

impl From<crate::protect::address::AddressRecord> for pb::WhitelistedAddress {
    fn from(a: crate::protect::address::AddressRecord) -> Self {
        pb::WhitelistedAddress {
            user_id: a.user_id,
            asset: a.asset,
            network: a.network,
            address: a.address,
            label: a.label,
            added_at: a.added_at,
            usable_at: a.usable_at,
        }
    }
}

impl From<crate::audit::Checkpoint> for pb::AuditCheckpoint {
    fn from(c: crate::audit::Checkpoint) -> Self {
        pb::AuditCheckpoint {
            seq: c.seq,
            hash: c.hash,
            at: c.at,
            kid: c.kid,
            signature: c.signature,
        }
    }
}

impl From<crate::audit::AuditAnchor> for pb::AuditAnchor {
    fn from(a: crate::audit::AuditAnchor) -> Self {
        pb::AuditAnchor {
            seq: a.seq,
            chain_hash: sigil_verify::b64url::decode(&a.hash).unwrap_or_default(),
            checkpoint: Some(a.checkpoint.into()),
        }
    }
}

impl From<FactorRecord> for pb::Factor {
    fn from(f: FactorRecord) -> Self {
        let (credential_id, public_key_jwk, aaguid, backup_eligible) = match f.credential() {
            Some(c) => {
                let jwk = sigil_verify::b64url::decode(&c.public_key_sec1)
                    .ok()
                    .filter(|p| p.len() == 65)
                    .and_then(|p| {
                        let x: [u8; 32] = p[1..33].try_into().ok()?;
                        let y: [u8; 32] = p[33..65].try_into().ok()?;
                        serde_json::to_string(&sigil_verify::Jwk::from_p256_point(&x, &y)).ok()
                    })
                    .unwrap_or_default();
                (
                    c.credential_id.clone(),
                    jwk,
                    c.aaguid.map(|a| a.to_string()).unwrap_or_default(),
                    c.backup_eligible,
                )
            }
            None => (String::new(), String::new(), String::new(), false),
        };
        let kind = pb::FactorKind::from(f.kind()) as i32;
        let yubikey_public_id = f.yubikey().map(|y| y.public_id.clone()).unwrap_or_default();
        pb::Factor {
            factor_id: f.factor_id,
            user_id: f.user_id,
            kind,
            state: match f.state {
                State::Pending => pb::FactorState::Pending,
                State::Active => pb::FactorState::Active,
            } as i32,
            nickname: f.nickname,
            created_at: f.created_at,
            last_used_at: f.last_used_at,
            consecutive_failures: f.failures,
            locked_until: f.locked_until,
            suspected_cloned: f.suspected_cloned,
            credential_id,
            public_key_jwk,
            aaguid,
            backup_eligible,
            yubikey_public_id,
        }
    }
}

impl From<Claims> for pb::ApprovalClaims {
    fn from(c: Claims) -> Self {
        pb::ApprovalClaims {
            iss: c.iss,
            aud: c.aud,
            sub: c.sub,
            jti: c.jti,
            iat: c.iat,
            exp: c.exp,
            act: c.act,
            intent: Some(c.intent.into()),
            intent_sha256: c.intent_sha256,
            amr: c.amr,
        }
    }
}

/// An approval key for the API.
pub fn key_info(k: crate::keys::KeyEntry) -> pb::ApprovalKeyInfo {
    pb::ApprovalKeyInfo {
        kid: k.kid,
        label: k.label,
        state: k.state.name().into(),
        created_at: k.created_at,
        activate_at: k.activate_at,
        retire_at: k.retire_at,
    }
}

impl From<crate::enroll::YubikeyEnrollment> for pb::BeginYubikeyEnrollmentResponse {
    fn from(e: crate::enroll::YubikeyEnrollment) -> Self {
        pb::BeginYubikeyEnrollmentResponse {
            factor_id: e.factor_id,
            challenge: e.challenge,
            confirm_before: e.confirm_before,
        }
    }
}

/// A held request as the API shows it at `now`; the approval token only
/// when `with_token` (the roles that redeem or relay it).
pub fn pending(r: &crate::approval::quorum::QuorumRequest, now: i64, with_token: bool) -> pb::PendingApproval {
    use crate::approval::quorum::{RequestKind, RequestState};
    let state = match r.state_at(now) {
        RequestState::AwaitingQuorum => pb::PendingState::AwaitingQuorum,
        RequestState::Delayed => pb::PendingState::Delayed,
        RequestState::Issued => pb::PendingState::Issued,
        RequestState::Cancelled => pb::PendingState::Cancelled,
        RequestState::Expired => pb::PendingState::Expired,
        RequestState::Activated => pb::PendingState::Activated,
    };
    pb::PendingApproval {
        request_id: r.request_id.clone(),
        kind: match r.kind {
            RequestKind::Action => r.intent.action.clone(),
            RequestKind::PolicyChange => "policy_change".into(),
            RequestKind::StaffKey => "staff_key".into(),
        },
        user_id: r.user_id.clone(),
        intent: Some(r.intent.clone().into()),
        intent_sha256: r.intent.digest().to_vec(),
        state: state as i32,
        quorum: r
            .needs
            .iter()
            .map(|n| pb::QuorumRequirement {
                rule: n.rule.clone(),
                required: n.m,
                staff: n.of.clone(),
            })
            .collect(),
        approvals: r
            .approvals
            .iter()
            .map(|a| pb::StaffApprovalInfo {
                staff_id: a.staff_id.clone(),
                credential_id: a.evidence.credential_id.clone(),
                at: a.at,
            })
            .collect(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        not_before: r.not_before,
        delay_seconds: r.delay_seconds,
        jti: r.jti.clone(),
        approval: if with_token { r.token.clone() } else { String::new() },
        approval_expires_at: r.exp,
        closed_by: r.closed_by.clone(),
        closed_at: r.closed_at,
        policy_text: r.policy_text.clone(),
        proposed_by: r.proposed_by.clone(),
        base_version: r.base_version,
    }
}

/// A staff member as the API shows them.
pub fn staff_member(s: &crate::approval::quorum::StaffRecord) -> pb::StaffMember {
    pb::StaffMember {
        staff_id: s.staff_id.clone(),
        role: s.role.clone(),
        display_name: s.display_name.clone(),
        user_id: s.user_id.clone(),
        created_at: s.created_at,
        keys: s
            .keys
            .iter()
            .map(|k| pb::StaffKeyInfo {
                credential_id: k.credential.credential_id.clone(),
                added_at: k.added_at,
                usable_at: k.usable_at,
                suspected_cloned: k.suspected_cloned,
                public_key: k.credential.public_key_sec1.clone(),
                approved_at: k.approved_at.unwrap_or(0),
                request_id: k.request_id.clone(),
                removed_at: k.removed_at.unwrap_or(0),
            })
            .collect(),
        removed_at: s.removed_at.unwrap_or(0),
    }
}
