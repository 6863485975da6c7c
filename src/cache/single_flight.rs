//! Single-flight: concurrent callers asking for the same key share one computation and its
//! outcome, success or error (so a failing KMS sees one call per wave, not one per caller).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::error::{Error, Result};

type Flight<V> = Shared<BoxFuture<'static, Result<V>>>;

pub(crate) struct SingleFlight<K, V: Clone> {
    flights: Mutex<HashMap<K, Flight<V>>>,
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
        let flight = {
            let mut flights = self.lock()?;
            flights
                .entry(key.clone())
                .or_insert_with(|| start().shared())
                .clone()
        };
        let outcome = flight.clone().await;
        let mut flights = self.lock()?;
        if flights.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
            flights.remove(&key);
        }
        outcome
    }

    /// Flights under way now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().map(|f| f.len()).unwrap_or_default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<K, Flight<V>>>> {
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
