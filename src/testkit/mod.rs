//! Test doubles that users of `cmek` want too (feature `testkit`).
//!
//! * [`FaultyKms`]: wraps any backend (by default an in-memory [`LocalKms`](crate::LocalKms))
//!   and injects latency, scripted errors and key disablement, counting every call.
//! * [`conformance`]: the suite every [`KmsBackend`](crate::KmsBackend) must pass.
//! * [`store_conformance`]: the suites every [`DekStore`](crate::DekStore) and
//!   [`ControlStore`](crate::control::ControlStore) must pass (races, restarts, the write-once rule).
//! * [`fault_suite`]: what a client over a backend does when the KMS misbehaves (outages, key
//!   events, throttling, random errors, another tenant's revocation), run against any
//!   [`FaultTarget`](fault_suite::FaultTarget); `targets` makes the cloud fakes such targets
//!   (with the cloud features).
//! * [`objects`]: the suite every [`EncryptedStore`](crate::objects::EncryptedStore) must pass
//!   over its inner store, and [`objects::CountingStore`], which counts what a store serves
//!   (with the `object-store` feature).
//! * [`aws_fake`]: a wire-compatible AWS KMS (and STS AssumeRole) server with fault injection.
//! * [`gcp_fake`]: a wire-compatible Google Cloud KMS (REST) server with key versions, CRC32C
//!   corruption and fault injection.
//! * [`azure_fake`]: a wire-compatible Azure Key Vault (HTTPS, bearer challenge, RSA-OAEP-256
//!   unwrap) with key versions, disable, expiry and fault injection; [`TestCa`] makes its CA.

pub mod aws_fake;
pub mod azure_fake;
pub mod conformance;
pub mod fault_suite;
mod faulty;
pub mod gcp_fake;
mod http;
#[cfg(feature = "object-store")]
pub mod objects;
pub mod store_conformance;
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
pub mod targets;
mod tls;

pub use faulty::{Fault, FaultyKms};
pub use http::Outage;
pub use tls::TestCa;

/// Outages and network faults of a fake server (every fake's `server()`), whatever it serves.
#[derive(Debug)]
pub struct ServerControl<'a>(&'a http::Server);

impl ServerControl<'_> {
    /// Puts the server into an outage (5xx answers, or hanging requests), or back to normal.
    pub fn set_outage(&self, outage: Outage) {
        self.0.faults().set_outage(outage);
    }

    /// Answers this share (0 to 1) of requests with the service's 5xx, at random.
    pub fn set_error_rate(&self, rate: f64) {
        self.0.faults().set_error_rate(rate);
    }

    /// Requests received so far, answered or not.
    pub fn requests(&self) -> u64 {
        self.0.faults().requests()
    }

    /// Closes the port and drops every connection: clients see "connection refused".
    pub async fn stop(&self) {
        self.0.stop_and_wait().await;
    }

    /// Listens on the same port again.
    ///
    /// # Errors
    /// When the port cannot be bound again.
    pub async fn restart(&self) -> crate::Result<()> {
        self.0.restart().await
    }
}
