//! Audit events for every administrative change, to a pluggable [`AuditSink`].
//!
//! Key operations (wrap, unwrap) are not audit events: they are counted in
//! [`Stats`](crate::Stats) and traced by the backends, and the customer's KMS logs them.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
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
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug + 'static {
    /// Records one event.
    ///
    /// # Errors
    /// When the event cannot be recorded.
    async fn record(&self, event: &AuditEvent) -> Result<()>;

    /// Records `event` without waiting, if this sink can (memory, files, `tracing`); `None`
    /// for a sink that must wait (a database), the default. Key events arrive where nothing
    /// can wait: a sink that can records them before the call that saw them returns, the
    /// others from a task a moment later.
    fn record_now(&self, event: &AuditEvent) -> Option<Result<()>> {
        let _ = event;
        None
    }

    /// Reads the trail back as an activity feed, oldest first: up to `limit` events after the
    /// cursor `after` (0 for the beginning; then [`AuditPage::next`]).
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) for a sink that cannot be
    /// read back (the default); the sink's failure.
    async fn page(&self, after: u64, limit: usize) -> Result<AuditPage> {
        let _ = (after, limit);
        Err(Error::configuration(format!(
            "{self:?} cannot be read back as an activity feed"
        )))
    }
}

/// One page of the activity feed ([`AuditSink::page`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditPage {
    /// The events, oldest first.
    pub data: Vec<AuditEvent>,
    /// Whether more events follow already.
    pub has_more: bool,
    /// The cursor of the next page: events recorded after this page's.
    pub next: u64,
}

impl AuditPage {
    /// The page of `limit` events after `after` out of `all` (a sink holding them in order).
    pub(crate) fn slice(all: &[AuditEvent], after: u64, limit: usize) -> Self {
        let start = usize::try_from(after).unwrap_or(usize::MAX).min(all.len());
        let end = start.saturating_add(limit).min(all.len());
        Self {
            data: all[start..end].to_vec(),
            has_more: end < all.len(),
            next: end as u64,
        }
    }
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

    fn push(&self, event: &AuditEvent) -> Result<()> {
        self.events
            .lock()
            .map_err(|_| Error::configuration("audit sink lock poisoned"))?
            .push(event.clone());
        Ok(())
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The events of `action`, once there is one or `timeout` has passed (then none). Key
    /// events reach the audit trail from a task of their own, a moment after they happen.
    pub async fn wait_for(&self, action: &str, timeout: std::time::Duration) -> Vec<AuditEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found: Vec<_> = self
                .events()
                .into_iter()
                .filter(|e| e.action == action)
                .collect();
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.push(event)
    }

    fn record_now(&self, event: &AuditEvent) -> Option<Result<()>> {
        Some(self.push(event))
    }

    async fn page(&self, after: u64, limit: usize) -> Result<AuditPage> {
        let events = self
            .events
            .lock()
            .map_err(|_| Error::configuration("audit sink lock poisoned"))?;
        Ok(AuditPage::slice(&events, after, limit))
    }
}

/// Appends one JSON object per line to a file, flushed and synced per event. Read back, the
/// cursor is the number of lines before the page.
#[derive(Debug)]
pub struct JsonLinesAuditSink {
    path: PathBuf,
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
        // A line cut short by a crash mid-write is ended, so the next event starts a line
        // of its own (the cut one is then skipped as unreadable when read back).
        let length = file.metadata()?.len();
        if length > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            let mut reader = std::fs::File::open(path.as_ref())?;
            reader.seek(SeekFrom::Start(length - 1))?;
            reader.read_exact(&mut last)?;
            if last != *b"\n" {
                (&file).write_all(b"\n")?;
                file.sync_data()?;
            }
        }
        Ok(Self {
            path: path.as_ref().to_owned(),
            file: Mutex::new(file),
        })
    }
}

impl JsonLinesAuditSink {
    fn append(&self, event: &AuditEvent) -> Result<()> {
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

#[async_trait]
impl AuditSink for JsonLinesAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.append(event)
    }

    fn record_now(&self, event: &AuditEvent) -> Option<Result<()>> {
        Some(self.append(event))
    }

    async fn page(&self, after: u64, limit: usize) -> Result<AuditPage> {
        let path = self.path.clone();
        crate::files::blocking(move || {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::from(e).with_context(format!("reading {}", path.display())))?;
            // Complete lines only: the last one may be under way. A line a crash cut short
            // (ended when the file was next opened) is passed over with a warning.
            let events: Vec<AuditEvent> = text
                .split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .filter_map(|line| match serde_json::from_str(line) {
                    Ok(event) => Some(event),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "an audit line cut short is passed over");
                        None
                    }
                })
                .collect();
            Ok(AuditPage::slice(&events, after, limit))
        })
        .await
    }
}

/// Emits events as `tracing` events (target `cmek::audit`, level INFO).
#[derive(Debug, Default)]
pub struct TracingAuditSink;

#[async_trait]
impl AuditSink for TracingAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.emit(event);
        Ok(())
    }

    fn record_now(&self, event: &AuditEvent) -> Option<Result<()>> {
        self.emit(event);
        Some(Ok(()))
    }
}

impl TracingAuditSink {
    fn emit(&self, event: &AuditEvent) {
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
    }
}

/// Sends every event to several sinks (for example a file and `tracing`).
#[derive(Debug)]
pub struct FanOutAuditSink(pub Vec<std::sync::Arc<dyn AuditSink>>);

#[async_trait]
impl AuditSink for FanOutAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        for sink in &self.0 {
            sink.record(event).await?;
        }
        Ok(())
    }

    /// The feed of the first sink.
    async fn page(&self, after: u64, limit: usize) -> Result<AuditPage> {
        match self.0.first() {
            Some(sink) => sink.page(after, limit).await,
            None => Ok(AuditPage::slice(&[], after, limit)),
        }
    }
}
