//! The testkit's cloud fakes as [`FaultTarget`]s, each with backends built through the
//! provider's real SDK client (so the fault suite tests the clients' timeouts, connection
//! handling and error mapping too). Each needs its provider's feature.

use std::sync::Arc;
#[cfg(any(feature = "aws", feature = "gcp"))]
use std::time::Duration;

use async_trait::async_trait;

use super::ServerControl;
use super::fault_suite::FaultTarget;
use crate::error::Result;
use crate::kms::KmsBackend;

/// The AWS KMS fake, reached through `aws-sdk-kms` (with AssumeRole through its STS).
#[cfg(feature = "aws")]
#[derive(Debug)]
pub struct AwsTarget(pub super::aws_fake::FakeAwsKms);

#[cfg(feature = "aws")]
impl AwsTarget {
    /// Starts a fake.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> Result<Self> {
        Ok(Self(super::aws_fake::FakeAwsKms::start().await?))
    }
}

#[cfg(feature = "aws")]
#[async_trait]
impl FaultTarget for AwsTarget {
    fn name(&self) -> &str {
        "aws"
    }

    async fn create_key(&self) -> Result<String> {
        Ok(self.0.create_key())
    }

    async fn backend(&self, key: &str) -> Result<Arc<dyn KmsBackend>> {
        let kms = crate::kms::aws::AwsKms::builder(key)
            .role_arn("arn:aws:iam::111122223333:role/cmek-fault-suite")
            .endpoint_url(self.0.endpoint())
            .sts_endpoint_url(self.0.endpoint())
            .credentials(crate::kms::aws::Credentials::new(
                "AKIDFAULTSUITE",
                "fault-suite-secret",
                None,
                None,
                "fault-suite",
            ))
            .call_timeout(Duration::from_secs(2))
            .build()
            .await?;
        Ok(Arc::new(kms))
    }

    fn server(&self) -> ServerControl<'_> {
        self.0.server()
    }

    fn set_disabled(&self, key: &str, disabled: bool) {
        use super::aws_fake::FakeKeyState;
        let state = if disabled {
            FakeKeyState::Disabled
        } else {
            FakeKeyState::Enabled
        };
        self.0.set_key_state(key, state);
    }

    fn delete(&self, key: &str) {
        self.0.delete_key(key);
    }

    fn set_denied(&self, key: &str, denied: bool) {
        self.0.deny_access(key, denied);
    }

    fn throttle(&self, count: usize) {
        self.0.clear_faults();
        self.0.inject(super::aws_fake::AwsFault::Throttle, count);
    }
}

/// The Google Cloud KMS fake, reached through `google-cloud-kms-v1` over REST.
#[cfg(feature = "gcp")]
#[derive(Debug)]
pub struct GcpTarget(pub super::gcp_fake::FakeGcpKms);

#[cfg(feature = "gcp")]
impl GcpTarget {
    /// Starts a fake.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> Result<Self> {
        Ok(Self(super::gcp_fake::FakeGcpKms::start().await?))
    }
}

#[cfg(feature = "gcp")]
#[async_trait]
impl FaultTarget for GcpTarget {
    fn name(&self) -> &str {
        "gcp"
    }

    async fn create_key(&self) -> Result<String> {
        Ok(self.0.create_key("us"))
    }

    async fn backend(&self, key: &str) -> Result<Arc<dyn KmsBackend>> {
        let kms = crate::kms::gcp::GcpKms::builder(key)
            .endpoint(self.0.endpoint())
            .credentials(crate::kms::gcp::credentials::anonymous::Builder::new().build())
            .call_timeout(Duration::from_secs(2))
            .build()
            .await?;
        Ok(Arc::new(kms))
    }

    fn server(&self) -> ServerControl<'_> {
        self.0.server()
    }

    fn set_disabled(&self, key: &str, disabled: bool) {
        use super::gcp_fake::FakeVersionState;
        let state = if disabled {
            FakeVersionState::Disabled
        } else {
            FakeVersionState::Enabled
        };
        self.0.set_key_state(key, state);
    }

    fn delete(&self, key: &str) {
        // Cloud KMS never deletes a key: its versions are destroyed.
        self.0
            .set_key_state(key, super::gcp_fake::FakeVersionState::Destroyed);
    }

    fn set_denied(&self, key: &str, denied: bool) {
        self.0.deny_access(key, denied);
    }

    fn throttle(&self, count: usize) {
        self.0.clear_faults();
        self.0.inject(super::gcp_fake::GcpFault::Throttle, count);
    }
}

/// The Azure Key Vault fake (HTTPS with its test CA), reached through
/// `azure_security_keyvault_keys`.
#[cfg(feature = "azure")]
#[derive(Debug)]
pub struct AzureTarget(pub super::azure_fake::FakeKeyVault);

#[cfg(feature = "azure")]
impl AzureTarget {
    /// The tenant the fake vault and its backends use.
    pub const TENANT: &'static str = "00000000-0000-4000-8000-00000000fa17";

    /// Starts a fake vault.
    ///
    /// # Errors
    /// When the test CA cannot be made or no port can be bound.
    pub async fn start() -> Result<Self> {
        Ok(Self(
            super::azure_fake::FakeKeyVault::start(Self::TENANT).await?,
        ))
    }
}

#[cfg(feature = "azure")]
#[async_trait]
impl FaultTarget for AzureTarget {
    fn name(&self) -> &str {
        "azure"
    }

    async fn create_key(&self) -> Result<String> {
        let mut name = [0u8; 6];
        getrandom::fill(&mut name)
            .map_err(|e| crate::Error::transient(format!("OS random generator failed: {e}")))?;
        let name = format!("suite-{}", crate::ids::hex_encode(&name));
        self.0.create_key(&name, 3072)?;
        Ok(name)
    }

    async fn backend(&self, key: &str) -> Result<Arc<dyn KmsBackend>> {
        let kms = crate::kms::azure::AzureKeyVault::builder(self.0.vault_uri(), key)
            .tenant_id(Self::TENANT)
            .credential(super::azure_fake::StaticToken::new("fault-suite-token"))
            .root_certificate_pem(self.0.ca_pem())?
            .build()?;
        Ok(Arc::new(kms))
    }

    fn server(&self) -> ServerControl<'_> {
        self.0.server()
    }

    fn set_disabled(&self, key: &str, disabled: bool) {
        self.0.set_enabled(key, None, !disabled);
    }

    fn delete(&self, key: &str) {
        self.0.delete_key(key);
    }

    fn set_denied(&self, key: &str, denied: bool) {
        self.0.deny_access(key, denied);
    }

    fn throttle(&self, count: usize) {
        self.0.clear_faults();
        self.0
            .inject(super::azure_fake::AzureFault::Throttle, count);
    }
}
