//! The stores on PostgreSQL against the file stores, in the same run: DEK record put and get
//! latency (p50/p99 over loopback), rewrap throughput (records/s), and the hot path of a warm
//! node (1 KiB compact encryption with a cached DEK) as a ratio to the raw cipher.
//!
//! Run (against a server of your own; `scripts/test.sh` prints how it starts one):
//! `CMEK_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --release --example postgres_stores --features postgres`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmek::control::{
    Actor, ControlPlane, ControlPlaneBuilder, CreateExternalKey, FileControlStore, ProviderConfig,
};
use cmek::internal::RawCipher;
use cmek::postgres::Postgres;
use cmek::{CompartmentId, DekStore, FileDekStore, LocalKms};

const OPS: usize = 2000;
const COMPARTMENTS: usize = 50;
const RECORDS_PER_COMPARTMENT: usize = 40;
const HOT_OPS: usize = 200_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn summary(mut took: Vec<Duration>) -> String {
    took.sort();
    format!(
        "p50 {:>9.1?}  p99 {:>9.1?}",
        percentile(&took, 0.50),
        percentile(&took, 0.99)
    )
}

/// Put and get latency of `store`, over records a control plane on it wrote.
async fn dek_latency(
    name: &str,
    store: &dyn DekStore,
    compartment: &CompartmentId,
) -> cmek::Result<()> {
    let ids = store.list(compartment).await?;
    let record = store
        .get(compartment, &ids[0])
        .await?
        .expect("a record was written");
    let mut puts = Vec::with_capacity(OPS);
    for _ in 0..OPS {
        let start = Instant::now();
        store.put(&record).await?;
        puts.push(start.elapsed());
    }
    let mut gets = Vec::with_capacity(OPS);
    for i in 0..OPS {
        let start = Instant::now();
        black_box(store.get(compartment, &ids[i % ids.len()]).await?);
        gets.push(start.elapsed());
    }
    println!(
        "{name:>10} DEK record put: {}   get: {}",
        summary(puts),
        summary(gets)
    );
    Ok(())
}

/// A plane with `COMPARTMENTS` compartments under a customer key, each with
/// `RECORDS_PER_COMPARTMENT` DEK records; the key is then rotated. Returns one compartment.
async fn populated(plane: &ControlPlane, dir: &Path) -> cmek::Result<(CompartmentId, String)> {
    let admin = Actor::new("bench");
    let (old, new) = (dir.join("old.key"), dir.join("new.key"));
    LocalKms::create(&old, "local:old")?;
    LocalKms::create(&new, "local:new")?;
    let config = |path: &Path| ProviderConfig::Local {
        key_file: path.display().to_string(),
    };
    let key = plane
        .create_external_key(&admin, CreateExternalKey::new("customer", config(&old)))
        .await?;
    plane.validate_external_key(&admin, &key.id).await?;
    let client = plane.client();
    let mut first = None;
    for _ in 0..COMPARTMENTS {
        let c = plane
            .create_compartment(&admin, Some(&key.id))
            .await?
            .compartment_id;
        for _ in 0..RECORDS_PER_COMPARTMENT {
            client.encrypt_compact(&c, b"data", b"").await?;
            // A fresh DEK (and record) for the next write.
            client.purge(&c);
        }
        first.get_or_insert(c);
    }
    plane
        .rotate_external_key(&admin, &key.id, config(&new))
        .await?;
    Ok((first.expect("compartments"), key.id.to_string()))
}

async fn rewrap_throughput(name: &str, plane: &ControlPlane, key: &str) -> cmek::Result<()> {
    let id = cmek::control::ExternalKeyId::new(key)?;
    let start = Instant::now();
    let job = plane.rewrap(&Actor::new("bench"), &id, 100, |_| {}).await?;
    let took = start.elapsed();
    println!(
        "{name:>10} rewrap: {} records in {took:.2?}: {:.0} records/s",
        job.rewrapped,
        job.rewrapped as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// Time per 1 KiB compact encryption with a cached DEK, for each plane, and of the raw seal,
/// interleaved in rounds so the machine's swings hit all alike.
async fn hot_path(planes: &[(&str, &ControlPlane, &CompartmentId)]) -> cmek::Result<()> {
    let provider = planes[0].1.client().cipher_provider();
    let raw = RawCipher::new(provider, &[7u8; 32])?;
    let plaintext = vec![0x5au8; 1024];
    let mut sealed = vec![0u8; 1024 + 16];
    let mut envelope = Vec::new();
    for round in 1..=3 {
        let start = Instant::now();
        for _ in 0..HOT_OPS {
            black_box(raw.seal(&[1u8; 12], b"", black_box(&plaintext), &mut sealed)?);
        }
        let raw_ns = start.elapsed().as_nanos() as f64 / HOT_OPS as f64;
        let mut line = format!("hot path round {round}: raw seal {raw_ns:.0} ns");
        for (name, plane, c) in planes {
            let client = plane.client();
            client
                .encrypt_compact_into(c, &plaintext, b"", &mut envelope)
                .await?;
            let start = Instant::now();
            for _ in 0..HOT_OPS {
                client
                    .encrypt_compact_into(c, black_box(&plaintext), b"", &mut envelope)
                    .await?;
            }
            let ns = start.elapsed().as_nanos() as f64 / HOT_OPS as f64;
            line.push_str(&format!(
                ", {name} {ns:.0} ns (raw/cmek {:.2})",
                raw_ns / ns
            ));
        }
        println!("{line}");
    }
    Ok(())
}

fn builder(provider: &Path) -> cmek::Result<ControlPlaneBuilder> {
    Ok(ControlPlane::builder()
        .provider_managed(Arc::new(LocalKms::create(provider, "local:provider")?)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("CMEK_POSTGRES_URL")
        .map_err(|_| "set CMEK_POSTGRES_URL to a PostgreSQL database cmek may use")?;
    let (pg_dir, file_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);

    let db = Postgres::connect(&url).await?;
    let pg = builder(&pg_dir.path().join("provider.key"))?
        .postgres(&db)
        .build()?;
    let file_deks = Arc::new(FileDekStore::open(file_dir.path().join("dek_records"))?);
    let file = builder(&file_dir.path().join("provider.key"))?
        .store(Arc::new(FileControlStore::open(
            file_dir.path().join("control"),
        )?))
        .dek_store(file_deks.clone())
        .build()?;

    let (pg_compartment, pg_key) = populated(&pg, pg_dir.path()).await?;
    let (file_compartment, file_key) = populated(&file, file_dir.path()).await?;
    dek_latency("postgres", &db.dek_store(), &pg_compartment).await?;
    dek_latency("file", &*file_deks, &file_compartment).await?;
    let records = COMPARTMENTS * RECORDS_PER_COMPARTMENT;
    println!("rewrap of {records} records in batches of 100:");
    rewrap_throughput("postgres", &pg, &pg_key).await?;
    rewrap_throughput("file", &file, &file_key).await?;
    hot_path(&[
        ("postgres", &pg, &pg_compartment),
        ("file", &file, &file_compartment),
    ])
    .await?;
    Ok(())
}
