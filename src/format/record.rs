//! The per-DEK header fields: inline in self-contained envelopes, stored alone as a DEK record.

use super::{
    COMMITMENT_LEN, Form, MAGIC, MAX_KEY_ID_LEN, MAX_KEY_VERSION_LEN, MAX_WRAPPED_LEN,
    PREAMBLE_LEN, Suite, VERSION,
};
use crate::error::{Error, Result};
use crate::ids::{CompartmentId, DEK_ID_LEN, DekId, KeyConfigId};
use crate::key::{Provider, WrappedKey};

/// Everything known about one data key except the key itself: who it belongs to, which key
/// configuration and backend key wrapped it, the wrapped bytes and the key commitment.
///
/// A compact envelope names its DEK by id only; the record is what the caller persists (once per
/// DEK) through a [`DekStore`](crate::DekStore). None of its fields is secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DekRecord {
    pub(crate) suite: Suite,
    pub(crate) dek_id: DekId,
    pub(crate) compartment: CompartmentId,
    pub(crate) key_config: KeyConfigId,
    pub(crate) wrapped: WrappedKey,
    pub(crate) commitment: [u8; COMMITMENT_LEN],
}

impl DekRecord {
    /// The cipher suite of data under this DEK.
    pub fn suite(&self) -> Suite {
        self.suite
    }
    /// The DEK id.
    pub fn dek_id(&self) -> DekId {
        self.dek_id
    }
    /// The compartment the DEK is bound to.
    pub fn compartment(&self) -> &CompartmentId {
        &self.compartment
    }
    /// The key configuration whose key wrapped the DEK.
    pub fn key_config(&self) -> &KeyConfigId {
        &self.key_config
    }
    /// The wrapped DEK with its backend key reference and version.
    pub fn wrapped(&self) -> &WrappedKey {
        &self.wrapped
    }
    /// The key commitment (public).
    pub fn commitment(&self) -> &[u8; COMMITMENT_LEN] {
        &self.commitment
    }

    /// Serializes the stand-alone record (form `0x03`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(Form::DekRecord, &mut out);
        out
    }

    /// Parses a stand-alone record; trailing bytes are an error.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if it is not exactly one valid record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (form, record, used) = Self::decode(bytes)?;
        if form != Form::DekRecord {
            return Err(Error::invalid_input("not a DEK record"));
        }
        if used != bytes.len() {
            return Err(Error::invalid_input("trailing bytes after DEK record"));
        }
        Ok(record)
    }

    /// Replaces the wrapping (used by rewrap: same DEK, new key configuration or key version).
    pub fn with_wrapping(mut self, key_config: KeyConfigId, wrapped: WrappedKey) -> Self {
        self.key_config = key_config;
        self.wrapped = wrapped;
        self
    }

    pub(crate) fn encoded_len(&self) -> usize {
        PREAMBLE_LEN
            + DEK_ID_LEN
            + 1
            + self.compartment.as_str().len()
            + 1
            + self.key_config.as_str().len()
            + 1
            + 2
            + self.wrapped.key_id.len()
            + 1
            + self.wrapped.key_version.len()
            + COMMITMENT_LEN
            + 2
            + self.wrapped.ciphertext.len()
    }

    /// Checks the lengths the encoding can carry; backends' output passes through here.
    pub(crate) fn check_encodable(wrapped: &WrappedKey) -> Result<()> {
        if wrapped.key_id.len() > MAX_KEY_ID_LEN {
            return Err(Error::configuration(
                "backend key id is longer than 2048 bytes",
            ));
        }
        if wrapped.key_version.len() > MAX_KEY_VERSION_LEN {
            return Err(Error::configuration(
                "backend key version is longer than 255 bytes",
            ));
        }
        if wrapped.ciphertext.is_empty() || wrapped.ciphertext.len() > MAX_WRAPPED_LEN {
            return Err(Error::configuration("wrapped DEK must be 1 to 4096 bytes"));
        }
        Ok(())
    }

    /// Appends the header in `form` (self-contained or record); lengths were checked on creation.
    pub(crate) fn encode(&self, form: Form, out: &mut Vec<u8>) {
        out.extend_from_slice(&[MAGIC, VERSION, form as u8, self.suite as u8]);
        out.extend_from_slice(&self.dek_id.to_bytes());
        put_u8_str(out, self.compartment.as_str());
        put_u8_str(out, self.key_config.as_str());
        out.push(self.wrapped.provider.code());
        put_u16_bytes(out, self.wrapped.key_id.as_bytes());
        put_u8_str(out, &self.wrapped.key_version);
        out.extend_from_slice(&self.commitment);
        put_u16_bytes(out, &self.wrapped.ciphertext);
    }

    /// Parses a header in self-contained or record form; returns it and the bytes consumed.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(Form, Self, usize)> {
        let pre = super::Preamble::peek(bytes)?;
        if !pre.form.carries_record() {
            return Err(Error::invalid_input(
                "a compact envelope holds no DEK record",
            ));
        }
        let mut r = Reader {
            bytes,
            pos: PREAMBLE_LEN + DEK_ID_LEN,
        };
        let compartment = CompartmentId::new(r.u8_str("compartment id")?)?;
        let key_config = KeyConfigId::new(r.u8_str("key configuration id")?)?;
        let provider = Provider::from_code(r.take(1, "provider")?[0])?;
        let key_id = r.u16_bytes("key id")?;
        if key_id.len() > MAX_KEY_ID_LEN {
            return Err(Error::invalid_input("key id longer than 2048 bytes"));
        }
        let key_id = std::str::from_utf8(key_id)
            .map_err(|_| Error::invalid_input("key id is not UTF-8"))?
            .to_owned();
        let key_version = r.u8_str("key version")?.to_owned();
        let mut commitment = [0u8; COMMITMENT_LEN];
        commitment.copy_from_slice(r.take(COMMITMENT_LEN, "commitment")?);
        let ciphertext = r.u16_bytes("wrapped DEK")?;
        if ciphertext.is_empty() || ciphertext.len() > MAX_WRAPPED_LEN {
            return Err(Error::invalid_input("wrapped DEK must be 1 to 4096 bytes"));
        }
        let record = Self {
            suite: pre.suite,
            dek_id: pre.dek_id,
            compartment,
            key_config,
            wrapped: WrappedKey::new(provider, key_id, key_version, ciphertext.to_vec()),
            commitment,
        };
        Ok((pre.form, record, r.pos))
    }

    /// What compact envelopes of `form` (`0x02` or `0x05`) under this DEK authenticate (through
    /// its SHA-256): their preamble, the DEK id, the compartment and the commitment. It leaves
    /// the wrapping (key configuration, provider, key id and version, wrapped DEK) out so a
    /// rewrap keeps data readable.
    pub(crate) fn compact_binding(&self, form: Form) -> Vec<u8> {
        let compartment = self.compartment.as_str().as_bytes();
        let mut out =
            Vec::with_capacity(PREAMBLE_LEN + DEK_ID_LEN + 1 + compartment.len() + COMMITMENT_LEN);
        out.extend_from_slice(&self.compact_header(form));
        put_u8_str(&mut out, self.compartment.as_str());
        out.extend_from_slice(&self.commitment);
        out
    }

    /// The header of compact envelopes of `form` under this DEK: their preamble and the DEK id.
    pub(crate) fn compact_header(&self, form: Form) -> [u8; PREAMBLE_LEN + DEK_ID_LEN] {
        let mut out = [0u8; PREAMBLE_LEN + DEK_ID_LEN];
        out[..PREAMBLE_LEN].copy_from_slice(&[MAGIC, VERSION, form as u8, self.suite as u8]);
        out[PREAMBLE_LEN..].copy_from_slice(&self.dek_id.to_bytes());
        out
    }
}

