//! The body of streamed envelopes: C2SP chunked encryption, instantiated as Cobblestone-256
//! (HKDF-Expand with SHA-512, AES-256-GCM), <https://c2sp.org/chunked-encryption>.
//!
//! Stateless: a [`BodyKey`] seals and opens chunk `k` with nonce `base nonce XOR k`, in any
//! order, so writers, readers and range readers share it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha512;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::cipher::{CipherKey, CipherProvider, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::{COMMITMENT_LEN, MAX_CHUNKS, SALT_LEN};

/// The HKDF-Expand `info` prefix of the specification, then the AEAD's IANA name and a zero.
const INFO_PREFIX: &[u8] = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00";

/// Bytes HKDF-Expand produces: the AES-256 key, the base nonce and the commitment.
const OKM_LEN: usize = 32 + NONCE_LEN + COMMITMENT_LEN;

/// The per-object key and base nonce of one body.
pub(crate) struct BodyKey {
    cipher: CipherKey,
    base_nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for BodyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyKey(..)")
    }
}

impl BodyKey {
    /// Derives the key, base nonce and commitment of the body with `salt` and `context`
    /// (the writer's side: the commitment goes into the body prefix).
    pub(crate) fn derive(
        provider: CipherProvider,
        input_key: &[u8; 32],
        salt: &[u8; SALT_LEN],
        context: &[u8],
    ) -> Result<(Self, [u8; COMMITMENT_LEN])> {
        let okm = expand(input_key, salt, context)?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&okm[..32]);
        let mut base_nonce = [0u8; NONCE_LEN];
        base_nonce.copy_from_slice(&okm[32..32 + NONCE_LEN]);
        let mut commitment = [0u8; COMMITMENT_LEN];
        commitment.copy_from_slice(&okm[32 + NONCE_LEN..]);
        let body = Self {
            cipher: CipherKey::new(provider, &key)?,
            base_nonce,
        };
        Ok((body, commitment))
    }

    /// Derives as [`BodyKey::derive`] and checks `commitment`, in constant time, before any
    /// chunk can be opened: a wrong DEK, compartment, header or AAD fails here.
    pub(crate) fn open(
        provider: CipherProvider,
        input_key: &[u8; 32],
        salt: &[u8; SALT_LEN],
        context: &[u8],
        commitment: &[u8; COMMITMENT_LEN],
    ) -> Result<Self> {
        let (body, expected) = Self::derive(provider, input_key, salt, context)?;
        if !bool::from(expected.ct_eq(commitment)) {
            return Err(Error::integrity());
        }
        Ok(body)
    }

    /// The nonce of chunk `index`: the base nonce XOR the index as a 96-bit big-endian number.
    fn nonce(&self, index: u64) -> Result<[u8; NONCE_LEN]> {
        if index >= MAX_CHUNKS {
            return Err(Error::invalid_input(
                "streamed object longer than 2^38 chunks",
            ));
        }
        let mut nonce = self.base_nonce;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(index.to_be_bytes()) {
            *n ^= c;
        }
        Ok(nonce)
    }

    /// Seals chunk `index` of `plaintext` into `out` (ciphertext then tag, `plaintext.len() +
    /// 16` bytes).
    #[inline]
    pub(crate) fn seal_chunk_into(
        &self,
        index: u64,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        self.cipher.seal(&self.nonce(index)?, &[], plaintext, out)
    }

    /// Opens sealed chunk `index` (ciphertext then tag) into `out` (`sealed.len() - 16` bytes).
    /// On failure `out` is wiped.
    #[inline]
    pub(crate) fn open_chunk_into(&self, index: u64, sealed: &[u8], out: &mut [u8]) -> Result<()> {
        let Some((ciphertext, tag)) = sealed.split_last_chunk::<TAG_LEN>() else {
            return Err(Error::invalid_input("truncated streamed envelope"));
        };
        self.cipher
            .open(&self.nonce(index)?, &[], ciphertext, tag, out)
    }
}

/// `HKDF-Expand(prk = input key, info = prefix || salt || context, 76)` with HMAC-SHA-512.
///
/// (The `hkdf` crate refuses a PRK shorter than the hash, 64 bytes; the specification takes the
/// 32-byte input key as the PRK, which HMAC accepts, so the two blocks are computed here.)
fn expand(
    input_key: &[u8; 32],
    salt: &[u8; SALT_LEN],
    context: &[u8],
) -> Result<Zeroizing<[u8; OKM_LEN]>> {
    let hmac = <Hmac<Sha512> as KeyInit>::new_from_slice(input_key)
        .map_err(|_| Error::configuration("HMAC-SHA-512 refused a 32-byte key"))?;
    let mut okm = Zeroizing::new([0u8; OKM_LEN]);
    let mut previous = Zeroizing::new([0u8; 64]);
    let mut filled = 0;
    for counter in 1u8.. {
        let mut block = hmac.clone();
        if counter > 1 {
            block.update(previous.as_slice());
        }
        block.update(INFO_PREFIX);
        block.update(salt);
        block.update(context);
        block.update(&[counter]);
        previous.copy_from_slice(&block.finalize().into_bytes());
        let take = (OKM_LEN - filled).min(64);
        okm[filled..filled + take].copy_from_slice(&previous[..take]);
        filled += take;
        if filled == OKM_LEN {
            break;
        }
    }
    Ok(okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_matches_the_hkdf_crate_for_a_long_prk() {
        // With a 64-byte PRK `hkdf` accepts, both computations must agree; the only
        // difference for the 32-byte PRK is HMAC's key padding, which is the same rule.
        let okm = expand(&[7u8; 32], &[1u8; SALT_LEN], b"ctx").unwrap();
        let mut info = INFO_PREFIX.to_vec();
        info.extend_from_slice(&[1u8; SALT_LEN]);
        info.extend_from_slice(b"ctx");
        let mut padded = [0u8; 64];
        padded[..32].copy_from_slice(&[7u8; 32]);
        // HMAC pads a short key with zeros to the block size (128 bytes for SHA-512), so a
        // 64-byte PRK of the key and 32 zeros is the same HMAC key.
        let hk = hkdf::Hkdf::<Sha512>::from_prk(&padded).unwrap();
        let mut expected = [0u8; OKM_LEN];
        hk.expand(&info, &mut expected).unwrap();
        assert_eq!(okm.as_slice(), expected.as_slice());
    }

    #[test]
    fn chunks_open_only_under_their_own_index() {
        let (key, commitment) = BodyKey::derive(
            CipherProvider::default(),
            &[3u8; 32],
            &[4u8; SALT_LEN],
            b"c",
        )
        .unwrap();
        let plaintext = b"sixteen kibibytes or fewer";
        let mut sealed = vec![0u8; plaintext.len() + TAG_LEN];
        key.seal_chunk_into(5, plaintext, &mut sealed).unwrap();
        let mut opened = vec![0xAAu8; plaintext.len()];
        assert!(key.open_chunk_into(4, &sealed, &mut opened).is_err());
        assert!(
            opened.iter().all(|&b| b == 0),
            "a failed open leaves nothing"
        );
        key.open_chunk_into(5, &sealed, &mut opened).unwrap();
        assert_eq!(opened, plaintext);
        let wrong = BodyKey::open(
            CipherProvider::default(),
            &[3u8; 32],
            &[4u8; SALT_LEN],
            b"d",
            &commitment,
        );
        assert_eq!(wrong.unwrap_err().kind(), crate::ErrorKind::Integrity);
        assert!(key.nonce(MAX_CHUNKS).is_err());
        assert!(key.nonce(MAX_CHUNKS - 1).is_ok());
    }
}
