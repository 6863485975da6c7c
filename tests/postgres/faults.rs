//! The database failing under a node: stopped under traffic (a proxy between the node and
//! the server closes every connection and refuses new ones, as a stopped server does) and
//! started again; a connection killed mid-transaction; two nodes starting the same rewrap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cmek::control::{
    Actor, BackendFactory, ControlPlane, ControlStore, CreateExternalKey, ExternalKey,
    ProviderConfig,
};
use cmek::postgres::{ChangeFeed, FeedOptions, Postgres};
use cmek::testkit::FaultyKms;
use cmek::{ErrorKind, KmsBackend, LocalKms};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{fresh_database, server};

/// A TCP proxy to the server that can be made to act as a stopped server: every open
/// connection is closed and new ones are closed on arrival.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (down_in, cut_in) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if down_in.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = cut_in.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { port, down, cut }
    }

    /// The server "stops": connections close, new ones are refused.
    fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// The server is back.
    fn start_again(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// `url` with the server's address replaced by the proxy's.
    fn url(&self, url: &str, upstream: &str) -> String {
        url.replacen(upstream, &format!("127.0.0.1:{}", self.port), 1)
    }
}

/// `host:port` of the server in `url`.
fn address_of(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("a TCP server is needed, not {other:?}"),
    };
    format!(
        "{host}:{}",
        config.get_ports().first().copied().unwrap_or(5432)
    )
}

