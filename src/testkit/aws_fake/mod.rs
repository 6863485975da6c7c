//! A wire-compatible AWS KMS fake (JSON 1.1, `x-amz-target: TrentService.*`) with a minimal STS
//! `AssumeRole`, for tests of services that use AWS KMS, through the official SDK or otherwise.
//!
//! Unlike moto it enforces key state (disabled and pending-deletion keys refuse Encrypt and
//! Decrypt), pins Decrypt to the given `KeyId`, rejects expired AssumeRole sessions, and injects
//! faults: throttling bursts, 5xx, access denied, slow responses and dropped connections. Its
//! cryptography is real: AES-256-GCM per key with the serialized encryption context as AAD.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use cmek::testkit::aws_fake::{AwsFault, FakeAwsKms};
//!
//! let kms = FakeAwsKms::start().await?;
//! let key_arn = kms.create_key();
//! // Point an AWS SDK client (or cmek's AwsKms) at kms.endpoint() with any credentials.
//! kms.inject(AwsFault::Throttle, 2); // the next two KMS calls are throttled
//! # let _ = key_arn; Ok(()) }
//! ```

mod kms;
mod sts;

use super::http::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use super::ServerControl;
use super::http::{BoxReply, Reply, Request, Server};
use crate::cipher::{CipherKey, CipherProvider};
use crate::error::Result;

/// The account fake keys belong to.
pub const FAKE_ACCOUNT: &str = "111122223333";

/// A fault the next KMS call(s) suffer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AwsFault {
    /// `ThrottlingException` (HTTP 400).
    Throttle,
    /// `KMSInternalException` (HTTP 500).
    InternalError,
    /// `AccessDeniedException` (HTTP 400).
    AccessDenied,
    /// The connection is closed without an answer.
    DropConnection,
    /// The answer comes this much later.
    Delay(Duration),
}

/// The state of a fake key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FakeKeyState {
    /// Usable.
    Enabled,
    /// `DisabledException` on use.
    Disabled,
    /// `KMSInvalidStateException` on use.
    PendingDeletion,
}

impl FakeKeyState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
        }
    }
}

/// What kind of key to create; build it with `..FakeKeySpec::default()`.
#[derive(Clone, Debug)]
pub struct FakeKeySpec {
    /// The region in the key's ARN (default `us-east-1`).
    pub region: String,
    /// `KeyUsage` (default `ENCRYPT_DECRYPT`).
    pub key_usage: String,
    /// `KeySpec` (default `SYMMETRIC_DEFAULT`).
    pub key_spec: String,
    /// Whether it is a multi-region key (default false; its id then starts with `mrk-`).
    pub multi_region: bool,
}

impl Default for FakeKeySpec {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            key_usage: "ENCRYPT_DECRYPT".to_owned(),
            key_spec: "SYMMETRIC_DEFAULT".to_owned(),
            multi_region: false,
        }
    }
}

struct FakeKey {
    arn: String,
    spec: FakeKeySpec,
    state: FakeKeyState,
    created: f64,
    cipher: CipherKey,
    denied: bool,
    /// A key policy condition: only these `compartment_id` context values may use the key.
    allowed_compartments: Option<Vec<String>>,
}

/// An AssumeRole call the fake answered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AssumedRole {
    /// `RoleArn`.
    pub role_arn: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `ExternalId`, if sent.
    pub external_id: Option<String>,
    /// The temporary access key id handed out.
    pub access_key_id: String,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, FakeKey>,
    faults: VecDeque<AwsFault>,
    latency: Duration,
    session_duration: Option<Duration>,
    /// Temporary access key id -> expiry (seconds since the epoch).
    sessions: HashMap<String, u64>,
    assumed: Vec<AssumedRole>,
    /// (operation, access key id) of every KMS call.
    calls: Vec<(String, String)>,
    next_id: u64,
}

/// The fake server; it stops when dropped.
pub struct FakeAwsKms {
    state: Arc<Mutex<State>>,
    server: Server,
}

