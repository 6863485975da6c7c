//! Hooks for tests, fuzzing, benchmarks and golden vectors. Not part of the public API:
//! anything here may change in any release.

use crate::cache::LoadedDek;
use crate::cipher::DekMaterial;
use crate::cipher::{CipherKey, CipherProvider, NONCE_LEN, TAG_LEN};
use crate::error::Result;
use crate::format::{DekRecord, Form, Preamble, Suite};
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::key::DataKey;
use crate::kms::WrappedKey;

/// A raw AES-256-GCM key of one provider, for Wycheproof tests and raw-cipher benchmarks.
#[derive(Debug)]
pub struct RawCipher(CipherKey);

impl RawCipher {
    /// Expands `key` with `provider`.
    ///
    /// # Errors
    /// Never for a 32-byte key.
    pub fn new(provider: CipherProvider, key: &[u8; 32]) -> Result<Self> {
        Ok(Self(CipherKey::new(provider, key)?))
    }

    /// Out-of-place seal: `out` = ciphertext || tag.
    ///
    /// # Errors
    /// Wrong output length.
    #[inline]
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        pt: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        self.0.seal(nonce, aad, pt, out)
    }

    /// In-place seal, tag returned.
    ///
    /// # Errors
    /// Message too long.
    #[inline]
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        self.0.seal_in_place(nonce, aad, buf)
    }

    /// Out-of-place open.
    ///
    /// # Errors
    /// Integrity failure.
    #[inline]
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<()> {
        self.0.open(nonce, aad, ct, tag, out)
    }

    /// In-place open.
    ///
    /// # Errors
    /// Integrity failure.
    #[inline]
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.0.open_in_place(nonce, aad, buf, tag)
    }
}

/// Parses a header (self-contained or record form) and re-encodes it, for round-trip fuzzing:
/// returns the bytes consumed and the re-encoding.
///
/// # Errors
/// Whatever the parser rejects.
pub fn header_round_trip(bytes: &[u8]) -> Result<(usize, Vec<u8>)> {
    let (form, record, used) = DekRecord::decode(bytes)?;
    let mut out = Vec::new();
    record.encode(form, &mut out);
    Ok((used, out))
}

