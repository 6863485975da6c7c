//! The conformance suites every store must pass, like [`conformance`](super::conformance) for
//! KMS backends: [`dek_store`] for a [`DekStore`](crate::DekStore), [`control_store`] for a
//! [`ControlStore`](crate::control::ControlStore), [`audit_sink`] for an
//! [`AuditSink`](crate::control::AuditSink) read back as an activity feed. Each check panics with a message naming what
//! went wrong; the single checks are public in [`dek`], [`control`], [`races`] and [`leases`].
//!
//! A suite takes `open`, which opens the store under test over the *same* backing state each time
//! it is called (the same directory, the same database; for an in-memory store, the same
//! instance): "restart keeps state" is checked by opening again. Every check uses fresh ids, so
//! the suites can share one store and run beside other tests.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> cmek::Result<()> {
//! use std::sync::Arc;
//! use cmek::testkit::store_conformance;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let root = dir.path().to_owned();
//! store_conformance::dek_store(move || Arc::new(cmek::FileDekStore::open(&root).unwrap())).await;
//! # Ok(()) }
//! ```

pub mod audit;
pub mod control;
pub mod dek;
pub mod leases;
pub mod races;

pub use audit::audit_sink;
pub use control::control_store;
pub use dek::dek_store;
