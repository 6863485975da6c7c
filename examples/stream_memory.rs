//! Peak memory while streaming: encrypts GIB gibibytes (default 4) of generated plaintext
//! through the `std::io` writer, feeding the object straight into a streaming decryptor, and
//! reports the process's peak resident set (VmHWM, Linux) before and after. Nothing is kept:
//! what the stream holds is all that can grow.
//!
//! Run: `cargo run --release --example stream_memory -- 4`

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use cmek::stream::{StreamDecryptor, StreamForm};
use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};

/// A `Write` that decrypts what is written to it and checks it against the pattern.
struct Checker {
    decryptor: StreamDecryptor,
    plain: Vec<u8>,
    seen: u64,
}

impl Write for Checker {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self
            .decryptor
            .update_into(bytes, &mut self.plain)
            .map_err(io::Error::other)?;
        self.check(n);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Checker {
    fn check(&mut self, n: usize) {
        for (i, b) in self.plain[..n].iter().enumerate() {
            assert_eq!(*b, pattern(self.seen + i as u64), "wrong plaintext");
        }
        self.seen += n as u64;
    }
}

fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// The process's peak resident set in KiB (`VmHWM` in /proc/self/status).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gib: u64 = std::env::args().nth(1).map_or(Ok(4), |s| s.parse())?;
    let total = gib << 30;
    let client = Client::builder()
        .key(
            KeyConfigId::new("local")?,
            Arc::new(LocalKms::generate("local:rss")?),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()?;
    let tenant = CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c")?;
    let encryptor = client
        .stream_encryptor(&tenant, b"", StreamForm::Compact)
        .await?;
    let head = encryptor.head().to_vec();
    let decryptor = client.stream_decryptor(&tenant, &head, b"").await?;
    let mut source = vec![0u8; 256 << 10];
    let checker = Checker {
        decryptor,
        plain: vec![0u8; 64 * 16_384 + 16_384],
        seen: 0,
    };
    // The writer's first bytes are the head, which the checker must not see.
    struct SkipHead<W>(W, usize);
    impl<W: Write> Write for SkipHead<W> {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let skip = self.1.min(bytes.len());
            self.1 -= skip;
            self.0.write_all(&bytes[skip..])?;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    let mut writer = encryptor.into_writer(SkipHead(checker, head.len()));
    let baseline = peak_rss_kib();
    let started = Instant::now();
    let mut written = 0u64;
    while written < total {
        let n = (source.len() as u64).min(total - written) as usize;
        for (i, b) in source[..n].iter_mut().enumerate() {
            *b = pattern(written + i as u64);
        }
        writer.write_all(&source[..n])?;
        written += n as u64;
    }
    let SkipHead(mut checker, _) = writer.finish()?;
    let mut tail = vec![0u8; 16_384];
    let n = checker.decryptor.finish_into(&mut tail)?;
    checker.plain[..n].copy_from_slice(&tail[..n]);
    checker.check(n);
    assert_eq!(checker.seen, total, "every byte came back");
    let peak = peak_rss_kib();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "streamed {gib} GiB (encrypted and decrypted) in {secs:.1} s ({:.2} GB/s each way); \
         peak RSS {peak} KiB, baseline {baseline} KiB: {} KiB above the baseline",
        total as f64 / secs / 1e9,
        peak.saturating_sub(baseline)
    );
    Ok(())
}
