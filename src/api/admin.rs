//! `sigil.v1.AdminService`: revocation, suspension, audit.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{require, Role};
use super::{blocking, status};
use crate::audit::AuditEntry;
use crate::core::Sigil;
use crate::error::Error;
use crate::pb;
use crate::protect::ops::Scope;

/// `sigil.v1.AdminService`.
#[derive(Clone)]
pub struct AdminApi {
    sigil: Arc<Sigil>,
}

impl AdminApi {
    /// Wraps a Sigil.
    pub fn new(sigil: Arc<Sigil>) -> Self {
        Self { sigil }
    }
}

fn scope(all: bool, users: Vec<String>) -> Result<Scope, Status> {
    match (all, users.is_empty()) {
        (true, true) => Ok(Scope::All),
        (false, false) => Ok(Scope::Users(users)),
        (true, false) => Err(status::to_status(Error::invalid(
            "user_ids",
            "give either all or user_ids, not both",
        ))),
        (false, true) => Err(status::to_status(Error::invalid("user_ids", "name users, or set all"))),
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn revoke_factors(
        &self,
        req: Request<pb::RevokeFactorsRequest>,
    ) -> Result<Response<pb::RevokeFactorsResponse>, Status> {
        let role = require(&req, "RevokeFactors", &[Role::Admin])?;
        let r = req.into_inner();
        let sc = scope(r.all, r.user_ids)?;
        let s = self.sigil.clone();
        let n = blocking(move || s.revoke_factors(role.name(), sc, &r.reason)).await?;
        Ok(Response::new(pb::RevokeFactorsResponse {
            users: n.map(|n| n as i64).unwrap_or(-1),
        }))
    }

    async fn suspend_approvals(
        &self,
        req: Request<pb::SuspendApprovalsRequest>,
    ) -> Result<Response<pb::SuspendApprovalsResponse>, Status> {
        let role = require(&req, "SuspendApprovals", &[Role::Admin])?;
        let r = req.into_inner();
        let sc = scope(r.all, r.user_ids)?;
        let s = self.sigil.clone();
        blocking(move || s.suspend(role.name(), sc, &r.reason, (r.until != 0).then_some(r.until))).await?;
        Ok(Response::new(pb::SuspendApprovalsResponse {}))
    }

    async fn resume_approvals(
        &self,
        req: Request<pb::ResumeApprovalsRequest>,
    ) -> Result<Response<pb::ResumeApprovalsResponse>, Status> {
        let role = require(&req, "ResumeApprovals", &[Role::Admin])?;
        let r = req.into_inner();
        let sc = scope(r.all, r.user_ids)?;
        let s = self.sigil.clone();
        blocking(move || s.resume(role.name(), sc)).await?;
        Ok(Response::new(pb::ResumeApprovalsResponse {}))
    }

    async fn read_audit(&self, req: Request<pb::ReadAuditRequest>) -> Result<Response<pb::ReadAuditResponse>, Status> {
        require(&req, "ReadAudit", &[Role::Admin])?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 1000,
            n if n > 10_000 => return Err(status::to_status(Error::invalid("limit", "at most 10000"))),
            n => n as usize,
        };
        let s = self.sigil.clone();
        let (entries, next) = blocking(move || {
            // Scan forward until `limit` matching entries or the end.
            let mut out = Vec::new();
            let mut after = r.after_seq;
            loop {
                let page = s.audit_entries(after, 1000)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in page {
                    let a = AuditEntry::decode(&e.value)?;
                    let keep = (r.user_id.is_empty() || a.user_id == r.user_id)
                        && (r.from == 0 || a.at >= r.from)
                        && (r.to == 0 || a.at < r.to);
                    if keep {
                        out.push(pb::AuditRecord {
                            seq: e.seq,
                            chain_hash: e.hash.to_vec(),
                            raw: e.value.clone(),
                            at: a.at,
                            actor: a.actor,
                            user_id: a.user_id,
                            action: a.action,
                            outcome: a.outcome,
                            reason: a.reason,
                            details: a.details.into_iter().collect(),
                        });
                        if out.len() == limit {
                            return Ok((out, e.seq));
                        }
                    }
                }
            }
            Ok((out, after))
        })
        .await?;
        Ok(Response::new(pb::ReadAuditResponse {
            entries,
            next_after_seq: next,
        }))
    }

    async fn get_audit_checkpoints(
        &self,
        req: Request<pb::GetAuditCheckpointsRequest>,
    ) -> Result<Response<pb::GetAuditCheckpointsResponse>, Status> {
        require(&req, "GetAuditCheckpoints", &[Role::Admin])?;
        let s = self.sigil.clone();
        let cps = blocking(move || s.checkpoints()).await?;
        let key = serde_json::to_string(self.sigil.signer().audit_jwk())
            .map_err(|e| status::to_status(Error::Internal(e.to_string())))?;
        Ok(Response::new(pb::GetAuditCheckpointsResponse {
            checkpoints: cps.into_iter().map(Into::into).collect(),
            audit_key_jwk_json: key,
        }))
    }

    async fn checkpoint_audit(
        &self,
        req: Request<pb::CheckpointAuditRequest>,
    ) -> Result<Response<pb::CheckpointAuditResponse>, Status> {
        require(&req, "CheckpointAudit", &[Role::Admin])?;
        let s = self.sigil.clone();
        let c = blocking(move || s.checkpoint_audit()).await?;
        Ok(Response::new(pb::CheckpointAuditResponse {
            checkpoint: c.map(Into::into),
        }))
    }
}
