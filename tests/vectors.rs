//! Golden test vectors (`tests/data/vectors.json`): the v1 format is frozen.
//!
//! Each vector fixes a DEK, DEK id, nonce, AAD and plaintext; the DEK is wrapped under the local
//! key file stored in the vector file. The test checks that (1) the local backend unwraps the
//! stored wrapped DEK, (2) sealing the same inputs reproduces the envelope byte for byte, and
//! (3) the client decrypts every envelope. Malformed envelopes, decrypted with their own
//! compartment and AAD, must give the listed error kind. The file's `fields` object describes
//! every field.
//!
//! Regenerate (only when the format version changes!) with
//! `CMEK_WRITE_VECTORS=1 cargo test --test vectors -- --ignored`.

mod common;

use std::sync::Arc;

use cmek::format::{DekRecord, Form};
use cmek::internal::{record_for, seal_with};
use cmek::{
    Client, CompartmentId, DataKey, DekId, DekStore, KeyConfigId, KmsBackend, LocalKms,
    MemoryDekStore, WrapContext,
};
use common::{hex, unhex};
use serde::{Deserialize, Serialize};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");
const COMPARTMENT: &str = "f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c";

#[derive(Serialize, Deserialize)]
struct File {
    description: String,
    fields: serde_json::Value,
    kek_file: serde_json::Value,
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
    dek_id: String,
    nonce: String,
    aad: String,
    plaintext: String,
    dek_record: String,
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
        "self_contained" => Form::SelfContained,
        "compact" => Form::Compact,
        other => panic!("unknown form {other}"),
    }
}

fn open_kek(file: &File) -> (tempfile::TempDir, Arc<LocalKms>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file.kek_file).unwrap()).unwrap();
    let kms = Arc::new(LocalKms::open(&path).unwrap());
    (dir, kms)
}

