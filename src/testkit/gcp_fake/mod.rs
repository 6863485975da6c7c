//! A wire-compatible Google Cloud KMS fake (REST v1, JSON as the official client sends it) with
//! key versions, primary rotation, disable/destroy and fault injection (CRC32C corruption either
//! way, throttling, 5xx, latency, dropped connections). Its cryptography is real: AES-256-GCM per
//! key version with the request's additional authenticated data.
//!
//! Serves `POST /v1/{key}:encrypt`, `POST /v1/{key}:decrypt` and `GET /v1/{key}`; errors come as
//! `{"error":{"code":…,"message":…,"status":…}}`. No authentication is checked: point the
//! official client at [`FakeGcpKms::endpoint`] with anonymous credentials.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use cmek::testkit::gcp_fake::{FakeGcpKms, GcpFault};
//!
//! let kms = FakeGcpKms::start().await?;
//! let key = kms.create_key("us-central1");
//! kms.rotate(&key); // version 2 becomes primary; version 1 still decrypts
//! kms.inject(GcpFault::CorruptResponseCrc, 1);
//! # Ok(()) }
//! ```

mod rest;

use super::http::lock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use super::ServerControl;
use super::http::{BoxReply, Request, Server};
use crate::cipher::{CipherKey, CipherProvider};
use crate::error::Result;

/// The project fake keys belong to.
pub const FAKE_PROJECT: &str = "cmek-test";

/// A fault the next call(s) suffer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcpFault {
    /// The response's checksum (`ciphertextCrc32c` or `plaintextCrc32c`) is wrong, as if the
    /// answer were corrupted on the way back.
    CorruptResponseCrc,
    /// The request is refused as if it were corrupted on the way in (INVALID_ARGUMENT: checksum
    /// mismatch).
    CorruptRequest,
    /// `Encrypt` answers without confirming the request checksums (`verified_*` false).
    UnverifiedRequest,
    /// 429 RESOURCE_EXHAUSTED.
    Throttle,
    /// 503 UNAVAILABLE.
    Unavailable,
    /// 500 INTERNAL.
    Internal,
    /// The connection is closed without an answer.
    DropConnection,
    /// The answer comes this much later.
    Delay(Duration),
}

/// The state of a key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FakeVersionState {
    /// Usable.
    Enabled,
    /// FAILED_PRECONDITION on use, can be enabled again.
    Disabled,
    /// FAILED_PRECONDITION on use; the material is gone.
    Destroyed,
}

impl FakeVersionState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "ENABLED",
            Self::Disabled => "DISABLED",
            Self::Destroyed => "DESTROYED",
        }
    }
}

struct Version {
    state: FakeVersionState,
    cipher: Option<CipherKey>,
}

struct Key {
    purpose: String,
    primary: u32,
    versions: BTreeMap<u32, Version>,
    denied: bool,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Key>,
    faults: VecDeque<GcpFault>,
    latency: Duration,
    calls: Vec<String>,
}

/// The fake server; it stops when dropped.
pub struct FakeGcpKms {
    state: Arc<Mutex<State>>,
    server: Server,
}

impl std::fmt::Debug for FakeGcpKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGcpKms")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

fn new_version() -> Version {
    let mut material = Zeroizing::new([0u8; 32]);
    let _ = getrandom::fill(material.as_mut_slice());
    Version {
        state: FakeVersionState::Enabled,
        // A 32-byte key is always accepted.
        cipher: CipherKey::new(CipherProvider::default(), &material).ok(),
    }
}

impl FakeGcpKms {
    /// Starts the server on a free port of 127.0.0.1 (inside a tokio runtime).
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let handler_state = state.clone();
        let server = Server::start(
            move |req: Request| -> BoxReply {
                let state = handler_state.clone();
                Box::pin(async move { rest::handle(&state, req).await })
            },
            || rest::error("UNAVAILABLE", "injected outage"),
        )
        .await?;
        Ok(Self { state, server })
    }

    /// Outages, error rates, and stopping and restarting the server on its port.
    pub fn server(&self) -> ServerControl<'_> {
        ServerControl(&self.server)
    }

    /// The endpoint for the client: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.server.url()
    }

    /// Creates an `ENCRYPT_DECRYPT` key with one enabled version in `location`; returns its
    /// name `projects/cmek-test/locations/<location>/keyRings/ring/cryptoKeys/key-<n>`.
    pub fn create_key(&self, location: &str) -> String {
        self.create_key_with_purpose(location, "ENCRYPT_DECRYPT")
    }

    /// Creates a key of another purpose (for example `ASYMMETRIC_SIGN`).
    pub fn create_key_with_purpose(&self, location: &str, purpose: &str) -> String {
        let mut state = lock(&self.state);
        let name = format!(
            "projects/{FAKE_PROJECT}/locations/{location}/keyRings/ring/cryptoKeys/key-{}",
            state.keys.len() + 1
        );
        let mut versions = BTreeMap::new();
        versions.insert(1, new_version());
        state.keys.insert(
            name.clone(),
            Key {
                purpose: purpose.to_owned(),
                primary: 1,
                versions,
                denied: false,
            },
        );
        name
    }

    /// Adds a version and makes it primary; returns its number. Old versions still decrypt.
    pub fn rotate(&self, key: &str) -> u32 {
        let mut state = lock(&self.state);
        let Some(k) = state.keys.get_mut(key) else {
            return 0;
        };
        let next = k.versions.keys().next_back().map_or(1, |v| v + 1);
        k.versions.insert(next, new_version());
        k.primary = next;
        next
    }

    /// Sets every version's state (the whole key disabled, enabled again, or destroyed: Cloud
    /// KMS keys are never deleted, their versions are destroyed).
    pub fn set_key_state(&self, key: &str, version_state: FakeVersionState) {
        let versions: Vec<u32> = lock(&self.state)
            .keys
            .get(key)
            .map(|k| k.versions.keys().copied().collect())
            .unwrap_or_default();
        for version in versions {
            self.set_version_state(key, version, version_state);
        }
    }

    /// Sets a version's state; destroying erases its material for good.
    pub fn set_version_state(&self, key: &str, version: u32, version_state: FakeVersionState) {
        let mut state = lock(&self.state);
        if let Some(v) = state
            .keys
            .get_mut(key)
            .and_then(|k| k.versions.get_mut(&version))
        {
            if v.state != FakeVersionState::Destroyed {
                v.state = version_state;
            }
            if version_state == FakeVersionState::Destroyed {
                v.cipher = None;
            }
        }
    }

    /// Makes IAM refuse (or allow again) every use of the key: PERMISSION_DENIED.
    pub fn deny_access(&self, key: &str, denied: bool) {
        if let Some(k) = lock(&self.state).keys.get_mut(key) {
            k.denied = denied;
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

    /// The next `count` calls suffer `fault`.
    pub fn inject(&self, fault: GcpFault, count: usize) {
        lock(&self.state)
            .faults
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Calls of `method` (`"encrypt"`, `"decrypt"`, `"get"`) so far.
    pub fn calls(&self, method: &str) -> usize {
        lock(&self.state)
            .calls
            .iter()
            .filter(|m| *m == method)
            .count()
    }
}
