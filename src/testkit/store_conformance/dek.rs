//! The [`DekStore`] suite.

#![allow(clippy::expect_used)] // a test suite: failures are panics with messages

use std::sync::Arc;

use crate::format::{DekRecord, Suite};
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::key::{Provider, WrappedKey};
use crate::store::DekStore;

/// Runs every check on the store `open` opens (see the [module docs](super)).
pub async fn dek_store<S>(open: impl Fn() -> Arc<S>)
where
    S: DekStore + ?Sized,
{
    let store = open();
    put_then_get(&*store).await;
    a_put_replaces_the_wrapping(&*store).await;
    compartments_are_separate(&*store).await;
    let writers: Vec<_> = (0..8).map(|_| open()).collect();
    concurrent_puts_all_land(&writers).await;
    restart_keeps_records(&*store, open).await;
}

fn compartment(tag: &str) -> CompartmentId {
    let id = DekId::random().expect("rng").to_hex();
    CompartmentId::new(format!("suite-{tag}-{id}")).expect("valid compartment id")
}

fn record(compartment: &CompartmentId, key_version: &str) -> DekRecord {
    DekRecord {
        suite: Suite::Aes256GcmHkdfSha256,
        dek_id: DekId::random().expect("rng"),
        compartment: compartment.clone(),
        key_config: KeyConfigId::new("suite").expect("valid key config id"),
        wrapped: WrappedKey::new(Provider::Local, "local:suite", key_version, vec![7; 60]),
        commitment: [9; 32],
    }
}

/// A stored record reads back equal; an unknown one is `None`; `list` names it.
pub async fn put_then_get(store: &(impl DekStore + ?Sized)) {
    let c = compartment("get");
    let r = record(&c, "1");
    assert_eq!(
        store.list(&c).await.expect("list failed"),
        vec![],
        "a new compartment lists records"
    );
    store.put(&r).await.expect("put failed");
    let back = store.get(&c, &r.dek_id()).await.expect("get failed");
    assert_eq!(
        back.as_ref(),
        Some(&r),
        "the stored record reads back different"
    );
    let missing = DekId::random().expect("rng");
    assert_eq!(
        store.get(&c, &missing).await.expect("get failed"),
        None,
        "an unknown DEK id is found"
    );
    assert_eq!(store.list(&c).await.expect("list failed"), vec![r.dek_id()]);
}

/// A second put of the same DEK (a rewrap) replaces the record.
pub async fn a_put_replaces_the_wrapping(store: &(impl DekStore + ?Sized)) {
    let c = compartment("rewrap");
    let r = record(&c, "1");
    store.put(&r).await.expect("put failed");
    let rewrapped = r.clone().with_wrapping(
        KeyConfigId::new("suite").expect("valid"),
        WrappedKey::new(Provider::Local, "local:suite", "2", vec![8; 60]),
    );
    store.put(&rewrapped).await.expect("second put failed");
    let back = store.get(&c, &r.dek_id()).await.expect("get failed");
    assert_eq!(back, Some(rewrapped), "a put did not replace the record");
    assert_eq!(
        store.list(&c).await.expect("list failed").len(),
        1,
        "a replaced record is listed twice"
    );
}

/// A record belongs to its compartment only.
pub async fn compartments_are_separate(store: &(impl DekStore + ?Sized)) {
    let (a, b) = (compartment("a"), compartment("b"));
    let r = record(&a, "1");
    store.put(&r).await.expect("put failed");
    assert_eq!(
        store.get(&b, &r.dek_id()).await.expect("get failed"),
        None,
        "a record is visible in another compartment"
    );
    assert!(
        store.list(&b).await.expect("list failed").is_empty(),
        "another compartment lists the record"
    );
}

/// Many tasks writing at once through the store instances `writers`: every record lands and
/// is listed once.
pub async fn concurrent_puts_all_land<S: DekStore + ?Sized>(writers: &[Arc<S>]) {
    let c = compartment("concurrent");
    let records: Vec<_> = (0..64).map(|_| record(&c, "1")).collect();
    let tasks: Vec<_> = records
        .iter()
        .cloned()
        .zip(writers.iter().cycle())
        .map(|(r, store)| {
            let store = store.clone();
            tokio::spawn(async move { store.put(&r).await })
        })
        .collect();
    for t in tasks {
        t.await
            .expect("task panicked")
            .expect("concurrent put failed");
    }
    let mut listed = writers[0].list(&c).await.expect("list failed");
    let mut wanted: Vec<_> = records.iter().map(|r| r.dek_id()).collect();
    listed.sort();
    wanted.sort();
    assert_eq!(
        listed, wanted,
        "concurrent puts lost, doubled or invented records"
    );
}

/// A store opened again over the same state has the records.
pub async fn restart_keeps_records<S: DekStore + ?Sized>(
    store: &S,
    reopen: impl FnOnce() -> Arc<S>,
) {
    let c = compartment("restart");
    let r = record(&c, "1");
    store.put(&r).await.expect("put failed");
    let reopened = reopen();
    let back = reopened
        .get(&c, &r.dek_id())
        .await
        .expect("get after reopening failed");
    assert_eq!(back, Some(r), "the record is gone after reopening");
}
