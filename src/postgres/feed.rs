//! [`ChangeFeed`]: every node's changes applied to one node's caches, pushed by `NOTIFY`,
//! read by polling too, and a full resynchronisation when changes it missed were pruned.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::Either;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::changes::{CHANNEL, Change};
use super::tls::Tls;
use super::{OpError, Postgres, column};
use crate::client::Client;
use crate::error::{Error, Result};

/// The shortest poll interval a feed uses (a shorter one is raised to it).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How often a feed removes changes older than [`FeedOptions::keep_changes`].
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Changes read at once, at most.
const BATCH: i64 = 1000;

impl Postgres {
    /// Starts applying every node's changes from now on to `client` (and publishing the
    /// revocations its KMS calls see), in a task that runs until the feed is dropped.
    ///
    /// # Errors
    /// The database's failure reading the current generation.
    pub async fn follow(&self, client: Client, options: FeedOptions) -> Result<ChangeFeed> {
        let state = Arc::new(FeedState {
            db: self.clone(),
            applied: AtomicI64::new(self.generation().await?),
            listening: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            progress: Notify::new(),
        });
        // The listener stays with the client, but does nothing once the feed is dropped.
        let feed = Arc::downgrade(&state);
        let runtime = tokio::runtime::Handle::current();
        client.subscribe_key_events(Arc::new(move |event| {
            if let crate::kms::KeyEventKind::StateChanged {
                revocation: true, ..
            } = event.kind
                && let Some(state) = feed.upgrade()
            {
                let db = state.db.clone();
                let change = Change::Revoked(event.key_config.clone());
                runtime.spawn(async move {
                    if let Err(e) = db.publish(&change).await {
                        tracing::warn!(error = %e, "could not publish a revocation to other nodes");
                    }
                });
            }
        }));
        let options = FeedOptions {
            poll_interval: options.poll_interval.max(MIN_POLL_INTERVAL),
            ..options
        };
        let task = tokio::spawn(run_feed(self.clone(), client, options, state.clone()));
        Ok(ChangeFeed { state, task })
    }
}

/// How a [`ChangeFeed`] follows the database.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct FeedOptions {
    /// How often it reads the changes even without a notification (5 s unless set, 10 ms
    /// at least): the bound for a change whose notification was lost.
    pub poll_interval: Duration,
    /// Whether it `LISTEN`s (true unless set). Turn it off behind a pooler that does not
    /// keep sessions (PgBouncer in transaction mode): changes then arrive by polling only.
    pub listen: bool,
    /// How long changes are kept in the database (24 hours unless set): the feed removes
    /// older ones once an hour ([`Postgres::prune_changes`]). A node cut off for longer drops
    /// every cached DEK when it is back.
    pub keep_changes: Duration,
}

impl FeedOptions {
    /// These options, polling every `interval`.
    pub fn poll_every(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// These options, listening or not.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// These options, keeping changes for `keep`.
    pub fn keep_changes(mut self, keep: Duration) -> Self {
        self.keep_changes = keep;
        self
    }
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            listen: true,
            keep_changes: Duration::from_secs(24 * 3600),
        }
    }
}

/// Applies every node's changes to one node's [`Client`]; made by [`Postgres::follow`].
/// Dropping it stops it.
///
/// Each [`Change`] takes the next number of a one-row generation counter in the transaction
/// that makes it (the row lock is held until commit, so changes commit in the order of their
/// numbers), is kept as a row, and wakes listeners with `NOTIFY cmek_changes` at commit. The
/// feed `LISTEN`s on a connection of its own, reads the changes after the last one it
/// applied, and applies them; it also reads every poll interval and after every reconnect,
/// because notifications sent while a listener is disconnected are lost.
///
/// **Bound.** A change reaches a connected node within the notification's latency
/// (milliseconds: p99 3–8 ms over loopback, see BENCHMARKS.md); one whose notification was
/// lost, within the poll interval (5 s unless set); a node cut off from the database, once
/// it reconnects (after a pause of 10–50 % of the poll interval). A node that cannot reach
/// the database at all still drops every cached DEK at its cache's max age (5 minutes by
/// default), which stays the bound in the worst case.
///
/// **Pruning.** Changes are kept for [`FeedOptions::keep_changes`]. The generation counter
/// tells a feed whether changes it has not read were removed; it then drops every cached DEK
/// of its client ([`Client::purge_all`]), which covers whatever they were.
pub struct ChangeFeed {
    state: Arc<FeedState>,
    task: tokio::task::JoinHandle<()>,
}

