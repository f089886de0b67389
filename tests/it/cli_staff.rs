//! The operator CLI's staff commands against a real server: staff members
//! and their (development, software) security keys, held requests and
//! staff decisions signed by those keys, the stored policy and a change
//! to it; and the refusals an operator meets, in the server's words.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sigil::pb;

use crate::support::cli::*;
use crate::support::harness::*;

/// The approver client certificate's `--cert`/`--key` flags.
fn approver_cert() -> Vec<String> {
    let certs = certs_dir();
    vec![
        "--cert".into(),
        certs.join("approver.pem").display().to_string(),
        "--key".into(),
        certs.join("approver.key").display().to_string(),
    ]
}

/// Runs `sigil` with `args` and then `extra`; answers (success, output).
fn run(args: &[&str], extra: &[String]) -> (bool, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    let (out, text) = sigil(&all, &[]);
    (out.status.success(), text)
}

/// The soft key file's JSON.
fn key_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The word after `after` in `text`.
fn word_after<'a>(text: &'a str, after: &str) -> &'a str {
    let at = text.find(after).unwrap_or_else(|| panic!("no {after:?} in {text}")) + after.len();
    text[at..].split_whitespace().next().unwrap()
}

/// A server whose staff keys count at once (its policy needs the default
/// two staff approvals for a change).
async fn server() -> TestServer {
    TestServer::start_with(|c| {
        relaxed(c);
        c.quorum.staff_key_hold_seconds = 0;
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_register_soft_keys_and_decide_a_policy_change() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&s, dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let approver = approver_cert();
    let alice_key = dir.path().join("alice.key");
    let bob_key = dir.path().join("bob.key");
    let (alice_path, bob_path) = (alice_key.to_str().unwrap(), bob_key.to_str().unwrap());

    // Staff members (admin certificate, the config's).
    let (ok, text) = run(
        &[
            "staff", "add", "alice", "--role", "approver", "--name", "Alice A", "--config", cfg,
        ],
        &[],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("added staff member alice") && text.contains("approver"),
        "{text}"
    );
    let (ok, text) = run(&["staff", "add", "bob", "--role", "admin", "--config", cfg], &[]);
    assert!(ok, "{text}");
    // The same id again: refused in the server's words.
    let (ok, text) = run(&["staff", "add", "bob", "--role", "admin", "--config", cfg], &[]);
    assert!(!ok);
    assert!(text.contains("staff member 'bob' already exists"), "{text}");

    // Soft keys: written 0600, said loudly to be for development only.
    for (who, path) in [("alice", alice_path), ("bob", bob_path)] {
        let (ok, text) = run(
            &["staff", "register-key", who, "--soft-key", path, "--config", cfg],
            &[],
        );
        assert!(ok, "{text}");
        assert!(
            text.contains("DEVELOPMENT") && text.contains("NOT FOR PRODUCTION"),
            "{text}"
        );
        // The hold is 0 here: usable from the registration (the test clock's T0).
        assert!(text.contains("counts for quorums from 2027-01-15T08:00:00Z"), "{text}");
    }
    let alice_file = key_file(&alice_key);
    let bob_file = key_file(&bob_key);
    assert_eq!(alice_file["v"], 1);
    assert_eq!(alice_file["rp_id"], "localhost");
    assert_eq!(alice_file["counter"], 0);
    let alice_cred = alice_file["credential_id"].as_str().unwrap().to_string();
    let bob_cred = bob_file["credential_id"].as_str().unwrap().to_string();
    assert_ne!(alice_cred, bob_cred);
    let mode = std::fs::metadata(&alice_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the soft key is readable by others");

    // The same key again for alice: the file is reused, the server says it is hers already.
    let (ok, text) = run(
        &[
            "staff",
            "register-key",
            "alice",
            "--soft-key",
            alice_path,
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("already registered"), "{text}");
    assert_eq!(
        key_file(&alice_key),
        alice_file,
        "a refused registration changed the key file"
    );
    // A file that is not a soft key is never overwritten.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "not a key\n").unwrap();
    let (ok, text) = run(
        &[
            "staff",
            "register-key",
            "alice",
            "--soft-key",
            other.to_str().unwrap(),
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok);
    assert!(text.contains("is not a sigil soft key"), "{text}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "not a key\n");

    // Staff list (approver certificate too) shows both keys; the key set JSON too.
    let (ok, text) = run(&["staff", "list", "--config", cfg], &approver);
    assert!(ok, "{text}");
    assert!(
        text.contains("alice") && text.contains("\"Alice A\"") && text.contains("bob"),
        "{text}"
    );
    assert!(text.contains(&alice_cred) && text.contains(&bob_cred), "{text}");
    let (ok, text) = run(&["staff", "keys", "--config", cfg], &[]);
    assert!(ok, "{text}");
    let json = text.lines().find(|l| l.starts_with('{')).unwrap();
    let keys: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut listed: Vec<(String, String)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["staff_id"].as_str().unwrap().to_string(),
                k["credential_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("alice".to_string(), alice_cred.clone()),
            ("bob".to_string(), bob_cred.clone())
        ]
    );

    // A third staff member, for the second approval.
    let carol_key = dir.path().join("carol.key");
    let carol_path = carol_key.to_str().unwrap();
    let (ok, text) = run(&["staff", "add", "carol", "--role", "approver", "--config", cfg], &[]);
    assert!(ok, "{text}");
    let (ok, text) = run(
        &[
            "staff",
            "register-key",
            "carol",
            "--soft-key",
            carol_path,
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(ok, "{text}");
    // alice and bob formed the staff quorum: carol's key needs both of them.
    assert!(text.contains("waits for the staff quorum's approval"), "{text}");
    let carol_request = word_after(&text, "approval: request ").to_string();
    assert!(carol_request.starts_with("qr_"), "{text}");
    for (who, path) in [("alice", alice_path), ("bob", bob_path)] {
        let (ok, text) = run(
            &[
                "pending",
                "approve",
                &carol_request,
                "--staff",
                who,
                "--soft-key",
                path,
                "--config",
                cfg,
            ],
            &approver,
        );
        assert!(ok, "{text}");
    }
    let (ok, text) = run(&["staff", "list", "--config", cfg], &approver);
    assert!(ok, "{text}");
    let carol_key_line = text
        .lines()
        .skip_while(|l| !l.starts_with("carol"))
        .nth(1)
        .unwrap_or_default();
    assert!(carol_key_line.contains("usable from"), "{text}");

    // Alice proposes a policy change; it needs two approvals (the policy in force's governance).
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[governance]\nstaff = []\nrequired = 2\ndelay_seconds = 7200\n",
    )
    .unwrap();
    let (ok, text) = run(
        &[
            "policy",
            "propose",
            policy.to_str().unwrap(),
            "--by",
            "alice",
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(ok, "{text}");
    let request = word_after(&text, "proposed policy change ").to_string();
    assert!(request.starts_with("qr_"), "{text}");

    let (ok, text) = run(&["pending", "list", "--all", "--config", cfg], &approver);
    assert!(ok, "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&request))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains("policy_change") && row.contains("awaiting_quorum") && row.contains("0/2"),
        "{row}"
    );

    // Bob approves (admin certificate): the change waits for its delay.
    let (ok, text) = run(
        &[
            "pending",
            "approve",
            &request,
            "--staff",
            "bob",
            "--soft-key",
            bob_path,
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("APPROVE request {request} as staff member bob")),
        "{text}"
    );
    assert!(text.contains("policy change proposed by alice"), "{text}");
    assert!(
        text.contains("| required = 2"),
        "the proposed text was not shown: {text}"
    );
    assert!(
        text.contains(&format!("request {request} is now awaiting_quorum (approvals 1/2)")),
        "{text}"
    );
    // bob signed twice: carol's key, then this change.
    assert_eq!(key_file(&bob_key)["counter"], 2, "the counter was not saved");
    // Carol's approval meets the quorum: the change waits for its delay.
    let (ok, text) = run(
        &[
            "pending",
            "approve",
            &request,
            "--staff",
            "carol",
            "--soft-key",
            carol_path,
            "--config",
            cfg,
        ],
        &approver,
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("request {request} is now delayed (approvals 2/2)")),
        "{text}"
    );

    let (ok, text) = run(&["policy", "show", "--config", cfg], &approver);
    assert!(ok, "{text}");
    assert!(text.contains("policy version 1 "), "{text}");
    assert!(text.contains(&request) && text.contains("delayed"), "{text}");
    let (ok, text) = run(&["pending", "show", &request, "--config", cfg], &approver);
    assert!(ok, "{text}");
    assert!(
        text.contains("approved by    bob") && text.contains(&bob_cred),
        "{text}"
    );

    // Alice cancels it during its delay (approver certificate).
    let (ok, text) = run(
        &[
            "pending",
            "cancel",
            &request,
            "--staff",
            "alice",
            "--soft-key",
            alice_path,
            "--config",
            cfg,
        ],
        &approver,
    );
    assert!(ok, "{text}");
    assert!(text.contains(&format!("CANCEL request {request}")), "{text}");
    assert!(
        text.contains("is now cancelled") && text.contains("staff:alice"),
        "{text}"
    );
    assert_eq!(key_file(&alice_key)["counter"], 2);
    let (ok, text) = run(&["policy", "show", "--config", cfg], &approver);
    assert!(ok, "{text}");
    assert!(
        text.contains("policy version 1 ") && text.contains("no pending changes"),
        "{text}"
    );
    let (ok, text) = run(&["pending", "list", "--config", cfg], &[]);
    assert!(ok, "{text}");
    assert!(
        !text.contains(&request),
        "a closed request is listed without --all: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_commands_refuse_bad_input_in_the_servers_words() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&s, dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let bob_key = dir.path().join("bob.key");
    let bob_path = bob_key.to_str().unwrap();

    let (ok, text) = run(&["staff", "add", "carol", "--role", "frontend", "--config", cfg], &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("role") && text.contains("'frontend'"), "{text}");
    let (ok, text) = run(&["staff", "list", "--config", cfg], &[]);
    assert!(ok && text.contains("no staff members"), "{text}");

    // An unknown staff id: nothing is written.
    let (ok, text) = run(
        &[
            "staff",
            "register-key",
            "nobody",
            "--soft-key",
            bob_path,
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("unknown staff id 'nobody'"), "{text}");
    assert!(!bob_key.exists(), "a key file was written for an unknown staff member");

    let (ok, text) = run(&["staff", "add", "bob", "--role", "admin", "--config", cfg], &[]);
    assert!(ok, "{text}");
    // An origin the server does not allow (--origin): refused in its words;
    // the new key stays in its file for another attempt.
    let elsewhere = dir.path().join("elsewhere.key");
    let (ok, text) = run(
        &[
            "staff",
            "register-key",
            "bob",
            "--soft-key",
            elsewhere.to_str().unwrap(),
            "--origin",
            "https://phish.example",
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("origin https://phish.example is not allowed"), "{text}");
    assert!(text.contains("the soft key stays in"), "{text}");
    let (ok, text) = run(
        &["staff", "register-key", "bob", "--soft-key", bob_path, "--config", cfg],
        &[],
    );
    assert!(ok, "{text}");

    // An unknown request: NOT_FOUND, and no signature spent.
    let (ok, text) = run(
        &[
            "pending",
            "approve",
            "qr_nope",
            "--staff",
            "bob",
            "--soft-key",
            bob_path,
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("NotFound") && text.contains("request 'qr_nope' not found"),
        "{text}"
    );
    assert_eq!(key_file(&bob_key)["counter"], 0);
    // A soft key file that does not exist: said before the server is asked.
    let missing = dir.path().join("missing.key");
    let (ok, text) = run(
        &[
            "pending",
            "cancel",
            "qr_nope",
            "--staff",
            "bob",
            "--soft-key",
            missing.to_str().unwrap(),
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("does not exist") && text.contains("register-key"),
        "{text}"
    );
    // A policy that does not parse: the server names the problem.
    let policy = dir.path().join("bad.toml");
    std::fs::write(&policy, "[governance]\nrequired = \"two\"\n").unwrap();
    let (ok, text) = run(
        &[
            "policy",
            "propose",
            policy.to_str().unwrap(),
            "--by",
            "bob",
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("policy_text"), "{text}");
    // Proposing needs the admin certificate.
    std::fs::write(&policy, "[governance]\nrequired = 2\n").unwrap();
    let (ok, text) = run(
        &[
            "policy",
            "propose",
            policy.to_str().unwrap(),
            "--by",
            "bob",
            "--config",
            cfg,
        ],
        &approver_cert(),
    );
    assert!(!ok, "{text}");
    assert!(text.contains("PermissionDenied"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_approve_a_held_withdrawal_with_the_approver_certificate() {
    // Above 1 BTC a withdrawal needs 2 of alice and bob.
    let policy = "[actions.withdrawal]\nkinds = [\"totp\"]\n[[actions.withdrawal.quorum]]\nname = \"large\"\n\
                  asset = \"BTC\"\nabove = \"1\"\nstaff = [\"alice\", \"bob\"]\nrequired = 2\n";
    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.quorum.staff_key_hold_seconds = 0;
        c.policy = sigil::protect::policy::Policy::from_toml(policy).unwrap();
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&s, dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let approver = approver_cert();
    for (who, role) in [("alice", "approver"), ("bob", "admin")] {
        let (ok, text) = run(&["staff", "add", who, "--role", role, "--config", cfg], &[]);
        assert!(ok, "{text}");
        let key = dir.path().join(format!("{who}.key"));
        let (ok, text) = run(
            &[
                "staff",
                "register-key",
                who,
                "--soft-key",
                key.to_str().unwrap(),
                "--config",
                cfg,
            ],
            &[],
        );
        assert!(ok, "{text}");
    }
    let alice_key = dir.path().join("alice.key");
    let bob_key = dir.path().join("bob.key");

    // The user approves a 12 BTC withdrawal with TOTP: held for the quorum.
    let (_f, seed) = s.enroll_totp("u1").await;
    let intent = pb::Intent {
        amount: "12".into(),
        ..withdrawal("u1", "wd-big")
    };
    let b = begin(&s, &intent).await;
    let r = s
        .approvals("withdrawal-engine")
        .await
        .complete_approval(totp_proof(&b.challenge_id, "u1", &s.code(&seed, 0), ""))
        .await
        .unwrap()
        .into_inner();
    assert!(r.approval.is_empty(), "a held withdrawal was approved at once");
    let request = r.pending.unwrap().request_id;

    let (ok, text) = run(&["pending", "list", "--user", "u1", "--config", cfg], &approver);
    assert!(ok, "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&request))
        .unwrap_or_else(|| panic!("{text}"));
    for part in [
        "withdrawal",
        "u1",
        &format!("12 BTC -> {ADDR}"),
        "awaiting_quorum",
        "0/2",
    ] {
        assert!(row.contains(part), "{part} missing: {row}");
    }

    // Alice (approver certificate) sees what she signs; one of two.
    let (ok, text) = run(
        &[
            "pending",
            "approve",
            &request,
            "--staff",
            "alice",
            "--soft-key",
            alice_key.to_str().unwrap(),
            "--config",
            cfg,
        ],
        &approver,
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "withdrawal of 12 BTC on bitcoin to {ADDR} for user u1 (withdrawal id wd-big)"
        )),
        "{text}"
    );
    assert!(text.contains("is now awaiting_quorum (approvals 1/2)"), "{text}");
    // Twice is refused: one person counts once.
    let (ok, text) = run(
        &[
            "pending",
            "approve",
            &request,
            "--staff",
            "alice",
            "--soft-key",
            alice_key.to_str().unwrap(),
            "--config",
            cfg,
        ],
        &approver,
    );
    assert!(!ok, "{text}");
    assert!(text.contains("already approved"), "{text}");

    // Bob (admin certificate, the config's) completes the quorum: issued.
    let (ok, text) = run(
        &[
            "pending",
            "approve",
            &request,
            "--staff",
            "bob",
            "--soft-key",
            bob_key.to_str().unwrap(),
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(ok, "{text}");
    assert!(text.contains("is now issued (approvals 2/2)"), "{text}");
    let (ok, text) = run(&["pending", "show", &request, "--config", cfg], &approver);
    assert!(ok, "{text}");
    assert!(
        text.contains("approved by    alice") && text.contains("approved by    bob"),
        "{text}"
    );
    assert!(text.contains("approval jti"), "{text}");
    assert!(!text.contains("eyJ"), "the approval token was shown to staff: {text}");
    // The engine gets the approval itself.
    let p = s
        .approvals("withdrawal-engine")
        .await
        .get_pending_approval(pb::GetPendingApprovalRequest { request_id: request })
        .await
        .unwrap()
        .into_inner();
    assert!(!p.approval.is_empty());
    // bob's key is lost: removed by an admin, with a reason.
    let (ok, text) = run(
        &[
            "staff",
            "remove",
            "bob",
            "--credential",
            &p.approvals[1].credential_id,
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(!ok, "a removal without --reason: {text}");
    let (ok, text) = run(
        &[
            "staff",
            "remove",
            "bob",
            "--credential",
            &p.approvals[1].credential_id,
            "--reason",
            "lost",
            "--config",
            cfg,
        ],
        &[],
    );
    assert!(ok, "{text}");
    assert!(text.contains("removed key"), "{text}");
    let (ok, text) = run(&["staff", "list", "--config", cfg], &[]);
    let line = text
        .lines()
        .find(|l| l.contains(&p.approvals[1].credential_id))
        .unwrap_or_default();
    assert!(ok && line.contains("REMOVED"), "{text}");
    let (ok, text) = run(&["staff", "remove", "nobody", "--reason", "x", "--config", cfg], &[]);
    assert!(!ok && text.contains("unknown staff id 'nobody'"), "{text}");
}

/// `--external`: another WebAuthn client (here a software authenticator
/// standing in for a browser with a hardware key) answers the options the
/// CLI prints, through standard input.
#[tokio::test(flavor = "multi_thread")]
async fn staff_decide_with_an_external_webauthn_client() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use crate::support::webauthn::{get, register_staff_key, ORIGIN};

    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.quorum.staff_key_hold_seconds = 0;
        c.policy = sigil::protect::policy::Policy::from_toml(
            "[actions.withdrawal]\nkinds = [\"totp\"]\n[[actions.withdrawal.quorum]]\nname = \"big\"\nasset = \"BTC\"\nabove = \"1\"\nstaff = [\"dana\"]\nrequired = 1\n",
        )
        .unwrap();
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&s, dir.path(), "");
    let cfg = cfg.to_str().unwrap().to_string();
    let mut staff = pb::staff_service_client::StaffServiceClient::new(s.channel("admin").await);
    staff
        .add_staff(pb::AddStaffRequest {
            staff_id: "dana".into(),
            role: "approver".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Staff approvals count once the staff quorum (governance: two
    // people) is formed: erin holds the second key.
    staff
        .add_staff(pb::AddStaffRequest {
            staff_id: "erin".into(),
            role: "approver".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut keys = Vec::new();
    for id in ["dana", "erin"] {
        keys.push(register_staff_key(&mut staff, id).await);
    }
    let mut key = keys.remove(0);
    let (_, seed) = s.enroll_totp("u1").await;
    let intent = pb::Intent {
        amount: "2".into(),
        ..withdrawal("u1", "w-ext")
    };
    let mut a = s.approvals("withdrawal-engine").await;
    let begun = begin(&s, &intent).await;
    let held = a
        .complete_approval(totp_proof(&begun.challenge_id, "u1", &s.code(&seed, 0), ""))
        .await
        .unwrap()
        .into_inner();
    let request = held.pending.unwrap().request_id;

    let mut child = Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args([
            "pending",
            "approve",
            &request,
            "--staff",
            "dana",
            "--external",
            "--origin",
            ORIGIN,
            "--config",
            &cfg,
        ])
        .args(approver_cert())
        .env_remove("SIGIL_URL")
        .env_remove("SIGIL_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let options = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "no options printed: {seen}");
        seen.push_str(&line);
        if let Some(json) = line.strip_prefix("WEBAUTHN-OPTIONS ") {
            break json.trim().to_string();
        }
    };
    assert!(
        seen.contains("an external WebAuthn client") && seen.contains("amount 2"),
        "{seen}"
    );
    let assertion = get(&mut key, ORIGIN, &options, |_| {}).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{assertion}").unwrap();
    drop(stdin);
    let rest = {
        let mut r = String::new();
        std::io::Read::read_to_string(&mut out, &mut r).unwrap();
        r
    };
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}{rest}");
    assert!(rest.contains("is now issued (approvals 1/1)"), "{rest}");
}
