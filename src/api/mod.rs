//! The gRPC layer: services, role guard, conversions, error mapping.
//!
//! Each handler checks the caller's role, converts the request, runs the
//! domain operation and converts the answer. Most operations run on a
//! blocking thread (they talk to the HSM and wait for durable writes). The
//! approval operations, the hot path, run on the async worker unless
//! `hsm.offload_calls` is set, and wait for their writes' sync without
//! holding a thread ([`approval_call`]).
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::approval::Proof;
use crate::core::Sigil;
use crate::error::Error;
use crate::pb;
use auth::require;

pub mod account;
pub mod admin;
pub mod auth;
pub mod codec;
pub mod convert;
pub mod events;
pub mod roles;
pub mod staff;
pub mod status;

pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| {
            status::to_status(Error::Internal(
                "request worker stopped unexpectedly; nothing was approved".into(),
            ))
        })?
        .map_err(status::to_status)
}

/// Runs an approval operation (BeginApproval, CompleteApproval,
/// RedeemApproval). With `hsm.offload_calls` off it runs right here on the
/// async worker: its HSM calls are CPU work, and its commits return once
/// applied, their sync awaited below without holding a thread. The reply,
/// an approval or a refusal, leaves only once every write the operation
/// made is durable; if that fails the reply is `UNAVAILABLE` instead.
pub(crate) async fn approval_call<T, F>(sigil: &Sigil, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    if sigil.config().hsm.offload_calls || sigil.store().blocks_caller() {
        return blocking(f).await;
    }
    let (out, ticket) = crate::store::collect_durability(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    if let Err(e) = ticket.durable().await {
        return Err(status::to_status(Error::from(e)));
    }
    match out {
        Ok(r) => r.map_err(status::to_status),
        Err(_) => Err(status::to_status(Error::Internal(
            "request worker stopped unexpectedly; nothing was approved".into(),
        ))),
    }
}

/// Counts a refused approval call (`stage`: begin, complete, redeem) by
/// the reason its status names (`UNKNOWN` for a status without one, which
/// Sigil never sends).
/// A TOTP proof as the core takes it (an empty factor id: the user's only one).
fn totp_proof(t: pb::TotpProof) -> Proof {
    Proof::Totp {
        code: t.code,
        factor_id: (!t.factor_id.is_empty()).then_some(t.factor_id),
    }
}

/// The answer to CompleteApproval and Approve, counted as issued.
fn issued(i: crate::approval::Issued, kind: crate::factor::Kind) -> Response<pb::CompleteApprovalResponse> {
    crate::metrics::approval_issued(kind.name());
    let pending = i.request.as_ref().map(|r| convert::pending(r, r.created_at, true));
    Response::new(pb::CompleteApprovalResponse {
        approval: i.token,
        jti: i.jti,
        expires_at: i.expires_at,
        amr: i.amr,
        pending,
        not_before: i.not_before.unwrap_or(0),
    })
}

fn count_refusal(stage: &str, st: &Status) {
    use tonic_types::StatusExt;
    let reason = st
        .get_error_details()
        .error_info()
        .and_then(|i| crate::error::Reason::parse(&i.reason))
        .map_or("UNKNOWN", |r| r.as_str());
    crate::metrics::approval_refused(stage, reason);
}

/// `sigil.v1.FactorService`.
#[derive(Clone)]
pub struct FactorApi {
    sigil: Arc<Sigil>,
}

impl FactorApi {
    /// Wraps a Sigil.
    pub fn new(sigil: Arc<Sigil>) -> Self {
        Self { sigil }
    }
}

#[tonic::async_trait]
impl pb::factor_service_server::FactorService for FactorApi {
    async fn begin_totp_enrollment(
        &self,
        req: Request<pb::BeginTotpEnrollmentRequest>,
    ) -> Result<Response<pb::BeginTotpEnrollmentResponse>, Status> {
        let role = require(&req, "FactorService/BeginTotpEnrollment")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let e = blocking(move || {
            s.enroll().begin_totp_enrollment(
                role.name(),
                &r.user_id,
                &r.nickname,
                &r.account_name,
                &r.step_up_approval,
            )
        })
        .await?;
        Ok(Response::new(pb::BeginTotpEnrollmentResponse {
            factor_id: e.factor_id.clone(),
            secret_base32: e.secret_base32.clone(),
            otpauth_uri: e.otpauth_uri.clone(),
            qr_svg: e.qr_svg.clone(),
            digits: crate::factor::totp::DIGITS,
            period_seconds: crate::factor::totp::PERIOD as u32,
            confirm_before: e.confirm_before,
        }))
    }

    async fn confirm_totp_enrollment(
        &self,
        req: Request<pb::ConfirmTotpEnrollmentRequest>,
    ) -> Result<Response<pb::ConfirmTotpEnrollmentResponse>, Status> {
        let role = require(&req, "FactorService/ConfirmTotpEnrollment")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let f = blocking(move || {
            s.enroll()
                .confirm_totp_enrollment(role.name(), &r.user_id, &r.factor_id, &r.code)
        })
        .await?;
        Ok(Response::new(pb::ConfirmTotpEnrollmentResponse {
            factor: Some(f.into()),
        }))
    }

    async fn list_factors(
        &self,
        req: Request<pb::ListFactorsRequest>,
    ) -> Result<Response<pb::ListFactorsResponse>, Status> {
        require(&req, "FactorService/ListFactors")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let list = blocking(move || s.enroll().list_factors(&r.user_id)).await?;
        Ok(Response::new(pb::ListFactorsResponse {
            factors: list.into_iter().map(convert::factor).collect(),
        }))
    }

    async fn begin_webauthn_registration(
        &self,
        req: Request<pb::BeginWebauthnRegistrationRequest>,
    ) -> Result<Response<pb::BeginWebauthnRegistrationResponse>, Status> {
        let role = require(&req, "FactorService/BeginWebauthnRegistration")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let (ceremony_id, options_json, expires_at) = blocking(move || {
            s.enroll().begin_webauthn_registration(
                role.name(),
                &r.user_id,
                &r.nickname,
                &r.display_name,
                &r.step_up_approval,
            )
        })
        .await?;
        Ok(Response::new(pb::BeginWebauthnRegistrationResponse {
            ceremony_id,
            options_json,
            expires_at,
        }))
    }

    async fn finish_webauthn_registration(
        &self,
        req: Request<pb::FinishWebauthnRegistrationRequest>,
    ) -> Result<Response<pb::FinishWebauthnRegistrationResponse>, Status> {
        let role = require(&req, "FactorService/FinishWebauthnRegistration")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let f = blocking(move || {
            s.enroll()
                .finish_webauthn_registration(role.name(), &r.user_id, &r.ceremony_id, &r.response_json)
        })
        .await?;
        Ok(Response::new(pb::FinishWebauthnRegistrationResponse {
            factor: Some(f.into()),
        }))
    }

    async fn begin_yubikey_hmac_enrollment(
        &self,
        req: Request<pb::BeginYubikeyHmacEnrollmentRequest>,
    ) -> Result<Response<pb::BeginYubikeyEnrollmentResponse>, Status> {
        let role = require(&req, "FactorService/BeginYubikeyHmacEnrollment")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let e = blocking(move || {
            let secret = zeroize::Zeroizing::new(r.secret);
            s.enroll().begin_yubikey_hmac_enrollment(
                role.name(),
                &r.user_id,
                &r.nickname,
                &secret,
                r.slot,
                &r.step_up_approval,
            )
        })
        .await?;
        Ok(Response::new(e.into()))
    }

    async fn begin_yubikey_otp_enrollment(
        &self,
        req: Request<pb::BeginYubikeyOtpEnrollmentRequest>,
    ) -> Result<Response<pb::BeginYubikeyEnrollmentResponse>, Status> {
        let role = require(&req, "FactorService/BeginYubikeyOtpEnrollment")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let e = blocking(move || {
            let key = zeroize::Zeroizing::new(r.aes_key);
            let private_id = zeroize::Zeroizing::new(r.private_id);
            let csv = zeroize::Zeroizing::new(r.personalization_csv);
            s.enroll().begin_yubikey_otp_enrollment(
                role.name(),
                &r.user_id,
                &r.nickname,
                &r.public_id,
                &private_id,
                &key,
                &csv,
                &r.step_up_approval,
            )
        })
        .await?;
        Ok(Response::new(e.into()))
    }

    async fn confirm_yubikey_enrollment(
        &self,
        req: Request<pb::ConfirmYubikeyEnrollmentRequest>,
    ) -> Result<Response<pb::ConfirmYubikeyEnrollmentResponse>, Status> {
        let role = require(&req, "FactorService/ConfirmYubikeyEnrollment")?;
        let r = req.into_inner();
        use crate::enroll::YubikeyConfirmation as C;
        use pb::confirm_yubikey_enrollment_request::Proof as P;
        let proof = match r.proof {
            Some(P::HmacResponse(b)) => C::Hmac(b),
            Some(P::Otp(o)) => C::Otp(o),
            None => {
                return Err(status::to_status(Error::invalid(
                    "proof",
                    "is required: hmac_response or otp",
                )))
            }
        };
        let s = self.sigil.clone();
        let f = blocking(move || {
            s.enroll()
                .confirm_yubikey_enrollment(role.name(), &r.user_id, &r.factor_id, proof)
        })
        .await?;
        Ok(Response::new(pb::ConfirmYubikeyEnrollmentResponse {
            factor: Some(f.into()),
        }))
    }

    async fn remove_factor(
        &self,
        req: Request<pb::RemoveFactorRequest>,
    ) -> Result<Response<pb::RemoveFactorResponse>, Status> {
        let role = require(&req, "FactorService/RemoveFactor")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        blocking(move || {
            s.enroll()
                .remove_factor(role.name(), &r.user_id, &r.factor_id, &r.step_up_approval)
        })
        .await?;
        Ok(Response::new(pb::RemoveFactorResponse {}))
    }
}

/// `sigil.v1.ApprovalService`.
#[derive(Clone)]
pub struct ApprovalApi {
    sigil: Arc<Sigil>,
}

impl ApprovalApi {
    /// Wraps a Sigil.
    pub fn new(sigil: Arc<Sigil>) -> Self {
        Self { sigil }
    }
}

#[tonic::async_trait]
impl pb::approval_service_server::ApprovalService for ApprovalApi {
    async fn begin_approval(
        &self,
        req: Request<pb::BeginApprovalRequest>,
    ) -> Result<Response<pb::BeginApprovalResponse>, Status> {
        let b = async {
            let role = require(&req, "ApprovalService/BeginApproval")?;
            let r = req.into_inner();
            let intent: sigil_verify::Intent = r
                .intent
                .ok_or_else(|| status::to_status(Error::invalid("intent", "is required")))?
                .into();
            let device = r.device.unwrap_or_default().into();
            let s = self.sigil.clone();
            approval_call(&self.sigil, move || {
                s.approvals().begin_approval(role.name(), intent, device)
            })
            .await
        }
        .await
        .inspect_err(|st| count_refusal("begin", st))?;
        Ok(Response::new(pb::BeginApprovalResponse {
            challenge_id: b.challenge_id,
            intent_sha256: b.intent_sha256.to_vec(),
            allowed_kinds: b.allowed.into_iter().map(|k| pb::FactorKind::from(k) as i32).collect(),
            factors: b.factors.into_iter().map(Into::into).collect(),
            expires_at: b.expires_at,
            anti_phishing_code: b.anti_phishing_code.unwrap_or_default(),
            webauthn_request_options_json: b.webauthn_options.unwrap_or_default(),
            yubikey_hmac_challenge: b.yubikey_hmac_challenge.map(|c| c.to_vec()).unwrap_or_default(),
            quorum: b
                .quorum
                .iter()
                .map(|n| pb::QuorumRequirement {
                    rule: n.rule.clone(),
                    required: n.m,
                    staff: n.of.clone(),
                })
                .collect(),
            delay_seconds: b.delay_seconds,
        }))
    }

    async fn complete_approval(
        &self,
        req: Request<pb::CompleteApprovalRequest>,
    ) -> Result<Response<pb::CompleteApprovalResponse>, Status> {
        let (i, kind) = async {
            let role = require(&req, "ApprovalService/CompleteApproval")?;
            let r = req.into_inner();
            use pb::complete_approval_request::Proof as P;
            let proof = match r.proof {
                Some(P::Totp(t)) => totp_proof(t),
                Some(P::Webauthn(w)) => Proof::Webauthn {
                    response_json: w.response_json,
                },
                Some(P::YubikeyHmac(y)) => Proof::YubikeyHmac {
                    response: y.response,
                    factor_id: (!y.factor_id.is_empty()).then_some(y.factor_id),
                },
                Some(P::YubikeyOtp(y)) => Proof::YubikeyOtp { otp: y.otp },
                None => {
                    return Err(status::to_status(Error::invalid(
                        "proof",
                        "is required: totp, webauthn, yubikey_hmac or yubikey_otp",
                    )))
                }
            };
            let kind = proof.kind();
            let s = self.sigil.clone();
            let issued = approval_call(&self.sigil, move || {
                s.approvals()
                    .complete_approval(role.name(), &r.challenge_id, &r.user_id, proof)
            })
            .await?;
            Ok((issued, kind))
        }
        .await
        .inspect_err(|st| count_refusal("complete", st))?;
        Ok(issued(i, kind))
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::CompleteApprovalResponse>, Status> {
        let (i, kind) = async {
            let role = require(&req, "ApprovalService/Approve")?;
            let r = req.into_inner();
            let intent: sigil_verify::Intent = r
                .intent
                .ok_or_else(|| status::to_status(Error::invalid("intent", "is required")))?
                .into();
            let device = r.device.unwrap_or_default().into();
            use pb::approve_request::Proof as P;
            let proof = match r.proof {
                Some(P::Totp(t)) => totp_proof(t),
                Some(P::YubikeyOtp(y)) => Proof::YubikeyOtp { otp: y.otp },
                None => {
                    return Err(status::to_status(Error::invalid(
                        "proof",
                        "is required: totp or yubikey_otp (WebAuthn and YubiKey HMAC answer \
                         BeginApproval's challenge: use BeginApproval and CompleteApproval)",
                    )))
                }
            };
            let kind = proof.kind();
            let s = self.sigil.clone();
            let issued = approval_call(&self.sigil, move || {
                s.approvals().approve(role.name(), intent, device, proof)
            })
            .await?;
            Ok((issued, kind))
        }
        .await
        .inspect_err(|st| count_refusal("approve", st))?;
        Ok(issued(i, kind))
    }

    async fn redeem_approval(
        &self,
        req: Request<pb::RedeemApprovalRequest>,
    ) -> Result<Response<pb::RedeemApprovalResponse>, Status> {
        let done = async {
            let role = require(&req, "ApprovalService/RedeemApproval")?;
            let r = req.into_inner();
            let expected = r.expected_intent.map(sigil_verify::Intent::from);
            let s = self.sigil.clone();
            approval_call(&self.sigil, move || {
                s.approvals()
                    .redeem_approval_keyed(role.name(), &r.approval, expected.as_ref(), &r.idempotency_key)
            })
            .await
        }
        .await
        .inspect_err(|st| count_refusal("redeem", st))?;
        crate::metrics::approval_redeemed(done.replayed);
        Ok(Response::new(pb::RedeemApprovalResponse {
            claims: Some(done.claims.into()),
            replayed: done.replayed,
            redeemed_at: done.redeemed_at,
        }))
    }

    async fn get_approval_keys(
        &self,
        req: Request<pb::GetApprovalKeysRequest>,
    ) -> Result<Response<pb::GetApprovalKeysResponse>, Status> {
        require(&req, "ApprovalService/GetApprovalKeys")?;
        let jwks_json = serde_json::to_string(&self.sigil.signer().jwks())
            .map_err(|e| status::to_status(Error::Internal(format!("cannot encode key set: {e}"))))?;
        let s = self.sigil.clone();
        let (ring, _) = blocking(move || s.keys().key_ring()).await?;
        Ok(Response::new(pb::GetApprovalKeysResponse {
            jwks_json,
            cache_max_age_seconds: self.sigil.config().approval.jwks_cache_seconds,
            keys: ring
                .keys
                .into_iter()
                .filter(|k| k.state != crate::keys::KeyState::Retired)
                .map(convert::key_info)
                .collect(),
        }))
    }

    async fn get_pending_approval(
        &self,
        req: Request<pb::GetPendingApprovalRequest>,
    ) -> Result<Response<pb::PendingApproval>, Status> {
        let role = require(&req, "ApprovalService/GetPendingApproval")?;
        let id = req.into_inner().request_id;
        let s = self.sigil.clone();
        let (r, now) = blocking(move || Ok((s.approvals().request(&id)?.0, s.clock_now()?))).await?;
        let with_token = matches!(role, auth::Role::WithdrawalEngine | auth::Role::Frontend);
        Ok(Response::new(convert::pending(&r, now, with_token)))
    }

    async fn list_pending_approvals(
        &self,
        req: Request<pb::ListPendingApprovalsRequest>,
    ) -> Result<Response<pb::ListPendingApprovalsResponse>, Status> {
        let role = require(&req, "ApprovalService/ListPendingApprovals")?;
        let r = req.into_inner();
        if role == auth::Role::Frontend && r.user_id.is_empty() {
            return Err(status::to_status(Error::invalid(
                "user_id",
                "is required for the frontend role: it lists one user's requests",
            )));
        }
        let s = self.sigil.clone();
        let (list, now) = blocking(move || {
            Ok((
                s.approvals().list_requests(&r.user_id, r.include_closed)?,
                s.clock_now()?,
            ))
        })
        .await?;
        let with_token = role == auth::Role::Frontend;
        Ok(Response::new(pb::ListPendingApprovalsResponse {
            requests: list.iter().map(|q| convert::pending(q, now, with_token)).collect(),
        }))
    }

    async fn cancel_approval(
        &self,
        req: Request<pb::CancelApprovalRequest>,
    ) -> Result<Response<pb::PendingApproval>, Status> {
        let role = require(&req, "ApprovalService/CancelApproval")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let (q, now) = blocking(move || {
            let q = s.approvals().cancel_by_user(role.name(), &r.request_id, &r.approval)?;
            Ok((q, s.clock_now()?))
        })
        .await?;
        Ok(Response::new(convert::pending(&q, now, false)))
    }

    async fn get_cancellations(
        &self,
        req: Request<pb::GetCancellationsRequest>,
    ) -> Result<Response<pb::GetCancellationsResponse>, Status> {
        require(&req, "ApprovalService/GetCancellations")?;
        let s = self.sigil.clone();
        let (token, list) = blocking(move || s.approvals().cancellations()).await?;
        Ok(Response::new(pb::GetCancellationsResponse {
            cancellations: token,
            issued_at: list.iat,
            cancelled: list.cancelled,
        }))
    }
}
