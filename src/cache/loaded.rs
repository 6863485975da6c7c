//! A DEK ready for use: expanded key, commitment, encoded header and header digests.

use crate::cipher::{DekMaterial, compact_digest, sha256};
use crate::error::Result;
use crate::format::{DekRecord, Form, Preamble};
use crate::ids::{CompartmentId, DekId, KeyConfigId};

/// Everything the hot path needs about one DEK, computed once when the DEK enters the cache.
pub(crate) struct LoadedDek {
    pub(crate) id: DekId,
    pub(crate) compartment: CompartmentId,
    pub(crate) key_config: KeyConfigId,
    pub(crate) material: DekMaterial,
    /// The self-contained header (everything before the nonce).
    pub(crate) header: Box<[u8]>,
    /// SHA-256 of `header`: the per-DEK part of every self-contained envelope's AAD.
    pub(crate) header_digest: [u8; 32],
    /// The per-DEK part of every compact envelope's AAD.
    pub(crate) compact_digest: [u8; 32],
    compact_preamble: [u8; Preamble::LEN],
}

impl LoadedDek {
    pub(crate) fn new(record: &DekRecord, material: DekMaterial) -> Self {
        let mut header = Vec::with_capacity(record.encoded_len());
        record.encode(Form::SelfContained, &mut header);
        Self {
            id: record.dek_id(),
            compartment: record.compartment().clone(),
            key_config: record.key_config().clone(),
            material,
            header_digest: sha256(&[&header]),
            header: header.into_boxed_slice(),
            compact_digest: compact_digest(record, Form::Compact),
            compact_preamble: record.compact_header(Form::Compact),
        }
    }

    /// The header bytes and the AAD digest of envelopes of `form`.
    #[inline]
    pub(crate) fn header_for(&self, form: Form) -> (&[u8], &[u8; 32]) {
        if form == Form::Compact {
            (&self.compact_preamble, &self.compact_digest)
        } else {
            (&self.header, &self.header_digest)
        }
    }

    /// The key id and key version that wrapped it (`None` if its header cannot be read back,
    /// which cannot happen for a header this crate encoded).
    pub(crate) fn wrapped_by(&self) -> Option<(String, String)> {
        self.record()
            .ok()
            .map(|r| (r.wrapped.key_id, r.wrapped.key_version))
    }

    /// The DEK record this was loaded from.
    pub(crate) fn record(&self) -> Result<DekRecord> {
        DekRecord::decode(&self.header).map(|(_, record, _)| record)
    }
}

impl std::fmt::Debug for LoadedDek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedDek")
            .field("id", &self.id)
            .field("compartment", &self.compartment)
            .field("key_config", &self.key_config)
            .finish_non_exhaustive()
    }
}
