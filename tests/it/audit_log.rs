//! The audit log at scale and bounded: `sigil audit verify` reads a long
//! log a page at a time; `sigil audit archive` moves its oldest entries to
//! a file cut at a signed checkpoint and has the server prune them; the
//! archives and the live log verify as one chain, the live log alone from
//! its anchor; a tampered, missing or truncated archive is named.
use std::time::Instant;

use sigil::pb;
use sigil::store::Table;
use tonic::Code;

use crate::support::harness::*;
use crate::support::logs::*;

/// The head of the server's audit log.
fn head(s: &TestServer) -> u64 {
    s.sigil().store().log_head(Table::Audit).unwrap().0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_of_100000_entries_verifies_and_reads_through_the_cli() {
    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.protection.sweep_interval_seconds = 3_600;
    })
    .await;
    bulk_audit(&s, 100_000).await;
    let n = head(&s);
    assert!(n >= 100_000, "{n}");
    let t = Instant::now();
    let (ok, text) = cli(&s, &["audit", "verify", "--checkpoint"]);
    assert!(ok, "{}", &text[..text.len().min(2_000)]);
    assert!(
        text.contains(&format!("audit log ok: {n} entries, 1 signed checkpoint(s)")),
        "{text}"
    );
    println!("verified {n} entries in {:?}", t.elapsed());
    let (ok, text) = cli(&s, &["audit", "read"]);
    assert!(ok, "{}", &text[..text.len().min(2_000)]);
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(' ').next().and_then(|w| w.parse().ok()))
        .collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_and_the_live_log_verify_as_one_chain_and_breaks_are_named() {
    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.protection.sweep_interval_seconds = 3_600;
        c.retention.prune_batch = 100; // several batches per cut
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = (dir.path().join("audit-1.jsonl"), dir.path().join("audit-2.jsonl"));
    let (p1, p2) = (a1.to_str().unwrap(), a2.to_str().unwrap());
    bulk_audit(&s, 700).await;
    s.sigil().ops().checkpoint_audit().unwrap(); // a checkpoint inside the first archive
    bulk_audit(&s, 300).await;

    // The first archive keeps the newest 200 in the live log.
    let cut1 = head(&s) - 200;
    let (ok, text) = cli(&s, &["audit", "archive", "--out", p1, "--keep", "200"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "archived audit entries 1..={cut1} ({cut1} entries, 2 signed checkpoint(s))"
        )),
        "{text}"
    );
    let anchor = s.sigil().ops().audit_anchor().unwrap().unwrap();
    assert_eq!(anchor.seq, cut1);
    assert_eq!(s.sigil().store().len(Table::Audit).unwrap() as u64, head(&s) - cut1);
    assert_eq!(audited(&s, "audit.prune").len(), 1);
    // Writing over an existing file is refused, and nothing is pruned.
    let (ok, text) = cli(&s, &["audit", "archive", "--out", p1]);
    assert!(!ok && text.contains("must not exist"), "{text}");
    assert_eq!(s.sigil().ops().audit_anchor().unwrap().unwrap().seq, cut1);

    // The live log alone verifies from its anchor, and says so.
    let (ok, text) = cli(&s, &["audit", "verify"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "entries 1..={cut1} archived, not checked here; chain from the signed checkpoint at {cut1}"
        )),
        "{text}"
    );
    let report = s.sigil().ops().verify_audit().unwrap();
    assert!(report.ok() && report.from == cut1, "{report:?}");

    // A second archive starts where the first ended.
    bulk_audit(&s, 200).await;
    let cut2 = cut1 + 300;
    let (ok, text) = cli(&s, &["audit", "archive", "--out", p2, "--up-to", &cut2.to_string()]);
    assert!(ok, "{text}");
    let header: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&a2).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(header["after_seq"], cut1);
    assert_eq!(header["through_seq"], cut2);

    // Both archives and the live log: one chain, every checkpoint checked.
    let n = head(&s);
    let (ok, text) = cli(
        &s,
        &["audit", "verify", "--checkpoint", "--archive", p1, "--archive", p2],
    );
    assert!(ok, "{text}");
    assert!(text.contains(&format!("audit log ok: {n} entries")), "{text}");

    // A missing archive leaves a gap before the live log: named.
    let (ok, text) = cli(&s, &["audit", "verify", "--archive", p1]);
    assert!(!ok);
    assert!(
        text.contains(&format!("BROKEN at entry {}", cut1 + 1)) && text.contains("is an archive missing"),
        "{text}"
    );
    // Out of order: named.
    let (ok, text) = cli(&s, &["audit", "verify", "--archive", p2, "--archive", p1]);
    assert!(!ok && text.contains("out of order"), "{text}");

    // One altered entry in the first archive: named, with file and line.
    let tampered = dir.path().join("tampered.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&a1)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let victim = lines.iter().position(|l| l.contains("\"seq\":123,")).unwrap();
    lines[victim] = lines[victim].replacen("approval.issue", "approval.issuf", 1);
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let (ok, text) = cli(
        &s,
        &[
            "audit",
            "verify",
            "--archive",
            tampered.to_str().unwrap(),
            "--archive",
            p2,
        ],
    );
    assert!(!ok);
    assert!(
        text.contains("BROKEN at entry 123")
            && text.contains(&format!("tampered.jsonl line {}", victim + 1))
            && text.contains("altered"),
        "{text}"
    );
    // Cut short: named.
    let truncated = dir.path().join("truncated.jsonl");
    let keep = lines.len() - 50;
    let original: Vec<String> = std::fs::read_to_string(&a1)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    std::fs::write(&truncated, original[..keep].join("\n") + "\n").unwrap();
    let (ok, text) = cli(
        &s,
        &[
            "audit",
            "verify",
            "--archive",
            truncated.to_str().unwrap(),
            "--archive",
            p2,
        ],
    );
    assert!(!ok && text.contains("truncated"), "{text}");

    // The server prunes only behind a signed checkpoint and a matching hash.
    let mut admin = s.admin().await;
    let live = s.sigil().ops().audit_entries(cut2 + 10, 1).unwrap()[0].clone();
    let st = admin
        .prune_audit(pb::PruneAuditRequest {
            through_seq: live.seq,
            chain_hash: live.hash.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).0.as_str()),
        (Code::FailedPrecondition, "AUDIT_NOT_CHECKPOINTED")
    );
    admin
        .checkpoint_audit(pb::CheckpointAuditRequest { seq: live.seq })
        .await
        .unwrap();
    let st = admin
        .prune_audit(pb::PruneAuditRequest {
            through_seq: live.seq,
            chain_hash: [7u8; 32].to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st).0, "AUDIT_CHAIN_MISMATCH", "{st:?}");
    let st = admin
        .prune_audit(pb::PruneAuditRequest {
            through_seq: cut1,
            chain_hash: [0u8; 32].to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!((st.code(), reason(&st).0.as_str()), (Code::OutOfRange, "PRUNED"));
    let st = admin
        .checkpoint_audit(pb::CheckpointAuditRequest { seq: 5 })
        .await
        .unwrap_err();
    assert_eq!(reason(&st).0, "PRUNED");
    assert_eq!(s.sigil().ops().audit_anchor().unwrap().unwrap().seq, cut2);

    // The same cut again (a retry after a lost answer) answers the anchor.
    let again = admin
        .prune_audit(pb::PruneAuditRequest {
            through_seq: cut2,
            chain_hash: sigil_verify::b64url::decode(&s.sigil().ops().audit_anchor().unwrap().unwrap().hash).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.pruned, again.anchor.unwrap().seq), (0, cut2));
    // Checkpoints before the cut went with the entries.
    assert!(s.sigil().ops().checkpoints().unwrap().iter().all(|c| c.seq >= cut2));
    assert!(s
        .sigil()
        .store()
        .get(Table::Checkpoints, &cut1.to_be_bytes())
        .unwrap()
        .is_none());
}
