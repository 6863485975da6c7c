//! The client's shared state and its slow paths: creating, loading, refreshing and revoking
//! DEKs. Every KMS call goes through the layers of [`crate::kms::layers`] (deadline, retry,
//! per-key breaker, observation); key events from the breaker retire the DEKs they concern.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coarsetime::Instant as CoarseInstant;
use futures_util::FutureExt;
use tokio::time::Instant;

use super::creations::Creations;
use super::seal::header_fits;
use crate::cache::{
    ActiveDek, CacheConfig, Counters, DecryptCache, DekSource, EncryptCache, LoadedDek, OpenDek,
    Reservation, SingleFlight, Stats,
};
use crate::cipher::{CipherProvider, DekMaterial, sha256};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{DekRecord, Form, Preamble, Suite};
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::key::DataKey;
use crate::kms::health::{BreakerConfig, HealthRegistry, KeyEvent, KeyEventKind, KeyState};
use crate::kms::layers::{Layers, RetryPolicy, deadline};
use crate::kms::{KeyResolver, KmsBackend, WrapContext};
use crate::store::DekStore;

/// The suite new envelopes are written with.
const SUITE: Suite = Suite::Aes256GcmHkdfSha256;

/// In degraded mode, how far past now a stale DEK's life is extended at a time (each extension
/// follows a failed attempt to replace it, so the key keeps being probed).
const DEGRADED_STEP: Duration = Duration::from_secs(1);

/// How KMS calls are bounded, retried and broken off.
pub(super) struct Policies {
    pub(super) retry: RetryPolicy,
    pub(super) deadline: Duration,
    pub(super) breaker: BreakerConfig,
}

pub(super) struct Inner {
    pub(super) resolver: Arc<dyn KeyResolver>,
    pub(super) store: Option<Arc<dyn DekStore>>,
    pub(super) config: CacheConfig,
    pub(super) layers: Layers,
    pub(super) cipher: CipherProvider,
    pub(super) enc: EncryptCache,
    pub(super) dec: DecryptCache,
    pub(super) enc_flights: SingleFlight<CompartmentId, Arc<ActiveDek>>,
    pub(super) dec_flights: SingleFlight<(DekId, DekSource), Arc<OpenDek>>,
    pub(super) revoked: RwLock<HashSet<KeyConfigId>>,
    /// Encryption DEKs being made, so purges and retirements discard only those they concern.
    creations: Creations,
    pub(super) counters: Counters,
}

impl Inner {
    pub(super) fn new(
        resolver: Arc<dyn KeyResolver>,
        store: Option<Arc<dyn DekStore>>,
        config: CacheConfig,
        cipher: CipherProvider,
        policies: Policies,
    ) -> Self {
        let counters = Counters::default();
        let layers = Layers {
            retry: policies.retry,
            deadline: policies.deadline,
            health: Arc::new(HealthRegistry::new(policies.breaker, policies.deadline)),
            counters: counters.kms.clone(),
        };
        Self {
            enc: EncryptCache::new(&config, counters.evictions.clone()),
            dec: DecryptCache::new(&config, counters.evictions.clone()),
            resolver,
            store,
            config,
            layers,
            cipher,
            enc_flights: SingleFlight::default(),
            dec_flights: SingleFlight::default(),
            revoked: RwLock::default(),
            creations: Creations::default(),
            counters,
        }
    }

    /// The cache's counters (see [`crate::Client::stats`]).
    pub(super) fn stats(&self) -> Stats {
        let mut s = self.counters.snapshot();
        let mut encryptions = self
            .counters
            .retired_encryptions
            .load(std::sync::atomic::Ordering::Relaxed);
        self.enc
            .map
            .for_each(|_, active| encryptions += active.messages());
        s.encrypt_hits = encryptions.saturating_sub(s.encrypt_misses);
        s.encrypt_entries = self.enc.map.len() as u64;
        s.decrypt_entries = self.dec.map.len() as u64;
        s
    }

