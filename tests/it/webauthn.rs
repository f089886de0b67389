//! The WebAuthn factor end to end, over the real gRPC API: registration and
//! intent-bound assertions driven by software authenticators
//! (webauthn-authenticator-rs `SoftToken` / `SoftPasskey`, and `RingKey` in
//! `support/webauthn.rs` for what those cannot do), the approvals'
//! `webauthn` evidence re-verified offline with `sigil_verify`, and every
//! refusal: tampered evidence, another intent, replay, origin, rpId,
//! missing UV, counter regression, credential ids reused across users,
//! attestation policy, step-up, and bad input that must write nothing.
use sigil::pb;
use sigil_verify::{b64url, verify_webauthn_evidence, webauthn_challenge, Jwk, VerifyError};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::softtoken::{SoftToken, AAGUID as SOFTTOKEN_AAGUID};

use crate::support::harness::*;
use crate::support::tokens::*;
use crate::support::webauthn::*;

// ---------------------------------------------------------------------------
// Happy path
// ---------------------------------------------------------------------------

/// Registration through the API, then a withdrawal approved by the user's
/// own key: the engine verifies the JWS, then the `webauthn` evidence with
/// the key ListFactors publishes; UV gives `mfa`.
#[tokio::test(flavor = "multi_thread")]
async fn registration_and_withdrawal_approval_happy_path() {
    let s = TestServer::start().await;
    let user = "wa-alice";
    let (mut token, _) = soft_token(true);

    let b = begin_registration(&s, user, "").await.unwrap();
    assert_eq!(b.expires_at, T0 + 300);
    let o = &jv(&b.options_json)["publicKey"];
    assert_eq!(o["rp"]["id"], "localhost");
    assert_eq!(o["attestation"], "direct");
    assert_eq!(
        o["pubKeyCredParams"],
        serde_json::json!([{"type": "public-key", "alg": -7}]),
        "ES256 only"
    );
    assert_eq!(o["user"]["name"], user);
    assert_ne!(
        o["user"]["id"],
        b64url::encode(user.as_bytes()),
        "the user handle is opaque, not the user id"
    );
    assert!(
        o["excludeCredentials"].as_array().is_none_or(|a| a.is_empty()),
        "nothing to exclude yet: {o}"
    );
    let response = create(&mut token, ORIGIN, &b.options_json, |_| {}).unwrap();
    let credential_id = jv(&response)["id"].as_str().unwrap().to_owned();
    let f = finish_registration(&s, user, &b.ceremony_id, &response).await.unwrap();
    assert_eq!(f.kind, pb::FactorKind::Webauthn as i32);
    assert_eq!(f.state, pb::FactorState::Active as i32, "active at once");
    assert_eq!(f.user_id, user);
    assert_eq!(f.nickname, "security key");
    assert_eq!(f.credential_id, credential_id);
    assert_eq!(f.aaguid, SOFTTOKEN_AAGUID.to_string());
    assert!(!f.backup_eligible && !f.suspected_cloned);
    assert_eq!(f.consecutive_failures, 0);
    let jwk: Jwk = serde_json::from_str(&f.public_key_jwk).unwrap();
    assert_eq!(jwk.kid, jwk.thumbprint());
    assert_eq!(factors(&s, user).await, vec![f.clone()]);
    // The ceremony answers once.
    assert_status(
        finish_registration(&s, user, &b.ceremony_id, &response).await,
        Code::NotFound,
        "not found",
    );

    let intent = withdrawal(user, "wd-wa-1");
    let bg = begin(&s, &intent).await;
    assert!(bg.allowed_kinds.contains(&(pb::FactorKind::Webauthn as i32)));
    assert_eq!(bg.factors, vec![f.clone()]);
    assert!(bg.yubikey_hmac_challenge.is_empty());
    let ro = &jv(&bg.webauthn_request_options_json)["publicKey"];
    assert_eq!(ro["rpId"], "localhost");
    assert_eq!(ro["userVerification"], "required", "withdrawals require UV");
    let allowed: Vec<&str> = ro["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(allowed, [f.credential_id.as_str()]);

    let assertion = get(&mut token, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    let done = complete(&s, &bg.challenge_id, user, &assertion).await.unwrap();
    assert_eq!(done.amr, ["hwk", "user", "mfa"]);

    // The engine: the JWS against its own record, then the user's signature.
    let v = verifier(&s).await;
    let now = s.clock.now_secs();
    let c = v.verify_for(&done.approval, &domain_intent(&intent), now).unwrap();
    assert_eq!(
        (c.sub.as_str(), c.act.as_str(), c.jti.as_str()),
        (user, "withdrawal", done.jti.as_str())
    );
    assert_eq!(c.amr, done.amr);
    let ev = c.webauthn.clone().expect("a webauthn evidence claim");
    assert_eq!(ev.credential_id, f.credential_id);
    let key = sec1_of(&f);
    let digest = domain_intent(&intent).digest();
    assert_eq!(bg.intent_sha256, digest.to_vec());
    verify_webauthn_evidence(&ev, &digest, &key, None).unwrap();
    verify_webauthn_evidence(&ev, &digest, &key, Some(ORIGIN_IN_CLIENT_DATA)).unwrap();
    // The authenticator signed SHA-256("sigil-webauthn-v1" || nonce || intent digest).
    let nonce = b64url::decode(&ev.nonce).unwrap();
    assert!(nonce.len() >= 16);
    assert_eq!(ro["challenge"], b64url::encode(&webauthn_challenge(&nonce, &digest)));
    // The evidence is exactly what the authenticator returned.
    assert_eq!(
        b64url::decode(&ev.authenticator_data).unwrap(),
        member_bytes(&assertion, &["response", "authenticatorData"])
    );
    assert_eq!(
        b64url::decode(&ev.client_data_json).unwrap(),
        member_bytes(&assertion, &["response", "clientDataJSON"])
    );
    assert_eq!(
        b64url::decode(&ev.signature).unwrap(),
        member_bytes(&assertion, &["response", "signature"])
    );
    let (flags, counter) = flags_and_counter(&assertion);
    assert_eq!((flags & (UP | UV), counter), (UP | UV, 1));

    s.approvals("withdrawal-engine")
        .await
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: done.approval,
            expected_intent: Some(intent),
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    let used = factor(&s, user, &f.factor_id).await;
    assert_eq!((used.last_used_at, used.consecutive_failures), (now, 0));

    // The stored counter moved on: the next assertion (counter 2) is accepted.
    let second = approve_with(&s, &withdrawal(user, "wd-wa-2"), &mut token)
        .await
        .unwrap();
    assert_eq!(second.amr, ["hwk", "user", "mfa"]);

    let events = s.collect_events(0).await;
    let enrolled = events_of_kind(&events, "factor_enrolled");
    assert_eq!(enrolled.len(), 1);
    assert_eq!(enrolled[0].user_id, user);
    assert_eq!(enrolled[0].details["kind"], "webauthn");
    assert_eq!(enrolled[0].details["factor_id"], f.factor_id);
    assert_eq!(events_of_kind(&events, "approval_issued").len(), 2);
}

// ---------------------------------------------------------------------------
// Evidence, intent, replay
// ---------------------------------------------------------------------------

/// Every single-byte change (two different bits of every byte) of the
/// evidence's authenticator_data, client_data_json, signature and nonce is
/// refused by `verify_webauthn_evidence`; so is the evidence under another
/// intent, another origin or another credential's key, and an approval whose
/// evidence was edited no longer verifies (nor redeems).
#[tokio::test(flavor = "multi_thread")]
async fn evidence_with_one_byte_changed_is_refused_by_the_verifier() {
    let s = TestServer::start().await;
    let user = "wa-bob";
    let (mut token, _) = soft_token(true);
    let (f, _) = register(&s, user, &mut token).await;
    let intent = withdrawal(user, "wd-1");
    let done = approve_with(&s, &intent, &mut token).await.unwrap();
    let ev = claims_of(&done.approval).webauthn.expect("evidence");
    let key = sec1_of(&f);
    let digest = domain_intent(&intent).digest();
    verify_webauthn_evidence(&ev, &digest, &key, None).unwrap(); // control

    for name in ["authenticator_data", "client_data_json", "signature", "nonce"] {
        let bytes = b64url::decode(evidence_field(&mut ev.clone(), name)).unwrap();
        assert!(!bytes.is_empty(), "{name}");
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x40] {
                let mut changed = bytes.clone();
                changed[i] ^= bit;
                let mut e = ev.clone();
                *evidence_field(&mut e, name) = b64url::encode(&changed);
                assert!(
                    matches!(
                        verify_webauthn_evidence(&e, &digest, &key, None),
                        Err(VerifyError::BadEvidence(_))
                    ),
                    "{name} with byte {i} changed (^{bit:#04x}) was accepted"
                );
            }
        }
        // one byte shorter, and one byte longer
        for changed in [bytes[..bytes.len() - 1].to_vec(), [bytes.as_slice(), &[0]].concat()] {
            let mut e = ev.clone();
            *evidence_field(&mut e, name) = b64url::encode(&changed);
            assert!(
                verify_webauthn_evidence(&e, &digest, &key, None).is_err(),
                "{name} of another length was accepted"
            );
        }
    }

    // Another intent, another origin, another credential.
    let mut other = intent.clone();
    other.amount = "0.6".into();
    assert!(verify_webauthn_evidence(&ev, &domain_intent(&other).digest(), &key, None).is_err());
    assert!(verify_webauthn_evidence(&ev, &digest, &key, Some("https://evil.localhost:8443/")).is_err());
    let (mut token2, _) = soft_token(true);
    let enroll = approve_with(&s, &enroll_factor_intent(user, "webauthn:"), &mut token)
        .await
        .unwrap();
    let (f2, _) = register_with(&s, user, &mut token2, &enroll.approval).await;
    assert!(verify_webauthn_evidence(&ev, &digest, &sec1_of(&f2), None).is_err());

    // Editing the evidence inside the approval breaks the JWS signature, and
    // Sigil refuses to redeem it.
    let v = verifier(&s).await;
    let now = s.clock.now_secs();
    let mut c = claims_of(&done.approval);
    let mut sig = b64url::decode(&ev.signature).unwrap();
    let last = sig.len() - 1;
    sig[last] ^= 1;
    c.webauthn.as_mut().unwrap().signature = b64url::encode(&sig);
    let forged = with_claims(&done.approval, &c);
    assert_eq!(v.verify(&forged, now).unwrap_err(), VerifyError::BadSignature);
    let mut a = s.approvals("withdrawal-engine").await;
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&forged),
            idempotency_key: String::new(),
            approval: forged,
        })
        .await;
    assert_status(r, Code::PermissionDenied, "signature");
    a.redeem_approval(pb::RedeemApprovalRequest {
        approval: done.approval,
        expected_intent: Some(intent),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
}

/// The intent cannot change after the challenge was issued: an assertion
/// made for one BeginApproval's options does not answer another's challenge
/// (another withdrawal, larger amount), and the approval that is issued
/// covers only its own intent — for the engine's verifier, for the evidence
/// and for Sigil's redemption.
#[tokio::test(flavor = "multi_thread")]
async fn assertion_for_another_intent_is_refused_and_the_approval_cannot_be_altered() {
    let s = TestServer::start().await;
    let user = "wa-carol";
    let (mut token, _) = soft_token(true);
    let (f, _) = register(&s, user, &mut token).await;
    let small = withdrawal(user, "wd-small");
    let mut big = withdrawal(user, "wd-big");
    big.amount = "5".into();
    let b_small = begin(&s, &small).await;
    let b_big = begin(&s, &big).await;
    assert_ne!(
        jv(&b_small.webauthn_request_options_json)["publicKey"]["challenge"],
        jv(&b_big.webauthn_request_options_json)["publicKey"]["challenge"]
    );
    let for_small = get(&mut token, ORIGIN, &b_small.webauthn_request_options_json, |_| {}).unwrap();

    let r = complete(&s, &b_big.challenge_id, user, &for_small).await;
    assert_status(r, Code::PermissionDenied, "different challenge");
    assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, 1);
    // Again with a fresh assertion for the small withdrawal: refused and
    // counted again; the small withdrawal's challenge stays open meanwhile.
    let for_small_again = get(&mut token, ORIGIN, &b_small.webauthn_request_options_json, |_| {}).unwrap();
    let r = complete(&s, &b_big.challenge_id, user, &for_small_again).await;
    assert_status(r, Code::PermissionDenied, "different challenge");
    assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, 2);

    // control: the assertion answers its own challenge (and resets the count)
    let done = complete(&s, &b_small.challenge_id, user, &for_small_again)
        .await
        .unwrap();
    assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, 0);

    let v = verifier(&s).await;
    let now = s.clock.now_secs();
    let c = v.verify_for(&done.approval, &domain_intent(&small), now).unwrap();
    assert_eq!(c.intent, domain_intent(&small));
    assert_eq!(
        v.verify_for(&done.approval, &domain_intent(&big), now).unwrap_err(),
        VerifyError::IntentMismatch { field: "withdrawal_id" }
    );
    let ev = c.webauthn.clone().unwrap();
    let key = sec1_of(&f);
    verify_webauthn_evidence(&ev, &domain_intent(&small).digest(), &key, None).unwrap();
    assert!(verify_webauthn_evidence(&ev, &domain_intent(&big).digest(), &key, None).is_err());

    // The intent rewritten inside the approval (digest recomputed) breaks
    // the JWS signature; keeping the signature valid is impossible.
    let mut forged_claims = c.clone();
    forged_claims.intent = domain_intent(&big);
    forged_claims.intent_sha256 = b64url::encode(&forged_claims.intent.digest());
    let forged = with_claims(&done.approval, &forged_claims);
    assert_eq!(v.verify(&forged, now).unwrap_err(), VerifyError::BadSignature);
    let mut a = s.approvals("withdrawal-engine").await;
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&forged),
            idempotency_key: String::new(),
            approval: forged,
        })
        .await;
    assert_status(r, Code::PermissionDenied, "signature");
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: done.approval.clone(),
            expected_intent: Some(big.clone()),
            idempotency_key: String::new(),
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "withdrawal_id");
    a.redeem_approval(pb::RedeemApprovalRequest {
        approval: done.approval,
        expected_intent: Some(small),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();

    // The big withdrawal's challenge needs an assertion of its own.
    let for_big = get(&mut token, ORIGIN, &b_big.webauthn_request_options_json, |_| {}).unwrap();
    let done_big = complete(&s, &b_big.challenge_id, user, &for_big).await.unwrap();
    v.verify_for(&done_big.approval, &domain_intent(&big), s.clock.now_secs())
        .unwrap();
}

/// An assertion answers once: sent again to its consumed challenge it is
/// FAILED_PRECONDITION; sent to a new challenge — even for the very same
/// intent — it is refused (the nonce differs) and counted as a failure.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_assertion_is_refused() {
    let s = TestServer::start().await;
    let user = "wa-dave";
    let (mut token, _) = soft_token(true);
    let (f, _) = register(&s, user, &mut token).await;
    let intent = withdrawal(user, "wd-1");
    let b1 = begin(&s, &intent).await;
    let r1 = get(&mut token, ORIGIN, &b1.webauthn_request_options_json, |_| {}).unwrap();
    complete(&s, &b1.challenge_id, user, &r1).await.unwrap();

    let r = complete(&s, &b1.challenge_id, user, &r1).await;
    assert_status(r, Code::FailedPrecondition, "already answered");

    let b2 = begin(&s, &intent).await;
    let before = snapshot(s.sigil());
    let r = complete(&s, &b2.challenge_id, user, &r1).await;
    assert_status(r, Code::PermissionDenied, "different challenge");
    assert_ne!(before, snapshot(s.sigil()), "a failed proof is recorded");
    let after = factor(&s, user, &f.factor_id).await;
    assert_eq!(after.consecutive_failures, 1);

    // control: a fresh assertion answers the second challenge
    let r2 = get(&mut token, ORIGIN, &b2.webauthn_request_options_json, |_| {}).unwrap();
    complete(&s, &b2.challenge_id, user, &r2).await.unwrap();
    // ... once
    let r = complete(&s, &b2.challenge_id, user, &r2).await;
    assert_status(r, Code::FailedPrecondition, "already answered");
}

