//! The conformance suite every [`KmsBackend`] must pass, in the manner of object_store's
//! `integration` module: call [`run_all`] from a test of your backend (against its emulator or
//! fake server). Each check panics with a message that names what went wrong.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use std::sync::Arc;
//! use cmek::testkit::conformance;
//!
//! let kms = Arc::new(cmek::LocalKms::generate("local:conformance")?);
//! conformance::run_all(kms.clone(), Some(&*kms)).await;
//! # Ok(()) }
//! ```

#![allow(clippy::expect_used)] // a test suite: failures are panics with messages

use std::sync::Arc;

use crate::error::ErrorKind;
use crate::ids::{CompartmentId, KeyConfigId};
use crate::key::DataKey;
use crate::kms::{KeyStateControl, KmsBackend, WrapContext, WrappedKey};

fn ids(compartment: &str, key_config: &str) -> (CompartmentId, KeyConfigId) {
    (
        CompartmentId::new(compartment).expect("valid compartment id"),
        KeyConfigId::new(key_config).expect("valid key config id"),
    )
}

/// Runs every check; the disabled-key check only when `control` can disable the key.
pub async fn run_all(backend: Arc<dyn KmsBackend>, control: Option<&dyn KeyStateControl>) {
    describe_matches_wrap(&*backend).await;
    round_trip(&*backend).await;
    wrong_context_fails(&*backend).await;
    tampered_wrapped_key_fails(&*backend).await;
    non_canonical_key_version_fails(&*backend).await;
    concurrent_use(backend.clone()).await;
    if let Some(control) = control {
        disabled_key_is_revoked(&*backend, control).await;
    }
}

/// `describe` names the provider and key that `wrap` records.
pub async fn describe_matches_wrap(backend: &dyn KmsBackend) {
    let (c, k) = ids("conformance-describe", "conformance");
    let description = backend.describe().await.expect("describe failed");
    assert_eq!(
        description.provider,
        backend.provider(),
        "describe names another provider"
    );
    let dek = DataKey::generate().expect("rng");
    let wrapped = backend
        .wrap(&dek, &WrapContext::new(&c, &k))
        .await
        .expect("wrap failed");
    assert_eq!(
        wrapped.provider,
        backend.provider(),
        "wrap recorded another provider"
    );
    assert_eq!(
        wrapped.key_id, description.key_id,
        "wrap recorded another key id than describe"
    );
    if let Some(id) = backend.wrapping_key_id() {
        assert_eq!(
            id, wrapped.key_id,
            "wrapping_key_id names another key than wrap recorded"
        );
    }
}

/// A wrapped DEK unwraps to the same bytes under the same context; wrapping is randomized.
pub async fn round_trip(backend: &dyn KmsBackend) {
    let (c, k) = ids("conformance-roundtrip", "conformance");
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().expect("rng");
    let w1 = backend.wrap(&dek, &ctx).await.expect("wrap failed");
    let w2 = backend.wrap(&dek, &ctx).await.expect("second wrap failed");
    assert_ne!(
        w1.ciphertext, w2.ciphertext,
        "wrapping the same DEK twice gave equal ciphertexts"
    );
    for w in [&w1, &w2] {
        let back = backend.unwrap(w, &ctx).await.expect("unwrap failed");
        assert_eq!(
            back.expose_secret(),
            dek.expose_secret(),
            "unwrap returned another key"
        );
    }
    let wrapped_bytes = &w1.ciphertext;
    assert!(
        !wrapped_bytes
            .windows(dek.expose_secret().len())
            .any(|w| w == dek.expose_secret()),
        "the wrapped key contains the DEK in the clear"
    );
}

/// Unwrapping under another compartment or key configuration fails with an opaque `Integrity`
/// ("decryption failed", nothing from the KMS).
pub async fn wrong_context_fails(backend: &dyn KmsBackend) {
    let (c, k) = ids("conformance-ctx-a", "conformance");
    let (other_c, other_k) = ids("conformance-ctx-b", "conformance-other");
    let dek = DataKey::generate().expect("rng");
    let wrapped = backend
        .wrap(&dek, &WrapContext::new(&c, &k))
        .await
        .expect("wrap failed");
    for (label, ctx) in [
        ("another compartment", WrapContext::new(&other_c, &k)),
        ("another key configuration", WrapContext::new(&c, &other_k)),
    ] {
        match backend.unwrap(&wrapped, &ctx).await {
            Ok(_) => panic!("unwrap under {label} succeeded"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Integrity, "unwrap under {label}: {e}");
                assert_eq!(
                    e.to_string(),
                    "integrity: decryption failed",
                    "an integrity failure under {label} says more than that it failed"
                );
            }
        }
    }
}

