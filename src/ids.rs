//! Identifiers: compartments, key configurations and data keys.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Longest accepted compartment or key configuration id, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn validate_id(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(Error::invalid_input(format!(
            "{what} must be 1 to {MAX_ID_LEN} bytes long, got {}",
            s.len()
        )));
    }
    if s.starts_with('.') {
        return Err(Error::invalid_input(format!(
            "{what} must not start with '.'"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(Error::invalid_input(format!(
            "{what} may hold only ASCII letters, digits and - _ . : @ (found {c:?})"
        )));
    }
    Ok(())
}

/// Whether `s` is a UUID in its canonical text form (8-4-4-4-12 hex digits, any version).
pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The canonical text of the UUID v4 made from 16 random bytes.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex_encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// 1 to 128 bytes of ASCII letters, digits and `- _ . : @`, not starting with `.`; cloning is cheap.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps an id.
            ///
            /// # Errors
            /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if it is empty, too long
            /// or holds other characters.
            pub fn new(id: impl AsRef<str>) -> Result<Self> {
                let id = id.as_ref();
                validate_id($what, id)?;
                Ok(Self(Arc::from(id)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// The compartment (workspace, tenant, project) that data belongs to; data keys are bound to it.
    CompartmentId,
    "compartment id"
);

impl CompartmentId {
    /// A fresh random UUID v4, as the control plane gives every new compartment.
    ///
    /// # Errors
    /// [`ErrorKind::Transient`](crate::ErrorKind::Transient) if the OS random generator fails.
    pub fn random_uuid() -> Result<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b)
            .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
        Self::new(uuid_v4(b))
    }
}

string_id!(
    /// The key configuration (for example an `ekey_...` external key) that wraps a compartment's data keys.
    KeyConfigId,
    "key configuration id"
);

/// Length of a [`DekId`] in bytes.
pub const DEK_ID_LEN: usize = 16;

/// The random 128-bit id of one data-encryption key. Public: it travels in every envelope.
///
/// Held as a `u128` (big-endian from the wire bytes) so that cache lookups hash and compare
/// one aligned word.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DekId(u128);

impl DekId {
    /// Draws a fresh random id.
    ///
    /// # Errors
    /// [`ErrorKind::Transient`](crate::ErrorKind::Transient) if the OS random generator fails.
    pub fn random() -> Result<Self> {
        let mut id = [0u8; DEK_ID_LEN];
        getrandom::fill(&mut id)
            .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
        Ok(Self::from_bytes(id))
    }

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; DEK_ID_LEN]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    /// The raw bytes, as they appear on the wire.
    pub const fn to_bytes(self) -> [u8; DEK_ID_LEN] {
        self.0.to_be_bytes()
    }

    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.to_bytes())
    }

    /// Parses 32 hex characters.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) on anything else.
    pub fn from_hex(s: &str) -> Result<Self> {
        let bytes = hex_decode(s).ok_or_else(|| Error::invalid_input("invalid DEK id hex"))?;
        let bytes: [u8; DEK_ID_LEN] = bytes
            .try_into()
            .map_err(|_| Error::invalid_input("a DEK id is 32 hex characters"))?;
        Ok(Self::from_bytes(bytes))
    }
}

impl fmt::Debug for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DekId({})", self.to_hex())
    }
}

impl fmt::Display for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_canonical_v4() {
        let id = CompartmentId::random_uuid().unwrap();
        let s = id.as_str();
        assert!(is_uuid(s), "{s}");
        assert_eq!(&s[14..15], "4", "version 4: {s}");
        assert!(
            matches!(&s[19..20], "8" | "9" | "a" | "b"),
            "RFC 4122 variant: {s}"
        );
        assert_ne!(id, CompartmentId::random_uuid().unwrap());
        assert!(!is_uuid("not-a-uuid") && !is_uuid(&s.replace('-', "x")));
    }

    #[test]
    fn accepts_uuids_and_ekey_ids() {
        CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c").unwrap();
        KeyConfigId::new("ekey_01SDCCSbTxrXDpWc1phhtcfK").unwrap();
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            ".hidden",
            "a/b",
            "with space",
            "tab\t",
            "é",
            &"x".repeat(129),
        ] {
            let err = CompartmentId::new(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn dek_id_hex_round_trip() {
        let id = DekId::random().unwrap();
        assert_eq!(DekId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(DekId::from_hex("zz").is_err());
        assert!(DekId::from_hex("00").is_err());
    }
}
