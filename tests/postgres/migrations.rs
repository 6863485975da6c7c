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
