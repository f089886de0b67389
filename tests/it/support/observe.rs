//! Helpers of the observability tests: scraping `/metrics` over plain
//! HTTP and reading the Prometheus text, and one full flow against a real
//! `sigild` that returns every secret it handled (to search the logs for).
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sigil::client::connect_as;
use sigil::factor::totp;
use sigil::factor::yubikey::SoftHmacSlot;
use sigil::pb;
use sigil::pb::admin_service_client::AdminServiceClient;
use sigil::pb::confirm_yubikey_enrollment_request::Proof as ConfirmProof;
use tonic::Code;

use crate::support::daemon::*;
use crate::support::harness::*;
use crate::support::yubikey::{hmac_proof, otp_key, otp_proof, random};

/// A free port on 127.0.0.1 (free when asked; the daemon binds it next).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET path` over plain HTTP/1.1; returns (status, content type, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// One scrape: every sample as (name, labels, value).
pub struct Scrape(pub Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    /// Scrapes `http://addr/metrics`.
    pub fn take(addr: SocketAddr) -> Scrape {
        let (status, content_type, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        Scrape::parse(&body)
    }

    /// Reads the text format (samples only; `# HELP`/`# TYPE` skipped).
    pub fn parse(text: &str) -> Scrape {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap();
                    let mut labels = BTreeMap::new();
                    // Label values here never hold `",`.
                    for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                    (n.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            out.push((name, labels, value));
        }
        Scrape(out)
    }

    /// The sum of the samples of `name` whose labels include `labels`
    /// (0 when there is none: a labelled counter appears on first use).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| *v)
            .sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }
}

/// The secrets one [`full_flow`] handled, to look for where they must
/// never appear.
#[derive(Default, Debug)]
pub struct Handled {
    /// TOTP seeds.
    pub totp_seeds: Vec<Vec<u8>>,
    /// YubiKey HMAC-SHA1 secrets, Yubico OTP AES keys and private ids.
    pub yubikey_secrets: Vec<Vec<u8>>,
    /// Every approval token issued.
    pub tokens: Vec<String>,
}

