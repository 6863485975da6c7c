//! Reading envelopes: the fixed preamble, the body, and a header dump for `cmek inspect`.

use serde::Serialize;

use super::{DekRecord, Form, MAGIC, NONCE_LEN, PREAMBLE_LEN, Suite, TAG_LEN, VERSION};
use crate::error::{Error, Result};
use crate::ids::{DEK_ID_LEN, DekId, hex_encode};

/// The fixed first 20 bytes of every form: magic, version, form, suite and DEK id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Preamble {
    pub(crate) form: Form,
    pub(crate) suite: Suite,
    pub(crate) dek_id: DekId,
}

impl Preamble {
    /// Length of the preamble plus DEK id.
    pub(crate) const LEN: usize = PREAMBLE_LEN + DEK_ID_LEN;

    /// Reads and checks the preamble without parsing the rest.
    #[inline]
    pub(crate) fn peek(bytes: &[u8]) -> Result<Self> {
        let Some(head) = bytes.first_chunk::<{ Self::LEN }>() else {
            return Err(Error::invalid_input(
                if bytes.first() == Some(&MAGIC) || bytes.is_empty() {
                    "truncated envelope"
                } else {
                    "not a cmek envelope (bad magic byte)"
                },
            ));
        };
        if head[0] != MAGIC {
            return Err(Error::invalid_input("not a cmek envelope (bad magic byte)"));
        }
        if head[1] != VERSION {
            return Err(Error::invalid_input(format!(
                "unsupported envelope format version {} (this build reads version {VERSION})",
                head[1]
            )));
        }
        let form = Form::from_byte(head[2])?;
        let suite = Suite::from_byte(head[3])?;
        let id: &[u8; DEK_ID_LEN] = head[PREAMBLE_LEN..]
            .try_into()
            .map_err(|_| Error::invalid_input("truncated envelope"))?;
        Ok(Self {
            form,
            suite,
            dek_id: DekId::from_bytes(*id),
        })
    }
}

/// Nonce, ciphertext and tag: what follows the header.
pub(crate) struct Body<'a> {
    pub(crate) nonce: &'a [u8; NONCE_LEN],
    pub(crate) ciphertext: &'a [u8],
    pub(crate) tag: &'a [u8; TAG_LEN],
}

/// Length of an envelope whose header is `header_len` bytes long around `plaintext_len` bytes.
#[inline]
pub(crate) const fn envelope_len(header_len: usize, plaintext_len: usize) -> usize {
    header_len + NONCE_LEN + plaintext_len + TAG_LEN
}

/// Splits the body of an envelope being written (everything after its header, sized by
/// [`envelope_len`]) into the nonce and the room for ciphertext and tag, which follow it.
#[inline]
pub(crate) fn split_body_mut(body: &mut [u8]) -> Result<(&mut [u8; NONCE_LEN], &mut [u8])> {
    match body.split_first_chunk_mut::<NONCE_LEN>() {
        Some((nonce, sealed)) if sealed.len() >= TAG_LEN => Ok((nonce, sealed)),
        _ => Err(Error::invalid_input("truncated envelope")),
    }
}

/// Appends a detached envelope's head: its header, then the nonce (the ciphertext and tag are
/// kept apart by the caller).
#[inline]
pub(crate) fn write_head(out: &mut Vec<u8>, header: &[u8], nonce: &[u8; NONCE_LEN]) {
    out.clear();
    out.extend_from_slice(header);
    out.extend_from_slice(nonce);
}

/// What follows a header, split in place: nonce, ciphertext and tag.
pub(crate) struct BodyInPlace<'a> {
    pub(crate) nonce: &'a [u8; NONCE_LEN],
    pub(crate) ciphertext: &'a mut [u8],
    pub(crate) tag: &'a [u8; TAG_LEN],
}

impl BodyInPlace<'_> {
    /// Where the ciphertext lies within what follows the header.
    pub(crate) fn ciphertext_range(&self) -> std::ops::Range<usize> {
        NONCE_LEN..NONCE_LEN + self.ciphertext.len()
    }
}

/// Splits what follows a header, in place, into nonce, ciphertext and tag.
#[inline]
pub(crate) fn split_body_in_place(bytes: &mut [u8]) -> Result<BodyInPlace<'_>> {
    let Some((nonce, rest)) = bytes.split_first_chunk_mut::<NONCE_LEN>() else {
        return Err(Error::invalid_input("truncated envelope"));
    };
    let Some((ciphertext, tag)) = rest.split_last_chunk_mut::<TAG_LEN>() else {
        return Err(Error::invalid_input("truncated envelope"));
    };
    Ok(BodyInPlace {
        nonce,
        ciphertext,
        tag,
    })
}

/// Splits what follows a header into nonce, ciphertext and tag.
#[inline]
pub(crate) fn split_body(bytes: &[u8]) -> Result<Body<'_>> {
    let Some((nonce, rest)) = bytes.split_first_chunk::<NONCE_LEN>() else {
        return Err(Error::invalid_input("truncated envelope"));
    };
    let Some((ciphertext, tag)) = rest.split_last_chunk::<TAG_LEN>() else {
        return Err(Error::invalid_input("truncated envelope"));
    };
    Ok(Body {
        nonce,
        ciphertext,
        tag,
    })
}

