//! Approvals end to end: issue, verify offline, redeem once; every kind of
//! forged, altered, expired or replayed approval refused.
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sigil::pb;
use sigil_verify::{b64url, Jwk, Verifier, VerifyError};
use tonic::Code;

use crate::support::files::*;
use crate::support::harness::*;
use crate::support::tokens::*;

#[tokio::test(flavor = "multi_thread")]
async fn full_flow_issue_verify_redeem_once() {
    let s = TestServer::start().await;
    let (_fid, seed) = s.enroll_totp("alice").await;
    let intent = withdrawal("alice", "wd-0001");
    let mut a = s.approvals("withdrawal-engine").await;
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: Some(pb::DeviceSignals {
                platform: "ios".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    // The digest Sigil binds to is the contract's digest (vector withdrawal-btc uses wd-0001).
    assert_eq!(
        hex(&b.intent_sha256),
        "56eeeca64c88df968fccabfc9f178590b6e453f1e577f358b6c02f223222b117"
    );
    // The default policy lets every factor kind approve a small withdrawal.
    assert_eq!(b.allowed_kinds.len(), 4);
    assert!(b.allowed_kinds.contains(&(pb::FactorKind::Totp as i32)));
    assert_eq!(b.factors.len(), 1);
    assert_eq!(b.expires_at, T0 + 30 + 300);
    let done = a
        .complete_approval(totp_proof(&b.challenge_id, "alice", &s.code(&seed, 0), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.amr, vec!["otp".to_string()]);

    // The engine verifies offline with the published keys, against its own record.
    let keys = jwks(&s).await;
    assert_eq!(keys.keys.len(), 1);
    assert_eq!(
        keys.keys[0].kid,
        keys.keys[0].thumbprint(),
        "kid is the RFC 7638 thumbprint"
    );
    let v = Verifier::new(&keys, "sigil", "withdrawal-engine").unwrap();
    let now = s.clock.now_secs();
    let c = v.verify_for(&done.approval, &domain_intent(&intent), now).unwrap();
    assert_eq!(c.sub, "alice");
    assert_eq!(c.act, "withdrawal");
    assert_eq!(c.jti, done.jti);
    assert_eq!(c.exp - c.iat, 120);
    assert_eq!(c.intent_sha256, b64url::encode(&b.intent_sha256));
    let header: serde_json::Value =
        serde_json::from_slice(&b64url::decode(done.approval.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], keys.keys[0].kid.as_str());

    // The answered challenge is kept only as a tombstone: no intent,
    // device signals, nonce or ceremony state.
    let stored = s
        .sigil()
        .store()
        .get(sigil::store::Table::Challenges, b.challenge_id.as_bytes())
        .unwrap()
        .unwrap();
    let tomb: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(tomb["user_id"], "alice");
    assert_eq!(tomb["consumed_at"], serde_json::json!(T0 + 30));
    for gone in ["intent", "device", "nonce", "allowed", "webauthn_state"] {
        assert!(tomb.get(gone).is_none(), "{gone} kept in {tomb}");
    }

    // The challenge answers once.
    let r = a
        .complete_approval(totp_proof(&b.challenge_id, "alice", &s.code(&seed, 1), ""))
        .await;
    assert_status(r, Code::FailedPrecondition, "already answered");

    // Redeem exactly once.
    let red = a
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: done.approval.clone(),
            expected_intent: Some(intent.clone()),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let claims = red.claims.unwrap();
    assert_eq!(claims.jti, done.jti);
    assert_eq!(claims.intent.unwrap(), intent);
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&done.approval),
            idempotency_key: String::new(),
            approval: done.approval,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "already redeemed");
}

/// With `hsm.offload_calls` on (an HSM reached over the network), the
/// approval RPCs run on the blocking pool and wait for each sync there: the
/// same approvals and refusals, and the same state after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn offloaded_hsm_calls_approve_and_refuse_the_same() {
    let mut s = TestServer::start_with(|c| {
        c.protection.require_whitelisted_address = false;
        c.protection.security_change_lock_seconds = 0;
        c.hsm.offload_calls = true;
    })
    .await;
    let (_fid, seed) = s.enroll_totp("olga").await;
    let intent = withdrawal("olga", "wd-offload-1");
    let b = begin(&s, &intent).await;
    let mut a = s.approvals("withdrawal-engine").await;
    let r = a
        .complete_approval(totp_proof(&b.challenge_id, "olga", "000000", ""))
        .await;
    assert_status(r, Code::PermissionDenied, "");
    let done = a
        .complete_approval(totp_proof(&b.challenge_id, "olga", &s.code(&seed, 0), ""))
        .await
        .unwrap()
        .into_inner();
    let keys = jwks(&s).await;
    let v = Verifier::new(&keys, "sigil", "withdrawal-engine").unwrap();
    v.verify_for(&done.approval, &domain_intent(&intent), s.clock.now_secs())
        .unwrap();
    a.redeem_approval(pb::RedeemApprovalRequest {
        approval: done.approval.clone(),
        expected_intent: Some(intent.clone()),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
    drop(a);
    s.restart().await;
    let mut a = s.approvals("withdrawal-engine").await;
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&done.approval),
            idempotency_key: String::new(),
            approval: done.approval,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "already redeemed");
    let r = a
        .complete_approval(totp_proof(&b.challenge_id, "olga", &s.code(&seed, 0), ""))
        .await;
    assert_status(r, Code::FailedPrecondition, "already answered");
}

