//! The local backend: a key-encryption key (KEK) in a key file, with versions.
//!
//! This is the embedded default for development and demos, and the model of a provider-managed
//! key. DEKs are wrapped with AES-256-GCM under the primary KEK version, with the key id, the
//! version and the [`WrapContext`] as additional authenticated data. Rotation adds a version and
//! makes it primary; older versions keep unwrapping what they wrapped until disabled or destroyed.
//!
//! The key file is JSON (`"type": "cmek_local_key"`) written atomically with mode `0600`. It holds
//! key material in base64: protect it like any private key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

mod key_file;
#[cfg(test)]
mod tests;

use super::{KeyDescription, KeyStateControl, KmsBackend, Provider, WrapContext, WrappedKey};
use crate::cipher::{CipherKey, CipherProvider, NONCE_LEN, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{DATA_KEY_LEN, DataKey};

const WRAPPED_LEN: usize = NONCE_LEN + DATA_KEY_LEN + TAG_LEN;

/// The state of one KEK version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VersionState {
    /// Wraps (if primary) and unwraps.
    Enabled,
    /// Refuses to wrap or unwrap until enabled again.
    Disabled,
    /// Key material erased: what it wrapped is gone for good.
    Destroyed,
}

/// A KEK held in a key file (or only in memory), with versions.
pub struct LocalKms {
    key_id: String,
    path: Option<PathBuf>,
    ring: RwLock<Ring>,
}

struct Ring {
    enabled: bool,
    primary: u32,
    versions: BTreeMap<u32, Version>,
}

struct Version {
    state: VersionState,
    created_at: u64,
    material: Option<Zeroizing<[u8; 32]>>,
    cipher: Option<CipherKey>,
}

impl Version {
    fn generate() -> Result<Self> {
        let mut material = Zeroizing::new([0u8; 32]);
        getrandom::fill(material.as_mut_slice())
            .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
        Self::from_material(VersionState::Enabled, unix_now(), material)
    }

    fn from_material(
        state: VersionState,
        created_at: u64,
        material: Zeroizing<[u8; 32]>,
    ) -> Result<Self> {
        let cipher = CipherKey::new(CipherProvider::default(), &material)?;
        Ok(Self {
            state,
            created_at,
            material: Some(material),
            cipher: Some(cipher),
        })
    }
}

/// Public facts about one KEK version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// The version number (1, 2, ...).
    pub version: u32,
    /// Its state.
    pub state: VersionState,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Whether new DEKs are wrapped under it.
    pub primary: bool,
}

impl LocalKms {
    /// A new in-memory key with one version (tests, demos, ephemeral data).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an unusable key id, or an RNG failure.
    pub fn generate(key_id: impl Into<String>) -> Result<Self> {
        let key_id = checked_key_id(key_id.into())?;
        let mut versions = BTreeMap::new();
        versions.insert(1, Version::generate()?);
        Ok(Self {
            key_id,
            path: None,
            ring: RwLock::new(Ring {
                enabled: true,
                primary: 1,
                versions,
            }),
        })
    }

    /// A key id no other key has: `local:` and 24 random hex digits. Distinct keys need distinct
    /// ids, since envelopes and DEK records name their key by id.
    ///
    /// # Errors
    /// An RNG failure.
    pub fn unique_key_id() -> Result<String> {
        let mut bytes = [0u8; 12];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
        Ok(format!("local:{}", crate::ids::hex_encode(&bytes)))
    }

