//! Keys as values: the secret data-encryption key and the public wrapped key that travels with data.

use std::fmt;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of a data-encryption key in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// A 256-bit data-encryption key (DEK).
///
/// Lives on the heap, is zeroized when dropped and has no `Debug`, `Display` or `Clone`: the only
/// way to read it is [`DataKey::expose_secret`], which backends call to wrap it.
#[allow(missing_debug_implementations)] // deliberately: key material is never printed
pub struct DataKey(Box<Zeroizing<[u8; DATA_KEY_LEN]>>);

impl DataKey {
    /// Draws a fresh key from the operating system's random generator.
    ///
    /// # Errors
    /// [`ErrorKind::Transient`](crate::ErrorKind::Transient) if the OS random generator fails.
    pub fn generate() -> Result<Self> {
        let mut key = Box::new(Zeroizing::new([0u8; DATA_KEY_LEN]));
        getrandom::fill(key.as_mut_slice())
            .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
        Ok(Self(key))
    }

    /// Copies a key out of `bytes`, which the caller should zeroize afterwards.
    ///
    /// # Errors
    /// [`ErrorKind::Integrity`](crate::ErrorKind::Integrity) if `bytes` is not 32 bytes long (an
    /// unwrapped key of the wrong size means the wrapped key was not ours).
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != DATA_KEY_LEN {
            return Err(Error::integrity());
        }
        let mut key = Box::new(Zeroizing::new([0u8; DATA_KEY_LEN]));
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The raw key bytes. Handle with care: never log, print or persist them unwrapped.
    pub fn expose_secret(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

/// Which kind of KMS holds a key. Recorded in every envelope header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// The local key-file backend (also the provider-managed key).
    Local,
    /// AWS KMS.
    Aws,
    /// Google Cloud KMS.
    Gcp,
    /// Azure Key Vault.
    Azure,
    /// Any other backend implemented outside this crate.
    Other,
}

impl Provider {
    /// A short stable name: `local`, `aws`, `gcp`, `azure` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
            Self::Other => "other",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Other => 0x00,
            Self::Local => 0x01,
            Self::Aws => 0x02,
            Self::Gcp => 0x03,
            Self::Azure => 0x04,
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<Self> {
        Ok(match code {
            0x00 => Self::Other,
            0x01 => Self::Local,
            0x02 => Self::Aws,
            0x03 => Self::Gcp,
            0x04 => Self::Azure,
            other => {
                return Err(Error::invalid_input(format!(
                    "unknown KMS provider code 0x{other:02x}"
                )));
            }
        })
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DEK wrapped by a backend, with the key reference and key version that can unwrap it.
///
/// Public data: it travels in envelope headers and DEK records.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrappedKey {
    /// The kind of KMS that wrapped it.
    pub provider: Provider,
    /// The backend key reference (ARN, resource name, key id).
    pub key_id: String,
    /// The key version that wrapped it (empty when the ciphertext itself names it, as on AWS).
    pub key_version: String,
    /// The wrapped bytes.
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// Bundles a wrapped DEK with its key reference and version.
    pub fn new(
        provider: Provider,
        key_id: impl Into<String>,
        key_version: impl Into<String>,
        ciphertext: Vec<u8>,
    ) -> Self {
        Self {
            provider,
            key_id: key_id.into(),
            key_version: key_version.into(),
            ciphertext,
        }
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("provider", &self.provider)
            .field("key_id", &self.key_id)
            .field("key_version", &self.key_version)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_length_key_is_rejected() {
        assert!(DataKey::from_slice(&[0u8; 31]).is_err());
    }
}
