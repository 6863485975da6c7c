//! Memory per cached compartment: fills the cache with N compartments (one active DEK each,
//! which also sits in the decryption cache) and reports the growth of the process's resident
//! set divided by N, for each cipher provider. Resident memory counts everything: the Rust heap,
//! AWS-LC's own allocations and allocator overhead.
//!
//! Each provider is measured in a fresh child process, so no run reuses memory another freed.
//!
//! Run: `cargo bench --bench memory` (prints a table; not a criterion benchmark).

mod common;

use std::sync::Arc;

use cmek::{CacheConfig, CipherProvider, Client, CompartmentId, KeyConfigId, LocalKms};
use common::{block, runtime};

const N: usize = 100_000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe bench targets
    }
    let Ok(wanted) = std::env::var("CMEK_MEMORY_PROVIDER") else {
        println!("memory per cached compartment ({N} compartments, UUID-sized ids, local backend)");
        for provider in CipherProvider::available() {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .env("CMEK_MEMORY_PROVIDER", provider.name())
                .status()
                .unwrap();
            assert!(status.success());
        }
        return;
    };
    let rt = runtime();
    let _ctx = rt.enter();
    let ids: Vec<CompartmentId> = (0..N)
        .map(|i| CompartmentId::new(format!("{i:08x}-4d3e-4f1a-8b9c-0d1e2f3a4b5c")).unwrap())
        .collect();
    for &provider in CipherProvider::available()
        .iter()
        .filter(|p| p.name() == wanted)
    {
        let mut cache = CacheConfig::default();
        // Room to spare: the bound is per shard and keys do not spread perfectly evenly.
        cache.encrypt_capacity = 2 * N;
        cache.decrypt_capacity = 2 * N;
        let client = Client::builder()
            .key(
                KeyConfigId::new("local").unwrap(),
                Arc::new(LocalKms::generate("local:mem").unwrap()),
            )
            .cache(cache)
            .cipher(provider)
            .build()
            .unwrap();
        let before = resident_bytes();
        let mut env = Vec::new();
        for c in &ids {
            block(&rt, client.encrypt_into(c, b"x", b"", &mut env)).unwrap();
        }
        let after = resident_bytes();
        let stats = client.stats();
        assert_eq!(stats.encrypt_entries as usize, N);
        println!(
            "  {provider:<10} {:>6.0} bytes per compartment ({} encryption entries, {} decryption entries)",
            (after.saturating_sub(before)) as f64 / N as f64,
            stats.encrypt_entries,
            stats.decrypt_entries
        );
        drop(client);
    }
}
