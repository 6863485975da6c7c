//! Streamed envelopes through the CLI: large files in constant memory, `--stream`, `--range`,
//! inspect, and output that appears only when complete.

use std::path::Path;

use crate::support::*;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

/// `--key-file K --compartment tenant-1 --aad obj` (and `--dek-store` when given).
fn common<'a>(key: &'a Path, store: Option<&'a Path>) -> Vec<&'a str> {
    let mut args = vec![
        "--key-file",
        s(key),
        "--compartment",
        "tenant-1",
        "--aad",
        "obj",
    ];
    if let Some(store) = store {
        args.extend(["--dek-store", s(store)]);
    }
    args
}

fn encrypt(key: &Path, store: Option<&Path>, extra: &[&str], input: &Path, out: &Path) {
    let mut args = vec!["encrypt"];
    args.extend(common(key, store));
    args.extend(extra);
    args.extend(["-i", s(input), "-o", s(out)]);
    ok(cmek(&args, None));
}

#[test]
fn large_files_stream_and_decrypt_whole_or_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek.json");
    let store = dir.path().join("records");
    ok(cmek(&["keygen", "--out", s(&key)], None));
    let plaintext = data(3 * 1024 * 1024 + 5);
    let input = dir.path().join("big.bin");
    std::fs::write(&input, &plaintext).unwrap();

    for (name, extra, store) in [
        ("self-contained", &[][..], None),
        ("compact", &["--compact"][..], Some(store.as_path())),
    ] {
        let object = dir.path().join(format!("{name}.cmek"));
        encrypt(&key, store, extra, &input, &object);
        let info: serde_json::Value =
            serde_json::from_slice(&ok(cmek(&["inspect", "-i", s(&object)], None))).unwrap();
        let expected_form = if store.is_some() {
            "streamed_compact"
        } else {
            "streamed"
        };
        assert_eq!(info["form"], expected_form, "{info}");
        assert_eq!(info["stream"]["body"], "Cobblestone-256");
        assert_eq!(info["stream"]["plaintext_len"], plaintext.len() as u64);
        assert_eq!(
            info["stream"]["chunks"],
            (plaintext.len() / 16_384 + 1) as u64
        );

        let back = dir.path().join(format!("{name}.out"));
        let mut args = vec!["decrypt"];
        args.extend(common(&key, store));
        args.extend(["-i", s(&object), "-o", s(&back)]);
        ok(cmek(&args, None));
        assert_eq!(std::fs::read(&back).unwrap(), plaintext, "{name}");

        for (range, expected) in [
            ("0-0", &plaintext[..1]),
            ("1000000-1000099", &plaintext[1_000_000..1_000_100]),
            ("3145000-", &plaintext[3_145_000..]),
            ("-7", &plaintext[plaintext.len() - 7..]),
        ] {
            let mut args = vec!["decrypt"];
            args.extend(common(&key, store));
            args.extend(["-i", s(&object), "--range", range]);
            assert_eq!(ok(cmek(&args, None)), expected, "{name} --range {range}");
        }
    }
}

#[test]
fn stream_forces_the_streamed_form_for_small_input_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek.json");
    ok(cmek(&["keygen", "--out", s(&key)], None));
    let object = dir.path().join("small.cmek");
    let mut args = vec!["encrypt", "--stream"];
    args.extend(common(&key, None));
    args.extend(["-o", s(&object)]);
    ok(cmek(&args, Some(b"twenty bytes, really")));
    let info: serde_json::Value =
        serde_json::from_slice(&ok(cmek(&["inspect", "-i", s(&object)], None))).unwrap();
    assert_eq!(info["form"], "streamed");
    let mut args = vec!["decrypt"];
    args.extend(common(&key, None));
    let bytes = std::fs::read(&object).unwrap();
    assert_eq!(ok(cmek(&args, Some(&bytes))), b"twenty bytes, really");
}

#[test]
fn a_truncated_or_altered_stream_leaves_no_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek.json");
    ok(cmek(&["keygen", "--out", s(&key)], None));
    let input = dir.path().join("in.bin");
    std::fs::write(&input, data(200_000)).unwrap();
    let object = dir.path().join("in.cmek");
    encrypt(&key, None, &["--stream"], &input, &object);
    let bytes = std::fs::read(&object).unwrap();
    let mut flipped = bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 1;
    for (name, bad) in [
        ("truncated", &bytes[..bytes.len() - 16_400][..]),
        ("altered", &flipped[..]),
    ] {
        let damaged = dir.path().join(format!("{name}.cmek"));
        std::fs::write(&damaged, bad).unwrap();
        let out = dir.path().join(format!("{name}.out"));
        let mut args = vec!["decrypt"];
        args.extend(common(&key, None));
        args.extend(["-i", s(&damaged), "-o", s(&out)]);
        let stderr = fails(cmek(&args, None));
        assert!(stderr.contains("error:"), "{stderr}");
        assert!(!out.exists(), "{name}: a partial plaintext file was left");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".cmek-"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: temporary files left");
    }
}

#[test]
fn range_needs_a_streamed_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek.json");
    ok(cmek(&["keygen", "--out", s(&key)], None));
    let input = dir.path().join("in.bin");
    std::fs::write(&input, b"short").unwrap();
    let object = dir.path().join("in.cmek");
    encrypt(&key, None, &[], &input, &object);
    let mut args = vec!["decrypt"];
    args.extend(common(&key, None));
    args.extend(["-i", s(&object), "--range", "0-1"]);
    let stderr = fails(cmek(&args, None));
    assert!(stderr.contains("--stream"), "{stderr}");
    let mut args = vec!["decrypt"];
    args.extend(common(&key, None));
    args.extend(["-i", s(&object), "--range", "5-1"]);
    assert!(fails(cmek(&args, None)).contains("START-END"));
}
