//! The control-plane commands with `--state postgres://…`: separate invocations (as separate
//! nodes would) share configurations, compartments and compact DEK records through the
//! database. Needs `CMEK_TEST_POSTGRES_URL` (`scripts/test.sh` starts a server).

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A new database on the test server, or `None` without one (skipped).
fn fresh_database() -> Option<String> {
    let server = match std::env::var("CMEK_TEST_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("CMEK_TEST_POSTGRES_URL is not set, and CMEK_REQUIRE_EMULATORS is")
        }
        Err(_) => {
            eprintln!("skipped: CMEK_TEST_POSTGRES_URL is not set");
            return None;
        }
    };
    let name = format!("cmek_cli_{:016x}", rand::random::<u64>());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    });
    let (base, _) = server.rsplit_once('/').unwrap();
    Some(format!("{base}/{name}"))
}

/// Runs `cmek` on the database `url` with the provider-managed key `provider_key`; stdout as
/// JSON when it succeeds.
fn on_db(
    url: &str,
    provider_key: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> (bool, serde_json::Value, Vec<u8>, String) {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_cmek"))
            .args(args)
            .env("CMEK_STATE", url)
            .env("CMEK_PROVIDER_KEY", provider_key)
            .env("USER", "ops@example.com"),
        stdin,
    );
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        json,
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn control_plane_commands_over_postgres() {
    let Some(url) = fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (kek, provider) = (dir.path().join("kek.key"), dir.path().join("provider.key"));
    ok(cmek(&["keygen", "--out", s(&kek)], None));

    // Without the provider-managed key file a URL is refused, and says what is missing.
    let out = cmek(&["compartments", "list", "--state", &url], None);
    assert!(fails(out).contains("--provider-key"));
    // Only a command that creates something makes the provider-managed key.
    let (good, _, _, err) = on_db(&url, &provider, &["compartments", "list"], None);
    assert!(!good && err.contains("restore it from a backup"), "{err}");

    let (good, key, _, err) = on_db(
        &url,
        &provider,
        &["keys", "create", "--local-key-file", s(&kek)],
        None,
    );
    assert!(good, "{err}");
    let id = string(&key["id"]);
    let (good, _, _, err) = on_db(&url, &provider, &["keys", "validate", &id], None);
    assert!(good, "{err}");
    let (good, compartment, _, err) = on_db(
        &url,
        &provider,
        &["compartments", "create", "--external-key-id", &id],
        None,
    );
    assert!(good, "{err}");
    let c = string(&compartment["compartment_id"]);
    // A mistyped key file path does not make a new provider-managed key for a database that
    // has state: the other nodes could not read what it encrypts.
    let typo = dir.path().join("provider.kye");
    let (good, _, _, err) = on_db(&url, &typo, &["compartments", "create"], None);
    assert!(!good && err.contains("restore it from a backup"), "{err}");
    assert!(!typo.exists());

    // A compact envelope written by one invocation is read by another: its DEK record is in
    // the database, not in a file of either.
    let (good, _, envelope, err) = on_db(
        &url,
        &provider,
        &["encrypt", "--state", &url, "--compartment", &c, "--compact"],
        Some(b"shared across nodes"),
    );
    assert!(good, "{err}");
    let (good, _, plaintext, err) = on_db(
        &url,
        &provider,
        &["decrypt", "--state", &url, "--compartment", &c],
        Some(&envelope),
    );
    assert!(good, "{err}");
    assert_eq!(plaintext, b"shared across nodes");

    let (good, list, _, err) = on_db(&url, &provider, &["keys", "list"], None);
    assert!(good, "{err}");
    assert_eq!(list["data"][0]["id"], key["id"]);
    let (good, job, _, err) = on_db(&url, &provider, &["rewrap", &id], None);
    assert!(good, "{err}");
    assert_eq!(job["already_current"], 1, "{job}");

    // Every invocation's changes are in one activity feed, read page by page.
    let (mut actions, mut after) = (Vec::new(), 0u64);
    loop {
        let (good, page, _, err) = on_db(
            &url,
            &provider,
            &["activity", "--after", &after.to_string(), "--limit", "2"],
            None,
        );
        assert!(good, "{err}");
        for event in page["data"].as_array().unwrap() {
            assert_eq!(event["actor"], "ops@example.com", "{event}");
            actions.push(string(&event["action"]));
        }
        after = page["next"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    for action in [
        "external_key.create",
        "external_key.validate",
        "compartment.create",
        "rewrap.start",
        "rewrap.complete",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
}

/// A password in the URL is never printed, even when the server cannot be reached.
#[test]
fn a_password_in_the_state_url_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let provider = dir.path().join("provider.key");
    let url = "postgres://cmek:sekret-pw-123@127.0.0.1:1/cmek?connect_timeout=2";
    let (good, _, stdout, err) = on_db(url, &provider, &["compartments", "create"], None);
    assert!(!good);
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(!err.contains("sekret-pw-123"), "{err}");
    assert!(!String::from_utf8_lossy(&stdout).contains("sekret-pw-123"));
}
