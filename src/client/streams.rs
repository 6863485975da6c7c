//! Streamed objects on the client: writers hold a lease on the compartment's DEK, readers and
//! range reads find the DEK of an object's head through the same cache as envelopes.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use coarsetime::Instant as CoarseInstant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::Client;
use super::inner::Inner;
use crate::cache::{EncryptionLease, Reservation};
use crate::error::{Error, ErrorKind, Result};
use crate::format::stream_header_len;
use crate::ids::CompartmentId;
use crate::stream::{
    AsyncDecryptingReader, AsyncEncryptingWriter, BodyKey, ByteRange, ChunkBudget, RangeSource,
    StreamDecryptor, StreamEncryptor, StreamForm, new_body, open_body, read_head_async, read_range,
};

impl Client {
    /// Starts a streamed object of `compartment`, binding `aad`: a sans-I/O
    /// [`StreamEncryptor`] (wrap it with `into_writer` or `into_async_writer`).
    ///
    /// The object goes under the compartment's current DEK, as one message whatever its size;
    /// its bytes count against the DEK's byte limit. A writer stops at once when its DEK is
    /// retired (the client learned of a revocation, rotation or deletion, or the compartment
    /// was purged). Every half refresh age a long stream also asks, in the background, for the
    /// compartment's current encryption DEK; once that DEK is due for replacement the request
    /// reaches the KMS, so a key revoked while an object is written stops the writer within
    /// about one `encrypt_max_age`, like other writes.
    ///
    /// # Errors
    /// As for [`Client::encrypt`]; [`Configuration`](crate::ErrorKind::Configuration) for
    /// [`StreamForm::Compact`] without a DEK store.
    pub async fn stream_encryptor(
        &self,
        compartment: &CompartmentId,
        aad: &[u8],
        form: StreamForm,
    ) -> Result<StreamEncryptor> {
        if form == StreamForm::Compact {
            self.inner.require_store()?;
        }
        let lease = self.stream_lease(compartment).await?;
        let (head, body) = new_body(lease.dek(), form.form(), aad)?;
        let max_len = lease.limits().max_bytes();
        let budget = LeaseBudget::new(&self.inner, compartment, lease);
        Ok(StreamEncryptor::new(head, body, Box::new(budget), max_len))
    }

    /// [`Client::stream_encryptor`] wrapped around `inner`: an [`AsyncWrite`] of the plaintext.
    ///
    /// # Errors
    /// As for [`Client::stream_encryptor`].
    pub async fn encrypting_writer<W: AsyncWrite + Unpin>(
        &self,
        compartment: &CompartmentId,
        aad: &[u8],
        form: StreamForm,
        inner: W,
    ) -> Result<AsyncEncryptingWriter<W>> {
        Ok(self
            .stream_encryptor(compartment, aad, form)
            .await?
            .into_async_writer(inner))
    }

    /// The decryptor of a streamed object of `compartment` whose head (header, salt and body
    /// commitment, as [`read_head`](crate::stream::read_head) returns it) is `head`. The
    /// commitment is checked here, before any chunk is read.
    ///
    /// # Errors
    /// As for [`Client::decrypt`]; [`InvalidInput`](crate::ErrorKind::InvalidInput) if `head`
    /// is not the head of a streamed envelope.
    pub async fn stream_decryptor(
        &self,
        compartment: &CompartmentId,
        head: &[u8],
        aad: &[u8],
    ) -> Result<StreamDecryptor> {
        let header_len = match stream_header_len(head)? {
            Ok(len) => len,
            Err(_) => return Err(Error::invalid_input("truncated streamed envelope")),
        };
        let body = self.body_key(compartment, head, header_len, aad).await?;
        Ok(StreamDecryptor::new(body))
    }

