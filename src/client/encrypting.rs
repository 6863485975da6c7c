//! Encryption DEKs: the cached one per compartment, its single-flight creation, refresh ahead
//! of its limits, degraded mode, retirement and purge.

use std::sync::Arc;

use coarsetime::Instant as CoarseInstant;
use futures_util::FutureExt;
use tokio::time::Instant;

use super::inner::{DEGRADED_STEP, Inner, SUITE, is_outage};
use crate::cache::{ActiveDek, Counters, EncryptionLease, LoadedDek, OpenDek, Reservation};
use crate::cipher::DekMaterial;
use crate::error::{Error, Result};
use crate::format::DekRecord;
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::key::DataKey;
use crate::kms::layers::deadline;
use crate::kms::{KmsBackend, WrapContext};

impl Inner {
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

    /// A lease on the encryption DEK of `compartment` (made within `deadline` when none is
    /// usable), for a writer that reserves its budget as it goes; see [`EncryptionLease`].
    pub(super) async fn encryption_lease(
        self: &Arc<Self>,
        compartment: &CompartmentId,
        deadline: Instant,
    ) -> Result<EncryptionLease> {
        let active = match self.enc.map.get(compartment) {
            Some(active) if active.is_usable(CoarseInstant::now(), &self.enc.limits) => active,
            other => {
                Counters::bump(&self.counters.encrypt_misses);
                let stale = other.map(|active| active.dek.id);
                self.new_encryption_dek(compartment, stale, deadline)
                    .boxed()
                    .await?
            }
        };
        Ok(EncryptionLease::new(active, self.enc.limits))
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
        let epoch = self.dec.epoch();
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
        self.dec.insert_since(
            epoch,
            dek_id,
            &Arc::new(OpenDek::new(loaded, now, &self.dec.limits)),
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
            .retire(|active| active.dek.key_config == *key_config && retire(active));
    }

    /// Starts preparing the next DEK in the background, once per DEK.
    pub(super) fn refresh_encryption_dek(
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

    /// Drops the encryption DEK of `compartment` (its key may be about to change); a DEK being
    /// made for it right now is not cached.
    pub(super) fn purge_encryption_dek(&self, compartment: &CompartmentId) {
        let mut locked = self.creations.lock_all();
        locked.invalidate_compartment(compartment);
        self.enc.purge(compartment);
    }

    /// Stops new encryptions under `key_config` at once.
    pub(super) fn drop_encryption_deks(&self, key_config: &KeyConfigId) {
        self.retire_encryption_deks(key_config, |_| true);
    }

    /// Stops new encryptions under every cached DEK at once.
    pub(super) fn drop_all_encryption_deks(&self) {
        let mut locked = self.creations.lock_all();
        locked.invalidate_all();
        self.enc.retire(|_| true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::cache::{CacheConfig, Reservation};
    use crate::ids::{CompartmentId, KeyConfigId};
    use crate::{Client, LocalKms, RevokeMode};

    fn client(max_messages: u64) -> Client {
        let cache = CacheConfig {
            encrypt_max_messages: max_messages,
            refresh_fraction: 1.0,
            ..CacheConfig::default()
        };
        Client::builder()
            .key(
                KeyConfigId::new("local").unwrap(),
                std::sync::Arc::new(LocalKms::generate("local:lease").unwrap()),
            )
            .cache(cache)
            .build()
            .unwrap()
    }

    fn dek_id(envelope: &[u8]) -> String {
        crate::inspect(envelope).unwrap().dek_id
    }

    #[tokio::test]
    async fn a_lease_is_held_across_awaits_and_shares_the_dek_budget() {
        let client = client(10);
        let c = CompartmentId::new("lease").unwrap();
        let lease = client
            .inner
            .encryption_lease(&c, client.deadline())
            .await
            .unwrap();
        for _ in 0..4 {
            assert_eq!(lease.reserve(100), Reservation::Granted);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let leased = lease.dek().id.to_hex();
        for _ in 0..6 {
            let envelope = client.encrypt(&c, b"m", b"").await.unwrap();
            assert_eq!(dek_id(&envelope), leased, "messages share the leased DEK");
        }
        assert_eq!(
            lease.reserve(1),
            Reservation::Exhausted,
            "10 messages in all"
        );
        let next = client.encrypt(&c, b"m", b"").await.unwrap();
        assert_ne!(
            dek_id(&next),
            leased,
            "the next message goes under a new DEK"
        );
        let again = client
            .inner
            .encryption_lease(&c, client.deadline())
            .await
            .unwrap();
        assert_eq!(
            again.dek().id.to_hex(),
            dek_id(&next),
            "a new lease takes the cached DEK"
        );
    }

    #[tokio::test]
    async fn a_retired_dek_refuses_its_lease() {
        let client = client(1000);
        let c = CompartmentId::new("lease").unwrap();
        let lease = client
            .inner
            .encryption_lease(&c, client.deadline())
            .await
            .unwrap();
        assert_eq!(lease.reserve(1), Reservation::Granted);
        client.purge(&c);
        assert_eq!(
            lease.reserve(1),
            Reservation::Exhausted,
            "purged while leased"
        );

        let lease = client
            .inner
            .encryption_lease(&c, client.deadline())
            .await
            .unwrap();
        client.revoke(&KeyConfigId::new("local").unwrap(), RevokeMode::Immediately);
        assert_eq!(
            lease.reserve(1),
            Reservation::Exhausted,
            "revoked while leased"
        );
        let refused = client.inner.encryption_lease(&c, client.deadline()).await;
        assert_eq!(refused.unwrap_err().kind(), crate::ErrorKind::KeyRevoked);
    }
}
