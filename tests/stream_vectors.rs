//! Golden vectors for the streamed forms (`tests/data/stream_vectors.json`), frozen like the
//! envelope vectors: each reuses a DEK record (and its DEK) of `tests/data/vectors.json`, fixes
//! a salt, AAD and plaintext, and pins the streamed envelope byte for byte. The test checks
//! that sealing the same inputs reproduces it, that the client decrypts it whole, by stream
//! and by range, and that the malformed ones fail with the kind listed.
//!
//! Written once (never again for this format version!) with
//! `CMEK_WRITE_VECTORS=1 cargo test --test stream_vectors -- --ignored`.

mod common;

use std::sync::Arc;

use cmek::format::{DekRecord, Form, SEALED_CHUNK_LEN};
use cmek::internal::seal_streamed_with;
use cmek::{Client, CompartmentId, DataKey, DekStore, KeyConfigId, LocalKms, MemoryDekStore};
use common::{hex, unhex};
use serde::{Deserialize, Serialize};

const ENVELOPES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");
const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/stream_vectors.json"
);

#[derive(Serialize, Deserialize)]
struct File {
    description: String,
    fields: serde_json::Value,
    vectors: Vec<Vector>,
    invalid: Vec<Invalid>,
}

#[derive(Serialize, Deserialize)]
struct Vector {
    name: String,
    form: String,
    compartment_id: String,
    key_config_id: String,
    dek: String,
    dek_record: String,
    salt: String,
    aad: String,
    plaintext: String,
    envelope: String,
}

#[derive(Serialize, Deserialize)]
struct Invalid {
    name: String,
    compartment_id: String,
    aad: String,
    envelope: String,
    error_kind: String,
}

fn form(name: &str) -> Form {
    match name {
        "streamed" => Form::Streamed,
        "streamed_compact" => Form::StreamedCompact,
        other => panic!("unknown form {other}"),
    }
}

/// The local key file of the envelope vectors, opened from a temporary copy.
fn kek() -> (tempfile::TempDir, Arc<LocalKms>) {
    let envelopes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ENVELOPES).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.json");
    std::fs::write(&path, envelopes["kek_file"].to_string()).unwrap();
    (dir, Arc::new(LocalKms::open(&path).unwrap()))
}

#[tokio::test]
async fn stream_vectors_decrypt_and_reproduce() {
    let file: File = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let (_dir, kms) = kek();
    assert!(file.vectors.len() >= 8 && file.invalid.len() >= 4);
    for v in &file.vectors {
        let compartment = CompartmentId::new(&v.compartment_id).unwrap();
        let record = DekRecord::from_bytes(&unhex(&v.dek_record)).unwrap();
        let dek = DataKey::from_slice(&unhex(&v.dek)).unwrap();
        let salt: [u8; 24] = unhex(&v.salt).try_into().unwrap();
        let (plaintext, aad) = (unhex(&v.plaintext), unhex(&v.aad));
        let again = seal_streamed_with(&dek, &record, form(&v.form), &salt, &plaintext, &aad);
        assert_eq!(
            hex(&again.unwrap()),
            v.envelope,
            "{}: re-encryption differs",
            v.name
        );

        let store = Arc::new(MemoryDekStore::new());
        store.put(&record).await.unwrap();
        let client = Client::builder()
            .key(KeyConfigId::new(&v.key_config_id).unwrap(), kms.clone())
            .dek_store(store)
            .build()
            .unwrap();
        let envelope = unhex(&v.envelope);
        let whole = client.decrypt(&compartment, &envelope, &aad).await.unwrap();
        assert_eq!(whole, plaintext, "{}", v.name);
        let len = plaintext.len() as u64;
        let middle = len / 2..(len / 2 + 100).min(len);
        let part = client
            .decrypt_range(&compartment, &envelope, middle.clone(), &aad)
            .await
            .unwrap();
        assert_eq!(
            part,
            &plaintext[middle.start as usize..middle.end as usize],
            "{}",
            v.name
        );
    }
    let client = Client::builder()
        .key(KeyConfigId::new("local").unwrap(), kms)
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()
        .unwrap();
    for bad in &file.invalid {
        let compartment = CompartmentId::new(&bad.compartment_id).unwrap();
        let err = client
            .decrypt(&compartment, &unhex(&bad.envelope), &unhex(&bad.aad))
            .await
            .unwrap_err();
        assert_eq!(err.kind().as_str(), bad.error_kind, "{}: {err}", bad.name);
    }
}

/// An independent decoder, written from docs/FORMAT.md with pyca/cryptography (its own
/// Cobblestone-256), reads every vector (skipped unless `CMEK_TEST_PYTHON` is set;
/// `scripts/test.sh` sets it and `CMEK_REQUIRE_EMULATORS=1` makes it required).
#[test]
fn an_independent_decoder_reads_every_vector() {
    let python = match std::env::var("CMEK_TEST_PYTHON") {
        Ok(python) => python,
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("CMEK_REQUIRE_EMULATORS is set but CMEK_TEST_PYTHON is not")
        }
        Err(_) => return eprintln!("skipped: set CMEK_TEST_PYTHON (scripts/test.sh sets it)"),
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/stream_vectors.py"
    );
    let out = std::process::Command::new(&python)
        .args([script, PATH])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("decoded 8 streamed vectors"));
}

#[test]
fn every_field_is_described() {
    let file: File = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let value = serde_json::to_value(&file).unwrap();
    for section in ["vectors", "invalid"] {
        for key in value[section][0].as_object().unwrap().keys() {
            assert!(
                file.fields[section][key].is_string(),
                "{section}.{key} is not described in fields"
            );
        }
    }
}

