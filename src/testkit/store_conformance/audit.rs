//! The [`AuditSink`] suite for sinks that read back as an activity feed: events come back in
//! the order recorded, page by page, none lost or repeated when many tasks record at once.

#![allow(clippy::expect_used)] // a test suite: failures are panics with messages

use std::sync::Arc;

use crate::control::{Actor, AuditEvent, AuditSink, Outcome};

/// Runs every check on `sink`, which may hold other events already (they are skipped).
pub async fn audit_sink(sink: Arc<dyn AuditSink>) {
    let marker = crate::ids::DekId::random().expect("rng").to_hex();
    let start = end_of(&*sink).await;
    let actor = Actor::new("suite");
    for i in 0..5 {
        let event = AuditEvent::new(&actor, "suite.ordered", Outcome::Success)
            .detail(format!("{marker} {i}"));
        sink.record(&event).await.expect("record");
    }
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (sink, actor, marker) = (sink.clone(), actor.clone(), marker.clone());
            tokio::spawn(async move {
                let event = AuditEvent::new(&actor, "suite.racing", Outcome::Failure)
                    .detail(format!("{marker} r{i}"));
                sink.record(&event).await.expect("record")
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a recording task panicked");
    }

    let mut mine = Vec::new();
    let (mut cursor, mut pages) = (start, 0);
    loop {
        let page = sink.page(cursor, 2).await.expect("page");
        assert!(page.data.len() <= 2, "a page holds more than its limit");
        assert!(page.next >= cursor, "the cursor went back");
        pages += 1;
        mine.extend(
            page.data
                .into_iter()
                .filter(|e| e.detail.as_deref().is_some_and(|d| d.starts_with(&marker))),
        );
        cursor = page.next;
        if !page.has_more {
            break;
        }
        assert!(pages < 1000, "the feed does not end");
    }
    let details: Vec<_> = mine.iter().filter_map(|e| e.detail.clone()).collect();
    let ordered: Vec<_> = (0..5).map(|i| format!("{marker} {i}")).collect();
    assert_eq!(
        details[..5],
        ordered[..],
        "the first events are not in the order recorded"
    );
    let mut racing: Vec<_> = details[5..].to_vec();
    racing.sort();
    racing.dedup();
    assert_eq!(
        racing.len(),
        16,
        "racing events lost or repeated: {details:?}"
    );
    assert_eq!(mine.len(), 21, "events repeated: {details:?}");
    assert_eq!(mine[0].actor, actor);
    assert_eq!(mine[0].action, "suite.ordered");
    assert_eq!(
        sink.page(cursor, 10).await.expect("page").data.len(),
        0,
        "the page after the end is not empty"
    );
}

/// The cursor after every event `sink` holds now.
async fn end_of(sink: &dyn AuditSink) -> u64 {
    let mut cursor = 0;
    loop {
        let page = sink.page(cursor, 1000).await.expect("page");
        cursor = page.next;
        if !page.has_more {
            return cursor;
        }
    }
}