// ---------------------------------------------------------------------------
// Origin, rpId, UV
// ---------------------------------------------------------------------------

/// Registration and assertions made at an origin the policy does not list
/// (a sibling subdomain, another port, plain http on the https port) are
/// refused, and the failed registration uses up its ceremony.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_origin_is_refused() {
    let s = TestServer::start().await;
    let user = "wa-erin";
    let (mut token, _) = soft_token(true);

    let b = begin_registration(&s, user, "").await.unwrap();
    let evil = create(&mut token, "https://evil.localhost:8443", &b.options_json, |_| {}).unwrap();
    let st = assert_status(
        finish_registration(&s, user, &b.ceremony_id, &evil).await,
        Code::PermissionDenied,
        "origin https://evil.localhost:8443",
    );
    assert!(st.message().contains("not allowed"), "{}", st.message());
    let good = create(&mut token, ORIGIN, &b.options_json, |_| {}).unwrap();
    assert_status(
        finish_registration(&s, user, &b.ceremony_id, &good).await,
        Code::NotFound,
        "not found",
    );
    assert!(factors(&s, user).await.is_empty());

    let (f, _) = register(&s, user, &mut token).await;
    let intent = withdrawal(user, "wd-1");
    let bg = begin(&s, &intent).await;
    let origins = [
        "https://evil.localhost:8443",
        "https://localhost:9999",
        "http://localhost:8443",
    ];
    for (n, origin) in origins.iter().enumerate() {
        let r = get(&mut token, origin, &bg.webauthn_request_options_json, |_| {}).unwrap();
        let st = assert_status(
            complete(&s, &bg.challenge_id, user, &r).await,
            Code::PermissionDenied,
            &format!("origin {origin}"),
        );
        assert!(st.message().contains("not allowed"), "{}", st.message());
        assert_eq!(
            factor(&s, user, &f.factor_id).await.consecutive_failures as usize,
            n + 1
        );
    }
    // control: the second configured origin, on the same (still open) challenge
    let r = get(
        &mut token,
        "http://localhost:8080",
        &bg.webauthn_request_options_json,
        |_| {},
    )
    .unwrap();
    let done = complete(&s, &bg.challenge_id, user, &r).await.unwrap();
    let ev = claims_of(&done.approval).webauthn.unwrap();
    let digest = domain_intent(&intent).digest();
    verify_webauthn_evidence(&ev, &digest, &sec1_of(&f), Some("http://localhost:8080/")).unwrap();
    assert!(verify_webauthn_evidence(&ev, &digest, &sec1_of(&f), Some(ORIGIN_IN_CLIENT_DATA)).is_err());
}

