//! The client's shared state: caches, flights, layers and key events; the DEK slow paths are
//! in [`super::encrypting`] and [`super::decrypting`]. Every KMS call goes through the layers of [`crate::kms::layers`] (deadline, retry,
//! per-key breaker, observation); key events from the breaker retire the DEKs they concern.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::creations::Creations;
use crate::cache::{
    ActiveDek, CacheConfig, Counters, DecryptCache, DekSource, EncryptCache, OpenDek, SingleFlight,
    Stats,
};
use crate::cipher::CipherProvider;
use crate::error::{Error, ErrorKind, Result};
use crate::format::Suite;
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::kms::KeyResolver;
use crate::kms::health::{BreakerConfig, HealthRegistry, KeyEvent, KeyEventKind, KeyState};
use crate::kms::layers::{Layers, RetryPolicy};
use crate::store::DekStore;

/// The suite new envelopes are written with.
pub(super) const SUITE: Suite = Suite::Aes256GcmHkdfSha256;

/// In degraded mode, how far past now a stale DEK's life is extended at a time (each extension
/// follows a failed attempt to replace it, so the key keeps being probed).
pub(super) const DEGRADED_STEP: Duration = Duration::from_secs(1);

/// How KMS calls are bounded, retried and broken off.
pub(super) struct Policies {
    pub(super) retry: RetryPolicy,
    pub(super) deadline: Duration,
    pub(super) breaker: BreakerConfig,
}

pub(super) struct Inner {
    pub(super) resolver: Arc<dyn KeyResolver>,
    pub(super) store: Option<Arc<dyn DekStore>>,
    pub(super) config: CacheConfig,
    pub(super) layers: Layers,
    pub(super) cipher: CipherProvider,
    pub(super) enc: EncryptCache,
    pub(super) dec: DecryptCache,
    pub(super) enc_flights: SingleFlight<CompartmentId, Arc<ActiveDek>>,
    pub(super) dec_flights: SingleFlight<(DekId, DekSource), Arc<OpenDek>>,
    pub(super) revoked: RwLock<HashSet<KeyConfigId>>,
    /// Encryption DEKs being made, so purges and retirements discard only those they concern.
    pub(super) creations: Creations,
    pub(super) counters: Counters,
}

impl Inner {
    pub(super) fn new(
        resolver: Arc<dyn KeyResolver>,
        store: Option<Arc<dyn DekStore>>,
        config: CacheConfig,
        cipher: CipherProvider,
        policies: Policies,
    ) -> Self {
        let counters = Counters::default();
        let layers = Layers {
            retry: policies.retry,
            deadline: policies.deadline,
            health: Arc::new(HealthRegistry::new(policies.breaker, policies.deadline)),
            counters: counters.kms.clone(),
        };
        Self {
            enc: EncryptCache::new(&config, counters.evictions.clone()),
            dec: DecryptCache::new(&config, counters.evictions.clone()),
            resolver,
            store,
            config,
            layers,
            cipher,
            enc_flights: SingleFlight::default(),
            dec_flights: SingleFlight::default(),
            revoked: RwLock::default(),
            creations: Creations::default(),
            counters,
        }
    }

    /// The cache's counters (see [`crate::Client::stats`]).
    pub(super) fn stats(&self) -> Stats {
        let mut s = self.counters.snapshot();
        let mut encryptions = self
            .counters
            .retired_encryptions
            .load(std::sync::atomic::Ordering::Relaxed);
        self.enc
            .map
            .for_each(|_, active| encryptions += active.messages());
        s.encrypt_hits = encryptions.saturating_sub(s.encrypt_misses);
        s.encrypt_entries = self.enc.len() as u64;
        s.decrypt_entries = self.dec.len() as u64;
        s
    }

    /// What the metrics publisher reads.
    pub(super) fn metrics_snapshot(&self) -> crate::telemetry::Snapshot {
        (self.stats(), self.layers.health.counts())
    }

    /// Reacts to a key's events: a revocation (disabled, deleted, access lost) stops new data
    /// under that key at once.
    pub(super) fn on_key_event(&self, event: &KeyEvent) {
        if let KeyEventKind::StateChanged { to, revocation, .. } = &event.kind {
            if *revocation {
                Counters::bump(&self.counters.revocations_detected);
            }
            if matches!(to, KeyState::Revoked | KeyState::Denied) {
                // The whole key (its wraps), or the one version an unwrap found revoked.
                let (key_id, version) = (event.key_id.as_str(), event.key_version.as_str());
                self.retire_encryption_deks(&event.key_config, |active| {
                    key_id.is_empty()
                        || active.dek.wrapped_by().is_some_and(|(id, v)| {
                            id == key_id && (version.is_empty() || v == version)
                        })
                });
            }
        }
    }

    /// The DEK store compact envelopes need.
    pub(crate) fn require_store(&self) -> Result<&Arc<dyn DekStore>> {
        self.store.as_ref().ok_or_else(|| {
            Error::configuration(
                "compact envelopes need a DEK store: set one with ClientBuilder::dek_store",
            )
        })
    }

    pub(super) fn is_revoked(&self, key_config: &KeyConfigId) -> bool {
        self.revoked
            .read()
            .map(|r| r.contains(key_config))
            .unwrap_or(true)
    }

    pub(super) fn ensure_not_revoked(&self, key_config: &KeyConfigId) -> Result<()> {
        if self.is_revoked(key_config) {
            Err(Error::revoked(format!(
                "key configuration {key_config} is revoked"
            )))
        } else {
            Ok(())
        }
    }
}

/// Whether a failure says the KMS is out of reach (the only case degraded mode serves stale
/// DEKs for; never a revocation or a refusal).
pub(super) fn is_outage(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Transient | ErrorKind::DeadlineExceeded)
}
