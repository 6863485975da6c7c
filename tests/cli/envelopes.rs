//! Key files, envelopes in both forms, inspect and the demo.

use crate::support::*;

#[test]
fn keygen_encrypt_inspect_decrypt_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek.json");
    ok(cmek(
        &["keygen", "--out", s(&key), "--key-id", "local:cli"],
        None,
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = cmek(&["keygen", "--out", s(&key)], None);
    assert!(
        !again.status.success(),
        "keygen must not overwrite a key file"
    );

    // stdin -> stdout
    let common = [
        "--key-file",
        s(&key),
        "--compartment",
        "tenant-1",
        "--aad",
        "doc/1",
    ];
    let envelope = ok(cmek(
        &[&["encrypt"][..], &common].concat(),
        Some(b"hello from stdin"),
    ));
    let info: serde_json::Value =
        serde_json::from_slice(&ok(cmek(&["inspect"], Some(&envelope)))).unwrap();
    assert_eq!(info["compartment_id"], "tenant-1");
    assert_eq!(info["key_id"], "local:cli");
    assert_eq!(info["form"], "self_contained");
    assert_eq!(
        ok(cmek(&[&["decrypt"][..], &common].concat(), Some(&envelope))),
        b"hello from stdin"
    );

    // Wrong AAD or compartment: a clear error, no output.
    let bad = cmek(
        &[
            "decrypt",
            "--key-file",
            s(&key),
            "--compartment",
            "tenant-1",
            "--aad",
            "doc/2",
        ],
        Some(&envelope),
    );
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("integrity: decryption failed"));
    let bad = cmek(
        &[
            "decrypt",
            "--key-file",
            s(&key),
            "--compartment",
            "tenant-2",
            "--aad",
            "doc/1",
        ],
        Some(&envelope),
    );
    assert!(!bad.status.success());

    // Files, after a key rotation: old envelopes still open.
    ok(cmek(&["rotate-key", "--key-file", s(&key)], None));
    let (input, output) = (dir.path().join("in.bin"), dir.path().join("out.cmek"));
    std::fs::write(&input, vec![7u8; 100_000]).unwrap();
    ok(cmek(
        &[
            &["encrypt"][..],
            &common,
            &["-i", s(&input), "-o", s(&output)],
        ]
        .concat(),
        None,
    ));
    let info: serde_json::Value =
        serde_json::from_slice(&ok(cmek(&["inspect", "-i", s(&output)], None))).unwrap();
    assert_eq!(info["key_version"], "2");
    assert_eq!(
        ok(cmek(
            &[&["decrypt"][..], &common, &["-i", s(&output)]].concat(),
            None
        )),
        vec![7u8; 100_000]
    );
    assert_eq!(
        ok(cmek(&[&["decrypt"][..], &common].concat(), Some(&envelope))),
        b"hello from stdin"
    );
}

#[test]
fn compact_envelopes_keep_records_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek.json");
    let records = dir.path().join("records");
    ok(cmek(&["keygen", "--out", s(&key)], None));
    let args = [
        "--key-file",
        s(&key),
        "--compartment",
        "t",
        "--dek-store",
        s(&records),
    ];
    let envelope = ok(cmek(
        &[&["encrypt", "--compact"][..], &args].concat(),
        Some(b"row"),
    ));
    assert_eq!(envelope.len(), 3 + 48);
    assert!(std::fs::read_dir(records.join("t")).unwrap().count() == 1);
    assert_eq!(
        ok(cmek(&[&["decrypt"][..], &args].concat(), Some(&envelope))),
        b"row"
    );
    let no_store = cmek(
        &[
            "encrypt",
            "--key-file",
            s(&key),
            "--compartment",
            "t",
            "--compact",
        ],
        Some(b"x"),
    );
    assert!(!no_store.status.success());
    assert!(String::from_utf8_lossy(&no_store.stderr).contains("--dek-store"));
}

#[test]
fn inspect_rejects_garbage_clearly() {
    let out = cmek(&["inspect"], Some(b"definitely not an envelope"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a cmek envelope"));
}

#[test]
fn demo_reports_the_workload() {
    let out = ok(cmek(
        &[
            "demo",
            "--records",
            "20000",
            "--compartments",
            "8",
            "--tasks",
            "4",
        ],
        None,
    ));
    let text = String::from_utf8(out).unwrap();
    for expected in [
        "records        20000 written",
        "KMS calls      8 wraps + 0 unwraps",
        "hit ratio",
        "still decrypts",
        "\"form\": \"self_contained\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
