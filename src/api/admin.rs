//! `sigil.v1.AdminService`: revocation, suspension, audit (reading,
//! checkpoints, pruning behind an archive), keys, backup.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::require;
use super::{blocking, status};
use crate::audit::AuditEntry;
use crate::core::Sigil;
use crate::error::Error;
use crate::ops::Scope;
use crate::pb;

/// About how many bytes one `ReadAudit` page carries: far below the 4 MiB
/// a gRPC client accepts by default, whatever the entries hold.
pub const AUDIT_PAGE_BYTES: usize = 1 << 20;

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

type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    type RotateSecretsKeyStream = Stream<pb::RewrapProgress>;
    type BackupStream = Stream<pb::BackupChunk>;

    async fn rotate_approval_key(
        &self,
        req: Request<pb::RotateApprovalKeyRequest>,
    ) -> Result<Response<pb::RotateApprovalKeyResponse>, Status> {
        let role = require(&req, "AdminService/RotateApprovalKey")?;
        let now = req.into_inner().now;
        let s = self.sigil.clone();
        let k = blocking(move || s.keys().rotate_approval_key(role.name(), now)).await?;
        Ok(Response::new(pb::RotateApprovalKeyResponse {
            key: Some(super::convert::key_info(k)),
        }))
    }

    async fn list_approval_keys(
        &self,
        req: Request<pb::ListApprovalKeysRequest>,
    ) -> Result<Response<pb::ListApprovalKeysResponse>, Status> {
        require(&req, "AdminService/ListApprovalKeys")?;
        let s = self.sigil.clone();
        let (ring, _) = blocking(move || s.keys().key_ring()).await?;
        Ok(Response::new(pb::ListApprovalKeysResponse {
            keys: ring.keys.into_iter().map(super::convert::key_info).collect(),
        }))
    }

    async fn rotate_secrets_key(
        &self,
        req: Request<pb::RotateSecretsKeyRequest>,
    ) -> Result<Response<Self::RotateSecretsKeyStream>, Status> {
        let role = require(&req, "AdminService/RotateSecretsKey")?;
        let batch = match req.into_inner().batch_size {
            0 => 500,
            n => n as usize,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let s = self.sigil.clone();
        tokio::task::spawn_blocking(move || {
            // The re-wrap runs to the end even if the caller goes away.
            let send = |p: &crate::keys::RewrapProgress| {
                let _ = tx.blocking_send(Ok(pb::RewrapProgress {
                    from_key: p.from.clone(),
                    to_key: p.to.clone(),
                    moved: p.moved,
                    remaining: p.remaining,
                    done: p.done,
                }));
                true
            };
            if let Err(e) = s.keys().rewrap_secrets(role.name(), batch, send) {
                let _ = tx.blocking_send(Err(status::to_status(e)));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn backup(&self, req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        require(&req, "AdminService/Backup")?;
        let s = self.sigil.clone();
        let bytes = blocking(move || {
            let mut out = Vec::new();
            s.backup(&mut out)?;
            Ok(out)
        })
        .await?;
        let chunks: Vec<Result<pb::BackupChunk, Status>> = bytes
            .chunks(1 << 20)
            .map(|c| Ok(pb::BackupChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
    async fn revoke_factors(
        &self,
        req: Request<pb::RevokeFactorsRequest>,
    ) -> Result<Response<pb::RevokeFactorsResponse>, Status> {
        let role = require(&req, "AdminService/RevokeFactors")?;
        let r = req.into_inner();
        let sc = scope(r.all, r.user_ids)?;
        let s = self.sigil.clone();
        let n = blocking(move || s.ops().revoke_factors(role.name(), sc, &r.reason)).await?;
        Ok(Response::new(pb::RevokeFactorsResponse {
            users: n.map(|n| n as i64).unwrap_or(-1),
        }))
    }

    async fn suspend_approvals(
        &self,
        req: Request<pb::SuspendApprovalsRequest>,
    ) -> Result<Response<pb::SuspendApprovalsResponse>, Status> {
        let role = require(&req, "AdminService/SuspendApprovals")?;
        let r = req.into_inner();
        let sc = scope(r.all, r.user_ids)?;
        let s = self.sigil.clone();
        blocking(move || {
            s.ops()
                .suspend(role.name(), sc, &r.reason, (r.until != 0).then_some(r.until))
        })
        .await?;
        Ok(Response::new(pb::SuspendApprovalsResponse {}))
    }

    async fn resume_approvals(
        &self,
        req: Request<pb::ResumeApprovalsRequest>,
    ) -> Result<Response<pb::ResumeApprovalsResponse>, Status> {
        let role = require(&req, "AdminService/ResumeApprovals")?;
        let r = req.into_inner();
        let sc = scope(r.all, r.user_ids)?;
        let s = self.sigil.clone();
        blocking(move || s.ops().resume(role.name(), sc)).await?;
        Ok(Response::new(pb::ResumeApprovalsResponse {}))
    }

    async fn read_audit(&self, req: Request<pb::ReadAuditRequest>) -> Result<Response<pb::ReadAuditResponse>, Status> {
        require(&req, "AdminService/ReadAudit")?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 1000,
            n if n > 10_000 => return Err(status::to_status(Error::invalid("limit", "at most 10000"))),
            n => n as usize,
        };
        let s = self.sigil.clone();
        let (entries, next, archived) = blocking(move || {
            // Scan forward until `limit` matching entries, a page of about
            // AUDIT_PAGE_BYTES, or the end. The live log starts after the
            // anchor, if entries were archived.
            let archived = s.ops().audit_anchor()?.map_or(0, |a| a.seq);
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut after = r.after_seq.max(archived);
            loop {
                let page = s.ops().audit_entries(after, 1000)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in page {
                    let a = AuditEntry::decode(&e.value)?;
                    let keep = (r.user_id.is_empty() || a.user_id == r.user_id)
                        && (r.from == 0 || a.at >= r.from)
                        && (r.to == 0 || a.at < r.to);
                    if keep {
                        let rec = pb::AuditRecord {
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
                        };
                        let size = prost::Message::encoded_len(&rec) + 8;
                        if !out.is_empty() && bytes + size > AUDIT_PAGE_BYTES {
                            // This entry starts the next page.
                            return Ok((out, e.seq - 1, archived));
                        }
                        bytes += size;
                        out.push(rec);
                        if out.len() == limit {
                            return Ok((out, e.seq, archived));
                        }
                    }
                }
            }
            Ok((out, after, archived))
        })
        .await?;
        Ok(Response::new(pb::ReadAuditResponse {
            entries,
            next_after_seq: next,
            archived_through: archived,
        }))
    }

    async fn get_audit_checkpoints(
        &self,
        req: Request<pb::GetAuditCheckpointsRequest>,
    ) -> Result<Response<pb::GetAuditCheckpointsResponse>, Status> {
        require(&req, "AdminService/GetAuditCheckpoints")?;
        let s = self.sigil.clone();
        let (cps, anchor, deployment) = blocking(move || {
            let anchor = s.ops().audit_anchor()?;
            Ok((s.ops().checkpoints()?, anchor, s.deployment_id()?))
        })
        .await?;
        let key = serde_json::to_string(self.sigil.signer().audit_jwk())
            .map_err(|e| status::to_status(Error::Internal(e.to_string())))?;
        Ok(Response::new(pb::GetAuditCheckpointsResponse {
            checkpoints: cps.into_iter().map(Into::into).collect(),
            audit_key_jwk_json: key,
            anchor: anchor.map(Into::into),
            deployment_id: deployment,
        }))
    }

    async fn checkpoint_audit(
        &self,
        req: Request<pb::CheckpointAuditRequest>,
    ) -> Result<Response<pb::CheckpointAuditResponse>, Status> {
        require(&req, "AdminService/CheckpointAudit")?;
        let seq = req.into_inner().seq;
        let s = self.sigil.clone();
        let c = blocking(move || match seq {
            0 => s.ops().checkpoint_audit(),
            n => s.ops().checkpoint_audit_at(n).map(Some),
        })
        .await?;
        Ok(Response::new(pb::CheckpointAuditResponse {
            checkpoint: c.map(Into::into),
        }))
    }

    async fn prune_audit(
        &self,
        req: Request<pb::PruneAuditRequest>,
    ) -> Result<Response<pb::PruneAuditResponse>, Status> {
        let role = require(&req, "AdminService/PruneAudit")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let (pruned, anchor) = blocking(move || s.ops().prune_audit(role.name(), r.through_seq, &r.chain_hash)).await?;
        Ok(Response::new(pb::PruneAuditResponse {
            pruned,
            anchor: Some(anchor.into()),
        }))
    }
}
