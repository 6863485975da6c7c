//! Audit events for every administrative change, to a pluggable [`AuditSink`].
//!
//! Key operations (wrap, unwrap) are not audit events: they are counted in
//! [`Stats`](crate::Stats) and traced by the backends, and the customer's KMS logs them.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Who made a change (an admin's id, an API key's name, `cli`, `system`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(pub String);

impl Actor {
    /// An actor named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The control plane itself (for example when it detects a revoked key).
    pub fn system() -> Self {
        Self("system".to_owned())
    }
}

/// `success` or `failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was attempted and failed.
    Failure,
}

/// One administrative change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Who.
    pub actor: Actor,
    /// What: `external_key.create`, `external_key.validate`, `external_key.rotate`,
    /// `external_key.delete`, `compartment.create`, `compartment.attach`, `rewrap.start`,
    /// `rewrap.complete`, and the key events `key.revocation_detected`, `key.restored`,
    /// `key.degraded_started`, `key.degraded_ended`.
    pub action: String,
    /// The external key concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_key_id: Option<String>,
    /// The compartment concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compartment_id: Option<String>,
    /// How it went.
    pub outcome: Outcome,
    /// Details (counts, the cause of a failure); never key material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event of `action` by `actor`, now.
    pub fn new(actor: &Actor, action: &str, outcome: Outcome) -> Self {
        Self {
            time: super::now(),
            actor: actor.clone(),
            action: action.to_owned(),
            external_key_id: None,
            compartment_id: None,
            outcome,
            detail: None,
        }
    }

    /// Names the external key.
    #[must_use]
    pub fn key(mut self, id: impl fmt::Display) -> Self {
        self.external_key_id = Some(id.to_string());
        self
    }

    /// Names the compartment.
    #[must_use]
    pub fn compartment(mut self, id: impl fmt::Display) -> Self {
        self.compartment_id = Some(id.to_string());
        self
    }

    /// Adds details.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Receives audit events. Recording must not fail silently: an error is returned to the
/// operation that produced the event.
pub trait AuditSink: Send + Sync + fmt::Debug + 'static {
    /// Records one event.
    ///
    /// # Errors
    /// When the event cannot be recorded.
    fn record(&self, event: &AuditEvent) -> Result<()>;
}

/// Keeps events in memory.
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, event: &AuditEvent) -> Result<()> {
        self.events
            .lock()
            .map_err(|_| Error::configuration("audit sink lock poisoned"))?
            .push(event.clone());
        Ok(())
    }
}

/// Appends one JSON object per line to a file, flushed and synced per event.
#[derive(Debug)]
pub struct JsonLinesAuditSink {
    file: Mutex<std::fs::File>,
}

impl JsonLinesAuditSink {
    /// Opens (or creates) `path` for appending.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.as_ref())
            .map_err(|e| {
                Error::from(e).with_context(format!("opening {}", path.as_ref().display()))
            })?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }
}

impl AuditSink for JsonLinesAuditSink {
    fn record(&self, event: &AuditEvent) -> Result<()> {
        let mut line =
            serde_json::to_vec(event).map_err(|e| Error::configuration(e.to_string()))?;
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| Error::configuration("audit file lock poisoned"))?;
        file.write_all(&line)?;
        file.sync_data()?;
        Ok(())
    }
}

/// Emits events as `tracing` events (target `cmek::audit`, level INFO).
#[derive(Debug, Default)]
pub struct TracingAuditSink;

impl AuditSink for TracingAuditSink {
    fn record(&self, event: &AuditEvent) -> Result<()> {
        tracing::info!(
            target: "cmek::audit",
            action = event.action.as_str(),
            actor = event.actor.0.as_str(),
            external_key_id = event.external_key_id.as_deref().unwrap_or(""),
            compartment_id = event.compartment_id.as_deref().unwrap_or(""),
            outcome = ?event.outcome,
            detail = event.detail.as_deref().unwrap_or(""),
            "audit"
        );
        Ok(())
    }
}

/// Sends every event to several sinks (for example a file and `tracing`).
#[derive(Debug)]
pub struct FanOutAuditSink(pub Vec<std::sync::Arc<dyn AuditSink>>);

impl AuditSink for FanOutAuditSink {
    fn record(&self, event: &AuditEvent) -> Result<()> {
        self.0.iter().try_for_each(|sink| sink.record(event))
    }
}
