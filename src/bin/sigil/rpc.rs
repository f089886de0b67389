//! Typed calls to the server: one method per RPC the CLI makes, taking
//! plain values and answering the part of the response the commands use,
//! so that the command modules never build a request inline.
use std::path::Path;

use sigil::{pb, Error};
use tonic::transport::Channel;
use tonic::Streaming;

use crate::conn::{Conn, Target};

/// A refused admin or factor call: its gRPC code and message.
fn status_error(s: tonic::Status) -> Error {
    Error::Unavailable(format!("{:?}: {}", s.code(), s.message()))
}

/// A refused public query (`jwks`, `health`): its message alone.
fn message_error(s: tonic::Status) -> Error {
    Error::Unavailable(s.message().to_string())
}

/// The admin service, with the operator's client certificate.
pub struct Admin(pb::admin_service_client::AdminServiceClient<Channel>);

/// Which audit entries [`Admin::read_audit`] returns.
#[derive(Default)]
pub struct AuditFilter {
    /// Only this user's entries (empty: every user's).
    pub user: String,
    /// Only entries at or after this time, Unix seconds (0: unbounded).
    pub from: i64,
    /// Only entries before this time, Unix seconds (0: unbounded).
    pub to: i64,
}

impl Admin {
    /// Connects to the server `conn` resolves to.
    pub async fn connect(conn: &Conn, config: Option<&Path>) -> Result<Self, Error> {
        Self::open(conn.resolve(config)?).await
    }

    /// Connects to an already resolved target.
    pub async fn open(target: Target) -> Result<Self, Error> {
        Ok(Self(pb::admin_service_client::AdminServiceClient::new(
            target.open().await?,
        )))
    }