#[tokio::test(flavor = "multi_thread")]
async fn any_changed_intent_field_is_refused() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("erin").await;
    let mut intent = withdrawal("erin", "wd-9");
    intent.memo = "tag-1".into();
    let token = s.approve(&intent, &seed).await;
    let keys = jwks(&s).await;
    let v = Verifier::new(&keys, "sigil", "withdrawal-engine").unwrap();
    let now = s.clock.now_secs();
    let mut a = s.approvals("withdrawal-engine").await;
    let base = domain_intent(&intent);
    let names = [
        "action",
        "user_id",
        "withdrawal_id",
        "asset",
        "network",
        "amount",
        "destination",
        "memo",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut changed = intent.clone();
        let field = match i {
            0 => &mut changed.action,
            1 => &mut changed.user_id,
            2 => &mut changed.withdrawal_id,
            3 => &mut changed.asset,
            4 => &mut changed.network,
            5 => &mut changed.amount,
            6 => &mut changed.destination,
            _ => &mut changed.memo,
        };
        field.push('0');
        assert_eq!(
            v.verify_for(&token, &domain_intent(&changed), now).unwrap_err(),
            VerifyError::IntentMismatch { field: name }
        );
        // Sigil's own redemption refuses it too, and redeems nothing.
        let r = a
            .redeem_approval(pb::RedeemApprovalRequest {
                approval: token.clone(),
                expected_intent: Some(changed),
                idempotency_key: String::new(),
            })
            .await;
        assert_status(r, Code::FailedPrecondition, name);
    }
    // Changing the intent inside the token breaks the signature.
    let mut c = claims_of(&token);
    c.intent.amount = "5".into();
    c.intent_sha256 = b64url::encode(&c.intent.digest());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64url::encode(&serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    assert_eq!(v.verify(&forged, now).unwrap_err(), VerifyError::BadSignature);
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&forged),
            idempotency_key: String::new(),
            approval: forged,
        })
        .await;
    assert_status(r, Code::PermissionDenied, "signature");
    // The untouched approval still redeems: nothing was consumed by the refusals.
    a.redeem_approval(pb::RedeemApprovalRequest {
        approval: token,
        expected_intent: Some(intent),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
    assert!(v.verify_for("x.y.z", &base, now).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_approval_and_expired_challenge_are_refused() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("frank").await;
    let intent = withdrawal("frank", "wd-1");
    let token = s.approve(&intent, &seed).await; // clock moved 30 s after issue
    let mut a = s.approvals("withdrawal-engine").await;
    s.clock.advance(120 - 30 + 5 + 1); // past exp + Sigil's 5 s leeway
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&token),
            idempotency_key: String::new(),
            approval: token,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "expired");

    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("frank", "wd-2")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    s.clock.advance(300);
    let r = a
        .complete_approval(totp_proof(&b.challenge_id, "frank", &s.code(&seed, 0), ""))
        .await;
    assert_status(r, Code::FailedPrecondition, "expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_keys_and_weak_algorithms_are_refused() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("gina").await;
    let intent = withdrawal("gina", "wd-1");
    let token = s.approve(&intent, &seed).await;
    let claims = claims_of(&token);
    let keys = jwks(&s).await;
    let kid = keys.keys[0].kid.clone();
    let v = Verifier::new(&keys, "sigil", "withdrawal-engine").unwrap();
    let now = s.clock.now_secs();
    let mut a = s.approvals("withdrawal-engine").await;

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let attacker = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let pt = attacker.public_key().as_ref();
    let attacker_kid = Jwk::from_p256_point(pt[1..33].try_into().unwrap(), pt[33..65].try_into().unwrap()).kid;

    // Signed by a key outside the JWKS, under its own kid and under Sigil's kid.
    let own_kid = sign_with(&attacker, &attacker_kid, &claims);
    assert!(matches!(v.verify(&own_kid, now), Err(VerifyError::UnknownKey(_))));
    let stolen_kid = sign_with(&attacker, &kid, &claims);
    assert_eq!(v.verify(&stolen_kid, now).unwrap_err(), VerifyError::BadSignature);
    // alg none and HS256 (keyed with the public x coordinate).
    let none = forged_token(
        &format!(r#"{{"alg":"none","kid":"{kid}","typ":"sigil-approval+jwt"}}"#),
        &claims,
        b"",
    );
    assert!(matches!(
        v.verify(&none, now),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    let hs_header = format!(r#"{{"alg":"HS256","kid":"{kid}","typ":"sigil-approval+jwt"}}"#);
    let hs_input = format!(
        "{}.{}",
        b64url::encode(hs_header.as_bytes()),
        b64url::encode(&serde_json::to_vec(&claims).unwrap())
    );
    let mac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b64url::decode(&keys.keys[0].x).unwrap());
    let mac = ring::hmac::sign(&mac_key, hs_input.as_bytes());
    let hs = format!("{hs_input}.{}", b64url::encode(mac.as_ref()));
    assert!(matches!(v.verify(&hs, now), Err(VerifyError::UnsupportedAlgorithm(_))));

    // Sigil's redemption refuses all of them and redeems nothing.
    for forged in [own_kid, stolen_kid, none, hs] {
        let r = a
            .redeem_approval(pb::RedeemApprovalRequest {
                expected_intent: expected_of(&forged),
                idempotency_key: String::new(),
                approval: forged,
            })
            .await;
        assert_status(r, Code::PermissionDenied, "approval refused");
    }
    a.redeem_approval(pb::RedeemApprovalRequest {
        approval: token,
        expected_intent: Some(intent),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn challenge_of_another_user_is_refused() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("hank").await;
    let (_g, _seed2) = s.enroll_totp("ivy").await;
    let mut a = s.approvals("frontend").await;
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("hank", "w")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let r = a
        .complete_approval(totp_proof(&b.challenge_id, "ivy", &s.code(&seed, 0), ""))
        .await;
    assert_status(r, Code::PermissionDenied, "not issued to user 'ivy'");
    let r = a
        .complete_approval(totp_proof("ch_doesnotexist", "hank", &s.code(&seed, 0), ""))
        .await;
    assert_status(r, Code::NotFound, "not found");
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_restart_and_store_holds_no_seed() {
    let mut s = TestServer::start().await;
    let (fid, seed) = s.enroll_totp("judy").await;
    let intent = withdrawal("judy", "wd-1");
    let mut a = s.approvals("withdrawal-engine").await;
    let b = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone()),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let code = s.code(&seed, 0);
    let done = a
        .complete_approval(totp_proof(&b.challenge_id, "judy", &code, ""))
        .await
        .unwrap()
        .into_inner();
    a.redeem_approval(pb::RedeemApprovalRequest {
        expected_intent: expected_of(&done.approval),
        idempotency_key: String::new(),
        approval: done.approval.clone(),
    })
    .await
    .unwrap();
    let unredeemed = {
        s.clock.advance(30);
        s.approve(&withdrawal("judy", "wd-2"), &seed).await
    };
    s.clock.advance(-30); // back into the step of `code`, still inside the window

    s.restart().await;
    let mut a = s.approvals("withdrawal-engine").await;
    let mut f = s.factors("frontend").await;
    let list = f
        .list_factors(pb::ListFactorsRequest { user_id: "judy".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.factors.len(), 1);
    assert_eq!(list.factors[0].factor_id, fid);
    assert_eq!(list.factors[0].state, pb::FactorState::Active as i32);
    // The used step is still used.
    let b2 = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("judy", "wd-3")),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let r = a
        .complete_approval(totp_proof(&b2.challenge_id, "judy", &code, ""))
        .await;
    assert_status(r, Code::PermissionDenied, "not accepted");
    // The redeemed approval stays redeemed; the unredeemed one still redeems once.
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&done.approval),
            idempotency_key: String::new(),
            approval: done.approval,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "already redeemed");
    a.redeem_approval(pb::RedeemApprovalRequest {
        expected_intent: expected_of(&unredeemed),
        idempotency_key: String::new(),
        approval: unredeemed,
    })
    .await
    .unwrap();

    // Nowhere in the sled files is the seed, in any usual encoding.
    s.stop().await;
    let needles: Vec<Vec<u8>> = vec![
        seed.clone(),
        data_encoding::BASE32_NOPAD.encode(&seed).into_bytes(),
        data_encoding::BASE32_NOPAD.encode(&seed).to_lowercase().into_bytes(),
        data_encoding::HEXLOWER.encode(&seed).into_bytes(),
        data_encoding::HEXUPPER.encode(&seed).into_bytes(),
        data_encoding::BASE64.encode(&seed).into_bytes(),
        data_encoding::BASE64URL_NOPAD.encode(&seed).into_bytes(),
    ];
    let mut files = 0;
    let mut bytes = 0;
    for path in walk(&s.cfg.store.path) {
        let data = std::fs::read(&path).unwrap();
        files += 1;
        bytes += data.len();
        for n in &needles {
            assert!(
                !data.windows(n.len()).any(|w| w == n.as_slice()),
                "seed found in {} as {:?}",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    assert!(files > 0 && bytes > 0, "the store has files to search");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_challenges_and_approvals_are_purged_and_stay_refused() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("pia").await;
    let token = s.approve(&withdrawal("pia", "wd-1"), &seed).await;
    let mut a = s.approvals("withdrawal-engine").await;
    a.begin_approval(pb::BeginApprovalRequest {
        intent: Some(withdrawal("pia", "wd-2")),
        device: None,
    })
    .await
    .unwrap();
    let store = s.sigil().store().clone();
    assert_eq!(store.len(sigil::store::Table::Challenges).unwrap(), 2);
    assert_eq!(store.len(sigil::store::Table::Approvals).unwrap(), 1);
    // Still kept within the grace periods.
    s.clock.advance(3_000);
    assert_eq!(s.sigil().ops().purge_expired().unwrap(), 0);
    // Challenges are due an hour after they expire, approvals a day.
    s.clock.advance(1_000);
    assert_eq!(s.sigil().ops().purge_expired().unwrap(), 2);
    assert_eq!(store.len(sigil::store::Table::Challenges).unwrap(), 0);
    assert_eq!(store.len(sigil::store::Table::Approvals).unwrap(), 1);
    s.clock.advance(2 * 86_400);
    assert_eq!(s.sigil().ops().purge_expired().unwrap(), 1);
    assert_eq!(store.len(sigil::store::Table::Challenges).unwrap(), 0);
    assert_eq!(store.len(sigil::store::Table::Approvals).unwrap(), 0);
    // Their expiry index entries went with them.
    assert!(expiry_index(&store).is_empty());
    // A purged approval is refused (expired), and so it would be with a clock set back.
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&token),
            idempotency_key: String::new(),
            approval: token.clone(),
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "expired");
    s.clock.advance(-2 * 86_400 - 4_000);
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&token),
            idempotency_key: String::new(),
            approval: token,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "not known");
}

fn expiry_index(store: &std::sync::Arc<dyn sigil::store::Store>) -> Vec<Vec<u8>> {
    let entries = store.scan_prefix(sigil::store::Table::Meta, sigil::store::meta::EXPIRY_PREFIX);
    entries.unwrap().into_iter().map(|(k, _)| k).collect()
}

/// A store whose records were written before the expiry index existed
/// (or restored from such a backup) is indexed by the first sweep, once,
/// and its records are then purged like new ones.
#[tokio::test(flavor = "multi_thread")]
async fn records_written_before_the_expiry_index_are_indexed_then_purged() {
    use sigil::store::{meta, Batch, Table};
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("lea").await;
    s.approve(&withdrawal("lea", "wd-1"), &seed).await;
    s.approve(&withdrawal("lea", "wd-2"), &seed).await;
    let store = s.sigil().store().clone();
    // Every challenge and approval is indexed as it is written.
    assert_eq!(expiry_index(&store).len(), 4);
    // Take the store back to before the index.
    let mut b = Batch::new();
    for (k, v) in store.scan_prefix(Table::Meta, meta::EXPIRY_PREFIX).unwrap() {
        b.delete(Table::Meta, k, v.version);
    }
    let marker = store.get(Table::Meta, meta::EXPIRY_INDEXED).unwrap().unwrap();
    b.delete(Table::Meta, meta::EXPIRY_INDEXED, marker.version);
    store.commit(&b).unwrap();
    // The first sweep indexes them, deleting nothing that is not due.
    assert_eq!(s.sigil().ops().purge_expired().unwrap(), 0);
    assert_eq!(expiry_index(&store).len(), 4);
    assert!(store.get(Table::Meta, meta::EXPIRY_INDEXED).unwrap().is_some());
    s.clock.advance(3 * 86_400);
    assert_eq!(s.sigil().ops().purge_expired().unwrap(), 4);
    assert_eq!(
        store.len(Table::Challenges).unwrap() + store.len(Table::Approvals).unwrap(),
        0
    );
    assert!(expiry_index(&store).is_empty());
}

/// Sigil's HSM signatures are issued in low-S form; the other encoding of
/// the same approval (`s := n - s`, which ECDSA also accepts) is refused
/// by RedeemApproval, and the approval itself stays redeemable.
#[tokio::test(flavor = "multi_thread")]
async fn approvals_are_low_s_and_the_high_s_twin_is_refused_at_redemption() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("lowe").await;
    let mut a = s.approvals("withdrawal-engine").await;
    let n: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC, 0xE6,
        0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
    ];
    for i in 0..12 {
        let token = s.approve(&withdrawal("lowe", &format!("wd-{i}")), &seed).await;
        s.clock.advance(60);
        let (rest, sig_b64) = token.rsplit_once('.').unwrap();
        let sig: [u8; 64] = b64url::decode(sig_b64).unwrap().try_into().unwrap();
        assert!(sigil_verify::is_low_s(&sig), "approval {i} was issued with a high S");
        let mut twin = sig;
        let mut borrow = 0i16;
        for k in (0..32).rev() {
            let d = i16::from(n[k]) - i16::from(sig[32 + k]) - borrow;
            twin[32 + k] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        let twin_token = format!("{rest}.{}", b64url::encode(&twin));
        assert_status(
            a.redeem_approval(pb::RedeemApprovalRequest {
                expected_intent: expected_of(&twin_token),
                idempotency_key: String::new(),
                approval: twin_token,
            })
            .await,
            Code::InvalidArgument,
            "high S",
        );
        a.redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&token),
            idempotency_key: String::new(),
            approval: token,
        })
        .await
        .expect("the approval itself still redeems");
    }
}

