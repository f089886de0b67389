//! mTLS and roles: every RPC refuses callers outside its roles; certificates
//! without a role, with an unknown role, or from another CA get nothing.
use sigil::client::{connect, ClientTls};
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use tonic::Code;

use crate::support::calls::*;
use crate::support::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_rpc_admits_exactly_its_roles() {
    let s = TestServer::start().await;
    let allowed: &[(&str, &[&str])] = &[
        ("BeginTotpEnrollment", &["frontend"]),
        ("ConfirmTotpEnrollment", &["frontend"]),
        ("ListFactors", &["frontend", "admin"]),
        ("RemoveFactor", &["frontend"]),
        ("BeginApproval", &["withdrawal-engine", "frontend"]),
        ("CompleteApproval", &["withdrawal-engine", "frontend"]),
        ("RedeemApproval", &["withdrawal-engine"]),
        ("GetApprovalKeys", &["withdrawal-engine", "frontend", "admin"]),
        (
            "GetPendingApproval",
            &["withdrawal-engine", "frontend", "admin", "approver"],
        ),
        ("ListPendingApprovals", &["frontend", "admin", "approver"]),
        ("CancelApproval", &["frontend"]),
        ("GetCancellations", &["withdrawal-engine", "frontend", "admin"]),
        ("AddStaff", &["admin"]),
        ("BeginStaffKeyRegistration", &["admin"]),
        ("FinishStaffKeyRegistration", &["admin"]),
        ("RemoveStaff", &["admin"]),
        ("ListStaff", &["admin", "approver"]),
        ("GetStaffKeys", &["withdrawal-engine", "frontend", "admin", "approver"]),
        ("BeginStaffDecision", &["admin", "approver"]),
        ("CompleteStaffDecision", &["admin", "approver"]),
        ("GetPolicy", &["admin", "approver"]),
        ("ProposePolicy", &["admin"]),
    ];
    for role in [
        "withdrawal-engine",
        "frontend",
        "admin",
        "approver",
        "norole",
        "badrole",
    ] {
        for (rpc, denied) in call_all(&s, role).await {
            let ok_roles = allowed.iter().find(|(n, _)| *n == rpc).unwrap().1;
            assert_eq!(denied, !ok_roles.contains(&role), "{rpc} as {role}: denied={denied}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_certificate_or_foreign_ca_cannot_connect() {
    let s = TestServer::start().await;
    let d = certs_dir();
    // A client certificate from another CA with a valid-looking role.
    let foreign = tempfile::tempdir().unwrap();
    gen_certs(foreign.path());
    let ch = connect(
        &s.url,
        &ClientTls {
            ca: &d.join("ca.pem"),
            cert: &foreign.path().join("admin.pem"),
            key: &foreign.path().join("admin.key"),
        },
    )
    .await;
    let refused = match ch {
        Err(_) => true,
        Ok(ch) => ApprovalServiceClient::new(ch)
            .get_approval_keys(pb::GetApprovalKeysRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA must not get through");
    // No client certificate at all.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(d.join("ca.pem")).unwrap(),
        ))
        .domain_name("localhost");
    let ch = tonic::transport::Channel::from_shared(s.url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let refused = match ch {
        Err(_) => true,
        Ok(ch) => ApprovalServiceClient::new(ch)
            .get_approval_keys(pb::GetApprovalKeysRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must not get through");
    // Plaintext: there is no plaintext port.
    let plain = tonic::transport::Channel::from_shared(s.url.replace("https", "http"))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => ApprovalServiceClient::new(ch)
            .get_approval_keys(pb::GetApprovalKeysRequest {})
            .await
            .is_err(),
    };
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_answer_over_mtls() {
    let mut s = TestServer::start().await;
    let ch = s.channel("norole").await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sigil.v1.ApprovalService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        ServerReflectionRequest,
    };
    let mut r = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let text = format!("{resp:?}");
    assert!(
        text.contains("sigil.v1.ApprovalService") && text.contains("sigil.v1.FactorService"),
        "{text}"
    );
    s.stop().await;
}

/// Separation of duties: an operator's admin certificate enrolls nothing
/// for anyone (it could otherwise choose a YubiKey secret for a user whose
/// factors it just revoked).
#[tokio::test(flavor = "multi_thread")]
async fn admin_cannot_enroll_factors() {
    let s = TestServer::start().await;
    let f = |role: &'static str| {
        let s = &s;
        async move { s.factors(role).await }
    };
    let hmac = || pb::BeginYubikeyHmacEnrollmentRequest {
        user_id: "victim".into(),
        nickname: "slot 2".into(),
        secret: vec![7; 20],
        slot: 2,
        step_up_approval: String::new(),
    };
    let otp = || pb::BeginYubikeyOtpEnrollmentRequest {
        user_id: "victim".into(),
        nickname: "k".into(),
        public_id: "vvcccccccccc".into(),
        private_id: vec![1; 6],
        aes_key: vec![2; 16],
        ..Default::default()
    };
    let before = snapshot(s.sigil());
    for r in [
        f("admin").await.begin_yubikey_hmac_enrollment(hmac()).await.map(|_| ()),
        f("admin").await.begin_yubikey_otp_enrollment(otp()).await.map(|_| ()),
        f("admin")
            .await
            .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
                user_id: "victim".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        f("admin")
            .await
            .confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
                user_id: "victim".into(),
                factor_id: "f_x".into(),
                proof: None,
            })
            .await
            .map(|_| ()),
    ] {
        assert_status(r, Code::PermissionDenied, "");
    }
    assert_eq!(before, snapshot(s.sigil()), "nothing written");
    // The frontend, relaying the user, may.
    f("frontend").await.begin_yubikey_hmac_enrollment(hmac()).await.unwrap();
}