    /// Revokes every factor of every user (`all`) or of `users`; answers
    /// the number of users affected, negative for all.
    pub async fn revoke_factors(&mut self, all: bool, users: Vec<String>, reason: String) -> Result<i64, Error> {
        let r = self
            .0
            .revoke_factors(pb::RevokeFactorsRequest {
                all,
                user_ids: users,
                reason,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(r.users)
    }

    /// Suspends approvals and redemptions of everyone (`all`) or of
    /// `users`, until `until` (Unix seconds; 0: until resumed).
    pub async fn suspend_approvals(
        &mut self,
        all: bool,
        users: Vec<String>,
        reason: String,
        until: i64,
    ) -> Result<(), Error> {
        self.0
            .suspend_approvals(pb::SuspendApprovalsRequest {
                all,
                user_ids: users,
                reason,
                until,
            })
            .await
            .map_err(status_error)?;
        Ok(())
    }

    /// Lifts the suspension of everyone (`all`) or of `users`.
    pub async fn resume_approvals(&mut self, all: bool, users: Vec<String>) -> Result<(), Error> {
        self.0
            .resume_approvals(pb::ResumeApprovalsRequest { all, user_ids: users })
            .await
            .map_err(status_error)?;
        Ok(())
    }

    /// One page of at most `limit` audit entries after `after_seq` (the
    /// server also ends a page before about 1 MiB); the page's
    /// `next_after_seq` equals `after_seq` when nothing is left.
    pub async fn read_audit(
        &mut self,
        after_seq: u64,
        limit: u32,
        filter: &AuditFilter,
    ) -> Result<pb::ReadAuditResponse, Error> {
        Ok(self
            .0
            .read_audit(pb::ReadAuditRequest {
                after_seq,
                limit,
                user_id: filter.user.clone(),
                from: filter.from,
                to: filter.to,
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Has the server sign a checkpoint of audit entry `seq` (0: the
    /// current head); answers it (none for an empty log).
    pub async fn checkpoint_audit(&mut self, seq: u64) -> Result<Option<pb::AuditCheckpoint>, Error> {
        Ok(self
            .0
            .checkpoint_audit(pb::CheckpointAuditRequest { seq })
            .await
            .map_err(status_error)?
            .into_inner()
            .checkpoint)
    }

    /// Has the server prune the audit entries up to `through`, whose
    /// chain hash the archive holds as `hash`; answers the entries deleted
    /// and the new anchor.
    pub async fn prune_audit(&mut self, through: u64, hash: &[u8; 32]) -> Result<pb::PruneAuditResponse, Error> {
        Ok(self
            .0
            .prune_audit(pb::PruneAuditRequest {
                through_seq: through,
                chain_hash: hash.to_vec(),
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// The signed audit checkpoints and the audit key (JWK JSON).
    pub async fn audit_checkpoints(&mut self) -> Result<pb::GetAuditCheckpointsResponse, Error> {
        Ok(self
            .0
            .get_audit_checkpoints(pb::GetAuditCheckpointsRequest {})
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Starts an approval-key rotation (activating the new key at once
    /// with `now`); answers the new key.
    pub async fn rotate_approval_key(&mut self, now: bool) -> Result<pb::ApprovalKeyInfo, Error> {
        self.0
            .rotate_approval_key(pb::RotateApprovalKeyRequest { now })
            .await
            .map_err(status_error)?
            .into_inner()
            .key
            .ok_or_else(|| Error::Internal("no key in the answer".into()))
    }

    /// Every approval key with its state.
    pub async fn list_approval_keys(&mut self) -> Result<Vec<pb::ApprovalKeyInfo>, Error> {
        Ok(self
            .0
            .list_approval_keys(pb::ListApprovalKeysRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .keys)
    }

    /// Starts (or resumes) re-wrapping every factor secret under a new
    /// HSM key, `batch` records at a time; answers its progress reports.
    pub async fn rotate_secrets_key(&mut self, batch: u32) -> Result<Progress, Error> {
        Ok(Progress(
            self.0
                .rotate_secrets_key(pb::RotateSecretsKeyRequest { batch_size: batch })
                .await
                .map_err(status_error)?
                .into_inner(),
        ))
    }

    /// A consistent backup of the running service's store, all its chunks
    /// put together.
    pub async fn backup(&mut self) -> Result<Vec<u8>, Error> {
        let mut stream = self
            .0
            .backup(pb::BackupRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(status_error)? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }
}

/// The progress reports of a secrets-key rotation, as the server sends them.
pub struct Progress(Streaming<pb::RewrapProgress>);

impl Progress {
    /// The next report; `None` once the server has said everything.
    pub async fn next(&mut self) -> Result<Option<pb::RewrapProgress>, Error> {
        self.0.message().await.map_err(status_error)
    }
}

/// The approval service, with the operator's client certificate.
pub struct Approvals(pb::approval_service_client::ApprovalServiceClient<Channel>);

impl Approvals {
    /// Connects to the server `conn` resolves to.
    pub async fn connect(conn: &Conn, config: Option<&Path>) -> Result<Self, Error> {
        Ok(Self(pb::approval_service_client::ApprovalServiceClient::new(
            conn.resolve(config)?.open().await?,
        )))
    }

    /// The published approval keys, a JWK Set as JSON.
    pub async fn approval_keys(&mut self) -> Result<String, Error> {
        Ok(self
            .0
            .get_approval_keys(pb::GetApprovalKeysRequest {})
            .await
            .map_err(message_error)?
            .into_inner()
            .jwks_json)
    }
}

/// The standard gRPC health service, with the operator's client certificate.
pub struct Health(tonic_health::pb::health_client::HealthClient<Channel>);

impl Health {
    /// Connects to the server `conn` resolves to.
    pub async fn connect(conn: &Conn, config: Option<&Path>) -> Result<Self, Error> {
        Ok(Self(tonic_health::pb::health_client::HealthClient::new(
            conn.resolve(config)?.open().await?,
        )))
    }

    /// The serving status of the server as a whole.
    pub async fn check(&mut self) -> Result<tonic_health::pb::health_check_response::ServingStatus, Error> {
        Ok(self
            .0
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map_err(message_error)?
            .into_inner()
            .status())
    }
}

/// Yubico OTP credentials to register, in either form the server takes.
pub enum OtpCredentials {
    /// One "Yubico OTP" line of the YubiKey Personalization tool's CSV log.
    Csv(String),
    /// The credentials themselves, as written into a key.
    #[cfg_attr(not(feature = "usb"), allow(dead_code))]
    Fields {
        /// Public id, 12 modhex characters.
        public_id: String,
        /// Private id, 6 bytes.
        private_id: Vec<u8>,
        /// AES-128 key, 16 bytes.
        aes_key: Vec<u8>,
    },
}

/// The factor service, with the frontend's client certificate (enrollment
/// is the frontend's; an operator's admin certificate may not enroll).
pub struct Factors(pb::factor_service_client::FactorServiceClient<Channel>);

impl Factors {
    /// Connects as the frontend to the server `conn` resolves to.
    pub async fn connect(conn: &Conn, config: Option<&Path>) -> Result<Self, Error> {
        Ok(Self(pb::factor_service_client::FactorServiceClient::new(
            conn.resolve_as(config, Some("frontend"))?.open().await?,
        )))
    }

    /// Registers a YubiKey HMAC-SHA1 slot holding `secret` as a pending
    /// factor of `user`; answers its id and the challenge to confirm it with.
    #[cfg_attr(not(feature = "usb"), allow(dead_code))]
    pub async fn begin_yubikey_hmac_enrollment(
        &mut self,
        user: &str,
        nickname: String,
        secret: &[u8],
        slot: u8,
        step_up: String,
    ) -> Result<pb::BeginYubikeyEnrollmentResponse, Error> {
        Ok(self
            .0
            .begin_yubikey_hmac_enrollment(pb::BeginYubikeyHmacEnrollmentRequest {
                user_id: user.into(),
                nickname,
                secret: secret.to_vec(),
                slot: u32::from(slot),
                step_up_approval: step_up,
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Registers Yubico OTP credentials as a pending factor of `user`;
    /// answers its id.
    pub async fn begin_yubikey_otp_enrollment(
        &mut self,
        user: &str,
        nickname: String,
        credentials: OtpCredentials,
        step_up: String,
    ) -> Result<pb::BeginYubikeyEnrollmentResponse, Error> {
        let mut request = pb::BeginYubikeyOtpEnrollmentRequest {
            user_id: user.into(),
            nickname,
            step_up_approval: step_up,
            ..Default::default()
        };
        match credentials {
            OtpCredentials::Csv(line) => request.personalization_csv = line,
            OtpCredentials::Fields {
                public_id,
                private_id,
                aes_key,
            } => {
                request.public_id = public_id;
                request.private_id = private_id;
                request.aes_key = aes_key;
            }
        }
        Ok(self
            .0
            .begin_yubikey_otp_enrollment(request)
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Activates the pending HMAC-SHA1 factor with the key's `response`
    /// to its enrollment challenge.
    #[cfg_attr(not(feature = "usb"), allow(dead_code))]
    pub async fn confirm_yubikey_hmac(&mut self, user: &str, factor_id: &str, response: &[u8]) -> Result<(), Error> {
        self.confirm_yubikey(
            user,
            factor_id,
            pb::confirm_yubikey_enrollment_request::Proof::HmacResponse(response.to_vec()),
        )
        .await
    }

    /// Activates the pending Yubico OTP factor with a first `otp`.
    pub async fn confirm_yubikey_otp(&mut self, user: &str, factor_id: &str, otp: String) -> Result<(), Error> {
        self.confirm_yubikey(user, factor_id, pb::confirm_yubikey_enrollment_request::Proof::Otp(otp))
            .await
    }

    /// Activates a pending YubiKey factor with its first proof.
    async fn confirm_yubikey(
        &mut self,
        user: &str,
        factor_id: &str,
        proof: pb::confirm_yubikey_enrollment_request::Proof,
    ) -> Result<(), Error> {
        self.0
            .confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
                user_id: user.into(),
                factor_id: factor_id.into(),
                proof: Some(proof),
            })
            .await
            .map_err(status_error)?;
        Ok(())
    }
}

/// The staff service and the approval service's view of held requests,
/// over one connection with the operator's client certificate: an admin's
/// (adding staff, registering keys, proposing policy) or an approver's
/// (`--cert`/`--key`, or a config whose `[client]` names it; deciding).
pub struct Staff {
    staff: pb::staff_service_client::StaffServiceClient<Channel>,
    approvals: pb::approval_service_client::ApprovalServiceClient<Channel>,
}

impl Staff {
    /// Connects to the server `conn` resolves to.
    pub async fn connect(conn: &Conn, config: Option<&Path>) -> Result<Self, Error> {
        let channel = conn.resolve(config)?.open().await?;
        Ok(Self {
            staff: pb::staff_service_client::StaffServiceClient::new(channel.clone()),
            approvals: pb::approval_service_client::ApprovalServiceClient::new(channel),
        })
    }

    /// Adds a staff member with `role` (`admin` or `approver`).
    pub async fn add_staff(
        &mut self,
        staff_id: &str,
        role: &str,
        display_name: String,
        user_id: String,
    ) -> Result<pb::StaffMember, Error> {
        Ok(self
            .staff
            .add_staff(pb::AddStaffRequest {
                staff_id: staff_id.into(),
                role: role.into(),
                display_name,
                user_id,
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Starts registering a security key for `staff_id`: the ceremony id
    /// and the creation options (`{"publicKey": …}` JSON).
    pub async fn begin_key_registration(
        &mut self,
        staff_id: &str,
    ) -> Result<pb::BeginStaffKeyRegistrationResponse, Error> {
        Ok(self
            .staff
            .begin_staff_key_registration(pb::BeginStaffKeyRegistrationRequest {
                staff_id: staff_id.into(),
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Finishes the registration with the key's response; answers the
    /// staff member with their keys.
    pub async fn finish_key_registration(
        &mut self,
        staff_id: &str,
        ceremony_id: String,
        response_json: String,
    ) -> Result<pb::StaffMember, Error> {
        Ok(self
            .staff
            .finish_staff_key_registration(pb::FinishStaffKeyRegistrationRequest {
                staff_id: staff_id.into(),
                ceremony_id,
                response_json,
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Removes a staff key, or the staff member when `credential_id` is empty.
    pub async fn remove_staff(&mut self, staff_id: &str, credential_id: &str, reason: &str) -> Result<(), Error> {
        self.staff
            .remove_staff(pb::RemoveStaffRequest {
                staff_id: staff_id.into(),
                credential_id: credential_id.into(),
                reason: reason.into(),
            })
            .await
            .map_err(status_error)?;
        Ok(())
    }

    /// Every staff member with their keys.
    pub async fn list_staff(&mut self) -> Result<Vec<pb::StaffMember>, Error> {
        Ok(self
            .staff
            .list_staff(pb::ListStaffRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .staff)
    }

    /// The staff keys verifiers check approvers' evidence with (JSON).
    pub async fn staff_keys(&mut self) -> Result<String, Error> {
        Ok(self
            .staff
            .get_staff_keys(pb::GetStaffKeysRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .staff_keys_json)
    }

    /// Starts `staff_id`'s decision on a request: the ceremony, the
    /// assertion options and the intent the key is to sign.
    pub async fn begin_decision(
        &mut self,
        request_id: &str,
        staff_id: &str,
        decision: pb::StaffDecision,
    ) -> Result<pb::BeginStaffDecisionResponse, Error> {
        Ok(self
            .staff
            .begin_staff_decision(pb::BeginStaffDecisionRequest {
                request_id: request_id.into(),
                staff_id: staff_id.into(),
                decision: decision as i32,
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Completes the decision with the key's assertion; answers the request.
    pub async fn complete_decision(
        &mut self,
        request_id: &str,
        staff_id: &str,
        ceremony_id: String,
        response_json: String,
    ) -> Result<pb::PendingApproval, Error> {
        Ok(self
            .staff
            .complete_staff_decision(pb::CompleteStaffDecisionRequest {
                request_id: request_id.into(),
                staff_id: staff_id.into(),
                ceremony_id,
                response_json,
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// The policy in force and the changes proposed to it.
    pub async fn policy(&mut self) -> Result<pb::GetPolicyResponse, Error> {
        Ok(self
            .staff
            .get_policy(pb::GetPolicyRequest {})
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Proposes `text` as the new policy, by staff member `by`; answers
    /// the request that now waits for the governance quorum.
    pub async fn propose_policy(&mut self, by: &str, text: String) -> Result<pb::PendingApproval, Error> {
        Ok(self
            .staff
            .propose_policy(pb::ProposePolicyRequest {
                proposed_by: by.into(),
                policy_text: text,
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// One held request.
    pub async fn pending(&mut self, request_id: &str) -> Result<pb::PendingApproval, Error> {
        Ok(self
            .approvals
            .get_pending_approval(pb::GetPendingApprovalRequest {
                request_id: request_id.into(),
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Held requests, newest first: `user`'s, or everyone's and the policy
    /// changes (empty `user`); closed ones too with `include_closed`.
    pub async fn list_pending(
        &mut self,
        user: String,
        include_closed: bool,
    ) -> Result<Vec<pb::PendingApproval>, Error> {
        Ok(self
            .approvals
            .list_pending_approvals(pb::ListPendingApprovalsRequest {
                user_id: user,
                include_closed,
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .requests)
    }
}
