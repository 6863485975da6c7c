//! The [`Client`]: envelope encryption for many compartments over one data-key cache.
//!
//! `mod.rs` holds the public API and its two hit/miss ladders, `builder.rs` its construction,
//! `inner.rs` the shared state and key events, `encrypting.rs` and `decrypting.rs` the slow
//! paths (KMS calls, DEK creation and loading, refresh, degraded mode, retirement), and
//! `seal.rs` the per-message byte work of the hot path.

mod builder;
mod creations;
mod decrypting;
mod encrypting;
mod inner;
mod seal;
mod streams;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

pub use builder::ClientBuilder;
use inner::Inner;
use seal::{
    header_fits, open_in_place, open_into, peek_envelope, seal_detached, seal_envelope, with_aad,
};

use crate::cache::{CacheConfig, LoadedDek, Stats};
use crate::cipher::{CipherProvider, MAX_PLAINTEXT_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::{Form, split_body};
use crate::ids::{CompartmentId, KeyConfigId};
use crate::kms::health::{KeyHealth, KeyListener};

/// Encrypts and decrypts data of many compartments under their customers' keys.
///
/// Cheap to clone (an `Arc` inside) and safe to share across tasks. Per compartment it keeps one
/// active data key (DEK), wrapped once by the compartment's KMS key and reused until a
/// [`CacheConfig`] limit; decryption keeps unwrapped DEKs by id. So the hot path is an in-process
/// AES-256-GCM call, and the KMS sees about one call per compartment per `encrypt_max_age`.
///
/// <div class="warning">
///
/// Nonces are drawn from the thread-local CSPRNG (`rand::ThreadRng`, ChaCha12 seeded from the
/// OS). Do not `fork` a process that has used a `Client` and go on encrypting in parent and child:
/// both would hold the same cached DEKs and the same generator state. Build clients after forking.
///
/// </div>
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cmek::Result<()> {
/// use std::sync::Arc;
/// use cmek::{Client, CompartmentId, KeyConfigId, LocalKms};
///
/// let kms = LocalKms::generate("local:example")?;
/// let client = Client::builder()
///     .key(KeyConfigId::new("local")?, Arc::new(kms))
///     .build()?;
/// let tenant = CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c")?;
///
/// let envelope = client.encrypt(&tenant, b"hello", b"object/42").await?;
/// assert_eq!(client.decrypt(&tenant, &envelope, b"object/42").await?, b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The deadline of each operation that has to ask the KMS.
    deadline: Duration,
}

/// How a revoked key configuration treats DEKs that are already unwrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokeMode {
    /// Drop cached DEKs at once: data under the key is unreadable from now on.
    Immediately,
    /// Stop new encryptions at once; cached DEKs keep decrypting until they expire
    /// ([`CacheConfig::decrypt_max_age`]) and are not refreshed.
    WhenCachedKeysExpire,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("resolver", &self.inner.resolver)
            .field("store", &self.inner.store)
            .field("cache", &self.inner.config)
            .field("cipher", &self.inner.cipher)
            .field("stats", &self.inner.counters)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The same client (same cache, same keys) with another deadline for each operation that
    /// has to ask the KMS: every attempt and backoff counts against it, and a caller waiting on
    /// another caller's KMS call waits no longer than its own deadline. (A zero deadline fails
    /// every call that needs the KMS; cached data keys are used as ever.)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cmek::Result<()> {
    /// # use std::{sync::Arc, time::Duration};
    /// # let client = cmek::Client::builder()
    /// #     .key(cmek::KeyConfigId::new("local")?, Arc::new(cmek::LocalKms::generate("local:k")?))
    /// #     .build()?;
    /// # let tenant = cmek::CompartmentId::new("t")?;
    /// let envelope = client
    ///     .with_deadline(Duration::from_millis(250))
    ///     .encrypt(&tenant, b"hello", b"")
    ///     .await?;
    /// # let _ = envelope; Ok(()) }
    /// ```
    #[must_use]
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            deadline,
        }
    }

    /// When an operation that starts now must end.
    fn deadline(&self) -> Instant {
        Instant::now() + self.deadline
    }

    /// Encrypts `plaintext` of `compartment` into a self-contained envelope, binding `aad`
    /// (which must be passed again to decrypt, and is not stored).
    ///
    /// # Errors
    /// KMS errors when a new DEK is needed ([`KeyRevoked`](crate::ErrorKind::KeyRevoked),
    /// permission, throttled, transient after retries);
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a plaintext over 64 GiB.
    pub async fn encrypt(
        &self,
        compartment: &CompartmentId,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encrypt_into(compartment, plaintext, aad, &mut out)
            .await?;
        Ok(out)
    }

    /// Like [`Client::encrypt`], but writes the envelope into `out`, replacing its contents and
    /// reusing its allocation: the hot-path variant.
    ///
    /// # Errors
    /// As for [`Client::encrypt`].
    pub async fn encrypt_into(
        &self,
        compartment: &CompartmentId,
        plaintext: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.encrypt_as(Form::SelfContained, compartment, plaintext, aad, out)
            .await
    }

    /// Encrypts into a compact envelope (48 bytes of overhead): only the DEK id travels; the
    /// wrapped DEK is in the [`DekStore`](crate::DekStore), written before the first envelope
    /// under it.
    ///
    /// # Errors
    /// [`Configuration`](crate::ErrorKind::Configuration) when no DEK store is set; otherwise as
    /// for [`Client::encrypt`].
    pub async fn encrypt_compact(
        &self,
        compartment: &CompartmentId,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encrypt_compact_into(compartment, plaintext, aad, &mut out)
            .await?;
        Ok(out)
    }

    /// Like [`Client::encrypt_compact`], writing into `out` and reusing its allocation.
    ///
    /// # Errors
    /// As for [`Client::encrypt_compact`].
    pub async fn encrypt_compact_into(
        &self,
        compartment: &CompartmentId,
        plaintext: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.require_store()?;
        self.encrypt_as(Form::Compact, compartment, plaintext, aad, out)
            .await
    }

    /// Encrypts `buf` in place into a self-contained envelope whose parts are returned apart, for
    /// vectored writes with no copy of the data: the envelope is `header || buf || tag`, where
    /// `header` (header and nonce) replaces the contents of `header_out` and the tag is returned.
    ///
    /// # Errors
    /// As for [`Client::encrypt`].
    pub async fn encrypt_in_place_detached(
        &self,
        compartment: &CompartmentId,
        buf: &mut [u8],
        aad: &[u8],
        header_out: &mut Vec<u8>,
    ) -> Result<[u8; TAG_LEN]> {
        self.seal_in_place_as(Form::SelfContained, compartment, buf, aad, header_out)
            .await
    }

    /// Like [`Client::encrypt_in_place_detached`] for a compact envelope (`header_out` gets the
    /// 32 bytes of preamble, DEK id and nonce).
    ///
    /// # Errors
    /// As for [`Client::encrypt_compact`].
    pub async fn encrypt_compact_in_place_detached(
        &self,
        compartment: &CompartmentId,
        buf: &mut [u8],
        aad: &[u8],
        header_out: &mut Vec<u8>,
    ) -> Result<[u8; TAG_LEN]> {
        self.inner.require_store()?;
        self.seal_in_place_as(Form::Compact, compartment, buf, aad, header_out)
            .await
    }

    async fn seal_in_place_as(
        &self,
        form: Form,
        compartment: &CompartmentId,
        buf: &mut [u8],
        aad: &[u8],
        header_out: &mut Vec<u8>,
    ) -> Result<[u8; TAG_LEN]> {
        let len = buf.len() as u64;
        self.with_encryption_dek(compartment, len, |dek| {
            seal_detached(dek, form, buf, aad, header_out)
        })
        .await
    }

    /// Seals `plaintext` into `out` under the compartment's DEK.
    #[inline]
    async fn encrypt_as(
        &self,
        form: Form,
        compartment: &CompartmentId,
        plaintext: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.with_encryption_dek(compartment, plaintext.len() as u64, |dek| {
            seal_envelope(dek, form, plaintext, aad, out)
        })
        .await
    }

    /// The one hit/miss ladder of every encryption: runs `seal` with the cached DEK of
    /// `compartment` in place (no await, no allocation, no reference counting) if it may take a
    /// message of `len` bytes, or else with a new DEK from the slow path (one KMS call per
    /// compartment, shared by concurrent callers).
    #[inline]
    async fn with_encryption_dek<R>(
        &self,
        compartment: &CompartmentId,
        len: u64,
        mut seal: impl FnMut(&LoadedDek) -> Result<R>,
    ) -> Result<R> {
        if len > MAX_PLAINTEXT_LEN {
            return Err(Error::invalid_input("plaintext longer than 64 GiB"));
        }
        match self
            .inner
            .with_cached_encryption_dek(compartment, len, &mut seal)
        {
            Ok(sealed) => sealed,
            Err(stale) => {
                let active = self
                    .inner
                    .encryption_dek_slow(compartment, len, stale, self.deadline())
                    .boxed()
                    .await
                    .inspect_err(crate::telemetry::error)?;
                seal(&active.dek)
            }
        }
    }

    /// Decrypts an envelope (either form) of `compartment`, checking `aad`.
    ///
    /// # Errors
    /// [`Integrity`](crate::ErrorKind::Integrity) if anything was altered or the AAD or
    /// compartment differ; [`InvalidInput`](crate::ErrorKind::InvalidInput) for bytes that are
    /// not a v1 envelope; [`NotFound`](crate::ErrorKind::NotFound)
    /// for a compact envelope whose DEK record is missing; KMS errors when the DEK must be
    /// unwrapped ([`KeyRevoked`](crate::ErrorKind::KeyRevoked) once the key is disabled).
    pub async fn decrypt(
        &self,
        compartment: &CompartmentId,
        envelope: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decrypt_into(compartment, envelope, aad, &mut out)
            .await?;
        Ok(out)
    }

    /// Like [`Client::decrypt`], writing the plaintext into `out` (replacing its contents, reusing
    /// its allocation). On error `out` is empty: no partial plaintext is ever left behind.
    ///
    /// # Errors
    /// As for [`Client::decrypt`].
    pub async fn decrypt_into(
        &self,
        compartment: &CompartmentId,
        envelope: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let mut envelope = envelope;
        let result = self
            .with_decryption_dek(compartment, &mut envelope, |dek, form, envelope| {
                open_into(dek, form, envelope, aad, out)
            })
            .await;
        if result.is_err() {
            out.clear();
        }
        result
    }

    /// Decrypts an envelope in place and returns the plaintext, a sub-slice of `envelope`.
    /// On error the ciphertext part of `envelope` is wiped.
    ///
    /// # Errors
    /// As for [`Client::decrypt`].
    pub async fn decrypt_in_place<'a>(
        &self,
        compartment: &CompartmentId,
        envelope: &'a mut [u8],
        aad: &[u8],
    ) -> Result<&'a mut [u8]> {
        let range = self
            .with_decryption_dek(compartment, &mut *envelope, |dek, form, envelope| {
                open_in_place(dek, form, envelope, aad)
            })
            .await?;
        Ok(&mut envelope[range])
    }

    /// The one hit/miss ladder of every decryption: runs `open` with the DEK of `envelope`,
    /// cached (used in place) when its header fits, or else loaded and unwrapped on the slow
    /// path (one KMS call per DEK, shared by concurrent callers).
    #[inline]
    async fn with_decryption_dek<E, R>(
        &self,
        compartment: &CompartmentId,
        envelope: &mut E,
        mut open: impl FnMut(&LoadedDek, Form, &mut E) -> Result<R>,
    ) -> Result<R>
    where
        E: AsRef<[u8]> + ?Sized,
    {
        let result = async {
            let pre = peek_envelope(envelope.as_ref())?;
            let hit = self
                .inner
                .with_cached_decryption_dek(compartment, &pre, |dek| {
                    header_fits(dek, envelope.as_ref(), pre.form)
                        .then(|| open(dek, pre.form, envelope))
                });
            if let Some(opened) = hit {
                return opened;
            }
            let loaded = self
                .inner
                .load_decryption_dek(compartment, envelope.as_ref(), pre, self.deadline())
                .boxed()
                .await?;
            open(&loaded.dek, pre.form, envelope)
        }
        .await;
        result.inspect_err(crate::telemetry::error)
    }

    /// See [`crate::internal::partner_tag`].
    pub(crate) async fn partner_tag(
        &self,
        compartment: &CompartmentId,
        envelope: &[u8],
        aad: &[u8],
    ) -> Result<[u8; TAG_LEN]> {
        let pre = peek_envelope(envelope)?;
        if pre.form.is_streamed() {
            return Err(Error::invalid_input(
                "a streamed envelope has no single tag",
            ));
        }
        let open = self
            .inner
            .load_decryption_dek(compartment, envelope, pre, self.deadline())
            .boxed()
            .await?;
        let dek = &open.dek;
        let (header, digest) = dek.header_for(pre.form);
        let body = split_body(&envelope[header.len()..])?;
        let mut ciphertext = body.ciphertext.to_vec();
        with_aad(digest, aad, |aad| {
            dek.material
                .cipher
                .seal_in_place(body.nonce, aad, &mut ciphertext)
        })
    }

    /// Drops every cached DEK of `compartment`; its next encryption makes a new DEK.
    pub fn purge(&self, compartment: &CompartmentId) {
        self.inner.purge_encryption_dek(compartment);
        self.inner
            .dec
            .forget(|open| open.dek.compartment == *compartment);
    }

    /// Drops every cached DEK, for encryption and decryption: each compartment's next use
    /// asks its key resolver and KMS again (a node that missed changes resynchronises so).
    pub fn purge_all(&self) {
        self.inner.drop_all_encryption_deks();
        self.inner.dec.forget(|_| true);
    }

    /// Treats `key_config` as revoked by this client: new encryptions under it fail at once with
    /// [`KeyRevoked`](crate::ErrorKind::KeyRevoked); decryptions fail at once or once cached
    /// DEKs expire, per `mode`.
    /// Lasts until [`Client::reinstate`].
    pub fn revoke(&self, key_config: &KeyConfigId, mode: RevokeMode) {
        if let Ok(mut revoked) = self.inner.revoked.write() {
            revoked.insert(key_config.clone());
        }
        self.inner.drop_encryption_deks(key_config);
        if mode == RevokeMode::Immediately {
            self.inner
                .dec
                .forget(|open| open.dek.key_config == *key_config);
        }
        tracing::info!(key_config = %key_config, ?mode, "key configuration revoked");
    }

    /// Drops every cached DEK under `key_config`, for encryption and decryption, so that the
    /// next use of any asks its KMS again (another node saw the key revoked). Unlike
    /// [`Client::revoke`] it refuses nothing by itself.
    pub fn evict(&self, key_config: &KeyConfigId) {
        self.inner.drop_encryption_deks(key_config);
        self.inner
            .dec
            .forget(|open| open.dek.key_config == *key_config);
    }

    /// Drops cached encryption DEKs under `key_config`, so the next encryption of their
    /// compartments asks the key resolver again (after a key configuration was rotated or
    /// deleted). Decryption is untouched.
    pub fn retire(&self, key_config: &KeyConfigId) {
        self.inner.drop_encryption_deks(key_config);
    }

    /// Lifts a [`Client::revoke`].
    pub fn reinstate(&self, key_config: &KeyConfigId) {
        if let Ok(mut revoked) = self.inner.revoked.write() {
            revoked.remove(key_config);
        }
    }

    /// The cache's counters.
    ///
    /// Encryption hits are derived from the per-DEK message counts the limits need anyway, so
    /// the hot path does not pay for a second counter; they include messages under DEKs still
    /// cached or already dropped.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Every key this client has called, with what its last answers say (state, last success,
    /// last failure, degraded mode): the per-key health view for an operator.
    pub fn key_health(&self) -> Vec<KeyHealth> {
        self.inner.layers.health.snapshot()
    }

    /// Calls `listener` on every key event (state changes, degraded mode starting and ending),
    /// synchronously: it must not block.
    pub fn subscribe_key_events(&self, listener: KeyListener) {
        self.inner.layers.health.subscribe(listener);
    }

    /// The layers every KMS call of this client goes through (for the control plane's
    /// validation and rewrap, which call keys the same way).
    pub(crate) fn layers(&self) -> &crate::kms::layers::Layers {
        &self.inner.layers
    }

    /// The cache limits in force.
    pub fn cache_config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The AES-256-GCM implementation in use.
    pub fn cipher_provider(&self) -> CipherProvider {
        self.inner.cipher
    }
}
