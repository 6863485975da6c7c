//! How fast a change made on one node reaches another: node A publishes 100 changes one at a
//! time; node B's feed applies them. Prints p50, p99 and the worst, with `LISTEN`/`NOTIFY`
//! and with polling only (notifications lost: the bound is the poll interval).
//!
//! Run (against a server of your own; `scripts/test.sh` prints how it starts one):
//! `CMEK_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --release --example propagation --features postgres`

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmek::postgres::{Change, FeedOptions, Postgres};
use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};

const CHANGES: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("CMEK_POSTGRES_URL")
        .map_err(|_| "set CMEK_POSTGRES_URL to a PostgreSQL database cmek may use")?;
    let a = Postgres::connect(&url).await?;
    let b = Postgres::connect(&url).await?;
    let client = Client::builder()
        .key(
            KeyConfigId::new("local")?,
            Arc::new(LocalKms::generate("local:propagation")?),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()?;
    let poll = Duration::from_millis(500);
    for (name, options) in [
        ("LISTEN/NOTIFY", FeedOptions::default()),
        (
            "polling only (every 500 ms)",
            FeedOptions::default().listen(false).poll_every(poll),
        ),
    ] {
        let feed = b.follow(client.clone(), options).await?;
        while !feed.is_listening() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut took = Vec::with_capacity(CHANGES);
        for i in 0..CHANGES {
            let change = Change::Purged(CompartmentId::new(format!("tenant-{i}"))?);
            let start = Instant::now();
            let generation = a.publish(&change).await?;
            if !feed.wait_for(generation, Duration::from_secs(30)).await {
                return Err(format!("change {generation} did not arrive").into());
            }
            took.push(start.elapsed());
        }
        took.sort();
        println!(
            "{name}: p50 {:?}, p99 {:?}, worst {:?} over {CHANGES} changes",
            percentile(&took, 0.50),
            percentile(&took, 0.99),
            took[CHANGES - 1],
        );
    }
    Ok(())
}