    /// Creates a new key file at `path` (which must not exist yet) with one version.
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] if the file exists; I/O errors.
    pub fn create(path: impl AsRef<Path>, key_id: impl Into<String>) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("key file {} exists already", path.display()),
            ));
        }
        let mut kms = Self::generate(key_id)?;
        kms.path = Some(path.to_path_buf());
        kms.save(&*read(&kms.ring)?)?;
        Ok(kms)
    }

    /// Opens an existing key file.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] if it does not exist, [`ErrorKind::InvalidInput`] if it is malformed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::from(e).with_context(format!("reading key file {}", path.display()))
        })?);
        let (key_id, ring) = key_file::parse(&text, path)?;
        Ok(Self {
            key_id: checked_key_id(key_id)?,
            path: Some(path.to_path_buf()),
            ring: RwLock::new(ring),
        })
    }

    /// The key id recorded in envelopes (for example `local:demo`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key file, if the key is file-backed.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The version new DEKs are wrapped under.
    pub fn primary_version(&self) -> u32 {
        read(&self.ring).map(|r| r.primary).unwrap_or_default()
    }

    /// All versions, oldest first.
    pub fn versions(&self) -> Vec<VersionInfo> {
        read(&self.ring)
            .map(|r| {
                r.versions
                    .iter()
                    .map(|(&version, v)| VersionInfo {
                        version,
                        state: v.state,
                        created_at: v.created_at,
                        primary: version == r.primary,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds a fresh version and makes it primary; returns its number. Old versions still unwrap.
    ///
    /// # Errors
    /// I/O errors when the key file cannot be written.
    pub fn rotate(&self) -> Result<u32> {
        self.update(|ring| {
            let next = ring.versions.keys().next_back().map_or(1, |v| v + 1);
            ring.versions.insert(next, Version::generate()?);
            ring.primary = next;
            Ok(next)
        })
    }

    /// Sets a version's state. Destroying erases its material for good; a destroyed version cannot
    /// come back, and the primary version cannot be destroyed.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown version, [`ErrorKind::Validation`] for a forbidden change.
    pub fn set_version_state(&self, version: u32, state: VersionState) -> Result<()> {
        self.update(|ring| {
            let primary = ring.primary;
            let v = ring
                .versions
                .get_mut(&version)
                .ok_or_else(|| Error::not_found(format!("no key version {version}")))?;
            if v.state == VersionState::Destroyed && state != VersionState::Destroyed {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("key version {version} is destroyed"),
                ));
            }
            if state == VersionState::Destroyed {
                if version == primary {
                    return Err(Error::new(
                        ErrorKind::Validation,
                        "the primary version cannot be destroyed; rotate first",
                    ));
                }
                v.material = None;
                v.cipher = None;
            }
            v.state = state;
            Ok(())
        })
    }

    /// Enables or disables the whole key (every version). A disabled key neither wraps nor unwraps.
    ///
    /// # Errors
    /// I/O errors when the key file cannot be written.
    pub fn set_enabled(&self, enabled: bool) -> Result<()> {
        self.update(|ring| {
            ring.enabled = enabled;
            Ok(())
        })
    }

    fn update<T>(&self, change: impl FnOnce(&mut Ring) -> Result<T>) -> Result<T> {
        let mut ring = self
            .ring
            .write()
            .map_err(|_| Error::configuration("local key lock poisoned"))?;
        let out = change(&mut ring)?;
        self.save(&ring)?;
        Ok(out)
    }

    fn save(&self, ring: &Ring) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = key_file::render(&self.key_id, ring)?;
        crate::files::write_atomically(path, text.as_bytes(), 0o600)
    }

    fn aad(&self, version: u32, context: &WrapContext<'_>) -> Vec<u8> {
        let mut aad = format!(
            "cmek-local-kek/v1;key_id={};version={version};",
            self.key_id
        )
        .into_bytes();
        aad.extend_from_slice(&context.canonical_bytes());
        aad
    }
}

fn read(ring: &RwLock<Ring>) -> Result<std::sync::RwLockReadGuard<'_, Ring>> {
    ring.read()
        .map_err(|_| Error::configuration("local key lock poisoned"))
}

