//! Building a [`Client`].

use std::fmt;
use std::sync::Arc;

use super::{Client, Inner};
use crate::cache::CacheConfig;
use crate::cipher::CipherProvider;
use crate::error::{Error, Result};
use crate::ids::KeyConfigId;
use crate::kms::{KeyResolver, KmsBackend, RetryPolicy, StaticKey};
use crate::store::DekStore;

/// Builds a [`Client`].
#[derive(Default)]
pub struct ClientBuilder {
    resolver: Option<Arc<dyn KeyResolver>>,
    store: Option<Arc<dyn DekStore>>,
    cache: CacheConfig,
    retry: RetryPolicy,
    cipher: CipherProvider,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("resolver", &self.resolver)
            .field("store", &self.store)
            .field("cache", &self.cache)
            .field("retry", &self.retry)
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
        Ok(Client {
            inner: Arc::new(Inner::new(
                resolver,
                self.store,
                self.cache,
                self.retry,
                self.cipher,
            )),
        })
    }
}
