//! The AWS KMS backend (feature `aws`): the official `aws-sdk-kms`, reached through
//! `AssumeRole` into the customer's role.
//!
//! * **Wrap** = `Encrypt` with the full key ARN and the EncryptionContext
//!   `{"compartment_id": …, "key_config_id": …}`, so a key policy can condition on
//!   `kms:EncryptionContext:compartment_id`.
//! * **Unwrap** = `Decrypt` pinned to the configured key ARN (`KeyId`) with the same context: a
//!   ciphertext blob of another key is refused (`IncorrectKeyException`).
//! * **Identity**: the service's own credentials (the default chain, or what the caller passes)
//!   assume `role_arn` through STS (session name, optional external id); the SDK's identity cache
//!   refreshes the session before it expires.
//! * **Retries**: the SDK's own retries are turned off; the [`Client`](crate::Client) retries
//!   throttled and transient errors with bounded backoff and jitter. A per-call timeout bounds
//!   every attempt.
//! * **TLS**: `default-https-client` only (hyper 1 + rustls on aws-lc-rs); the legacy hyper 0.14 /
//!   rustls 0.21 stack of the SDK's default features is left out.
//!
//! The SDK copies the plaintext DEK into its request and response buffers, which it does not
//! zeroize; cmek zeroizes its own copies.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use std::sync::Arc;
//! use cmek::kms::aws::AwsKms;
//! use cmek::{Client, KeyConfigId, KmsBackend};
//!
//! // The seed's provider config: {kms_arn, role_arn, region?}.
//! let kms = AwsKms::builder("arn:aws:kms:us-east-2:111122223333:key/abcd1234-5678-90ab-cdef-000011112222")
//!     .role_arn("arn:aws:iam::111122223333:role/storage-cmek")
//!     .external_id("tenant-7f3a")
//!     .build()
//!     .await?;
//! kms.check_key().await?; // enabled, ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT, US, single-region
//! let client = Client::builder()
//!     .key(KeyConfigId::new("ekey_01SDCCSbTxrXDpWc1phhtcfK")?, Arc::new(kms))
//!     .build()?;
//! # let _ = client; Ok(()) }
//! ```

mod errors;

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{ProvideCredentials, Region, SharedCredentialsProvider};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
use zeroize::Zeroize;

use super::aws_arn::{KmsKeyArn, RoleArn};
use super::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};
use crate::error::{Error, ErrorKind, Result};
use crate::key::DataKey;

pub use aws_config::SdkConfig;
pub use aws_sdk_kms::config::Credentials;

/// Default time limit of one KMS call attempt.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A customer's AWS KMS key, reached by assuming their role.
#[derive(Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    key: KmsKeyArn,
    role: Option<RoleArn>,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("key", &self.key.as_str())
            .field("role", &self.role.as_ref().map(RoleArn::as_str))
            .finish_non_exhaustive()
    }
}

/// Builds an [`AwsKms`] from the seed's provider configuration `{kms_arn, role_arn, region?}`.
#[must_use]
pub struct AwsKmsBuilder {
    kms_arn: String,
    region: Option<String>,
    role_arn: Option<String>,
    external_id: Option<String>,
    session_name: String,
    endpoint_url: Option<String>,
    sts_endpoint_url: Option<String>,
    credentials: Option<SharedCredentialsProvider>,
    sdk_config: Option<SdkConfig>,
    call_timeout: Duration,
}

