//! The Google Cloud KMS backend (feature `gcp`): the official `google-cloud-kms-v1` client over
//! REST, with `google-cloud-auth` credentials.
//!
//! * **Wrap** = `Encrypt` of the crypto key with `additional_authenticated_data` = the canonical
//!   wrap context (`cmek:v1;compartment_id=…;key_config_id=…`). The crypto key version `Encrypt`
//!   reports is recorded in the envelope.
//! * **Unwrap** = `Decrypt` with the same AAD.
//! * **End-to-end integrity**, as Google documents it: requests carry `plaintext_crc32c`,
//!   `additional_authenticated_data_crc32c` and `ciphertext_crc32c`; responses must confirm
//!   (`verified_*`) and carry checksums of what they return. A checksum failure means corruption
//!   in transit: the call is repeated at once, up to [`GcpKmsBuilder::crc_retries`] times, and
//!   then fails as [`ErrorKind::Integrity`].
//! * **Credentials**: Application Default Credentials (service account, workload identity) unless
//!   the caller passes any `google_cloud_auth` credentials. The client's own retries are off; the
//!   [`Client`](crate::Client) retries throttled and transient errors with backoff and jitter.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use cmek::KmsBackend;
//! use cmek::kms::gcp::GcpKms;
//!
//! // The seed's provider config: {key_name}.
//! let kms = GcpKms::builder("projects/acme/locations/us-central1/keyRings/storage/cryptoKeys/tenant-7")
//!     .build()
//!     .await?;
//! kms.check_key().await?; // ENCRYPT_DECRYPT, primary version enabled, US location
//! # Ok(()) }
//! ```

mod errors;

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState;
use zeroize::Zeroize;

use super::gcp_name::CryptoKeyName;
use super::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};
use crate::error::{Error, ErrorKind, Result};
use crate::key::DataKey;

/// Credentials for Google Cloud (re-exported from `google-cloud-auth`).
pub use google_cloud_auth::credentials;

/// Default time limit of one KMS call attempt.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A customer's Cloud KMS crypto key.
#[derive(Clone)]
pub struct GcpKms {
    client: KeyManagementService,
    key: CryptoKeyName,
    crc_retries: u32,
}

impl fmt::Debug for GcpKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKms")
            .field("key", &self.key.as_str())
            .finish_non_exhaustive()
    }
}

/// Builds a [`GcpKms`] from the seed's provider configuration `{key_name}`.
#[must_use]
pub struct GcpKmsBuilder {
    key_name: String,
    endpoint: Option<String>,
    credentials: Option<credentials::Credentials>,
    call_timeout: Duration,
    crc_retries: u32,
}

impl fmt::Debug for GcpKmsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKmsBuilder")
            .field("key_name", &self.key_name)
            .field("endpoint", &self.endpoint)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

fn crc32c(bytes: &[u8]) -> i64 {
    i64::from(::crc32c::crc32c(bytes))
}

/// Whether a checksum the service sent back (`None`: not sent) matches `bytes`.
fn crc_matches(sent: Option<i64>, bytes: &[u8]) -> bool {
    sent == Some(crc32c(bytes))
}

fn crc_failure(op: &str, key: &CryptoKeyName) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!(
            "Cloud KMS {op} on {key}: the CRC32C check failed repeatedly (data corrupted in transit)"
        ),
    )
}

/// One attempt's outcome: a value, or a checksum failure worth repeating.
enum Attempt<T> {
    Done(T),
    CrcFailed,
}

/// A failed call: refused for a request checksum mismatch, or any other error.
enum CallError {
    Checksum,
    Other(Error),
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Checksum => Error::new(
                ErrorKind::Integrity,
                "Cloud KMS refused the request: checksum mismatch (corrupted in transit)",
            ),
            CallError::Other(e) => e,
        }
    }
}

impl GcpKms {
    /// Starts building a backend for the crypto key `key_name`.
    pub fn builder(key_name: impl Into<String>) -> GcpKmsBuilder {
        GcpKmsBuilder {
            key_name: key_name.into(),
            endpoint: None,
            credentials: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            crc_retries: 2,
        }
    }

