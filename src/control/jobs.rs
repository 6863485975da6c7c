//! Leases that make a job (a rewrap) run on one node at a time, however many nodes start it.
//!
//! A node takes a job's lease in the [`ControlStore`](super::ControlStore) for a while, renews
//! it as the job moves on, and gives it up at the end. A node that crashed holds it no longer
//! than its time to live: then another node may take the job over and resume it from its
//! checkpoint. A node that finds the lease held is told who holds it and until when.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, ErrorKind, Result};

/// The longest a lease lasts without renewal, whatever is asked.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest lease a control plane takes.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(100);

/// Who runs a job, and until when (unless renewed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobLease {
    /// The job, such as `rewrap.ekey_…`.
    pub job: String,
    /// The node holding it (see [`ControlPlaneBuilder::node`](super::ControlPlaneBuilder::node)).
    pub holder: String,
    /// When it lapses unless renewed, by the store's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl JobLease {
    /// A lease of `job` for `holder`, from `now` for `ttl` (at most [`MAX_LEASE`]).
    pub(crate) fn new(job: &str, holder: &str, now: OffsetDateTime, ttl: Duration) -> Self {
        Self {
            job: job.to_owned(),
            holder: holder.to_owned(),
            expires_at: now + ttl.min(MAX_LEASE),
        }
    }

    /// Whether `holder` may take it at `now`: it is theirs already, or it has lapsed.
    pub(crate) fn takeable_by(&self, holder: &str, now: OffsetDateTime) -> bool {
        self.holder == holder || self.expires_at <= now
    }

    /// The error of a node that finds this lease held by another.
    pub(crate) fn held(&self) -> Error {
        Error::new(
            ErrorKind::AlreadyExists,
            format!("{self}; it is resumed from its checkpoint once the lease lapses"),
        )
    }
}

impl fmt::Display for JobLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let until = self
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        write!(
            f,
            "job {} is held by {} until {until}",
            self.job, self.holder
        )
    }
}

/// Checks a job name: 1 to 200 ASCII letters, digits, `.`, `_`, `-` and `:` (it names a file
/// in the file store).
pub(crate) fn check_job_name(job: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if (1..=200).contains(&job.len()) && job.chars().all(allowed) {
        Ok(())
    } else {
        Err(Error::invalid_input(format!("bad job name {job:?}")))
    }
}

/// A name for this node that no other node or control plane shares: the host's name, the
/// process id and a random suffix.
pub(crate) fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_takeable_by_its_holder_or_once_lapsed() {
        let now = OffsetDateTime::now_utc();
        let lease = JobLease::new("rewrap.ekey_a", "node-a", now, Duration::from_secs(30));
        assert!(lease.takeable_by("node-a", now));
        assert!(!lease.takeable_by("node-b", now));
        assert!(lease.takeable_by("node-b", now + Duration::from_secs(30)));
        let error = lease.held();
        assert_eq!(error.kind(), ErrorKind::AlreadyExists);
        assert!(error.message().contains("held by node-a"), "{error}");
    }

    #[test]
    fn job_names_are_checked() {
        assert!(check_job_name("rewrap.ekey_0123").is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(201)] {
            assert_eq!(
                check_job_name(bad).map_err(|e| e.kind()),
                Err(ErrorKind::InvalidInput)
            );
        }
    }

    #[test]
    fn node_names_differ() {
        assert_ne!(default_node_name(), default_node_name());
    }
}
