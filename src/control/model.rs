//! The control plane's objects, in the JSON shapes of the reference API: external key
//! configurations, compartments, validation results.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{CompartmentId, KeyConfigId, is_uuid};
use crate::kms::aws_arn::{KmsKeyArn, RoleArn};
use crate::kms::azure_name::{check_key_name, check_vault_uri};
use crate::kms::gcp_name::CryptoKeyName;

/// The id of an external key configuration: `ekey_` and 24 base62 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExternalKeyId(String);

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl ExternalKeyId {
    /// A fresh random id.
    ///
    /// # Errors
    /// When the OS random generator fails.
    pub fn generate() -> Result<Self> {
        let mut id = String::from("ekey_");
        while id.len() < 5 + 24 {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b)
                .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
            // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
            for x in b.iter().filter(|&&x| x < 248) {
                if id.len() < 5 + 24 {
                    id.push(BASE62[usize::from(x % 62)] as char);
                }
            }
        }
        Ok(Self(id))
    }

    /// Checks and wraps an id.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] unless it is `ekey_` and 1 to 64 base62 characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        match id.strip_prefix("ekey_") {
            Some(rest)
                if !rest.is_empty()
                    && rest.len() <= 64
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Ok(Self(id))
            }
            _ => Err(Error::invalid_input(format!(
                "{id:?} is not an external key id (ekey_…)"
            ))),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as the key configuration id recorded in envelopes.
    pub fn key_config(&self) -> KeyConfigId {
        // An ekey_ id is always a valid key configuration id.
        KeyConfigId::new(&self.0)
            .unwrap_or_else(|_| unreachable!("ekey ids are valid key config ids"))
    }
}

impl TryFrom<String> for ExternalKeyId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<ExternalKeyId> for String {
    fn from(id: ExternalKeyId) -> Self {
        id.0
    }
}