    /// The crypto key this backend uses.
    pub fn key_name(&self) -> &CryptoKeyName {
        &self.key
    }

    /// Checks the key with `GetCryptoKey`: purpose `ENCRYPT_DECRYPT`, primary version enabled,
    /// location `us` or `us-*`.
    ///
    /// # Errors
    /// [`ErrorKind::KeyRevoked`] when the primary version is not enabled,
    /// [`ErrorKind::Validation`] for a key of the wrong purpose or place, or the call's error.
    async fn check_key_inner(&self) -> Result<()> {
        let key = self
            .traced(
                "GetCryptoKey",
                self.client
                    .get_crypto_key()
                    .set_name(self.key.as_str())
                    .send(),
            )
            .await
            .map_err(Error::from)?;
        let invalid = |m: String| {
            Err(Error::new(
                ErrorKind::Validation,
                format!("{}: {m}", self.key),
            ))
        };
        if key.purpose != CryptoKeyPurpose::EncryptDecrypt {
            return invalid(format!(
                "purpose is {}; cmek needs an ENCRYPT_DECRYPT key",
                key.purpose.name().unwrap_or("unknown")
            ));
        }
        match key.primary.as_ref().map(|p| &p.state) {
            Some(CryptoKeyVersionState::Enabled) => {}
            Some(state) => {
                return Err(Error::revoked(format!(
                    "{}: primary version is {}",
                    self.key,
                    state.name().unwrap_or("unknown")
                )));
            }
            None => {
                return Err(Error::revoked(format!(
                    "{}: the key has no primary version",
                    self.key
                )));
            }
        }
        if !self.key.is_us_location() {
            return invalid(format!(
                "location {} is not a US location",
                self.key.location()
            ));
        }
        Ok(())
    }

    /// Awaits one client call and traces it.
    async fn traced<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = google_cloud_kms_v1::Result<T>>,
    ) -> std::result::Result<T, CallError> {
        let started = Instant::now();
        let outcome = call.await;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let key = self.key.as_str();
        match outcome {
            Ok(out) => {
                tracing::debug!(
                    provider = "gcp",
                    key,
                    op,
                    latency_ms,
                    outcome = "ok",
                    "KMS call"
                );
                Ok(out)
            }
            Err(e) => {
                let error = errors::map(op, key, &e);
                tracing::warn!(provider = "gcp", key, op, latency_ms, outcome = error.kind().as_str(), error = %error, "KMS call");
                if errors::is_request_checksum_error(&e) {
                    Err(CallError::Checksum)
                } else {
                    Err(CallError::Other(error))
                }
            }
        }
    }

    /// Repeats `attempt` while the checksums fail, at most `crc_retries` more times.
    async fn with_crc_retries<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>>>,
    {
        for _ in 0..=self.crc_retries {
            match attempt().await? {
                Attempt::Done(value) => return Ok(value),
                Attempt::CrcFailed => {
                    tracing::warn!(
                        provider = "gcp",
                        key = self.key.as_str(),
                        op,
                        "CRC32C check failed; repeating the call"
                    );
                }
            }
        }
        Err(crc_failure(op, &self.key))
    }
}

impl fmt::Display for GcpKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GcpKms({})", self.key.as_str())
    }
}

#[async_trait]
impl KmsBackend for GcpKms {
    async fn check_key(&self) -> Result<()> {
        self.check_key_inner().await
    }

    fn provider(&self) -> Provider {
        Provider::Gcp
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        Some(self.key.as_str())
    }

