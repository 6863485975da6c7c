//! The client's shared state and its slow paths: creating, loading, refreshing and revoking
//! DEKs, and every KMS call (with retries, counting and tracing).

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use coarsetime::Instant as CoarseInstant;
use futures_util::FutureExt;

use super::seal::header_fits;
use crate::cache::{
    ActiveDek, CacheConfig, Counters, DecryptCache, DekSource, EncryptCache, LoadedDek, OpenDek,
    Reservation, SingleFlight,
};
use crate::cipher::CipherProvider;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{DekRecord, Form, Preamble, Suite, sha256};
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::key::{DataKey, DekMaterial};
use crate::kms::{KeyResolver, RetryPolicy, WrapContext};
use crate::store::DekStore;

/// The suite new envelopes are written with.
const SUITE: Suite = Suite::Aes256GcmHkdfSha256;

pub(super) struct Inner {
    pub(super) resolver: Arc<dyn KeyResolver>,
    pub(super) store: Option<Arc<dyn DekStore>>,
    pub(super) config: CacheConfig,
    pub(super) retry: RetryPolicy,
    pub(super) cipher: CipherProvider,
    pub(super) enc: EncryptCache,
    pub(super) dec: DecryptCache,
    pub(super) enc_flights: SingleFlight<CompartmentId, Arc<ActiveDek>>,
    pub(super) dec_flights: SingleFlight<(DekId, DekSource), Arc<OpenDek>>,
    pub(super) revoked: RwLock<HashSet<KeyConfigId>>,
    /// Counts purges and retirements of encryption DEKs. A DEK whose creation began before one
    /// is not cached (its key may have just been detached, rotated away or deleted); held
    /// while a new DEK is inserted so none slips in behind a retirement.
    retirements: Mutex<u64>,
    pub(super) counters: Counters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KmsOp {
    Wrap,
    Unwrap,
}

impl Inner {
    pub(super) fn new(
        resolver: Arc<dyn KeyResolver>,
        store: Option<Arc<dyn DekStore>>,
        config: CacheConfig,
        retry: RetryPolicy,
        cipher: CipherProvider,
    ) -> Self {
        let counters = Counters::default();
        Self {
            enc: EncryptCache::new(&config, counters.evictions.clone()),
            dec: DecryptCache::new(&config, counters.evictions.clone()),
            resolver,
            store,
            config,
            retry,
            cipher,
            enc_flights: SingleFlight::default(),
            dec_flights: SingleFlight::default(),
            revoked: RwLock::default(),
            retirements: Mutex::new(0),
            counters,
        }
    }

    /// Runs `f` with the cached DEK of `compartment` if it may take one more message of `len`
    /// bytes; otherwise returns the id of the exhausted DEK (or `None` if there is none).
    #[inline]
    pub(super) fn with_cached_encryption_dek<R>(
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
    pub(super) async fn encryption_dek_slow(
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
        for _ in 0..4 {
            if let Some(active) = self.try_create_encryption_dek(&compartment, stale).await? {
                return Ok(active);
            }
        }
        Err(Error::transient(
            "the compartment's key changed during every attempt to make a data key; try again",
        ))
    }

    /// Makes and caches a DEK; `None` if a purge or retirement happened meanwhile (then the
    /// key must be resolved again).
    async fn try_create_encryption_dek(
        &self,
        compartment: &CompartmentId,
        stale: Option<DekId>,
    ) -> Result<Option<Arc<ActiveDek>>> {
        let compartment = compartment.clone();
        if let Some(current) = self.enc.map.get(&compartment)
            && Some(current.dek.id) != stale
            && current.is_usable(CoarseInstant::now(), &self.enc.limits)
        {
            return Ok(Some(current));
        }
        let epoch = self.retirement_epoch();
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
        self.dec.map.insert(
            dek_id,
            Arc::new(OpenDek::new(loaded, now, &self.dec.limits)),
        );
        Counters::bump(&self.counters.deks_created);
        {
            let retirements = self.retirements.lock().unwrap_or_else(|e| e.into_inner());
            if *retirements != epoch {
                return Ok(None);
            }
            self.enc.map.insert(compartment.clone(), active.clone());
        }
        tracing::debug!(compartment = %compartment, dek_id = %dek_id, key_config = %binding.key_config, "new data key");
        Ok(Some(active))
    }

    fn retirement_epoch(&self) -> u64 {
        *self.retirements.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the encryption DEKs `retire` picks; DEKs being made right now are not cached.
    pub(super) fn retire_encryption_deks(&self, retire: impl Fn(&ActiveDek) -> bool) {
        let mut retirements = self.retirements.lock().unwrap_or_else(|e| e.into_inner());
        *retirements += 1;
        self.enc.map.retain(|_, active| !retire(active));
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

    #[cold]
    pub(super) async fn load_decryption_dek(
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
                // A disabled, revoked or deleted key (a wrap finds no key: it was deleted, or
                // never existed): no new data may go under its cached DEKs.
                if e.kind() == ErrorKind::KeyRevoked
                    || (op == KmsOp::Wrap && e.kind() == ErrorKind::NotFound)
                {
                    Counters::bump(&self.counters.revocations_detected);
                    self.drop_encryption_deks(key_config);
                }
            }
        }
        outcome
    }

    /// The DEK store compact envelopes need.
    pub(super) fn require_store(&self) -> Result<&Arc<dyn DekStore>> {
        self.store.as_ref().ok_or_else(|| {
            Error::configuration(
                "compact envelopes need a DEK store: set one with ClientBuilder::dek_store",
            )
        })
    }

    /// Drops the encryption DEK of `compartment` (its key may be about to change).
    pub(super) fn purge_encryption_dek(&self, compartment: &CompartmentId) {
        let mut retirements = self.retirements.lock().unwrap_or_else(|e| e.into_inner());
        *retirements += 1;
        self.enc.map.remove(compartment);
    }

    /// Stops new encryptions under `key_config` at once.
    pub(super) fn drop_encryption_deks(&self, key_config: &KeyConfigId) {
        self.retire_encryption_deks(|active| active.dek.key_config == *key_config);
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
