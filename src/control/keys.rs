//! The life cycle of external key configurations: create, read, validate, rotate, delete.

use super::{
    Actor, AuditEvent, ControlPlane, CreateExternalKey, ExternalKey, ExternalKeyId,
    ExternalKeyType, Outcome, ProviderConfig, ValidationRecord, ValidationResult, ValidationStatus,
    now, validation,
};
use crate::error::{Error, ErrorKind, Result};
use crate::kms::KmsBackend;

impl ControlPlane {
    /// Creates an external key configuration (`POST /external_keys`).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] naming the bad field; the store's errors.
    pub async fn create_external_key(
        &self,
        actor: &Actor,
        request: CreateExternalKey,
    ) -> Result<ExternalKey> {
        let event = AuditEvent::new(actor, "external_key.create", Outcome::Success);
        let mut request = request;
        let op = async {
            request.validate()?;
            let at = now();
            let key = ExternalKey {
                id: ExternalKeyId::generate()?,
                kind: ExternalKeyType::ExternalKey,
                display_name: request.display_name.clone(),
                geo: request.geo.clone().unwrap_or_else(|| "us".to_owned()),
                provider_config: request.provider_config.clone(),
                created_at: at,
                updated_at: at,
                previous_provider_configs: Vec::new(),
                last_validation: None,
                deleted_at: None,
            };
            self.inner.store.insert_external_key(&key).await?;
            Ok(key)
        };
        let key = self
            .audited(event, op, |k| {
                Some(format!(
                    "created {} ({})",
                    k.id,
                    k.provider_config.provider()
                ))
            })
            .await?;
        Ok(key)
    }