impl fmt::Debug for AwsKmsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsBuilder")
            .field("kms_arn", &self.kms_arn)
            .field("region", &self.region)
            .field("role_arn", &self.role_arn)
            .field("session_name", &self.session_name)
            .field("endpoint_url", &self.endpoint_url)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl AwsKms {
    /// Starts building a backend for the key `kms_arn` (a key ARN; aliases are refused).
    pub fn builder(kms_arn: impl Into<String>) -> AwsKmsBuilder {
        AwsKmsBuilder {
            kms_arn: kms_arn.into(),
            region: None,
            role_arn: None,
            external_id: None,
            session_name: "cmek".to_owned(),
            endpoint_url: None,
            sts_endpoint_url: None,
            credentials: None,
            sdk_config: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// The key this backend wraps under.
    pub fn key_arn(&self) -> &KmsKeyArn {
        &self.key
    }

    /// The role assumed to reach the key, if any.
    pub fn role_arn(&self) -> Option<&RoleArn> {
        self.role.as_ref()
    }

    /// Checks the key with `DescribeKey`: enabled, `ENCRYPT_DECRYPT`, `SYMMETRIC_DEFAULT`, in a
    /// US region and not a multi-region key.
    ///
    /// # Errors
    /// [`ErrorKind::KeyRevoked`] for a key that is not enabled, [`ErrorKind::Validation`] for a
    /// key of the wrong kind or place, or the KMS error of the call.
    async fn check_key_inner(&self) -> Result<()> {
        let out = self
            .traced(
                "DescribeKey",
                self.client.describe_key().key_id(self.key.as_str()).send(),
            )
            .await?;
        let meta = out
            .key_metadata()
            .ok_or_else(|| Error::transient("AWS KMS DescribeKey returned no key metadata"))?;
        let invalid = |m: String| {
            Err(Error::new(
                ErrorKind::Validation,
                format!("{}: {m}", self.key),
            ))
        };
        match meta.key_state() {
            Some(KeyState::Enabled) => {}
            state => {
                return Err(Error::revoked(format!(
                    "{}: key state is {}",
                    self.key,
                    state.map_or("unknown", KeyState::as_str)
                )));
            }
        }
        if meta.key_usage() != Some(&KeyUsageType::EncryptDecrypt) {
            return invalid(format!(
                "key usage is {}; cmek needs an ENCRYPT_DECRYPT key",
                meta.key_usage().map_or("unknown", KeyUsageType::as_str)
            ));
        }
        if meta.key_spec() != Some(&KeySpec::SymmetricDefault) {
            return invalid(format!(
                "key spec is {}; cmek needs a SYMMETRIC_DEFAULT key",
                meta.key_spec().map_or("unknown", KeySpec::as_str)
            ));
        }
        if meta.multi_region() == Some(true) {
            return invalid("multi-region keys are not supported".to_owned());
        }
        if !self.key.is_us_region() {
            return invalid(format!("region {} is not a US region", self.key.region()));
        }
        Ok(())
    }

    /// Awaits one SDK call and traces it: operation, key, latency, outcome and request id.
    async fn traced<T, E>(
        &self,
        op: &'static str,
        call: impl std::future::Future<
            Output = std::result::Result<
                T,
                aws_sdk_kms::error::SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
            >,
        >,
    ) -> Result<T>
    where
        T: RequestId,
        E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let outcome = call.await;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let key = self.key.as_str();
        match outcome {
            Ok(out) => {
                tracing::debug!(
                    provider = "aws",
                    key,
                    op,
                    latency_ms,
                    request_id = out.request_id().unwrap_or("-"),
                    outcome = "ok",
                    "KMS call"
                );
                Ok(out)
            }
            Err(e) => {
                let error = errors::map(op, key, &e);
                tracing::warn!(provider = "aws", key, op, latency_ms, request_id = e.request_id().unwrap_or("-"), outcome = error.kind().as_str(), error = %error, "KMS call");
                Err(error)
            }
        }
    }
}

fn context_map(context: &WrapContext<'_>) -> std::collections::HashMap<String, String> {
    context
        .pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl fmt::Display for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AwsKms({})", self.key.as_str())
    }
}

#[async_trait]
impl KmsBackend for AwsKms {
    async fn check_key(&self) -> Result<()> {
        self.check_key_inner().await
    }

    fn provider(&self) -> Provider {
        Provider::Aws
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        Some(self.key.as_str())
    }

    async fn describe(&self) -> Result<KeyDescription> {
        Ok(KeyDescription::new(Provider::Aws, self.key.as_str(), None))
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        let out = self
            .traced(
                "Encrypt",
                self.client
                    .encrypt()
                    .key_id(self.key.as_str())
                    .plaintext(Blob::new(dek.expose_secret().to_vec()))
                    .set_encryption_context(Some(context_map(context)))
                    .send(),
            )
            .await?;
        let ciphertext = out
            .ciphertext_blob()
            .ok_or_else(|| Error::transient("AWS KMS Encrypt returned no ciphertext"))?;
        if let Some(key_id) = out.key_id()
            && key_id != self.key.as_str()
        {
            return Err(Error::configuration(format!(
                "AWS KMS encrypted under {key_id}, not the configured {}",
                self.key
            )));
        }
        Ok(WrappedKey::new(
            Provider::Aws,
            self.key.as_str(),
            "",
            ciphertext.as_ref().to_vec(),
        ))
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        if wrapped.provider != Provider::Aws || wrapped.key_id != self.key.as_str() {
            return Err(Error::not_found(format!(
                "wrapped under {} key {:?}, not AWS key {}",
                wrapped.provider, wrapped.key_id, self.key
            )));
        }
        // The ciphertext blob names its key version; the record's field is always empty.
        if !wrapped.key_version.is_empty() {
            return Err(Error::integrity());
        }
        let out = self
            .traced(
                "Decrypt",
                self.client
                    .decrypt()
                    .key_id(self.key.as_str())
                    .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
                    .set_encryption_context(Some(context_map(context)))
                    .send(),
            )
            .await?;
        let mut plaintext = out
            .plaintext
            .ok_or_else(|| Error::transient("AWS KMS Decrypt returned no plaintext"))?
            .into_inner();
        let dek = DataKey::from_slice(&plaintext);
        plaintext.zeroize();
        dek
    }
}