    /// Reads the head of a streamed object from `inner` and returns an [`AsyncRead`] of its
    /// plaintext.
    ///
    /// # Errors
    /// As for [`Client::stream_decryptor`]; the I/O error if the head cannot be read.
    pub async fn decrypting_reader<R: AsyncRead + Unpin>(
        &self,
        compartment: &CompartmentId,
        mut inner: R,
        aad: &[u8],
    ) -> Result<AsyncDecryptingReader<R>> {
        let head = read_head_async(&mut inner).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::invalid_input(e.to_string())
            } else {
                Error::from(e)
            }
        })?;
        Ok(self
            .stream_decryptor(compartment, &head, aad)
            .await?
            .into_async_reader(inner))
    }

    /// Decrypts `range` of the plaintext of a streamed object in `source`, reading only its
    /// head and the chunks that cover the range: one `read_ranges` call for a compact
    /// streamed envelope. A range that reaches the end (or a suffix) also authenticates the
    /// final chunk, so the length it was cut to is the object's true length.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cmek::Result<()> {
    /// # use std::sync::Arc;
    /// # use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, stream::StreamForm};
    /// # let client = Client::builder()
    /// #     .key(KeyConfigId::new("local")?, Arc::new(LocalKms::generate("local:k")?))
    /// #     .build()?;
    /// # let tenant = CompartmentId::new("t")?;
    /// let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    /// let mut object = Vec::new();
    /// let mut encryptor = client.stream_encryptor(&tenant, b"", StreamForm::SelfContained).await?;
    /// encryptor.update(&data, &mut object)?;
    /// encryptor.finish(&mut object)?;
    ///
    /// let part = client.decrypt_range(&tenant, &object, 50_000..50_010, b"").await?;
    /// assert_eq!(part, &data[50_000..50_010]);
    /// let tail = client.decrypt_range(&tenant, &object, cmek::stream::ByteRange::Suffix(3), b"").await?;
    /// assert_eq!(tail, &data[99_997..]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`Client::decrypt`]; [`InvalidInput`](crate::ErrorKind::InvalidInput) for a
    /// range starting after the end, or an object length no streamed envelope can have.
    pub async fn decrypt_range(
        &self,
        compartment: &CompartmentId,
        source: &(impl RangeSource + ?Sized),
        range: impl Into<ByteRange>,
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let fetched = read_range(source, &range.into()).await?;
        let body = self
            .body_key(compartment, &fetched.head, fetched.header_len(), aad)
            .await?;
        let (plaintext, chunks) = fetched.open(&body)?;
        self.inner.counters.add_range_chunks(chunks);
        Ok(plaintext)
    }

    /// Whether the client has a DEK store (compact envelopes need one).
    #[cfg(feature = "object-store")]
    pub(crate) fn has_dek_store(&self) -> bool {
        self.inner.require_store().is_ok()
    }

    /// Counts `chunks` opened by a range read outside this module (object stores).
    #[cfg(feature = "object-store")]
    pub(crate) fn count_range_chunks(&self, chunks: u64) {
        self.inner.counters.add_range_chunks(chunks);
    }

    /// The body key of the object whose head is `head`, through the decryption cache.
    pub(crate) async fn body_key(
        &self,
        compartment: &CompartmentId,
        head: &[u8],
        header_len: usize,
        aad: &[u8],
    ) -> Result<BodyKey> {
        let mut head = head;
        self.with_decryption_dek(compartment, &mut head, |dek, form, head| {
            if !form.is_streamed() {
                return Err(Error::invalid_input(
                    "not a streamed envelope (form 0x04 or 0x05)",
                ));
            }
            open_body(dek, form, head, header_len, aad)
        })
        .await
    }

    /// A lease on the compartment's DEK with one message reserved for the object.
    async fn stream_lease(&self, compartment: &CompartmentId) -> Result<EncryptionLease> {
        for _ in 0..8 {
            let lease = self
                .inner
                .encryption_lease(compartment, self.deadline())
                .await
                .inspect_err(crate::telemetry::error)?;
            match lease.reserve(0) {
                Reservation::Granted => return Ok(lease),
                Reservation::GrantedRefreshDue => {
                    self.inner
                        .refresh_encryption_dek(compartment, lease.active());
                    return Ok(lease);
                }
                Reservation::Exhausted => {}
            }
        }
        Err(Error::transient(
            "data keys are used up faster than they are made; raise encrypt_max_messages",
        ))
    }
}

/// The budget of a stream under a leased DEK: counts its bytes, stops it once the DEK is
/// retired, and has the compartment's key checked now and then so a long stream learns of a
/// revocation like other writes do.
struct LeaseBudget {
    lease: EncryptionLease,
    inner: Arc<Inner>,
    compartment: CompartmentId,
    runtime: Option<tokio::runtime::Handle>,
    next_check: CoarseInstant,
    check_every: Duration,
    verdict: Arc<OnceLock<Error>>,
    checking: Arc<AtomicBool>,
}

impl LeaseBudget {
    fn new(inner: &Arc<Inner>, compartment: &CompartmentId, lease: EncryptionLease) -> Self {
        let check_every = (lease.limits().refresh_age() / 2).max(Duration::from_millis(100));
        Self {
            inner: inner.clone(),
            compartment: compartment.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            next_check: CoarseInstant::now() + check_every.into(),
            check_every,
            lease,
            verdict: Arc::default(),
            checking: Arc::default(),
        }
    }

    /// Asks, in the background, for the compartment's encryption DEK: if its key has been
    /// revoked, disabled or deleted meanwhile, the answer says so and the stream stops.
    fn check_key(&self) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        if self.checking.swap(true, Relaxed) {
            return;
        }
        let (inner, compartment) = (self.inner.clone(), self.compartment.clone());
        let (verdict, checking) = (self.verdict.clone(), self.checking.clone());
        runtime.spawn(async move {
            let deadline = Instant::now() + inner.layers.deadline;
            if let Err(e) = inner.encryption_lease(&compartment, deadline).await
                && matches!(
                    e.kind(),
                    ErrorKind::KeyRevoked | ErrorKind::PermissionDenied | ErrorKind::NotFound
                )
            {
                let _ = verdict.set(e);
            }
            checking.store(false, Relaxed);
        });
    }
}

impl ChunkBudget for LeaseBudget {
    fn admit(&mut self, len: u64) -> Result<()> {
        if let Some(e) = self.verdict.get() {
            return Err(e.clone());
        }
        if !self.lease.add_stream_bytes(len) {
            let key_config = &self.lease.dek().key_config;
            return Err(if self.inner.is_revoked(key_config) {
                Error::new(
                    ErrorKind::KeyRevoked,
                    format!(
                        "key configuration {key_config} was revoked while the object was written"
                    ),
                )
            } else {
                Error::transient(
                    "the compartment's data key was retired while the object was written (its \
                     key was rotated, revoked or deleted, or the compartment purged); write it again",
                )
            });
        }
        let now = CoarseInstant::now();
        if now >= self.next_check {
            self.next_check = now + self.check_every.into();
            self.check_key();
        }
        Ok(())
    }
}
