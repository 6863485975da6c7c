//! Changes pushed to every node: nodes are control planes over one database, each with a
//! pool and a change feed of its own.

use std::sync::Arc;
use std::time::Duration;

use cmek::control::{
    Actor, ControlPlane, CreateExternalKey, PROVIDER_MANAGED, ProviderConfig, ValidationStatus,
};
use cmek::postgres::{ChangeFeed, FeedOptions, Postgres};
use cmek::{CompartmentId, LocalKms};

use super::{fresh_database, server};

/// One service node: its control plane, and the feed that keeps its client's caches current.
struct Node {
    plane: ControlPlane,
    feed: Option<ChangeFeed>,
    db: Postgres,
}

async fn node(url: &str, provider: &Arc<LocalKms>, feed: Option<FeedOptions>) -> Node {
    let db = Postgres::connect(url).await.expect("connect");
    let plane = ControlPlane::builder()
        .store(Arc::new(db.control_store()))
        .dek_store(Arc::new(db.dek_store()))
        .provider_managed(provider.clone())
        .build()
        .expect("plane");
    let feed = match feed {
        Some(options) => Some(
            db.follow(plane.client().clone(), options)
                .await
                .expect("follow"),
        ),
        None => None,
    };
    Node { plane, feed, db }
}

fn key_config_of(envelope: &[u8]) -> String {
    cmek::format::inspect(envelope)
        .expect("an envelope")
        .key_config_id
        .expect("a self-contained envelope names its key configuration")
}

/// Three nodes; the key is attached on the first. The second follows the changes, the
/// third does not (the control: without a feed its cache keeps the old key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attachment_on_one_node_reaches_the_others() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(LocalKms::generate("local:provider").unwrap());
    let a = node(&url, &provider, Some(FeedOptions::default())).await;
    let b = node(&url, &provider, Some(FeedOptions::default())).await;
    let c = node(&url, &provider, None).await;
    let admin = Actor::new("admin@example.com");

    let key_file = dir.path().join("customer.key");
    LocalKms::create(&key_file, "local:customer").unwrap();
    let config = ProviderConfig::Local {
        key_file: key_file.display().to_string(),
    };
    let key = a
        .plane
        .create_external_key(&admin, CreateExternalKey::new("customer", config))
        .await
        .unwrap();
    let validated = a
        .plane
        .validate_external_key(&admin, &key.id)
        .await
        .unwrap();
    assert_eq!(validated.status, ValidationStatus::Success, "{validated:?}");
    let compartment: CompartmentId = a
        .plane
        .create_compartment(&admin, None)
        .await
        .unwrap()
        .compartment_id;
    for n in [&b, &c] {
        let before = n
            .plane
            .client()
            .encrypt(&compartment, b"x", b"")
            .await
            .unwrap();
        assert_eq!(key_config_of(&before), PROVIDER_MANAGED);
    }

    a.plane
        .attach_external_key(&admin, &compartment, &key.id)
        .await
        .unwrap();
    let generation = a.db.generation().await.unwrap();
    let feed = b.feed.as_ref().unwrap();
    assert!(
        feed.wait_for(generation, Duration::from_secs(2)).await,
        "node b did not apply the change within 2 s: {feed:?}"
    );
    let after = b
        .plane
        .client()
        .encrypt(&compartment, b"x", b"")
        .await
        .unwrap();
    assert_eq!(
        key_config_of(&after),
        key.key_config().as_str(),
        "node b uses the key"
    );
    let unfollowed = c
        .plane
        .client()
        .encrypt(&compartment, b"x", b"")
        .await
        .unwrap();
    assert_eq!(
        key_config_of(&unfollowed),
        PROVIDER_MANAGED,
        "the control: a node without a feed keeps its cached DEK"
    );
    // What b wrote under the key, a and c read (the DEK records are shared).
    for n in [&a, &c] {
        assert_eq!(
            n.plane
                .client()
                .decrypt(&compartment, &after, b"")
                .await
                .unwrap(),
            b"x"
        );
    }
}

/// A change made while a node's listener is cut off reaches it once it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_made_while_a_node_is_disconnected_still_reaches_it() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let provider = Arc::new(LocalKms::generate("local:provider").unwrap());
    let options = FeedOptions::default().poll_every(Duration::from_millis(500));
    let a = node(&url, &provider, None).await;
    let b = node(&url, &provider, Some(options)).await;
    let feed = b.feed.as_ref().unwrap();
    for _ in 0..100 {
        if feed.is_listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(feed.is_listening(), "{feed:?}");

    // Cut every change-feed connection, then make a change at once.
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'cmek-feed' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cut.len(), 1, "one listener to cut");
    let compartment = CompartmentId::new("tenant-while-away").unwrap();
    let generation =
        a.db.publish(&cmek::postgres::Change::Purged(compartment))
            .await
            .unwrap();

    assert!(
        feed.wait_for(generation, Duration::from_secs(5)).await,
        "the change did not arrive after the reconnect: {feed:?}"
    );
    assert!(feed.connections() >= 2, "it reconnected: {feed:?}");
}