/// Options whose rp id was edited before the authenticator signed (to
/// `app.localhost`, from an origin the policy allows) are refused: the
/// authenticator data is scoped to another relying party.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_rp_id_is_refused() {
    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.webauthn.origins.push(APP_ORIGIN.into());
    })
    .await;
    let user = "wa-fred";
    let (mut token, _) = soft_token(true);

    let b = begin_registration(&s, user, "").await.unwrap();
    let other_rp = create(&mut token, APP_ORIGIN, &b.options_json, |v| {
        v["publicKey"]["rp"]["id"] = "app.localhost".into()
    })
    .unwrap();
    assert_status(
        finish_registration(&s, user, &b.ceremony_id, &other_rp).await,
        Code::PermissionDenied,
        "another relying party id than 'localhost'",
    );
    assert!(factors(&s, user).await.is_empty());

    let (f, _) = register(&s, user, &mut token).await;
    let bg = begin(&s, &withdrawal(user, "wd-1")).await;
    let r = get(&mut token, APP_ORIGIN, &bg.webauthn_request_options_json, |v| {
        v["publicKey"]["rpId"] = "app.localhost".into()
    })
    .unwrap();
    assert_status(
        complete(&s, &bg.challenge_id, user, &r).await,
        Code::PermissionDenied,
        "another relying party id",
    );
    assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, 1);
    // control: the same origin with the rp id as issued
    let r = get(&mut token, APP_ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    complete(&s, &bg.challenge_id, user, &r).await.unwrap();
}