/// A lost reply: the engine's retry with the same approval and its own
/// idempotency key gets the original success back, marked as a replay;
/// any other redemption of it is refused as already redeemed.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_idempotency_key_replays_the_original_success() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("ida").await;
    let tok = s.approve(&withdrawal("ida", "wd-77"), &seed).await;
    let mut a = s.approvals("withdrawal-engine").await;
    let redeem = |key: &str| pb::RedeemApprovalRequest {
        approval: tok.clone(),
        expected_intent: expected_of(&tok),
        idempotency_key: key.into(),
    };
    let first = a.redeem_approval(redeem("engine-wd-77")).await.unwrap().into_inner();
    assert!(!first.replayed);
    let heads = |s: &TestServer| {
        (
            s.sigil().store().log_head(sigil::store::Table::Audit).unwrap().0,
            s.sigil().store().log_head(sigil::store::Table::Events).unwrap().0,
        )
    };
    let before = heads(&s);
    s.clock.advance(5);
    let again = a.redeem_approval(redeem("engine-wd-77")).await.unwrap().into_inner();
    assert!(again.replayed, "the retry is marked as a replay");
    assert_eq!(
        again.redeemed_at, first.redeemed_at,
        "the original redemption, not a new one"
    );
    assert_eq!(again.claims, first.claims);
    assert_eq!(before, heads(&s), "a replay writes nothing");
    for other in ["engine-wd-78", ""] {
        assert_status(
            a.redeem_approval(redeem(other)).await,
            Code::FailedPrecondition,
            "already redeemed",
        );
    }
    assert_status(
        a.redeem_approval(redeem(&"k".repeat(129))).await,
        Code::InvalidArgument,
        "idempotency_key",
    );
}
