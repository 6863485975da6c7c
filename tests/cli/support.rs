//! Running `cmek` as a process.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `cmek` with `args`, feeding it `stdin`.
pub(crate) fn cmek(args: &[&str], stdin: Option<&[u8]>) -> Output {
    cmek_in(None, args, stdin)
}

/// Runs `cmek` in the working directory `dir` (the test's own when `None`).
pub(crate) fn cmek_in(dir: Option<&Path>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cmek"));
    command
        .env_remove("CMEK_STATE")
        .env_remove("CMEK_PROVIDER_KEY");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    run(command.args(args), stdin)
}

/// Runs `command` with piped stdio, feeding it `stdin`.
pub(crate) fn run(command: &mut Command, stdin: Option<&[u8]>) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// The stdout of a run that must have succeeded.
pub(crate) fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The stderr of a run that must have failed.
pub(crate) fn fails(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "succeeded: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `cmek` with `CMEK_STATE` set, parsing stdout as JSON when it succeeds.
pub(crate) fn admin(
    state: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> (bool, serde_json::Value, String) {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_cmek"))
            .args(args)
            .env("CMEK_STATE", state)
            .env("USER", "ops@example.com"),
        stdin,
    );
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn string(v: &serde_json::Value) -> String {
    v.as_str().unwrap().to_owned()
}

/// A configuration of the local key file `key_file` in `state`, validated; its id.
pub(crate) fn validated_key(state: &Path, key_file: &Path) -> String {
    let (good, key, err) = admin(
        state,
        &[
            "keys",
            "create",
            "--local-key-file",
            s(key_file),
            "--display-name",
            "k",
        ],
        None,
    );
    assert!(good, "{err}");
    let id = string(&key["id"]);
    let (good, _, err) = admin(state, &["keys", "validate", &id], None);
    assert!(good, "{err}");
    id
}
