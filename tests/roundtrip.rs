//! Encrypt/decrypt round trips and rejection of the wrong compartment, AAD or key.

mod common;

use std::sync::Arc;

use cmek::{CacheConfig, Client, ErrorKind, KeyConfigId, LocalKms, MemoryDekStore, inspect};
use common::*;

fn sizes() -> [usize; 6] {
    [0, 1, 64, 1024, 16 * 1024, 1 << 20]
}

#[tokio::test]
async fn both_forms_round_trip_with_every_provider_and_size() {
    for &provider in providers() {
        let kms = Arc::new(LocalKms::generate("local:rt").unwrap());
        let client = Client::builder()
            .key(key_config(), kms)
            .dek_store(Arc::new(MemoryDekStore::new()))
            .cipher(provider)
            .build()
            .unwrap();
        assert_eq!(client.cipher_provider(), provider);
        let c = compartment("tenant-a");
        for n in sizes() {
            let pt: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let env = client.encrypt(&c, &pt, b"aad").await.unwrap();
            assert_eq!(client.decrypt(&c, &env, b"aad").await.unwrap(), pt);
            let compact = client.encrypt_compact(&c, &pt, b"aad").await.unwrap();
            assert_eq!(compact.len(), pt.len() + cmek::format::COMPACT_OVERHEAD);
            assert_eq!(cmek::format::COMPACT_OVERHEAD, 48);
            assert_eq!(client.decrypt(&c, &compact, b"aad").await.unwrap(), pt);
            if n > 0 {
                assert!(!env.windows(n.min(16)).any(|w| w == &pt[..n.min(16)]) || n < 4);
            }
        }
    }
}

#[tokio::test]
async fn buffer_reusing_and_in_place_variants_agree() {
    let (client, _) = faulty_client(CacheConfig::default());
    let c = compartment("tenant-b");
    let mut env = vec![0xEEu8; 5000]; // stale contents must be replaced
    let mut pt_out = vec![0xDDu8; 7000];
    for n in [10usize, 3000, 100] {
        let pt = vec![0x42u8; n];
        client.encrypt_into(&c, &pt, b"x", &mut env).await.unwrap();
        client
            .decrypt_into(&c, &env, b"x", &mut pt_out)
            .await
            .unwrap();
        assert_eq!(pt_out, pt);
        let mut copy = env.clone();
        let opened = client.decrypt_in_place(&c, &mut copy, b"x").await.unwrap();
        assert_eq!(opened, &pt[..]);
        client
            .encrypt_compact_into(&c, &pt, b"x", &mut env)
            .await
            .unwrap();
        assert_eq!(env.len(), n + 48);
        let mut copy = env.clone();
        assert_eq!(
            client.decrypt_in_place(&c, &mut copy, b"x").await.unwrap(),
            &pt[..]
        );
    }
}

#[tokio::test]
async fn wrong_compartment_aad_or_key_is_rejected() {
    let (client, _) = faulty_client(CacheConfig::default());
    let (a, b) = (compartment("tenant-a"), compartment("tenant-b"));
    // Warm both compartments so the hot path (not just the cold path) is exercised.
    client.encrypt(&b, b"warm", b"").await.unwrap();
    for compact in [false, true] {
        let env = if compact {
            client
                .encrypt_compact(&a, b"secret", b"row:1")
                .await
                .unwrap()
        } else {
            client.encrypt(&a, b"secret", b"row:1").await.unwrap()
        };
        let err = client.decrypt(&a, &env, b"row:2").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "wrong aad");
        let err = client.decrypt(&b, &env, b"row:1").await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Integrity | ErrorKind::NotFound),
            "wrong compartment: {err}"
        );
        // Another client with another key cannot open it.
        let (other, _) = faulty_client(CacheConfig::default());
        let err = other.decrypt(&a, &env, b"row:1").await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Integrity | ErrorKind::NotFound),
            "wrong key: {err}"
        );
    }
}

#[tokio::test]
async fn an_unknown_key_configuration_is_not_found() {
    let kms = Arc::new(LocalKms::generate("local:x").unwrap());
    let writer = Client::builder()
        .key(KeyConfigId::new("ekey_writer").unwrap(), kms.clone())
        .build()
        .unwrap();
    let reader = Client::builder()
        .key(KeyConfigId::new("ekey_reader").unwrap(), kms)
        .build()
        .unwrap();
    let c = compartment("t");
    let env = writer.encrypt(&c, b"data", b"").await.unwrap();
    let err = reader.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("ekey_writer"));
}

#[tokio::test]
async fn compact_needs_a_store_and_records_survive_a_new_client() {
    let kms = Arc::new(LocalKms::generate("local:x").unwrap());
    let no_store = Client::builder()
        .key(key_config(), kms.clone())
        .build()
        .unwrap();
    let c = compartment("t");
    let err = no_store.encrypt_compact(&c, b"d", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(cmek::FileDekStore::open(dir.path()).unwrap());
    let first = Client::builder()
        .key(key_config(), kms.clone())
        .dek_store(store)
        .build()
        .unwrap();
    let env = first.encrypt_compact(&c, b"persisted", b"").await.unwrap();
    drop(first);
    let second = Client::builder()
        .key(key_config(), kms)
        .dek_store(Arc::new(cmek::FileDekStore::open(dir.path()).unwrap()))
        .build()
        .unwrap();
    assert_eq!(second.decrypt(&c, &env, b"").await.unwrap(), b"persisted");
    assert_eq!(second.stats().kms_unwrap_calls, 1);
}

#[tokio::test]
async fn a_compact_envelope_without_its_record_is_not_found() {
    let (writer, _) = faulty_client(CacheConfig::default());
    let c = compartment("t");
    let env = writer.encrypt_compact(&c, b"d", b"").await.unwrap();
    let (reader, _) = faulty_client(CacheConfig::default());
    let err = reader.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn inspect_reads_headers_without_a_key() {
    let (client, _) = faulty_client(CacheConfig::default());
    let c = compartment("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c");
    let env = client.encrypt(&c, b"twelve bytes", b"").await.unwrap();
    let info = inspect(&env).unwrap();
    assert_eq!(info.compartment_id.as_deref(), Some(c.as_str()));
    assert_eq!(info.key_config_id.as_deref(), Some("local"));
    assert_eq!(info.provider.as_deref(), Some("local"));
    assert_eq!(info.ciphertext_len, Some(12));
    let compact = client.encrypt_compact(&c, b"x", b"").await.unwrap();
    let info = inspect(&compact).unwrap();
    assert_eq!(info.compartment_id, None);
    assert_eq!(info.header_len, 20);
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["form"], "compact");
}

#[tokio::test]
async fn detached_in_place_encryption_assembles_to_a_normal_envelope() {
    let (client, _) = faulty_client(CacheConfig::default());
    let c = compartment("tenant-d");
    let pt = vec![0x33u8; 5000];
    let mut header = Vec::new();
    for compact in [false, true] {
        let mut buf = pt.clone();
        let tag = if compact {
            client
                .encrypt_compact_in_place_detached(&c, &mut buf, b"obj", &mut header)
                .await
                .unwrap()
        } else {
            client
                .encrypt_in_place_detached(&c, &mut buf, b"obj", &mut header)
                .await
                .unwrap()
        };
        assert_ne!(buf, pt, "encrypted in place");
        let envelope = [&header[..], &buf[..], &tag[..]].concat();
        assert_eq!(client.decrypt(&c, &envelope, b"obj").await.unwrap(), pt);
        assert_eq!(
            header.len(),
            if compact {
                32
            } else {
                envelope.len() - pt.len() - 16
            }
        );
    }
}