#[tokio::test]
#[ignore = "writes tests/data/stream_vectors.json; run once per format version"]
async fn write_stream_vectors() {
    if std::env::var_os("CMEK_WRITE_VECTORS").is_none() {
        return;
    }
    let envelopes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ENVELOPES).unwrap()).unwrap();
    let source = |name: &str| {
        envelopes["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no envelope vector {name}"))
            .clone()
    };
    let pattern = |len: usize| (0..len).map(|i| (i * 37 % 256) as u8).collect::<Vec<u8>>();
    // (name, form, DEK record of this envelope vector, plaintext length, AAD, salt seed)
    let cases = [
        (
            "streamed empty",
            "streamed",
            "self-contained empty",
            0,
            "",
            0x60u8,
        ),
        (
            "streamed short with aad",
            "streamed",
            "self-contained short with aad",
            20,
            "video/7",
            0x61,
        ),
        (
            "streamed one full chunk",
            "streamed",
            "self-contained 1 KiB",
            16_384,
            "",
            0x62,
        ),
        (
            "streamed chunk and a byte",
            "streamed",
            "self-contained kek version 1",
            16_385,
            "p",
            0x63,
        ),
        (
            "compact streamed empty",
            "streamed_compact",
            "compact empty",
            0,
            "",
            0x64,
        ),
        (
            "compact streamed short with aad",
            "streamed_compact",
            "compact short with aad",
            20,
            "video/7",
            0x65,
        ),
        (
            "compact streamed one full chunk",
            "streamed_compact",
            "compact 300 bytes",
            16_384,
            "",
            0x66,
        ),
        (
            "compact streamed two chunks and 7",
            "streamed_compact",
            "compact kek version 1",
            32_775,
            "p",
            0x67,
        ),
    ];
    let mut file = File {
        description: "cmek streamed envelopes (forms 0x04 and 0x05) golden vectors; the DEK \
                      records are those of vectors.json; see docs/FORMAT.md"
            .into(),
        fields: fields(),
        vectors: Vec::new(),
        invalid: Vec::new(),
    };
    for (name, form_name, from, len, aad, seed) in cases {
        let v = source(from);
        let record = DekRecord::from_bytes(&unhex(v["dek_record"].as_str().unwrap())).unwrap();
        let dek = DataKey::from_slice(&unhex(v["dek"].as_str().unwrap())).unwrap();
        let salt: [u8; 24] = std::array::from_fn(|i| seed.wrapping_add(i as u8));
        let plaintext = pattern(len);
        let envelope = seal_streamed_with(
            &dek,
            &record,
            form(form_name),
            &salt,
            &plaintext,
            aad.as_bytes(),
        )
        .unwrap();
        file.vectors.push(Vector {
            name: name.into(),
            form: form_name.into(),
            compartment_id: record.compartment().to_string(),
            key_config_id: record.key_config().to_string(),
            dek: hex(dek.expose_secret()),
            dek_record: hex(&record.to_bytes()),
            salt: hex(&salt),
            aad: hex(aad.as_bytes()),
            plaintext: hex(&plaintext),
            envelope: hex(&envelope),
        });
    }
    let base = file.vectors[3].envelope.clone(); // streamed, a full chunk and one byte
    let bytes = unhex(&base);
    let compartment = file.vectors[3].compartment_id.clone();
    let aad = file.vectors[3].aad.clone();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let head = bytes.len() - SEALED_CHUNK_LEN - 17;
    let mut swapped = bytes[..head].to_vec();
    swapped.extend_from_slice(&bytes[bytes.len() - 17..]);
    swapped.extend_from_slice(&bytes[head..head + SEALED_CHUNK_LEN]);
    let invalid = [
        ("final chunk altered", flipped, "integrity"),
        (
            "final chunk dropped (ends on a chunk boundary)",
            bytes[..bytes.len() - 17].to_vec(),
            "invalid_input",
        ),
        (
            "cut inside the final chunk's tag",
            bytes[..bytes.len() - 3].to_vec(),
            "invalid_input",
        ),
        ("chunks reordered", swapped, "integrity"),
        (
            "a byte appended",
            [&bytes[..], &[0u8]].concat(),
            "integrity",
        ),
    ];
    for (name, envelope, kind) in invalid {
        file.invalid.push(Invalid {
            name: name.into(),
            compartment_id: compartment.clone(),
            aad: aad.clone(),
            envelope: hex(&envelope),
            error_kind: kind.into(),
        });
    }
    std::fs::write(PATH, serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
}

fn fields() -> serde_json::Value {
    serde_json::json!({
        "vectors": {
            "name": "what the vector covers",
            "form": "streamed (form 0x04, the DEK record fields in the header) or streamed_compact (form 0x05, only the DEK id; the record is in the DEK store)",
            "compartment_id": "the compartment of the DEK, and the compartment to decrypt with",
            "key_config_id": "the key configuration that wrapped the DEK",
            "dek": "hex, the 32-byte DEK the DEK record wraps (under the kek_file of vectors.json)",
            "dek_record": "hex, the DEK record (form 0x03), from vectors.json",
            "salt": "hex, the 24-byte body salt",
            "aad": "hex, the caller's AAD, possibly empty; it ends the body's context",
            "plaintext": "hex, the plaintext",
            "envelope": "hex, the streamed envelope: header, salt, body commitment, chunks"
        },
        "invalid": {
            "name": "what is wrong with the envelope",
            "compartment_id": "the compartment to decrypt with",
            "aad": "hex, the caller's AAD to decrypt with",
            "envelope": "hex, a malformed or altered streamed envelope, made from the vector streamed chunk and a byte",
            "error_kind": "the ErrorKind decryption fails with"
        }
    })
}
