//! Turning provider configurations into [`KmsBackend`]s: the [`BackendFactory`] trait and the
//! default factory (each cloud behind its cargo feature).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::model::ProviderConfig;
use crate::error::Result;
use crate::kms::KmsBackend;

/// Makes the backend of a provider configuration.
#[async_trait]
pub trait BackendFactory: Send + Sync + fmt::Debug + 'static {
    /// A backend for `config`.
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) when this build cannot
    /// reach the provider (its feature is off), or the backend's own construction error.
    async fn backend(&self, config: &ProviderConfig) -> Result<Arc<dyn KmsBackend>>;
}

#[cfg(not(all(feature = "aws", feature = "gcp", feature = "azure", feature = "local")))]
fn feature_off(provider: &str) -> crate::Error {
    crate::Error::configuration(format!(
        "this build of cmek has no {provider} support: enable the `{provider}` cargo feature"
    ))
}

/// Builds the real backends: `AwsKms`, `GcpKms`, `AzureKeyVault` (each behind its feature) and
/// `LocalKms`, with the service's own identity from the environment unless set here.
#[derive(Default)]
pub struct DefaultBackendFactory {
    #[cfg(feature = "aws")]
    aws: AwsSettings,
    #[cfg(feature = "gcp")]
    gcp: GcpSettings,
    #[cfg(feature = "azure")]
    azure: AzureSettings,
}

#[cfg(feature = "aws")]
#[derive(Default)]
struct AwsSettings {
    endpoint_url: Option<String>,
    credentials: Option<crate::kms::aws::Credentials>,
    external_id: Option<String>,
}

#[cfg(feature = "gcp")]
#[derive(Default)]
struct GcpSettings {
    endpoint: Option<String>,
    credentials: Option<crate::kms::gcp::credentials::Credentials>,
}

#[cfg(feature = "azure")]
#[derive(Default)]
struct AzureSettings {
    credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
    root_certificate_pem: Option<String>,
}

impl fmt::Debug for DefaultBackendFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultBackendFactory")
            .finish_non_exhaustive()
    }
}

impl DefaultBackendFactory {
    /// A factory using each cloud's default credential chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// AWS: sends KMS and STS calls to `url` (an emulator or a private endpoint).
    #[cfg(feature = "aws")]
    #[must_use]
    pub fn aws_endpoint(mut self, url: impl Into<String>) -> Self {
        self.aws.endpoint_url = Some(url.into());
        self
    }

    /// AWS: the service's own credentials (before AssumeRole).
    #[cfg(feature = "aws")]
    #[must_use]
    pub fn aws_credentials(mut self, credentials: crate::kms::aws::Credentials) -> Self {
        self.aws.credentials = Some(credentials);
        self
    }

    /// AWS: the external id the customers' role trust policies require.
    #[cfg(feature = "aws")]
    #[must_use]
    pub fn aws_external_id(mut self, id: impl Into<String>) -> Self {
        self.aws.external_id = Some(id.into());
        self
    }

    /// Google Cloud: sends calls to `url`.
    #[cfg(feature = "gcp")]
    #[must_use]
    pub fn gcp_endpoint(mut self, url: impl Into<String>) -> Self {
        self.gcp.endpoint = Some(url.into());
        self
    }

    /// Google Cloud: these credentials instead of Application Default Credentials.
    #[cfg(feature = "gcp")]
    #[must_use]
    pub fn gcp_credentials(
        mut self,
        credentials: crate::kms::gcp::credentials::Credentials,
    ) -> Self {
        self.gcp.credentials = Some(credentials);
        self
    }

    /// Azure: this credential instead of workload identity.
    #[cfg(feature = "azure")]
    #[must_use]
    pub fn azure_credential(
        mut self,
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
    ) -> Self {
        self.azure.credential = Some(credential);
        self
    }

    /// Azure: also trust this CA (PEM) for vault TLS.
    #[cfg(feature = "azure")]
    #[must_use]
    pub fn azure_root_certificate_pem(mut self, pem: impl Into<String>) -> Self {
        self.azure.root_certificate_pem = Some(pem.into());
        self
    }
}