impl fmt::Display for ExternalKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a KMS key lives and how to reach it (`provider_config`, tagged by `type`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum ProviderConfig {
    /// AWS KMS: `{kms_arn, role_arn, region?}`.
    Aws {
        /// Full ARN of the KMS key.
        kms_arn: String,
        /// IAM role assumed to reach the key.
        role_arn: String,
        /// Region; derived from `kms_arn` when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    /// Google Cloud KMS: `{key_name}`.
    Gcp {
        /// Full resource name of the crypto key.
        key_name: String,
    },
    /// Azure Key Vault: `{vault_uri, key_name, tenant_id, client_id?}`.
    Azure {
        /// Key Vault URI.
        vault_uri: String,
        /// Name of the key in the vault.
        key_name: String,
        /// Entra ID tenant of the vault.
        tenant_id: String,
        /// Application (client) id, for a single-tenant app registration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// A local key file (a cmek extension for development and demos): `{key_file}`.
    Local {
        /// Path of the key file.
        key_file: String,
    },
}

fn field(name: &str, e: Error) -> Error {
    let message = e.message();
    let message = message
        .split_once(": ")
        .filter(|(prefix, _)| !prefix.contains(' '))
        .map_or(message, |(_, rest)| rest);
    Error::new(
        ErrorKind::Validation,
        format!("provider_config.{name}: {message}"),
    )
}

impl ProviderConfig {
    /// The provider name: `aws`, `gcp`, `azure` or `local`.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::Aws { .. } => "aws",
            Self::Gcp { .. } => "gcp",
            Self::Azure { .. } => "azure",
            Self::Local { .. } => "local",
        }
    }

    /// The key reference backends record in envelopes (ARN, resource name, vault key id, key file).
    pub fn key_ref(&self) -> String {
        match self {
            Self::Aws { kms_arn, .. } => kms_arn.clone(),
            Self::Gcp { key_name } => key_name.clone(),
            Self::Azure {
                vault_uri,
                key_name,
                ..
            } => {
                format!("{}/keys/{key_name}", vault_uri.trim_end_matches('/'))
            }
            Self::Local { key_file } => key_file.clone(),
        }
    }

    /// Checks every field and fills in what can be derived (the AWS region). `geo` is the
    /// configuration's data residency; only `us` exists, and keys whose location is known must be
    /// in the US.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] with a message that names the field (`provider_config.kms_arn: …`).
    pub fn validate(&mut self) -> Result<()> {
        match self {
            Self::Aws {
                kms_arn,
                role_arn,
                region,
            } => {
                let arn = KmsKeyArn::parse(kms_arn).map_err(|e| field("kms_arn", e))?;
                RoleArn::parse(role_arn).map_err(|e| field("role_arn", e))?;
                match region {
                    Some(r) if r != arn.region() => {
                        return Err(Error::new(
                            ErrorKind::Validation,
                            format!(
                                "provider_config.region: {r:?} does not match the region of kms_arn ({})",
                                arn.region()
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => *region = Some(arn.region().to_owned()),
                }
                if !arn.is_us_region() {
                    return Err(Error::new(
                        ErrorKind::Validation,
                        format!(
                            "provider_config.kms_arn: region {} is outside geo \"us\" (US regions only)",
                            arn.region()
                        ),
                    ));
                }
            }
            Self::Gcp { key_name } => {
                let name = CryptoKeyName::parse(key_name).map_err(|e| field("key_name", e))?;
                if !name.is_us_location() {
                    return Err(Error::new(
                        ErrorKind::Validation,
                        format!(
                            "provider_config.key_name: location {} is outside geo \"us\" (us or us-* only)",
                            name.location()
                        ),
                    ));
                }
            }
            Self::Azure {
                vault_uri,
                key_name,
                tenant_id,
                client_id,
            } => {
                check_vault_uri(vault_uri).map_err(|e| field("vault_uri", e))?;
                check_key_name(key_name).map_err(|e| field("key_name", e))?;
                if !is_uuid(tenant_id) {
                    return Err(Error::new(
                        ErrorKind::Validation,
                        format!(
                            "provider_config.tenant_id: {tenant_id:?} is not a tenant id (a UUID)"
                        ),
                    ));
                }
                if let Some(c) = client_id
                    && !is_uuid(c)
                {
                    return Err(Error::new(
                        ErrorKind::Validation,
                        format!(
                            "provider_config.client_id: {c:?} is not an application id (a UUID)"
                        ),
                    ));
                }
            }
            Self::Local { key_file } => {
                if key_file.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Validation,
                        "provider_config.key_file: must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The body of "create external key".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CreateExternalKey {
    /// Human-friendly name.
    pub display_name: String,
    /// The KMS key and how to reach it.
    pub provider_config: ProviderConfig,
    /// Data residency; only `us` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<String>,
}

impl CreateExternalKey {
    /// A request for `provider_config` named `display_name`.
    pub fn new(display_name: impl Into<String>, provider_config: ProviderConfig) -> Self {
        Self {
            display_name: display_name.into(),
            provider_config,
            geo: None,
        }
    }

    /// Checks the request and fills in defaults (`geo`, AWS `region`).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] naming the field.
    pub fn validate(&mut self) -> Result<()> {
        if self.display_name.trim().is_empty() || self.display_name.len() > 255 {
            return Err(Error::new(
                ErrorKind::Validation,
                "display_name: must be 1 to 255 characters",
            ));
        }
        match self.geo.as_deref() {
            None | Some("us") => self.geo = Some("us".to_owned()),
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("geo: {other:?} is not supported; only \"us\""),
                ));
            }
        }
        self.provider_config.validate()
    }
}

/// An external key configuration (`"type": "external_key"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExternalKey {
    /// `ekey_…`.
    pub id: ExternalKeyId,
    /// Always `external_key`.
    #[serde(rename = "type")]
    pub kind: ExternalKeyType,
    /// Human-friendly name.
    pub display_name: String,
    /// Data residency (`us`).
    pub geo: String,
    /// The KMS key new data goes under.
    pub provider_config: ProviderConfig,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Earlier provider configurations (before rotations); their data stays readable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_provider_configs: Vec<ProviderConfig>,
    /// The last validation's outcome, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validation: Option<ValidationRecord>,
    /// When it was deleted (deactivated): no new data goes under it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub deleted_at: Option<OffsetDateTime>,
}

/// The constant `"external_key"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExternalKeyType {
    /// `external_key`.
    #[default]
    #[serde(rename = "external_key")]
    ExternalKey,
}

/// When a configuration was last validated and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValidationRecord {
    /// `success` or `failure`.
    pub status: ValidationStatus,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The provider configuration it validated (by key reference).
    pub key_ref: String,
}

impl ExternalKey {
    /// The key configuration id recorded in envelopes (the `ekey_` id).
    pub fn key_config(&self) -> KeyConfigId {
        self.id.key_config()
    }

    /// Whether it is deleted (deactivated).
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// Whether the current provider configuration passed its last validation.
    pub fn is_validated(&self) -> bool {
        self.last_validation.as_ref().is_some_and(|v| {
            v.status == ValidationStatus::Success && v.key_ref == self.provider_config.key_ref()
        })
    }
}

/// `success` or `failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ValidationStatus {
    /// The round trip and the key checks passed.
    Success,
    /// Something failed; see the error.
    Failure,
}

/// The result of validating a key (`"type": "external_key_validation"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValidationResult {
    /// Always `external_key_validation`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `success` or `failure`.
    pub status: ValidationStatus,
    /// Why it failed, or `null`.
    pub error: Option<ValidationFailure>,
}

/// A classified validation failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValidationFailure {
    /// The cause: `permission_denied`, `authentication_failed`, `network_error`, `key_not_found`,
    /// `key_disabled`, `wrong_key_type`, `context_mismatch`, `throttled` or `configuration_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened and what to do.
    pub message: String,
}

impl ValidationResult {
    pub(crate) fn success() -> Self {
        Self {
            kind: "external_key_validation".to_owned(),
            status: ValidationStatus::Success,
            error: None,
        }
    }

    pub(crate) fn failure(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: "external_key_validation".to_owned(),
            status: ValidationStatus::Failure,
            error: Some(ValidationFailure {
                kind: kind.to_owned(),
                message: message.into(),
            }),
        }
    }
}

/// A compartment (`"type": "compartment"`): the unit data keys are bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Compartment {
    /// Always `compartment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A UUID v4 made at creation; reference it in the KMS key's policy.
    pub compartment_id: CompartmentId,
    /// The external key its new data goes under; write-once. `null`: the provider-managed key.
    pub external_key_id: Option<ExternalKeyId>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Compartment {
    /// A new compartment with a fresh UUID v4.
    ///
    /// # Errors
    /// When the OS random generator fails.
    pub fn new(now: OffsetDateTime) -> Result<Self> {
        Ok(Self {
            kind: "compartment".to_owned(),
            compartment_id: CompartmentId::random_uuid()?,
            external_key_id: None,
            created_at: now,
            updated_at: now,
        })
    }
}
