//! Client certificate deny-list: a listed certificate (by serial or by key)
//! gets UNAUTHENTICATED on every RPC with one `auth.denied` audit entry per
//! call, other roles keep working, and the list is reloaded in-process and
//! by SIGHUP to the real `sigild`, a malformed file keeping the old list.
//!
//! Serials and SPKI digests are computed with `openssl`, independently of
//! Sigil's own certificate parsing.
use std::process::Command;

use sigil::client::connect_as;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;

use crate::support::daemon::*;
use crate::support::denylist::*;
use crate::support::files::*;
use crate::support::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn listed_serial_refuses_every_frontend_rpc_with_one_audit_entry_each() {
    // Written the way an operator might paste it: lowercase, colons, a
    // leading zero byte. Other entries and comments around it.
    let serial = serial_of("frontend");
    let pasted = format!("00{}", serial.to_lowercase())
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let text = format!("# frontend key leaked, INC-1\n\nserial:{pasted}   # revoked 2027-01-15\nserial:01\n");
    let (s, _dir, _path) = server_with_list(&text).await;
    let before = audit(&s).len();
    let ch = s.channel("frontend").await;
    let mut calls = 0;
    // Unary RPCs of several services, including one that would write.
    assert_denied(list_factors(&ch).await, "frontend");
    calls += 1;
    assert_denied(
        FactorServiceClient::new(ch.clone())
            .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
                user_id: "ann".into(),
                ..Default::default()
            })
            .await,
        "frontend",
    );
    calls += 1;
    assert_denied(
        ApprovalServiceClient::new(ch.clone())
            .begin_approval(pb::BeginApprovalRequest {
                intent: Some(withdrawal("ann", "wd-deny-1")),
                device: None,
            })
            .await,
        "frontend",
    );
    calls += 1;
    // A streaming RPC and health: refused as well.
    assert_denied(
        sigil::pb::event_service_client::EventServiceClient::new(ch.clone())
            .watch_events(pb::WatchEventsRequest { after_cursor: 0 })
            .await,
        "frontend",
    );
    calls += 1;
    assert_denied(
        tonic_health::pb::health_client::HealthClient::new(ch.clone())
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await,
        "frontend",
    );
    calls += 1;

    // One audit entry per refused call, and nothing else was written (the
    // enrollment and the challenge never started).
    let all = audit(&s);
    assert_eq!(all.len() - before, calls, "{:#?}", &all[before..]);
    let denied = denied_entries(&s);
    assert_eq!(denied.len(), calls);
    let spki = hex(&spki_sha256_of("frontend"));
    for e in &denied {
        assert_eq!(e.outcome, "refused");
        assert_eq!(e.actor, "frontend");
        assert_eq!(e.details.get("serial"), Some(&shown(&serial)), "{e:?}");
        assert_eq!(e.details.get("spki_sha256"), Some(&spki), "{e:?}");
        assert_eq!(e.details.get("role").map(String::as_str), Some("frontend"));
        assert_eq!(e.details.get("matched").map(String::as_str), Some("serial"));
    }
    let rpcs: Vec<&str> = denied
        .iter()
        .filter_map(|e| e.details.get("rpc").map(String::as_str))
        .collect();
    assert!(rpcs.contains(&"/sigil.v1.FactorService/ListFactors"), "{rpcs:?}");
    assert!(rpcs.contains(&"/grpc.health.v1.Health/Check"), "{rpcs:?}");

    others_still_work(&s).await;
    assert_eq!(
        denied_entries(&s).len(),
        calls,
        "admitted calls write no auth.denied entry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_key_digest_refuses_in_base64url_and_hex() {
    let spki = spki_sha256_of("frontend");
    let b64 = data_encoding::BASE64URL_NOPAD.encode(&spki);
    let (s, _dir, path) = server_with_list(&format!("spki-sha256:{b64}\n")).await;
    let ch = s.channel("frontend").await;
    assert_denied(list_factors(&ch).await, "frontend");
    let e = denied_entries(&s).pop().expect("an auth.denied entry");
    assert_eq!(e.details.get("matched").map(String::as_str), Some("spki-sha256"));
    assert_eq!(e.details.get("spki_sha256"), Some(&hex(&spki)));
    others_still_work(&s).await;

    // The same digest in uppercase hex with colons.
    let hex_colons = hex(&spki)
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    std::fs::write(&path, format!("spki-sha256:{hex_colons}\n")).unwrap();
    assert_eq!(s.sigil().reload_deny_list().unwrap(), 1);
    assert_denied(list_factors(&ch).await, "frontend");

    // Another key's digest: the frontend is back, the admin is out.
    std::fs::write(&path, format!("spki-sha256:{}\n", hex(&spki_sha256_of("admin")))).unwrap();
    assert_eq!(s.sigil().reload_deny_list().unwrap(), 1);
    list_factors(&ch).await.expect("the frontend's key is no longer listed");
    assert_denied(list_factors(&s.channel("admin").await).await, "admin");
    assert_eq!(denied_entries(&s).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_reload_adds_and_removes_an_entry_on_a_live_connection() {
    let (s, _dir, path) = server_with_list("# nobody yet\n").await;
    // One connection throughout: nothing remembered per connection or per
    // certificate may outlive a reload.
    let ch = s.channel("frontend").await;
    list_factors(&ch).await.expect("the list is empty");
    list_factors(&ch).await.expect("still empty");
    assert!(denied_entries(&s).is_empty());

    std::fs::write(&path, format!("serial:{}\n", serial_of("frontend"))).unwrap();
    assert_eq!(s.sigil().reload_deny_list().unwrap(), 1);
    assert_eq!(s.sigil().deny_list().unwrap().current().len(), 1);
    assert_denied(list_factors(&ch).await, "frontend");
    assert_denied(list_factors(&s.channel("frontend").await).await, "frontend");
    others_still_work(&s).await;
    assert_eq!(denied_entries(&s).len(), 2);

    std::fs::write(&path, "").unwrap();
    assert_eq!(s.sigil().reload_deny_list().unwrap(), 0);
    list_factors(&ch).await.expect("removed from the list");
    assert_eq!(denied_entries(&s).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_file_is_refused_naming_file_and_line_and_the_old_list_stays() {
    let entry = format!("serial:{}\n", serial_of("frontend"));
    let (s, _dir, path) = server_with_list(&entry).await;
    let ch = s.channel("frontend").await;
    assert_denied(list_factors(&ch).await, "frontend");

    // This file would drop the frontend's entry, but line 3 is malformed:
    // nothing of it may take effect.
    std::fs::write(&path, "# rotated\nserial:01\nserial:not-hex\n").unwrap();
    let e = s.sigil().reload_deny_list().expect_err("a malformed file is refused");
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("not hexadecimal"), "{msg}");
    assert_denied(list_factors(&ch).await, "frontend");
    assert_eq!(s.sigil().deny_list().unwrap().current().len(), 1);

    // An unknown entry kind, and a file that vanished: refused the same way.
    std::fs::write(&path, "serial:01\n\nsha1:abcdef\n").unwrap();
    let msg = s.sigil().reload_deny_list().unwrap_err().to_string();
    assert!(msg.contains("line 3") && msg.contains("unknown entry kind"), "{msg}");
    std::fs::remove_file(&path).unwrap();
    let msg = s.sigil().reload_deny_list().unwrap_err().to_string();
    assert!(msg.contains("cannot read") && msg.contains("deny.txt"), "{msg}");
    assert_denied(list_factors(&ch).await, "frontend");

    // At start-up a malformed file refuses the start, with file and line.
    let mut cfg = s.cfg.clone();
    std::fs::write(&path, "serial:01\nspki-sha256:tooshort\n").unwrap();
    cfg.server.deny_list = Some(path.clone());
    let msg = sigil::denylist::DenyListHandle::from_config(&cfg.server)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("deny.txt, line 2") && msg.contains("not a SHA-256 digest"),
        "{msg}"
    );
    // server::start reads the same file (this Sigil's `[server] deny_list`).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = sigil::server::tls_config(&cfg.server).unwrap();
    match sigil::server::start(s.sigil().clone(), tls, listener, std::future::pending()).await {
        Ok(_) => panic!("a server started with a malformed deny-list"),
        Err(e) => assert!(e.to_string().contains("deny.txt, line 2"), "{e}"),
    }
    // The refused start changed nothing for the running server.
    assert_denied(list_factors(&ch).await, "frontend");
    assert_eq!(s.sigil().deny_list().unwrap().current().len(), 1);
}

// ---- the real binary and SIGHUP ----

#[tokio::test(flavor = "multi_thread")]
async fn sigild_reloads_the_deny_list_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), "version = 1\n[server]\ndeny_list = \"deny.txt\"\n");
    let deny = dir.path().join("deny.txt");

    // A malformed list: sigild does not start, and says where.
    std::fs::write(&deny, "# leaked\nserial:0g\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigild"));
    daemon_env(&mut cmd, dir.path(), "info");
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "sigild started with a malformed deny-list");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("deny.txt, line 2") && err.contains("not hexadecimal"),
        "{err}"
    );

    // Empty list: the frontend gets through.
    std::fs::write(&deny, "").unwrap();
    let d = start_daemon(dir.path(), "info");
    d.wait_for_log(&["deny-list loaded", "entries=0"]);
    let ch = connect_as(&d.url, &certs_dir(), "frontend").await.unwrap();
    list_factors(&ch).await.expect("the list is empty");

    // Listed, SIGHUP: refused on the same connection.
    std::fs::write(&deny, format!("serial:{}\n", serial_of("frontend"))).unwrap();
    d.signal("HUP");
    d.wait_for_log(&["deny-list reloaded", "entries=1"]);
    assert_denied(list_factors(&ch).await, "frontend");
    let admin = connect_as(&d.url, &certs_dir(), "admin").await.unwrap();
    list_factors(&admin).await.expect("the admin is not listed");

    // A malformed file on SIGHUP: logged with file and line, old list kept,
    // the daemon keeps serving.
    std::fs::write(&deny, "serial:01\nspki-sha256:???\n").unwrap();
    d.signal("HUP");
    let l = d.wait_for_log(&["reload refused"]);
    assert!(l.contains("deny.txt, line 2"), "{l}");
    assert_denied(list_factors(&ch).await, "frontend");

    // Removed, SIGHUP: back in.
    std::fs::write(&deny, "# INC-1 closed\n").unwrap();
    d.signal("HUP");
    d.wait_for_log(&["deny-list reloaded", "entries=0"]);
    list_factors(&ch).await.expect("removed from the list");
    drop(d);
}

/// A stream opened before its certificate was listed does not outlive the
/// reload: WatchEvents ends with UNAUTHENTICATED within a few seconds.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_event_stream_is_closed_when_its_certificate_is_listed() {
    let (s, _dir, path) = server_with_list("").await;
    let mut ev = pb::event_service_client::EventServiceClient::new(s.channel("frontend").await);
    let mut stream = ev
        .watch_events(pb::WatchEventsRequest { after_cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    s.enroll_totp("streamed").await;
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("an event arrives")
        .unwrap();
    assert!(first.is_some());
    std::fs::write(&path, format!("serial:{}\n", serial_of("frontend"))).unwrap();
    s.sigil().reload_deny_list().unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(st) => return Some(st),
            }
        }
    })
    .await
    .expect("the stream was not closed after the reload");
    let st = end.expect("the stream ended without saying why");
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("deny-list"), "{}", st.message());
}
