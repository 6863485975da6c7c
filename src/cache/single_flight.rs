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
    /// The flight runs in whichever caller polls it; if every caller is cancelled it stays in
    /// the table and the next caller resumes it.
    pub(crate) async fn run(
        &self,
        key: K,
        start: impl FnOnce() -> BoxFuture<'static, Result<V>>,
    ) -> Result<V> {
        self.run_until(key, None, start).await.0
    }

    /// Like [`SingleFlight::run`] for a flight that runs under `deadline`: a flight left in the
    /// table past its deadline (its callers were all cancelled) is not joined but replaced, so
    /// nobody inherits its timeout. Also says whether this caller started the flight.
    pub(crate) async fn run_until(
        &self,
        key: K,
        deadline: Option<Instant>,
        start: impl FnOnce() -> BoxFuture<'static, Result<V>>,
    ) -> (Result<V>, bool) {
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
                    flights.insert(
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
        let outcome = flight.clone().await;
        if let Ok(mut flights) = self.lock()
            && flights.get(&key).is_some_and(|e| e.flight.ptr_eq(&flight))
        {
            flights.remove(&key);
        }
        (outcome, started)
    }

    /// Flights under way now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().map(|f| f.len()).unwrap_or_default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<K, Entry<V>>>> {
        self.flights
            .lock()
            .map_err(|_| Error::configuration("single-flight table poisoned"))
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
}
