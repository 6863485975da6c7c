//! The [`Client`]: envelope encryption for many compartments over one data-key cache.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use coarsetime::Instant as CoarseInstant;

use futures_util::FutureExt;
use rand::Rng as _;

use crate::cache::{
    ActiveDek, CacheConfig, Counters, DecryptCache, DekSource, EncryptCache, LoadedDek, OpenDek,
    Reservation, SingleFlight, Stats,
};
use crate::cipher::{CipherProvider, MAX_PLAINTEXT_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{DekRecord, Form, Preamble, Suite, sha256, split_body};
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::key::{DataKey, DekMaterial};
use crate::kms::{KeyResolver, KmsBackend, RetryPolicy, StaticKey, WrapContext};
use crate::store::DekStore;

/// The suite new envelopes are written with.
const SUITE: Suite = Suite::Aes256GcmHkdfSha256;

/// Encrypts and decrypts data of many compartments under their customers' keys.
///
/// Cheap to clone (an `Arc` inside) and safe to share across tasks. Per compartment it keeps one
/// active data key (DEK), wrapped once by the compartment's KMS key and reused until a
/// [`CacheConfig`] limit; decryption keeps unwrapped DEKs by id. So the hot path is an in-process
/// AES-256-GCM call, and the KMS sees about one call per compartment per `encrypt_max_age`.
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

/// Builds a [`Client`].
#[derive(Default)]
pub struct ClientBuilder {
    resolver: Option<Arc<dyn KeyResolver>>,
    store: Option<Arc<dyn DekStore>>,
    cache: CacheConfig,
    retry: RetryPolicy,
    cipher: CipherProvider,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("resolver", &self.resolver)
            .field("store", &self.store)
            .field("cache", &self.cache)
            .field("retry", &self.retry)
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl ClientBuilder {
    /// Puts every compartment under one key: `backend`, recorded in envelopes as `key_config`.
    #[must_use]
    pub fn key(mut self, key_config: KeyConfigId, backend: Arc<dyn KmsBackend>) -> Self {
        self.resolver = Some(Arc::new(StaticKey::new(key_config, backend)));
        self
    }

    /// Chooses keys per compartment through a resolver (a control plane's key attachments).
    #[must_use]
    pub fn key_resolver(mut self, resolver: Arc<dyn KeyResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Persists DEK records here; required for compact envelopes.
    #[must_use]
    pub fn dek_store(mut self, store: Arc<dyn DekStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets the cache limits.
    #[must_use]
    pub fn cache(mut self, config: CacheConfig) -> Self {
        self.cache = config;
        self
    }

    /// Sets how KMS calls are retried and timed out.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Chooses the AES-256-GCM implementation.
    #[must_use]
    pub fn cipher(mut self, provider: CipherProvider) -> Self {
        self.cipher = provider;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`] without a key or resolver, or with invalid cache limits.
    pub fn build(self) -> Result<Client> {
        let resolver = self.resolver.ok_or_else(|| {
            Error::configuration("no key: call ClientBuilder::key or ClientBuilder::key_resolver")
        })?;
        self.cache.validate()?;
        let counters = Counters::default();
        Ok(Client {
            inner: Arc::new(Inner {
                enc: EncryptCache::new(&self.cache, counters.evictions.clone()),
                dec: DecryptCache::new(&self.cache, counters.evictions.clone()),
                resolver,
                store: self.store,
                config: self.cache,
                retry: self.retry,
                cipher: self.cipher,
                enc_flights: SingleFlight::default(),
                dec_flights: SingleFlight::default(),
                revoked: RwLock::default(),
                counters,
            }),
        })
    }
}

struct Inner {
    resolver: Arc<dyn KeyResolver>,
    store: Option<Arc<dyn DekStore>>,
    config: CacheConfig,
    retry: RetryPolicy,
    cipher: CipherProvider,
    enc: EncryptCache,
    dec: DecryptCache,
    enc_flights: SingleFlight<CompartmentId, Arc<ActiveDek>>,
    dec_flights: SingleFlight<(DekId, DekSource), Arc<OpenDek>>,
    revoked: RwLock<HashSet<KeyConfigId>>,
    counters: Counters,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("resolver", &self.inner.resolver)
            .field("store", &self.inner.store)
            .field("cache", &self.inner.config)
            .field("cipher", &self.inner.cipher)
            .field("stats", &self.inner.counters)
            .finish()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Encrypts `plaintext` of `compartment` into a self-contained envelope, binding `aad`
    /// (which must be passed again to decrypt, and is not stored).
    ///
    /// # Errors
    /// KMS errors when a new DEK is needed ([`ErrorKind::KeyRevoked`], permission, throttled,
    /// transient after retries), [`ErrorKind::InvalidInput`] for a plaintext over 64 GiB.
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
        match self.try_encrypt_cached(Form::SelfContained, compartment, plaintext, aad, out) {
            Ok(sealed) => sealed,
            Err(stale) => {
                self.encrypt_slow(Form::SelfContained, compartment, plaintext, aad, out, stale)
                    .await
            }
        }
    }

    /// Encrypts into a compact envelope (48 bytes of overhead): only the DEK id travels; the
    /// wrapped DEK is in the [`DekStore`], written before the first envelope under it.
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`] when no DEK store is set; otherwise as for [`Client::encrypt`].
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
        if self.inner.store.is_none() {
            return Err(Error::configuration(
                "compact envelopes need a DEK store: set one with ClientBuilder::dek_store",
            ));
        }
        match self.try_encrypt_cached(Form::Compact, compartment, plaintext, aad, out) {
            Ok(sealed) => sealed,
            Err(stale) => {
                self.encrypt_slow(Form::Compact, compartment, plaintext, aad, out, stale)
                    .await
            }
        }
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
        if self.inner.store.is_none() {
            return Err(Error::configuration(
                "compact envelopes need a DEK store: set one with ClientBuilder::dek_store",
            ));
        }
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
        if len > MAX_PLAINTEXT_LEN {
            return Err(Error::invalid_input("plaintext longer than 64 GiB"));
        }
        let cached = self
            .inner
            .with_cached_encryption_dek(compartment, len, |dek| {
                seal_detached(dek, form, buf, aad, header_out)
            });
        match cached {
            Ok(sealed) => sealed,
            Err(stale) => {
                let active = self
                    .inner
                    .encryption_dek_slow(compartment, len, stale)
                    .boxed()
                    .await?;
                seal_detached(&active.dek, form, buf, aad, header_out)
            }
        }
    }

    /// The hot path: seals with the cached DEK in place (no await, no allocation, no reference
    /// counting). `Err` carries the id of an exhausted DEK (or `None`) for the slow path.
    #[inline]
    fn try_encrypt_cached(
        &self,
        form: Form,
        compartment: &CompartmentId,
        plaintext: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<Result<()>, Option<DekId>> {
        let len = plaintext.len() as u64;
        if len > MAX_PLAINTEXT_LEN {
            return Ok(Err(Error::invalid_input("plaintext longer than 64 GiB")));
        }
        self.inner
            .with_cached_encryption_dek(compartment, len, |dek| {
                seal_envelope(dek, form, plaintext, aad, out)
            })
    }

    /// Makes a new DEK (one KMS call per compartment, shared by concurrent callers) and seals.
    #[cold]
    async fn encrypt_slow(
        &self,
        form: Form,
        compartment: &CompartmentId,
        plaintext: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
        stale: Option<DekId>,
    ) -> Result<()> {
        let active = self
            .inner
            .encryption_dek_slow(compartment, plaintext.len() as u64, stale)
            .boxed()
            .await?;
        seal_envelope(&active.dek, form, plaintext, aad, out)
    }

    /// Decrypts an envelope (either form) of `compartment`, checking `aad`.
    ///
    /// # Errors
    /// [`ErrorKind::Integrity`] if anything was altered or the AAD or compartment differ;
    /// [`ErrorKind::InvalidInput`] for bytes that are not a v1 envelope; [`ErrorKind::NotFound`]
    /// for a compact envelope whose DEK record is missing; KMS errors when the DEK must be
    /// unwrapped ([`ErrorKind::KeyRevoked`] once the key is disabled).
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
        let result = match self.try_decrypt_cached(compartment, envelope, aad, out) {
            Some(opened) => opened,
            None => self.decrypt_slow(compartment, envelope, aad, out).await,
        };
        if result.is_err() {
            out.clear();
        }
        result
    }

    /// The hot path: opens with the cached DEK in place; `None` on a cache miss.
    #[inline]
    fn try_decrypt_cached(
        &self,
        compartment: &CompartmentId,
        envelope: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Result<()>> {
        let pre = match peek_envelope(envelope) {
            Ok(pre) => pre,
            Err(e) => return Some(Err(e)),
        };
        self.inner
            .with_cached_decryption_dek(compartment, &pre, |dek| {
                header_fits(dek, envelope, pre.form)
                    .then(|| open_into(dek, pre.form, envelope, aad, out))
            })
    }

    /// Loads (and unwraps) the DEK, then opens.
    #[cold]
    async fn decrypt_slow(
        &self,
        compartment: &CompartmentId,
        envelope: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let pre = peek_envelope(envelope)?;
        let open = self
            .inner
            .load_decryption_dek(compartment, envelope, pre)
            .boxed()
            .await?;
        open_into(&open.dek, pre.form, envelope, aad, out)
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
        let pre = peek_envelope(envelope)?;
        let hit = self
            .inner
            .with_cached_decryption_dek(compartment, &pre, |dek| {
                header_fits(dek, envelope, pre.form)
                    .then(|| open_in_place(dek, pre.form, envelope, aad))
            });
        let range = match hit {
            Some(opened) => opened?,
            None => {
                let open = self
                    .inner
                    .load_decryption_dek(compartment, envelope, pre)
                    .boxed()
                    .await?;
                open_in_place(&open.dek, pre.form, envelope, aad)?
            }
        };
        Ok(&mut envelope[range])
    }

    /// See [`crate::internal::partner_tag`].
    pub(crate) async fn partner_tag(
        &self,
        compartment: &CompartmentId,
        envelope: &[u8],
        aad: &[u8],
    ) -> Result<[u8; TAG_LEN]> {
        let pre = peek_envelope(envelope)?;
        let open = self
            .inner
            .load_decryption_dek(compartment, envelope, pre)
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
        self.inner.enc.map.remove(compartment);
        self.inner
            .dec
            .map
            .retain(|_, open| open.dek.compartment != *compartment);
    }

    /// Treats `key_config` as revoked by this client: new encryptions under it fail at once with
    /// [`ErrorKind::KeyRevoked`]; decryptions fail at once or once cached DEKs expire, per `mode`.
    /// Lasts until [`Client::reinstate`].
    pub fn revoke(&self, key_config: &KeyConfigId, mode: RevokeMode) {
        if let Ok(mut revoked) = self.inner.revoked.write() {
            revoked.insert(key_config.clone());
        }
        self.inner.drop_encryption_deks(key_config);
        if mode == RevokeMode::Immediately {
            self.inner
                .dec
                .map
                .retain(|_, open| open.dek.key_config != *key_config);
        }
        tracing::info!(key_config = %key_config, ?mode, "key configuration revoked");
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
        let mut s = self.inner.counters.snapshot();
        let mut encryptions = self
            .inner
            .counters
            .retired_encryptions
            .load(std::sync::atomic::Ordering::Relaxed);
        self.inner
            .enc
            .map
            .for_each(|_, active| encryptions += active.messages());
        s.encrypt_hits = encryptions.saturating_sub(s.encrypt_misses);
        s.encrypt_entries = self.inner.enc.map.len() as u64;
        s.decrypt_entries = self.inner.dec.map.len() as u64;
        s
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

/// Writes header (or compact preamble), a fresh random nonce, ciphertext and tag into `out`.
#[inline]
fn seal_envelope(
    dek: &LoadedDek,
    form: Form,
    plaintext: &[u8],
    aad: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let (header, digest) = dek.header_for(form);
    let body_at = header.len() + NONCE_LEN;
    overwrite_len(out, body_at + plaintext.len() + TAG_LEN);
    out[..header.len()].copy_from_slice(header);
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    out[header.len()..body_at].copy_from_slice(&nonce);
    let sealed = with_aad(digest, aad, |aad| {
        dek.material
            .cipher
            .seal(&nonce, aad, plaintext, &mut out[body_at..])
    });
    if sealed.is_err() {
        out.clear();
    }
    sealed
}

/// Seals `buf` in place; `header_out` gets the header and nonce.
#[inline]
fn seal_detached(
    dek: &LoadedDek,
    form: Form,
    buf: &mut [u8],
    aad: &[u8],
    header_out: &mut Vec<u8>,
) -> Result<[u8; TAG_LEN]> {
    let (header, digest) = dek.header_for(form);
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    header_out.clear();
    header_out.extend_from_slice(header);
    header_out.extend_from_slice(&nonce);
    with_aad(digest, aad, |aad| {
        dek.material.cipher.seal_in_place(&nonce, aad, buf)
    })
}

/// Decrypts the body of `envelope` into `out`.
#[inline]
fn open_into(
    dek: &LoadedDek,
    form: Form,
    envelope: &[u8],
    aad: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let (header, digest) = dek.header_for(form);
    let body = split_body(&envelope[header.len()..])?;
    overwrite_len(out, body.ciphertext.len());
    with_aad(digest, aad, |aad| {
        dek.material
            .cipher
            .open(body.nonce, aad, body.ciphertext, body.tag, out)
    })
}

/// Decrypts the body of `envelope` in place; returns where the plaintext is.
#[inline]
fn open_in_place(
    dek: &LoadedDek,
    form: Form,
    envelope: &mut [u8],
    aad: &[u8],
) -> Result<std::ops::Range<usize>> {
    let (header, digest) = dek.header_for(form);
    let start = header.len() + NONCE_LEN;
    if envelope.len() < start + TAG_LEN {
        return Err(Error::invalid_input("truncated envelope"));
    }
    let end = envelope.len() - TAG_LEN;
    let (head, rest) = envelope.split_at_mut(start);
    let (ciphertext, tag) = rest.split_at_mut(end - start);
    let nonce: &[u8; NONCE_LEN] = head[header.len()..]
        .try_into()
        .map_err(|_| Error::integrity())?;
    let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| Error::integrity())?;
    with_aad(digest, aad, |aad| {
        dek.material
            .cipher
            .open_in_place(nonce, aad, ciphertext, tag)
    })?;
    Ok(start..end)
}

/// The preamble of something passed to decrypt, which must be an envelope.
#[inline]
fn peek_envelope(envelope: &[u8]) -> Result<Preamble> {
    let pre = Preamble::peek(envelope)?;
    if pre.form == Form::DekRecord {
        return Err(Error::invalid_input("a DEK record is not an envelope"));
    }
    Ok(pre)
}

/// Whether `envelope` carries exactly `dek`'s header (always true for compact envelopes, whose
/// only header field, the DEK id, is the cache key).
#[inline]
fn header_fits(dek: &LoadedDek, envelope: &[u8], form: Form) -> bool {
    form == Form::Compact || envelope.starts_with(&dek.header)
}

/// Sets `out`'s length to `len` without zero-filling bytes that are about to be overwritten
/// (only growth beyond the old length is filled).
#[inline]
fn overwrite_len(out: &mut Vec<u8>, len: usize) {
    if out.len() >= len {
        out.truncate(len);
    } else {
        out.resize(len, 0);
    }
}

/// Calls `f` with `digest || aad`, the AES-GCM additional data, on the stack when it is short.
#[inline]
fn with_aad<T>(digest: &[u8; 32], aad: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    #[inline(always)]
    fn on_stack<const N: usize, T>(digest: &[u8; 32], aad: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
        let len = digest.len() + aad.len();
        let mut buf = [0u8; N];
        buf[..32].copy_from_slice(digest);
        buf[32..len].copy_from_slice(aad);
        f(&buf[..len])
    }
    match aad.len() {
        0..=32 => on_stack::<64, T>(digest, aad, f),
        33..=224 => on_stack::<256, T>(digest, aad, f),
        _ => {
            let mut buf = Vec::with_capacity(32 + aad.len());
            buf.extend_from_slice(digest);
            buf.extend_from_slice(aad);
            f(&buf)
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum KmsOp {
    Wrap,
    Unwrap,
}

impl Inner {
    /// Runs `f` with the cached DEK of `compartment` if it may take one more message of `len`
    /// bytes; otherwise returns the id of the exhausted DEK (or `None` if there is none).
    #[inline]
    fn with_cached_encryption_dek<R>(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        len: u64,
        f: impl FnOnce(&LoadedDek) -> R,
    ) -> std::result::Result<R, Option<DekId>> {
        self.enc
            .map
            .with(compartment, |active| {
                match active.reserve(len, CoarseInstant::now(), &self.enc.limits) {
                    Reservation::Granted => {}
                    Reservation::GrantedRefreshDue => {
                        self.refresh_encryption_dek(compartment, active)
                    }
                    Reservation::Exhausted => return Err(Some(active.dek.id)),
                }
                Ok(f(&active.dek))
            })
            .unwrap_or(Err(None))
    }

    #[cold]
    async fn encryption_dek_slow(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        len: u64,
        mut stale: Option<DekId>,
    ) -> Result<Arc<ActiveDek>> {
        Counters::bump(&self.counters.encrypt_misses);
        for _ in 0..8 {
            let active = self.new_encryption_dek(compartment, stale).await?;
            match active.reserve(len, CoarseInstant::now(), &self.enc.limits) {
                Reservation::Granted | Reservation::GrantedRefreshDue => return Ok(active),
                Reservation::Exhausted => stale = Some(active.dek.id),
            }
        }
        Err(Error::transient(
            "data keys are used up faster than they are made; raise encrypt_max_messages",
        ))
    }

    /// Single-flight creation of a new DEK for `compartment`, replacing `stale`.
    async fn new_encryption_dek(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        stale: Option<DekId>,
    ) -> Result<Arc<ActiveDek>> {
        let inner = self.clone();
        let c = compartment.clone();
        self.enc_flights
            .run(compartment.clone(), move || {
                inner.create_encryption_dek(c, stale).boxed()
            })
            .await
    }

    async fn create_encryption_dek(
        self: Arc<Self>,
        compartment: CompartmentId,
        stale: Option<DekId>,
    ) -> Result<Arc<ActiveDek>> {
        if let Some(current) = self.enc.map.get(&compartment)
            && Some(current.dek.id) != stale
            && current.is_usable(CoarseInstant::now(), &self.enc.limits)
        {
            return Ok(current);
        }
        let binding = self.resolver.encryption_key(&compartment).await?;
        self.ensure_not_revoked(&binding.key_config)?;
        let dek = DataKey::generate()?;
        let dek_id = DekId::random()?;
        let context = WrapContext::new(&compartment, &binding.key_config);
        let wrapped = self
            .kms_call(&binding.key_config, KmsOp::Wrap, || {
                binding.backend.wrap(&dek, &context)
            })
            .await?;
        DekRecord::check_encodable(&wrapped)?;
        if wrapped.provider != binding.backend.provider() {
            return Err(Error::configuration(
                "backend returned a wrapped key of another provider",
            ));
        }
        let (material, commitment) = DekMaterial::derive(&dek, &dek_id, SUITE, self.cipher)?;
        drop(dek);
        let record = DekRecord {
            suite: SUITE,
            dek_id,
            compartment: compartment.clone(),
            key_config: binding.key_config.clone(),
            wrapped,
            commitment,
        };
        if let Some(store) = &self.store {
            store.put(&record).await?;
        }
        // A revoke() may have raced with the KMS call.
        self.ensure_not_revoked(&binding.key_config)?;
        let loaded = Arc::new(LoadedDek::new(&record, material));
        let now = CoarseInstant::now();
        let active = Arc::new(ActiveDek::new(
            loaded.clone(),
            now,
            &self.enc.limits,
            self.counters.retired_encryptions.clone(),
        ));
        self.enc.map.insert(compartment.clone(), active.clone());
        self.dec.map.insert(
            dek_id,
            Arc::new(OpenDek::new(loaded, now, &self.dec.limits)),
        );
        Counters::bump(&self.counters.deks_created);
        tracing::debug!(compartment = %compartment, dek_id = %dek_id, key_config = %binding.key_config, "new data key");
        Ok(active)
    }

    /// Starts preparing the next DEK in the background, once per DEK.
    fn refresh_encryption_dek(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        active: &Arc<ActiveDek>,
    ) {
        if !active.claim_refresh() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            active.release_refresh();
            return;
        };
        Counters::bump(&self.counters.refreshes);
        let (inner, compartment, active) = (self.clone(), compartment.clone(), active.clone());
        runtime.spawn(async move {
            if let Err(e) = inner.new_encryption_dek(&compartment, Some(active.dek.id)).await {
                tracing::warn!(compartment = %compartment, error = %e,
                    "background data-key refresh failed; the current key stays in use until its limit");
                tokio::time::sleep(inner.retry.max_backoff).await;
                active.release_refresh();
            }
        });
    }

    /// Runs `f` with the cached DEK named by `pre` if it is fresh and of `compartment`; `f`
    /// returns `None` when the envelope's header does not match (a miss).
    #[inline]
    fn with_cached_decryption_dek<R>(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        pre: &Preamble,
        f: impl FnOnce(&LoadedDek) -> Option<R>,
    ) -> Option<R> {
        self.dec
            .map
            .with(&pre.dek_id, |open| {
                let now = CoarseInstant::now();
                if !open.is_fresh(now) || open.dek.compartment != *compartment {
                    return None;
                }
                let out = f(&open.dek)?;
                self.counters.decrypt_hits.incr();
                if open.refresh_due(now) {
                    self.refresh_decryption_dek(open);
                }
                Some(out)
            })
            .flatten()
    }

    #[cold]
    async fn load_decryption_dek(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        envelope: &[u8],
        pre: Preamble,
    ) -> Result<Arc<OpenDek>> {
        Counters::bump(&self.counters.decrypt_misses);
        let (source, inline) = match pre.form {
            Form::SelfContained => {
                let (_, record, used) = DekRecord::decode(envelope)?;
                if record.compartment != *compartment {
                    return Err(Error::integrity());
                }
                (
                    DekSource::Inline(sha256(&[&envelope[..used]])),
                    Some(record),
                )
            }
            _ => (DekSource::Stored(compartment.clone()), None),
        };
        let inner = self.clone();
        let (c, dek_id) = (compartment.clone(), pre.dek_id);
        let open = self
            .dec_flights
            .run((pre.dek_id, source), move || {
                async move {
                    let record = match inline {
                        Some(record) => record,
                        None => inner.stored_record(&c, &dek_id).await?,
                    };
                    inner.open_record(record).await
                }
                .boxed()
            })
            .await?;
        if open.dek.compartment != *compartment || !header_fits(&open.dek, envelope, pre.form) {
            return Err(Error::integrity());
        }
        Ok(open)
    }

    async fn stored_record(
        &self,
        compartment: &CompartmentId,
        dek_id: &DekId,
    ) -> Result<DekRecord> {
        let store = self.store.as_ref().ok_or_else(|| {
            Error::configuration(
                "compact envelopes need a DEK store: set one with ClientBuilder::dek_store",
            )
        })?;
        let record = store.get(compartment, dek_id).await?.ok_or_else(|| {
            Error::not_found(format!(
                "no DEK record {dek_id} for compartment {compartment}"
            ))
        })?;
        if record.compartment != *compartment || record.dek_id != *dek_id {
            return Err(Error::integrity());
        }
        Ok(record)
    }

    /// Unwraps a DEK record and puts it in the decryption cache.
    async fn open_record(self: &Arc<Self>, record: DekRecord) -> Result<Arc<OpenDek>> {
        let material = self.unwrap_record(&record).await?;
        self.ensure_not_revoked(&record.key_config)?;
        let open = Arc::new(OpenDek::new(
            Arc::new(LoadedDek::new(&record, material)),
            CoarseInstant::now(),
            &self.dec.limits,
        ));
        self.dec.map.insert(record.dek_id, open.clone());
        Ok(open)
    }

    /// Unwraps a DEK record through its backend and checks the key commitment.
    async fn unwrap_record(&self, record: &DekRecord) -> Result<DekMaterial> {
        self.ensure_not_revoked(&record.key_config)?;
        let backend = self
            .resolver
            .decryption_key(&record.compartment, &record.key_config)
            .await?;
        if backend.provider() != record.wrapped.provider {
            return Err(Error::integrity());
        }
        let context = WrapContext::new(&record.compartment, &record.key_config);
        let dek = self
            .kms_call(&record.key_config, KmsOp::Unwrap, || {
                backend.unwrap(&record.wrapped, &context)
            })
            .await?;
        DekMaterial::derive_committed(
            &dek,
            &record.dek_id,
            record.suite,
            self.cipher,
            &record.commitment,
        )
    }

    /// Re-unwraps a cached DEK in the background before it expires: keeps hot DEKs cached and
    /// notices a revoked key (the entry is dropped at once).
    fn refresh_decryption_dek(self: &Arc<Self>, open: &Arc<OpenDek>) {
        if !open.claim_refresh() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            open.release_refresh();
            return;
        };
        if self.is_revoked(&open.dek.key_config) {
            return; // let it expire
        }
        Counters::bump(&self.counters.refreshes);
        let (inner, open) = (self.clone(), open.clone());
        runtime.spawn(async move {
            let outcome = match open.dek.record() {
                Ok(record) => inner.unwrap_record(&record).await.map(drop),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    let fresh = Arc::new(OpenDek::new(
                        open.dek.clone(),
                        CoarseInstant::now(),
                        &inner.dec.limits,
                    ));
                    inner.dec.map.insert(open.dek.id, fresh);
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(dek_id = %open.dek.id, error = %e, "background unwrap failed; the cached key stays until it expires");
                    tokio::time::sleep(inner.retry.max_backoff).await;
                    open.release_refresh();
                }
                Err(e) => {
                    tracing::warn!(dek_id = %open.dek.id, error = %e, "cached data key dropped: the KMS no longer unwraps it");
                    inner.dec.map.remove_if(&open.dek.id, |cur| Arc::ptr_eq(cur, &open));
                }
            }
        });
    }

    /// Calls the KMS with retries, counting and tracing every attempt.
    async fn kms_call<T, F, Fut>(&self, key_config: &KeyConfigId, op: KmsOp, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let counter = match op {
            KmsOp::Wrap => &self.counters.kms_wrap_calls,
            KmsOp::Unwrap => &self.counters.kms_unwrap_calls,
        };
        let started = Instant::now();
        let outcome = self
            .retry
            .run(call, |attempt| {
                Counters::bump(counter);
                if attempt.is_err() {
                    Counters::bump(&self.counters.kms_errors);
                }
            })
            .await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match &outcome {
            Ok(_) => {
                tracing::debug!(?op, key_config = %key_config, elapsed_ms, "KMS call succeeded")
            }
            Err(e) => {
                tracing::warn!(?op, key_config = %key_config, elapsed_ms, error = %e, "KMS call failed");
                if e.kind() == ErrorKind::KeyRevoked {
                    Counters::bump(&self.counters.revocations_detected);
                    self.drop_encryption_deks(key_config);
                }
            }
        }
        outcome
    }

    /// Stops new encryptions under `key_config` at once.
    fn drop_encryption_deks(&self, key_config: &KeyConfigId) {
        self.enc
            .map
            .retain(|_, active| active.dek.key_config != *key_config);
    }

    fn is_revoked(&self, key_config: &KeyConfigId) -> bool {
        self.revoked
            .read()
            .map(|r| r.contains(key_config))
            .unwrap_or(true)
    }

    fn ensure_not_revoked(&self, key_config: &KeyConfigId) -> Result<()> {
        if self.is_revoked(key_config) {
            Err(Error::revoked(format!(
                "key configuration {key_config} is revoked"
            )))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrite_len_only_grows_with_zeros() {
        let mut v = vec![7u8; 10];
        overwrite_len(&mut v, 4);
        assert_eq!(v, [7, 7, 7, 7]);
        overwrite_len(&mut v, 6);
        assert_eq!(v, [7, 7, 7, 7, 0, 0]);
    }

    #[test]
    fn aad_is_digest_then_caller_aad_for_any_length() {
        let digest = [1u8; 32];
        for n in [0usize, 1, 224, 225, 5000] {
            let aad = vec![2u8; n];
            with_aad(&digest, &aad, |full| {
                assert_eq!(full.len(), 32 + n);
                assert_eq!(&full[..32], &digest);
                assert!(full[32..].iter().all(|&b| b == 2));
            });
        }
    }
}