/// What an envelope's header says, for humans and tools; needs no key.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct EnvelopeInfo {
    /// Format version.
    pub format_version: u8,
    /// Self-contained, compact or DEK record.
    pub form: Form,
    /// Cipher suite.
    pub suite: Suite,
    /// DEK id (hex).
    pub dek_id: String,
    /// Compartment (absent in compact envelopes).
    pub compartment_id: Option<String>,
    /// Key configuration (absent in compact envelopes).
    pub key_config_id: Option<String>,
    /// KMS provider (absent in compact envelopes).
    pub provider: Option<String>,
    /// Backend key reference (absent in compact envelopes).
    pub key_id: Option<String>,
    /// Backend key version (absent in compact envelopes).
    pub key_version: Option<String>,
    /// Key commitment, hex (absent in compact envelopes).
    pub commitment: Option<String>,
    /// Length of the wrapped DEK (absent in compact envelopes).
    pub wrapped_dek_len: Option<usize>,
    /// Header length in bytes (everything before the nonce).
    pub header_len: usize,
    /// Ciphertext length, equal to the plaintext length (absent for DEK records and streamed
    /// envelopes).
    pub ciphertext_len: Option<usize>,
    /// The body of a streamed envelope (absent for the other forms).
    pub stream: Option<StreamInfo>,
}

/// What the body of a streamed envelope says, for humans and tools.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The body construction: `Cobblestone-256`.
    pub body: &'static str,
    /// Plaintext bytes per chunk (16384); the final chunk holds fewer.
    pub chunk_len: usize,
    /// Chunks, the final one included.
    pub chunks: u64,
    /// Plaintext length (as the object's length says; authenticated by its final chunk).
    pub plaintext_len: u64,
    /// The body's salt, hex.
    pub salt: String,
    /// The body's commitment, hex.
    pub body_commitment: String,
}

/// Parses an envelope's or DEK record's header.
///
/// # Errors
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if it is not a well-formed cmek envelope.
pub fn inspect(bytes: &[u8]) -> Result<EnvelopeInfo> {
    inspect_prefix(bytes, bytes.len() as u64)
}

/// Parses the header of an envelope of `total_len` bytes from its first bytes, `prefix` (at
/// least its header, and for a streamed envelope the salt and commitment after it): for files
/// too large to read whole.
///
/// # Errors
/// As for [`inspect`], and for a `prefix` shorter than what it must hold.
pub fn inspect_prefix(prefix: &[u8], total_len: u64) -> Result<EnvelopeInfo> {
    let bytes = prefix;
    let pre = Preamble::peek(bytes)?;
    let mut info = EnvelopeInfo {
        format_version: VERSION,
        form: pre.form,
        suite: pre.suite,
        dek_id: pre.dek_id.to_hex(),
        compartment_id: None,
        key_config_id: None,
        provider: None,
        key_id: None,
        key_version: None,
        commitment: None,
        wrapped_dek_len: None,
        header_len: Preamble::LEN,
        ciphertext_len: None,
        stream: None,
    };
    if pre.form.carries_record() {
        let (_, record, used) = DekRecord::decode(bytes)?;
        info.compartment_id = Some(record.compartment.to_string());
        info.key_config_id = Some(record.key_config.to_string());
        info.provider = Some(record.wrapped.provider.as_str().to_owned());
        info.key_id = Some(record.wrapped.key_id.clone());
        info.key_version = Some(record.wrapped.key_version.clone());
        info.commitment = Some(hex_encode(&record.commitment));
        info.wrapped_dek_len = Some(record.wrapped.ciphertext.len());
        info.header_len = used;
    }
    match pre.form {
        Form::DekRecord => {
            if info.header_len as u64 != total_len {
                return Err(Error::invalid_input("trailing bytes after DEK record"));
            }
        }
        Form::Streamed | Form::StreamedCompact => {
            let layout = super::StreamLayout::new(info.header_len as u64, total_len)?;
            let prefix = bytes
                .get(info.header_len..info.header_len + super::BODY_PREFIX_LEN)
                .ok_or_else(|| Error::invalid_input("truncated streamed envelope"))?;
            let (salt, commitment) = prefix.split_at(super::SALT_LEN);
            info.stream = Some(StreamInfo {
                body: "Cobblestone-256",
                chunk_len: super::CHUNK_LEN,
                chunks: layout.chunk_count(),
                plaintext_len: layout.plaintext_len(),
                salt: hex_encode(salt),
                body_commitment: hex_encode(commitment),
            });
        }
        _ => {
            let overhead = (info.header_len + NONCE_LEN + TAG_LEN) as u64;
            let len = total_len
                .checked_sub(overhead)
                .ok_or_else(|| Error::invalid_input("truncated envelope"))?;
            info.ciphertext_len =
                Some(usize::try_from(len).map_err(|_| Error::invalid_input("envelope too long"))?);
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_errors_are_specific() {
        let msg = |b: &[u8]| Preamble::peek(b).unwrap_err().to_string();
        let mut ok = vec![MAGIC, VERSION, 0x02, 0x01];
        ok.extend_from_slice(&[0u8; 16]);
        assert!(Preamble::peek(&ok).is_ok());
        assert!(msg(&ok[..10]).contains("truncated"));
        let mut bad = ok.clone();
        bad[0] = 0x00;
        assert!(msg(&bad).contains("magic"));
        let mut bad = ok.clone();
        bad[1] = 2;
        assert!(msg(&bad).contains("version 2"));
        let mut bad = ok.clone();
        bad[2] = 9;
        assert!(msg(&bad).contains("form"));
        let mut bad = ok.clone();
        bad[3] = 7;
        assert!(msg(&bad).contains("suite 0x07"));
    }

    #[test]
    fn body_needs_nonce_and_tag() {
        assert!(split_body(&[0u8; 27]).is_err());
        let b = split_body(&[0u8; 28]).unwrap();
        assert!(b.ciphertext.is_empty());
    }
}
