//! The Azure Key Vault backend (feature `azure`): the official `azure_security_keyvault_keys`
//! client with `azure_identity` credentials, on an RSA key of at least 3072 bits.
//!
//! * **Wrap is local, after one look at the key.** Every wrap (one per new DEK, so about one
//!   per compartment per `encrypt_max_age`) first fetches the key (`GET /keys/{name}`): its
//!   current version (`kid`), its public half and its state. So a rotated key is used for the
//!   next DEK, and a disabled, expired or deleted key, or a lost permission, stops new DEKs at
//!   once, writes-only included, as on AWS and Google Cloud. The RSA-OAEP-256 encryption itself
//!   (SHA-256, MGF1-SHA-256) is done locally with aws-lc-rs. The public half is also cached for
//!   [`KmsBackend::describe`], refreshed every [`AzureKeyVaultBuilder::public_key_refresh`].
//! * **Unwrap is remote**: `unwrapKey` on the exact key version recorded in the envelope.
//! * **Binding**: `wrapKey` takes no AAD, so what is wrapped is the DEK followed by the SHA-256
//!   of the canonical wrap context; after unwrapping, the digest is compared (constant time) with
//!   the caller's context. A wrapped DEK moved into another compartment's envelope fails
//!   ([`ErrorKind::Integrity`]); the envelope header binds the rest.
//! * **Credentials**: any `TokenCredential`; the builder makes client-secret, workload-identity
//!   and managed-identity credentials for the configuration's `tenant_id` and `client_id`. The
//!   SDK's own retries are off (they can stall for over a minute); the
//!   [`Client`](crate::Client) retries throttled and transient errors with backoff and jitter.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use cmek::KmsBackend;
//! use cmek::kms::azure::AzureKeyVault;
//!
//! // The seed's provider config: {vault_uri, key_name, tenant_id, client_id?}.
//! let kms = AzureKeyVault::builder("https://contoso.vault.azure.net", "tenant-kek")
//!     .tenant_id("00000000-0000-0000-0000-000000000001")
//!     .client_id("11111111-1111-1111-1111-111111111111")
//!     .workload_identity()
//!     .build()?;
//! kms.check_key().await?; // RSA ≥ 3072, wrapKey and unwrapKey, enabled, in its validity window
//! # Ok(()) }
//! ```

mod errors;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions};
use azure_security_keyvault_keys::KeyClient;
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, KeyClientGetKeyOptions, KeyOperationParameters, KeyType,
};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::azure_name::{check_key_name, check_vault_uri};
use super::rsa_oaep::OaepPublicKey;
use super::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{DATA_KEY_LEN, DataKey};

pub use azure_core::http::ClientOptions as AzureClientOptions;

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 3072;
/// Default interval between fetches of the key's public half.
pub const DEFAULT_PUBLIC_KEY_REFRESH: Duration = Duration::from_secs(300);

/// The public half of the key's current version, as last fetched.
struct PublicKey {
    version: String,
    key: Arc<OaepPublicKey>,
    fetched: Instant,
    usable: std::result::Result<(), Error>,
}

/// A customer's Azure Key Vault RSA key.
pub struct AzureKeyVault {
    client: KeyClient,
    key_name: String,
    key_id: String,
    refresh: Duration,
    public: RwLock<Option<PublicKey>>,
}

impl fmt::Debug for AzureKeyVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVault")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// What kind of credential the builder makes.
enum CredentialChoice {
    Given(Arc<dyn TokenCredential>),
    ClientSecret(Zeroizing<String>),
    WorkloadIdentity,
    ManagedIdentity,
}

/// Builds an [`AzureKeyVault`] from the seed's provider configuration
/// `{vault_uri, key_name, tenant_id, client_id?}`.
#[must_use]
pub struct AzureKeyVaultBuilder {
    vault_uri: String,
    key_name: String,
    tenant_id: Option<String>,
    client_id: Option<String>,
    credential: Option<CredentialChoice>,
    client_options: Option<ClientOptions>,
    refresh: Duration,
}