/// An authenticator that cannot verify the user (SoftToken without UV)
/// answers a withdrawal's `required` with a genuine presence-only assertion:
/// PERMISSION_DENIED, and the factor's failure counter increments. For an
/// action that does not require UV the same key approves, without `mfa`.
#[tokio::test(flavor = "multi_thread")]
async fn missing_user_verification_is_refused_and_counted() {
    let s = TestServer::start().await;
    let user = "wa-gina";
    let (mut token, _) = soft_token(false);
    let (f, _) = register(&s, user, &mut token).await;
    let bg = begin(&s, &withdrawal(user, "wd-1")).await;
    assert_eq!(
        jv(&bg.webauthn_request_options_json)["publicKey"]["userVerification"],
        "required"
    );
    for n in 1..=2u32 {
        let r = get(&mut token, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
        assert_eq!(flags_and_counter(&r).0 & (UP | UV), UP, "presence only");
        let before = snapshot(s.sigil());
        let st = assert_status(
            complete(&s, &bg.challenge_id, user, &r).await,
            Code::PermissionDenied,
            "user verification",
        );
        assert!(
            st.message().contains(&format!("{} attempts left", 5 - n)),
            "{}",
            st.message()
        );
        assert_ne!(before, snapshot(s.sigil()), "the failure is recorded");
        assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, n);
    }

    // add_address is not in require_uv_for: presence suffices, no `mfa`.
    let intent = add_address_intent(user);
    let b = begin(&s, &intent).await;
    assert_eq!(
        jv(&b.webauthn_request_options_json)["publicKey"]["userVerification"],
        "preferred"
    );
    let r = get(&mut token, ORIGIN, &b.webauthn_request_options_json, |_| {}).unwrap();
    let done = complete(&s, &b.challenge_id, user, &r).await.unwrap();
    assert_eq!(done.amr, ["hwk", "user"]);
    assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, 0);
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