#[async_trait]
impl BackendFactory for DefaultBackendFactory {
    async fn backend(&self, config: &ProviderConfig) -> Result<Arc<dyn KmsBackend>> {
        match config {
            #[cfg(feature = "aws")]
            ProviderConfig::Aws {
                kms_arn,
                role_arn,
                region,
            } => {
                let mut b = crate::kms::aws::AwsKms::builder(kms_arn).role_arn(role_arn);
                if let Some(region) = region {
                    b = b.region(region);
                }
                if let Some(url) = &self.aws.endpoint_url {
                    b = b.endpoint_url(url).sts_endpoint_url(url);
                }
                if let Some(c) = &self.aws.credentials {
                    b = b.credentials(c.clone());
                }
                if let Some(id) = &self.aws.external_id {
                    b = b.external_id(id);
                }
                Ok(Arc::new(b.build().await?))
            }
            #[cfg(not(feature = "aws"))]
            ProviderConfig::Aws { .. } => Err(feature_off("aws")),
            #[cfg(feature = "gcp")]
            ProviderConfig::Gcp { key_name } => {
                let mut b = crate::kms::gcp::GcpKms::builder(key_name);
                if let Some(url) = &self.gcp.endpoint {
                    b = b.endpoint(url);
                }
                if let Some(c) = &self.gcp.credentials {
                    b = b.credentials(c.clone());
                }
                Ok(Arc::new(b.build().await?))
            }
            #[cfg(not(feature = "gcp"))]
            ProviderConfig::Gcp { .. } => Err(feature_off("gcp")),
            #[cfg(feature = "azure")]
            ProviderConfig::Azure {
                vault_uri,
                key_name,
                tenant_id,
                client_id,
            } => {
                let mut b = crate::kms::azure::AzureKeyVault::builder(vault_uri, key_name)
                    .tenant_id(tenant_id);
                if let Some(id) = client_id {
                    b = b.client_id(id);
                }
                b = match &self.azure.credential {
                    Some(c) => b.credential(c.clone()),
                    None => b.workload_identity(),
                };
                if let Some(pem) = &self.azure.root_certificate_pem {
                    b = b.root_certificate_pem(pem)?;
                }
                Ok(Arc::new(b.build()?))
            }
            #[cfg(not(feature = "azure"))]
            ProviderConfig::Azure { .. } => Err(feature_off("azure")),
            #[cfg(feature = "local")]
            ProviderConfig::Local { key_file } => {
                Ok(Arc::new(crate::kms::local::LocalKms::open(key_file)?))
            }
            #[cfg(not(feature = "local"))]
            ProviderConfig::Local { .. } => Err(feature_off("local")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn configs() -> [ProviderConfig; 3] {
        [
            ProviderConfig::Aws {
                kms_arn:
                    "arn:aws:kms:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222"
                        .into(),
                role_arn: "arn:aws:iam::111122223333:role/r".into(),
                region: None,
            },
            ProviderConfig::Gcp {
                key_name: "projects/p/locations/us/keyRings/r/cryptoKeys/k".into(),
            },
            ProviderConfig::Azure {
                vault_uri: "https://v.vault.azure.net".into(),
                key_name: "k".into(),
                tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
                client_id: None,
            },
        ]
    }

    /// A build without a cloud's feature says which feature to enable (run by `cargo test
    /// --lib` on the default features; the all-features build has every provider).
    #[tokio::test]
    async fn a_provider_whose_feature_is_off_is_a_clear_configuration_error() {
        let enabled = [
            cfg!(feature = "aws"),
            cfg!(feature = "gcp"),
            cfg!(feature = "azure"),
        ];
        for (config, enabled) in configs().into_iter().zip(enabled) {
            if enabled {
                continue;
            }
            let err = DefaultBackendFactory::new()
                .backend(&config)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Configuration);
            let feature = format!("enable the `{}` cargo feature", config.provider());
            assert!(err.message().contains(&feature), "{err}");
        }
    }

    #[tokio::test]
    async fn the_local_provider_opens_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        crate::LocalKms::create(&path, "local:k").unwrap();
        let config = ProviderConfig::Local {
            key_file: path.display().to_string(),
        };
        let backend = DefaultBackendFactory::new().backend(&config).await.unwrap();
        assert_eq!(backend.describe().await.unwrap().key_id, "local:k");
        let missing = ProviderConfig::Local {
            key_file: dir.path().join("none").display().to_string(),
        };
        let err = DefaultBackendFactory::new()
            .backend(&missing)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
