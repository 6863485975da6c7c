//! Decryption DEKs: the cached ones by id, loading (inline or from the DEK store) and
//! unwrapping through single flights, refresh before expiry, degraded mode.

use std::sync::Arc;

use coarsetime::Instant as CoarseInstant;
use futures_util::FutureExt;
use tokio::time::Instant;

use super::inner::{DEGRADED_STEP, Inner, is_outage};
use super::seal::header_fits;
use crate::cache::{Counters, DekSource, LoadedDek, OpenDek};
use crate::cipher::{DekMaterial, sha256};
use crate::error::{Error, Result};
use crate::format::{DekRecord, Form, Preamble};
use crate::ids::{CompartmentId, DekId};
use crate::kms::layers::deadline;
use crate::kms::{KmsBackend, WrapContext};

impl Inner {
    /// Runs `f` with the cached DEK named by `pre` if it is fresh and of `compartment`; `f`
    /// returns `None` when the envelope's header does not match (a miss).
    #[inline]
    pub(super) fn with_cached_decryption_dek<R>(
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

    /// Loads (and unwraps) the DEK of `envelope` within `deadline`.
    #[cold]
    pub(super) async fn load_decryption_dek(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        envelope: &[u8],
        pre: Preamble,
        deadline: Instant,
    ) -> Result<Arc<OpenDek>> {
        Counters::bump(&self.counters.decrypt_misses);
        let (source, inline) = match pre.form {
            Form::SelfContained | Form::Streamed => {
                let (_, record, used) = DekRecord::decode(envelope)?;
                if record.compartment != *compartment {
                    return Err(Error::integrity());
                }
                // A streamed header is told from the self-contained one by its form byte
                // only: both name the DEK by the digest of its self-contained header.
                let mut header = envelope[..used].to_vec();
                header[2] = Form::SelfContained as u8;
                (DekSource::Inline(sha256(&[&header])), Some(record))
            }
            _ => (DekSource::Stored(compartment.clone()), None),
        };
        let mut outcome = Err(deadline::exceeded());
        // As for encryption: a caller that joined an earlier caller's flight and got a
        // retryable failure with time to spare asks once more with a flight of its own.
        for attempt in 0..2 {
            let inner = self.clone();
            let (c, dek_id, inline) = (compartment.clone(), pre.dek_id, inline.clone());
            let wanted = source.clone();
            let flight = self.dec_flights.run_until(
                (pre.dek_id, source.clone()),
                Some(deadline),
                move || {
                    deadline::within(deadline, async move {
                        // A flight that ended between this caller's cache miss and its joining
                        // has left its DEK in the cache: use it rather than unwrap again (if it
                        // came from the same header: an inline one must be unwrapped as written).
                        if let Some(open) = inner.dec.map.get(&dek_id)
                            && open.is_fresh(CoarseInstant::now())
                            && open.dek.compartment == c
                            && match &wanted {
                                DekSource::Inline(digest) => open.dek.header_digest == *digest,
                                DekSource::Stored(_) => true,
                            }
                        {
                            return Ok(open);
                        }
                        let epoch = inner.dec.epoch();
                        let record = match inline {
                            Some(record) => record,
                            None => inner.stored_record(&c, &dek_id).await?,
                        };
                        inner.open_record(record, epoch).await
                    })
                    .boxed()
                },
            );
            let (result, started) = match tokio::time::timeout_at(deadline, flight).await {
                Ok(joined) => joined,
                Err(_) => (Err(deadline::exceeded()), false),
            };
            let again = matches!(&result, Err(e) if attempt == 0
                && !started
                && e.is_retryable()
                && !e.is_fail_fast()
                && Instant::now() < deadline);
            outcome = result;
            if !again {
                break;
            }
        }
        let open = match outcome {
            Ok(open) => open,
            Err(e) => {
                return self
                    .degraded_decryption_dek(compartment, envelope, &pre, &e)
                    .ok_or(e);
            }
        };
        if open.dek.compartment != *compartment || !header_fits(&open.dek, envelope, pre.form) {
            return Err(Error::integrity());
        }
        Ok(open)
    }

    /// Degraded mode: the cached DEK of `envelope`, past its max age but within the staleness
    /// bound, stretched a little if its key is unreachable and the unwrap failed transiently.
    #[cold]
    fn degraded_decryption_dek(
        &self,
        compartment: &CompartmentId,
        envelope: &[u8],
        pre: &Preamble,
        failure: &Error,
    ) -> Option<Arc<OpenDek>> {
        let staleness = self.config.degraded_staleness?;
        if !is_outage(failure) {
            return None;
        }
        let open = self.dec.map.get(&pre.dek_id)?;
        if open.dek.compartment != *compartment || !header_fits(&open.dek, envelope, pre.form) {
            return None;
        }
        let now = CoarseInstant::now();
        let hard = open.born() + (self.config.decrypt_max_age + staleness).into();
        if now >= hard {
            return None;
        }
        let (key_id, version) = open.dek.wrapped_by()?;
        if !self
            .layers
            .health
            .serve_degraded(&open.dek.key_config, &key_id, &version)
        {
            return None;
        }
        open.extend_life(hard.min(now + DEGRADED_STEP.into()));
        crate::telemetry::degraded_use("decrypt");
        Some(open)
    }

    async fn stored_record(
        &self,
        compartment: &CompartmentId,
        dek_id: &DekId,
    ) -> Result<DekRecord> {
        let store = self.require_store()?;
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

    /// Unwraps a DEK record and puts it in the decryption cache, unless the cache forgot
    /// something since `epoch` (a purge or eviction raced with this fill: the DEK serves this
    /// caller only).
    async fn open_record(self: &Arc<Self>, record: DekRecord, epoch: u64) -> Result<Arc<OpenDek>> {
        let material = self.unwrap_record(&record).await?;
        self.ensure_not_revoked(&record.key_config)?;
        let open = Arc::new(OpenDek::new(
            Arc::new(LoadedDek::new(&record, material)),
            CoarseInstant::now(),
            &self.dec.limits,
        ));
        self.dec.insert_since(epoch, record.dek_id, &open);
        Ok(open)
    }

    /// Unwraps a DEK record through its backend (with every layer) and checks the key
    /// commitment.
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
            .layers
            .in_use(backend)
            .unwrap(&record.wrapped, &context)
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
        let epoch = self.dec.epoch();
        runtime.spawn(async move {
            let deadline = Instant::now() + inner.layers.deadline;
            let outcome = match open.dek.record() {
                Ok(record) => {
                    deadline::within(deadline, inner.unwrap_record(&record))
                        .await
                        .map(drop)
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    let fresh = Arc::new(OpenDek::new(
                        open.dek.clone(),
                        CoarseInstant::now(),
                        &inner.dec.limits,
                    ));
                    // Only in place of the entry it refreshes, and unless something was
                    // forgotten meanwhile: a purge is never undone by a refresh.
                    let still_cached = inner
                        .dec
                        .map
                        .get(&open.dek.id)
                        .is_some_and(|current| Arc::ptr_eq(&current, &open));
                    if !still_cached || !inner.dec.insert_since(epoch, open.dek.id, &fresh) {
                        open.release_refresh();
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(dek_id = %open.dek.id, error = %e, "background unwrap failed; the cached key stays until it expires");
                    tokio::time::sleep(inner.layers.retry.max_backoff).await;
                    open.release_refresh();
                }
                Err(e) => {
                    tracing::warn!(dek_id = %open.dek.id, error = %e, "cached data key dropped: the KMS no longer unwraps it");
                    inner.dec.map.remove_if(&open.dek.id, |cur| Arc::ptr_eq(cur, &open));
                }
            }
        });
    }
}