impl AwsKmsBuilder {
    /// The key's region; derived from the ARN when not given, and must match it.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The customer's role to assume before calling KMS.
    pub fn role_arn(mut self, role_arn: impl Into<String>) -> Self {
        self.role_arn = Some(role_arn.into());
        self
    }

    /// The external id the role's trust policy requires, if any.
    pub fn external_id(mut self, external_id: impl Into<String>) -> Self {
        self.external_id = Some(external_id.into());
        self
    }

    /// The AssumeRole session name (default `cmek`), visible in the customer's CloudTrail.
    pub fn session_name(mut self, name: impl Into<String>) -> Self {
        self.session_name = name.into();
        self
    }

    /// Sends KMS calls to this endpoint (a VPC endpoint, an emulator).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Sends STS (AssumeRole) calls to this endpoint.
    pub fn sts_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.sts_endpoint_url = Some(url.into());
        self
    }

    /// The service's own identity, instead of the default credential chain.
    pub fn credentials(mut self, provider: impl ProvideCredentials + 'static) -> Self {
        self.credentials = Some(SharedCredentialsProvider::new(provider));
        self
    }

    /// Starts from a loaded SDK configuration (credentials, HTTP client, …) instead of the
    /// default chain.
    pub fn sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// The time limit of one KMS call attempt (default 5 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Builds the backend: checks the ARNs and region, loads the base identity and sets up the
    /// AssumeRole credentials (assumed lazily, on the first call).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] naming the field for a bad ARN or a region mismatch.
    pub async fn build(self) -> Result<AwsKms> {
        let key = KmsKeyArn::parse(&self.kms_arn)?;
        if let Some(region) = &self.region
            && region != key.region()
        {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "region: {region:?} does not match the region of kms_arn ({})",
                    key.region()
                ),
            ));
        }
        let role = self.role_arn.as_deref().map(RoleArn::parse).transpose()?;
        let region = Region::new(key.region().to_owned());
        let base = match self.sdk_config {
            Some(config) => config,
            None => {
                let mut loader =
                    aws_config::defaults(BehaviorVersion::latest()).region(region.clone());
                if let Some(credentials) = self.credentials.clone() {
                    loader = loader.credentials_provider(credentials);
                }
                loader.load().await
            }
        };
        let credentials = match &role {
            Some(role) => {
                let mut sts = base.to_builder().region(Some(region.clone()));
                if let Some(url) = &self.sts_endpoint_url {
                    sts = sts.endpoint_url(url.clone());
                }
                if let Some(credentials) = &self.credentials {
                    sts = sts.credentials_provider(credentials.clone());
                }
                let mut assume = aws_config::sts::AssumeRoleProvider::builder(role.as_str())
                    .session_name(self.session_name.clone())
                    .region(region.clone())
                    .configure(&sts.build());
                if let Some(id) = &self.external_id {
                    assume = assume.external_id(id.clone());
                }
                Some(SharedCredentialsProvider::new(assume.build().await))
            }
            None => self.credentials.clone(),
        };
        let mut config = aws_sdk_kms::config::Builder::from(&base)
            .region(region)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(self.call_timeout)
                    .connect_timeout(self.call_timeout)
                    .build(),
            );
        if let Some(credentials) = credentials {
            config = config.credentials_provider(credentials);
        }
        if let Some(url) = self.endpoint_url {
            config = config.endpoint_url(url);
        }
        Ok(AwsKms {
            client: aws_sdk_kms::Client::from_conf(config.build()),
            key,
            role,
        })
    }
}
