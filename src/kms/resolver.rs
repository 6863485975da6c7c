//! Which key a compartment's data goes under, and which backend opens a key configuration.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::KmsBackend;
use crate::error::{Error, Result};
use crate::ids::{CompartmentId, KeyConfigId};

/// A key configuration together with the backend that speaks to its KMS key.
#[derive(Clone)]
pub struct KeyBinding {
    /// The key configuration id recorded in envelopes and bound into the wrap context.
    pub key_config: KeyConfigId,
    /// The backend wrapping and unwrapping under it.
    pub backend: Arc<dyn KmsBackend>,
}

impl KeyBinding {
    /// Binds a key configuration id to a backend.
    pub fn new(key_config: KeyConfigId, backend: Arc<dyn KmsBackend>) -> Self {
        Self {
            key_config,
            backend,
        }
    }
}

impl fmt::Debug for KeyBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBinding")
            .field("key_config", &self.key_config)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Maps compartments to the key their new data goes under, and key configurations (as found in
/// envelope headers) to backends. Called only on cache misses, never on the hot path.
///
/// [`StaticKey`] puts every compartment under one key; a control plane implements this trait over
/// its own store of key attachments.
#[async_trait]
pub trait KeyResolver: Send + Sync + fmt::Debug + 'static {
    /// The key new DEKs of `compartment` are wrapped under.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown compartment, or the
    /// resolver's own failure.
    async fn encryption_key(&self, compartment: &CompartmentId) -> Result<KeyBinding>;

    /// The backend that unwraps DEKs of `compartment` wrapped under `key_config`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown key configuration.
    async fn decryption_key(
        &self,
        compartment: &CompartmentId,
        key_config: &KeyConfigId,
    ) -> Result<Arc<dyn KmsBackend>>;
}

/// One key for every compartment: the embedded default and the provider-managed key.
#[derive(Clone, Debug)]
pub struct StaticKey {
    binding: KeyBinding,
}

impl StaticKey {
    /// Every compartment's data goes under `backend`, recorded as `key_config`.
    pub fn new(key_config: KeyConfigId, backend: Arc<dyn KmsBackend>) -> Self {
        Self {
            binding: KeyBinding::new(key_config, backend),
        }
    }
}

#[async_trait]
impl KeyResolver for StaticKey {
    async fn encryption_key(&self, _compartment: &CompartmentId) -> Result<KeyBinding> {
        Ok(self.binding.clone())
    }

    async fn decryption_key(
        &self,
        _compartment: &CompartmentId,
        key_config: &KeyConfigId,
    ) -> Result<Arc<dyn KmsBackend>> {
        if *key_config == self.binding.key_config {
            Ok(self.binding.backend.clone())
        } else {
            Err(Error::not_found(format!(
                "unknown key configuration {key_config}"
            )))
        }
    }
}
