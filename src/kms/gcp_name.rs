//! Google Cloud KMS resource names, parsed and checked without any SDK (so key configurations
//! can be validated in builds without the `gcp` feature).

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// The full name of a Cloud KMS crypto key:
/// `projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CryptoKeyName {
    name: String,
}

fn invalid(message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Validation, format!("key_name: {message}"))
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl CryptoKeyName {
    /// Parses and checks a crypto key name. A key *version* name is refused: envelopes record the
    /// version each data key was wrapped under, and new data goes under the primary version.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] with a message naming `key_name` and what is wrong.
    pub fn parse(name: &str) -> Result<Self> {
        let parts: Vec<&str> = name.split('/').collect();
        let expected = "projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>";
        if parts.len() == 10 && parts[8] == "cryptoKeyVersions" {
            return Err(invalid(
                "a key version name; give the crypto key (without /cryptoKeyVersions/…)",
            ));
        }
        if parts.len() != 8
            || parts[0] != "projects"
            || parts[2] != "locations"
            || parts[4] != "keyRings"
            || parts[6] != "cryptoKeys"
        {
            return Err(invalid(format!("{name:?} is not {expected}")));
        }
        for (i, what) in [
            (1, "project"),
            (3, "location"),
            (5, "key ring"),
            (7, "crypto key"),
        ] {
            if !valid_segment(parts[i]) {
                return Err(invalid(format!(
                    "{what} {:?} may hold only letters, digits, - and _ (1 to 63)",
                    parts[i]
                )));
            }
        }
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    fn part(&self, i: usize) -> &str {
        self.name.split('/').nth(i).unwrap_or_default()
    }

    /// The project id.
    pub fn project(&self) -> &str {
        self.part(1)
    }

    /// The location (`us`, `us-central1`, `global`, …).
    pub fn location(&self) -> &str {
        self.part(3)
    }

    /// Whether the key is in a US location (`us` or `us-*`), as the CMEK product requires.
    pub fn is_us_location(&self) -> bool {
        let l = self.location();
        l == "us" || l.starts_with("us-")
    }

    /// The version id in a key version name of this key (`…/cryptoKeyVersions/<id>`), if it is one.
    pub fn version_of<'a>(&self, version_name: &'a str) -> Option<&'a str> {
        version_name
            .strip_prefix(self.name.as_str())?
            .strip_prefix("/cryptoKeyVersions/")
            .filter(|v| !v.is_empty() && !v.contains('/'))
    }
}

impl fmt::Display for CryptoKeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let n = CryptoKeyName::parse("projects/p-1/locations/us-central1/keyRings/r/cryptoKeys/k")
            .unwrap();
        assert_eq!((n.project(), n.location()), ("p-1", "us-central1"));
        assert!(n.is_us_location());
        assert_eq!(n.version_of(&format!("{n}/cryptoKeyVersions/3")), Some("3"));
        assert_eq!(
            n.version_of("projects/p-1/locations/us/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3"),
            None
        );
        assert!(
            !CryptoKeyName::parse("projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k")
                .unwrap()
                .is_us_location()
        );
        for (bad, why) in [
            ("projects/p/locations/us/keyRings/r", "is not projects/"),
            (
                "projects/p/locations/us/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
                "key version name",
            ),
            (
                "projects/p/locations/us/keyRings/r/cryptoKeys/k k",
                "crypto key",
            ),
            ("projects//locations/us/keyRings/r/cryptoKeys/k", "project"),
        ] {
            let err = CryptoKeyName::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Validation);
            assert!(
                err.message().starts_with("key_name: ") && err.message().contains(why),
                "{err}"
            );
        }
    }
}