/// A cloned authenticator (SoftToken state copied with to_cbor/from_cbor
/// after registration): the clone approves (counter 1), then the original
/// presents counter 1 again: refused, the factor is marked suspected
/// cloned (ListFactors, the protection report) and `factor_suspected_cloned`
/// is emitted.
#[tokio::test(flavor = "multi_thread")]
async fn counter_regression_marks_the_credential_suspected_cloned() {
    let s = TestServer::start().await;
    let user = "wa-hank";
    let (mut token, _) = soft_token(true);
    let (f, _) = register(&s, user, &mut token).await;
    let mut clone = SoftToken::from_cbor(&token.to_cbor().unwrap()).unwrap();

    approve_with(&s, &withdrawal(user, "wd-1"), &mut clone).await.unwrap();
    assert!(!factor(&s, user, &f.factor_id).await.suspected_cloned);

    let bg = begin(&s, &withdrawal(user, "wd-2")).await;
    let r = get(&mut token, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    assert_eq!(
        flags_and_counter(&r).1,
        1,
        "the original counts from where the clone started"
    );
    let st = assert_status(
        complete(&s, &bg.challenge_id, user, &r).await,
        Code::PermissionDenied,
        "may be cloned",
    );
    assert!(st.message().contains(&f.credential_id), "{}", st.message());

    let marked = factor(&s, user, &f.factor_id).await;
    assert!(marked.suspected_cloned);
    assert_eq!(marked.consecutive_failures, 1);
    let events = s.collect_events(0).await;
    let cloned = events_of_kind(&events, "factor_suspected_cloned");
    assert_eq!(cloned.len(), 1, "{events:?}");
    assert_eq!(cloned[0].user_id, user);
    assert_eq!(cloned[0].details["factor_id"], f.factor_id);
    assert_eq!(cloned[0].details["credential_id"], f.credential_id);
    let report = s
        .account("frontend")
        .await
        .get_account_protection_status(pb::GetAccountProtectionStatusRequest {
            user_id: user.into(),
            as_of: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let item = report
        .items
        .iter()
        .find(|i| i.name == "no_factor_suspected_cloned")
        .unwrap();
    assert!(!item.ok && item.evidence.contains(&f.factor_id), "{item:?}");
    assert!(!report.eligible);
}

/// Authenticators without a signature counter report 0 every time
/// (WebAuthn §6.1.1); that is accepted, again and again, and not taken for a
/// clone. (Feasible through the public API: with no AAGUID allow-list the
/// server takes `none` attestation, which RingKey gives.) A key that
/// counted once and then reports 0 is a regression, though.
#[tokio::test(flavor = "multi_thread")]
async fn always_zero_counter_is_accepted() {
    let s = TestServer::start().await;
    let user = "wa-ivy";
    let mut key = RingKey::new();
    key.step = 0;
    let (f, _) = register(&s, user, &mut key).await;
    assert_eq!(f.aaguid, "", "an all-zero AAGUID is not reported");
    for n in 0..3 {
        let intent = withdrawal(user, &format!("wd-{n}"));
        let done = approve_with(&s, &intent, &mut key).await.unwrap();
        assert_eq!(done.amr, ["hwk", "user", "mfa"]);
        let ev = claims_of(&done.approval).webauthn.unwrap();
        let ad = b64url::decode(&ev.authenticator_data).unwrap();
        assert_eq!(&ad[33..37], &[0, 0, 0, 0]);
        verify_webauthn_evidence(&ev, &domain_intent(&intent).digest(), &sec1_of(&f), None).unwrap();
    }
    let after = factor(&s, user, &f.factor_id).await;
    assert!(!after.suspected_cloned);
    assert_eq!(after.consecutive_failures, 0);

    // contrast: counting, then back to 0
    let user = "wa-ivy-2";
    let mut key = RingKey::new();
    let (f, _) = register(&s, user, &mut key).await;
    approve_with(&s, &withdrawal(user, "wd-1"), &mut key).await.unwrap();
    key.counter = 0;
    key.step = 0;
    let r = approve_with(&s, &withdrawal(user, "wd-2"), &mut key).await;
    assert_status(r, Code::PermissionDenied, "may be cloned");
    assert!(factor(&s, user, &f.factor_id).await.suspected_cloned);
}

// ---------------------------------------------------------------------------
// Credential ids across users
// ---------------------------------------------------------------------------

/// A credential id is registered to one user only.
///
/// Real authenticators draw a fresh random credential id per registration
/// (a cloned SoftToken too), so a collision cannot come from them. This
/// test constructs one: two *different* RingKey key pairs that both report
/// the same credential id X, each producing a genuine, correctly formed
/// registration (`none` attestation, accepted without an allow-list) over
/// its own user's ceremony challenge. What it shows:
/// 1. user A's registration response submitted to user B's ceremony is
///    refused for its challenge (PERMISSION_DENIED), and uses up the
///    ceremony;
/// 2. B's own registration of a key claiming A's id X is refused with
///    FAILED_PRECONDITION "already registered", B gets no factor, and A's
///    credential keeps working for A (the index still points to A);
/// 3. the same user registering X again is refused (excluded credential);
/// 4. A's credential cannot answer B's challenge (the authenticator signs
///    B's challenge with A's key): NOT_FOUND, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn credential_id_is_registered_to_one_user_only() {
    let s = TestServer::start().await;
    let (alice, bob) = ("wa-alice-x", "wa-bob-x");
    let id_x = vec![0x5a; 16];
    let mut key_a = RingKey::new();
    key_a.fixed_id = Some(id_x.clone());
    let (fa, response_a) = register(&s, alice, &mut key_a).await;
    assert_eq!(fa.credential_id, b64url::encode(&id_x));

    // 1. A's registration response in B's ceremony
    let b1 = begin_registration(&s, bob, "").await.unwrap();
    assert_status(
        finish_registration(&s, bob, &b1.ceremony_id, &response_a).await,
        Code::PermissionDenied,
        "different challenge",
    );
    let genuine = create(&mut RingKey::new(), ORIGIN, &b1.options_json, |_| {}).unwrap();
    assert_status(
        finish_registration(&s, bob, &b1.ceremony_id, &genuine).await,
        Code::NotFound,
        "not found",
    );

    // 2. another key claiming id X, over B's own ceremony
    let mut key_b = RingKey::new();
    key_b.fixed_id = Some(id_x.clone());
    let b2 = begin_registration(&s, bob, "").await.unwrap();
    let collision = create(&mut key_b, ORIGIN, &b2.options_json, |_| {}).unwrap();
    assert_eq!(jv(&collision)["id"], fa.credential_id.as_str());
    assert_ne!(
        member_bytes(&collision, &["response", "attestationObject"]),
        member_bytes(&response_a, &["response", "attestationObject"]),
        "another key"
    );
    assert_status(
        finish_registration(&s, bob, &b2.ceremony_id, &collision).await,
        Code::FailedPrecondition,
        "already registered",
    );
    assert!(factors(&s, bob).await.is_empty());
    approve_with(&s, &withdrawal(alice, "wd-1"), &mut key_a).await.unwrap();

    // 3. the same user, the same credential again (after step-up)
    let enroll = approve_with(&s, &enroll_factor_intent(alice, "webauthn:"), &mut key_a)
        .await
        .unwrap();
    let b3 = begin_registration(&s, alice, &enroll.approval).await.unwrap();
    let excluded: Vec<String> = jv(&b3.options_json)["publicKey"]["excludeCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(excluded, [fa.credential_id.as_str()]);
    let again = create(&mut key_a, ORIGIN, &b3.options_json, |_| {}).unwrap();
    assert_status(
        finish_registration(&s, alice, &b3.ceremony_id, &again).await,
        Code::PermissionDenied,
        "already registered",
    );
    assert_eq!(factors(&s, alice).await.len(), 1);

    // 4. A's credential answering B's challenge
    let (mut token_b, _) = soft_token(true);
    let (fb, _) = register(&s, bob, &mut token_b).await;
    let bg = begin(&s, &withdrawal(bob, "wd-1")).await;
    let by_a = get(&mut key_a, ORIGIN, &bg.webauthn_request_options_json, |v| {
        v["publicKey"]["allowCredentials"] = serde_json::json!([{"type": "public-key", "id": fa.credential_id}])
    })
    .unwrap();
    // Only the attempt is counted (against bob), nothing else is written.
    let before = snapshot_but_attempts(s.sigil());
    let st = assert_status(
        complete(&s, &bg.challenge_id, bob, &by_a).await,
        Code::NotFound,
        &format!("credential {} is not registered to user '{bob}'", fa.credential_id),
    );
    assert!(
        !st.message().contains(alice),
        "does not reveal the owner: {}",
        st.message()
    );
    assert_eq!(before, snapshot_but_attempts(s.sigil()), "nothing written");
    assert_eq!(factor(&s, bob, &fb.factor_id).await.consecutive_failures, 0);
    // control: B's own key
    let r = get(&mut token_b, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    complete(&s, &bg.challenge_id, bob, &r).await.unwrap();

    // 5. Only a live factor holds an id: once A removed the factor, B can
    //    register X (with B's key), and X then means B's key only: A's key
    //    signing as X over B's challenge does not verify.
    let mut remove = enroll_factor_intent(alice, "webauthn:");
    remove.action = "remove_factor".into();
    remove.memo = fa.factor_id.clone();
    let removal = approve_with(&s, &remove, &mut key_a).await.unwrap();
    s.factors("frontend")
        .await
        .remove_factor(pb::RemoveFactorRequest {
            user_id: alice.into(),
            factor_id: fa.factor_id.clone(),
            step_up_approval: removal.approval,
        })
        .await
        .unwrap();
    assert!(factors(&s, alice).await.is_empty());
    let step_up = approve_with(&s, &enroll_factor_intent(bob, "webauthn:"), &mut token_b)
        .await
        .unwrap();
    let mut key_b2 = RingKey::new();
    key_b2.fixed_id = Some(id_x.clone());
    let (fbx, _) = register_with(&s, bob, &mut key_b2, &step_up.approval).await;
    assert_eq!(fbx.credential_id, fa.credential_id);
    let bg = begin(&s, &withdrawal(bob, "wd-2")).await;
    let by_a = get(&mut key_a, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    assert_status(
        complete(&s, &bg.challenge_id, bob, &by_a).await,
        Code::PermissionDenied,
        "signature does not verify",
    );
    let r = get(&mut key_b2, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    let done = complete(&s, &bg.challenge_id, bob, &r).await.unwrap();
    assert_eq!(
        claims_of(&done.approval).webauthn.unwrap().credential_id,
        fbx.credential_id
    );
}

// ---------------------------------------------------------------------------
// Attestation policy
// ---------------------------------------------------------------------------

/// With an AAGUID allow-list (and the SoftToken's attestation root trusted):
/// the allowed model under its root registers; the same model when its
/// AAGUID is not on the list, another SoftToken (allowed AAGUID, untrusted
/// root), SoftPasskey's self attestation and a `none` attestation claiming
/// the allowed AAGUID are all refused, and none gets a factor.
#[tokio::test(flavor = "multi_thread")]
async fn aaguid_allow_list_and_unverifiable_attestation() {
    let (mut token, pem) = soft_token(true);
    let s = TestServer::start_with_roots(
        |c| {
            relaxed(c);
            c.webauthn.aaguid_allow_list = vec![SOFTTOKEN_AAGUID];
        },
        vec![pem.clone()],
    )
    .await;

    let (f, _) = register(&s, "wa-ok", &mut token).await;
    assert_eq!(f.aaguid, SOFTTOKEN_AAGUID.to_string());
    approve_with(&s, &withdrawal("wa-ok", "wd-1"), &mut token)
        .await
        .unwrap();

    let (mut impostor, _) = soft_token(true);
    let b = begin_registration(&s, "wa-impostor", "").await.unwrap();
    let r = create(&mut impostor, ORIGIN, &b.options_json, |_| {}).unwrap();
    assert_status(
        finish_registration(&s, "wa-impostor", &b.ceremony_id, &r).await,
        Code::PermissionDenied,
        "does not chain",
    );

    let b = begin_registration(&s, "wa-passkey", "").await.unwrap();
    let r = create(&mut SoftPasskey::new(true), ORIGIN, &b.options_json, |_| {}).unwrap();
    assert_status(
        finish_registration(&s, "wa-passkey", &b.ceremony_id, &r).await,
        Code::PermissionDenied,
        "no verifiable attestation",
    );

    let mut liar = RingKey::new();
    liar.aaguid = *SOFTTOKEN_AAGUID.as_bytes();
    let b = begin_registration(&s, "wa-liar", "").await.unwrap();
    let r = create(&mut liar, ORIGIN, &b.options_json, |_| {}).unwrap();
    let st = assert_status(
        finish_registration(&s, "wa-liar", &b.ceremony_id, &r).await,
        Code::PermissionDenied,
        "no verifiable attestation (none attestation",
    );
    assert!(st.message().contains(&SOFTTOKEN_AAGUID.to_string()), "{}", st.message());
    // A model or attestation not accepted is told apart from a failed proof.
    assert_eq!(crate::support::pg::reason(&st), "AUTHENTICATOR_NOT_ALLOWED");
    for u in ["wa-impostor", "wa-passkey", "wa-liar"] {
        assert!(factors(&s, u).await.is_empty(), "{u}");
    }

    // The same SoftToken under a list that names another model.
    let other = Uuid::new_v4();
    let s2 = TestServer::start_with_roots(
        |c| {
            relaxed(c);
            c.webauthn.aaguid_allow_list = vec![other];
        },
        vec![pem],
    )
    .await;
    let b = begin_registration(&s2, "wa-ok", "").await.unwrap();
    let r = create(&mut token, ORIGIN, &b.options_json, |_| {}).unwrap();
    let st = assert_status(
        finish_registration(&s2, "wa-ok", &b.ceremony_id, &r).await,
        Code::PermissionDenied,
        &format!("AAGUID {SOFTTOKEN_AAGUID} is not on the allow-list"),
    );
    assert_eq!(crate::support::pg::reason(&st), "AUTHENTICATOR_NOT_ALLOWED");
    assert!(factors(&s2, "wa-ok").await.is_empty());
}

/// Backup-eligible (synced) passkeys: registered and listed as such; they
/// approve other actions with `swk` instead of `hwk`, but not withdrawals
/// unless `synced_passkeys_may_withdraw`.
#[tokio::test(flavor = "multi_thread")]
async fn synced_passkeys_do_not_approve_withdrawals() {
    let s = TestServer::start().await;
    let user = "wa-synced";
    let mut passkey = RingKey::new();
    passkey.synced = true;
    let (f, _) = register(&s, user, &mut passkey).await;
    assert!(f.backup_eligible);

    let done = approve_with(&s, &add_address_intent(user), &mut passkey).await.unwrap();
    assert_eq!(done.amr, ["swk", "user", "mfa"]);

    // Refused when the approval begins: the passkey is not even offered.
    let r = s
        .approvals("withdrawal-engine")
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal(user, "wd-1")),
            device: None,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "synced passkey");

    let s2 = TestServer::start_with(|c| {
        relaxed(c);
        c.webauthn.synced_passkeys_may_withdraw = true;
    })
    .await;
    let mut passkey = RingKey::new();
    passkey.synced = true;
    register(&s2, user, &mut passkey).await;
    let done = approve_with(&s2, &withdrawal(user, "wd-1"), &mut passkey)
        .await
        .unwrap();
    assert_eq!(done.amr, ["swk", "user", "mfa"]);
}

// ---------------------------------------------------------------------------
// Step-up
// ---------------------------------------------------------------------------

/// Once a user has an active factor, another WebAuthn registration needs an
/// unredeemed `enroll_factor` approval of that user (redeemed by the call):
/// none, a withdrawal approval, another user's, or a used one are refused
/// without writing anything. The new ceremony excludes the existing
/// credential; both keys then answer. The same holds for a TOTP user.
#[tokio::test(flavor = "multi_thread")]
async fn second_registration_needs_an_enroll_factor_approval() {
    let s = TestServer::start().await;
    let user = "wa-step";
    let (mut token1, _) = soft_token(true);
    let (f1, _) = register(&s, user, &mut token1).await;

    let before = snapshot(s.sigil());
    assert_status(
        begin_registration(&s, user, "").await,
        Code::PermissionDenied,
        "enroll_factor",
    );
    assert_eq!(before, snapshot(s.sigil()), "nothing written");
    let wd = approve_with(&s, &withdrawal(user, "wd-1"), &mut token1).await.unwrap();
    let before = snapshot(s.sigil());
    assert_status(
        begin_registration(&s, user, &wd.approval).await,
        Code::PermissionDenied,
        "action 'withdrawal'",
    );
    assert_eq!(before, snapshot(s.sigil()), "nothing written");
    // another user's enroll_factor approval
    let (mut other_token, _) = soft_token(true);
    register(&s, "wa-other", &mut other_token).await;
    let others = approve_with(&s, &enroll_factor_intent("wa-other", "webauthn:"), &mut other_token)
        .await
        .unwrap();
    let before = snapshot(s.sigil());
    assert_status(
        begin_registration(&s, user, &others.approval).await,
        Code::PermissionDenied,
        "of user 'wa-other'",
    );
    assert_eq!(before, snapshot(s.sigil()), "nothing written");
    // the refused withdrawal approval was not consumed
    s.approvals("withdrawal-engine")
        .await
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&wd.approval),
            idempotency_key: String::new(),
            approval: wd.approval,
        })
        .await
        .unwrap();

    let enroll = approve_with(&s, &enroll_factor_intent(user, "webauthn:"), &mut token1)
        .await
        .unwrap();
    let b = begin_registration(&s, user, &enroll.approval).await.unwrap();
    let excluded = jv(&b.options_json)["publicKey"]["excludeCredentials"].clone();
    assert_eq!(excluded.as_array().unwrap().len(), 1);
    assert_eq!(excluded[0]["id"], f1.credential_id.as_str());
    // the approval is redeemed by that call
    assert_status(
        begin_registration(&s, user, &enroll.approval).await,
        Code::FailedPrecondition,
        "already redeemed",
    );
    let (mut token2, _) = soft_token(true);
    let r = create(&mut token2, ORIGIN, &b.options_json, |_| {}).unwrap();
    let f2 = finish_registration(&s, user, &b.ceremony_id, &r).await.unwrap();
    assert_ne!(f2.credential_id, f1.credential_id);
    assert_eq!(factors(&s, user).await.len(), 2);

    let bg = begin(&s, &withdrawal(user, "wd-2")).await;
    let mut allowed: Vec<String> = jv(&bg.webauthn_request_options_json)["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    allowed.sort();
    let mut expected = vec![f1.credential_id.clone(), f2.credential_id.clone()];
    expected.sort();
    assert_eq!(allowed, expected);
    let r = get(&mut token2, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    let done = complete(&s, &bg.challenge_id, user, &r).await.unwrap();
    assert_eq!(
        claims_of(&done.approval).webauthn.unwrap().credential_id,
        f2.credential_id
    );
    approve_with(&s, &withdrawal(user, "wd-3"), &mut token1).await.unwrap();

    // A TOTP user adding a security key: a TOTP enroll_factor approval.
    let (_fid, seed) = s.enroll_totp("wa-totp").await;
    assert_status(
        begin_registration(&s, "wa-totp", "").await,
        Code::PermissionDenied,
        "enroll_factor",
    );
    let step_up = s.approve(&enroll_factor_intent("wa-totp", "webauthn:"), &seed).await;
    let (mut token3, _) = soft_token(true);
    let (f3, _) = register_with(&s, "wa-totp", &mut token3, &step_up).await;
    assert_eq!(f3.kind, pb::FactorKind::Webauthn as i32);
    assert_eq!(factors(&s, "wa-totp").await.len(), 2);
}

// ---------------------------------------------------------------------------
// Bad input: the right status, nothing written
// ---------------------------------------------------------------------------

/// Malformed registration responses (not JSON, wrong base64url, truncated
/// CBOR, truncated clientDataJSON, inconsistent ids, wrong type, empty, too
/// large) are INVALID_ARGUMENT with a BadRequest detail and a message naming
/// what is wrong; they write nothing and leave the ceremony usable. A
/// ceremony of another user is PERMISSION_DENIED, an unknown one NOT_FOUND,
/// both writing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_registration_responses_are_invalid_argument_and_write_nothing() {
    let s = TestServer::start().await;
    let user = "wa-kate";
    let (mut token, _) = soft_token(true);
    let b = begin_registration(&s, user, "").await.unwrap();
    let good = create(&mut token, ORIGIN, &b.options_json, |_| {}).unwrap();
    let before = snapshot(s.sigil());

    let ao = ["response", "attestationObject"];
    let cdj = ["response", "clientDataJSON"];
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not the JSON of"),
        ("{}".into(), "not the JSON of"),
        (edit_json(&good, &ao, |v| *v = "@@@@".into()), "base64url"),
        (edit_json(&good, &cdj, |v| *v = "a=b".into()), "base64url"),
        (
            edit_bytes(&good, &ao, |b| b.truncate(b.len() / 2)),
            "attestationObject is not a valid attestation object",
        ),
        (
            edit_bytes(&good, &ao, |b| b.truncate(3)),
            "attestationObject is not a valid attestation object",
        ),
        (
            edit_bytes(&good, &cdj, |b| b.truncate(10)),
            "clientDataJSON is not JSON",
        ),
        (
            edit_json(&good, &["id"], |v| *v = format!("{}=", v.as_str().unwrap()).into()),
            "id is not unpadded base64url",
        ),
        (
            edit_json(&good, &["id"], |v| *v = "AAAA".into()),
            "id and rawId name different credentials",
        ),
        (
            edit_json(&good, &["type"], |v| *v = "password".into()),
            "type is 'password'",
        ),
        (String::new(), "response_json"),
        (format!("{good}{}", " ".repeat(64 * 1024)), "64 KiB"),
    ];
    for (response, needle) in &cases {
        let st = assert_status(
            finish_registration(&s, user, &b.ceremony_id, response).await,
            Code::InvalidArgument,
            needle,
        );
        assert!(!bad_request_field(&st).is_empty());
        assert_eq!(before, snapshot(s.sigil()), "{needle}: nothing written");
    }

    // A ceremony of another user, even with the genuine response.
    let st = assert_status(
        finish_registration(&s, "wa-mallory", &b.ceremony_id, &good).await,
        Code::PermissionDenied,
        "was not started for user 'wa-mallory'",
    );
    assert!(st.get_details_bad_request().is_none());
    assert_status(
        finish_registration(&s, user, "rg_doesnotexist", &good).await,
        Code::NotFound,
        "not found",
    );
    let st = assert_status(
        finish_registration(&s, user, "", &good).await,
        Code::InvalidArgument,
        "ceremony_id",
    );
    assert_eq!(bad_request_field(&st), "ceremony_id");
    assert_eq!(before, snapshot(s.sigil()), "nothing written");

    // control: the ceremony is still there for its user
    let f = finish_registration(&s, user, &b.ceremony_id, &good).await.unwrap();
    assert_eq!(f.state, pb::FactorState::Active as i32);
}

/// Malformed assertions are INVALID_ARGUMENT with a BadRequest detail and
/// write nothing (no failure counted, challenge still open); an unknown
/// credential id is NOT_FOUND, another user's challenge PERMISSION_DENIED,
/// an unknown challenge NOT_FOUND, all writing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_assertions_are_invalid_argument_and_write_nothing() {
    let s = TestServer::start().await;
    let user = "wa-liam";
    let (mut token, _) = soft_token(true);
    let (f, _) = register(&s, user, &mut token).await;
    let (mut token_b, _) = soft_token(true);
    let (fb, _) = register(&s, "wa-mia", &mut token_b).await;
    let bg = begin(&s, &withdrawal(user, "wd-1")).await;
    let good = get(&mut token, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    let before = snapshot(s.sigil());

    let ad = ["response", "authenticatorData"];
    let cdj = ["response", "clientDataJSON"];
    let sig = ["response", "signature"];
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not JSON"),
        ("[]".into(), "has no credential \"id\""),
        ("{}".into(), "has no credential \"id\""),
        (
            edit_json(&good, &["id"], |v| *v = "@@@".into()),
            "credential id is not base64url",
        ),
        (edit_json(&good, &["id"], |v| *v = 7.into()), "has no credential \"id\""),
        (edit_json(&good, &sig, |v| *v = "@@@@".into()), "base64url"),
        (
            edit_json(&good, &["rawId"], |v| *v = serde_json::Value::Null),
            "not the JSON of",
        ),
        (
            edit_bytes(&good, &["rawId"], |b| b[0] ^= 1),
            "id and rawId name different credentials",
        ),
        (
            edit_bytes(&good, &ad, |b| b.truncate(20)),
            "authenticatorData is 20 bytes",
        ),
        (edit_bytes(&good, &cdj, |b| b.truncate(5)), "clientDataJSON is not JSON"),
        (
            edit_json(&good, &["type"], |v| *v = "password".into()),
            "type is 'password'",
        ),
        (String::new(), "webauthn.response_json"),
        (format!("{good}{}", " ".repeat(64 * 1024)), "64 KiB"),
    ];
    for (response, needle) in &cases {
        let st = assert_status(
            complete(&s, &bg.challenge_id, user, response).await,
            Code::InvalidArgument,
            needle,
        );
        assert!(!bad_request_field(&st).is_empty());
        assert_eq!(before, snapshot(s.sigil()), "{needle}: nothing written");
    }

    // An unknown credential id (id and rawId consistent).
    let unknown = b64url::encode(&[0xee; 16]);
    let r = edit_json(&good, &[], |v| {
        v["id"] = unknown.clone().into();
        v["rawId"] = unknown.clone().into();
    });
    assert_status(
        complete(&s, &bg.challenge_id, user, &r).await,
        Code::NotFound,
        &format!("credential {unknown} is not registered to user '{user}'"),
    );
    // Another user's challenge, with the owner's assertion or with one the
    // other user's own key made over it.
    let by_b = get(&mut token_b, ORIGIN, &bg.webauthn_request_options_json, |v| {
        v["publicKey"]["allowCredentials"] = serde_json::json!([{"type": "public-key", "id": fb.credential_id}])
    })
    .unwrap();
    for response in [&good, &by_b] {
        assert_status(
            complete(&s, &bg.challenge_id, "wa-mia", response).await,
            Code::PermissionDenied,
            "not issued to user 'wa-mia'",
        );
    }
    assert_status(
        complete(&s, "ch_doesnotexist", user, &good).await,
        Code::NotFound,
        "not found",
    );
    let st = assert_status(
        complete(&s, "", user, &good).await,
        Code::InvalidArgument,
        "challenge_id",
    );
    assert_eq!(bad_request_field(&st), "challenge_id");
    // The unknown credential id was counted against the user; nothing else
    // was written.
    assert_eq!(
        but_attempts(before.clone()),
        snapshot_but_attempts(s.sigil()),
        "nothing written"
    );
    assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, 0);

    // control: the untouched assertion still answers the challenge
    complete(&s, &bg.challenge_id, user, &good).await.unwrap();
}

