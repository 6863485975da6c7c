//! The envelope format v1: bytes in, structs out, no keys and no I/O. Specified in `docs/FORMAT.md`.
//!
//! Three byte strings share one 4-byte preamble (magic, version, form, suite) followed by the DEK id:
//!
//! * a **self-contained envelope**: preamble, [`DekRecord`] fields, nonce, ciphertext, tag;
//! * a **compact envelope**: preamble, DEK id, nonce, ciphertext, tag (48 bytes of overhead);
//! * a **DEK record**: preamble and the [`DekRecord`] fields, stored once per DEK for compact envelopes.
//! * a **streamed envelope** and a **compact streamed envelope**: either header, then a
//!   Cobblestone-256 body in 16 KiB chunks ([`StreamLayout`] says where each byte lies).

mod envelope;
mod record;
mod stream;

pub use envelope::{EnvelopeInfo, StreamInfo, inspect, inspect_prefix};
pub(crate) use envelope::{
    Preamble, envelope_len, split_body, split_body_in_place, split_body_mut, write_head,
};
pub use record::DekRecord;
pub(crate) use stream::header_len as stream_header_len;
pub use stream::{
    BODY_PREFIX_LEN, CHUNK_LEN, COMPACT_STREAM_HEADER_LEN, MAX_CHUNKS, SALT_LEN, SEALED_CHUNK_LEN,
    StreamLayout, ciphertext_ranges,
};

use crate::error::{Error, Result};

/// First byte of every cmek envelope and DEK record.
pub const MAGIC: u8 = 0xCE;
/// The format version this crate writes and reads.
pub const VERSION: u8 = 0x01;
/// Length of the preamble (magic, version, form, suite).
pub const PREAMBLE_LEN: usize = 4;
/// Length of the key commitment.
pub const COMMITMENT_LEN: usize = 32;
/// Offset of the DEK id, the same in every form.
pub const DEK_ID_OFFSET: usize = PREAMBLE_LEN;
/// Length of the nonce that follows every header (suite `0x01`: 96 bits).
pub const NONCE_LEN: usize = 12;
/// Length of the tag that ends every envelope (suite `0x01`: 128 bits).
pub const TAG_LEN: usize = 16;
/// Bytes a compact envelope adds to the plaintext: preamble, DEK id, nonce and tag.
pub const COMPACT_OVERHEAD: usize = PREAMBLE_LEN + crate::ids::DEK_ID_LEN + NONCE_LEN + TAG_LEN;
/// Longest wrapped DEK accepted (RSA-4096 gives 512 bytes; cloud KMS blobs are a few hundred).
pub const MAX_WRAPPED_LEN: usize = 4096;
/// Longest backend key reference accepted (an ARN or resource name).
pub const MAX_KEY_ID_LEN: usize = 2048;
/// Longest backend key version accepted.
pub const MAX_KEY_VERSION_LEN: usize = 255;

/// Which of the three byte strings this is (byte 2 of the preamble).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Form {
    /// The wrapped DEK travels in the envelope (objects, files).
    SelfContained = 0x01,
    /// Only the DEK id travels; the wrapped DEK sits in a stored [`DekRecord`] (small records).
    Compact = 0x02,
    /// A stored DEK record.
    DekRecord = 0x03,
    /// A streamed object (Cobblestone-256 body in 16 KiB chunks) with the wrapped DEK inline.
    Streamed = 0x04,
    /// A streamed object naming its DEK by id only (the record is in the `DekStore`): the form
    /// for objects, since a rewrap then never rewrites them.
    StreamedCompact = 0x05,
}

impl Form {
    /// Whether its header carries the DEK record fields (wrapped DEK, compartment, ...).
    pub fn carries_record(self) -> bool {
        matches!(self, Self::SelfContained | Self::DekRecord | Self::Streamed)
    }

    /// Whether its body is chunked (forms `0x04` and `0x05`).
    pub fn is_streamed(self) -> bool {
        matches!(self, Self::Streamed | Self::StreamedCompact)
    }
}

impl Form {
    fn from_byte(b: u8) -> Result<Self> {
        match b {
            0x01 => Ok(Self::SelfContained),
            0x02 => Ok(Self::Compact),
            0x03 => Ok(Self::DekRecord),
            0x04 => Ok(Self::Streamed),
            0x05 => Ok(Self::StreamedCompact),
            other => Err(Error::invalid_input(format!(
                "unknown envelope form 0x{other:02x}"
            ))),
        }
    }
}

/// The cipher suite (byte 3 of the preamble).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum Suite {
    /// AES-256-GCM, random 96-bit nonces, message key and 256-bit key commitment derived from the
    /// DEK with HKDF-SHA256.
    #[serde(rename = "AES-256-GCM/HKDF-SHA256/commit")]
    Aes256GcmHkdfSha256 = 0x01,
}

impl Suite {
    fn from_byte(b: u8) -> Result<Self> {
        match b {
            0x01 => Ok(Self::Aes256GcmHkdfSha256),
            other => Err(Error::invalid_input(format!(
                "unsupported cipher suite 0x{other:02x}"
            ))),
        }
    }
}
