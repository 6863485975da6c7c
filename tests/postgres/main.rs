//! `PostgresDekStore` and `PostgresControlStore` against a real PostgreSQL server on
//! 127.0.0.1 (`scripts/test.sh` starts a throwaway cluster and sets
//! `CMEK_TEST_POSTGRES_URL`; without it the tests are skipped, unless
//! `CMEK_REQUIRE_EMULATORS` is set). Every test works in a database of its own.

mod faults;
mod feed;
mod migrations;
mod nodes;
mod tls;

use std::sync::{Arc, Mutex};

use cmek::postgres::Postgres;
use cmek::testkit::store_conformance;

/// The server's URL, or `None` (the test is skipped).
pub(crate) fn server() -> Option<String> {
    match std::env::var("CMEK_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("CMEK_TEST_POSTGRES_URL is not set, and CMEK_REQUIRE_EMULATORS is")
        }
        Err(_) => {
            eprintln!(
                "skipped: CMEK_TEST_POSTGRES_URL is not set (scripts/test.sh starts PostgreSQL)"
            );
            None
        }
    }
}

/// A new, empty database on the server; its URL.
pub(crate) async fn fresh_database(server: &str) -> String {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(connection);
    let name = format!("cmek_test_{:032x}", rand_u128());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("a URL with a database name: {server}"),
    }
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("rng");
    u128::from_be_bytes(bytes)
}

/// `count` handles on the database at `url`, each with a pool of its own (as separate
/// processes would have), handed out one per call of the returned function.
async fn handles(url: &str, count: usize) -> impl Fn() -> Postgres {
    let mut all = Vec::with_capacity(count);
    for _ in 0..count {
        all.push(Postgres::connect(url).await.expect("connect"));
    }
    let all = Mutex::new(all);
    move || all.lock().unwrap().pop().expect("enough handles")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dek_store_passes_the_suite() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let next = handles(&url, 12).await;
    store_conformance::dek_store(move || Arc::new(next().dek_store())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_store_passes_the_suite() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let next = handles(&url, 20).await;
    store_conformance::control_store(move || Arc::new(next().control_store())).await;
}

/// The rules hold whatever isolation level the database defaults to: cmek's transactions
/// ask for READ COMMITTED themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_suites_pass_on_a_database_defaulting_to_serializable() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let name = url.rsplit('/').next().expect("a database name");
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET default_transaction_isolation = 'serializable'"
        ))
        .await
        .expect("alter the database");
    // Nodes starting together read the schema version each other wrote.
    let starts = (0..8).map(|_| Postgres::connect(&url));
    for started in futures_util::future::join_all(starts).await {
        started.expect("every node starts");
    }
    let next = handles(&url, 20).await;
    store_conformance::control_store(move || Arc::new(next().control_store())).await;
}

/// The audit trail reads back as an activity feed, in order, from any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_sink_passes_the_suite() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let db = Postgres::connect(&url).await.expect("connect");
    store_conformance::audit_sink(Arc::new(db.audit_sink())).await;
}