    /// A configuration.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub async fn external_key(&self, id: &ExternalKeyId) -> Result<ExternalKey> {
        self.inner.key(id).await
    }

    /// Every configuration (deleted ones too).
    ///
    /// # Errors
    /// The store's errors.
    pub async fn external_keys(&self) -> Result<Vec<ExternalKey>> {
        self.inner.store.external_keys().await
    }

    /// Validates a configuration (`POST /external_keys/{id}/validate`): the backend's key checks,
    /// an encrypt/decrypt round trip under the compartment [`VALIDATION_COMPARTMENT`](super::VALIDATION_COMPARTMENT), and a
    /// check that the key binds data keys to compartments. The outcome is recorded on the
    /// configuration; attaching requires a success.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown configuration, [`ErrorKind::Validation`] for a
    /// deleted one. Validation failures are not errors: they come back classified in the result.
    pub async fn validate_external_key(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
    ) -> Result<ValidationResult> {
        let key = self.inner.key(id).await?;
        if key.is_deleted() {
            let detail =
                format!("external key {id} is deleted: it cannot be validated or attached");
            let event = AuditEvent::new(actor, "external_key.validate", Outcome::Failure).key(id);
            self.inner.record(event.detail(detail.clone())).await?;
            return Err(Error::new(ErrorKind::Validation, detail));
        }
        let result = match self.within_deadline(self.inner.backend(&key)).await {
            Ok(backend) => {
                let layers = self.client.layers();
                validation::validate(&layers.one_off(backend), &key.key_config(), layers.deadline)
                    .await
            }
            Err(e) => validation::classify(&e),
        };
        let record = ValidationRecord {
            status: result.status,
            at: now(),
            key_ref: key.provider_config.key_ref(),
        };
        self.inner
            .update_key(id, |stored| {
                // A rotation may have landed meanwhile: the result is about the earlier key then.
                if stored.provider_config.key_ref() == record.key_ref {
                    stored.last_validation = Some(record.clone());
                }
                Ok(())
            })
            .await?;
        let outcome = if result.status == ValidationStatus::Success {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut event = AuditEvent::new(actor, "external_key.validate", outcome).key(id);
        if let Some(e) = &result.error {
            event = event.detail(format!("{}: {}", e.kind, e.message));
        }
        self.inner.record(event).await?;
        Ok(result)
    }

    /// Moves a configuration to a new KMS key of the same provider (`POST
    /// /external_keys/{id}/rotate`, OpenAI style). The new key is validated first; new data
    /// goes under it at once; data under the earlier keys stays readable (and
    /// [`ControlPlane::rewrap`] moves DEK records over).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] for a bad or failing new configuration or another provider.
    pub async fn rotate_external_key(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
        provider_config: ProviderConfig,
    ) -> Result<ExternalKey> {
        let event = AuditEvent::new(actor, "external_key.rotate", Outcome::Success).key(id);
        let rotatable = |key: &ExternalKey, config: &ProviderConfig| {
            if key.is_deleted() {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("external key {id} is deleted"),
                ));
            }
            if config.provider() != key.provider_config.provider() {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!(
                        "provider_config.type: a {} key rotates to another {} key",
                        key.provider_config.provider(),
                        key.provider_config.provider()
                    ),
                ));
            }
            Ok(())
        };
        let op = async {
            let mut config = provider_config;
            config.validate()?;
            let key = self.inner.key(id).await?;
            rotatable(&key, &config)?;
            let backend = self
                .within_deadline(self.inner.backends.factory().backend(&config))
                .await?;
            self.distinct_key(&key, &config, backend.as_ref()).await?;
            let layers = self.client.layers();
            let result =
                validation::validate(&layers.one_off(backend), &key.key_config(), layers.deadline)
                    .await;
            if let Some(e) = result.error {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("the new key failed validation: {}: {}", e.kind, e.message),
                ));
            }
            let validated = ValidationRecord {
                status: ValidationStatus::Success,
                at: now(),
                key_ref: config.key_ref(),
            };
            let key = self
                .inner
                .update_key(id, |stored| {
                    rotatable(stored, &config)?;
                    let old = std::mem::replace(&mut stored.provider_config, config.clone());
                    stored.previous_provider_configs.push(old);
                    stored.last_validation = Some(validated.clone());
                    Ok(())
                })
                .await?;
            self.client.retire(&key.key_config());
            Ok(key)
        };
        self.audited(event, op, |k| {
            Some(format!("now {}", k.provider_config.key_ref()))
        })
        .await
    }

    /// Refuses a rotation to a key that cannot be told apart from one the configuration has or
    /// had: the same key reference, or the same key id (envelopes and DEK records name their key
    /// by id, so two keys with one id would mix up whose data is whose).
    async fn distinct_key(
        &self,
        key: &ExternalKey,
        config: &ProviderConfig,
        candidate: &dyn KmsBackend,
    ) -> Result<()> {
        let key_ref = config.key_ref();
        if std::iter::once(&key.provider_config)
            .chain(&key.previous_provider_configs)
            .any(|c| c.key_ref() == key_ref)
        {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "provider_config: {key_ref} already is a key of external key {}",
                    key.id
                ),
            ));
        }
        let candidate_id = match candidate.wrapping_key_id() {
            Some(id) => id.to_owned(),
            None => candidate.describe().await?.key_id,
        };
        if let Ok(built) = self.inner.backends.built(key).await
            && built.backend.key_ids().any(|id| id == candidate_id)
        {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "provider_config: the new key has the key id {candidate_id:?}, like a key external key {} has or had; distinct keys need distinct ids (`cmek keygen` gives every key file its own)",
                    key.id
                ),
            ));
        }
        Ok(())
    }

    /// Deletes (deactivates) a configuration: no new data goes under it from now on; existing
    /// data stays readable while the KMS key is reachable. A configuration attached to
    /// compartments is refused unless `force`.
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] (409, conflict) when attached and not forced.
    pub async fn delete_external_key(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
        force: bool,
    ) -> Result<ExternalKey> {
        let event = AuditEvent::new(actor, "external_key.delete", Outcome::Success).key(id);
        let op = async {
            // Atomic in the store: an attachment either lands first (and the deletion is
            // refused) or sees the deletion; a refused deletion is never visible to anyone.
            let key = self
                .inner
                .store
                .delete_external_key(id, now(), force)
                .await?;
            self.client.retire(&key.key_config());
            Ok(key)
        };
        self.audited(event, op, |_| None).await
    }
}
