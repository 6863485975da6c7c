//! The schema: created once however many nodes start together, and refused when newer.

use cmek::ErrorKind;
use cmek::postgres::Postgres;

use super::{fresh_database, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_migrate_once() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let starts = (0..8).map(|_| Postgres::connect(&url));
    for started in futures_util::future::join_all(starts).await {
        started.expect("every node starts");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query("SELECT version FROM cmek_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<i32> = (1..=Postgres::schema_version()).collect();
    assert_eq!(versions, expected, "each migration applied exactly once");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    Postgres::connect(&url).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute("INSERT INTO cmek_schema (version) VALUES (1000)", &[])
        .await
        .unwrap();
    let err = Postgres::connect(&url)
        .await
        .expect_err("a schema from the future");
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(err.to_string().contains("1000"), "{err}");
}

/// A rolling deploy: a newer cmek migrated the database and declared this version
/// compatible, so nodes of this version keep starting.
#[tokio::test]
async fn a_newer_schema_declared_compatible_is_used() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    Postgres::connect(&url).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO cmek_schema (version, compatible_from) VALUES (1000, $1)",
            &[&Postgres::schema_version()],
        )
        .await
        .unwrap();
    let db = Postgres::connect(&url)
        .await
        .expect("a compatible newer schema");
    let id = cmek::DekId::random().unwrap();
    let compartment = cmek::CompartmentId::new("tenant").unwrap();
    use cmek::DekStore as _;
    assert_eq!(db.dek_store().get(&compartment, &id).await.unwrap(), None);
    client
        .execute(
            "UPDATE cmek_schema SET compatible_from = 999 WHERE version = 1000",
            &[],
        )
        .await
        .unwrap();
    let err = Postgres::connect(&url).await.expect_err("not compatible");
    assert!(err.to_string().contains("999"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let err = Postgres::connect(&format!("postgres://cmek:secret-pw@127.0.0.1:{port}/cmek"))
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(!format!("{err} {err:?}").contains("secret-pw"), "{err:?}");
}

/// A service role that may only read and write rows connects to a database already migrated
/// (PostgreSQL 15 grants no CREATE on `public` by default).
#[tokio::test]
async fn a_role_without_create_rights_connects_to_a_migrated_database() {
    use cmek::DekStore;
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    Postgres::connect(&url).await.unwrap();
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let role = format!("cmek_app_{:016x}", super::rand_u128() as u64);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
        ))
        .await
        .unwrap();
    let as_role = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let db = Postgres::connect(&as_role)
        .await
        .expect("the service role connects");
    let compartment = cmek::CompartmentId::new("tenant-role").unwrap();
    assert_eq!(db.dek_store().list(&compartment).await.unwrap(), vec![]);
}

/// A node's pool stays within its size however many tasks ask at once, and its timeout is
/// in force: an attachment waiting on a row lock another session holds gives up in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_size_and_timeout_are_the_nodes_own() {
    use cmek::control::ControlStore as _;
    use cmek::postgres::PostgresOptions;
    use std::time::{Duration, Instant};
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let options = PostgresOptions::default()
        .max_connections(2)
        .timeout(Duration::from_millis(500));
    let db = Postgres::connect_with(&url, options).await.unwrap();
    let store = db.dek_store();
    let compartment = cmek::CompartmentId::new("tenant").unwrap();
    let gets = (0..40).map(|_| {
        let (store, compartment) = (store.clone(), compartment.clone());
        async move {
            use cmek::DekStore as _;
            store.list(&compartment).await
        }
    });
    for listed in futures_util::future::join_all(gets).await {
        assert_eq!(listed.unwrap(), Vec::new());
    }
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'cmek'",
            &[],
        )
        .await
        .unwrap();
    let open: i64 = row.get(0);
    assert!(
        (1..=2).contains(&open),
        "{open} connections for a pool of 2"
    );

    // A compartment whose row another session holds: the attachment gives up in time.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("customer.key");
    cmek::LocalKms::create(&key_file, "local:customer").unwrap();
    let plane = cmek::control::ControlPlane::builder()
        .postgres(&db)
        .provider_managed(std::sync::Arc::new(
            cmek::LocalKms::generate("local:provider").unwrap(),
        ))
        .build()
        .unwrap();
    let actor = cmek::control::Actor::new("admin@example.com");
    let config = cmek::control::ProviderConfig::Local {
        key_file: key_file.display().to_string(),
    };
    let key = plane
        .create_external_key(&actor, cmek::control::CreateExternalKey::new("k", config))
        .await
        .unwrap();
    plane.validate_external_key(&actor, &key.id).await.unwrap();
    let compartment = plane
        .create_compartment(&actor, None)
        .await
        .unwrap()
        .compartment_id;
    let mut admin = admin;
    let blocker = admin.transaction().await.unwrap();
    blocker
        .execute(
            "SELECT 1 FROM cmek_compartments WHERE id = $1 FOR UPDATE",
            &[&compartment.to_string()],
        )
        .await
        .unwrap();
    let started = Instant::now();
    let err = plane
        .attach_external_key(&actor, &compartment, &key.id)
        .await
        .expect_err("the row is held");
    assert_eq!(err.kind(), cmek::ErrorKind::Transient, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up after {:?}",
        started.elapsed()
    );
    blocker.rollback().await.unwrap();
    assert!(
        db.control_store()
            .compartment(&compartment)
            .await
            .unwrap()
            .is_some()
    );
}