fn checked_key_id(key_id: String) -> Result<String> {
    if key_id.is_empty() || key_id.len() > 255 || key_id.chars().any(|c| c.is_control() || c == ';')
    {
        return Err(Error::invalid_input(
            "local key id must be 1 to 255 bytes without control characters or ';'",
        ));
    }
    Ok(key_id)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKms")
            .field("key_id", &self.key_id)
            .field("path", &self.path)
            .field("primary_version", &self.primary_version())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalKms({})", self.key_id)
    }
}

#[async_trait]
impl KmsBackend for LocalKms {
    fn provider(&self) -> Provider {
        Provider::Local
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        Some(&self.key_id)
    }

    async fn check_key(&self) -> Result<()> {
        let ring = read(&self.ring)?;
        if !ring.enabled {
            return Err(Error::revoked(format!(
                "local key {} is disabled",
                self.key_id
            )));
        }
        usable(&ring, ring.primary, &self.key_id).map(|_| ())
    }

    async fn describe(&self) -> Result<KeyDescription> {
        let ring = read(&self.ring)?;
        Ok(KeyDescription::new(
            Provider::Local,
            self.key_id.clone(),
            Some(ring.primary.to_string()),
        ))
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        let ring = read(&self.ring)?;
        if !ring.enabled {
            return Err(Error::revoked(format!(
                "local key {} is disabled",
                self.key_id
            )));
        }
        let version = ring.primary;
        let cipher = usable(&ring, version, &self.key_id)?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
        let mut out = vec![0u8; WRAPPED_LEN];
        out[..NONCE_LEN].copy_from_slice(&nonce);
        cipher.seal(
            &nonce,
            &self.aad(version, context),
            dek.expose_secret(),
            &mut out[NONCE_LEN..],
        )?;
        Ok(WrappedKey::new(
            Provider::Local,
            self.key_id.clone(),
            version.to_string(),
            out,
        ))
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        if wrapped.provider != Provider::Local || wrapped.key_id != self.key_id {
            return Err(Error::not_found(format!(
                "wrapped under {} key {:?}, not local key {:?}",
                wrapped.provider, wrapped.key_id, self.key_id
            )));
        }
        let version =
            super::canonical_decimal_version(&wrapped.key_version).ok_or_else(Error::integrity)?;
        let ring = read(&self.ring)?;
        if !ring.enabled {
            return Err(Error::revoked(format!(
                "local key {} is disabled",
                self.key_id
            )));
        }
        let cipher = usable(&ring, version, &self.key_id)?;
        let Some((nonce, rest)) = wrapped.ciphertext.split_first_chunk::<NONCE_LEN>() else {
            return Err(Error::integrity());
        };
        let Some((ct, tag)) = rest.split_last_chunk::<TAG_LEN>() else {
            return Err(Error::integrity());
        };
        if ct.len() != DATA_KEY_LEN {
            return Err(Error::integrity());
        }
        let mut dek = Zeroizing::new([0u8; DATA_KEY_LEN]);
        cipher.open(
            nonce,
            &self.aad(version, context),
            ct,
            tag,
            dek.as_mut_slice(),
        )?;
        DataKey::from_slice(dek.as_slice())
    }
}

fn usable<'r>(ring: &'r Ring, version: u32, key_id: &str) -> Result<&'r CipherKey> {
    let v = ring
        .versions
        .get(&version)
        .ok_or_else(|| Error::not_found(format!("local key {key_id} has no version {version}")))?;
    match (&v.state, &v.cipher) {
        (VersionState::Enabled, Some(cipher)) => Ok(cipher),
        (VersionState::Destroyed, _) | (_, None) => Err(Error::revoked(format!(
            "local key {key_id} version {version} is destroyed"
        ))),
        (_, Some(_)) => Err(Error::revoked(format!(
            "local key {key_id} version {version} is disabled"
        ))),
    }
}

#[async_trait]
impl KeyStateControl for LocalKms {
    async fn disable_key(&self) -> Result<()> {
        self.set_enabled(false)
    }

    async fn enable_key(&self) -> Result<()> {
        self.set_enabled(true)
    }
}
