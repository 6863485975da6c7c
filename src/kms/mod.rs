//! The seam to key management services: the [`KmsBackend`] trait and the types it speaks.

#[cfg(feature = "aws")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
pub mod aws;
pub mod aws_arn;
#[cfg(feature = "azure")]
#[cfg_attr(docsrs, doc(cfg(feature = "azure")))]
pub mod azure;
pub mod azure_name;
#[cfg(feature = "gcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "gcp")))]
pub mod gcp;
pub mod gcp_name;
pub mod health;
pub mod layers;
#[cfg(feature = "local")]
pub mod local;
mod resolver;
mod rotating;
#[cfg(any(feature = "azure", feature = "testkit"))]
pub(crate) mod rsa_oaep;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub use health::{BreakerConfig, KeyEvent, KeyEventKind, KeyHealth, KeyState};
pub use layers::RetryPolicy;
pub use resolver::{KeyBinding, KeyResolver, StaticKey};
pub use rotating::RotatingBackend;

use crate::error::Result;
use crate::ids::{CompartmentId, KeyConfigId};
use crate::key::DataKey;
pub use crate::key::{Provider, WrappedKey};

/// The key a backend wraps new DEKs under.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyDescription {
    /// The kind of KMS.
    pub provider: Provider,
    /// The backend's key reference: key ARN, Cloud KMS resource name, Key Vault key id, local key id.
    pub key_id: String,
    /// The version new DEKs are wrapped under, when the backend knows it ahead of time.
    pub key_version: Option<String>,
}

impl KeyDescription {
    /// Describes a key.
    pub fn new(provider: Provider, key_id: impl Into<String>, key_version: Option<String>) -> Self {
        Self {
            provider,
            key_id: key_id.into(),
            key_version,
        }
    }
}

/// Where a wrapped DEK may be used: the compartment and the key configuration.
///
/// Backends bind the wrapped DEK to it: AWS sends it as EncryptionContext (see
/// [`WrapContext::pairs`]), GCP and the local backend as additional authenticated data (see
/// [`WrapContext::canonical_bytes`]). Azure's `wrapKey` takes no AAD; there the envelope header binds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapContext<'a> {
    compartment: &'a CompartmentId,
    key_config: &'a KeyConfigId,
}

impl<'a> WrapContext<'a> {
    /// The context of DEKs of `compartment` wrapped under `key_config`.
    pub fn new(compartment: &'a CompartmentId, key_config: &'a KeyConfigId) -> Self {
        Self {
            compartment,
            key_config,
        }
    }

    /// The compartment.
    pub fn compartment(&self) -> &'a CompartmentId {
        self.compartment
    }

    /// The key configuration.
    pub fn key_config(&self) -> &'a KeyConfigId {
        self.key_config
    }

    /// Key-value pairs, as AWS KMS EncryptionContext (`compartment_id`, `key_config_id`).
    pub fn pairs(&self) -> [(&'static str, &'a str); 2] {
        [
            ("compartment_id", self.compartment.as_str()),
            ("key_config_id", self.key_config.as_str()),
        ]
    }

    /// The canonical byte encoding used as AAD:
    /// `cmek:v1;compartment_id=<compartment>;key_config_id=<key config>`.
    ///
    /// Unambiguous because ids cannot contain `;` or `=`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        format!(
            "cmek:v1;compartment_id={};key_config_id={}",
            self.compartment, self.key_config
        )
        .into_bytes()
    }
}

/// Reads a key version written as a decimal number in its one canonical spelling (`1`, `42`;
/// not `01`, `+1` or ` 1`): records are authenticated byte for byte, so no other spelling may
/// open them.
#[cfg(any(feature = "local", feature = "gcp"))]
pub(crate) fn canonical_decimal_version(version: &str) -> Option<u32> {
    let canonical = !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && !(version.len() > 1 && version.starts_with('0'));
    canonical.then(|| version.parse().ok()).flatten()
}

/// A key management service that wraps and unwraps data keys.
///
/// Implementations hold the customer's key reference and a client for the service. They must be
/// cheap to share (`Arc<dyn KmsBackend>`) and safe to call from many tasks at once. Deadlines,
/// retries, the per-key breaker and metrics are [`layers`] the [`Client`](crate::Client) puts
/// around them; a backend maps the service's errors onto [`ErrorKind`](crate::ErrorKind)s so
/// those layers can decide. `Display` names the key (and, for layers, the whole chain).
///
/// Every backend must pass [`testkit::conformance`](crate::testkit::conformance) (feature `testkit`).
#[async_trait]
pub trait KmsBackend: Send + Sync + fmt::Debug + fmt::Display + 'static {
    /// The kind of KMS, recorded in envelope headers and checked before unwrapping.
    fn provider(&self) -> Provider;

    /// The key id new wraps will carry ([`WrappedKey::key_id`]), when the backend knows it
    /// without asking the KMS. The per-key breaker keys a wrap's health by it; the default
    /// (`None`) shares one health record among the wraps of the configuration.
    fn wrapping_key_id(&self) -> Option<&str> {
        None
    }

    /// The key new DEKs are wrapped under.
    ///
    /// # Errors
    /// The backend's error when the key cannot be looked up.
    async fn describe(&self) -> Result<KeyDescription>;

    /// Wraps `dek` under the backend's key, bound to `context`.
    ///
    /// # Errors
    /// Permission, not-found, revoked, throttled or transient errors from the service.
    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey>;

    /// Unwraps a DEK wrapped by [`KmsBackend::wrap`] under the same `context`.
    ///
    /// # Errors
    /// [`ErrorKind::Integrity`](crate::ErrorKind::Integrity) when the wrapped key was tampered
    /// with or the context differs; otherwise as for `wrap`.
    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey>;

    /// Checks the key's kind and state as far as the service tells (enabled, purpose, size,
    /// location), for validation before a key is used. The default checks nothing.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`](crate::ErrorKind::Validation) for a key of the wrong kind,
    /// [`ErrorKind::KeyRevoked`](crate::ErrorKind::KeyRevoked) for a disabled one, or the
    /// service's error.
    async fn check_key(&self) -> Result<()> {
        Ok(())
    }
}

/// A shareable backend.
pub type DynKmsBackend = dyn KmsBackend;

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: KmsBackend + ?Sized> KmsBackend for Arc<T> {
    fn provider(&self) -> Provider {
        (**self).provider()
    }
    fn wrapping_key_id(&self) -> Option<&str> {
        (**self).wrapping_key_id()
    }
    async fn describe(&self) -> Result<KeyDescription> {
        (**self).describe().await
    }
    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        (**self).wrap(dek, context).await
    }
    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        (**self).unwrap(wrapped, context).await
    }
    async fn check_key(&self) -> Result<()> {
        (**self).check_key().await
    }
}

/// Lets a test or an operator flip a key between enabled and disabled; used by the conformance
/// suite to check that a disabled key gives [`ErrorKind::KeyRevoked`](crate::ErrorKind::KeyRevoked).
#[async_trait]
pub trait KeyStateControl: Send + Sync {
    /// Disables the key the backend uses.
    ///
    /// # Errors
    /// When the key state cannot be changed.
    async fn disable_key(&self) -> Result<()>;
    /// Enables it again.
    ///
    /// # Errors
    /// When the key state cannot be changed.
    async fn enable_key(&self) -> Result<()>;
}
