//! [`RotatingBackend`]: a key configuration that was moved to new KMS keys wraps with the
//! current key and unwraps with whichever key (current or earlier) wrapped a DEK.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::key::DataKey;
use crate::kms::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};

/// The backend of a configuration that was rotated to new keys: wraps with the current key,
/// unwraps with whichever key (current or earlier) wrapped the DEK, found by its key id.
///
/// Distinct keys must have distinct key ids (the control plane refuses a rotation to a key that
/// cannot be told apart from an earlier one). For configurations rotated before that rule, keys
/// that share an id are each tried in turn, current first, so no data is lost to the mix-up.
pub struct RotatingBackend {
    current: (String, Arc<dyn KmsBackend>),
    previous: Vec<(String, Arc<dyn KmsBackend>)>,
    /// Earlier keys that could not be reached, with why (their data cannot be read).
    unavailable: Vec<(String, Error)>,
}

impl fmt::Debug for RotatingBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingBackend")
            .field("current", &self.current.0)
            .field(
                "previous",
                &self.previous.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field(
                "unavailable",
                &self.unavailable.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl fmt::Display for RotatingBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rotating({}", self.current.1)?;
        for (_, earlier) in &self.previous {
            write!(f, ", {earlier}")?;
        }
        f.write_str(")")
    }
}

impl RotatingBackend {
    /// `current` wraps; `previous` (most recent first) only unwrap. An earlier key that cannot
    /// describe itself is kept as unavailable: only the data it wrapped becomes unreadable.
    ///
    /// # Errors
    /// When the current backend cannot describe its key.
    pub async fn new(
        current: Arc<dyn KmsBackend>,
        previous: Vec<Arc<dyn KmsBackend>>,
    ) -> Result<Self> {
        let mut rotating = Self {
            current: (current.describe().await?.key_id, current),
            previous: Vec::with_capacity(previous.len()),
            unavailable: Vec::new(),
        };
        for backend in previous {
            match backend.describe().await {
                Ok(described) => rotating.previous.push((described.key_id, backend)),
                Err(e) => rotating = rotating.with_unavailable(backend.to_string(), e),
            }
        }
        Ok(rotating)
    }

    /// Records an earlier key (named by `key_ref`) that could not be reached because of
    /// `error`. DEKs no reachable key wrapped then fail with `error`'s kind, naming the key.
    pub fn with_unavailable(mut self, key_ref: impl Into<String>, error: Error) -> Self {
        let key_ref = key_ref.into();
        tracing::warn!(key = %key_ref, error = %error, "an earlier key is unavailable; data it wrapped cannot be read");
        self.unavailable.push((key_ref, error));
        self
    }

    /// Whether every earlier key was reachable when this was built.
    pub fn is_complete(&self) -> bool {
        self.unavailable.is_empty()
    }

    /// The key ids of the current key, then the earlier ones.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|(id, _)| id.as_str())
    }

    /// Whether a DEK wrapped as `wrapped` is certainly under the current key: its key id is the
    /// current key's and no earlier key shares that id.
    pub fn is_current(&self, wrapped: &WrappedKey) -> bool {
        wrapped.provider == self.current.1.provider()
            && wrapped.key_id == self.current.0
            && !self.previous.iter().any(|(id, _)| *id == self.current.0)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KmsBackend for RotatingBackend {
    fn provider(&self) -> Provider {
        self.current.1.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        Some(&self.current.0)
    }

    async fn describe(&self) -> Result<KeyDescription> {
        self.current.1.describe().await
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        self.current.1.wrap(dek, context).await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        let candidates: Vec<&Arc<dyn KmsBackend>> = std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(|(key_id, backend)| {
                *key_id == wrapped.key_id && backend.provider() == wrapped.provider
            })
            .map(|(_, backend)| backend)
            .collect();
        if candidates.is_empty() {
            return match self.unavailable.first() {
                Some((key_ref, error)) => Err(Error::new(
                    error.kind(),
                    format!(
                        "the data key was wrapped by {}, which is none of the reachable keys of this configuration; an earlier key is unavailable ({key_ref}: {})",
                        wrapped.key_id,
                        error.message()
                    ),
                )),
                None => self.current.1.unwrap(wrapped, context).await,
            };
        }
        // Keys sharing one id (before ids were made unique): the one that wrapped it opens it.
        let mut last = None;
        for backend in candidates {
            match backend.unwrap(wrapped, context).await {
                Err(e) if e.kind() == ErrorKind::Integrity => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(Error::integrity))
    }

    async fn check_key(&self) -> Result<()> {
        self.current.1.check_key().await
    }
}