struct FeedState {
    db: Postgres,
    applied: AtomicI64,
    listening: AtomicBool,
    connections: AtomicU64,
    resyncs: AtomicU64,
    progress: Notify,
}

impl ChangeFeed {
    /// The generation of the last change applied.
    pub fn generation(&self) -> i64 {
        self.state.applied.load(Ordering::Acquire)
    }

    /// Whether its connection is up (and listening, unless told not to).
    pub fn is_listening(&self) -> bool {
        self.state.listening.load(Ordering::Acquire)
    }

    /// How many times it has connected (1 until its connection is lost once).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Acquire)
    }

    /// How many times it found changes it had missed pruned, and dropped every cached DEK.
    pub fn resyncs(&self) -> u64 {
        self.state.resyncs.load(Ordering::Acquire)
    }

    /// Waits until the change of `generation` is applied; false if `timeout` passes first.
    pub async fn wait_for(&self, generation: i64, timeout: Duration) -> bool {
        let reached = async {
            loop {
                let progressed = self.state.progress.notified();
                if self.generation() >= generation {
                    return;
                }
                progressed.await;
            }
        };
        tokio::time::timeout(timeout, reached).await.is_ok()
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("generation", &self.generation())
            .field("listening", &self.is_listening())
            .field("connections", &self.connections())
            .field("resyncs", &self.resyncs())
            .finish()
    }
}

/// Connects, listens and applies, again and again: a lost connection is made anew after a
/// pause (a random part of the poll interval), and the changes missed are read then.
async fn run_feed(db: Postgres, client: Client, options: FeedOptions, state: Arc<FeedState>) {
    // Nodes started together do not all prune at once.
    let mut next_prune = Instant::now() + PRUNE_EVERY.mul_f64(rand::random_range(0.0..1.0));
    loop {
        if let Err(e) = listen_and_apply(&db, &client, options, &state, &mut next_prune).await {
            tracing::warn!(error = %e, "change feed connection lost; reconnecting");
        }
        state.listening.store(false, Ordering::Release);
        let pause = options.poll_interval.mul_f64(rand::random_range(0.1..0.5));
        tokio::time::sleep(pause).await;
    }
}

async fn listen_and_apply(
    db: &Postgres,
    client: &Client,
    options: FeedOptions,
    state: &FeedState,
    next_prune: &mut Instant,
) -> Result<()> {
    let mut config = (*db.config).clone();
    config.application_name("cmek-feed");
    // The connection delivers notifications to whoever polls it: they are forwarded here.
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
    let connecting = async {
        Ok::<_, tokio_postgres::Error>(match &db.tls {
            Tls::Plain => {
                let (listener, connection) = config.connect(NoTls).await?;
                (
                    listener,
                    tokio::spawn(forward_notifications(connection, wake)),
                )
            }
            Tls::Rustls(tls) => {
                let (listener, connection) = config.connect(tls.clone()).await?;
                (
                    listener,
                    tokio::spawn(forward_notifications(connection, wake)),
                )
            }
        })
    };
    let (listener, driver) = tokio::time::timeout(db.timeout, connecting)
        .await
        .map_err(|_| Error::transient("the change feed could not connect in time"))?
        .map_err(|e| super::errors::db_error(e, "connecting the change feed", &db.target))?;
    let _stop_driver = AbortOnDrop(driver);
    if options.listen {
        db.timed("listening", async {
            Ok(listener.batch_execute(&format!("LISTEN {CHANNEL}")).await?)
        })
        .await?;
    }
    state.connections.fetch_add(1, Ordering::AcqRel);
    state.listening.store(true, Ordering::Release);
    loop {
        catch_up(db, &listener, client, state).await?;
        if Instant::now() >= *next_prune {
            *next_prune = Instant::now() + PRUNE_EVERY;
            match db.prune_changes(options.keep_changes).await {
                Ok(pruned) => tracing::debug!(pruned, "pruned old changes"),
                Err(e) => tracing::warn!(error = %e, "could not prune old changes"),
            }
        }
        let ended = {
            let wake = std::pin::pin!(woken.recv());
            let poll = std::pin::pin!(tokio::time::sleep(options.poll_interval));
            matches!(
                futures_util::future::select(wake, poll).await,
                Either::Left((None, _))
            )
        };
        if ended {
            return Err(Error::transient("the change feed's connection ended"));
        }
        while woken.try_recv().is_ok() {}
    }
}

