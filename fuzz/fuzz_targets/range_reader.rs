//! Range reads never panic and answer only true plaintext: the first eight input bytes pick a
//! range (start and length, or a suffix), the rest is XORed onto a real compact streamed
//! envelope of three chunks; the answer is the true slice or an error, and for an unaltered
//! object always the true slice. Arbitrary bytes as the object must fail cleanly.
#![no_main]

use std::sync::{Arc, OnceLock};

use cmek::stream::{ByteRange, StreamForm};
use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    client: Client,
    compartment: CompartmentId,
    object: Vec<u8>,
    plaintext: Vec<u8>,
}

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
        let plaintext: Vec<u8> = (0..2 * 16_384 + 777).map(|i| (i * 7) as u8).collect();
        let object = runtime.block_on(async {
            let mut encryptor = client
                .stream_encryptor(&compartment, b"", StreamForm::Compact)
                .await
                .unwrap();
            let mut object = Vec::new();
            encryptor.update(&plaintext, &mut object).unwrap();
            encryptor.finish(&mut object).unwrap();
            object
        });
        Fixture {
            runtime,
            client,
            compartment,
            object,
            plaintext,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((pick, mask)) = data.split_first_chunk::<8>() else {
        return;
    };
    let start = u64::from(u32::from_le_bytes([pick[0], pick[1], pick[2], pick[3]])) % 40_000;
    let len = u64::from(u32::from_le_bytes([pick[4], pick[5], pick[6], pick[7]])) % 40_000;
    let (range, expected) = if pick[7] & 0x80 != 0 {
        let n = len as usize;
        let all = f.plaintext.len();
        (
            ByteRange::Suffix(len),
            Some(&f.plaintext[all.saturating_sub(n)..]),
        )
    } else {
        let end = (start + len).min(f.plaintext.len() as u64);
        let slice = (start <= f.plaintext.len() as u64)
            .then(|| &f.plaintext[start as usize..end.max(start) as usize]);
        (ByteRange::Bounded(start..start + len), slice)
    };
    f.runtime.block_on(async {
        let garbage = mask.to_vec();
        let _ = f
            .client
            .decrypt_range(&f.compartment, &garbage, range.clone(), b"")
            .await;

        let mut mutated = f.object.clone();
        for (i, b) in mask.iter().enumerate() {
            match mutated.get_mut(i) {
                Some(byte) => *byte ^= b,
                None => mutated.push(*b),
            }
        }
        let got = f
            .client
            .decrypt_range(&f.compartment, &mutated, range, b"")
            .await;
        match (got, expected) {
            (Ok(bytes), Some(expected)) => assert_eq!(bytes, expected, "a wrong answer"),
            (Ok(_), None) => panic!("a range after the end was answered"),
            (Err(_), Some(_)) => assert!(mutated != f.object, "an authentic read failed"),
            (Err(_), None) => {}
        }
    });
});
