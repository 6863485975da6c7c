//! A wire-compatible Azure Key Vault fake for the keys API: HTTPS with a CA made at test time
//! (the official client refuses plain http), the 401 bearer challenge the client expects, RSA
//! keys with versions whose private halves really unwrap `RSA-OAEP-256`, enable/disable, expiry
//! and not-before, key operations, and fault injection (throttling, 5xx, latency, RBAC denial,
//! dropped connections).
//!
//! Serves `GET /keys/{name}[/{version}]`, `POST /keys/{name}/{version}/wrapkey` and
//! `POST /keys/{name}/{version}/unwrapkey` (an empty version means the current one). Tokens are
//! not validated, only recorded; the challenge names the tenant given to [`FakeKeyVault::start`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use cmek::testkit::azure_fake::FakeKeyVault;
//!
//! let vault = FakeKeyVault::start("00000000-0000-0000-0000-000000000001").await?;
//! let v1 = vault.create_key("tenant-kek", 3072)?;
//! // Trust vault.ca_pem() in the client and point it at vault.vault_uri().
//! let v2 = vault.rotate("tenant-kek")?;
//! vault.set_enabled("tenant-kek", Some(&v1), false);
//! # let _ = v2; Ok(()) }
//! ```

mod rest;

use super::http::lock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ServerControl;
use super::TestCa;
use super::http::{BoxReply, Request, Server};
use crate::error::Result;
use crate::kms::rsa_oaep::OaepPrivateKey;

/// A fault the next call(s) suffer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AzureFault {
    /// 429 Throttled.
    Throttle,
    /// 500 InternalServerError.
    ServerError,
    /// 503 ServiceUnavailable.
    Unavailable,
    /// 403 ForbiddenByRbac (a missing role assignment).
    Forbidden,
    /// The connection is closed without an answer.
    DropConnection,
    /// The answer comes this much later.
    Delay(Duration),
}

struct KeyVersion {
    private: OaepPrivateKey,
    n: Vec<u8>,
    e: Vec<u8>,
    enabled: bool,
    created: u64,
    expires: Option<u64>,
    not_before: Option<u64>,
}

struct VaultKey {
    denied: bool,
    versions: BTreeMap<String, KeyVersion>,
    current: String,
    ops: Vec<String>,
    kty: String,
    bits: usize,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, VaultKey>,
    faults: VecDeque<AzureFault>,
    latency: Duration,
    calls: Vec<String>,
    tokens: Vec<String>,
    challenges: usize,
}

/// The fake vault; it stops when dropped.
pub struct FakeKeyVault {
    state: Arc<Mutex<State>>,
    server: Server,
    ca: TestCa,
}

impl std::fmt::Debug for FakeKeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKeyVault")
            .field("vault_uri", &self.vault_uri())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_version_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    crate::ids::hex_encode(&b)
}

fn new_version(bits: usize) -> Result<KeyVersion> {
    let private = OaepPrivateKey::generate(bits)?;
    let (n, e) = private.public_components()?;
    Ok(KeyVersion {
        private,
        n,
        e,
        enabled: true,
        created: now_secs(),
        expires: None,
        not_before: None,
    })
}

impl FakeKeyVault {
    /// Starts the vault on a free port of 127.0.0.1 over HTTPS; its challenge names `tenant_id`.
    ///
    /// # Errors
    /// When the test CA cannot be made or no port can be bound.
    pub async fn start(tenant_id: &str) -> Result<Self> {
        let ca = TestCa::new()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (handler_state, tenant) = (state.clone(), tenant_id.to_owned());
        let server = Server::start_tls(
            move |req: Request| -> BoxReply {
                let (state, tenant) = (handler_state.clone(), tenant.clone());
                Box::pin(async move { rest::handle(&state, &tenant, req).await })
            },
            ca.server_config(),
            || rest::server_error("injected outage"),
        )
        .await?;
        Ok(Self { state, server, ca })
    }

