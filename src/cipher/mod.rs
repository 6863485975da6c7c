//! The AES-256-GCM seam: one small interface, two implementations chosen at run time.
//!
//! Keys are expanded once (key schedule and GHASH table) when a DEK enters the cache; the hot path
//! only seals and opens. Both implementations pass the same tests and the Wycheproof vectors.

#[cfg(feature = "aws-lc")]
mod aws_lc;
mod derive;
#[cfg(feature = "rustcrypto")]
mod rust_crypto;

#[cfg(not(any(feature = "aws-lc", feature = "rustcrypto")))]
compile_error!("enable at least one cipher provider feature: `aws-lc` or `rustcrypto`");

use std::fmt;

use crate::error::{Error, Result};

pub(crate) use derive::{DekMaterial, compact_digest, sha256};

/// Nonce length of AES-256-GCM as used here (96 bits).
pub const NONCE_LEN: usize = 12;
/// Tag length of AES-256-GCM (128 bits).
pub const TAG_LEN: usize = 16;
// The envelope format lays out what this cipher produces.
const _: () = assert!(NONCE_LEN == crate::format::NONCE_LEN && TAG_LEN == crate::format::TAG_LEN);
/// Largest plaintext AES-GCM can encrypt under one nonce: 2^36 - 32 bytes (NIST SP 800-38D).
pub const MAX_PLAINTEXT_LEN: u64 = (1 << 36) - 32;

/// Which AES-256-GCM implementation encrypts and decrypts data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherProvider {
    /// `aws-lc-rs` (AWS-LC, assembly with VAES/AVX-512 where available). The default.
    #[cfg(feature = "aws-lc")]
    AwsLc,
    /// RustCrypto `aes-gcm`, pure Rust.
    #[cfg(feature = "rustcrypto")]
    RustCrypto,
}

impl CipherProvider {
    /// Every provider compiled into this build.
    pub fn available() -> &'static [CipherProvider] {
        &[
            #[cfg(feature = "aws-lc")]
            CipherProvider::AwsLc,
            #[cfg(feature = "rustcrypto")]
            CipherProvider::RustCrypto,
        ]
    }

    /// A short stable name: `"aws-lc"` or `"rustcrypto"`.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "aws-lc")]
            Self::AwsLc => "aws-lc",
            #[cfg(feature = "rustcrypto")]
            Self::RustCrypto => "rustcrypto",
        }
    }
}

impl Default for CipherProvider {
    /// `AwsLc` when compiled in (it is 3-6x faster here), otherwise `RustCrypto`.
    fn default() -> Self {
        #[cfg(feature = "aws-lc")]
        return Self::AwsLc;
        #[cfg(not(feature = "aws-lc"))]
        return Self::RustCrypto;
    }
}

impl fmt::Display for CipherProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An expanded AES-256-GCM key. Its memory is wiped when dropped (AWS-LC cleanses on free;
/// RustCrypto's `aes-gcm` is built with `zeroize`).
pub(crate) enum CipherKey {
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc::Key),
    #[cfg(feature = "rustcrypto")]
    RustCrypto(rust_crypto::Key),
}

impl fmt::Debug for CipherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CipherKey({})", self.provider())
    }
}

impl CipherKey {
    pub(crate) fn new(provider: CipherProvider, key: &[u8; 32]) -> Result<Self> {
        Ok(match provider {
            #[cfg(feature = "aws-lc")]
            CipherProvider::AwsLc => Self::AwsLc(aws_lc::Key::new(key)?),
            #[cfg(feature = "rustcrypto")]
            CipherProvider::RustCrypto => Self::RustCrypto(rust_crypto::Key::new(key)?),
        })
    }

    pub(crate) fn provider(&self) -> CipherProvider {
        match self {
            #[cfg(feature = "aws-lc")]
            Self::AwsLc(_) => CipherProvider::AwsLc,
            #[cfg(feature = "rustcrypto")]
            Self::RustCrypto(_) => CipherProvider::RustCrypto,
        }
    }