    /// What the metrics publisher reads.
    pub(super) fn metrics_snapshot(&self) -> crate::telemetry::Snapshot {
        (self.stats(), self.layers.health.counts())
    }

    /// Reacts to a key's events: a revocation (disabled, deleted, access lost) stops new data
    /// under that key at once.
    pub(super) fn on_key_event(&self, event: &KeyEvent) {
        if let KeyEventKind::StateChanged { to, revocation, .. } = &event.kind {
            if *revocation {
                Counters::bump(&self.counters.revocations_detected);
            }
            if matches!(to, KeyState::Revoked | KeyState::Denied) {
                // The whole key (its wraps), or the one version an unwrap found revoked.
                let (key_id, version) = (event.key_id.as_str(), event.key_version.as_str());
                self.retire_encryption_deks(&event.key_config, |active| {
                    key_id.is_empty()
                        || active.dek.wrapped_by().is_some_and(|(id, v)| {
                            id == key_id && (version.is_empty() || v == version)
                        })
                });
            }
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

    /// A DEK that may take one more message of `len` bytes, made (or, in degraded mode,
    /// stretched) within `deadline`.
    #[cold]
    pub(super) async fn encryption_dek_slow(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        len: u64,
        mut stale: Option<DekId>,
        deadline: Instant,
    ) -> Result<Arc<ActiveDek>> {
        Counters::bump(&self.counters.encrypt_misses);
        for _ in 0..8 {
            let active = match self.new_encryption_dek(compartment, stale, deadline).await {
                Ok(active) => active,
                Err(e) => return self.degraded_encryption_dek(compartment, len, &e).ok_or(e),
            };
            match active.reserve(len, CoarseInstant::now(), &self.enc.limits) {
                Reservation::Granted | Reservation::GrantedRefreshDue => return Ok(active),
                Reservation::Exhausted => stale = Some(active.dek.id),
            }
        }
        Err(Error::transient(
            "data keys are used up faster than they are made; raise encrypt_max_messages",
        ))
    }

    /// Single-flight creation of a new DEK for `compartment`, replacing `stale`, within
    /// `deadline`. A caller that joined a flight started before it, and got a retryable failure
    /// with time to spare, tries once more with a flight of its own (the first may have been
    /// stuck on an attempt that began before the KMS recovered).
    async fn new_encryption_dek(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        stale: Option<DekId>,
        deadline: Instant,
    ) -> Result<Arc<ActiveDek>> {
        for attempt in 0..2 {
            let inner = self.clone();
            let c = compartment.clone();
            let flight =
                self.enc_flights
                    .run_until(compartment.clone(), Some(deadline), move || {
                        deadline::within(deadline, inner.create_encryption_dek(c, stale)).boxed()
                    });
            let (outcome, started) = match tokio::time::timeout_at(deadline, flight).await {
                Ok(joined) => joined,
                Err(_) => (Err(deadline::exceeded()), false),
            };
            match outcome {
                Err(e)
                    if attempt == 0
                        && !started
                        && e.is_retryable()
                        && !e.is_fail_fast()
                        && Instant::now() < deadline => {}
                other => return other,
            }
        }
        Err(deadline::exceeded())
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

    /// Makes and caches a DEK; `None` if this compartment was purged, or its key retired,
    /// meanwhile (then the key must be resolved again). See [`super::creations`].
    async fn try_create_encryption_dek(
        &self,
        compartment: &CompartmentId,
        stale: Option<DekId>,
    ) -> Result<Option<Arc<ActiveDek>>> {
        if let Some(current) = self.enc.map.get(compartment)
            && Some(current.dek.id) != stale
            && current.is_usable(CoarseInstant::now(), &self.enc.limits)
        {
            return Ok(Some(current));
        }
        let ticket = self.creations.begin(compartment);
        let first = self.resolver.encryption_key(compartment).await?;
        ticket.resolved(&first.key_config);
        let binding = self.resolver.encryption_key(compartment).await?;
        if binding.key_config != first.key_config {
            return Ok(None);
        }
        self.ensure_not_revoked(&binding.key_config)?;
        let dek = DataKey::generate()?;
        let dek_id = DekId::random()?;
        let context = WrapContext::new(compartment, &binding.key_config);
        let backend = self.layers.in_use(binding.backend.clone());
        let wrapped = backend.wrap(&dek, &context).await?;
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
        if !ticket.finish(|| self.enc.map.insert(compartment.clone(), active.clone())) {
            return Ok(None);
        }
        tracing::debug!(compartment = %compartment, dek_id = %dek_id, key_config = %binding.key_config, "new data key");
        Ok(Some(active))
    }

    /// Degraded mode: the compartment's current DEK, past its max age but within the staleness
    /// bound, stretched a little if its key is unreachable (never revoked or refused) and the
    /// failure to replace it was transient.
    #[cold]
    fn degraded_encryption_dek(
        &self,
        compartment: &CompartmentId,
        len: u64,
        failure: &Error,
    ) -> Option<Arc<ActiveDek>> {
        let staleness = self.config.degraded_staleness?;
        if !is_outage(failure) {
            return None;
        }
        let active = self.enc.map.get(compartment)?;
        let now = CoarseInstant::now();
        let hard = active.born() + (self.config.encrypt_max_age + staleness).into();
        if now >= hard || !active.within_usage_limits(&self.enc.limits) {
            return None;
        }
        let (key_id, _) = active.dek.wrapped_by()?;
        if !self
            .layers
            .health
            .serve_degraded(&active.dek.key_config, &key_id, "")
        {
            return None;
        }
        active.extend_life(hard.min(now + DEGRADED_STEP.into()));
        crate::telemetry::degraded_use("encrypt");
        match active.reserve(len, now, &self.enc.limits) {
            Reservation::Granted | Reservation::GrantedRefreshDue => Some(active),
            Reservation::Exhausted => None,
        }
    }

    /// Drops the encryption DEKs of `key_config` that `retire` picks; DEKs being made under
    /// `key_config` right now are not cached. Other key configurations are not touched.
    pub(super) fn retire_encryption_deks(
        &self,
        key_config: &KeyConfigId,
        retire: impl Fn(&ActiveDek) -> bool,
    ) {
        let mut locked = self.creations.lock_all();
        locked.invalidate_key_config(key_config);
        self.enc
            .map
            .retain(|_, active| !(active.dek.key_config == *key_config && retire(active)));
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
            let deadline = Instant::now() + inner.layers.deadline;
            if let Err(e) = inner
                .new_encryption_dek(&compartment, Some(active.dek.id), deadline)
                .await
            {
                tracing::warn!(compartment = %compartment, error = %e,
                    "background data-key refresh failed; the current key stays in use until its limit");
                tokio::time::sleep(inner.layers.retry.max_backoff).await;
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
                        let record = match inline {
                            Some(record) => record,
                            None => inner.stored_record(&c, &dek_id).await?,
                        };
                        inner.open_record(record).await
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
                    inner.dec.map.insert(open.dek.id, fresh);
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

    /// The DEK store compact envelopes need.
    pub(super) fn require_store(&self) -> Result<&Arc<dyn DekStore>> {
        self.store.as_ref().ok_or_else(|| {
            Error::configuration(
                "compact envelopes need a DEK store: set one with ClientBuilder::dek_store",
            )
        })
    }

    /// Drops the encryption DEK of `compartment` (its key may be about to change); a DEK being
    /// made for it right now is not cached.
    pub(super) fn purge_encryption_dek(&self, compartment: &CompartmentId) {
        let mut locked = self.creations.lock_all();
        locked.invalidate_compartment(compartment);
        self.enc.map.remove(compartment);
    }

    /// Stops new encryptions under `key_config` at once.
    pub(super) fn drop_encryption_deks(&self, key_config: &KeyConfigId) {
        self.retire_encryption_deks(key_config, |_| true);
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

/// Whether a failure says the KMS is out of reach (the only case degraded mode serves stale
/// DEKs for; never a revocation or a refusal).
fn is_outage(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Transient | ErrorKind::DeadlineExceeded)
}
