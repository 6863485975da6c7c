//! Every single-bit flip of an envelope is rejected, with no partial plaintext.

mod common;

use cmek::{CacheConfig, Client, CompartmentId};
use common::*;

async fn every_flip_is_rejected(client: &Client, c: &CompartmentId, env: &[u8], pt: &[u8]) {
    assert_eq!(client.decrypt(c, env, b"aad").await.unwrap(), pt);
    let mut out = Vec::new();
    for bit in 0..env.len() * 8 {
        let mut bad = env.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        out.extend_from_slice(b"stale");
        let result = client.decrypt_into(c, &bad, b"aad", &mut out).await;
        assert!(
            result.is_err(),
            "flip of bit {bit} (byte {}) was accepted",
            bit / 8
        );
        assert!(
            out.is_empty(),
            "partial plaintext left after flip of bit {bit}"
        );
        let mut in_place = bad.clone();
        assert!(
            client
                .decrypt_in_place(c, &mut in_place, b"aad")
                .await
                .is_err()
        );
        assert!(
            !in_place.windows(pt.len()).any(|w| w == pt),
            "plaintext visible after failed in-place decrypt (bit {bit})"
        );
    }
    // Cutting anything off is rejected too.
    for n in 0..env.len() {
        assert!(
            client.decrypt(c, &env[..n], b"aad").await.is_err(),
            "truncation to {n}"
        );
    }
    // And the untouched envelope still opens (nothing got poisoned in the cache).
    assert_eq!(client.decrypt(c, env, b"aad").await.unwrap(), pt);
}

#[tokio::test]
async fn self_contained_every_bit_flip_rejected() {
    let (client, _) = faulty_client(CacheConfig::default());
    let c = compartment("tenant-flip");
    let pt = b"attack at dawn, bring snacks".to_vec();
    let env = client.encrypt(&c, &pt, b"aad").await.unwrap();
    every_flip_is_rejected(&client, &c, &env, &pt).await;
}

#[tokio::test]
async fn compact_every_bit_flip_rejected() {
    let (client, _) = faulty_client(CacheConfig::default());
    let c = compartment("tenant-flip");
    let pt = b"attack at dawn, bring snacks".to_vec();
    let env = client.encrypt_compact(&c, &pt, b"aad").await.unwrap();
    every_flip_is_rejected(&client, &c, &env, &pt).await;
}

#[tokio::test]
async fn every_bit_flip_rejected_by_a_cold_client() {
    // A fresh client for every flip: the cold path (parse, unwrap, commitment) must catch it too.
    let (writer, kms) = faulty_client(CacheConfig::default());
    let c = compartment("tenant-cold");
    let pt = b"cold path".to_vec();
    let env = writer.encrypt(&c, &pt, b"aad").await.unwrap();
    for bit in 0..env.len() * 8 {
        let reader = Client::builder()
            .key(key_config(), kms.clone())
            .retry(fast_retry())
            .build()
            .unwrap();
        let mut bad = env.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            reader.decrypt(&c, &bad, b"aad").await.is_err(),
            "cold flip of bit {bit}"
        );
    }
}