// ---------------------------------------------------------------------------
// Known server bugs (ignored until fixed; see the report)
// ---------------------------------------------------------------------------

/// The API promises "Field errors carry a google.rpc.BadRequest detail
/// naming the field" (the proto field path, src/error.rs). A malformed
/// WebAuthn response is named `response_json` / `webauthn.response_json`
/// only for some defects; CBOR, base64url and clientDataJSON defects are
/// reported on the webauthn module's internal names `credential` and
/// `assertion`, which are no request fields.
#[tokio::test(flavor = "multi_thread")]
async fn bad_request_detail_names_the_request_field() {
    let s = TestServer::start().await;
    let user = "wa-nina";
    let (mut token, _) = soft_token(true);
    let b = begin_registration(&s, user, "").await.unwrap();
    let good = create(&mut token, ORIGIN, &b.options_json, |_| {}).unwrap();
    let truncated = edit_bytes(&good, &["response", "attestationObject"], |b| b.truncate(b.len() / 2));
    let st = assert_status(
        finish_registration(&s, user, &b.ceremony_id, &truncated).await,
        Code::InvalidArgument,
        "attestationObject",
    );
    assert_eq!(bad_request_field(&st), "response_json");
    finish_registration(&s, user, &b.ceremony_id, &good).await.unwrap();

    let bg = begin(&s, &withdrawal(user, "wd-1")).await;
    let good = get(&mut token, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    let bad_sig = edit_json(&good, &["response", "signature"], |v| *v = "@@@@".into());
    let st = assert_status(
        complete(&s, &bg.challenge_id, user, &bad_sig).await,
        Code::InvalidArgument,
        "base64url",
    );
    assert_eq!(bad_request_field(&st), "webauthn.response_json");
}

/// The API promises "Synced passkeys are offered for withdrawals only if
/// policy allows" and FAILED_PRECONDITION at BeginApproval when the user has
/// "no factor of a kind the policy allows for this intent". BeginApproval
/// offers a synced passkey in allowCredentials for a withdrawal anyway, and
/// opens a challenge that only CompleteApproval refuses.
#[tokio::test(flavor = "multi_thread")]
async fn synced_passkey_is_not_offered_for_withdrawals() {
    let s = TestServer::start().await;
    let user = "wa-olga";
    let mut passkey = RingKey::new();
    passkey.synced = true;
    let (mut token, _) = soft_token(true);
    let (device_bound, _) = register(&s, user, &mut token).await;
    let enroll = approve_with(&s, &enroll_factor_intent(user, "webauthn:"), &mut token)
        .await
        .unwrap();
    let (synced, _) = register_with(&s, user, &mut passkey, &enroll.approval).await;
    assert!(synced.backup_eligible);

    let bg = begin(&s, &withdrawal(user, "wd-1")).await;
    let allowed: Vec<String> = jv(&bg.webauthn_request_options_json)["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(allowed, [device_bound.credential_id.as_str()]);
    assert!(bg.factors.iter().all(|f| !f.backup_eligible));

    // A user whose only factor is a synced passkey has nothing that may
    // approve a withdrawal.
    let mut only = RingKey::new();
    only.synced = true;
    register(&s, "wa-olga-2", &mut only).await;
    let r = s
        .approvals("withdrawal-engine")
        .await
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("wa-olga-2", "wd-1")),
            device: None,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "");
}

