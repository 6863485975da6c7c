//! [`PostgresOptions`]: the size of a node's pool and how long an operation may take.

use std::time::Duration;

/// How a [`Postgres`](super::Postgres) pool connects. Twenty nodes with the default pool
/// open up to 340 connections (each node's feed takes one more): mind the server's
/// `max_connections`, or put a pooler in front (then see [`FeedOptions::listen`](super::FeedOptions::listen)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Connections the pool opens at most (16 unless set; at least 1).
    pub max_connections: usize,
    /// How long one operation may take, from waiting for a connection to the answer, before
    /// it fails with a transient error (5 s unless set; 100 ms to 10 min). The server is
    /// given the same as its statement, lock and idle-in-transaction timeouts, so a node cut
    /// off mid-transaction holds no lock for longer.
    pub timeout: Duration,
}

impl PostgresOptions {
    /// These options with a pool of at most `connections`.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// These options with operations timing out after `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(100), Duration::from_secs(600));
        self
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_kept_within_their_bounds() {
        let options = PostgresOptions::default()
            .max_connections(0)
            .timeout(Duration::ZERO);
        assert_eq!(options.max_connections, 1);
        assert_eq!(options.timeout, Duration::from_millis(100));
        let options = PostgresOptions::default().timeout(Duration::from_secs(86_400));
        assert_eq!(options.timeout, Duration::from_secs(600));
    }
}
