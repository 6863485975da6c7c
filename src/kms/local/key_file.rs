//! The key file on disk (JSON, mode 0600, written atomically): its versions, their states and
//! their material in base64. Specified in `docs/FORMAT.md` ("Local backend: key file and wrapped DEK").

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Ring, Version, VersionState};
use crate::error::{Error, Result};

/// The `type` of every local key file.
const FILE_TYPE: &str = "cmek_local_key";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    key_id: String,
    enabled: bool,
    primary_version: u32,
    versions: Vec<VersionFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFile {
    version: u32,
    state: VersionState,
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    material: Option<Zeroizing<String>>,
}

/// Reads a key file's text (from `path`, named in errors): its key id and key ring.
pub(super) fn parse(text: &str, path: &Path) -> Result<(String, Ring)> {
    let file: KeyFile = serde_json::from_str(text).map_err(|e| {
        Error::invalid_input(format!("key file {} is malformed: {e}", path.display()))
    })?;
    if file.kind != FILE_TYPE {
        return Err(Error::invalid_input(format!(
            "{} is not a cmek local key file",
            path.display()
        )));
    }
    let mut versions = BTreeMap::new();
    for v in file.versions {
        let version = match (v.state, v.material) {
            (VersionState::Destroyed, _) => Version {
                state: VersionState::Destroyed,
                created_at: v.created_at,
                material: None,
                cipher: None,
            },
            (state, Some(b64)) => {
                let bytes = Zeroizing::new(BASE64.decode(b64.as_bytes()).map_err(|_| {
                    Error::invalid_input(format!("version {} material is not base64", v.version))
                })?);
                let mut material = Zeroizing::new([0u8; 32]);
                if bytes.len() != 32 {
                    return Err(Error::invalid_input(format!(
                        "version {} material must be 32 bytes",
                        v.version
                    )));
                }
                material.copy_from_slice(&bytes);
                Version::from_material(state, v.created_at, material)?
            }
            (_, None) => {
                return Err(Error::invalid_input(format!(
                    "version {} has no key material",
                    v.version
                )));
            }
        };
        if versions.insert(v.version, version).is_some() {
            return Err(Error::invalid_input(format!(
                "version {} appears twice",
                v.version
            )));
        }
    }
    if !versions.contains_key(&file.primary_version) {
        return Err(Error::invalid_input(
            "primary version is not in the key file",
        ));
    }
    let ring = Ring {
        enabled: file.enabled,
        primary: file.primary_version,
        versions,
    };
    Ok((file.key_id, ring))
}

/// The text of the key file of `key_id` holding `ring` (secret: zeroized when dropped).
pub(super) fn render(key_id: &str, ring: &Ring) -> Result<Zeroizing<String>> {
    let file = KeyFile {
        kind: FILE_TYPE.to_owned(),
        key_id: key_id.to_owned(),
        enabled: ring.enabled,
        primary_version: ring.primary,
        versions: ring
            .versions
            .iter()
            .map(|(&version, v)| VersionFile {
                version,
                state: v.state,
                created_at: v.created_at,
                material: v
                    .material
                    .as_ref()
                    .map(|m| Zeroizing::new(BASE64.encode(m.as_slice()))),
            })
            .collect(),
    };
    let text = Zeroizing::new(
        serde_json::to_string_pretty(&file)
            .map_err(|e| Error::configuration(format!("cannot encode key file: {e}")))?,
    );
    Ok(text)
}