#[tokio::test]
async fn golden_vectors_decrypt_and_reproduce() {
    let file: File = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let (_dir, kms) = open_kek(&file);
    assert!(file.vectors.len() >= 6 && file.invalid.len() >= 5);
    for v in &file.vectors {
        let compartment = CompartmentId::new(&v.compartment_id).unwrap();
        let key_config = KeyConfigId::new(&v.key_config_id).unwrap();
        let record = DekRecord::from_bytes(&unhex(&v.dek_record)).unwrap();
        assert_eq!(
            record.dek_id(),
            DekId::from_hex(&v.dek_id).unwrap(),
            "{}",
            v.name
        );
        assert_eq!(record.compartment(), &compartment);

        let dek = kms
            .unwrap(
                record.wrapped(),
                &WrapContext::new(&compartment, &key_config),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(hex(dek.expose_secret()), v.dek, "{}", v.name);

        let nonce: [u8; 12] = unhex(&v.nonce).try_into().unwrap();
        let again = seal_with(
            &dek,
            &record,
            form(&v.form),
            &nonce,
            &unhex(&v.plaintext),
            &unhex(&v.aad),
        )
        .unwrap();
        assert_eq!(hex(&again), v.envelope, "{}: re-encryption differs", v.name);

        let store = Arc::new(MemoryDekStore::new());
        store.put(&record).await.unwrap();
        let client = Client::builder()
            .key(key_config, kms.clone())
            .dek_store(store)
            .build()
            .unwrap();
        let pt = client
            .decrypt(&compartment, &unhex(&v.envelope), &unhex(&v.aad))
            .await
            .unwrap();
        assert_eq!(hex(&pt), v.plaintext, "{}", v.name);
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

/// The keys of the object `value`, as (section, key) pairs.
fn keys(section: &'static str, value: &serde_json::Value) -> Vec<(&'static str, String)> {
    let object = value.as_object().expect("an object");
    object.keys().map(|k| (section, k.clone())).collect()
}

#[test]
fn every_field_is_described() {
    let file: File = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let mut seen = keys("kek_file", &file.kek_file);
    for version in file.kek_file["versions"].as_array().unwrap() {
        let version_keys = keys("kek_file", version).into_iter();
        seen.extend(version_keys.map(|(s, k)| (s, format!("versions[].{k}"))));
    }
    for v in &file.vectors {
        seen.extend(keys("vectors", &serde_json::to_value(v).unwrap()));
    }
    for bad in &file.invalid {
        seen.extend(keys("invalid", &serde_json::to_value(bad).unwrap()));
    }
    for (section, key) in seen {
        let text = file.fields[section].get(&key).and_then(|d| d.as_str());
        assert!(
            text.is_some_and(|d| !d.is_empty()),
            "fields.{section} lacks {key:?}"
        );
    }
}

#[tokio::test]
#[ignore = "writes tests/data/vectors.json; run only when the format version changes"]
async fn write_vectors() {
    if std::env::var_os("CMEK_WRITE_VECTORS").is_none() {
        return;
    }
    let material = |seed: u8| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode((0..32).map(|i| seed.wrapping_add(i)).collect::<Vec<u8>>())
    };
    let kek_file = serde_json::json!({
        "type": "cmek_local_key",
        "key_id": "local:golden",
        "enabled": true,
        "primary_version": 2,
        "versions": [
            {"version": 1, "state": "enabled", "created_at": 1_732_000_000u64, "material": material(0x00)},
            {"version": 2, "state": "enabled", "created_at": 1_732_100_000u64, "material": material(0x40)},
        ]
    });
    let mut file = File {
        description: "cmek envelope format v1 golden vectors; see docs/FORMAT.md".into(),
        fields: fields(),
        kek_file,
        vectors: Vec::new(),
        invalid: Vec::new(),
    };
    // The stored key file has version 2 as primary; a copy with version 1 primary wraps the
    // "kek version 1" cases so old key versions are covered.
    let (_dir2, kms_v2) = open_kek(&file);
    let mut v1_file = file.kek_file.clone();
    v1_file["primary_version"] = 1.into();
    let v1 = File {
        description: String::new(),
        fields: serde_json::Value::Null,
        kek_file: v1_file,
        vectors: vec![],
        invalid: vec![],
    };
    let (_dir1, kms_v1) = open_kek(&v1);
    // (name, form, plaintext, aad, seed for DEK, DEK id and nonce)
    type Case<'a> = (&'a str, &'a str, &'a [u8], &'a [u8], u8);
    let cases: [Case; 8] = [
        ("self-contained empty", "self_contained", b"", b"", 0x10),
        (
            "self-contained short with aad",
            "self_contained",
            b"hello, compartment",
            b"object/42",
            0x11,
        ),
        (
            "self-contained 1 KiB",
            "self_contained",
            &[0x5a; 1024],
            b"",
            0x12,
        ),
        (
            "self-contained kek version 1",
            "self_contained",
            b"old key version",
            b"",
            0x13,
        ),
        ("compact empty", "compact", b"", b"", 0x20),
        (
            "compact short with aad",
            "compact",
            b"row 7 of table t",
            b"t/7",
            0x21,
        ),
        (
            "compact 300 bytes",
            "compact",
            &[0xa5; 300],
            b"long aad long aad long aad",
            0x22,
        ),
        (
            "compact kek version 1",
            "compact",
            b"old key version",
            b"",
            0x23,
        ),
    ];
    for (name, form_name, pt, aad, seed) in cases {
        let kms = if name.ends_with("kek version 1") {
            &kms_v1
        } else {
            &kms_v2
        };
        let compartment = CompartmentId::new(COMPARTMENT).unwrap();
        let key_config = KeyConfigId::new("local").unwrap();
        let dek = DataKey::from_slice(&[seed; 32]).unwrap();
        let dek_id = DekId::from_bytes([seed ^ 0xff; 16]);
        let wrapped = kms
            .wrap(&dek, &WrapContext::new(&compartment, &key_config))
            .await
            .unwrap();
        let record = record_for(
            &dek,
            dek_id,
            compartment.clone(),
            key_config.clone(),
            wrapped,
        )
        .unwrap();
        let nonce = [seed; 12];
        let envelope = seal_with(&dek, &record, form(form_name), &nonce, pt, aad).unwrap();
        file.vectors.push(Vector {
            name: name.into(),
            form: form_name.into(),
            compartment_id: compartment.to_string(),
            key_config_id: key_config.to_string(),
            dek: hex(dek.expose_secret()),
            dek_id: dek_id.to_hex(),
            nonce: hex(&nonce),
            aad: hex(aad),
            plaintext: hex(pt),
            dek_record: hex(&record.to_bytes()),
            envelope: hex(&envelope),
        });
    }
    let sample = unhex(&file.vectors[1].envelope);
    let sample_aad = file.vectors[1].aad.clone();
    let mut with = |name: &str, kind: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = sample.clone();
        f(&mut e);
        // Decrypted in the sample's compartment and with its AAD: only the change makes it fail.
        file.invalid.push(Invalid {
            name: name.into(),
            compartment_id: COMPARTMENT.into(),
            aad: sample_aad.clone(),
            envelope: hex(&e),
            error_kind: kind.into(),
        });
    };
    with("empty", "invalid_input", &|e| e.clear());
    with("bad magic", "invalid_input", &|e| e[0] = 0xCF);
    with("unknown version 2", "invalid_input", &|e| e[1] = 2);
    with("unknown form", "invalid_input", &|e| e[2] = 9);
    with("unknown suite", "invalid_input", &|e| e[3] = 0x7f);
    with("truncated header", "invalid_input", &|e| e.truncate(40));
    with("dek record is not an envelope", "invalid_input", &|e| {
        e[2] = 3
    });
    with("flipped tag bit", "integrity", &|e| {
        let n = e.len() - 1;
        e[n] ^= 1;
    });
    std::fs::write(PATH, serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
}

/// The `fields` object of the vector file: what every field of `vectors[]`, `invalid[]` and
/// `kek_file` holds.
fn fields() -> serde_json::Value {
    serde_json::json!({
        "vectors": {
            "name": "what the vector covers",
            "form": "self_contained (an envelope with form byte 0x01) or compact (form byte 0x02)",
            "compartment_id": "the compartment of the DEK: in dek_record, in the wrap context, and the compartment to decrypt with",
            "key_config_id": "the key configuration id in dek_record and in the wrap context; it names the backend, here the local key of kek_file",
            "dek": "hex, the 32-byte DEK, what the wrapped DEK in dek_record unwraps to",
            "dek_id": "hex, the 16-byte DEK id (bytes 4 to 20 of dek_record and of envelope)",
            "nonce": "hex, the 12-byte nonce the envelope was sealed with (the bytes right after its header)",
            "aad": "hex, the caller's AAD, possibly empty; AES-GCM authenticates the binding digest followed by it",
            "plaintext": "hex, what the envelope decrypts to",
            "dek_record": "hex, the DEK record (form 0x03): what a DekStore holds for compact envelopes; with form byte 0x01 it is the header of a self-contained envelope. Its wrapped DEK is wrapped under kek_file, with the KEK version its key version names",
            "envelope": "hex, the envelope; sealing dek under dek_record with nonce, aad and plaintext reproduces it byte for byte"
        },
        "invalid": {
            "name": "what is wrong with the envelope",
            "compartment_id": "the compartment to decrypt with",
            "aad": "hex, the caller's AAD to decrypt with, possibly empty",
            "envelope": "hex, a malformed or altered envelope, made from the vector self-contained short with aad",
            "error_kind": "the ErrorKind decryption fails with: invalid_input (not a well-formed v1 envelope) or integrity (authentication failed)"
        },
        "kek_file": {
            "type": "always cmek_local_key: a local key file as cmek keygen writes it, see docs/FORMAT.md",
            "key_id": "the local key id, written into headers as the backend key id",
            "enabled": "false: the key neither wraps nor unwraps",
            "primary_version": "the KEK version new DEKs are wrapped under (the kek version 1 vectors were made with version 1 primary)",
            "versions": "the KEK versions",
            "versions[].version": "the version number, written into headers as the backend key version in decimal",
            "versions[].state": "enabled, disabled or destroyed",
            "versions[].created_at": "creation time, seconds since the Unix epoch",
            "versions[].material": "the version's 32-byte AES-256 key, standard base64 with padding; absent in destroyed versions"
        }
    })
}