/// The customer's keys, by key file name: the same backends for every node.
#[derive(Debug, Clone)]
struct SharedKeys(Vec<(&'static str, Arc<dyn KmsBackend>)>);

#[async_trait::async_trait]
impl BackendFactory for SharedKeys {
    async fn backend(&self, config: &ProviderConfig) -> cmek::Result<Arc<dyn KmsBackend>> {
        let ProviderConfig::Local { key_file } = config else {
            panic!("local keys only");
        };
        let found = self.0.iter().find(|(name, _)| key_file == name);
        Ok(found.expect("a known key file").1.clone())
    }
}

fn plane_on(db: &Postgres, customer: Arc<dyn KmsBackend>, node: &str) -> ControlPlane {
    planes_on(
        db,
        SharedKeys(vec![("/shared/customer.key", customer)]),
        node,
    )
}

fn planes_on(db: &Postgres, keys: SharedKeys, node: &str) -> ControlPlane {
    ControlPlane::builder()
        .postgres(db)
        .provider_managed(Arc::new(LocalKms::generate("local:provider").unwrap()))
        .factory(Arc::new(keys))
        .node(node)
        .build()
        .unwrap()
}

/// A validated configuration of the customer's key (`/shared/customer.key`), made on `plane`.
async fn validated_key(plane: &ControlPlane, actor: &Actor) -> ExternalKey {
    let request = CreateExternalKey::new("customer", local_config());
    let key = plane.create_external_key(actor, request).await.unwrap();
    plane.validate_external_key(actor, &key.id).await.unwrap();
    key
}

/// A node that reaches the database through a [`Proxy`] and follows the changes (polling
/// every `poll`), beside an admin node that reaches it directly; both use `customer`.
struct CutOffNode {
    proxy: Proxy,
    admin_db: Postgres,
    admin: ControlPlane,
    node: ControlPlane,
    feed: ChangeFeed,
}

async fn cut_off_node(url: &str, customer: Arc<dyn KmsBackend>, poll: Duration) -> CutOffNode {
    let upstream = address_of(url);
    let proxy = Proxy::start(upstream.clone()).await;
    let admin_db = Postgres::connect(url).await.unwrap();
    let admin = plane_on(&admin_db, customer.clone(), "admin");
    let node_db = Postgres::connect(&proxy.url(url, &upstream)).await.unwrap();
    let node = plane_on(&node_db, customer, "node");
    let options = FeedOptions::default().poll_every(poll);
    let feed = node_db
        .follow(node.client().clone(), options)
        .await
        .unwrap();
    CutOffNode {
        proxy,
        admin_db,
        admin,
        node,
        feed,
    }
}

fn local_config() -> ProviderConfig {
    config_of("/shared/customer.key")
}

fn config_of(key_file: &str) -> ProviderConfig {
    ProviderConfig::Local {
        key_file: key_file.into(),
    }
}

/// Under traffic the server stops: DEKs a node has cached keep working; anything that needs
/// the database fails with a transient error within the timeout, never a panic. The server
/// comes back: the node reconnects by itself, and a change made while it was cut off
/// reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_server_leaves_warm_paths_working_and_a_restart_resynchronises() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let customer = Arc::new(LocalKms::generate("local:customer").unwrap());
    let CutOffNode {
        proxy,
        admin_db,
        admin,
        node,
        feed,
    } = cut_off_node(&url, customer, Duration::from_millis(200)).await;

    let actor = Actor::new("admin@example.com");
    let key = validated_key(&admin, &actor).await;
    let warm = admin
        .create_compartment(&actor, Some(&key.id))
        .await
        .unwrap()
        .compartment_id;
    let cold = admin
        .create_compartment(&actor, Some(&key.id))
        .await
        .unwrap()
        .compartment_id;
    let client = node.client();
    let warm_envelope = client.encrypt_compact(&warm, b"warm", b"").await.unwrap();
    assert_eq!(
        client.decrypt(&warm, &warm_envelope, b"").await.unwrap(),
        b"warm"
    );
    let cold_envelope = admin
        .client()
        .encrypt_compact(&cold, b"cold", b"")
        .await
        .unwrap();

    // Traffic on the warm compartment throughout.
    let traffic = {
        let client = client.clone();
        let (warm, envelope) = (warm.clone(), warm_envelope.clone());
        tokio::spawn(async move {
            let mut done = 0u64;
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                assert_eq!(
                    client.decrypt(&warm, &envelope, b"").await.unwrap(),
                    b"warm"
                );
                client.encrypt_compact(&warm, b"more", b"").await.unwrap();
                done += 1;
                tokio::task::yield_now().await;
            }
            done
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A miss needs the DEK record: transient, within the timeout.
    for _ in 0..3 {
        let started = Instant::now();
        let err = client
            .decrypt(&cold, &cold_envelope, b"")
            .await
            .expect_err("the DEK record is out of reach");
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    }
    let err = node
        .create_compartment(&actor, None)
        .await
        .expect_err("control state is out of reach");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(traffic.await.unwrap() > 100, "the warm path stalled");

    // While the node is cut off, the key is rotated away on another node: it must hear of it.
    let before = feed.generation();
    admin
        .delete_external_key(&actor, &key.id, true)
        .await
        .unwrap();
    let published = admin_db.generation().await.unwrap();
    assert!(published > before);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(feed.generation(), before, "the node heard while cut off");

    proxy.start_again();
    assert!(
        feed.wait_for(published, Duration::from_secs(10)).await,
        "the node did not resynchronise: {feed:?}"
    );
    assert_eq!(
        client.decrypt(&cold, &cold_envelope, b"").await.unwrap(),
        b"cold",
        "the node reconnects by itself"
    );
    let err = client
        .encrypt_compact(&warm, b"after deletion", b"")
        .await
        .expect_err("the deleted key's cached DEK was dropped on resynchronising");
    assert_ne!(err.kind(), ErrorKind::Transient, "{err}");
}

/// A node's connection is killed in the middle of an attachment (its transaction waits on a
/// row lock another session holds): the attachment fails with a transient error, nothing of
/// it is left behind, and trying again attaches once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_killed_mid_transaction_loses_nothing() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let customer: Arc<dyn KmsBackend> = Arc::new(LocalKms::generate("local:customer").unwrap());
    let db = Postgres::connect(&url).await.unwrap();
    let node = Arc::new(plane_on(&db, customer, "node"));
    let actor = Actor::new("admin@example.com");
    let key = validated_key(&node, &actor).await;
    let compartment = node
        .create_compartment(&actor, None)
        .await
        .unwrap()
        .compartment_id;
    let generation = db.generation().await.unwrap();

    let (mut admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let blocker = admin.transaction().await.unwrap();
    blocker
        .execute(
            "SELECT 1 FROM cmek_compartments WHERE id = $1 FOR UPDATE",
            &[&compartment.to_string()],
        )
        .await
        .unwrap();
    let attach = {
        let (node, actor, compartment, key) = (
            node.clone(),
            actor.clone(),
            compartment.clone(),
            key.id.clone(),
        );
        tokio::spawn(async move { node.attach_external_key(&actor, &compartment, &key).await })
    };
    // The attachment's backend waits for the lock: kill it there.
    let (killer, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let started = Instant::now();
    let killed = loop {
        let rows = killer
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND application_name = 'cmek'",
                &[],
            )
            .await
            .unwrap();
        if !rows.is_empty() {
            break rows.len();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the attachment never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(killed, 1);
    let err = attach
        .await
        .unwrap()
        .expect_err("its connection was killed");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    blocker.rollback().await.unwrap();

    let stored = db
        .control_store()
        .compartment(&compartment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.external_key_id, None, "half an attachment was kept");
    assert_eq!(
        db.generation().await.unwrap(),
        generation,
        "a change was recorded"
    );
    let attached = node
        .attach_external_key(&actor, &compartment, &key.id)
        .await
        .unwrap();
    assert_eq!(attached.external_key_id.as_ref(), Some(&key.id));
    assert_eq!(db.generation().await.unwrap(), generation + 1);
}

/// Two nodes start the same rewrap at once: one does it, the other is told who holds it. A
/// node that crashed holding the lease holds it only until it lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewrap_started_on_two_nodes_runs_once() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let old = Arc::new(LocalKms::generate("local:old").unwrap());
    let new = Arc::new(FaultyKms::new(LocalKms::generate("local:new").unwrap()));
    let keys = SharedKeys(vec![
        ("/shared/customer.key", old),
        ("/shared/new.key", new.clone()),
    ]);
    let (db_a, db_b) = (
        Postgres::connect(&url).await.unwrap(),
        Postgres::connect(&url).await.unwrap(),
    );
    let a = planes_on(&db_a, keys.clone(), "node-a");
    let b = planes_on(&db_b, keys, "node-b");
    let actor = Actor::new("admin@example.com");
    let key = validated_key(&a, &actor).await;
    for _ in 0..20 {
        let c = a
            .create_compartment(&actor, Some(&key.id))
            .await
            .unwrap()
            .compartment_id;
        a.client().encrypt_compact(&c, b"data", b"").await.unwrap();
    }
    a.rotate_external_key(&actor, &key.id, config_of("/shared/new.key"))
        .await
        .unwrap();
    new.set_latency(Duration::from_millis(20));

    let (on_a, on_b) = tokio::join!(
        a.rewrap(&actor, &key.id, 5, |_| {}),
        b.rewrap(&actor, &key.id, 5, |_| {})
    );
    // Either may win; exactly one does, and the other names it.
    let (job, refused, winner) = match (on_a, on_b) {
        (Ok(job), Err(e)) => (job, e, "node-a"),
        (Err(e), Ok(job)) => (job, e, "node-b"),
        (a, b) => panic!("not exactly one run: {a:?} / {b:?}"),
    };
    assert_eq!(job.rewrapped, 20, "{job:?}");
    assert_eq!(job.node.as_deref(), Some(winner));
    assert_eq!(refused.kind(), ErrorKind::AlreadyExists, "{refused}");
    assert!(
        refused.message().contains(&format!("held by {winner}")),
        "{refused}"
    );
    assert_eq!(
        a.job_lease(&format!("rewrap.{}", key.id)).await.unwrap(),
        None
    );

    // A node crashes holding the lease: the others wait for it to lapse, then take over.
    new.set_latency(Duration::ZERO);
    let job = format!("rewrap.{}", key.id);
    db_a.control_store()
        .acquire_lease(&job, "crashed-node", Duration::from_millis(300))
        .await
        .unwrap();
    let refused = b.rewrap(&actor, &key.id, 5, |_| {}).await.unwrap_err();
    assert!(
        refused.message().contains("held by crashed-node"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let job = b.rewrap(&actor, &key.id, 5, |_| {}).await.unwrap();
    assert_eq!((job.rewrapped, job.already_current), (0, 20), "{job:?}");
    assert_eq!(job.node.as_deref(), Some("node-b"));
}

/// Changes a node had not read were pruned while it was cut off: once back, it cannot know
/// what they were, so it drops every cached DEK (here a compartment no change named).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_pruned_changes_drops_every_cached_dek() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let customer = Arc::new(FaultyKms::new(
        LocalKms::generate("local:customer").unwrap(),
    ));
    let CutOffNode {
        proxy,
        admin_db,
        admin,
        node,
        feed,
    } = cut_off_node(&url, customer.clone(), Duration::from_millis(100)).await;

    let actor = Actor::new("admin@example.com");
    let key = validated_key(&admin, &actor).await;
    let warm = admin
        .create_compartment(&actor, Some(&key.id))
        .await
        .unwrap()
        .compartment_id;
    let other = admin
        .create_compartment(&actor, None)
        .await
        .unwrap()
        .compartment_id;
    let envelope = admin
        .client()
        .encrypt_compact(&warm, b"warm", b"")
        .await
        .unwrap();
    let client = node.client();
    assert_eq!(
        client.decrypt(&warm, &envelope, b"").await.unwrap(),
        b"warm"
    );
    let published = admin_db.generation().await.unwrap();
    assert!(feed.wait_for(published, Duration::from_secs(5)).await);
    let unwraps = customer.unwrap_calls();
    client.decrypt(&warm, &envelope, b"").await.unwrap();
    assert_eq!(customer.unwrap_calls(), unwraps, "served from the cache");

    proxy.stop();
    admin
        .attach_external_key(&actor, &other, &key.id)
        .await
        .unwrap();
    assert!(admin_db.prune_changes(Duration::ZERO).await.unwrap() >= 1);
    proxy.start_again();
    let current = admin_db.generation().await.unwrap();
    assert!(
        feed.wait_for(current, Duration::from_secs(10)).await,
        "{feed:?}"
    );
    assert_eq!(feed.resyncs(), 1, "{feed:?}");
    client.decrypt(&warm, &envelope, b"").await.unwrap();
    assert_eq!(
        customer.unwrap_calls(),
        unwraps + 1,
        "the cached DEK was dropped: the KMS is asked again"
    );
}

/// A run that stalls for longer than its lease lives loses the job to another node: it stops
/// at its next checkpoint without writing its progress over the new holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewrap_that_lost_its_lease_stops_without_writing() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let old = Arc::new(LocalKms::generate("local:old").unwrap());
    let new = Arc::new(FaultyKms::new(LocalKms::generate("local:new").unwrap()));
    let keys = SharedKeys(vec![
        ("/shared/customer.key", old),
        ("/shared/new.key", new.clone()),
    ]);
    let db = Postgres::connect(&url).await.unwrap();
    let plane = ControlPlane::builder()
        .postgres(&db)
        .provider_managed(Arc::new(LocalKms::generate("local:provider").unwrap()))
        .factory(Arc::new(keys))
        .node("slow-node")
        .job_lease(Duration::from_millis(200))
        .build()
        .unwrap();
    let actor = Actor::new("admin@example.com");
    let key = validated_key(&plane, &actor).await;
    for _ in 0..3 {
        let c = plane
            .create_compartment(&actor, Some(&key.id))
            .await
            .unwrap()
            .compartment_id;
        plane
            .client()
            .encrypt_compact(&c, b"data", b"")
            .await
            .unwrap();
    }
    plane
        .rotate_external_key(&actor, &key.id, config_of("/shared/new.key"))
        .await
        .unwrap();
    // Each batch (one record) takes longer than the lease lives.
    new.set_latency(Duration::from_millis(400));
    let job = format!("rewrap.{}", key.id);
    let thief = {
        let (store, job) = (db.control_store(), job.clone());
        tokio::spawn(async move {
            loop {
                if store
                    .acquire_lease(&job, "thief", Duration::from_secs(60))
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let err = plane
        .rewrap(&actor, &key.id, 1, |_| {})
        .await
        .expect_err("the lease was taken over");
    thief.await.unwrap();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.message().contains("held by thief"), "{err}");
    assert_eq!(
        db.control_store().rewrap_job(&key.id).await.unwrap(),
        None,
        "the run that lost its lease wrote its progress"
    );
    assert_eq!(
        plane
            .job_lease(&job)
            .await
            .unwrap()
            .map(|l| l.holder)
            .as_deref(),
        Some("thief"),
        "the run gave up a lease it no longer held"
    );
}
