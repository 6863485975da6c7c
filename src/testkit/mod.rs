//! Test doubles that users of `cmek` want too (feature `testkit`).
//!
//! * [`FaultyKms`]: wraps any backend (by default an in-memory [`LocalKms`](crate::LocalKms))
//!   and injects latency, scripted errors and key disablement, counting every call.
//! * [`conformance`]: the suite every [`KmsBackend`](crate::KmsBackend) must pass.
//! * [`aws_fake`]: a wire-compatible AWS KMS (and STS AssumeRole) server with fault injection.
//! * [`gcp_fake`]: a wire-compatible Google Cloud KMS (REST) server with key versions, CRC32C
//!   corruption and fault injection.
//! * [`azure_fake`]: a wire-compatible Azure Key Vault (HTTPS, bearer challenge, RSA-OAEP-256
//!   unwrap) with key versions, disable, expiry and fault injection; [`TestCa`] makes its CA.

pub mod aws_fake;
pub mod azure_fake;
pub mod conformance;
mod faulty;
pub mod gcp_fake;
mod http;
mod tls;

pub use tls::TestCa;

pub use faulty::{Fault, FaultyKms};