/// A wrapped DEK with a flipped bit or cut short does not unwrap (`Integrity`).
pub async fn tampered_wrapped_key_fails(backend: &dyn KmsBackend) {
    let (c, k) = ids("conformance-tamper", "conformance");
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().expect("rng");
    let wrapped = backend.wrap(&dek, &ctx).await.expect("wrap failed");
    let n = wrapped.ciphertext.len();
    let mut variants: Vec<(&str, WrappedKey)> = Vec::new();
    for (label, at) in [("last byte", n - 1), ("middle byte", n / 2)] {
        let mut w = wrapped.clone();
        w.ciphertext[at] ^= 0x01;
        variants.push((label, w));
    }
    let mut short = wrapped.clone();
    short.ciphertext.truncate(n - 1);
    variants.push(("truncated", short));
    for (label, w) in variants {
        match backend.unwrap(&w, &ctx).await {
            Ok(_) => panic!("unwrap of a wrapped key with a tampered {label} succeeded"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Integrity, "tampered {label}: {e}"),
        }
    }
}

/// A wrapped DEK whose key version is respelled (`01` for `1`, a sign, spaces, another case, or
/// any version where the backend records none) does not unwrap (`Integrity`): records are
/// authenticated as written, in one canonical encoding.
pub async fn non_canonical_key_version_fails(backend: &dyn KmsBackend) {
    let (c, k) = ids("conformance-version", "conformance");
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().expect("rng");
    let wrapped = backend.wrap(&dek, &ctx).await.expect("wrap failed");
    let v = wrapped.key_version.clone();
    let spellings: Vec<String> = if v.is_empty() {
        vec!["0".into(), "1".into(), " ".into()]
    } else {
        let mut s = vec![
            format!("0{v}"),
            format!("+{v}"),
            format!(" {v}"),
            format!("{v} "),
        ];
        if v.to_uppercase() != v {
            s.push(v.to_uppercase());
        }
        s
    };
    for spelling in spellings {
        let mut w = wrapped.clone();
        w.key_version = spelling.clone();
        match backend.unwrap(&w, &ctx).await {
            Ok(_) => panic!("unwrap with key version {spelling:?} (written {v:?}) succeeded"),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::Integrity,
                "key version {spelling:?}: {e}"
            ),
        }
    }
}

/// A disabled key refuses to wrap and unwrap with `KeyRevoked`, and works again once enabled.
pub async fn disabled_key_is_revoked(backend: &dyn KmsBackend, control: &dyn KeyStateControl) {
    let (c, k) = ids("conformance-disabled", "conformance");
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().expect("rng");
    let wrapped = backend.wrap(&dek, &ctx).await.expect("wrap failed");
    control.disable_key().await.expect("disable failed");
    let wrap = backend.wrap(&dek, &ctx).await;
    let unwrap = backend.unwrap(&wrapped, &ctx).await;
    control.enable_key().await.expect("enable failed");
    assert_eq!(
        wrap.err().map(|e| e.kind()),
        Some(ErrorKind::KeyRevoked),
        "wrap on a disabled key"
    );
    assert_eq!(
        unwrap.err().map(|e| e.kind()),
        Some(ErrorKind::KeyRevoked),
        "unwrap on a disabled key"
    );
    let back = backend
        .unwrap(&wrapped, &ctx)
        .await
        .expect("unwrap after enabling failed");
    assert_eq!(back.expose_secret(), dek.expose_secret());
}

/// 16 tasks wrap and unwrap at once, each under its own compartment.
pub async fn concurrent_use(backend: Arc<dyn KmsBackend>) {
    let mut tasks = Vec::new();
    for t in 0..16 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let (c, k) = ids(&format!("conformance-concurrent-{t}"), "conformance");
            let ctx = WrapContext::new(&c, &k);
            for _ in 0..4 {
                let dek = DataKey::generate().expect("rng");
                let w = backend
                    .wrap(&dek, &ctx)
                    .await
                    .expect("concurrent wrap failed");
                let back = backend
                    .unwrap(&w, &ctx)
                    .await
                    .expect("concurrent unwrap failed");
                assert_eq!(back.expose_secret(), dek.expose_secret());
            }
        }));
    }
    for t in tasks {
        t.await.expect("a concurrent task panicked");
    }
}
