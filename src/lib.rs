#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cache;
mod cipher;
mod client;
pub mod control;
mod error;
mod files;
pub mod format;
mod ids;
mod key;
pub mod kms;
#[cfg(feature = "object-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store")))]
pub mod objects;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod store;
pub mod stream;
mod telemetry;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

#[doc(hidden)]
pub mod internal;

pub use cache::{CacheConfig, Stats};
pub use cipher::{CipherProvider, MAX_PLAINTEXT_LEN, NONCE_LEN, TAG_LEN};
pub use client::{Client, ClientBuilder, RevokeMode};
pub use error::{Error, ErrorKind, Result};
pub use format::{DekRecord, EnvelopeInfo, inspect};
pub use ids::{CompartmentId, DEK_ID_LEN, DekId, KeyConfigId, MAX_ID_LEN};
pub use key::{DATA_KEY_LEN, DataKey};
#[cfg(feature = "local")]
pub use kms::local::LocalKms;
pub use kms::{
    BreakerConfig, DynKmsBackend, KeyBinding, KeyDescription, KeyHealth, KeyResolver, KeyState,
    KmsBackend, Provider, RetryPolicy, StaticKey, WrapContext, WrappedKey,
};
pub use store::{DekStore, FileDekStore, MemoryDekStore};