    /// Encrypts `plaintext` into `out` (ciphertext then tag; `out.len() == plaintext.len() + TAG_LEN`).
    #[inline]
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        if out.len() != plaintext.len() + TAG_LEN {
            return Err(Error::invalid_input("output buffer has the wrong length"));
        }
        let (ct, tag) = out.split_at_mut(plaintext.len());
        match self {
            #[cfg(feature = "aws-lc")]
            Self::AwsLc(k) => k.seal(nonce, aad, plaintext, ct, tag),
            #[cfg(feature = "rustcrypto")]
            Self::RustCrypto(k) => k.seal(nonce, aad, plaintext, ct, tag),
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    #[inline]
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        match self {
            #[cfg(feature = "aws-lc")]
            Self::AwsLc(k) => k.seal_in_place(nonce, aad, buf),
            #[cfg(feature = "rustcrypto")]
            Self::RustCrypto(k) => k.seal_in_place(nonce, aad, buf),
        }
    }

    /// Decrypts `ciphertext` into `out` (same length). On failure `out` is wiped.
    #[inline]
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<()> {
        if out.len() != ciphertext.len() {
            return Err(Error::invalid_input("output buffer has the wrong length"));
        }
        let opened = match self {
            #[cfg(feature = "aws-lc")]
            Self::AwsLc(k) => k.open(nonce, aad, ciphertext, tag, out),
            #[cfg(feature = "rustcrypto")]
            Self::RustCrypto(k) => k.open(nonce, aad, ciphertext, tag, out),
        };
        if opened.is_err() {
            zeroize::Zeroize::zeroize(out);
        }
        opened
    }

    /// Decrypts `buf` in place. On failure `buf` is wiped.
    #[inline]
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        let opened = match self {
            #[cfg(feature = "aws-lc")]
            Self::AwsLc(k) => k.open_in_place(nonce, aad, buf, tag),
            #[cfg(feature = "rustcrypto")]
            Self::RustCrypto(k) => k.open_in_place(nonce, aad, buf, tag),
        };
        if opened.is_err() {
            zeroize::Zeroize::zeroize(buf);
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_agree_and_reject_tampering() {
        let key = [0x42u8; 32];
        let nonce = [9u8; NONCE_LEN];
        let pt = b"the quick brown fox jumps over the lazy dog".to_vec();
        let mut outputs = Vec::new();
        for &p in CipherProvider::available() {
            let k = CipherKey::new(p, &key).unwrap();
            let mut out = vec![0u8; pt.len() + TAG_LEN];
            k.seal(&nonce, b"aad", &pt, &mut out).unwrap();

            let mut in_place = pt.clone();
            let tag = k.seal_in_place(&nonce, b"aad", &mut in_place).unwrap();
            assert_eq!(&out[..pt.len()], &in_place[..]);
            assert_eq!(&out[pt.len()..], &tag[..]);

            let mut back = vec![0u8; pt.len()];
            k.open(&nonce, b"aad", &out[..pt.len()], &tag, &mut back)
                .unwrap();
            assert_eq!(back, pt);
            k.open_in_place(&nonce, b"aad", &mut in_place, &tag)
                .unwrap();
            assert_eq!(in_place, pt);

            let mut bad = out.clone();
            bad[0] ^= 1;
            let mut junk = vec![0xAAu8; pt.len()];
            let err = k
                .open(&nonce, b"aad", &bad[..pt.len()], &tag, &mut junk)
                .unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Integrity);
            assert!(junk.iter().all(|&b| b == 0), "no partial plaintext");
            assert!(
                k.open(&nonce, b"aae", &out[..pt.len()], &tag, &mut junk)
                    .is_err()
            );
            outputs.push(out);
        }
        outputs.windows(2).for_each(|w| assert_eq!(w[0], w[1]));
    }
}
