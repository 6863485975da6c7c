//! Secret key material: the data-encryption key and what is derived from it.

use hkdf::Hkdf;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::cipher::{CipherKey, CipherProvider};
use crate::error::{Error, Result};
use crate::format::{COMMITMENT_LEN, Suite};
use crate::ids::DekId;

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

/// What a cached DEK holds: the expanded message key, derived once. (Its key commitment lives
/// in the DEK record and header.)
pub(crate) struct DekMaterial {
    pub(crate) cipher: CipherKey,
}

impl DekMaterial {
    /// Derives the message key and the commitment from a DEK (HKDF-SHA256, see `docs/FORMAT.md`).
    pub(crate) fn derive(
        dek: &DataKey,
        dek_id: &DekId,
        suite: Suite,
        provider: CipherProvider,
    ) -> Result<(Self, [u8; COMMITMENT_LEN])> {
        let (message_key, commitment) = derive_keys(dek, dek_id, suite);
        let cipher = CipherKey::new(provider, &message_key)?;
        Ok((Self { cipher }, commitment))
    }

    /// Derives from a DEK and checks it against the commitment found in a header, in constant time.
    pub(crate) fn derive_committed(
        dek: &DataKey,
        dek_id: &DekId,
        suite: Suite,
        provider: CipherProvider,
        expected: &[u8; COMMITMENT_LEN],
    ) -> Result<Self> {
        let (message_key, commitment) = derive_keys(dek, dek_id, suite);
        if !bool::from(commitment.ct_eq(expected)) {
            return Err(Error::integrity());
        }
        Ok(Self {
            cipher: CipherKey::new(provider, &message_key)?,
        })
    }
}

/// HKDF-SHA256 with salt `"cmek/v1" || suite || dek_id` and the DEK as input keying material.
fn derive_keys(
    dek: &DataKey,
    dek_id: &DekId,
    suite: Suite,
) -> (Zeroizing<[u8; 32]>, [u8; COMMITMENT_LEN]) {
    let mut salt = [0u8; 7 + 1 + crate::ids::DEK_ID_LEN];
    salt[..7].copy_from_slice(b"cmek/v1");
    salt[7] = suite as u8;
    salt[8..].copy_from_slice(&dek_id.to_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), dek.expose_secret());
    let mut message_key = Zeroizing::new([0u8; 32]);
    let mut commitment = [0u8; COMMITMENT_LEN];
    // Both lengths are far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(b"cmek/v1 message key", message_key.as_mut_slice());
    let _ = hk.expand(b"cmek/v1 key commitment", &mut commitment);
    (message_key, commitment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let dek = DataKey::from_slice(&[7u8; 32]).unwrap();
        let id = DekId::from_bytes([1u8; 16]);
        let (k1, c1) = derive_keys(&dek, &id, Suite::Aes256GcmHkdfSha256);
        let (k2, c2) = derive_keys(&dek, &id, Suite::Aes256GcmHkdfSha256);
        assert_eq!(*k1, *k2);
        assert_eq!(c1, c2);
        assert_ne!(k1.as_slice(), c1.as_slice());
        let (_, c3) = derive_keys(
            &dek,
            &DekId::from_bytes([2u8; 16]),
            Suite::Aes256GcmHkdfSha256,
        );
        assert_ne!(c1, c3, "the DEK id is bound into the commitment");
    }

    #[test]
    fn commitment_mismatch_is_integrity_error() {
        let dek = DataKey::generate().unwrap();
        let id = DekId::random().unwrap();
        let err = DekMaterial::derive_committed(
            &dek,
            &id,
            Suite::Aes256GcmHkdfSha256,
            CipherProvider::default(),
            &[0u8; COMMITMENT_LEN],
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Integrity);
    }

    #[test]
    fn wrong_length_key_is_rejected() {
        assert!(DataKey::from_slice(&[0u8; 31]).is_err());
    }
}
