//! Decryption of arbitrary bytes never panics, and any change to an authentic envelope (of
//! either form) is rejected: the input is XORed onto real envelopes, and extra input bytes are
//! appended to them.
#![no_main]

use std::sync::{Arc, OnceLock};

use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    client: Client,
    compartment: CompartmentId,
    envelopes: Vec<Vec<u8>>,
}

const AAD: &[u8] = b"fuzz/aad";
const PLAINTEXT: &[u8] = b"the fuzzer must never see this plaintext altered";

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = Client::builder()
            .key(
                KeyConfigId::new("local").unwrap(),
                Arc::new(LocalKms::generate("local:fuzz").unwrap()),
            )
            .dek_store(Arc::new(MemoryDekStore::new()))
            .build()
            .unwrap();
        let compartment = CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c").unwrap();
        let envelopes = runtime.block_on(async {
            vec![
                client.encrypt(&compartment, PLAINTEXT, AAD).await.unwrap(),
                client
                    .encrypt_compact(&compartment, PLAINTEXT, AAD)
                    .await
                    .unwrap(),
            ]
        });
        Fixture {
            runtime,
            client,
            compartment,
            envelopes,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.runtime.block_on(async {
        // Arbitrary bytes: an error, never a panic (a forgery would need the key).
        let _ = f.client.decrypt(&f.compartment, data, AAD).await;

        for envelope in &f.envelopes {
            let mut mutated = envelope.clone();
            for (i, b) in data.iter().enumerate() {
                match mutated.get_mut(i) {
                    Some(byte) => *byte ^= b,
                    None => mutated.push(*b),
                }
            }
            let result = f.client.decrypt(&f.compartment, &mutated, AAD).await;
            if mutated == *envelope {
                assert_eq!(result.unwrap(), PLAINTEXT);
            } else {
                assert!(result.is_err(), "an altered envelope was accepted");
            }
        }
    });
});
