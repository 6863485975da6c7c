//! RSA-OAEP with SHA-256 and MGF1-SHA-256 (Key Vault's `RSA-OAEP-256`), through aws-lc-rs.
//! The Azure backend wraps locally with the public half; the testkit fake unwraps with the private
//! half.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey, PublicKeyComponents,
};
#[cfg(feature = "testkit")]
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// A public RSA key ready to encrypt with RSA-OAEP-256.
pub(crate) struct OaepPublicKey(OaepPublicEncryptingKey);

impl OaepPublicKey {
    /// From the big-endian modulus and exponent of a JSON Web Key.
    pub(crate) fn from_components(n: &[u8], e: &[u8]) -> Result<Self> {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::Validation,
                format!("not a usable RSA public key ({what})"),
            )
        };
        let der = PublicKeyComponents { n, e }
            .as_der()
            .map_err(|_| bad("encoding"))?;
        let key = PublicEncryptingKey::from_der(der.as_ref()).map_err(|e| bad(&e.to_string()))?;
        Ok(Self(
            OaepPublicEncryptingKey::new(key).map_err(|_| bad("OAEP"))?,
        ))
    }

    /// From an X.509 SubjectPublicKeyInfo DER public key.
    pub(crate) fn from_spki_der(der: &[u8]) -> Result<Self> {
        let key = PublicEncryptingKey::from_der(der).map_err(|e| {
            Error::new(ErrorKind::Validation, format!("not an RSA public key: {e}"))
        })?;
        Ok(Self(OaepPublicEncryptingKey::new(key).map_err(|_| {
            Error::new(ErrorKind::Validation, "RSA key unusable for OAEP")
        })?))
    }

    /// The modulus size in bits.
    #[cfg_attr(not(feature = "azure"), allow(dead_code))]
    pub(crate) fn bits(&self) -> usize {
        self.0.key_size_bits()
    }

    /// Encrypts `plaintext` (at most `bytes - 66` long) with a fresh random seed.
    pub(crate) fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.0.ciphertext_size()];
        let len = self
            .0
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
            .map_err(|_| {
                Error::invalid_input("RSA-OAEP-256 encryption failed (message too long?)")
            })?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// A private RSA key that decrypts RSA-OAEP-256 (test doubles and interop tests).
#[cfg(feature = "testkit")]
pub(crate) struct OaepPrivateKey {
    key: aws_lc_rs::rsa::OaepPrivateDecryptingKey,
    pkcs8: Zeroizing<Vec<u8>>,
}

#[cfg(feature = "testkit")]
impl OaepPrivateKey {
    /// A fresh key of 2048, 3072 or 4096 bits.
    pub(crate) fn generate(bits: usize) -> Result<Self> {
        use aws_lc_rs::rsa::{KeyPair, KeySize};
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            _ => return Err(Error::invalid_input("RSA keys are 2048, 3072 or 4096 bits")),
        };
        let pair =
            KeyPair::generate(size).map_err(|_| Error::transient("RSA key generation failed"))?;
        let der = pair
            .as_der()
            .map_err(|_| Error::transient("RSA key encoding failed"))?;
        Self::from_pkcs8(der.as_ref())
    }

    /// From a PKCS#8 DER private key.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| Error::invalid_input(format!("not an RSA private key: {e}")))?;
        Ok(Self {
            key: aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(private)
                .map_err(|_| Error::invalid_input("RSA key unusable for OAEP"))?,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    /// The PKCS#8 DER encoding (secret).
    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as X.509 SubjectPublicKeyInfo DER.
    pub(crate) fn public_spki_der(&self) -> Result<Vec<u8>> {
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(&self.pkcs8)
            .map_err(|_| Error::transient("RSA key decoding failed"))?;
        let der = private
            .public_key()
            .as_der()
            .map_err(|_| Error::transient("RSA key encoding failed"))?;
        Ok(der.as_ref().to_vec())
    }

    /// The big-endian modulus and public exponent (for a JSON Web Key).
    pub(crate) fn public_components(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&self.pkcs8)
            .map_err(|_| Error::transient("RSA key decoding failed"))?;
        let public = aws_lc_rs::signature::KeyPair::public_key(&pair);
        Ok((
            public.modulus().big_endian_without_leading_zero().to_vec(),
            public.exponent().big_endian_without_leading_zero().to_vec(),
        ))
    }

    /// Decrypts an RSA-OAEP-256 ciphertext (with an optional label).
    pub(crate) fn decrypt(
        &self,
        ciphertext: &[u8],
        label: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let len = self
            .key
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, label)
            .map_err(|_| Error::integrity())?
            .len();
        out.truncate(len);
        Ok(out)
    }
}
