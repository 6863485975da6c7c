//! The control-plane commands over the embedded state directory.

use crate::support::*;

#[test]
fn control_plane_commands_over_the_embedded_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (kek_a, kek_b) = (dir.path().join("a.key"), dir.path().join("b.key"));
    ok(cmek(
        &["keygen", "--out", s(&kek_a), "--key-id", "local:a"],
        None,
    ));
    ok(cmek(
        &["keygen", "--out", s(&kek_b), "--key-id", "local:b"],
        None,
    ));

    // Create from the reference API's request body (here on stdin), then validate.
    let body = format!(
        r#"{{"display_name": "prod key", "geo": "us", "provider_config": {{"type": "local", "key_file": "{}"}}}}"#,
        s(&kek_a)
    );
    let (good, key, err) = admin(
        &state,
        &["keys", "create", "--body", "-"],
        Some(body.as_bytes()),
    );
    assert!(good, "{err}");
    assert_eq!(key["type"], "external_key");
    assert_eq!(key["geo"], "us");
    assert!(key["id"].as_str().unwrap().starts_with("ekey_"));
    let id = string(&key["id"]);
    let (good, shown, _) = admin(&state, &["keys", "show", &id], None);
    assert!(good);
    assert_eq!(shown["display_name"], "prod key");

    // A bad request names the field; attaching before validating is refused.
    let bad = r#"{"display_name": "x", "provider_config": {"type": "aws", "kms_arn": "arn:aws:kms:us-east-1:111122223333:alias/x", "role_arn": "arn:aws:iam::111122223333:role/r"}}"#;
    let (good, _, err) = admin(&state, &["keys", "create", "--body", bad], None);
    assert!(!good && err.contains("provider_config.kms_arn"), "{err}");
    let (good, compartment, err) = admin(&state, &["compartments", "create"], None);
    assert!(good, "{err}");
    assert_eq!(compartment["external_key_id"], serde_json::Value::Null);
    let c = string(&compartment["compartment_id"]);
    let (good, _, err) = admin(
        &state,
        &["compartments", "attach", &c, "--external-key-id", &id],
        None,
    );
    assert!(!good && err.contains("validate it first"), "{err}");

    // Data written now stays under the provider-managed key.
    let early = ok(cmek(
        &[
            "encrypt",
            "--state",
            s(&state),
            "--compartment",
            &c,
            "--compact",
        ],
        Some(b"early"),
    ));

    let (good, result, _) = admin(&state, &["keys", "validate", &id], None);
    assert!(good);
    assert_eq!(
        result,
        serde_json::json!({"type": "external_key_validation", "status": "success", "error": null})
    );
    let (good, attached, err) = admin(
        &state,
        &["compartments", "attach", &c, "--external-key-id", &id],
        None,
    );
    assert!(good, "{err}");
    assert_eq!(attached["external_key_id"], id.as_str());
    let late = ok(cmek(
        &[
            "encrypt",
            "--state",
            s(&state),
            "--compartment",
            &c,
            "--compact",
        ],
        Some(b"late"),
    ));

    // Rotate to key b, rewrap, and everything still decrypts.
    let config = format!(r#"{{"type": "local", "key_file": "{}"}}"#, s(&kek_b));
    let (good, rotated, err) = admin(
        &state,
        &["keys", "rotate", &id, "--provider-config", &config],
        None,
    );
    assert!(good, "{err}");
    assert_eq!(rotated["provider_config"]["key_file"], s(&kek_b));
    let (good, job, err) = admin(&state, &["rewrap", &id, "--batch", "1"], None);
    assert!(good, "{err}");
    assert_eq!(
        (job["rewrapped"].as_u64(), job["target_key_ref"].as_str()),
        (Some(1), Some("local:b"))
    );
    assert!(
        err.contains("rewrap ekey_"),
        "progress lines on stderr: {err}"
    );
    for (envelope, text) in [(&early, "early"), (&late, "late")] {
        let plain = ok(cmek(
            &["decrypt", "--state", s(&state), "--compartment", &c],
            Some(envelope),
        ));
        assert_eq!(plain, text.as_bytes());
    }

    // Deleting needs --force while attached; then new writes stop.
    let (good, _, err) = admin(&state, &["keys", "delete", &id], None);
    assert!(!good && err.contains("force"), "{err}");
    let (good, deleted, _) = admin(&state, &["keys", "delete", &id, "--force"], None);
    assert!(good && deleted["deleted_at"].is_string());
    let refused = cmek(
        &["encrypt", "--state", s(&state), "--compartment", &c],
        Some(b"x"),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("key_revoked"));

    let (good, list, _) = admin(&state, &["keys", "list"], None);
    assert!(good);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (good, list, _) = admin(&state, &["compartments", "list"], None);
    assert!(good);
    assert_eq!(list["data"][0]["compartment_id"], c.as_str());

    // The audit trail names the actor.
    let trail = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    let actions: Vec<String> = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .inspect(|e| assert_eq!(e["actor"], "ops@example.com"))
        .map(|e| {
            format!(
                "{}:{}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "external_key.create:success",
            "external_key.create:failure",
            "compartment.create:success",
            "compartment.attach:failure",
            "external_key.validate:success",
            "compartment.attach:success",
            "external_key.rotate:success",
            "rewrap.start:success",
            "rewrap.complete:success",
            "external_key.delete:failure",
            "external_key.delete:success",
        ]
    );
}

/// The README's rotation steps with two `keygen` files (no `--key-id`): every record written
/// before the rotation stays readable, rewrap moves the compact ones, and after the old key file
/// is deleted they still decrypt.
#[test]
fn rotating_between_two_keygen_files_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    let (kek, kek2) = (dir.path().join("kek.json"), dir.path().join("kek2.json"));
    ok(cmek(&["keygen", "--out", s(&kek)], None));
    ok(cmek(&["keygen", "--out", s(&kek2)], None));
    let body = format!(
        r#"{{"display_name": "prod", "provider_config": {{"type": "local", "key_file": "{}"}}}}"#,
        s(&kek)
    );
    let (good, key, err) = admin(&state, &["keys", "create", "--body", &body], None);
    assert!(good, "{err}");
    let id = string(&key["id"]);
    let (good, _, err) = admin(&state, &["keys", "validate", &id], None);
    assert!(good, "{err}");
    let (good, compartment, err) = admin(&state, &["compartments", "create"], None);
    assert!(good, "{err}");
    let c = string(&compartment["compartment_id"]);
    let (good, _, err) = admin(
        &state,
        &["compartments", "attach", &c, "--external-key-id", &id],
        None,
    );
    assert!(good, "{err}");
    let encrypt = |compact: bool, text: &[u8]| {
        let mut args = vec!["encrypt", "--state", s(&state), "--compartment", &c];
        if compact {
            args.push("--compact");
        }
        ok(cmek(&args, Some(text)))
    };
    let decrypt = |envelope: &[u8]| {
        cmek(
            &["decrypt", "--state", s(&state), "--compartment", &c],
            Some(envelope),
        )
    };
    let compact: Vec<Vec<u8>> = (0..3)
        .map(|i| encrypt(true, format!("row {i}").as_bytes()))
        .collect();
    let whole = encrypt(false, b"self-contained");

    let config = format!(r#"{{"type": "local", "key_file": "{}"}}"#, s(&kek2));
    let (good, _, err) = admin(
        &state,
        &["keys", "rotate", &id, "--provider-config", &config],
        None,
    );
    assert!(good, "{err}");
    for (i, envelope) in compact.iter().enumerate() {
        assert_eq!(ok(decrypt(envelope)), format!("row {i}").as_bytes());
    }
    assert_eq!(ok(decrypt(&whole)), b"self-contained");
    // Each `cmek encrypt` is its own process with its own data key: four DEK records.
    let (good, job, err) = admin(&state, &["rewrap", &id], None);
    assert!(good, "{err}");
    assert_eq!(
        (job["rewrapped"].as_u64(), job["already_current"].as_u64()),
        (Some(4), Some(0)),
        "{job}"
    );
    let (good, job, err) = admin(&state, &["rewrap", &id], None);
    assert!(good, "{err}");
    assert_eq!(
        job["already_current"].as_u64(),
        Some(4),
        "a second run finds all moved: {job}"
    );

    // The README calls deleting the old key file safe after a rewrap, for compact records.
    std::fs::remove_file(&kek).unwrap();
    for (i, envelope) in compact.iter().enumerate() {
        assert_eq!(ok(decrypt(envelope)), format!("row {i}").as_bytes());
    }
    let gone = decrypt(&whole);
    assert!(
        !gone.status.success(),
        "a self-contained envelope needs the key that wrapped it"
    );
}
