//! The incident's protections, each refused and allowed at the right
//! moment (the test clock moves; nothing sleeps).
use sigil::pb;
use tonic::Code;

use crate::support::harness::*;

const DAY: i64 = 86_400;

fn wd(user: &str, wid: &str) -> pb::BeginApprovalRequest {
    pb::BeginApprovalRequest {
        intent: Some(withdrawal(user, wid)),
        device: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn security_lock_and_address_hold_open_at_the_right_moment() {
    let s = TestServer::start_strict().await;
    let (_f, seed) = s.enroll_totp("alice").await; // factor added at T0; clock now T0+30
    let mut a = s.approvals("withdrawal-engine").await;
    // Enrollment started the security-change lock.
    assert_status(
        a.begin_approval(wd("alice", "w1")).await,
        Code::FailedPrecondition,
        "locked until",
    );
    // Not on the whitelist.
    s.clock.set(T0 + DAY);
    assert_status(
        a.begin_approval(wd("alice", "w1")).await,
        Code::FailedPrecondition,
        "not on the user's withdrawal whitelist",
    );
    // Added: in its hold for 24 h from now.
    let added = s.whitelist("alice", &seed, "bitcoin", ADDR).await;
    assert_eq!(added.usable_at, added.added_at + DAY);
    let st = assert_status(
        a.begin_approval(wd("alice", "w1")).await,
        Code::FailedPrecondition,
        "in its hold",
    );
    assert!(
        st.message().contains(&added.usable_at.to_string()),
        "names the time it opens: {}",
        st.message()
    );
    s.clock.set(added.usable_at - 1);
    assert_status(
        a.begin_approval(wd("alice", "w1")).await,
        Code::FailedPrecondition,
        "in its hold",
    );
    s.clock.set(added.usable_at);
    a.begin_approval(wd("alice", "w1")).await.unwrap();
    // The sweep announces the address as usable, once.
    assert_eq!(s.sigil().sweep().unwrap(), 1);
    assert_eq!(s.sigil().sweep().unwrap(), 0);
    let events = s.collect_events(0).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"factor_enrolled") && kinds.contains(&"address_added") && kinds.contains(&"address_usable"),
        "{kinds:?}"
    );
    // Changing the anti-phishing code locks withdrawals again.
    let apc = pb::Intent {
        action: "change_anti_phishing_code".into(),
        user_id: "alice".into(),
        memo: "blue-fox".into(),
        ..Default::default()
    };
    let tok = s.approve(&apc, &seed).await;
    s.account("frontend")
        .await
        .set_anti_phishing_code(pb::SetAntiPhishingCodeRequest {
            user_id: "alice".into(),
            code: "blue-fox".into(),
            approval: tok,
        })
        .await
        .unwrap();
    assert_status(
        a.begin_approval(wd("alice", "w2")).await,
        Code::FailedPrecondition,
        "anti-phishing code changed",
    );
    s.clock.advance(DAY);
    let b = a.begin_approval(wd("alice", "w2")).await.unwrap().into_inner();
    assert_eq!(
        b.anti_phishing_code, "blue-fox",
        "the summary carries the anti-phishing code"
    );
    // Invalid addresses are INVALID_ARGUMENT.
    let mut bad = withdrawal("alice", "w3");
    bad.destination = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdx".into();
    assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: Some(bad),
            device: None,
        })
        .await,
        Code::InvalidArgument,
        "intent.destination",
    );
    let mut bad = withdrawal("alice", "w3");
    bad.asset = "ETH".into();
    bad.network = "ethereum".into();
    bad.destination = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD".into();
    assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: Some(bad),
            device: None,
        })
        .await,
        Code::InvalidArgument,
        "EIP-55",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_an_address_needs_a_matching_approval() {
    let s = TestServer::start_strict().await;
    let (_f, seed) = s.enroll_totp("bob").await;
    let mut acc = s.account("frontend").await;
    let req = |approval: String, addr: &str| pb::AddAddressRequest {
        user_id: "bob".into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        address: addr.into(),
        label: "cold wallet".into(),
        approval,
    };
    assert_status(
        acc.add_address(req(String::new(), ADDR)).await,
        Code::PermissionDenied,
        "add_address",
    );
    // An approval for another address does not add this one.
    let other = pb::Intent {
        action: "add_address".into(),
        user_id: "bob".into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        destination: "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2".into(),
        memo: "cold wallet".into(),
        ..Default::default()
    };
    let tok = s.approve(&other, &seed).await;
    assert_status(
        acc.add_address(req(tok, ADDR)).await,
        Code::PermissionDenied,
        "something else",
    );
    assert_status(
        acc.add_address(req(String::new(), "bc1qnotvalid")).await,
        Code::InvalidArgument,
        "address",
    );
    let list = acc
        .list_addresses(pb::ListAddressesRequest { user_id: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(list.addresses.is_empty());
    s.whitelist("bob", &seed, "bitcoin", ADDR).await;
    let list = acc
        .list_addresses(pb::ListAddressesRequest { user_id: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.addresses.len(), 1);
    // Removal needs a remove_address approval.
    assert_status(
        acc.remove_address(pb::RemoveAddressRequest {
            user_id: "bob".into(),
            network: "bitcoin".into(),
            address: ADDR.into(),
            approval: String::new(),
        })
        .await,
        Code::PermissionDenied,
        "remove_address",
    );
    let rm = pb::Intent {
        action: "remove_address".into(),
        user_id: "bob".into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        destination: ADDR.into(),
        ..Default::default()
    };
    let tok = s.approve(&rm, &seed).await;
    acc.remove_address(pb::RemoveAddressRequest {
        user_id: "bob".into(),
        network: "bitcoin".into(),
        address: ADDR.into(),
        approval: tok,
    })
    .await
    .unwrap();
    let list = acc
        .list_addresses(pb::ListAddressesRequest { user_id: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(list.addresses.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_everyone_kills_challenges_and_unredeemed_approvals() {
    let s = TestServer::start_strict().await;
    let (_f, seed) = s.enroll_totp("carol").await;
    let (_g, seed_d) = s.enroll_totp("dan").await;
    s.clock.advance(DAY);
    let enroll = pb::Intent {
        action: "enroll_factor".into(),
        user_id: "carol".into(),
        memo: "totp:".into(),
        ..Default::default()
    };
    let unredeemed = s.approve(&enroll, &seed).await;
    let mut a = s.approvals("withdrawal-engine").await;
    let in_flight = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(pb::Intent {
                action: "create_api_key".into(),
                user_id: "carol".into(),
                ..Default::default()
            }),
            device: None,
        })
        .await
        .unwrap()
        .into_inner();
    let dan_tok = s
        .approve(
            &pb::Intent {
                action: "create_api_key".into(),
                user_id: "dan".into(),
                ..Default::default()
            },
            &seed_d,
        )
        .await;

    let before = s.sigil().store().len(sigil::store::Table::Users).unwrap();
    let r = s
        .admin()
        .await
        .revoke_factors(pb::RevokeFactorsRequest {
            all: true,
            user_ids: vec![],
            reason: "incident 2022-01".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().users, -1);
    assert_eq!(
        s.sigil().store().len(sigil::store::Table::Users).unwrap(),
        before,
        "revoking everyone writes no per-user record"
    );

    let r = a
        .complete_approval(totp_proof(&in_flight.challenge_id, "carol", &s.code(&seed, 0), ""))
        .await;
    assert_status(r, Code::FailedPrecondition, "revoked");
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&unredeemed),
            idempotency_key: String::new(),
            approval: unredeemed,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "revoked");
    let r = a
        .redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&dan_tok),
            idempotency_key: String::new(),
            approval: dan_tok,
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "revoked");
    assert_status(
        a.begin_approval(wd("carol", "w9")).await,
        Code::FailedPrecondition,
        "no active second factor",
    );
    let list = s
        .factors("admin")
        .await
        .list_factors(pb::ListFactorsRequest {
            user_id: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.factors[0].state, pb::FactorState::Revoked as i32);
    // Re-enrollment needs no step-up (nothing active) and starts the lock again.
    let (_h, seed2) = s.enroll_totp("carol").await;
    let r = a.begin_approval(wd("carol", "w10")).await;
    assert_status(r, Code::FailedPrecondition, "locked until");
    // The new factor approves other actions at once.
    s.approve(
        &pb::Intent {
            action: "create_api_key".into(),
            user_id: "carol".into(),
            ..Default::default()
        },
        &seed2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_listed_users_leaves_others_alone() {
    let s = TestServer::start().await;
    let (_f, seed_e) = s.enroll_totp("erin").await;
    let (_g, seed_f) = s.enroll_totp("fred").await;
    let tok_e = s.approve(&withdrawal("erin", "w1"), &seed_e).await;
    let tok_f = s.approve(&withdrawal("fred", "w1"), &seed_f).await;
    let r = s
        .admin()
        .await
        .revoke_factors(pb::RevokeFactorsRequest {
            all: false,
            user_ids: vec!["erin".into()],
            reason: "phished".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().users, 1);
    let mut a = s.approvals("withdrawal-engine").await;
    assert_status(
        a.redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&tok_e),
            idempotency_key: String::new(),
            approval: tok_e,
        })
        .await,
        Code::FailedPrecondition,
        "revoked",
    );
    a.redeem_approval(pb::RedeemApprovalRequest {
        expected_intent: expected_of(&tok_f),
        idempotency_key: String::new(),
        approval: tok_f,
    })
    .await
    .unwrap();
    a.begin_approval(wd("fred", "w2")).await.unwrap();
    assert_status(
        a.begin_approval(wd("erin", "w2")).await,
        Code::FailedPrecondition,
        "no active second factor",
    );
    let mut adm = s.admin().await;
    assert_status(
        adm.revoke_factors(pb::RevokeFactorsRequest {
            all: false,
            user_ids: vec![],
            reason: "x".into(),
        })
        .await,
        Code::InvalidArgument,
        "user_ids",
    );
    assert_status(
        adm.revoke_factors(pb::RevokeFactorsRequest {
            all: true,
            user_ids: vec![],
            reason: "".into(),
        })
        .await,
        Code::InvalidArgument,
        "reason",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn suspension_blocks_approvals_and_redemptions_until_lifted_or_expired() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("gus").await;
    let tok = s.approve(&withdrawal("gus", "w1"), &seed).await;
    let mut adm = s.admin().await;
    adm.suspend_approvals(pb::SuspendApprovalsRequest {
        all: true,
        user_ids: vec![],
        reason: "risk alert".into(),
        until: 0,
    })
    .await
    .unwrap();
    let mut a = s.approvals("withdrawal-engine").await;
    assert_status(
        a.begin_approval(wd("gus", "w2")).await,
        Code::FailedPrecondition,
        "risk alert",
    );
    assert_status(
        a.redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&tok),
            idempotency_key: String::new(),
            approval: tok.clone(),
        })
        .await,
        Code::FailedPrecondition,
        "suspended",
    );
    adm.resume_approvals(pb::ResumeApprovalsRequest {
        all: true,
        user_ids: vec![],
    })
    .await
    .unwrap();
    a.redeem_approval(pb::RedeemApprovalRequest {
        expected_intent: expected_of(&tok),
        idempotency_key: String::new(),
        approval: tok,
    })
    .await
    .unwrap();
    // Per user, with an end time.
    let until = s.clock.now_secs() + 600;
    adm.suspend_approvals(pb::SuspendApprovalsRequest {
        all: false,
        user_ids: vec!["gus".into()],
        reason: "velocity review".into(),
        until,
    })
    .await
    .unwrap();
    assert_status(
        a.begin_approval(wd("gus", "w3")).await,
        Code::FailedPrecondition,
        "velocity review",
    );
    s.clock.set(until);
    a.begin_approval(wd("gus", "w3")).await.unwrap();
    let kinds: Vec<String> = s.collect_events(0).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "suspension_changed").count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn velocity_rules_suspend_or_demand_hardware_and_thresholds_refuse_totp() {
    let s = TestServer::start_with(|c| {
        c.protection.require_whitelisted_address = false;
        c.protection.security_change_lock_seconds = 0;
        c.policy = sigil::protect::policy::Policy::from_toml(
            r#"
            [actions.withdrawal]
            kinds = ["totp", "webauthn", "yubikey_hmac", "yubikey_otp"]
            deny_jailbroken = true
            [[actions.withdrawal.thresholds]]
            asset = "BTC"
            above = "1"
            kinds = ["webauthn", "yubikey_hmac", "yubikey_otp"]
            [[velocity]]
            asset = "BTC"
            max_amount_24h = "1.2"
            on_exceed = "suspend"
            [[velocity]]
            asset = "ETH"
            max_count_1h = 1
            on_exceed = "require_hardware"
            "#,
        )
        .unwrap();
    })
    .await;
    let (_f, seed) = s.enroll_totp("hal").await;
    let mut a = s.approvals("withdrawal-engine").await;
    // Over the threshold: TOTP alone is not enough.
    let mut big = withdrawal("hal", "w0");
    big.amount = "1.1".into();
    assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: Some(big),
            device: None,
        })
        .await,
        Code::FailedPrecondition,
        "webauthn",
    );
    // 0.5 + 0.5 is fine; a third 0.5 exceeds 1.2 in 24 h and suspends the user.
    s.approve(&withdrawal("hal", "w1"), &seed).await;
    s.approve(&withdrawal("hal", "w2"), &seed).await;
    assert_status(
        a.begin_approval(wd("hal", "w3")).await,
        Code::FailedPrecondition,
        "velocity",
    );
    assert_status(
        a.begin_approval(wd("hal", "w4")).await,
        Code::FailedPrecondition,
        "velocity rule",
    );
    s.admin()
        .await
        .resume_approvals(pb::ResumeApprovalsRequest {
            all: false,
            user_ids: vec!["hal".into()],
        })
        .await
        .unwrap();
    s.clock.advance(DAY);
    a.begin_approval(wd("hal", "w5")).await.unwrap();
    // ETH: the second withdrawal in an hour needs a hardware factor.
    let eth = |wid: &str| {
        let mut i = withdrawal("hal", wid);
        i.asset = "ETH".into();
        i.network = "ethereum".into();
        i.destination = "0x52908400098527886E0F7030069857D2E4169EE7".into();
        i
    };
    s.approve(&eth("e1"), &seed).await;
    assert_status(
        a.begin_approval(pb::BeginApprovalRequest {
            intent: Some(eth("e2")),
            device: None,
        })
        .await,
        Code::FailedPrecondition,
        "webauthn",
    );
    // A jailbroken device is refused for withdrawals and recorded.
    let r = a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("hal", "w6")),
            device: Some(pb::DeviceSignals {
                jailbroken: true,
                ..Default::default()
            }),
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "jailbroken");
    let st = s
        .account("admin")
        .await
        .get_account_protection_status(pb::GetAccountProtectionStatusRequest {
            user_id: "hal".into(),
            as_of: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let item = st
        .items
        .iter()
        .find(|i| i.name == "no_compromised_device_signal")
        .unwrap();
    assert!(!item.ok, "{}", item.evidence);
    assert!(!st.eligible);
}

#[tokio::test(flavor = "multi_thread")]
async fn protection_report_counts_21_days_of_anti_phishing_code() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("ivy").await;
    let mut acc = s.account("frontend").await;
    let report = |as_of| pb::GetAccountProtectionStatusRequest {
        user_id: "ivy".into(),
        as_of,
    };
    let st = acc.get_account_protection_status(report(0)).await.unwrap().into_inner();
    let apc = st
        .items
        .iter()
        .find(|i| i.name == "anti_phishing_code_set_21_days")
        .unwrap();
    assert!(!apc.ok && apc.evidence.contains("no anti-phishing code"));
    assert!(
        st.items
            .iter()
            .find(|i| i.name == "mfa_required_for_all_actions")
            .unwrap()
            .ok
    );
    let intent = pb::Intent {
        action: "change_anti_phishing_code".into(),
        user_id: "ivy".into(),
        memo: "owl".into(),
        ..Default::default()
    };
    let tok = s.approve(&intent, &seed).await;
    let set_at = acc
        .set_anti_phishing_code(pb::SetAntiPhishingCodeRequest {
            user_id: "ivy".into(),
            code: "owl".into(),
            approval: tok,
        })
        .await
        .unwrap()
        .into_inner()
        .set_at;
    let st = acc
        .get_account_protection_status(report(set_at + 21 * DAY - 1))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.eligible);
    let st = acc
        .get_account_protection_status(report(set_at + 21 * DAY))
        .await
        .unwrap()
        .into_inner();
    assert!(st.eligible, "{:?}", st.items);
    // Events carry the anti-phishing code once set.
    let tok = s.approve(&withdrawal("ivy", "w1"), &seed).await;
    assert!(!tok.is_empty());
    let events = s.collect_events(0).await;
    let last = events.iter().rev().find(|e| e.kind == "approval_issued").unwrap();
    assert_eq!(last.anti_phishing_code, "owl");
    assert_eq!(last.user_id, "ivy");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_stream_resumes_after_restart_without_gaps() {
    let mut s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("jon").await;
    s.approve(&withdrawal("jon", "w1"), &seed).await;
    let first = s.collect_events(0).await;
    assert!(first.len() >= 2);
    let cursor = first.last().unwrap().cursor;
    for (i, e) in first.iter().enumerate() {
        assert_eq!(e.cursor, i as u64 + 1, "cursors are gapless");
    }
    // A watcher that is live while events are appended gets them as they come.
    let mut c = s.events("frontend").await;
    let mut stream = c
        .watch_events(pb::WatchEventsRequest { after_cursor: cursor })
        .await
        .unwrap()
        .into_inner();
    s.approve(&withdrawal("jon", "w2"), &seed).await;
    let live = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(live.cursor, cursor + 1);
    assert_eq!(live.kind, "approval_issued");
    drop(stream);
    drop(c);
    s.restart().await;
    s.approve(&withdrawal("jon", "w3"), &seed).await;
    let rest = s.collect_events(cursor).await;
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(rest[0].cursor, cursor + 1);
    assert_eq!(rest[1].cursor, cursor + 2);
    assert!(rest[1].details.contains_key("jti"));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_chain_verifies_and_a_flipped_byte_is_named() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("kim").await;
    s.approve(&withdrawal("kim", "w1"), &seed).await;
    let mut a = s.approvals("withdrawal-engine").await;
    let _ = a.begin_approval(wd("nobody", "w1")).await; // a refusal is audited too
    s.sigil().ops().checkpoint_audit().unwrap().unwrap();
    let run = |args: &[&str]| {
        let d = certs_dir();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sigil"))
            .args(args)
            .args(["--server", &s.url])
            .arg("--ca")
            .arg(d.join("ca.pem"))
            .arg("--cert")
            .arg(d.join("admin.pem"))
            .arg("--key")
            .arg(d.join("admin.key"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&["audit", "verify"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("audit log ok") && text.contains("1 signed checkpoint"),
        "{text}"
    );
    let report = s.sigil().ops().verify_audit().unwrap();
    assert!(report.ok());
    let entries = s.sigil().ops().audit_entries(0, 100).unwrap();
    assert!(entries.len() >= 4);
    let refused: Vec<_> = entries
        .iter()
        .map(|e| sigil::audit::AuditEntry::decode(&e.value).unwrap())
        .filter(|e| e.outcome == "refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].reason.contains("no active second factor"));

    // Flip one byte of entry 3 in the store.
    let key = 3u64.to_be_bytes();
    let stored = s
        .sigil()
        .store()
        .get(sigil::store::Table::Audit, &key)
        .unwrap()
        .unwrap();
    let mut value = stored.value.clone();
    let i = value.len() - 5;
    value[i] ^= 0x01;
    let mut b = sigil::store::Batch::new();
    b.update(sigil::store::Table::Audit, key.to_vec(), stored.version, value);
    s.sigil().store().commit(&b).unwrap();
    let report = s.sigil().ops().verify_audit().unwrap();
    assert_eq!(report.first_broken.as_ref().map(|b| b.0), Some(3), "{report:?}");
    let (ok, text) = run(&["audit", "verify"]);
    assert!(!ok);
    assert!(text.contains("BROKEN at entry 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_stop_ends_event_streams_with_a_resume_hint() {
    let mut s = TestServer::start().await;
    let (_f, _seed) = s.enroll_totp("lea").await;
    let mut c = s.events("admin").await;
    let mut stream = c
        .watch_events(pb::WatchEventsRequest { after_cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.cursor, 1);
    // A watcher is open; the server must still stop, and tell it where to resume.
    tokio::time::timeout(std::time::Duration::from_secs(10), s.stop())
        .await
        .expect("stop does not hang on an open stream");
    let mut last = None;
    while let Ok(Some(item)) = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .map(|r| r.transpose())
    {
        match item {
            Ok(_) => continue,
            Err(st) => {
                last = Some(st);
                break;
            }
        }
    }
    let st = last.expect("the stream ends with a status");
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(st.message().contains("resume after cursor"), "{}", st.message());
}

/// Opening many challenges first and completing them afterwards does not get
/// around the velocity rule, the lock or the whitelist: they are decided
/// again when each challenge is answered.
#[tokio::test(flavor = "multi_thread")]
async fn protections_are_decided_again_when_the_challenge_is_answered() {
    let s = TestServer::start_with(|c| {
        c.protection.require_whitelisted_address = false;
        c.protection.security_change_lock_seconds = 0;
        c.policy = sigil::protect::policy::Policy::from_toml(
            "[[velocity]]\nasset = \"BTC\"\nmax_amount_24h = \"1.2\"\non_exceed = \"suspend\"\n",
        )
        .unwrap();
    })
    .await;
    let (_f, seed) = s.enroll_totp("max").await;
    let mut a = s.approvals("withdrawal-engine").await;
    let mut challenges = Vec::new();
    for i in 0..3 {
        challenges.push(
            a.begin_approval(wd("max", &format!("w{i}")))
                .await
                .unwrap()
                .into_inner()
                .challenge_id,
        );
    }
    // The first 0.5 + the second 0.5 fit in 1.2; the third would not.
    for (i, ch) in challenges.iter().enumerate() {
        let r = a.complete_approval(totp_proof(ch, "max", &s.code(&seed, 0), "")).await;
        s.clock.advance(30);
        if i < 2 {
            r.unwrap();
        } else {
            assert_status(r, Code::FailedPrecondition, "velocity");
        }
    }
    // ...and the user is suspended by the rule.
    assert_status(
        a.begin_approval(wd("max", "w9")).await,
        Code::FailedPrecondition,
        "velocity rule",
    );
}

/// A withdrawal challenge opened before a security change cannot be answered
/// during the lock that change starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_opened_before_a_security_change_waits_for_the_lock() {
    let s = TestServer::start_with(|c| c.protection.require_whitelisted_address = false).await;
    let (_f, seed) = s.enroll_totp("ned").await;
    s.clock.advance(DAY);
    let mut a = s.approvals("withdrawal-engine").await;
    let ch = a
        .begin_approval(wd("ned", "w1"))
        .await
        .unwrap()
        .into_inner()
        .challenge_id;
    // A second factor is added (with a step-up approval): the lock starts.
    let enroll = pb::Intent {
        action: "enroll_factor".into(),
        user_id: "ned".into(),
        memo: "totp:".into(),
        ..Default::default()
    };
    let tok = s.approve(&enroll, &seed).await;
    let mut f = s.factors("frontend").await;
    let e = f
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: "ned".into(),
            step_up_approval: tok,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seed2 = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
    f.confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
        user_id: "ned".into(),
        factor_id: e.factor_id.clone(),
        code: s.code(&seed2, 0),
    })
    .await
    .unwrap();
    s.clock.advance(30);
    let r = a
        .complete_approval(totp_proof(&ch, "ned", &s.code(&seed2, 0), &e.factor_id))
        .await;
    assert_status(r, Code::FailedPrecondition, "locked until");
}

/// Redemption checks what the engine is about to do: the engine must send
/// its own record of the withdrawal, and an approval whose destination was
/// removed from the whitelist after it was issued is refused, unredeemed.
#[tokio::test(flavor = "multi_thread")]
async fn redemption_needs_the_engines_record_and_a_still_whitelisted_destination() {
    let s = TestServer::start_strict().await;
    let (_f, seed) = s.enroll_totp("rhea").await;
    s.whitelist("rhea", &seed, "bitcoin", ADDR).await;
    s.clock.advance(DAY + 60);
    let mut a = s.approvals("withdrawal-engine").await;
    let tok = s.approve(&withdrawal("rhea", "w1"), &seed).await;
    // Each approval needs a fresh TOTP step; the approval lives 120 s.
    s.clock.advance(30);
    let payload = sigil_verify::b64url::decode(tok.split('.').nth(1).unwrap()).unwrap();
    let jti = serde_json::from_slice::<sigil_verify::Claims>(&payload).unwrap().jti;
    let record = |s: &TestServer| {
        snapshot(s.sigil())
            .into_iter()
            .filter(|(t, k, _, _)| t == "approvals" && k == jti.as_bytes())
            .collect::<Vec<_>>()
    };
    let heads = |s: &TestServer| {
        (
            s.sigil().store().log_head(sigil::store::Table::Audit).unwrap().0,
            record(s),
        )
    };
    let before = heads(&s);
    assert_status(
        a.redeem_approval(pb::RedeemApprovalRequest {
            approval: tok.clone(),
            expected_intent: None,
            idempotency_key: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "expected_intent",
    );
    assert_eq!(before, heads(&s), "a refused redemption writes nothing");

    // The address is removed (with the user's approval) before the engine redeems.
    let rm = pb::Intent {
        action: "remove_address".into(),
        user_id: "rhea".into(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        destination: ADDR.into(),
        ..Default::default()
    };
    let rm_tok = s.approve(&rm, &seed).await;
    s.account("frontend")
        .await
        .remove_address(pb::RemoveAddressRequest {
            user_id: "rhea".into(),
            network: "bitcoin".into(),
            address: ADDR.into(),
            approval: rm_tok,
        })
        .await
        .unwrap();
    assert_status(
        a.redeem_approval(pb::RedeemApprovalRequest {
            expected_intent: expected_of(&tok),
            idempotency_key: String::new(),
            approval: tok.clone(),
        })
        .await,
        Code::FailedPrecondition,
        "not on the user's withdrawal whitelist",
    );
    // Nothing was redeemed by the refusals.
    assert_eq!(before.1, record(&s), "the approval stays unredeemed");
}
