//! The KMS backend of each external key configuration: built from its provider configurations
//! (current, then earlier), built once however many compartments ask at the same time, and
//! reused until the configuration changes. The client puts its layers (deadline, retry, breaker,
//! metrics) around it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use super::factory::BackendFactory;
use super::model::{ExternalKey, ExternalKeyId, ProviderConfig};
use crate::cache::SingleFlight;
use crate::error::Result;
use crate::kms::{KmsBackend, RotatingBackend};

/// How long a backend with an unavailable earlier key is reused before it is built again, so a
/// key that comes back is used again.
const RETRY_INCOMPLETE_AFTER: Duration = Duration::from_secs(60);

/// Builds and caches configuration backends.
pub(super) struct Backends {
    factory: Arc<dyn BackendFactory>,
    built: Mutex<HashMap<ExternalKeyId, Built>>,
    /// Builds under way, by configuration and the key references they are for.
    builds: SingleFlight<(ExternalKeyId, Vec<String>), Built>,
}

/// A configuration's backend and the key references (current, then earlier) it was built for.
#[derive(Clone)]
pub(super) struct Built {
    key_refs: Vec<String>,
    /// The current key and the earlier ones.
    pub(super) backend: Arc<RotatingBackend>,
    /// Set when an earlier key was unavailable.
    incomplete_since: Option<Instant>,
}

impl Built {
    fn is_current_for(&self, key_refs: &[String]) -> bool {
        self.key_refs == key_refs
            && self
                .incomplete_since
                .is_none_or(|at| at.elapsed() < RETRY_INCOMPLETE_AFTER)
    }
}

impl Backends {
    pub(super) fn new(factory: Arc<dyn BackendFactory>) -> Self {
        Self {
            factory,
            built: Mutex::new(HashMap::new()),
            builds: SingleFlight::default(),
        }
    }

    /// How provider configurations become backends.
    pub(super) fn factory(&self) -> &dyn BackendFactory {
        self.factory.as_ref()
    }

    /// The backend of `key`: wraps with its current KMS key, unwraps with whichever key (current
    /// or earlier) wrapped a DEK.
    pub(super) async fn backend(
        self: &Arc<Self>,
        key: &ExternalKey,
    ) -> Result<Arc<dyn KmsBackend>> {
        Ok(self.built(key).await?.backend)
    }

    /// The backend of `key` with the key ids it was built for.
    pub(super) async fn built(self: &Arc<Self>, key: &ExternalKey) -> Result<Built> {
        let key_refs: Vec<String> = std::iter::once(&key.provider_config)
            .chain(&key.previous_provider_configs)
            .map(ProviderConfig::key_ref)
            .collect();
        if let Some(built) = self.cached(&key.id, &key_refs) {
            return Ok(built);
        }
        let this = self.clone();
        let key = key.clone();
        let flight = (key.id.clone(), key_refs.clone());
        self.builds
            .run(flight, move || {
                async move { this.build(key, key_refs).await }.boxed()
            })
            .await
    }

    fn cached(&self, id: &ExternalKeyId, key_refs: &[String]) -> Option<Built> {
        let built = self.built.lock().ok()?;
        built
            .get(id)
            .filter(|b| b.is_current_for(key_refs))
            .cloned()
    }

    async fn build(&self, key: ExternalKey, key_refs: Vec<String>) -> Result<Built> {
        // A flight that finished just before this one started may have built it already.
        if let Some(built) = self.cached(&key.id, &key_refs) {
            return Ok(built);
        }
        let current = self.factory.backend(&key.provider_config).await?;
        let mut previous = Vec::new();
        let mut unavailable = Vec::new();
        for config in key.previous_provider_configs.iter().rev() {
            // An earlier key that is gone (destroyed after a rewrap, say) only costs the data
            // still wrapped by it, never the configuration.
            match self.factory.backend(config).await {
                Ok(backend) => previous.push(backend),
                Err(e) => unavailable.push((config.key_ref(), e)),
            }
        }
        let rotating = unavailable.into_iter().fold(
            RotatingBackend::new(current, previous).await?,
            |rotating, (key_ref, e)| rotating.with_unavailable(key_ref, e),
        );
        let built = Built {
            key_refs,
            incomplete_since: (!rotating.is_complete()).then(Instant::now),
            backend: Arc::new(rotating),
        };
        if let Ok(mut cache) = self.built.lock() {
            cache.insert(key.id, built.clone());
        }
        Ok(built)
    }
}
