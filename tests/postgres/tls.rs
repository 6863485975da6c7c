//! TLS to the server: the test cluster has a certificate for 127.0.0.1 from a throwaway
//! authority (`scripts/pg_tls.py`; its certificate in `CMEK_TEST_POSTGRES_CA`).

use std::sync::Arc;
use std::time::Duration;

use cmek::postgres::{Change, FeedOptions, Postgres};
use cmek::{Client, CompartmentId, ErrorKind, KeyConfigId, LocalKms, MemoryDekStore};

use super::{fresh_database, server};

/// The authority's certificate, or `None` (skipped) without one.
fn authority() -> Option<String> {
    match std::env::var("CMEK_TEST_POSTGRES_CA") {
        Ok(path) => Some(path),
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("CMEK_TEST_POSTGRES_CA is not set, and CMEK_REQUIRE_EMULATORS is")
        }
        Err(_) => None,
    }
}

/// `url` with `query` added.
fn with(url: &str, query: &str) -> String {
    format!("{url}?{query}")
}

/// Every connection (the pool's and the change feed's) is encrypted when the URL asks, and
/// the server is verified against the authority given.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_use_tls_when_the_url_asks() {
    let (Some(server), Some(ca)) = (server(), authority()) else {
        return;
    };
    let url = fresh_database(&server).await;
    let secure = with(&url, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let db = Postgres::connect(&secure).await.expect("connect over TLS");
    assert!(format!("{db:?}").contains("tls: true"), "{db:?}");
    let client = Client::builder()
        .key(
            KeyConfigId::new("local").unwrap(),
            Arc::new(LocalKms::generate("local:tls").unwrap()),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()
        .unwrap();
    let feed = db
        .follow(client, FeedOptions::default())
        .await
        .expect("follow over TLS");
    let generation = db
        .publish(&Change::Purged(CompartmentId::new("tenant-1").unwrap()))
        .await
        .unwrap();
    assert!(
        feed.wait_for(generation, Duration::from_secs(5)).await,
        "{feed:?}"
    );

    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = admin
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = current_database() AND a.application_name LIKE 'cmek%'",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(seen.iter().any(|(name, _)| name == "cmek"), "{seen:?}");
    assert!(seen.iter().any(|(name, _)| name == "cmek-feed"), "{seen:?}");
    assert!(
        seen.iter().all(|(_, ssl)| *ssl),
        "a plain connection: {seen:?}"
    );
}

/// A server the given authorities do not vouch for, or one under another name, is refused
/// as a setup to fix (not retried as an outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_server_is_refused() {
    let (Some(server), Some(ca)) = (server(), authority()) else {
        return;
    };
    let url = fresh_database(&server).await;
    let err = Postgres::connect(&with(&url, "sslmode=require"))
        .await
        .expect_err("the system does not trust the test authority");
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(err.message().contains("invalid peer certificate"), "{err}");
    let other_name = url.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(other_name, url);
    let err = Postgres::connect(&with(
        &other_name,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect_err("the certificate is for 127.0.0.1");
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(err.message().contains("not valid for name"), "{err}");
}