/// Hands every node the same customer key (one KMS seen from several nodes).
#[derive(Debug)]
struct SharedKey(Arc<cmek::testkit::FaultyKms>);

#[async_trait::async_trait]
impl cmek::control::BackendFactory for SharedKey {
    async fn backend(&self, _config: &ProviderConfig) -> cmek::Result<Arc<dyn cmek::KmsBackend>> {
        Ok(self.0.clone())
    }
}

/// The customer disables the key; one node sees it at the KMS, and the others drop their
/// cached DEKs at once instead of decrypting for up to five more minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_one_node_sees_reaches_the_others() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let provider = Arc::new(LocalKms::generate("local:provider").unwrap());
    let customer = Arc::new(cmek::testkit::FaultyKms::new(
        LocalKms::generate("local:customer").unwrap(),
    ));
    let planes = |db: &Postgres| {
        ControlPlane::builder()
            .store(Arc::new(db.control_store()))
            .dek_store(Arc::new(db.dek_store()))
            .provider_managed(provider.clone())
            .factory(Arc::new(SharedKey(customer.clone())))
            .build()
            .expect("plane")
    };
    let (db_a, db_b, db_c) = (
        Postgres::connect(&url).await.unwrap(),
        Postgres::connect(&url).await.unwrap(),
        Postgres::connect(&url).await.unwrap(),
    );
    let (a, b, c) = (planes(&db_a), planes(&db_b), planes(&db_c));
    let _feed_a = db_a
        .follow(a.client().clone(), FeedOptions::default())
        .await
        .unwrap();
    let feed_b = db_b
        .follow(b.client().clone(), FeedOptions::default())
        .await
        .unwrap();
    let admin = Actor::new("admin@example.com");
    let config = ProviderConfig::Local {
        key_file: "/shared/customer.key".into(),
    };
    let key = a
        .create_external_key(&admin, CreateExternalKey::new("customer", config))
        .await
        .unwrap();
    a.validate_external_key(&admin, &key.id).await.unwrap();
    let compartment = a
        .create_compartment(&admin, Some(&key.id))
        .await
        .unwrap()
        .compartment_id;
    let envelope = a
        .client()
        .encrypt(&compartment, b"secret", b"")
        .await
        .unwrap();
    // b and c have the DEK cached.
    for n in [&b, &c] {
        assert_eq!(
            n.client()
                .decrypt(&compartment, &envelope, b"")
                .await
                .unwrap(),
            b"secret"
        );
    }

    customer.disable();
    let before = db_a.generation().await.unwrap();
    a.client().purge(&compartment);
    let err = a
        .client()
        .decrypt(&compartment, &envelope, b"")
        .await
        .expect_err("the key is disabled");
    assert_eq!(err.kind(), cmek::ErrorKind::KeyRevoked, "{err}");

    // a publishes what it saw; b applies it.
    let started = std::time::Instant::now();
    let mut published = before;
    while published == before && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        published = db_a.generation().await.unwrap();
    }
    assert!(published > before, "node a published no revocation");
    assert!(
        feed_b.wait_for(published, Duration::from_secs(2)).await,
        "{feed_b:?}"
    );
    let err = b
        .client()
        .decrypt(&compartment, &envelope, b"")
        .await
        .expect_err("node b must ask the KMS, which refuses");
    assert_eq!(err.kind(), cmek::ErrorKind::KeyRevoked, "{err}");
    assert_eq!(
        c.client()
            .decrypt(&compartment, &envelope, b"")
            .await
            .unwrap(),
        b"secret",
        "the control: a node without a feed decrypts from its cache until max age"
    );
}

/// The database was restored from an older backup: the change counter went back, and the
/// numbers a node applied are used again for other changes. The node cannot tell what it
/// missed, so it drops every cached DEK and follows on from the new numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_counter_that_went_back_resynchronises() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let provider = Arc::new(LocalKms::generate("local:provider").unwrap());
    let a = node(&url, &provider, None).await;
    let b = node(
        &url,
        &provider,
        Some(FeedOptions::default().poll_every(Duration::from_millis(50))),
    )
    .await;
    let feed = b.feed.as_ref().unwrap();
    let mut last = 0;
    for i in 0..3 {
        let change = cmek::postgres::Change::Purged(CompartmentId::new(format!("t-{i}")).unwrap());
        last = a.db.publish(&change).await.unwrap();
    }
    assert!(
        feed.wait_for(last, Duration::from_secs(5)).await,
        "{feed:?}"
    );
    assert_eq!(feed.resyncs(), 0);

    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute("UPDATE cmek_generation SET value = 0; DELETE FROM cmek_changes")
        .await
        .unwrap();
    let change = cmek::postgres::Change::Purged(CompartmentId::new("t-new").unwrap());
    assert_eq!(a.db.publish(&change).await.unwrap(), 1);
    let started = std::time::Instant::now();
    while feed.resyncs() == 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(feed.resyncs(), 1, "{feed:?}");
    assert_eq!(feed.generation(), 1, "{feed:?}");
}