    async fn describe(&self) -> Result<KeyDescription> {
        Ok(KeyDescription::new(Provider::Gcp, self.key.as_str(), None))
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        let aad = context.canonical_bytes();
        let (plaintext_crc, aad_crc) = (crc32c(dek.expose_secret()), crc32c(&aad));
        self.with_crc_retries("Encrypt", || async {
            let out = self
                .traced(
                    "Encrypt",
                    self.client
                        .encrypt()
                        .set_name(self.key.as_str())
                        .set_plaintext(bytes::Bytes::copy_from_slice(dek.expose_secret()))
                        .set_additional_authenticated_data(aad.clone())
                        .set_plaintext_crc32c(plaintext_crc)
                        .set_additional_authenticated_data_crc32c(aad_crc)
                        .send(),
                )
                .await;
            let out = match out {
                Ok(out) => out,
                Err(CallError::Checksum) => return Ok(Attempt::CrcFailed),
                Err(CallError::Other(e)) => return Err(e),
            };
            if !out.verified_plaintext_crc32c
                || !out.verified_additional_authenticated_data_crc32c
                || !crc_matches(out.ciphertext_crc32c, &out.ciphertext)
            {
                return Ok(Attempt::CrcFailed);
            }
            let version = self.key.version_of(&out.name).ok_or_else(|| {
                Error::configuration(format!(
                    "Cloud KMS encrypted under {:?}, not a version of {}",
                    out.name, self.key
                ))
            })?;
            Ok(Attempt::Done(WrappedKey::new(
                Provider::Gcp,
                self.key.as_str(),
                version,
                out.ciphertext.to_vec(),
            )))
        })
        .await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        if wrapped.provider != Provider::Gcp || wrapped.key_id != self.key.as_str() {
            return Err(Error::not_found(format!(
                "wrapped under {} key {:?}, not Cloud KMS key {}",
                wrapped.provider, wrapped.key_id, self.key
            )));
        }
        // The version is informational (the ciphertext names its own) but authenticated as
        // written: only its canonical spelling is accepted.
        if crate::kms::canonical_decimal_version(&wrapped.key_version).is_none() {
            return Err(Error::integrity());
        }
        let aad = context.canonical_bytes();
        let (ciphertext_crc, aad_crc) = (crc32c(&wrapped.ciphertext), crc32c(&aad));
        self.with_crc_retries("Decrypt", || async {
            let out = self
                .traced(
                    "Decrypt",
                    self.client
                        .decrypt()
                        .set_name(self.key.as_str())
                        .set_ciphertext(bytes::Bytes::copy_from_slice(&wrapped.ciphertext))
                        .set_additional_authenticated_data(aad.clone())
                        .set_ciphertext_crc32c(ciphertext_crc)
                        .set_additional_authenticated_data_crc32c(aad_crc)
                        .send(),
                )
                .await;
            let out = match out {
                Ok(out) => out,
                Err(CallError::Checksum) => return Ok(Attempt::CrcFailed),
                Err(CallError::Other(e)) => return Err(e),
            };
            let mut plaintext = out.plaintext.to_vec();
            if !crc_matches(out.plaintext_crc32c, &plaintext) {
                plaintext.zeroize();
                return Ok(Attempt::CrcFailed);
            }
            let dek = DataKey::from_slice(&plaintext);
            plaintext.zeroize();
            dek.map(Attempt::Done)
        })
        .await
    }
}

impl GcpKmsBuilder {
    /// Sends calls to this endpoint (a private endpoint, an emulator, `http://` allowed).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Uses these credentials instead of Application Default Credentials.
    pub fn credentials(mut self, credentials: credentials::Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The time limit of one call attempt (default 5 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How often a call whose CRC32C checks fail is repeated before giving up (default 2).
    pub fn crc_retries(mut self, retries: u32) -> Self {
        self.crc_retries = retries;
        self
    }

    /// Builds the backend.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] for a bad key name; [`ErrorKind::Unauthenticated`] when no
    /// credentials can be found; [`ErrorKind::Configuration`] when the client cannot be built.
    pub async fn build(self) -> Result<GcpKms> {
        let key = CryptoKeyName::parse(&self.key_name)?;
        let mut builder = KeyManagementService::builder()
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .with_attempt_timeout(self.call_timeout);
        if let Some(endpoint) = self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(credentials) = self.credentials {
            builder = builder.with_credentials(credentials);
        }
        let client = builder.build().await.map_err(|e| {
            let text = e.to_string();
            let kind = if text.contains("credentials") {
                ErrorKind::Unauthenticated
            } else {
                ErrorKind::Configuration
            };
            Error::new(kind, format!("Cloud KMS client for {key}: {text}"))
        })?;
        Ok(GcpKms {
            client,
            key,
            crc_retries: self.crc_retries,
        })
    }
}
