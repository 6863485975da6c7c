//! AES-256-GCM from RustCrypto `aes-gcm` (pure Rust).

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};

use super::{NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};

/// Boxed: the expanded key is large and moves should not copy it around the stack.
pub(crate) struct Key(Box<Aes256Gcm>);

impl Key {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Self> {
        let cipher = Aes256Gcm::new_from_slice(key)
            .map_err(|_| Error::configuration("aes-gcm rejected an AES-256 key"))?;
        Ok(Self(Box::new(cipher)))
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
        let buf = InOutBuf::new(plaintext, ciphertext)
            .map_err(|_| Error::invalid_input("output buffer has the wrong length"))?;
        let t = self
            .0
            .encrypt_inout_detached(&(*nonce).into(), aad, buf)
            .map_err(|_| Error::invalid_input("message too long for AES-GCM"))?;
        tag.copy_from_slice(&t);
        Ok(())
    }

    #[inline]
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let t = self
            .0
            .encrypt_inout_detached(&(*nonce).into(), aad, buf.into())
            .map_err(|_| Error::invalid_input("message too long for AES-GCM"))?;
        Ok(t.into())
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
        let buf = InOutBuf::new(ciphertext, out).map_err(|_| Error::integrity())?;
        self.0
            .decrypt_inout_detached(&(*nonce).into(), aad, buf, &(*tag).into())
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
            .decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &(*tag).into())
            .map_err(|_| Error::integrity())
    }
}