impl std::fmt::Debug for FakeAwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAwsKms")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FakeAwsKms {
    /// Starts the server on a free port of 127.0.0.1 (inside a tokio runtime).
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(State {
            session_duration: Some(Duration::from_secs(3600)),
            ..State::default()
        }));
        let handler_state = state.clone();
        let server = Server::start(
            move |req: Request| -> BoxReply {
                let state = handler_state.clone();
                Box::pin(async move { handle(&state, req).await })
            },
            || kms::error(500, "KMSInternalException", "injected outage"),
        )
        .await?;
        Ok(Self { state, server })
    }

    /// Outages, error rates, and stopping and restarting the server on its port.
    pub fn server(&self) -> ServerControl<'_> {
        ServerControl(&self.server)
    }

    /// The endpoint URL for KMS and STS clients: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.server.url()
    }

    /// Creates an enabled symmetric key in `us-east-1`; returns its ARN.
    pub fn create_key(&self) -> String {
        self.create_key_with(FakeKeySpec::default())
    }

    /// Creates a key of the given kind; returns its ARN.
    pub fn create_key_with(&self, spec: FakeKeySpec) -> String {
        let mut state = lock(&self.state);
        kms::create_key(&mut state, spec)
    }

    /// Sets a key's state (what `DisableKey`, `EnableKey`, `ScheduleKeyDeletion` do).
    pub fn set_key_state(&self, arn: &str, key_state: FakeKeyState) {
        if let Some(key) = lock(&self.state).keys.values_mut().find(|k| k.arn == arn) {
            key.state = key_state;
        }
    }

    /// Deletes the key (its deletion waiting period over): every later request naming it gets
    /// `NotFoundException`, and its ciphertexts can never be decrypted again.
    pub fn delete_key(&self, arn: &str) {
        lock(&self.state).keys.retain(|_, k| k.arn != arn);
    }

    /// Makes the key's policy deny (or allow again) every use: `AccessDeniedException`.
    pub fn deny_access(&self, arn: &str, denied: bool) {
        if let Some(key) = lock(&self.state).keys.values_mut().find(|k| k.arn == arn) {
            key.denied = denied;
        }
    }

    /// Gives the key a least-privilege policy: `Encrypt` and `Decrypt` are allowed only with an
    /// EncryptionContext whose `compartment_id` is one of `compartments`
    /// (`kms:EncryptionContext:compartment_id` condition); others get `AccessDeniedException`.
    /// `None` lifts the condition.
    pub fn restrict_compartments(&self, arn: &str, compartments: Option<&[&str]>) {
        if let Some(key) = lock(&self.state).keys.values_mut().find(|k| k.arn == arn) {
            key.allowed_compartments =
                compartments.map(|c| c.iter().map(|s| (*s).to_owned()).collect());
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

    /// The next `count` KMS calls suffer `fault`.
    pub fn inject(&self, fault: AwsFault, count: usize) {
        lock(&self.state)
            .faults
            .extend(std::iter::repeat_n(fault, count));
    }

    /// How long AssumeRole sessions last (default one hour).
    pub fn set_session_duration(&self, duration: Duration) {
        lock(&self.state).session_duration = Some(duration);
    }

    /// KMS calls of operation `op` (`"Encrypt"`, `"Decrypt"`, …) so far.
    pub fn calls(&self, op: &str) -> usize {
        lock(&self.state)
            .calls
            .iter()
            .filter(|(o, _)| o == op)
            .count()
    }

    /// The access key id each KMS call was signed with, in order.
    pub fn access_keys_used(&self) -> Vec<String> {
        lock(&self.state)
            .calls
            .iter()
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Every AssumeRole call answered, in order.
    pub fn assumed_roles(&self) -> Vec<AssumedRole> {
        lock(&self.state).assumed.clone()
    }
}

async fn handle(state: &Mutex<State>, req: Request) -> Reply {
    if req.method != hyper::Method::POST || req.path != "/" {
        return kms::error(
            404,
            "UnknownOperationException",
            "the fake serves POST / only",
        );
    }
    let (latency, fault) = {
        let mut s = lock(state);
        let fault = match req.header("x-amz-target") {
            Some(target) => {
                let op = target
                    .strip_prefix("TrentService.")
                    .unwrap_or(target)
                    .to_owned();
                s.calls.push((op, kms::access_key_id(&req)));
                s.faults.pop_front()
            }
            None => None,
        };
        (s.latency, fault)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(AwsFault::Delay(d)) = &fault {
        tokio::time::sleep(*d).await;
    }
    match req.header("x-amz-target") {
        Some(target) => {
            let Some(op) = target.strip_prefix("TrentService.") else {
                return kms::error(400, "UnknownOperationException", "unknown target");
            };
            match fault {
                Some(AwsFault::Throttle) => kms::error(400, "ThrottlingException", "Rate exceeded"),
                Some(AwsFault::InternalError) => {
                    kms::error(500, "KMSInternalException", "injected internal error")
                }
                Some(AwsFault::AccessDenied) => kms::error(
                    400,
                    "AccessDeniedException",
                    "User is not authorized to perform this operation (injected)",
                ),
                Some(AwsFault::DropConnection) => Reply::Drop,
                Some(AwsFault::Delay(_)) | None => kms::handle(&mut lock(state), op, &req),
            }
        }
        None => sts::handle(&mut lock(state), &req),
    }
}

/// A fresh AES-256-GCM key for a fake KMS key.
fn new_cipher() -> CipherKey {
    let mut material = Zeroizing::new([0u8; 32]);
    let _ = getrandom::fill(material.as_mut_slice());
    // A 32-byte key is always accepted.
    CipherKey::new(CipherProvider::default(), &material).unwrap_or_else(|_| unreachable!())
}
