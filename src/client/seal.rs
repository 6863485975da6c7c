//! The per-message byte work: writing and opening envelope bodies around a cached DEK.

use rand::Rng as _;

use crate::cache::LoadedDek;
use crate::error::{Error, Result};
use crate::format::{
    Form, NONCE_LEN, Preamble, TAG_LEN, envelope_len, split_body, split_body_in_place,
    split_body_mut, write_head,
};

/// Writes header (or compact preamble), a fresh random nonce, ciphertext and tag into `out`.
#[inline]
pub(super) fn seal_envelope(
    dek: &LoadedDek,
    form: Form,
    plaintext: &[u8],
    aad: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let (header, digest) = dek.header_for(form);
    overwrite_len(out, envelope_len(header.len(), plaintext.len()));
    let (head, body) = out.split_at_mut(header.len());
    head.copy_from_slice(header);
    let sealed = split_body_mut(body).and_then(|(nonce, sealed)| {
        rand::rng().fill_bytes(nonce);
        with_aad(digest, aad, |aad| {
            dek.material.cipher.seal(nonce, aad, plaintext, sealed)
        })
    });
    if sealed.is_err() {
        out.clear();
    }
    sealed
}

/// Seals `buf` in place; `header_out` gets the header and nonce.
#[inline]
pub(super) fn seal_detached(
    dek: &LoadedDek,
    form: Form,
    buf: &mut [u8],
    aad: &[u8],
    header_out: &mut Vec<u8>,
) -> Result<[u8; TAG_LEN]> {
    let (header, digest) = dek.header_for(form);
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    write_head(header_out, header, &nonce);
    with_aad(digest, aad, |aad| {
        dek.material.cipher.seal_in_place(&nonce, aad, buf)
    })
}

/// Decrypts the body of `envelope` into `out`.
#[inline]
pub(super) fn open_into(
    dek: &LoadedDek,
    form: Form,
    envelope: &[u8],
    aad: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    if form.is_streamed() {
        return open_streamed_into(dek, form, envelope, aad, out);
    }
    let (header, digest) = dek.header_for(form);
    let body = split_body(&envelope[header.len()..])?;
    overwrite_len(out, body.ciphertext.len());
    with_aad(digest, aad, |aad| {
        dek.material
            .cipher
            .open(body.nonce, aad, body.ciphertext, body.tag, out)
    })
}

/// Decrypts a whole streamed envelope held in memory into `out`.
fn open_streamed_into(
    dek: &LoadedDek,
    form: Form,
    envelope: &[u8],
    aad: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let header_len = match crate::format::stream_header_len(envelope)? {
        Ok(len) => len,
        Err(_) => return Err(Error::invalid_input("truncated streamed envelope")),
    };
    let layout = crate::format::StreamLayout::new(header_len as u64, envelope.len() as u64)?;
    let body = crate::stream::open_body(dek, form, envelope, header_len, aad)?;
    let plaintext_len = usize::try_from(layout.plaintext_len())
        .map_err(|_| Error::invalid_input("streamed envelope too long for memory"))?;
    overwrite_len(out, plaintext_len);
    let mut decryptor = crate::stream::StreamDecryptor::new(body);
    let chunks = &envelope[header_len + crate::format::BODY_PREFIX_LEN..];
    let opened = decryptor
        .update_into(chunks, out)
        .and_then(|full| Ok(full + decryptor.finish_into(&mut out[full..])?));
    match opened {
        Ok(len) => {
            debug_assert_eq!(len, plaintext_len);
            Ok(())
        }
        Err(e) => {
            // Every chunk before the failing one opened: wipe them, not only the rest.
            zeroize::Zeroize::zeroize(out.as_mut_slice());
            Err(e)
        }
    }
}

/// Decrypts the body of `envelope` in place; returns where the plaintext is.
#[inline]
pub(super) fn open_in_place(
    dek: &LoadedDek,
    form: Form,
    envelope: &mut [u8],
    aad: &[u8],
) -> Result<std::ops::Range<usize>> {
    if form.is_streamed() {
        return Err(Error::invalid_input(
            "a streamed envelope does not decrypt in place: use decrypt, a reader or decrypt_range",
        ));
    }
    let (header, digest) = dek.header_for(form);
    let body = split_body_in_place(&mut envelope[header.len()..])?;
    let range = body.ciphertext_range();
    with_aad(digest, aad, |aad| {
        dek.material
            .cipher
            .open_in_place(body.nonce, aad, body.ciphertext, body.tag)
    })?;
    Ok(header.len() + range.start..header.len() + range.end)
}

/// The preamble of something passed to decrypt, which must be an envelope.
#[inline]
pub(super) fn peek_envelope(envelope: &[u8]) -> Result<Preamble> {
    let pre = Preamble::peek(envelope)?;
    if pre.form == Form::DekRecord {
        return Err(Error::invalid_input("a DEK record is not an envelope"));
    }
    Ok(pre)
}

/// Whether `envelope` carries exactly `dek`'s header (always true for compact forms, whose
/// only header field, the DEK id, is the cache key; a streamed header differs from the
/// self-contained one in its form byte only).
#[inline]
pub(super) fn header_fits(dek: &LoadedDek, envelope: &[u8], form: Form) -> bool {
    match form {
        Form::Compact | Form::StreamedCompact => true,
        Form::Streamed => {
            let header = &dek.header;
            envelope.len() >= header.len()
                && envelope[..2] == header[..2]
                && envelope[3..header.len()] == header[3..]
        }
        _ => envelope.starts_with(&dek.header),
    }
}

/// Sets `out`'s length to `len` without zero-filling bytes that are about to be overwritten
/// (only growth beyond the old length is filled).
#[inline]
pub(super) fn overwrite_len(out: &mut Vec<u8>, len: usize) {
    if out.len() >= len {
        out.truncate(len);
    } else {
        out.resize(len, 0);
    }
}

/// Calls `f` with `digest || aad`, the AES-GCM additional data, on the stack when it is short.
#[inline]
pub(super) fn with_aad<T>(digest: &[u8; 32], aad: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    #[inline(always)]
    fn on_stack<const N: usize, T>(digest: &[u8; 32], aad: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
        let len = digest.len() + aad.len();
        let mut buf = [0u8; N];
        buf[..32].copy_from_slice(digest);
        buf[32..len].copy_from_slice(aad);
        f(&buf[..len])
    }
    match aad.len() {
        0..=32 => on_stack::<64, T>(digest, aad, f),
        33..=224 => on_stack::<256, T>(digest, aad, f),
        _ => {
            let mut buf = Vec::with_capacity(32 + aad.len());
            buf.extend_from_slice(digest);
            buf.extend_from_slice(aad);
            f(&buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrite_len_only_grows_with_zeros() {
        let mut v = vec![7u8; 10];
        overwrite_len(&mut v, 4);
        assert_eq!(v, [7, 7, 7, 7]);
        overwrite_len(&mut v, 6);
        assert_eq!(v, [7, 7, 7, 7, 0, 0]);
    }

    #[test]
    fn aad_is_digest_then_caller_aad_for_any_length() {
        let digest = [1u8; 32];
        for n in [0usize, 1, 224, 225, 5000] {
            let aad = vec![2u8; n];
            with_aad(&digest, &aad, |full| {
                assert_eq!(full.len(), 32 + n);
                assert_eq!(&full[..32], &digest);
                assert!(full[32..].iter().all(|&b| b == 2));
            });
        }
    }
}