/// Deterministic encryption from given parts, for golden test vectors: seals `plaintext` with
/// the DEK `dek` under `record`'s header in `form` with `nonce`.
///
/// # Errors
/// Commitment mismatch between `dek` and `record`.
pub fn seal_with(
    dek: &DataKey,
    record: &DekRecord,
    form: Form,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>> {
    let loaded = loaded_dek(dek, record)?;
    let (header, digest) = loaded.header_for(form);
    let mut out = header.to_vec();
    out.extend_from_slice(nonce);
    let mut body = vec![0u8; plaintext.len() + TAG_LEN];
    let mut full_aad = digest.to_vec();
    full_aad.extend_from_slice(aad);
    loaded
        .material
        .cipher
        .seal(nonce, &full_aad, plaintext, &mut body)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Deterministic streamed envelope (form `0x04` or `0x05`) from given parts, for golden test
/// vectors: `plaintext` under the DEK `dek` and `record`'s header, with `salt`.
///
/// # Errors
/// Commitment mismatch between `dek` and `record`; a form that is not streamed.
pub fn seal_streamed_with(
    dek: &DataKey,
    record: &DekRecord,
    form: Form,
    salt: &[u8; crate::format::SALT_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>> {
    if !form.is_streamed() {
        return Err(crate::Error::invalid_input("not a streamed form"));
    }
    let loaded = loaded_dek(dek, record)?;
    let (head, body) = crate::stream::new_body_with_salt(&loaded, form, salt, aad)?;
    seal_body(head, body, plaintext)
}

/// `dek` ready for use under `record`, its commitment checked.
fn loaded_dek(dek: &DataKey, record: &DekRecord) -> Result<LoadedDek> {
    let material = DekMaterial::derive_committed(
        dek,
        &record.dek_id,
        record.suite,
        CipherProvider::default(),
        &record.commitment,
    )?;
    Ok(LoadedDek::new(record, material))
}

fn seal_body(head: Vec<u8>, body: crate::stream::BodyKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut encryptor = crate::stream::StreamEncryptor::new(
        head,
        body,
        Box::new(crate::stream::Unlimited),
        u64::MAX,
    );
    let mut out = Vec::new();
    encryptor.update(plaintext, &mut out)?;
    encryptor.finish(&mut out)?;
    Ok(out)
}

/// A raw Cobblestone-256 message (salt, commitment, chunks) of `plaintext` under `input_key`
/// with `salt` and `context`: the body of streamed envelopes, for Wycheproof and
/// interoperability tests.
///
/// # Errors
/// Never for valid inputs.
pub fn cobblestone_seal(
    provider: CipherProvider,
    input_key: &[u8; 32],
    salt: &[u8; crate::format::SALT_LEN],
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let (body, commitment) = crate::stream::BodyKey::derive(provider, input_key, salt, context)?;
    let mut head = salt.to_vec();
    head.extend_from_slice(&commitment);
    seal_body(head, body, plaintext)
}

/// Opens a raw Cobblestone-256 message sealed under `input_key` with `context`, through the
/// same streaming decryptor as streamed envelopes, feeding it `piece`-byte pieces. Returns
/// the plaintext it released (all of it, or what came before a failure) and the outcome.
pub fn cobblestone_open(
    provider: CipherProvider,
    input_key: &[u8; 32],
    context: &[u8],
    message: &[u8],
    piece: usize,
) -> (Vec<u8>, Result<()>) {
    use crate::format::{COMMITMENT_LEN, SALT_LEN};
    let mut out = Vec::new();
    let outcome = (|| {
        if message.len() < SALT_LEN + COMMITMENT_LEN {
            return Err(crate::Error::invalid_input("truncated streamed envelope"));
        }
        let (salt, rest) = message.split_at(SALT_LEN);
        let (commitment, chunks) = rest.split_at(COMMITMENT_LEN);
        let body = crate::stream::BodyKey::open(
            provider,
            input_key,
            salt.try_into().map_err(|_| crate::Error::integrity())?,
            context,
            commitment
                .try_into()
                .map_err(|_| crate::Error::integrity())?,
        )?;
        let mut decryptor = crate::stream::StreamDecryptor::new(body);
        for part in chunks.chunks(piece.max(1)) {
            decryptor.update(part, &mut out)?;
        }
        decryptor.finish(&mut out)
    })();
    (out, outcome)
}

/// Builds a DEK record for `dek` (computing its commitment) around an already wrapped key.
///
/// # Errors
/// Never for valid inputs.
pub fn record_for(
    dek: &DataKey,
    dek_id: DekId,
    compartment: CompartmentId,
    key_config: KeyConfigId,
    wrapped: WrappedKey,
) -> Result<DekRecord> {
    let (_, commitment) = DekMaterial::derive(
        dek,
        &dek_id,
        Suite::Aes256GcmHkdfSha256,
        CipherProvider::default(),
    )?;
    Ok(DekRecord {
        suite: Suite::Aes256GcmHkdfSha256,
        dek_id,
        compartment,
        key_config,
        wrapped,
        commitment,
    })
}

/// The fixed preamble length (magic, version, form, suite, DEK id).
pub const PREAMBLE_WITH_ID_LEN: usize = Preamble::LEN;

#[cfg(test)]
pub(crate) fn test_loaded_dek() -> std::sync::Arc<LoadedDek> {
    use crate::kms::Provider;
    let dek = DataKey::generate().unwrap();
    let record = record_for(
        &dek,
        DekId::random().unwrap(),
        CompartmentId::new("c").unwrap(),
        KeyConfigId::new("k").unwrap(),
        WrappedKey::new(Provider::Local, "local:t", "1", vec![1; 60]),
    )
    .unwrap();
    let (material, _) = DekMaterial::derive(
        &dek,
        &record.dek_id,
        record.suite,
        CipherProvider::default(),
    )
    .unwrap();
    std::sync::Arc::new(LoadedDek::new(&record, material))
}

/// For benchmarks of in-place decryption: the tag under which the *plaintext* of `envelope`,
/// read as ciphertext with the same DEK, nonce and AAD, authenticates (GCM is CTR mode, so
/// sealing the ciphertext yields the plaintext and this tag). Alternating the two tags lets a
/// benchmark decrypt one buffer in place again and again without copying.
///
/// # Errors
/// Whatever decrypting `envelope` would give.
pub async fn partner_tag(
    client: &crate::Client,
    compartment: &CompartmentId,
    envelope: &[u8],
    aad: &[u8],
) -> Result<[u8; TAG_LEN]> {
    client.partner_tag(compartment, envelope, aad).await
}

/// RSA-OAEP-256 (SHA-256, MGF1-SHA-256) encryption under a public key given as SubjectPublicKeyInfo
/// DER: the helper the Azure backend wraps with, for interop tests.
///
/// # Errors
/// A key that does not parse, or a message too long.
#[cfg(any(feature = "azure", feature = "testkit"))]
pub fn rsa_oaep256_encrypt(spki_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    crate::kms::rsa_oaep::OaepPublicKey::from_spki_der(spki_der)?.encrypt(plaintext)
}

/// RSA-OAEP-256 decryption with a PKCS#8 DER private key (optionally with a label): the helper
/// the testkit Key Vault unwraps with, for interop tests and Wycheproof vectors.
///
/// # Errors
/// A key that does not parse, or a ciphertext that does not decrypt.
#[cfg(feature = "testkit")]
pub fn rsa_oaep256_decrypt(
    pkcs8_der: &[u8],
    ciphertext: &[u8],
    label: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let key = crate::kms::rsa_oaep::OaepPrivateKey::from_pkcs8(pkcs8_der)?;
    Ok(key.decrypt(ciphertext, label)?.to_vec())
}
