//! What precedes chunk 0: the cmek header of a streamed form, the salt and the body commitment;
//! and the body key derived from them with a cached DEK.

use rand::Rng as _;

use super::cobblestone::BodyKey;
use crate::cache::LoadedDek;
use crate::cipher::{compact_digest, sha256};
use crate::error::{Error, Result};
use crate::format::{BODY_PREFIX_LEN, COMMITMENT_LEN, Form, SALT_LEN};

/// The two streamed forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StreamForm {
    /// Form `0x05`: only the DEK id travels; its record is in the [`DekStore`](crate::DekStore).
    /// The form for objects: a rewrap replaces DEK records and never rewrites an object.
    #[default]
    Compact,
    /// Form `0x04`: the wrapped DEK travels in the header (objects stored without a DEK store).
    SelfContained,
}

impl StreamForm {
    pub(crate) fn form(self) -> Form {
        match self {
            Self::Compact => Form::StreamedCompact,
            Self::SelfContained => Form::Streamed,
        }
    }
}

/// The header of `form` under `dek` (the DEK's self-contained header or compact preamble with
/// the form byte of the streamed form).
fn header(dek: &LoadedDek, form: Form) -> Vec<u8> {
    let (template, _) = dek.header_for(if form == Form::StreamedCompact {
        Form::Compact
    } else {
        Form::SelfContained
    });
    let mut header = template.to_vec();
    header[2] = form as u8;
    header
}

/// The Cobblestone context of an object: what its header binds (SHA-256 of the header, or the
/// compact binding of its DEK record) followed by the caller's AAD.
fn context(dek: &LoadedDek, form: Form, header: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let binding = if form == Form::StreamedCompact {
        compact_digest(&dek.record()?, form)
    } else {
        sha256(&[header])
    };
    let mut context = Vec::with_capacity(32 + aad.len());
    context.extend_from_slice(&binding);
    context.extend_from_slice(aad);
    Ok(context)
}

/// Starts a new object under `dek`: the bytes to write before chunk 0, and its body key.
pub(crate) fn new_body(dek: &LoadedDek, form: Form, aad: &[u8]) -> Result<(Vec<u8>, BodyKey)> {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    new_body_with_salt(dek, form, &salt, aad)
}

/// [`new_body`] with a given salt (golden vectors; a salt must never repeat under one DEK).
pub(crate) fn new_body_with_salt(
    dek: &LoadedDek,
    form: Form,
    salt: &[u8; SALT_LEN],
    aad: &[u8],
) -> Result<(Vec<u8>, BodyKey)> {
    let mut head = header(dek, form);
    let context = context(dek, form, &head, aad)?;
    let (body, commitment) = BodyKey::derive(
        dek.material.cipher.provider(),
        &dek.material.stream_key,
        salt,
        &context,
    )?;
    head.reserve(BODY_PREFIX_LEN);
    head.extend_from_slice(salt);
    head.extend_from_slice(&commitment);
    Ok((head, body))
}

/// Opens the body of an object of `form` whose header is `header_len` bytes long, reading the
/// salt and commitment that follow it in `head`; the commitment is checked before anything
/// else, so a wrong DEK, compartment, header byte or AAD fails here.
pub(crate) fn open_body(
    dek: &LoadedDek,
    form: Form,
    head: &[u8],
    header_len: usize,
    aad: &[u8],
) -> Result<BodyKey> {
    let Some(prefix) = head.get(header_len..header_len + BODY_PREFIX_LEN) else {
        return Err(Error::invalid_input("truncated streamed envelope"));
    };
    let (salt, commitment) = prefix.split_at(SALT_LEN);
    let salt: &[u8; SALT_LEN] = salt.try_into().map_err(|_| Error::integrity())?;
    let commitment: &[u8; COMMITMENT_LEN] =
        commitment.try_into().map_err(|_| Error::integrity())?;
    let header = &head[..header_len];
    let context = context(dek, form, header, aad)?;
    BodyKey::open(
        dek.material.cipher.provider(),
        &dek.material.stream_key,
        salt,
        &context,
        commitment,
    )
}