impl fmt::Debug for AzureKeyVaultBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVaultBuilder")
            .field("vault_uri", &self.vault_uri)
            .field("key_name", &self.key_name)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl AzureKeyVault {
    /// Starts building a backend for the key `key_name` in the vault at `vault_uri`.
    pub fn builder(
        vault_uri: impl Into<String>,
        key_name: impl Into<String>,
    ) -> AzureKeyVaultBuilder {
        AzureKeyVaultBuilder {
            vault_uri: vault_uri.into(),
            key_name: key_name.into(),
            tenant_id: None,
            client_id: None,
            credential: None,
            client_options: None,
            refresh: DEFAULT_PUBLIC_KEY_REFRESH,
        }
    }

    /// The key's id without version: `<vault>/keys/<name>`, recorded in envelopes.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The version new DEKs are wrapped under (fetching the key if needed).
    ///
    /// # Errors
    /// When the key cannot be fetched.
    pub async fn current_version(&self) -> Result<String> {
        Ok(self.public_key().await?.0)
    }

    /// Checks the key: type RSA or RSA-HSM, modulus of at least 3072 bits, `wrapKey` and
    /// `unwrapKey` among its operations, enabled, within its not-before/expiry window.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] for a key of the wrong kind, [`ErrorKind::KeyRevoked`] for a
    /// disabled, expired or not yet valid key, or the call's error.
    async fn check_key_inner(&self) -> Result<()> {
        let fetched = self.fetch().await?;
        fetched.usable.clone()
    }

    /// `GET /keys/{name}`, checked; also refreshes the cache.
    async fn fetch(&self) -> Result<PublicKeyView> {
        let started = Instant::now();
        let response = self
            .client
            .get_key(&self.key_name, Some(KeyClientGetKeyOptions::default()))
            .await;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let key = match response.and_then(|r| r.into_model()) {
            Ok(key) => {
                tracing::debug!(
                    provider = "azure",
                    key = self.key_id.as_str(),
                    op = "getKey",
                    latency_ms,
                    outcome = "ok",
                    "KMS call"
                );
                key
            }
            Err(e) => {
                let error = errors::map("getKey", &self.key_id, &e);
                tracing::warn!(provider = "azure", key = self.key_id.as_str(), op = "getKey", latency_ms, outcome = error.kind().as_str(), error = %error, "KMS call");
                return Err(error);
            }
        };
        let jwk = key
            .key
            .as_ref()
            .ok_or_else(|| Error::transient("Key Vault returned no key"))?;
        let invalid =
            |m: String| Error::new(ErrorKind::Validation, format!("{}: {m}", self.key_id));
        let kid = jwk.kid.clone().unwrap_or_default();
        let version = kid
            .rsplit_once('/')
            .map(|(base, v)| (base, v.to_owned()))
            .filter(|(base, v)| {
                base.ends_with(&format!("/keys/{}", self.key_name)) && !v.is_empty()
            })
            .map(|(_, v)| v)
            .ok_or_else(|| {
                Error::transient(format!("Key Vault returned an unexpected kid {kid:?}"))
            })?;
        match &jwk.kty {
            Some(KeyType::Rsa | KeyType::RsaHsm) => {}
            other => {
                return Err(invalid(format!(
                    "key type is {}; cmek needs an RSA or RSA-HSM key",
                    other
                        .as_ref()
                        .map_or_else(|| "unknown".to_owned(), |k| format!("{k:?}"))
                )));
            }
        }
        let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
            return Err(invalid(
                "the key has no public modulus or exponent".to_owned(),
            ));
        };
        let public = OaepPublicKey::from_components(n, e)?;
        let mut usable = Ok(());
        if public.bits() < MIN_RSA_BITS {
            usable = Err(invalid(format!(
                "RSA modulus is {} bits; at least {MIN_RSA_BITS} are needed",
                public.bits()
            )));
        }
        let ops = jwk.key_ops.clone().unwrap_or_default();
        for op in ["wrapKey", "unwrapKey"] {
            if usable.is_ok() && !ops.iter().any(|o| o == op) {
                usable = Err(invalid(format!(
                    "the key does not permit {op} (key_ops {ops:?})"
                )));
            }
        }
        if usable.is_ok()
            && let Some(attributes) = &key.attributes
        {
            let now = time::OffsetDateTime::now_utc();
            if attributes.enabled == Some(false) {
                usable = Err(Error::revoked(format!(
                    "{}: the key is disabled",
                    self.key_id
                )));
            } else if attributes.expires.is_some_and(|exp| exp <= now) {
                usable = Err(Error::revoked(format!(
                    "{}: the key has expired",
                    self.key_id
                )));
            } else if attributes.not_before.is_some_and(|nbf| nbf > now) {
                usable = Err(Error::revoked(format!(
                    "{}: the key is not yet valid",
                    self.key_id
                )));
            }
        }
        let key = Arc::new(public);
        if let Ok(mut cache) = self.public.write() {
            *cache = Some(PublicKey {
                version: version.clone(),
                key: key.clone(),
                fetched: Instant::now(),
                usable: usable.clone(),
            });
        }
        Ok(PublicKeyView {
            version,
            key,
            usable,
        })
    }

    /// Drops the cached public half: the next wrap fetches the key again and sees its state.
    fn forget_public_key(&self) {
        if let Ok(mut cached) = self.public.write() {
            *cached = None;
        }
    }

    /// The cached public half, fetched again when older than the refresh interval.
    async fn public_key(&self) -> Result<(String, Arc<OaepPublicKey>)> {
        let cached = self.public.read().ok().and_then(|c| {
            c.as_ref()
                .filter(|p| p.fetched.elapsed() < self.refresh)
                .map(|p| (p.version.clone(), p.key.clone(), p.usable.clone()))
        });
        let (version, key, usable) = match cached {
            Some(hit) => hit,
            None => {
                let fetched = self.fetch().await?;
                (fetched.version, fetched.key, fetched.usable)
            }
        };
        usable?;
        Ok((version, key))
    }
}

