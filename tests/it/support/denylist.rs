//! Helpers of the deny-list tests: serials and SPKI digests of the test
//! certificates by `openssl`, the refusal Sigil gives a listed
//! certificate, servers with a deny-list file, their audit entries.
use std::path::PathBuf;
use std::process::Command;

use sigil::audit::AuditEntry;
use sigil::pb;
use sigil::pb::factor_service_client::FactorServiceClient;
use tonic::Code;

use crate::support::harness::*;

/// `openssl x509 -noout -serial` of a role's certificate: uppercase hex.
pub fn serial_of(role: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(certs_dir().join(format!("{role}.pem")))
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().strip_prefix("serial=").expect("serial=...").to_string()
}

/// The serial as Sigil shows it: uppercase hex without leading zeros.
pub fn shown(serial: &str) -> String {
    serial.trim_start_matches('0').to_string()
}

/// SHA-256 of a role's certificate's SubjectPublicKeyInfo DER, by openssl.
pub fn spki_sha256_of(role: &str) -> Vec<u8> {
    let pem = certs_dir().join(format!("{role}.pem"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "set -o pipefail; openssl x509 -noout -pubkey -in \"$1\" | openssl pkey -pubin -outform DER \
             | openssl dgst -sha256 -hex",
        )
        .arg("bash")
        .arg(&pem)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.split_whitespace().last().expect("digest");
    let d = data_encoding::HEXLOWER_PERMISSIVE.decode(hex.as_bytes()).unwrap();
    assert_eq!(d.len(), 32);
    d
}

/// The refusal message for `role`'s certificate.
pub fn denied_message(role: &str) -> String {
    format!(
        "client certificate {} is on the deny-list; ask an operator for a new certificate",
        shown(&serial_of(role))
    )
}

#[track_caller]
pub fn assert_denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, role: &str) {
    let st = r.expect_err("a certificate on the deny-list must be refused");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert_eq!(st.message(), denied_message(role));
}

/// A server whose `[server] deny_list` is a file holding `text`.
pub async fn server_with_list(text: &str) -> (TestServer, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deny.txt");
    std::fs::write(&path, text).unwrap();
    let p = path.clone();
    let s = TestServer::start_with(move |c| c.server.deny_list = Some(p)).await;
    (s, dir, path)
}

pub fn audit(s: &TestServer) -> Vec<AuditEntry> {
    s.sigil()
        .ops()
        .audit_entries(0, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| AuditEntry::decode(&e.value).unwrap())
        .collect()
}

pub fn denied_entries(s: &TestServer) -> Vec<AuditEntry> {
    audit(s).into_iter().filter(|e| e.action == "auth.denied").collect()
}

pub async fn list_factors(ch: &tonic::transport::Channel) -> Result<pb::ListFactorsResponse, tonic::Status> {
    FactorServiceClient::new(ch.clone())
        .list_factors(pb::ListFactorsRequest { user_id: "ann".into() })
        .await
        .map(|r| r.into_inner())
}

/// Asserts that the admin and the withdrawal engine still get through.
pub async fn others_still_work(s: &TestServer) {
    list_factors(&s.channel("admin").await)
        .await
        .expect("admin is not on the list");
    s.approvals("withdrawal-engine")
        .await
        .get_approval_keys(pb::GetApprovalKeysRequest {})
        .await
        .expect("the withdrawal engine is not on the list");
}
