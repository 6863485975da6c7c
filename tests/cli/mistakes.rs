//! What a newcomer's slips get: a clear refusal or the right thing, never silent damage.

use std::time::{Duration, SystemTime};

use crate::support::*;

fn keygen(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let key = dir.join(name);
    ok(cmek(&["keygen", "--out", s(&key)], None));
    key
}

#[test]
fn decrypt_help_offers_no_compact_flag() {
    let help = String::from_utf8(ok(cmek(&["decrypt", "--help"], None))).unwrap();
    assert!(!help.contains("--compact"), "{help}");
    assert!(help.contains("--dek-store"), "{help}");
    let help = String::from_utf8(ok(cmek(&["encrypt", "--help"], None))).unwrap();
    assert!(help.contains("--compact"), "{help}");
}

#[test]
fn a_compact_envelope_without_dek_store_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "kek.json");
    let records = dir.path().join("records");
    let common = ["--key-file", s(&key), "--compartment", "t1"];
    let envelope = ok(cmek(
        &[
            &["encrypt", "--compact", "--dek-store", s(&records)][..],
            &common,
        ]
        .concat(),
        Some(b"row"),
    ));
    let err = fails(cmek(&[&["decrypt"][..], &common].concat(), Some(&envelope)));
    assert!(err.contains("--dek-store"), "{err}");
    assert!(!err.contains("ClientBuilder"), "{err}");
}

#[test]
fn encrypt_and_decrypt_never_overwrite_an_output_file_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "kek.json");
    let out = dir.path().join("out.cmek");
    std::fs::write(&out, b"precious").unwrap();
    let common = ["--key-file", s(&key), "--compartment", "t1", "-o", s(&out)];
    let err = fails(cmek(&[&["encrypt"][..], &common].concat(), Some(b"new")));
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let err = fails(cmek(&[&["decrypt"][..], &common].concat(), Some(b"x")));
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    ok(cmek(
        &[&["encrypt", "--force"][..], &common].concat(),
        Some(b"new"),
    ));
    let envelope = std::fs::read(&out).unwrap();
    let plain = dir.path().join("plain.txt");
    let back = [
        "--key-file",
        s(&key),
        "--compartment",
        "t1",
        "-o",
        s(&plain),
    ];
    ok(cmek(&[&["decrypt"][..], &back].concat(), Some(&envelope)));
    assert_eq!(std::fs::read(&plain).unwrap(), b"new");
}

#[test]
fn a_mistyped_state_directory_is_refused_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = keygen(dir.path(), "kek.json");
    validated_key(&state, &key); // the first create makes the state

    let typo = dir.path().join("stat");
    for args in [
        &["keys", "list"][..],
        &["compartments", "list"],
        &["keys", "show", "ekey_01"],
        &["rewrap", "ekey_01"],
    ] {
        let (good, _, err) = admin(&typo, args, None);
        assert!(!good, "{args:?} succeeded on a missing state");
        assert!(
            err.contains(s(&typo)) && err.contains("no cmek state"),
            "{args:?}: {err}"
        );
    }
    let err = fails(cmek(
        &["encrypt", "--state", s(&typo), "--compartment", "c"],
        Some(b"x"),
    ));
    assert!(err.contains("no cmek state"), "{err}");
    assert!(!typo.exists(), "nothing was created at the mistyped path");
}

#[test]
fn a_relative_key_file_is_stored_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    keygen(&work, "kek.json");
    let state = dir.path().join("state");
    let body =
        r#"{"display_name": "k", "provider_config": {"type": "local", "key_file": "kek.json"}}"#;
    let out = cmek_in(
        Some(&work),
        &["keys", "create", "--state", s(&state), "--body", body],
        None,
    );
    let key: serde_json::Value = serde_json::from_slice(&ok(out)).unwrap();
    let stored = string(&key["provider_config"]["key_file"]);
    assert_eq!(std::path::Path::new(&stored), work.join("kek.json"));
    // From another directory, the configuration still works.
    let (good, result, err) = admin(&state, &["keys", "validate", &string(&key["id"])], None);
    assert!(good, "{err}");
    assert_eq!(result["status"], "success");
}

#[test]
fn validating_a_deleted_key_does_not_report_success() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = keygen(dir.path(), "kek.json");
    let id = validated_key(&state, &key);
    let (good, _, err) = admin(&state, &["keys", "delete", &id], None);
    assert!(good, "{err}");
    let (good, result, err) = admin(&state, &["keys", "validate", &id], None);
    assert!(!good, "validate of a deleted key succeeded: {result}");
    assert!(err.contains("deleted"), "{err}");
}

#[test]
fn a_later_run_removes_what_a_killed_rewrap_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (a, b) = (keygen(dir.path(), "a.json"), keygen(dir.path(), "b.json"));
    let id = validated_key(&state, &a);
    let (_, compartment, err) = admin(
        &state,
        &["compartments", "create", "--external-key-id", &id],
        None,
    );
    let c = string(&compartment["compartment_id"]);
    let encrypt = [
        "encrypt",
        "--state",
        s(&state),
        "--compartment",
        &c,
        "--compact",
    ];
    ok(cmek(&encrypt, Some(b"row")));
    let config = format!(r#"{{"type": "local", "key_file": "{}"}}"#, s(&b));
    let (good, _, err2) = admin(
        &state,
        &["keys", "rotate", &id, "--provider-config", &config],
        None,
    );
    assert!(good, "{err} {err2}");

    // What a rewrap killed mid-write leaves: temporaries next to records and jobs.
    let left = [
        state
            .join("dek_records")
            .join(&c)
            .join(".tmp-0011223344556677"),
        state
            .join("control")
            .join("rewrap_jobs")
            .join(".tmp-8899aabbccddeeff"),
    ];
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for path in &left {
        std::fs::write(path, b"half a record").unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    }
    let (good, job, err) = admin(&state, &["rewrap", &id], None);
    assert!(good, "{err}");
    assert_eq!(job["rewrapped"], 1);
    for path in &left {
        assert!(!path.exists(), "{} is still there", path.display());
    }
}

#[test]
fn a_state_that_lost_its_provider_managed_key_is_refused_not_given_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (good, compartment, err) = admin(&state, &["compartments", "create"], None);
    assert!(good, "{err}");
    let c = string(&compartment["compartment_id"]);
    let encrypt = ["encrypt", "--state", s(&state), "--compartment", &c];
    let envelope = ok(cmek(&encrypt, Some(b"under the provider-managed key")));

    let key_file = state.join("provider-managed.key");
    std::fs::remove_file(&key_file).unwrap();
    let decrypt = ["decrypt", "--state", s(&state), "--compartment", &c];
    let err = fails(cmek(&decrypt, Some(&envelope)));
    assert!(err.contains("provider-managed key"), "{err}");
    let err = fails(cmek(&encrypt, Some(b"more")));
    assert!(err.contains("provider-managed key"), "{err}");
    assert!(!key_file.exists(), "a new provider-managed key was made");
}
