//! The cost of chunking, drift-free: seals (and opens) 1 MiB pieces alternately with the raw
//! AES-256-GCM call of a provider and through a streamed envelope, timing each side apart, so
//! the machine's swings hit both alike. Prints, per provider and round, the throughput of both
//! and the ratio (streamed / raw); 1 GiB per side and round.
//!
//! Run: `cargo run --release --example stream_ratio [-- ROUNDS]`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmek::internal::RawCipher;
use cmek::stream::StreamForm;
use cmek::{CipherProvider, Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};

const MIB: usize = 1 << 20;
const PIECES: usize = 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> cmek::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let tenant = CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c")?;
    let piece = vec![0x5au8; MIB];
    let gib = |d: Duration| (PIECES * MIB) as f64 / d.as_secs_f64() / (1u64 << 30) as f64;
    for &provider in CipherProvider::available() {
        let client = Client::builder()
            .key(
                KeyConfigId::new("local")?,
                Arc::new(LocalKms::generate("local:ratio")?),
            )
            .dek_store(Arc::new(MemoryDekStore::new()))
            .cipher(provider)
            .build()?;
        let raw = RawCipher::new(provider, &[7u8; 32])?;
        let nonce = [1u8; 12];
        for round in 1..=rounds {
            // Encrypt: raw in place vs the streamed encryptor into a reused buffer.
            let mut buf = piece.clone();
            let mut out = vec![0u8; MIB + MIB / 500 + 8192];
            let mut encryptor = client
                .stream_encryptor(&tenant, b"", StreamForm::Compact)
                .await?;
            let mut object = Vec::with_capacity(PIECES * (MIB + MIB / 500) + 4096);
            let (mut raw_time, mut cmek_time) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..PIECES {
                let t = Instant::now();
                black_box(raw.seal_in_place(&nonce, b"", &mut buf)?);
                raw_time += t.elapsed();
                let t = Instant::now();
                let n = encryptor.update_into(&piece, &mut out)?;
                cmek_time += t.elapsed();
                object.extend_from_slice(&out[..n]);
            }
            let n = encryptor.finish_into(&mut out)?;
            object.extend_from_slice(&out[..n]);
            let (enc_raw, enc_cmek) = (gib(raw_time), gib(cmek_time));

            // Decrypt: raw out of place vs the streamed decryptor into a reused buffer.
            let mut sealed = piece.clone();
            let tag = raw.seal_in_place(&nonce, b"", &mut sealed)?;
            let mut opened = vec![0u8; MIB];
            let head = cmek::format::COMPACT_STREAM_HEADER_LEN + cmek::format::BODY_PREFIX_LEN;
            let mut decryptor = client
                .stream_decryptor(&tenant, &object[..head], b"")
                .await?;
            let mut plain = vec![0u8; MIB + 2 * 16_384];
            let (mut raw_time, mut cmek_time) = (Duration::ZERO, Duration::ZERO);
            for part in object[head..].chunks(MIB) {
                let t = Instant::now();
                raw.open(&nonce, b"", &sealed, &tag, &mut opened)?;
                raw_time += t.elapsed();
                let t = Instant::now();
                black_box(decryptor.update_into(part, &mut plain)?);
                cmek_time += t.elapsed();
            }
            decryptor.finish_into(&mut plain)?;
            let (dec_raw, dec_cmek) = (gib(raw_time), gib(cmek_time));
            println!(
                "{provider} round {round}: encrypt raw {enc_raw:.2} GiB/s, streamed {enc_cmek:.2} GiB/s, \
                 ratio {:.3}; decrypt raw {dec_raw:.2} GiB/s, streamed {dec_cmek:.2} GiB/s, ratio {:.3}",
                enc_cmek / enc_raw,
                dec_cmek / dec_raw
            );
        }
    }
    two_cores()
}

/// Whether sealing one object's chunks on two cores would pay: 1 MiB pieces (64 chunks of
/// 16 KiB, out of place) sealed on this thread alone, and split between this thread and a
/// scoped second one, alternately.
fn two_cores() -> cmek::Result<()> {
    let piece = vec![0x5au8; MIB];
    for &provider in CipherProvider::available() {
        let raw = RawCipher::new(provider, &[7u8; 32])?;
        let seal = |chunks: &[u8], out: &mut [u8]| -> cmek::Result<()> {
            for (i, (p, o)) in chunks
                .chunks(16_384)
                .zip(out.chunks_mut(16_400))
                .enumerate()
            {
                let mut nonce = [1u8; 12];
                nonce[11] ^= i as u8;
                raw.seal(&nonce, b"", p, o)?;
            }
            Ok(())
        };
        let mut out = vec![0u8; 64 * 16_400];
        let (mut one, mut two) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..PIECES {
            let t = Instant::now();
            seal(&piece, &mut out)?;
            one += t.elapsed();
            let t = Instant::now();
            let (a_in, b_in) = piece.split_at(32 * 16_384);
            let (a_out, b_out) = out.split_at_mut(32 * 16_400);
            std::thread::scope(|s| {
                let other = s.spawn(|| seal(b_in, b_out));
                let mine = seal(a_in, a_out);
                mine.and(other.join().unwrap_or(Ok(())))
            })?;
            two += t.elapsed();
        }
        println!(
            "{provider}: 1 MiB of chunks on one core {:.2} GiB/s, on two {:.2} GiB/s ({:.2}x)",
            (PIECES * MIB) as f64 / one.as_secs_f64() / (1u64 << 30) as f64,
            (PIECES * MIB) as f64 / two.as_secs_f64() / (1u64 << 30) as f64,
            one.as_secs_f64() / two.as_secs_f64()
        );
    }
    Ok(())
}
