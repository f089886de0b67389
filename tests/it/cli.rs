//! The operator CLI against a real server: it acts on the server its
//! `--config` names (not a default address), says which server that is,
//! and refuses destructive commands without confirmation.
use sigil::pb;
use tonic::Code;

use crate::support::cli::*;
use crate::support::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn client_commands_use_the_server_of_the_config_file() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let expected = kids(&s).await;
    let url = s.url.clone();

    // From `[server] listen` (0.0.0.0 means this host) and `[client]` certificates.
    let derived = config_file(&s, dir.path(), "");
    // From `[client] server`, with a listen address that is not the server's.
    let named = dir.path().join("named.toml");
    std::fs::write(
        &named,
        std::fs::read_to_string(&derived)
            .unwrap()
            .replace(
                &format!("listen = \"0.0.0.0:{}\"", url.rsplit(':').next().unwrap()),
                "listen = \"127.0.0.1:1\"",
            )
            .replace("[client]\n", &format!("[client]\nserver = {url:?}\n")),
    )
    .unwrap();
    for cfg in [&derived, &named] {
        let cfg = cfg.to_str().unwrap();
        for args in [
            vec!["keys", "list", "--config", cfg],
            vec!["--config", cfg, "keys", "list"],
        ] {
            let (out, text) = sigil(&args, &[]);
            assert!(out.status.success(), "{args:?}: {text}");
            for kid in &expected {
                assert!(text.contains(kid.as_str()), "{args:?} listed other keys: {text}");
            }
            assert!(text.contains(&format!("server {url} (from {cfg})")), "{text}");
        }
        // SIGIL_CONFIG is the same as --config.
        let (out, text) = sigil(&["keys", "list"], &[("SIGIL_CONFIG", cfg)]);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(&expected[0]), "{text}");
        // A SIGIL_URL naming another server is ambiguous: refused, not guessed.
        let (out, text) = sigil(
            &["keys", "list", "--config", cfg],
            &[("SIGIL_URL", "https://127.0.0.1:1")],
        );
        assert!(!out.status.success());
        assert!(text.contains("SIGIL_URL") && text.contains("--server"), "{text}");
    }
    // --server still wins over the file.
    let (out, text) = sigil(
        &[
            "keys",
            "list",
            "--config",
            named.to_str().unwrap(),
            "--server",
            "https://127.0.0.1:1",
        ],
        &[],
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("https://127.0.0.1:1 (--server)"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn destructive_commands_need_confirmation_and_name_their_target() {
    let s = TestServer::start().await;
    let (_f, seed) = s.enroll_totp("cli-user").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&s, dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let keys_before = kids(&s).await;

    // Without --yes (and with no terminal to type into): refused, nothing done.
    let (out, text) = sigil(&["revoke", "--all", "--reason", "drill", "--config", cfg], &[]);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!("revoke every factor of every user on {}", s.url)) && text.contains("--yes"),
        "{text}"
    );
    let (out, text) = sigil(&["keys", "rotate", "--now", "--config", cfg], &[]);
    assert!(!out.status.success());
    assert!(text.contains(&s.url) && text.contains("--yes"), "{text}");
    assert_eq!(kids(&s).await, keys_before, "a key was rotated without confirmation");
    let tok = s.approve(&withdrawal("cli-user", "wd-1"), &seed).await;
    assert!(!tok.is_empty(), "factors were revoked without confirmation");

    // With --yes they act, on the configured server.
    let (out, text) = sigil(&["keys", "rotate", "--now", "--yes", "--config", cfg], &[]);
    assert!(out.status.success(), "{text}");
    assert_eq!(kids(&s).await.len(), keys_before.len() + 1);
    let (out, text) = sigil(&["revoke", "--all", "--reason", "drill", "--yes", "--config", cfg], &[]);
    assert!(out.status.success(), "{text}");
    let mut a = s.approvals("withdrawal-engine").await;
    let refused = match a
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(withdrawal("cli-user", "wd-2")),
            device: None,
        })
        .await
    {
        Err(st) => st,
        Ok(b) => a
            .complete_approval(totp_proof(
                &b.into_inner().challenge_id,
                "cli-user",
                &s.code(&seed, 0),
                "",
            ))
            .await
            .expect_err("a revoked factor approved"),
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_without_confirmation_changes_nothing() {
    let mut s = TestServer::start().await;
    s.enroll_totp("rita").await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("b.backup");
    let mut stream = s.admin().await.backup(pb::BackupRequest {}).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    std::fs::write(&backup, &bytes).unwrap();
    let cfg = config_file(&s, dir.path(), "");
    s.stop().await;
    let store = s.cfg.store.path.clone();
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(store.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let (out, text) = sigil(
        &["restore", backup.to_str().unwrap(), "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text.contains(&store.display().to_string()) && text.contains("--yes"),
        "{text}"
    );
    assert_eq!(listing(), before, "a refused restore touched the store");
    let (out, text) = sigil(
        &[
            "restore",
            backup.to_str().unwrap(),
            "--yes",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("previous store is kept"), "{text}");
    assert_eq!(listing().len(), before.len() + 1);
}
