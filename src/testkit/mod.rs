//! Test doubles that users of `cmek` want too (feature `testkit`).
//!
//! * [`FaultyKms`]: wraps any backend (by default an in-memory [`LocalKms`](crate::LocalKms))
//!   and injects latency, scripted errors and key disablement, counting every call.
//! * [`conformance`]: the suite every [`KmsBackend`](crate::KmsBackend) must pass.

pub mod conformance;
mod faulty;

pub use faulty::{Fault, FaultyKms};