struct PublicKeyView {
    version: String,
    key: Arc<OaepPublicKey>,
    usable: std::result::Result<(), Error>,
}

/// What is wrapped: the DEK, then the SHA-256 of the canonical wrap context.
fn payload(dek: &DataKey, context: &WrapContext<'_>) -> Zeroizing<[u8; DATA_KEY_LEN + 32]> {
    let mut out = Zeroizing::new([0u8; DATA_KEY_LEN + 32]);
    out[..DATA_KEY_LEN].copy_from_slice(dek.expose_secret());
    out[DATA_KEY_LEN..].copy_from_slice(&crate::cipher::sha256(&[&context.canonical_bytes()]));
    out
}

impl fmt::Display for AzureKeyVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AzureKeyVault({})", self.key_id)
    }
}

#[async_trait]
impl KmsBackend for AzureKeyVault {
    async fn check_key(&self) -> Result<()> {
        self.check_key_inner().await
    }

    fn provider(&self) -> Provider {
        Provider::Azure
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        Some(&self.key_id)
    }

    async fn describe(&self) -> Result<KeyDescription> {
        let version = self.current_version().await.ok();
        Ok(KeyDescription::new(
            Provider::Azure,
            self.key_id.clone(),
            version,
        ))
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        // One look at the key per new DEK: a disabled or deleted key must stop new data now.
        let PublicKeyView {
            version,
            key,
            usable,
        } = self.fetch().await?;
        usable?;
        let ciphertext = key.encrypt(payload(dek, context).as_slice())?;
        Ok(WrappedKey::new(
            Provider::Azure,
            self.key_id.clone(),
            version,
            ciphertext,
        ))
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        if wrapped.provider != Provider::Azure || wrapped.key_id != self.key_id {
            return Err(Error::not_found(format!(
                "wrapped under {} key {:?}, not Key Vault key {}",
                wrapped.provider, wrapped.key_id, self.key_id
            )));
        }
        // Key Vault versions are 32 lowercase hex digits; any other spelling is not the one
        // that was written.
        if wrapped.key_version.len() != 32
            || !wrapped
                .key_version
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::integrity());
        }
        let parameters = KeyOperationParameters {
            algorithm: Some(EncryptionAlgorithm::RsaOaep256),
            value: Some(wrapped.ciphertext.clone()),
            ..KeyOperationParameters::default()
        };
        let body: RequestContent<KeyOperationParameters> =
            parameters.try_into().map_err(|e: azure_core::Error| {
                Error::configuration(format!("cannot encode unwrapKey: {e}"))
            })?;
        let started = Instant::now();
        let outcome = self
            .client
            .unwrap_key(&self.key_name, &wrapped.key_version, body, None)
            .await
            .and_then(|r| r.into_model());
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let result = match outcome {
            Ok(result) => {
                tracing::debug!(
                    provider = "azure",
                    key = self.key_id.as_str(),
                    op = "unwrapKey",
                    version = wrapped.key_version.as_str(),
                    latency_ms,
                    outcome = "ok",
                    "KMS call"
                );
                result
            }
            Err(e) => {
                let error = errors::map("unwrapKey", &self.key_id, &e);
                if error.kind() == ErrorKind::KeyRevoked {
                    // A disabled or deleted key must stop new wraps now, not at the next refresh.
                    self.forget_public_key();
                }
                tracing::warn!(provider = "azure", key = self.key_id.as_str(), op = "unwrapKey", version = wrapped.key_version.as_str(), latency_ms, outcome = error.kind().as_str(), error = %error, "KMS call");
                return Err(error);
            }
        };
        let unwrapped = Zeroizing::new(result.result.unwrap_or_default());
        if unwrapped.len() != DATA_KEY_LEN + 32 {
            return Err(Error::integrity());
        }
        let expected = crate::cipher::sha256(&[&context.canonical_bytes()]);
        if !bool::from(unwrapped[DATA_KEY_LEN..].ct_eq(&expected)) {
            return Err(Error::integrity());
        }
        DataKey::from_slice(&unwrapped[..DATA_KEY_LEN])
    }
}

