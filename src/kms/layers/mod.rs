//! KMS middleware: layers that wrap any [`KmsBackend`] and implement it again, in the shape of
//! `object_store`'s `LimitStore<T>` (`inner: T`; `Display` shows the chain).
//!
//! | layer | does |
//! |---|---|
//! | [`Deadline`] | bounds the whole call, retries included, by the operation's deadline |
//! | [`Retry`] | retries throttled and transient failures with backoff and full jitter, never past the deadline |
//! | [`Guard`] | the per-key breaker: a revoked, denied or unreachable key fails fast instead of costing a KMS call per request (see [`health`](crate::kms::health)) |
//! | [`Observe`] | counts, times and traces every attempt (and feeds the `metrics` facade) |
//! | [`Timeout`] | cuts off one attempt at the per-attempt timeout (below the breaker, so a hang counts against the key) |
//!
//! The client, validation and rewrap all use the same stack, composed in one place:
//! `Deadline(Retry(Guard(Observe(Timeout(backend)))))` for keys in use, and the same without the
//! guard for one-off checks of a key (validation), whose refusals say nothing about a key in use.

pub mod deadline;
mod guard;
mod observe;
mod retry;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

pub use deadline::Deadline;
pub use guard::Guard;
pub(crate) use observe::KmsCounters;
pub use observe::Observe;
pub use retry::{Retry, RetryPolicy};
pub use timeout::Timeout;

use crate::kms::KmsBackend;
use crate::kms::health::HealthRegistry;

/// The default deadline of one operation: every KMS attempt and backoff it makes.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// A backend of a key configuration in use, with every layer.
pub(crate) type InUse = Deadline<Retry<Guard<Observe<Timeout<Arc<dyn KmsBackend>>>>>>;

/// A backend for a one-off check, without the breaker.
pub(crate) type OneOff = Deadline<Retry<Observe<Timeout<Arc<dyn KmsBackend>>>>>;

/// What the layers share: the policies, the key health registry and the counters.
#[derive(Debug)]
pub(crate) struct Layers {
    pub(crate) retry: RetryPolicy,
    pub(crate) deadline: Duration,
    pub(crate) health: Arc<HealthRegistry>,
    pub(crate) counters: Arc<KmsCounters>,
}

impl Layers {
    /// The stack for a key configuration in use (encryption, decryption, rewrap).
    pub(crate) fn in_use(&self, backend: Arc<dyn KmsBackend>) -> InUse {
        let timed = Timeout::new(backend, self.retry.attempt_timeout);
        let observed = Observe::new(timed, self.counters.clone());
        let guarded = Guard::new(observed, self.health.clone());
        Deadline::new(Retry::new(guarded, self.retry.clone()), self.deadline)
    }

    /// The stack for a one-off check of a key (validation of a configuration or of a rotation's
    /// new key): its answers do not move any key's breaker.
    pub(crate) fn one_off(&self, backend: Arc<dyn KmsBackend>) -> OneOff {
        let timed = Timeout::new(backend, self.retry.attempt_timeout);
        let observed = Observe::new(timed, self.counters.clone());
        Deadline::new(Retry::new(observed, self.retry.clone()), self.deadline)
    }
}

#[cfg(all(test, feature = "local"))]
mod tests {
    use super::*;
    use crate::kms::health::{BreakerConfig, HealthRegistry};

    #[test]
    fn display_shows_the_whole_chain() {
        let layers = Layers {
            retry: RetryPolicy::default(),
            deadline: DEFAULT_DEADLINE,
            health: Arc::new(HealthRegistry::new(
                BreakerConfig::default(),
                DEFAULT_DEADLINE,
            )),
            counters: Arc::default(),
        };
        let backend: Arc<dyn KmsBackend> =
            Arc::new(crate::LocalKms::generate("local:chain").unwrap());
        assert_eq!(
            layers.in_use(backend.clone()).to_string(),
            "Deadline(10000 ms, Retry(4, Guard(Observe(Timeout(3000 ms, LocalKms(local:chain))))))"
        );
        assert_eq!(
            layers.one_off(backend).to_string(),
            "Deadline(10000 ms, Retry(4, Observe(Timeout(3000 ms, LocalKms(local:chain)))))"
        );
    }
}
