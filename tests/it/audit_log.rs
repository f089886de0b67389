//! The audit log at scale: `sigil audit verify` and `sigil audit read`
//! read a long log a page at a time.
use std::time::Instant;

use sigil::store::Table;

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