/// Reads and applies every change after the last one applied. The counter comes in the same
/// statement (one snapshot), so a change it counts and the rows do not hold was pruned.
async fn catch_up(
    db: &Postgres,
    listener: &tokio_postgres::Client,
    client: &Client,
    state: &FeedState,
) -> Result<()> {
    loop {
        let after = state.applied.load(Ordering::Acquire);
        let rows = db
            .timed("reading changes", async {
                Ok(listener
                    .query(
                        "SELECT g.value, c.generation, c.kind, c.key_config_id, c.compartment_id
                         FROM cmek_generation g LEFT JOIN LATERAL (
                             SELECT * FROM cmek_changes WHERE generation > $1
                             ORDER BY generation LIMIT $2
                         ) c ON true",
                        &[&after, &BATCH],
                    )
                    .await?)
            })
            .await?;
        let decode = |row: &tokio_postgres::Row| -> std::result::Result<_, OpError> {
            let current: i64 = column(row, 0)?;
            let generation: Option<i64> = column(row, 1)?;
            let change = match generation {
                Some(generation) => {
                    let kind: &str = column(row, 2)?;
                    let key_config: Option<&str> = column(row, 3)?;
                    let compartment: Option<&str> = column(row, 4)?;
                    Some((
                        generation,
                        Change::from_columns(kind, key_config, compartment),
                    ))
                }
                None => None,
            };
            Ok((current, change))
        };
        let mut changes = Vec::with_capacity(rows.len());
        let mut current = after;
        for row in &rows {
            let (counted, change) = decode(row).map_err(|e| db.error(e, "reading changes"))?;
            current = counted;
            changes.extend(change);
        }
        if current < after {
            // The counter went back (a restore, a failover to a replica that lagged): the
            // numbers this node applied will be used again for other changes.
            resync(client, state, current, "the change counter went back");
            continue;
        }
        let read = changes.len() as i64;
        let mut previous = after;
        for (generation, change) in changes {
            if generation != previous + 1 {
                resync(
                    client,
                    state,
                    generation - 1,
                    "changes it had not read were pruned",
                );
            }
            match change {
                Some(change) => change.apply(client),
                // Made by a newer cmek: what it asks is unknown, so do everything.
                None => resync(
                    client,
                    state,
                    generation,
                    "a change this cmek does not know",
                ),
            }
            previous = generation;
            state.applied.store(generation, Ordering::Release);
        }
        if read == 0 && current > after {
            resync(
                client,
                state,
                current,
                "changes it had not read were pruned",
            );
        }
        state.progress.notify_waiters();
        if read < BATCH {
            return Ok(());
        }
    }
}

/// Drops every cached DEK of `client`, which covers whatever changes it could not apply,
/// and moves the feed on to the generation `to`.
fn resync(client: &Client, state: &FeedState, to: i64, why: &str) {
    let from = state.applied.load(Ordering::Acquire);
    tracing::warn!(
        from,
        to,
        why,
        "change feed resynchronised: every cached DEK dropped"
    );
    client.purge_all();
    state.resyncs.fetch_add(1, Ordering::AcqRel);
    state.applied.store(to, Ordering::Release);
}

/// Drives `connection`, sending a wake-up for every notification on it.
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    wake: tokio::sync::mpsc::UnboundedSender<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(Ok(message)) = messages.next().await {
        if let AsyncMessage::Notification(_) = message {
            let _ = wake.send(());
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