/// The length of the record fields' header at the start of `bytes` (self-contained, streamed
/// or record form), read from its length prefixes alone; `Err(n)` while `bytes` ends inside
/// it, where `n` is how many bytes it needs at least to say more. [`DekRecord::decode`] still
/// checks every field.
pub(crate) fn header_len(bytes: &[u8]) -> std::result::Result<usize, usize> {
    let u8_at = |pos: usize| bytes.get(pos).map(|&b| usize::from(b)).ok_or(pos + 1);
    let u16_at = |pos: usize| match bytes.get(pos..pos + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => Err(pos + 2),
    };
    let mut pos = PREAMBLE_LEN + DEK_ID_LEN;
    pos += 1 + u8_at(pos)?; // compartment id
    pos += 1 + u8_at(pos)?; // key configuration id
    pos += 1; // provider
    pos += 2 + u16_at(pos)?; // backend key id
    pos += 1 + u8_at(pos)?; // backend key version
    pos += COMMITMENT_LEN;
    pos += 2 + u16_at(pos)?; // wrapped DEK
    if pos <= bytes.len() {
        Ok(pos)
    } else {
        Err(pos)
    }
}

fn put_u8_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= 255);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_u16_bytes(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| Error::invalid_input(format!("truncated envelope header ({what})")))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8_str(&mut self, what: &str) -> Result<&'a str> {
        let len = usize::from(self.take(1, what)?[0]);
        std::str::from_utf8(self.take(len, what)?)
            .map_err(|_| Error::invalid_input(format!("{what} is not UTF-8")))
    }

    fn u16_bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.take(2, what)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        self.take(len, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> DekRecord {
        DekRecord {
            suite: Suite::Aes256GcmHkdfSha256,
            dek_id: DekId::from_bytes([0xAB; 16]),
            compartment: CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c").unwrap(),
            key_config: KeyConfigId::new("ekey_01SDCCSbTxrXDpWc1phhtcfK").unwrap(),
            wrapped: WrappedKey::new(Provider::Local, "local:demo", "1", vec![0x5A; 60]),
            commitment: [0xC0; 32],
        }
    }

    #[test]
    fn record_round_trip() {
        let r = sample();
        let bytes = r.to_bytes();
        assert_eq!(bytes.len(), r.encoded_len());
        assert_eq!(DekRecord::from_bytes(&bytes).unwrap(), r);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            let err = DekRecord::from_bytes(&bytes[..n]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(DekRecord::from_bytes(&long).is_err());
    }

    #[test]
    fn header_len_reads_the_length_prefixes() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            let needed = header_len(&bytes[..n]).unwrap_err();
            assert!(needed > n && needed <= bytes.len(), "{n}: {needed}");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0u8; 9]);
        assert_eq!(header_len(&bytes), Ok(bytes.len()));
        assert_eq!(header_len(&longer), Ok(bytes.len()));
    }
}