/// Attempts naming a credential id the user does not have are rate limited
/// per user like a factor's failures: after `lockout.max_failures` of them
/// they are refused, unchecked, as locked; the user's own key still works.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_credential_ids_are_rate_limited_per_user() {
    let s = TestServer::start().await;
    let user = "wa-una";
    let (mut token, _) = soft_token(true);
    let (f, _) = register(&s, user, &mut token).await;
    let max = s.cfg.lockout.max_failures;
    let bg = begin(&s, &withdrawal(user, "wd-1")).await;
    let good = get(&mut token, ORIGIN, &bg.webauthn_request_options_json, |_| {}).unwrap();
    for i in 0..(max + 3) {
        let unknown = b64url::encode(&[i as u8 + 1; 16]);
        let r = edit_json(&good, &[], |v| {
            v["id"] = unknown.clone().into();
            v["rawId"] = unknown.clone().into();
        });
        let st = complete(&s, &bg.challenge_id, user, &r)
            .await
            .expect_err("an unknown credential approved");
        if i + 1 < max {
            assert_eq!(st.code(), Code::NotFound, "attempt {i}: {st:?}");
            assert!(st.message().contains("more such attempts"), "{}", st.message());
        } else {
            assert_eq!(st.code(), Code::ResourceExhausted, "attempt {i}: {st:?}");
            assert!(st.message().contains("unknown credential ids"), "{}", st.message());
        }
    }
    // Counted: max audited refusals, the rest refused unchecked.
    let counted = s
        .sigil()
        .ops()
        .audit_entries(0, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| sigil::audit::AuditEntry::decode(&e.value).unwrap())
        .filter(|e| e.action == "factor.unknown_id" && e.user_id == user)
        .count();
    assert_eq!(counted, max as usize);
    // The user's own key is not locked out by someone else's probing.
    complete(&s, &bg.challenge_id, user, &good).await.unwrap();
    assert_eq!(factor(&s, user, &f.factor_id).await.consecutive_failures, 0);
}

