//! Compartments and their write-once key attachment.

use super::{
    Actor, AuditEvent, Compartment, ControlPlane, ExternalKey, ExternalKeyId, Outcome, now,
};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::CompartmentId;

impl ControlPlane {
    /// Creates a compartment, optionally with an external key (which must be validated).
    ///
    /// # Errors
    /// As for [`ControlPlane::attach_external_key`].
    pub async fn create_compartment(
        &self,
        actor: &Actor,
        external_key_id: Option<&ExternalKeyId>,
    ) -> Result<Compartment> {
        let event = AuditEvent::new(actor, "compartment.create", Outcome::Success);
        let op = async {
            let mut c = Compartment::new(now())?;
            if let Some(id) = external_key_id {
                self.attachable(id).await?;
                c.external_key_id = Some(id.clone());
            }
            self.inner.store.insert_compartment(&c).await?;
            Ok(c)
        };
        let event = match external_key_id {
            Some(id) => event.key(id),
            None => event,
        };
        self.audited(event, op, |c| Some(format!("created {}", c.compartment_id)))
            .await
    }

    /// A compartment.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub async fn compartment(&self, id: &CompartmentId) -> Result<Compartment> {
        self.inner
            .store
            .compartment(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no compartment {id}")))
    }

    /// Every compartment.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn compartments(&self) -> Result<Vec<Compartment>> {
        self.inner.store.compartments().await
    }

    async fn attachable(&self, id: &ExternalKeyId) -> Result<ExternalKey> {
        let key = self.inner.key(id).await?;
        if key.is_deleted() {
            return Err(Error::new(
                ErrorKind::Validation,
                format!("external_key_id: {id} is deleted"),
            ));
        }
        if !key.is_validated() {
            return Err(Error::new(
                ErrorKind::Validation,
                format!("external_key_id: {id} has not passed validation; validate it first"),
            ));
        }
        Ok(key)
    }

    /// Attaches a validated external key to a compartment, once. Setting the same key again is
    /// a no-op; another key fails with [`ErrorKind::AlreadyExists`]. New data of the compartment
    /// goes under the key from now on; earlier data stays under the provider-managed key.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`], [`ErrorKind::Validation`] (not validated or deleted),
    /// [`ErrorKind::AlreadyExists`] (another key is attached).
    pub async fn attach_external_key(
        &self,
        actor: &Actor,
        compartment: &CompartmentId,
        id: &ExternalKeyId,
    ) -> Result<Compartment> {
        let event = AuditEvent::new(actor, "compartment.attach", Outcome::Success)
            .key(id)
            .compartment(compartment);
        let op = async {
            self.attachable(id).await?;
            let c = self.inner.store.attach(compartment, id, now()).await?;
            self.client.purge(compartment);
            Ok(c)
        };
        self.audited(event, op, |_| None).await
    }
}
