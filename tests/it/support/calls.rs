//! RPCs made by hand: every RPC once as a role, and a call with raw
//! protobuf bytes.
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic::Code;

use crate::support::harness::*;

/// Calls every RPC once as `role`; returns (rpc, was it refused with PERMISSION_DENIED).
pub async fn call_all(s: &TestServer, role: &str) -> Vec<(&'static str, bool)> {
    let ch = s.channel(role).await;
    let mut f = FactorServiceClient::new(ch.clone());
    let mut a = ApprovalServiceClient::new(ch);
    let denied = |r: Result<(), tonic::Status>| matches!(r, Err(ref st) if st.code() == Code::PermissionDenied && st.message().contains("may not call") || st.message().contains("no Sigil role"));
    let mut out = Vec::new();
    out.push((
        "BeginTotpEnrollment",
        denied(
            f.begin_totp_enrollment(pb::BeginTotpEnrollmentRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "ConfirmTotpEnrollment",
        denied(
            f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "ListFactors",
        denied(f.list_factors(pb::ListFactorsRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "RemoveFactor",
        denied(f.remove_factor(pb::RemoveFactorRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "BeginApproval",
        denied(a.begin_approval(pb::BeginApprovalRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "CompleteApproval",
        denied(
            a.complete_approval(pb::CompleteApprovalRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "RedeemApproval",
        denied(
            a.redeem_approval(pb::RedeemApprovalRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "GetApprovalKeys",
        denied(
            a.get_approval_keys(pb::GetApprovalKeysRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "GetPendingApproval",
        denied(
            a.get_pending_approval(pb::GetPendingApprovalRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "ListPendingApprovals",
        denied(
            a.list_pending_approvals(pb::ListPendingApprovalsRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "CancelApproval",
        denied(
            a.cancel_approval(pb::CancelApprovalRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "GetCancellations",
        denied(
            a.get_cancellations(pb::GetCancellationsRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    let mut st = pb::staff_service_client::StaffServiceClient::new(s.channel(role).await);
    out.push((
        "AddStaff",
        denied(st.add_staff(pb::AddStaffRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "BeginStaffKeyRegistration",
        denied(
            st.begin_staff_key_registration(pb::BeginStaffKeyRegistrationRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "FinishStaffKeyRegistration",
        denied(
            st.finish_staff_key_registration(pb::FinishStaffKeyRegistrationRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "RemoveStaff",
        denied(st.remove_staff(pb::RemoveStaffRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "ListStaff",
        denied(st.list_staff(pb::ListStaffRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "GetStaffKeys",
        denied(st.get_staff_keys(pb::GetStaffKeysRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "BeginStaffDecision",
        denied(
            st.begin_staff_decision(pb::BeginStaffDecisionRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "CompleteStaffDecision",
        denied(
            st.complete_staff_decision(pb::CompleteStaffDecisionRequest::default())
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "GetPolicy",
        denied(st.get_policy(pb::GetPolicyRequest::default()).await.map(|_| ())),
    ));
    out.push((
        "ProposePolicy",
        denied(st.propose_policy(pb::ProposePolicyRequest::default()).await.map(|_| ())),
    ));
    out
}

/// Sends `body` as the raw protobuf bytes of a call to `path`.
pub async fn raw_call(channel: tonic::transport::Channel, path: &'static str, body: Vec<u8>) -> tonic::Status {
    #[derive(Clone, Default)]
    struct Raw;
    struct RawEnc;
    struct RawDec;
    impl tonic::codec::Encoder for RawEnc {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut;
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for RawDec {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            use bytes::Buf;
            Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEnc;
        type Decoder = RawDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> RawDec {
            RawDec
        }
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .expect_err("a malformed body was accepted")
}