impl AzureKeyVaultBuilder {
    /// The customer's Entra ID tenant; tokens are requested for it.
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// The application (client) id the service authenticates as.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Authenticates with this credential.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(CredentialChoice::Given(credential));
        self
    }

    /// Authenticates as `client_id` in `tenant_id` with a client secret.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.credential = Some(CredentialChoice::ClientSecret(Zeroizing::new(
            secret.into(),
        )));
        self
    }

    /// Authenticates with workload identity federation (`AZURE_FEDERATED_TOKEN_FILE`) as
    /// `client_id` in `tenant_id`.
    pub fn workload_identity(mut self) -> Self {
        self.credential = Some(CredentialChoice::WorkloadIdentity);
        self
    }

    /// Authenticates with the host's managed identity (`client_id` selects a user-assigned one).
    pub fn managed_identity(mut self) -> Self {
        self.credential = Some(CredentialChoice::ManagedIdentity);
        self
    }

    /// HTTP options of the SDK (transport, per-call policies). Retries are turned off whatever
    /// these say: the [`Client`](crate::Client) retries.
    pub fn client_options(mut self, options: ClientOptions) -> Self {
        self.client_options = Some(options);
        self
    }

    /// Trusts this CA certificate (PEM) for the vault's TLS, besides the system roots: for
    /// private endpoints behind a private CA, and for the testkit fake.
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`] for a certificate that does not parse.
    pub fn root_certificate_pem(mut self, pem: &str) -> Result<Self> {
        let certificate = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| Error::configuration(format!("root certificate: {e}")))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(certificate)
            .build()
            .map_err(|e| Error::configuration(format!("HTTP client: {e}")))?;
        let mut options = self.client_options.take().unwrap_or_default();
        options.transport = Some(azure_core::http::Transport::new(Arc::new(http)));
        self.client_options = Some(options);
        Ok(self)
    }

    /// How long the key's public half cached for [`KmsBackend::describe`] is reused (default 5
    /// minutes). Wraps always fetch the key first.
    pub fn public_key_refresh(mut self, every: Duration) -> Self {
        self.refresh = every;
        self
    }

    fn make_credential(&mut self) -> Result<Arc<dyn TokenCredential>> {
        let need = |what: &str| {
            Error::configuration(format!(
                "Azure Key Vault: {what} is required for this credential"
            ))
        };
        let choice = self.credential.take().ok_or_else(|| {
            Error::configuration("Azure Key Vault: choose a credential (credential, client_secret, workload_identity or managed_identity)")
        })?;
        let cred_err = |e: azure_core::Error| {
            Error::new(ErrorKind::Unauthenticated, format!("Azure credential: {e}"))
        };
        Ok(match choice {
            CredentialChoice::Given(credential) => credential,
            CredentialChoice::ClientSecret(secret) => {
                let tenant = self.tenant_id.clone().ok_or_else(|| need("tenant_id"))?;
                let client = self.client_id.clone().ok_or_else(|| need("client_id"))?;
                azure_identity::ClientSecretCredential::new(
                    &tenant,
                    client,
                    secret.to_string().into(),
                    None,
                )
                .map_err(cred_err)?
            }
            CredentialChoice::WorkloadIdentity => {
                let options = azure_identity::WorkloadIdentityCredentialOptions {
                    tenant_id: self.tenant_id.clone(),
                    client_id: self.client_id.clone(),
                    ..Default::default()
                };
                azure_identity::WorkloadIdentityCredential::new(Some(options)).map_err(cred_err)?
            }
            CredentialChoice::ManagedIdentity => {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: self
                        .client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                azure_identity::ManagedIdentityCredential::new(Some(options)).map_err(cred_err)?
            }
        })
    }

    /// Builds the backend; the key is fetched on first use.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] naming the field for a bad vault URI or key name;
    /// [`ErrorKind::Configuration`] without a credential.
    pub fn build(mut self) -> Result<AzureKeyVault> {
        check_vault_uri(&self.vault_uri)?;
        check_key_name(&self.key_name)?;
        let credential = self.make_credential()?;
        let mut client_options = self.client_options.take().unwrap_or_default();
        client_options.retry = RetryOptions::none();
        let options = azure_security_keyvault_keys::KeyClientOptions {
            client_options,
            // The challenge names vault.azure.net; private endpoints and tests use other hosts.
            verify_challenge_resource: Some(
                self.vault_uri.contains(".vault.azure.net")
                    || self.vault_uri.contains(".managedhsm.azure.net"),
            ),
            ..Default::default()
        };
        let client = KeyClient::new(&self.vault_uri, credential, Some(options))
            .map_err(|e| Error::configuration(format!("Azure Key Vault client: {e}")))?;
        let vault_uri = self.vault_uri.trim_end_matches('/');
        Ok(AzureKeyVault {
            client,
            key_id: format!("{vault_uri}/keys/{}", self.key_name),
            key_name: self.key_name,
            refresh: self.refresh,
            public: RwLock::new(None),
        })
    }
}
