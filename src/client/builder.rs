//! Building a [`Client`].

use std::fmt;
use std::sync::Arc;

use std::time::Duration;

use super::inner::Policies;
use super::{Client, Inner};
use crate::cache::CacheConfig;
use crate::cipher::CipherProvider;
use crate::error::{Error, Result};
use crate::ids::KeyConfigId;
use crate::kms::layers::DEFAULT_DEADLINE;
use crate::kms::{BreakerConfig, KeyResolver, KmsBackend, RetryPolicy, StaticKey};
use crate::store::DekStore;

/// Builds a [`Client`].
pub struct ClientBuilder {
    resolver: Option<Arc<dyn KeyResolver>>,
    store: Option<Arc<dyn DekStore>>,
    cache: CacheConfig,
    retry: RetryPolicy,
    deadline: Duration,
    breaker: BreakerConfig,
    cipher: CipherProvider,
    metrics_interval: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            resolver: None,
            store: None,
            cache: CacheConfig::default(),
            retry: RetryPolicy::default(),
            deadline: DEFAULT_DEADLINE,
            breaker: BreakerConfig::default(),
            cipher: CipherProvider::default(),
            metrics_interval: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("resolver", &self.resolver)
            .field("store", &self.store)
            .field("cache", &self.cache)
            .field("retry", &self.retry)
            .field("deadline", &self.deadline)
            .field("breaker", &self.breaker)
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl ClientBuilder {
    /// Puts every compartment under one key: `backend`, recorded in envelopes as `key_config`.
    #[must_use]
    pub fn key(mut self, key_config: KeyConfigId, backend: Arc<dyn KmsBackend>) -> Self {
        self.resolver = Some(Arc::new(StaticKey::new(key_config, backend)));
        self
    }

    /// Chooses keys per compartment through a resolver (a control plane's key attachments).
    #[must_use]
    pub fn key_resolver(mut self, resolver: Arc<dyn KeyResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Persists DEK records here; required for compact envelopes.
    #[must_use]
    pub fn dek_store(mut self, store: Arc<dyn DekStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets the cache limits.
    #[must_use]
    pub fn cache(mut self, config: CacheConfig) -> Self {
        self.cache = config;
        self
    }

    /// Sets how KMS calls are retried and timed out.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the default deadline of an operation: every KMS attempt and backoff an encryption
    /// or decryption makes counts against it (default 10 s; [`Client::with_deadline`] overrides
    /// it per call).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets how the per-key breaker treats revoked, denied and unreachable keys.
    #[must_use]
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// How often cache counters (hits, misses, cached DEKs) are published to the `metrics`
    /// facade (feature `metrics`; default 10 s). KMS calls, errors and key events are
    /// published as they happen.
    #[must_use]
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.metrics_interval = every;
        self
    }

    /// Chooses the AES-256-GCM implementation.
    #[must_use]
    pub fn cipher(mut self, provider: CipherProvider) -> Self {
        self.cipher = provider;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`Configuration`](crate::ErrorKind::Configuration) without a key or resolver, or with invalid cache limits.
    pub fn build(self) -> Result<Client> {
        let resolver = self.resolver.ok_or_else(|| {
            Error::configuration("no key: call ClientBuilder::key or ClientBuilder::key_resolver")
        })?;
        self.cache.validate()?;
        if self.deadline.is_zero() {
            return Err(Error::configuration("the deadline must be positive"));
        }
        let inner = Arc::new(Inner::new(
            resolver,
            self.store,
            self.cache,
            self.cipher,
            Policies {
                retry: self.retry,
                deadline: self.deadline,
                breaker: self.breaker,
            },
        ));
        let weak = Arc::downgrade(&inner);
        inner.layers.health.subscribe(Arc::new(move |event| {
            if let Some(inner) = weak.upgrade() {
                inner.on_key_event(event);
            }
        }));
        crate::telemetry::publish_periodically(
            &inner,
            self.metrics_interval,
            Inner::metrics_snapshot,
        );
        Ok(Client {
            deadline: self.deadline,
            inner,
        })
    }
}