/// A full flow against the real `sigild` at `url` (real clock): a TOTP
/// factor enrolled and a withdrawal approved with it, refused once with a
/// wrong code, redeemed, and refused when redeemed again; a YubiKey
/// HMAC-SHA1 factor and a Yubico OTP factor (emulated keys) enrolled, each
/// approving a withdrawal that is then redeemed; a second TOTP factor
/// locked by repeated wrong codes; the approval keys read, listed and
/// rotated. Users are prefixed with `tag`.
pub async fn full_flow(url: &str, tag: &str) -> Handled {
    let mut seen = Handled::default();
    let (mut f, mut a) = clients(url).await;
    let mut admin = AdminServiceClient::new(connect_as(url, &certs_dir(), "admin").await.unwrap());
    let redeem = |token: String, intent: pb::Intent| pb::RedeemApprovalRequest {
        approval: token,
        expected_intent: Some(intent),
        idempotency_key: String::new(),
    };

    // TOTP: enroll, a wrong code, an approval, its redemption and a replay.
    let user = format!("{tag}-totp");
    let e = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
    seen.totp_seeds.push(seed.clone());
    let s0 = real_step();
    f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
        user_id: user.clone(),
        factor_id: e.factor_id.clone(),
        code: totp::code_at_step(&seed, s0),
    })
    .await
    .unwrap();
    let intent = withdrawal(&user, &format!("{tag}-wd-1"));
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let wrong = a
        .complete_approval(totp_proof(
            &b.challenge_id,
            &user,
            &totp::code_at_step(&seed, s0 + 40),
            "",
        ))
        .await;
    assert_eq!(wrong.unwrap_err().code(), Code::PermissionDenied);
    let done = a
        .complete_approval(totp_proof(
            &b.challenge_id,
            &user,
            &totp::code_at_step(&seed, s0 + 1),
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    seen.tokens.push(done.approval.clone());
    a.redeem_approval(redeem(done.approval.clone(), intent.clone()))
        .await
        .unwrap();
    let again = a.redeem_approval(redeem(done.approval.clone(), intent)).await;
    assert_eq!(again.unwrap_err().code(), Code::FailedPrecondition);

    // YubiKey HMAC-SHA1 (an emulated slot): enroll, approve, redeem.
    let user = format!("{tag}-hmac");
    let secret = random::<20>();
    seen.yubikey_secrets.push(secret.to_vec());
    let slot = SoftHmacSlot::new(secret);
    let e = f
        .begin_yubikey_hmac_enrollment(pb::BeginYubikeyHmacEnrollmentRequest {
            user_id: user.clone(),
            nickname: "slot 2".into(),
            secret: secret.to_vec(),
            slot: 2,
            step_up_approval: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    f.confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
        user_id: user.clone(),
        factor_id: e.factor_id.clone(),
        proof: Some(ConfirmProof::HmacResponse(slot.respond(&e.challenge).unwrap().to_vec())),
    })
    .await
    .unwrap();
    let intent = withdrawal(&user, &format!("{tag}-wd-2"));
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let response = slot.respond(&b.yubikey_hmac_challenge).unwrap();
    let done = a
        .complete_approval(hmac_proof(&b.challenge_id, &user, &response, ""))
        .await
        .unwrap()
        .into_inner();
    seen.tokens.push(done.approval.clone());
    a.redeem_approval(redeem(done.approval, intent)).await.unwrap();

    // Yubico OTP (an emulated key): enroll, approve, redeem.
    let user = format!("{tag}-otp");
    let (mut key, private_id, aes_key) = otp_key("vvccccdvvbcc");
    seen.yubikey_secrets.push(private_id.to_vec());
    seen.yubikey_secrets.push(aes_key.to_vec());
    let e = f
        .begin_yubikey_otp_enrollment(pb::BeginYubikeyOtpEnrollmentRequest {
            user_id: user.clone(),
            nickname: "keychain".into(),
            public_id: key.public_id().into(),
            private_id: private_id.to_vec(),
            aes_key: aes_key.to_vec(),
            personalization_csv: String::new(),
            step_up_approval: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    f.confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
        user_id: user.clone(),
        factor_id: e.factor_id,
        proof: Some(ConfirmProof::Otp(key.otp())),
    })
    .await
    .unwrap();
    let intent = withdrawal(&user, &format!("{tag}-wd-3"));
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let done = a
        .complete_approval(otp_proof(&b.challenge_id, &user, &key.otp()))
        .await
        .unwrap()
        .into_inner();
    seen.tokens.push(done.approval.clone());
    a.redeem_approval(redeem(done.approval, intent)).await.unwrap();

    // A TOTP factor locked by wrong codes.
    let user = format!("{tag}-locked");
    let e = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
    seen.totp_seeds.push(seed.clone());
    f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
        user_id: user.clone(),
        factor_id: e.factor_id,
        code: totp::code_at_step(&seed, real_step()),
    })
    .await
    .unwrap();
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(&user, &format!("{tag}-wd-4"))),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let wrong = totp::code_at_step(&seed, real_step() + 40);
    let mut locked = false;
    for _ in 0..10 {
        let r = a
            .complete_approval(totp_proof(&b.challenge_id, &user, &wrong, ""))
            .await;
        if r.unwrap_err().code() == Code::ResourceExhausted {
            locked = true;
            break;
        }
    }
    assert!(locked, "wrong codes never locked the factor");

    // The approval keys: published, listed, rotated.
    a.get_approval_keys(pb::GetApprovalKeysRequest {}).await.unwrap();
    admin.list_approval_keys(pb::ListApprovalKeysRequest {}).await.unwrap();
    admin
        .rotate_approval_key(pb::RotateApprovalKeyRequest { now: false })
        .await
        .unwrap();
    seen
}
