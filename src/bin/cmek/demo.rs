//! `cmek demo`: a multi-tenant storage workload on the embedded default (local key file, file DEK
//! store), reporting records, bytes, KMS calls, cache hit ratio and throughput.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cmek::{Client, CompartmentId, FileDekStore, KeyConfigId, LocalKms, Stats};
use rand::{RngExt as _, SeedableRng as _};

use crate::cli::DemoArgs;

/// `println!` that ignores a closed stdout (`cmek demo | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Records a worker keeps for reading back (its "hot set").
const RING: usize = 256;

struct Written {
    compartment: usize,
    index: u64,
    envelope: Vec<u8>,
}

/// Deterministic record contents, so reads can be verified without keeping plaintexts.
fn record(task: usize, index: u64, len: usize) -> Vec<u8> {
    let mut pt = format!("task={task};record={index};").into_bytes();
    pt.resize(len.max(pt.len()), (index % 251) as u8);
    pt.truncate(len.max(1));
    pt
}

/// Decrypts a record a task wrote and checks its contents.
async fn read_back(
    client: &Client,
    compartments: &[CompartmentId],
    task: usize,
    w: &Written,
    opened: &mut Vec<u8>,
) -> cmek::Result<()> {
    let aad = format!("{task}/{}", w.index);
    client
        .decrypt_into(
            &compartments[w.compartment],
            &w.envelope,
            aad.as_bytes(),
            opened,
        )
        .await?;
    if opened[..] != record(task, w.index, opened.len())[..] {
        return Err(cmek::Error::new(
            cmek::ErrorKind::Integrity,
            "demo read back wrong data",
        ));
    }
    Ok(())
}

/// Sizes of a typical mix: mostly small rows, some documents, a few blobs.
fn record_len(rng: &mut impl rand::Rng) -> usize {
    match rng.random_range(0..100) {
        0..75 => rng.random_range(64..=512),
        75..97 => rng.random_range(1024..=4096),
        _ => 32 * 1024,
    }
}

