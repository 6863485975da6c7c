//! Reading streamed envelopes never panics and never hands out a byte that is not the true
//! plaintext: arbitrary bytes go through the std reader, and the input is XORed onto real
//! streamed envelopes of both forms (one chunk; and two chunks and a byte), extra input bytes
//! appended, and, for an odd-length input, the result cut short by its first byte.
#![no_main]

use std::io::Read;
use std::sync::{Arc, OnceLock};

use cmek::stream::{StreamForm, read_head};
use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    client: Client,
    compartment: CompartmentId,
    objects: Vec<(Vec<u8>, Vec<u8>)>,
}

const AAD: &[u8] = b"fuzz/stream";

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
        let objects = runtime.block_on(async {
            let mut objects = Vec::new();
            // Two chunks only once: each run reads every object twice, and speed matters.
            for (form, len) in [
                (StreamForm::Compact, 40usize),
                (StreamForm::Compact, 16_385),
                (StreamForm::SelfContained, 40),
            ] {
                {
                    let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
                    let mut encryptor = client
                        .stream_encryptor(&compartment, AAD, form)
                        .await
                        .unwrap();
                    let mut object = Vec::new();
                    encryptor.update(&plaintext, &mut object).unwrap();
                    encryptor.finish(&mut object).unwrap();
                    objects.push((object, plaintext));
                }
            }
            objects
        });
        Fixture {
            runtime,
            client,
            compartment,
            objects,
        }
    })
}

/// What the std reader releases, and whether it reached a clean end.
async fn read(f: &Fixture, object: &[u8]) -> (Vec<u8>, bool) {
    let mut input = object;
    let Ok(head) = read_head(&mut input) else {
        return (Vec::new(), false);
    };
    let Ok(decryptor) = f.client.stream_decryptor(&f.compartment, &head, AAD).await else {
        return (Vec::new(), false);
    };
    let mut reader = decryptor.into_reader(input);
    let mut out = Vec::new();
    let mut buf = [0u8; 5000];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.runtime.block_on(async {
        let _ = read(f, data).await;
        let _ = f.client.decrypt(&f.compartment, data, AAD).await;

        for (object, plaintext) in &f.objects {
            let mut mutated = object.clone();
            for (i, b) in data.iter().enumerate() {
                match mutated.get_mut(i) {
                    Some(byte) => *byte ^= b,
                    None => mutated.push(*b),
                }
            }
            if data.len() % 2 == 1 {
                let cut = usize::from(data[0]).min(mutated.len());
                mutated.truncate(mutated.len() - cut);
            }
            let (released, complete) = read(f, &mutated).await;
            assert!(
                plaintext.starts_with(&released),
                "released bytes that are not the plaintext"
            );
            let whole = f.client.decrypt(&f.compartment, &mutated, AAD).await;
            if mutated == *object {
                assert!(complete && released == *plaintext);
                assert_eq!(whole.unwrap(), *plaintext);
            } else {
                assert!(!complete, "an altered stream read to a clean end");
                assert!(whole.is_err(), "an altered stream decrypted");
            }
        }
    });
});
