//! `EncryptedStore` over the in-memory store against the raw cipher, drift-free: each
//! iteration runs the raw AES-256-GCM calls (1 MiB each, out of place into a buffer of the
//! object's size), a plain `InMemory` put or get, and the same through `EncryptedStore`,
//! timing each apart, so the machine's swings hit all three alike. Prints, per size and
//! round, `(encrypted - plain) / raw` for put and get (the goal is at most 1.2), after one
//! put and get of each size to warm up.
//!
//! Run: `cargo run --release --example objects_ratio --features object-store [-- ROUNDS]`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmek::internal::RawCipher;
use cmek::objects::{Compartments, EncryptedStore};
use cmek::{CipherProvider, Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use object_store::path::Path;

const MIB: usize = 1 << 20;
const NONCE: [u8; 12] = [1u8; 12];

/// Time of `f`, added to `total`.
async fn timed<T>(total: &mut Duration, f: impl AsyncFnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f().await;
    *total += start.elapsed();
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let client = Client::builder()
        .key(
            KeyConfigId::new("local")?,
            Arc::new(LocalKms::generate("local:ratio")?),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()?;
    let tenant = CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c")?;
    let encrypted = EncryptedStore::new(InMemory::new(), client, Compartments::fixed(tenant))?;
    let plain = InMemory::new();
    let raw = RawCipher::new(CipherProvider::default(), &[7u8; 32])?;
    let path = Path::from("ratio/object");
    println!("size    round  put ratio  get ratio  (raw seal, raw open per object)");
    for (size, iterations) in [(MIB, 256), (64 * MIB, 8)] {
        let data = Bytes::from(vec![0x5au8; size]);
        let mut sealed_out = vec![0u8; size + size / MIB * 16];
        let sealed: Vec<(Vec<u8>, [u8; 16])> = data
            .chunks(MIB)
            .map(|piece| {
                let mut piece = piece.to_vec();
                let tag = raw.seal_in_place(&NONCE, b"", &mut piece).expect("seal");
                (piece, tag)
            })
            .collect();
        let mut opened = vec![0u8; size];
        // Warm: the first put and get of a size allocate what later ones reuse.
        encrypted.put(&path, data.clone().into()).await?;
        drop(encrypted.get(&path).await?.bytes().await?);
        for round in 1..=rounds {
            let mut t = [Duration::ZERO; 6]; // raw seal, plain put, put, raw open, plain get, get
            for _ in 0..iterations {
                timed(&mut t[0], async || {
                    for (piece, out) in data.chunks(MIB).zip(sealed_out.chunks_mut(MIB + 16)) {
                        raw.seal(&NONCE, b"", piece, out).expect("seal");
                    }
                    black_box(&sealed_out);
                })
                .await;
                timed(&mut t[1], async || {
                    plain.put(&path, data.clone().into()).await
                })
                .await?;
                timed(&mut t[2], async || {
                    encrypted.put(&path, data.clone().into()).await
                })
                .await?;
                timed(&mut t[3], async || {
                    for ((piece, tag), out) in sealed.iter().zip(opened.chunks_mut(MIB)) {
                        raw.open(&NONCE, b"", piece, tag, out).expect("open");
                    }
                    black_box(&opened);
                })
                .await;
                let got = timed(&mut t[4], async || plain.get(&path).await?.bytes().await).await?;
                drop(black_box(got));
                let got = timed(&mut t[5], async || {
                    encrypted.get(&path).await?.bytes().await
                })
                .await?;
                assert_eq!(got.len(), size);
                drop(black_box(got));
            }
            let per = |d: Duration| d / iterations;
            let ratio = |raw: Duration, plain: Duration, enc: Duration| {
                (enc.as_secs_f64() - plain.as_secs_f64()) / raw.as_secs_f64()
            };
            println!(
                "{:>3} MiB {round:>5}  {:>9.3}  {:>9.3}  ({:?}, {:?})",
                size / MIB,
                ratio(t[0], t[1], t[2]),
                ratio(t[3], t[4], t[5]),
                per(t[0]),
                per(t[3]),
            );
        }
    }
    Ok(())
}
