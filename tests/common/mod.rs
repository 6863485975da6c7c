//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use cmek::testkit::FaultyKms;
use cmek::{
    BreakerConfig, CacheConfig, Client, CompartmentId, KeyConfigId, MemoryDekStore, RetryPolicy,
};

pub fn compartment(name: &str) -> CompartmentId {
    CompartmentId::new(name).unwrap()
}

pub fn key_config() -> KeyConfigId {
    KeyConfigId::new("local").unwrap()
}

/// Retries quickly so failure tests stay fast.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy::default().with_backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// How long a revoked key's breaker fails fast in tests.
pub const BREAKER_WINDOW: Duration = Duration::from_millis(50);

/// A breaker that asks a revoked or unreachable key again after at most [`BREAKER_WINDOW`].
pub fn short_breaker() -> BreakerConfig {
    BreakerConfig::default()
        .with_revoked_retry_after(BREAKER_WINDOW)
        .with_probe_interval(BREAKER_WINDOW)
}

/// A client over a fault-injecting in-memory key, with a memory DEK store.
pub fn faulty_client(cache: CacheConfig) -> (Client, Arc<FaultyKms>) {
    let kms = Arc::new(FaultyKms::in_memory().unwrap());
    let client = Client::builder()
        .key(key_config(), kms.clone())
        .dek_store(Arc::new(MemoryDekStore::new()))
        .cache(cache)
        .retry(fast_retry())
        .breaker(short_breaker())
        .build()
        .unwrap();
    (client, kms)
}

/// Every cipher provider compiled in.
pub fn providers() -> &'static [cmek::CipherProvider] {
    cmek::CipherProvider::available()
}

/// A "KMS" that ignores the context: it unwraps a data key under any compartment.
#[derive(Debug)]
pub struct IgnoresContext(pub cmek::LocalKms);

impl std::fmt::Display for IgnoresContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IgnoresContext({})", self.0)
    }
}

#[async_trait::async_trait]
impl cmek::KmsBackend for IgnoresContext {
    fn provider(&self) -> cmek::Provider {
        cmek::Provider::Local
    }
    async fn describe(&self) -> cmek::Result<cmek::KeyDescription> {
        self.0.describe().await
    }
    async fn wrap(
        &self,
        dek: &cmek::DataKey,
        context: &cmek::WrapContext<'_>,
    ) -> cmek::Result<cmek::WrappedKey> {
        let fixed = cmek::CompartmentId::new("fixed").unwrap();
        self.0
            .wrap(dek, &cmek::WrapContext::new(&fixed, context.key_config()))
            .await
    }
    async fn unwrap(
        &self,
        wrapped: &cmek::WrappedKey,
        context: &cmek::WrapContext<'_>,
    ) -> cmek::Result<cmek::DataKey> {
        let fixed = cmek::CompartmentId::new("fixed").unwrap();
        self.0
            .unwrap(
                wrapped,
                &cmek::WrapContext::new(&fixed, context.key_config()),
            )
            .await
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex `s` (panics on anything else: test data).
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
