//! The breaker and its events, driven call by call.

use std::sync::Mutex;

use super::*;

fn registry() -> HealthRegistry {
    HealthRegistry::new(
        BreakerConfig::default()
            .with_revoked_retry_after(Duration::from_millis(100))
            .with_probe_interval(Duration::from_millis(100)),
        Duration::from_secs(1),
    )
}

fn events(r: &HealthRegistry) -> Arc<Mutex<Vec<KeyEventKind>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    r.subscribe(Arc::new(move |e: &KeyEvent| {
        s.lock().unwrap().push(e.kind.clone())
    }));
    seen
}

#[tokio::test(start_paused = true)]
async fn a_revoked_key_fails_fast_then_one_probe_restores_it() {
    let r = registry();
    let seen = events(&r);
    let k = KeyConfigId::new("k").unwrap();
    let slot = r.slot(&k, "key-1", "1", Provider::Local);
    let a = r.admit(&slot).unwrap();
    r.record(&slot, a, false, Ok(())).unwrap();
    for _ in 0..3 {
        let a = r.admit(&slot).unwrap();
        let _ = r.record::<()>(&slot, a, false, Err(Error::revoked("disabled")));
        // Only the first failure was a KMS call; the rest fail fast.
        let err = r.admit(&slot).unwrap_err();
        assert!(
            err.is_fail_fast() && err.kind() == ErrorKind::KeyRevoked,
            "{err}"
        );
        tokio::time::advance(Duration::from_millis(101)).await;
    }
    let probe = r.admit(&slot).unwrap();
    assert!(probe.probe);
    assert!(
        r.admit(&slot).unwrap_err().is_fail_fast(),
        "one probe at a time"
    );
    r.record(&slot, probe, false, Ok(())).unwrap();
    assert!(!r.admit(&slot).unwrap().probe);
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        [
            KeyEventKind::StateChanged {
                from: KeyState::Healthy,
                to: KeyState::Revoked,
                revocation: true
            },
            KeyEventKind::StateChanged {
                from: KeyState::Revoked,
                to: KeyState::Healthy,
                revocation: false
            },
        ],
        "transitions, not failing calls"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_open_the_breaker_after_the_threshold() {
    let r = registry();
    let k = KeyConfigId::new("k").unwrap();
    let slot = r.slot(&k, "key-1", "", Provider::Aws);
    for _ in 0..5 {
        let a = r.admit(&slot).unwrap();
        let _ = r.record::<()>(&slot, a, true, Err(Error::transient("503")));
    }
    assert_eq!(r.state_of(&k, "key-1", ""), Some(KeyState::Unreachable));
    assert!(r.serve_degraded(&k, "key-1", ""));
    let err = r.admit(&slot).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.is_fail_fast());
    // A wrap's "not found" is a deleted key: revoked, and degraded mode ends.
    tokio::time::advance(Duration::from_millis(101)).await;
    let a = r.admit(&slot).unwrap();
    let err = r
        .record::<()>(&slot, a, true, Err(Error::not_found("no key")))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked);
    assert!(
        !r.serve_degraded(&k, "key-1", ""),
        "never after a revocation"
    );
}

#[tokio::test(start_paused = true)]
async fn answers_to_calls_let_through_before_a_change_change_nothing() {
    let r = registry();
    let seen = events(&r);
    let k = KeyConfigId::new("k").unwrap();
    let slot = r.slot(&k, "key-1", "", Provider::Aws);
    let old = r.admit(&slot).unwrap();
    let revoking = r.admit(&slot).unwrap();
    let _ = r.record::<()>(&slot, revoking, true, Err(Error::revoked("disabled")));
    // The older call succeeds after the revocation: the key stays revoked, counted once.
    r.record(&slot, old, true, Ok(())).unwrap();
    assert_eq!(r.state_of(&k, "key-1", ""), Some(KeyState::Revoked));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_waits_a_whole_window_and_a_vanished_probe_is_replaced() {
    let r = registry();
    let k = KeyConfigId::new("k").unwrap();
    let slot = r.slot(&k, "key-1", "", Provider::Aws);
    let a = r.admit(&slot).unwrap();
    let _ = r.record::<()>(&slot, a, true, Err(Error::revoked("disabled")));
    tokio::time::advance(Duration::from_millis(101)).await;
    // A probe that finds the KMS out of reach (of a revoked key: it stays revoked).
    let probe = r.admit(&slot).unwrap();
    let _ = r.record::<()>(&slot, probe, true, Err(Error::transient("503")));
    assert!(
        r.admit(&slot).unwrap_err().is_fail_fast(),
        "the window is rearmed"
    );
    tokio::time::advance(Duration::from_millis(101)).await;
    // A probe whose caller vanishes without an answer: given back at once.
    let probe = r.admit(&slot).unwrap();
    r.abandoned(&slot, probe);
    assert!(r.admit(&slot).unwrap().probe);
    // One that is never given back is replaced after the lease (1 s here).
    assert!(r.admit(&slot).unwrap_err().is_fail_fast());
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert!(r.admit(&slot).unwrap().probe);
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_a_revoked_key_keeps_it_revoked_and_never_degraded() {
    let r = registry();
    let k = KeyConfigId::new("k").unwrap();
    let slot = r.slot(&k, "key-1", "", Provider::Aws);
    let a = r.admit(&slot).unwrap();
    let _ = r.record::<()>(&slot, a, true, Err(Error::revoked("disabled")));
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(101)).await;
        let probe = r.admit(&slot).unwrap();
        let _ = r.record::<()>(&slot, probe, true, Err(Error::transient("503")));
    }
    assert_eq!(r.state_of(&k, "key-1", ""), Some(KeyState::Revoked));
    assert!(!r.serve_degraded(&k, "key-1", ""));
    // Nor does another version's outage degrade a key one of whose slots is revoked.
    let other = r.slot(&k, "key-1", "7", Provider::Aws);
    for _ in 0..5 {
        let a = r.admit(&other).unwrap();
        let _ = r.record::<()>(&other, a, false, Err(Error::transient("503")));
    }
    assert!(!r.serve_degraded(&k, "key-1", "7"));
}