/// Two registrations begun side by side each find room for a factor; with
/// room for one, the second to finish is refused (TOO_MANY_FACTORS), its
/// ceremony used up, and the user holds one factor.
#[tokio::test(flavor = "multi_thread")]
async fn the_most_factors_a_user_holds_is_checked_again_when_a_registration_finishes() {
    let s = TestServer::start_with(|c| c.protection.max_factors_per_user = 1).await;
    let user = "wa-fran";
    let (mut first, _) = soft_token(true);
    let (mut second, _) = soft_token(true);
    let b1 = begin_registration(&s, user, "").await.unwrap();
    let b2 = begin_registration(&s, user, "").await.unwrap();
    let r1 = create(&mut first, ORIGIN, &b1.options_json, |_| {}).unwrap();
    let r2 = create(&mut second, ORIGIN, &b2.options_json, |_| {}).unwrap();
    finish_registration(&s, user, &b1.ceremony_id, &r1).await.unwrap();
    let st = finish_registration(&s, user, &b2.ceremony_id, &r2).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert_eq!(st.get_error_details().error_info().unwrap().reason, "TOO_MANY_FACTORS");
    assert_eq!(factors(&s, user).await.len(), 1);
    let st = finish_registration(&s, user, &b2.ceremony_id, &r2).await.unwrap_err();
    assert_eq!(
        st.code(),
        Code::NotFound,
        "the refused registration used up its ceremony: {st:?}"
    );
    // And a third is refused at its start.
    let st = begin_registration(&s, user, "").await.unwrap_err();
    assert_eq!(st.get_error_details().error_info().unwrap().reason, "TOO_MANY_FACTORS");
}