pub(crate) async fn run(args: DemoArgs) -> cmek::Result<()> {
    let tmp;
    let dir: PathBuf = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let key_path = dir.join("kek.json");
    let kms = Arc::new(if key_path.exists() {
        LocalKms::open(&key_path)?
    } else {
        LocalKms::create(&key_path, "local:demo")?
    });
    let key_config = KeyConfigId::new("local")?;
    let records_dir = dir.join("dek-records");
    let make_client = || -> cmek::Result<Client> {
        Client::builder()
            .key(key_config.clone(), kms.clone())
            .dek_store(Arc::new(FileDekStore::open(&records_dir)?))
            .build()
    };
    let client = make_client()?;
    let compartments: Arc<Vec<CompartmentId>> = Arc::new(
        (0..args.compartments.max(1))
            .map(|_| CompartmentId::random_uuid())
            .collect::<cmek::Result<_>>()?,
    );
    let tasks = args.tasks.max(1);
    say!("cmek demo: the embedded default (local key file, file DEK store)");
    say!(
        "  key file       {} ({}, version {})",
        key_path.display(),
        kms.key_id(),
        kms.primary_version()
    );
    say!("  DEK records    {}", records_dir.display());
    say!(
        "  cipher         AES-256-GCM via {}",
        client.cipher_provider()
    );
    say!(
        "  workload       {} records over {} compartments (skewed), {} tasks;",
        args.records,
        compartments.len(),
        tasks
    );
    say!(
        "                 75% rows 64-512 B (compact), 22% documents 1-4 KiB and 3% blobs 32 KiB (self-contained);"
    );
    say!("                 every write is followed by a read of a recent record of the same task");

    // Phase 1: writes and reads of recent records, all tasks at once.
    let started = Instant::now();
    let per_task = args.records / tasks;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (client, compartments) = (client.clone(), compartments.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            let mut ring: VecDeque<Written> = VecDeque::with_capacity(RING);
            let (mut bytes, mut reads, mut compact) = (0u64, 0u64, 0u64);
            let mut envelope = Vec::new();
            let mut opened = Vec::new();
            for i in 0..per_task as u64 {
                // Skewed tenants: a few hot ones, a long tail.
                let u: f64 = rng.random();
                let c = ((u * u * u) * compartments.len() as f64) as usize % compartments.len();
                let len = record_len(&mut rng);
                let pt = record(task, i, len);
                let aad = format!("{task}/{i}");
                if len <= 512 {
                    client
                        .encrypt_compact_into(&compartments[c], &pt, aad.as_bytes(), &mut envelope)
                        .await?;
                    compact += 1;
                } else {
                    client
                        .encrypt_into(&compartments[c], &pt, aad.as_bytes(), &mut envelope)
                        .await?;
                }
                bytes += len as u64;
                if ring.len() == RING {
                    ring.pop_front();
                }
                ring.push_back(Written {
                    compartment: c,
                    index: i,
                    envelope: envelope.clone(),
                });
                let back = &ring[rng.random_range(0..ring.len())];
                read_back(&client, &compartments, task, back, &mut opened).await?;
                reads += 1;
            }
            Ok::<_, cmek::Error>((bytes, reads, compact, ring))
        }));
    }
    let (mut bytes, mut reads, mut compact) = (0u64, 0u64, 0u64);
    let mut kept = Vec::new();
    for (task, h) in handles.into_iter().enumerate() {
        let (b, r, c, ring) = h.await.map_err(|e| {
            cmek::Error::new(cmek::ErrorKind::Transient, format!("task failed: {e}"))
        })??;
        bytes += b;
        reads += r;
        compact += c;
        kept.extend(ring.into_iter().map(|w| (task, w)));
    }
    let secs = started.elapsed().as_secs_f64();
    let written = (per_task * tasks) as u64;
    let stats = client.stats();
    say!();
    say!("write + read phase");
    say!(
        "  records        {written} written ({compact} compact, {} self-contained), {reads} read back and verified",
        written - compact
    );
    say!(
        "  bytes          {:.1} MB of plaintext written",
        bytes as f64 / 1e6
    );
    say!(
        "  throughput     {:.0} operations/s, {:.0} MB/s of plaintext written, in {secs:.2} s",
        (written + reads) as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    report_kms(&stats, written + reads);

    // Phase 2: a restart. A new client with a cold cache reads back what the tasks kept.
    let restarted = make_client()?;
    let started = Instant::now();
    let mut opened = Vec::new();
    for (task, w) in &kept {
        read_back(&restarted, &compartments, *task, w, &mut opened).await?;
    }
    let cold = restarted.stats();
    say!();
    say!(
        "restart: a new client (cold cache) reads back {} records in {:.2} s",
        kept.len(),
        started.elapsed().as_secs_f64()
    );
    say!(
        "  KMS calls      {} unwraps for {} distinct DEKs: one per DEK, then cache hits (hit ratio {:.2}%)",
        cold.kms_unwrap_calls,
        cold.decrypt_misses,
        cold.hit_ratio() * 100.0
    );

    // Phase 3: rotation of the local key. New DEKs go under the new version; old data still opens.
    let version = kms.rotate()?;
    for c in compartments.iter() {
        restarted.purge(c);
    }
    let fresh = restarted
        .encrypt(&compartments[0], b"written after rotation", b"")
        .await?;
    let info = cmek::inspect(&fresh)?;
    let (task, w) = &kept[0];
    read_back(&restarted, &compartments, *task, w, &mut opened).await?;
    say!();
    say!("rotation: local key rotated to version {version}");
    say!(
        "  new data       wrapped under key version {}",
        info.key_version.as_deref().unwrap_or("?")
    );
    say!("  old data       still decrypts (written under version 1)");
    say!();
    say!("a self-contained envelope's header (what `cmek inspect` prints):");
    let json = serde_json::to_string_pretty(&info).unwrap_or_default();
    say!("{json}");
    Ok(())
}

fn report_kms(stats: &Stats, operations: u64) {
    let calls = stats.kms_calls();
    say!(
        "  KMS calls      {} wraps + {} unwraps = {calls} for {operations} operations ({:.1} per million)",
        stats.kms_wrap_calls,
        stats.kms_unwrap_calls,
        calls as f64 * 1e6 / operations.max(1) as f64
    );
    say!(
        "  cache          hit ratio {:.4}%, {} DEKs created, {} background refreshes, {} evictions",
        stats.hit_ratio() * 100.0,
        stats.deks_created,
        stats.refreshes,
        stats.evictions
    );
}
