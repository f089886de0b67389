//! `sigil.v1.StaffService`: staff members and their keys, staff decisions
//! on held requests, the stored policy and its guarded changes.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::require;
use super::{blocking, convert, status};
use crate::approval::quorum::StaffDecision;
use crate::core::Sigil;
use crate::error::Error;
use crate::pb;

/// `sigil.v1.StaffService`.
#[derive(Clone)]
pub struct StaffApi {
    sigil: Arc<Sigil>,
}

impl StaffApi {
    /// Wraps a Sigil.
    pub fn new(sigil: Arc<Sigil>) -> Self {
        Self { sigil }
    }
}

#[tonic::async_trait]
impl pb::staff_service_server::StaffService for StaffApi {
    async fn add_staff(&self, req: Request<pb::AddStaffRequest>) -> Result<Response<pb::StaffMember>, Status> {
        let role = require(&req, "StaffService/AddStaff")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let rec = blocking(move || {
            s.approvals()
                .add_staff(role.name(), &r.staff_id, &r.role, &r.display_name, &r.user_id)
        })
        .await?;
        Ok(Response::new(convert::staff_member(&rec)))
    }

    async fn begin_staff_key_registration(
        &self,
        req: Request<pb::BeginStaffKeyRegistrationRequest>,
    ) -> Result<Response<pb::BeginStaffKeyRegistrationResponse>, Status> {
        let role = require(&req, "StaffService/BeginStaffKeyRegistration")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let c = blocking(move || s.approvals().begin_staff_key_registration(role.name(), &r.staff_id)).await?;
        Ok(Response::new(pb::BeginStaffKeyRegistrationResponse {
            ceremony_id: c.ceremony_id,
            options_json: c.options_json,
            expires_at: c.expires_at,
        }))
    }

    async fn finish_staff_key_registration(
        &self,
        req: Request<pb::FinishStaffKeyRegistrationRequest>,
    ) -> Result<Response<pb::StaffMember>, Status> {
        let role = require(&req, "StaffService/FinishStaffKeyRegistration")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let rec = blocking(move || {
            s.approvals()
                .finish_staff_key_registration(role.name(), &r.staff_id, &r.ceremony_id, &r.response_json)
        })
        .await?;
        Ok(Response::new(convert::staff_member(&rec)))
    }

    async fn remove_staff(
        &self,
        req: Request<pb::RemoveStaffRequest>,
    ) -> Result<Response<pb::RemoveStaffResponse>, Status> {
        let role = require(&req, "StaffService/RemoveStaff")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        blocking(move || {
            s.approvals()
                .remove_staff(role.name(), &r.staff_id, &r.credential_id, &r.reason)
        })
        .await?;
        Ok(Response::new(pb::RemoveStaffResponse {}))
    }

    async fn list_staff(&self, req: Request<pb::ListStaffRequest>) -> Result<Response<pb::ListStaffResponse>, Status> {
        require(&req, "StaffService/ListStaff")?;
        let s = self.sigil.clone();
        let list = blocking(move || s.approvals().list_staff()).await?;
        Ok(Response::new(pb::ListStaffResponse {
            staff: list.iter().map(convert::staff_member).collect(),
        }))
    }

    async fn get_staff_keys(
        &self,
        req: Request<pb::GetStaffKeysRequest>,
    ) -> Result<Response<pb::GetStaffKeysResponse>, Status> {
        require(&req, "StaffService/GetStaffKeys")?;
        let s = self.sigil.clone();
        let keys = blocking(move || s.approvals().staff_keys()).await?;
        let staff_keys_json = serde_json::to_string(&keys)
            .map_err(|e| status::to_status(Error::Internal(format!("cannot encode the staff keys: {e}"))))?;
        Ok(Response::new(pb::GetStaffKeysResponse { staff_keys_json }))
    }

    async fn begin_staff_decision(
        &self,
        req: Request<pb::BeginStaffDecisionRequest>,
    ) -> Result<Response<pb::BeginStaffDecisionResponse>, Status> {
        let role = require(&req, "StaffService/BeginStaffDecision")?;
        let r = req.into_inner();
        let decision = match pb::StaffDecision::try_from(r.decision) {
            Ok(pb::StaffDecision::Approve) => StaffDecision::Approve,
            Ok(pb::StaffDecision::Cancel) => StaffDecision::Cancel,
            _ => {
                return Err(status::to_status(Error::invalid(
                    "decision",
                    "is required: STAFF_DECISION_APPROVE or STAFF_DECISION_CANCEL",
                )))
            }
        };
        let s = self.sigil.clone();
        let c = blocking(move || {
            s.approvals()
                .begin_staff_decision(role.name(), &r.request_id, &r.staff_id, decision)
        })
        .await?;
        Ok(Response::new(pb::BeginStaffDecisionResponse {
            ceremony_id: c.ceremony_id,
            options_json: c.options_json,
            intent: Some(c.intent.into()),
            intent_sha256: c.intent_sha256.to_vec(),
            expires_at: c.expires_at,
        }))
    }

    async fn complete_staff_decision(
        &self,
        req: Request<pb::CompleteStaffDecisionRequest>,
    ) -> Result<Response<pb::PendingApproval>, Status> {
        let role = require(&req, "StaffService/CompleteStaffDecision")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let (q, now) = blocking(move || {
            let q = s.approvals().complete_staff_decision(
                role.name(),
                &r.request_id,
                &r.staff_id,
                &r.ceremony_id,
                &r.response_json,
            )?;
            Ok((q, s.clock_now()?))
        })
        .await?;
        Ok(Response::new(convert::pending(&q, now, false)))
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Result<Response<pb::GetPolicyResponse>, Status> {
        require(&req, "StaffService/GetPolicy")?;
        let s = self.sigil.clone();
        let (rec, pending, now) = blocking(move || {
            let (rec, _) = s.approvals().policy_record()?;
            let pending: Vec<_> = s
                .approvals()
                .list_requests("", false)?
                .into_iter()
                .filter(|r| r.kind == crate::approval::quorum::RequestKind::PolicyChange)
                .collect();
            Ok((rec, pending, s.clock_now()?))
        })
        .await?;
        Ok(Response::new(pb::GetPolicyResponse {
            version: rec.version,
            policy_text: rec.text,
            sha256: rec.sha256,
            activated_at: rec.activated_at,
            pending_changes: pending.iter().map(|r| convert::pending(r, now, false)).collect(),
        }))
    }

    async fn propose_policy(
        &self,
        req: Request<pb::ProposePolicyRequest>,
    ) -> Result<Response<pb::PendingApproval>, Status> {
        let role = require(&req, "StaffService/ProposePolicy")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let (q, now) = blocking(move || {
            let q = s
                .approvals()
                .propose_policy(role.name(), &r.proposed_by, &r.policy_text)?;
            Ok((q, s.clock_now()?))
        })
        .await?;
        Ok(Response::new(convert::pending(&q, now, false)))
    }
}
