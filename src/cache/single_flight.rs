//! Single-flight: concurrent callers asking for the same key share one computation and its
//! outcome, success or error (so a failing KMS sees one call per wave, not one per caller).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::error::{Error, Result};

type Flight<V> = Shared<BoxFuture<'static, Result<V>>>;

/// A flight and the deadline it runs under (past it, the flight can only fail).
struct Entry<V> {
    flight: Flight<V>,
    deadline: Option<Instant>,
}

pub(crate) struct SingleFlight<K, V: Clone> {
    flights: Mutex<HashMap<K, Entry<V>>>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> SingleFlight<K, V> {
    /// Joins the flight for `key`, starting it with `start` if none is under way.
    ///
    /// The flight runs in whichever caller polls it; if every caller is cancelled, it is
    /// dropped.
    pub(crate) async fn run(
        &self,
        key: K,
        start: impl FnOnce() -> BoxFuture<'static, Result<V>>,
    ) -> Result<V> {
        self.run_until(key, None, start).await.0
    }

    /// Like [`SingleFlight::run`] for a flight that runs under `deadline`: a flight left in the
    /// table past its deadline is not joined but replaced, so nobody inherits its timeout. Also
    /// says whether this caller started the flight. When the last caller of a flight goes away
    /// before it ends, the flight is dropped (its KMS call abandoned) rather than left in the
    /// table.
    pub(crate) async fn run_until(
        &self,
        key: K,
        deadline: Option<Instant>,
        start: impl FnOnce() -> BoxFuture<'static, Result<V>>,
    ) -> (Result<V>, bool) {
        let mut replaced = None;
        let (flight, started) = {
            let mut flights = match self.lock() {
                Ok(flights) => flights,
                Err(e) => return (Err(e), false),
            };
            let now = Instant::now();
            match flights.get(&key) {
                Some(entry) if entry.deadline.is_none_or(|d| d > now) => {
                    (entry.flight.clone(), false)
                }
                _ => {
                    let flight = start().shared();
                    replaced = flights.insert(
                        key.clone(),
                        Entry {
                            flight: flight.clone(),
                            deadline,
                        },
                    );
                    (flight, true)
                }
            }
        };
        // Dropped outside the lock: dropping a flight can run arbitrary code (key events).
        drop(replaced);
        let waiter = Waiter {
            table: self,
            key,
            flight,
        };
        let outcome = waiter.flight.clone().await;
        (outcome, started)
    }
    /// Flights under way now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().map(|f| f.len()).unwrap_or_default()
    }

    /// Takes the flight of `key` out of the table if it is `flight` and it ended, or nobody but
    /// the table and this caller holds it (this was its last caller).
    fn leave(&self, key: &K, flight: &Flight<V>) {
        let removed = {
            let Ok(mut flights) = self.lock() else { return };
            let done = flight.peek().is_some();
            let last = flight.strong_count().is_none_or(|n| n <= 2);
            if (done || last) && flights.get(key).is_some_and(|e| e.flight.ptr_eq(flight)) {
                flights.remove(key)
            } else {
                None
            }
        };
        drop(removed);
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<K, Entry<V>>>> {
        self.flights
            .lock()
            .map_err(|_| Error::configuration("single-flight table poisoned"))
    }
}

/// One caller of a flight; leaving (done or cancelled) takes a finished or orphaned flight out
/// of the table.
struct Waiter<'a, K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> {
    table: &'a SingleFlight<K, V>,
    key: K,
    flight: Flight<V>,
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Drop for Waiter<'_, K, V> {
    fn drop(&mut self) {
        self.table.leave(&self.key, &self.flight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run_and_its_error() {
        let sf = Arc::new(SingleFlight::<u8, u32>::default());
        let runs = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (sf, runs) = (sf.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                sf.run(1, move || {
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<u32, _>(Error::transient("down"))
                    }
                    .boxed()
                })
                .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_flight_whose_callers_all_went_away_is_dropped() {
        let sf = SingleFlight::<u8, u32>::default();
        let dropped = Arc::new(AtomicU32::new(0));
        struct OnDrop(Arc<AtomicU32>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let guard = OnDrop(dropped.clone());
        let waited = tokio::time::timeout(
            Duration::from_millis(20),
            sf.run(1, move || {
                async move {
                    let _guard = guard;
                    std::future::pending::<Result<u32>>().await
                }
                .boxed()
            }),
        )
        .await;
        assert!(waited.is_err());
        assert_eq!(sf.in_flight(), 0, "not left in the table");
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "its work was dropped");
    }
}
