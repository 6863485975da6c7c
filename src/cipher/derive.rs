//! What is derived from a DEK: the message key, the stream input key and the key commitment
//! (HKDF-SHA256), and the SHA-256 digests of headers that envelopes authenticate. See
//! `docs/FORMAT.md`.

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{CipherKey, CipherProvider};
use crate::error::{Error, Result};
use crate::format::{COMMITMENT_LEN, DekRecord, Form, Suite};
use crate::ids::DekId;
use crate::key::DataKey;

/// What a cached DEK holds: the expanded message key and the input key of streamed bodies,
/// derived once. (Its key commitment lives in the DEK record and header.)
pub(crate) struct DekMaterial {
    pub(crate) cipher: CipherKey,
    /// The Cobblestone-256 input key every streamed object under this DEK derives its own key,
    /// nonce and body commitment from.
    pub(crate) stream_key: Zeroizing<[u8; 32]>,
}

impl DekMaterial {
    /// Derives the message key and the commitment from a DEK (HKDF-SHA256, see `docs/FORMAT.md`).
    pub(crate) fn derive(
        dek: &DataKey,
        dek_id: &DekId,
        suite: Suite,
        provider: CipherProvider,
    ) -> Result<(Self, [u8; COMMITMENT_LEN])> {
        let keys = derive_keys(dek, dek_id, suite);
        let cipher = CipherKey::new(provider, &keys.message_key)?;
        Ok((
            Self {
                cipher,
                stream_key: keys.stream_key,
            },
            keys.commitment,
        ))
    }

    /// Derives from a DEK and checks it against the commitment found in a header, in constant time.
    pub(crate) fn derive_committed(
        dek: &DataKey,
        dek_id: &DekId,
        suite: Suite,
        provider: CipherProvider,
        expected: &[u8; COMMITMENT_LEN],
    ) -> Result<Self> {
        let keys = derive_keys(dek, dek_id, suite);
        if !bool::from(keys.commitment.ct_eq(expected)) {
            return Err(Error::integrity());
        }
        Ok(Self {
            cipher: CipherKey::new(provider, &keys.message_key)?,
            stream_key: keys.stream_key,
        })
    }
}

/// What HKDF derives from one DEK.
struct DerivedKeys {
    message_key: Zeroizing<[u8; 32]>,
    stream_key: Zeroizing<[u8; 32]>,
    commitment: [u8; COMMITMENT_LEN],
}

/// HKDF-SHA256 with salt `"cmek/v1" || suite || dek_id` and the DEK as input keying material.
fn derive_keys(dek: &DataKey, dek_id: &DekId, suite: Suite) -> DerivedKeys {
    let mut salt = [0u8; 7 + 1 + crate::ids::DEK_ID_LEN];
    salt[..7].copy_from_slice(b"cmek/v1");
    salt[7] = suite as u8;
    salt[8..].copy_from_slice(&dek_id.to_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), dek.expose_secret());
    let mut keys = DerivedKeys {
        message_key: Zeroizing::new([0u8; 32]),
        stream_key: Zeroizing::new([0u8; 32]),
        commitment: [0u8; COMMITMENT_LEN],
    };
    // The lengths are far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(b"cmek/v1 message key", keys.message_key.as_mut_slice());
    let _ = hk.expand(b"cmek/v1 stream input key", keys.stream_key.as_mut_slice());
    let _ = hk.expand(b"cmek/v1 key commitment", &mut keys.commitment);
    keys
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The digest compact envelopes of `form` under `record`'s DEK authenticate (see
/// [`DekRecord::compact_binding`]).
pub(crate) fn compact_digest(record: &DekRecord, form: Form) -> [u8; 32] {
    sha256(&[&record.compact_binding(form)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let dek = DataKey::from_slice(&[7u8; 32]).unwrap();
        let id = DekId::from_bytes([1u8; 16]);
        let one = derive_keys(&dek, &id, Suite::Aes256GcmHkdfSha256);
        let two = derive_keys(&dek, &id, Suite::Aes256GcmHkdfSha256);
        assert_eq!(*one.message_key, *two.message_key);
        assert_eq!(*one.stream_key, *two.stream_key);
        assert_eq!(one.commitment, two.commitment);
        assert_ne!(one.message_key.as_slice(), one.commitment.as_slice());
        assert_ne!(*one.message_key, *one.stream_key);
        let (c1, c3) = (
            one.commitment,
            derive_keys(
                &dek,
                &DekId::from_bytes([2u8; 16]),
                Suite::Aes256GcmHkdfSha256,
            )
            .commitment,
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
}