    /// Outages, error rates, and stopping and restarting the server on its port.
    pub fn server(&self) -> ServerControl<'_> {
        ServerControl(&self.server)
    }

    /// Makes the vault refuse (or allow again) every use of the key: 403 `ForbiddenByRbac`, as
    /// when the service's role assignment is removed.
    pub fn deny_access(&self, name: &str, denied: bool) {
        if let Some(key) = lock(&self.state).keys.get_mut(name) {
            key.denied = denied;
        }
    }

    /// The vault URI clients use: `https://127.0.0.1:<port>`.
    pub fn vault_uri(&self) -> String {
        self.server.url()
    }

    /// The CA certificate (PEM) the client must trust.
    pub fn ca_pem(&self) -> &str {
        self.ca.ca_pem()
    }

    /// Creates an RSA key of `bits` (2048, 3072 or 4096) with `wrapKey`/`unwrapKey` among its
    /// operations; returns its version id.
    ///
    /// # Errors
    /// For an unsupported size.
    pub fn create_key(&self, name: &str, bits: usize) -> Result<String> {
        let version = new_version(bits)?;
        let id = new_version_id();
        let mut versions = BTreeMap::new();
        versions.insert(id.clone(), version);
        lock(&self.state).keys.insert(
            name.to_owned(),
            VaultKey {
                denied: false,
                versions,
                current: id.clone(),
                ops: ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
                    .map(String::from)
                    .to_vec(),
                kty: "RSA".to_owned(),
                bits,
            },
        );
        Ok(id)
    }

    /// Adds a new current version (same size); returns its id. Old versions still unwrap.
    ///
    /// # Errors
    /// When key generation fails.
    pub fn rotate(&self, name: &str) -> Result<String> {
        let bits = lock(&self.state).keys.get(name).map_or(3072, |k| k.bits);
        let version = new_version(bits)?;
        let id = new_version_id();
        let mut state = lock(&self.state);
        if let Some(key) = state.keys.get_mut(name) {
            key.versions.insert(id.clone(), version);
            key.current = id.clone();
        }
        Ok(id)
    }

    /// Deletes a key with all its versions: from then on every request for it gets 404
    /// `KeyNotFound`, as Key Vault answers for a (soft-)deleted key.
    pub fn delete_key(&self, name: &str) {
        lock(&self.state).keys.remove(name);
    }

    fn with_version(&self, name: &str, version: Option<&str>, f: impl FnOnce(&mut KeyVersion)) {
        let mut state = lock(&self.state);
        if let Some(key) = state.keys.get_mut(name) {
            let id = version.map_or_else(|| key.current.clone(), str::to_owned);
            if let Some(v) = key.versions.get_mut(&id) {
                f(v);
            }
        }
    }

    /// Enables or disables a version (the current one when `None`).
    pub fn set_enabled(&self, name: &str, version: Option<&str>, enabled: bool) {
        self.with_version(name, version, |v| v.enabled = enabled);
    }

    /// Sets a version's expiry (seconds since the epoch; `None` clears it).
    pub fn set_expires(&self, name: &str, version: Option<&str>, expires: Option<u64>) {
        self.with_version(name, version, |v| v.expires = expires);
    }

    /// Sets a version's not-before time (seconds since the epoch; `None` clears it).
    pub fn set_not_before(&self, name: &str, version: Option<&str>, not_before: Option<u64>) {
        self.with_version(name, version, |v| v.not_before = not_before);
    }

    /// Sets the key's permitted operations (for example without `unwrapKey`).
    pub fn set_key_ops(&self, name: &str, ops: &[&str]) {
        if let Some(key) = lock(&self.state).keys.get_mut(name) {
            key.ops = ops.iter().map(|s| (*s).to_owned()).collect();
        }
    }

    /// Reports the key type as `kty` (`RSA`, `RSA-HSM`, `EC`, `oct-HSM`…).
    pub fn set_key_type(&self, name: &str, kty: &str) {
        if let Some(key) = lock(&self.state).keys.get_mut(name) {
            key.kty = kty.to_owned();
        }
    }

    /// Delays every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Drops the faults still queued by [`Self::inject`].
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// The next `count` key calls suffer `fault`.
    pub fn inject(&self, fault: AzureFault, count: usize) {
        lock(&self.state)
            .faults
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Authorized calls of `op` (`"get"`, `"wrapkey"`, `"unwrapkey"`) so far.
    pub fn calls(&self, op: &str) -> usize {
        lock(&self.state).calls.iter().filter(|c| *c == op).count()
    }

    /// Bearer tokens the vault was shown, in order.
    pub fn tokens_seen(&self) -> Vec<String> {
        lock(&self.state).tokens.clone()
    }

    /// 401 challenges answered so far.
    pub fn challenges(&self) -> usize {
        lock(&self.state).challenges
    }

    /// The PKCS#8 DER private key of a version (for interop tests; secret).
    pub fn private_key_pkcs8(&self, name: &str, version: &str) -> Option<Vec<u8>> {
        lock(&self.state)
            .keys
            .get(name)
            .and_then(|k| k.versions.get(version))
            .map(|v| v.private.pkcs8_der().to_vec())
    }

    /// The SubjectPublicKeyInfo DER public key of a version.
    pub fn public_key_der(&self, name: &str, version: &str) -> Option<Vec<u8>> {
        lock(&self.state)
            .keys
            .get(name)
            .and_then(|k| k.versions.get(version))
            .and_then(|v| v.private.public_spki_der().ok())
    }
}

/// A `TokenCredential` that hands out a fixed token and records the scopes asked for.
#[cfg(feature = "azure")]
#[derive(Debug, Default)]
pub struct StaticToken {
    token: String,
    requests: Mutex<Vec<Vec<String>>>,
}

#[cfg(feature = "azure")]
impl StaticToken {
    /// Hands out `token`, valid for an hour.
    pub fn new(token: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            token: token.into(),
            requests: Mutex::new(Vec::new()),
        })
    }

    /// The scopes of every token request so far.
    pub fn requests(&self) -> Vec<Vec<String>> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[cfg(feature = "azure")]
#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for StaticToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        if let Ok(mut r) = self.requests.lock() {
            r.push(scopes.iter().map(|s| (*s).to_owned()).collect());
        }
        Ok(azure_core::credentials::AccessToken::new(
            self.token.clone(),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}
