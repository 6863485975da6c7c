//! AES-256-GCM from `aws-lc-rs`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::{NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};

pub(crate) struct Key(LessSafeKey);

impl Key {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| Error::configuration("aws-lc rejected an AES-256 key"))?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    #[inline]
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        ciphertext: &mut [u8],
        tag: &mut [u8],
    ) -> Result<()> {
        self.0
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                plaintext,
                ciphertext,
                &[],
                tag,
            )
            .map_err(|_| Error::invalid_input("message too long for AES-GCM"))
    }

    #[inline]
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| Error::invalid_input("message too long for AES-GCM"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    #[inline]
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<()> {
        self.0
            .open_separate_gather(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                ciphertext,
                tag,
                out,
            )
            .map_err(|_| Error::integrity())
    }

    #[inline]
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                buf,
            )
            .map(|_| ())
            .map_err(|_| Error::integrity())
    }
}
