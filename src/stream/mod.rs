//! Objects of any size in constant memory, with authenticated range reads.
//!
//! A streamed envelope is a cmek header (form `0x04` with the wrapped DEK, or `0x05` with only
//! the DEK id) followed by a [C2SP chunked-encryption](https://c2sp.org/chunked-encryption)
//! body, Cobblestone-256: a 24-byte random salt, a 32-byte commitment, then the plaintext in
//! 16 KiB chunks, each sealed with AES-256-GCM under a key and base nonce derived for this
//! object alone; the final chunk is always shorter (possibly empty), which marks the end.
//!
//! ```text
//! header || salt (24) || commitment (32) || chunk 0 || ... || final chunk
//! ```
//!
//! The body's input key is derived once per DEK; its context binds the header (compartment,
//! DEK id, DEK commitment, and in form `0x04` every header byte) and the caller's AAD, so a
//! wrong compartment, header or AAD fails the commitment check before any chunk is decrypted.
//! Each object counts as one message against its DEK, and its bytes against the DEK's byte
//! limit. `docs/FORMAT.md` in the repository specifies the bytes.
//!
//! * Write: [`Client::stream_encryptor`](crate::Client::stream_encryptor) gives a sans-I/O
//!   [`StreamEncryptor`]; wrap it as an [`EncryptingWriter`] (`std::io`) or an
//!   [`AsyncEncryptingWriter`] (`tokio::io`), or use
//!   [`Client::encrypting_writer`](crate::Client::encrypting_writer). Finish it explicitly.
//! * Read in order: [`read_head`] then
//!   [`Client::stream_decryptor`](crate::Client::stream_decryptor) and
//!   [`StreamDecryptor::into_reader`], or
//!   [`Client::decrypting_reader`](crate::Client::decrypting_reader) for `tokio::io`.
//! * Read a range: [`Client::decrypt_range`](crate::Client::decrypt_range) over any
//!   [`RangeSource`], decrypting only the chunks that cover the range (plus the final chunk
//!   when the range reaches the end, so the length is authenticated).
//! * Plan requests: [`StreamLayout`] and
//!   [`ciphertext_ranges`].

mod cobblestone;
mod decryptor;
mod encryptor;
mod head;
mod range;
mod std_io;
mod tokio_io;

pub use crate::format::{StreamLayout, ciphertext_ranges};
pub use decryptor::StreamDecryptor;
pub use encryptor::StreamEncryptor;
pub use head::StreamForm;
pub use range::{ByteRange, FileSource, RangeSource};
pub use std_io::{DecryptingReader, EncryptingWriter, read_head};
pub use tokio_io::{AsyncDecryptingReader, AsyncEncryptingWriter, read_head_async};

pub(crate) use cobblestone::BodyKey;
pub(crate) use encryptor::ChunkBudget;
pub(crate) use encryptor::Unlimited;
pub(crate) use head::{new_body, new_body_with_salt, open_body};
#[cfg(feature = "object-store")]
pub(crate) use range::assemble;
pub(crate) use range::read_range;

use crate::format::{
    BODY_PREFIX_LEN, COMMITMENT_LEN, MAX_KEY_ID_LEN, MAX_KEY_VERSION_LEN, MAX_WRAPPED_LEN, Preamble,
};
use crate::ids::MAX_ID_LEN;

/// The longest head (header, salt, commitment) a streamed envelope can have.
pub(crate) const MAX_HEAD_LEN: usize = Preamble::LEN
    + 2 * (1 + MAX_ID_LEN)
    + 1
    + (2 + MAX_KEY_ID_LEN)
    + (1 + MAX_KEY_VERSION_LEN)
    + COMMITMENT_LEN
    + (2 + MAX_WRAPPED_LEN)
    + BODY_PREFIX_LEN;
