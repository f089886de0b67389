//! The event stream stays bounded: events every known consumer
//! acknowledged are pruned once old enough, every event past the maximum
//! age whatever the consumers say, a few at a time, audited; a consumer
//! behind the pruned part is told so (OUT_OF_RANGE, PRUNED) instead of
//! silently skipping events.
use tonic::Code;

use crate::support::harness::*;
use crate::support::logs::*;

#[tokio::test(flavor = "multi_thread")]
async fn events_every_consumer_acknowledged_are_pruned_and_a_consumer_behind_is_told() {
    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.protection.sweep_interval_seconds = 3_600; // only the sweeps the test runs
        c.retention.events_min_age = 3_600;
    })
    .await;
    bulk_events(&s, 12).await;
    // Two named consumers, at different places.
    assert_eq!(ack(&s, "mailer", 10).await.unwrap(), 0);
    assert_eq!(ack(&s, "risk-engine", 6).await.unwrap(), 0);
    assert_eq!(audited(&s, "events.consumer_added").len(), 2);
    // Acknowledged, but not an hour old yet: kept.
    sweep(&s).await;
    assert_eq!(first_event(&s, 0).await.unwrap().cursor, 1);

    s.clock.advance(2 * 3_600);
    sweep(&s).await;
    // Pruned up to the slowest consumer.
    let st = first_event(&s, 3).await.unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");
    let (r, meta) = reason(&st);
    assert_eq!(r, "PRUNED");
    assert_eq!(meta.get("pruned_through").map(String::as_str), Some("6"));
    assert!(st.message().contains("after cursor 6"), "{}", st.message());
    assert_eq!(first_event(&s, 6).await.unwrap().cursor, 7);
    let pruned = audited(&s, "events.prune");
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].details["through_cursor"], "6");
    assert_eq!(pruned[0].details["unacknowledged_past_max_age"], "0");

    // A consumer acknowledging a cursor behind the pruned part is told too.
    let st = ack(&s, "late", 2).await.unwrap_err();
    assert_eq!((st.code(), reason(&st).0.as_str()), (Code::OutOfRange, "PRUNED"));
    // Names and cursors are checked.
    let st = ack(&s, "bad name!", 8).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let st = ack(&s, "mailer", 999).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);

    // The slowest one catches up: everything both handled goes.
    assert_eq!(ack(&s, "risk-engine", 12).await.unwrap(), 6);
    sweep(&s).await;
    let st = first_event(&s, 8).await.unwrap_err();
    assert_eq!(reason(&st).1.get("pruned_through").map(String::as_str), Some("10"));
    assert_eq!(first_event(&s, 10).await.unwrap().cursor, 11);
    assert!(s.sigil().ops().verify_audit().unwrap().ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_past_the_maximum_age_go_whatever_the_consumers_say_a_batch_at_a_time() {
    let s = TestServer::start_with(|c| {
        relaxed(c);
        c.protection.sweep_interval_seconds = 3_600; // only the sweeps the test runs
        c.retention.events_min_age = 3_600;
        c.retention.events_max_age = Some(86_400);
        c.retention.prune_batch = 100;
    })
    .await;
    bulk_events(&s, 250).await;
    // A consumer that acknowledged nothing and then vanished.
    ack(&s, "vanished", 0).await.unwrap();
    s.clock.advance(2 * 3_600);
    sweep(&s).await;
    assert_eq!(first_event(&s, 0).await.unwrap().cursor, 1, "the consumer holds them");

    s.clock.advance(86_400);
    bulk_events(&s, 5).await; // new ones stay
    sweep(&s).await;
    // The silent consumer is forgotten, and the oldest events go, one
    // batch per sweep.
    let forgotten = audited(&s, "events.consumer_forgotten");
    assert_eq!(forgotten.len(), 1);
    assert_eq!(forgotten[0].details["consumer"], "vanished");
    let st = first_event(&s, 0).await.unwrap_err();
    assert_eq!(reason(&st).1.get("pruned_through").map(String::as_str), Some("100"));
    sweep(&s).await;
    sweep(&s).await;
    let st = first_event(&s, 0).await.unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange);
    assert_eq!(reason(&st).1.get("pruned_through").map(String::as_str), Some("250"));
    let pruned = audited(&s, "events.prune");
    assert_eq!(
        pruned.iter().map(|e| e.details["events"].as_str()).collect::<Vec<_>>(),
        ["100", "100", "50"]
    );
    assert_eq!(pruned[0].details["unacknowledged_past_max_age"], "100");
    // The young ones are still there, and nothing more goes.
    sweep(&s).await;
    assert_eq!(audited(&s, "events.prune").len(), 3);
    let rest = s.collect_events(250).await;
    assert_eq!(
        rest.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        (251..=255).collect::<Vec<_>>()
    );
    assert_eq!(
        sigil::store::verify_log(s.sigil().store().as_ref(), sigil::store::Table::Events)
            .unwrap()
            .0,
        255
    );
}
