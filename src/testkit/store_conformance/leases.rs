//! The [`ControlStore`] suite's job leases: one holder among racers, renewal, release,
//! and a lapsed lease taken over.

#![allow(clippy::expect_used)] // a test suite: failures are panics with messages

use std::sync::Arc;
use std::time::Duration;

use crate::control::ControlStore;
use crate::error::ErrorKind;

/// Long enough not to lapse during the checks.
const HELD: Duration = Duration::from_secs(60);

/// Every instance of `racers` asks for the same job's lease at once, each as its own node:
/// exactly one gets it, and the others are told who holds it.
pub async fn lease_race_has_one_holder<S: ControlStore + ?Sized>(racers: &[Arc<S>]) {
    let job = format!(
        "suite.race-{}",
        crate::ids::DekId::random().expect("rng").to_hex()
    );
    let tasks: Vec<_> = racers
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let (store, job) = (store.clone(), job.clone());
            tokio::spawn(async move { store.acquire_lease(&job, &format!("node-{i}"), HELD).await })
        })
        .collect();
    let mut holders = Vec::new();
    let mut refusals = Vec::new();
    for t in tasks {
        match t.await.expect("task panicked") {
            Ok(lease) => holders.push(lease.holder),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "a loser got {e}");
                refusals.push(e.message().to_owned());
            }
        }
    }
    assert_eq!(
        holders.len(),
        1,
        "{} nodes got the lease: {holders:?}",
        holders.len()
    );
    for refusal in &refusals {
        assert!(
            refusal.contains(&format!("held by {}", holders[0])),
            "a refusal does not name the holder: {refusal}"
        );
    }
    let stored = racers[0]
        .lease(&job)
        .await
        .expect("lease")
        .expect("no lease stored");
    assert_eq!(stored.holder, holders[0]);
}

/// The holder renews; another node is refused until the holder gives the lease up; giving
/// up a lease one does not hold changes nothing; a lapsed lease is taken over.
pub async fn leases_renew_release_and_lapse(store: &(impl ControlStore + ?Sized)) {
    let job = format!(
        "suite.lease-{}",
        crate::ids::DekId::random().expect("rng").to_hex()
    );
    let first = store
        .acquire_lease(&job, "node-a", HELD)
        .await
        .expect("take");
    let renewed = store
        .acquire_lease(&job, "node-a", HELD)
        .await
        .expect("renew");
    assert!(
        renewed.expires_at >= first.expires_at,
        "renewal moved the expiry back"
    );
    let refused = store.acquire_lease(&job, "node-b", HELD).await;
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(ErrorKind::AlreadyExists)
    );
    store.release_lease(&job, "node-b").await.expect("release");
    assert_eq!(
        store.lease(&job).await.expect("lease").map(|l| l.holder),
        Some("node-a".to_owned()),
        "a node that does not hold the lease gave it up"
    );
    store.release_lease(&job, "node-a").await.expect("release");
    assert_eq!(store.lease(&job).await.expect("lease"), None);

    store
        .acquire_lease(&job, "node-b", Duration::from_millis(1))
        .await
        .expect("take after release");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken_over = store
        .acquire_lease(&job, "node-c", HELD)
        .await
        .expect("take over");
    assert_eq!(taken_over.holder, "node-c");
    assert_eq!(
        store
            .acquire_lease("../escape", "node-a", HELD)
            .await
            .map_err(|e| e.kind())
            .err(),
        Some(ErrorKind::InvalidInput)
    );
}
