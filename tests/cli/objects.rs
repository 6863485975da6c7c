//! `cmek objects`: put, get, ranges and listing over a local-file store, and the bulk
//! migration killed with SIGKILL at random points, resumed, and checked for every byte.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};

use super::support::{cmek, fails, ok, s};

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.json");
        ok(cmek(&["keygen", "-o", s(&key)], None));
        std::fs::create_dir(dir.path().join("deks")).unwrap();
        std::fs::create_dir(dir.path().join("store")).unwrap();
        Self { dir }
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// The arguments naming the store and the keys.
    fn args(&self) -> Vec<String> {
        let p = self.dir.path();
        vec![
            "--url".into(),
            format!("file://{}", self.store().display()),
            "--key-file".into(),
            s(&p.join("key.json")).into(),
            "--dek-store".into(),
            s(&p.join("deks")).into(),
            "--part-size".into(),
            (128 * 1024).to_string(),
        ]
    }

    fn objects(&self, verb: &str, rest: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut args = vec!["objects", verb];
        let common = self.args();
        args.extend(common.iter().map(String::as_str));
        args.extend(rest);
        cmek(&args, stdin)
    }
}

fn random_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

#[test]
fn put_get_ranges_and_ls() {
    let setup = Setup::new();
    let data = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(1), 300_000);
    ok(setup.objects("put", &["tenant-a/data.bin"], Some(&data)));
    assert_eq!(ok(setup.objects("get", &["tenant-a/data.bin"], None)), data);
    let part = ok(setup.objects("get", &["tenant-a/data.bin", "--range", "1000-1999"], None));
    assert_eq!(part, &data[1000..2000]);
    let tail = ok(setup.objects("get", &["tenant-a/data.bin", "--range", "-7"], None));
    assert_eq!(tail, &data[data.len() - 7..]);
    let listing = String::from_utf8(ok(setup.objects("ls", &[], None))).unwrap();
    assert_eq!(listing, "300000 tenant-a/data.bin\n");
    // The stored bytes are an envelope, bound to the path: moved, it does not decrypt.
    let stored = std::fs::read(setup.store().join("tenant-a/data.bin")).unwrap();
    assert_ne!(&stored[76..176], &data[..100]);
    std::fs::copy(
        setup.store().join("tenant-a/data.bin"),
        setup.store().join("tenant-a/moved.bin"),
    )
    .unwrap();
    let err = fails(setup.objects("get", &["tenant-a/moved.bin"], None));
    assert!(err.contains("decryption failed"), "{err}");
    let err = fails(setup.objects("get", &["tenant-a/missing.bin"], None));
    assert!(
        err.contains("not_found") || err.contains("not found"),
        "{err}"
    );
}

/// Migrates a store, killing the job with SIGKILL at random points, until it has been killed
/// mid-run at least 20 times (over as many fresh stores as that takes), letting each job
/// finish and checking that every object decrypts to what it was: nothing lost, nothing
/// encrypted twice.
#[test]
fn migration_survives_kill_9_at_random_points() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut kills = 0;
    for round in 0..10 {
        kills += migrate_with_kills(&mut rng);
        eprintln!("round {round}: {kills} kills so far");
        if kills >= 20 {
            return;
        }
    }
    panic!("only {kills} kills landed while the job ran");
}

/// One store, migrated by runs killed at random points until one finishes by itself;
/// returns how many runs were killed while running.
fn migrate_with_kills(rng: &mut impl Rng) -> usize {
    let setup = Setup::new();
    let mut expected = BTreeMap::new();
    for i in 0..48 {
        let tenant = ["tenant-a", "tenant-b", "tenant-c"][i % 3];
        let len = match i % 4 {
            0 => 0,
            1 => rng.random_range(1..20_000),
            2 => rng.random_range(100_000..300_000),
            _ => rng.random_range(300_000..700_000),
        };
        let path = format!("{tenant}/data/{i:03}.bin");
        let mut bytes = random_bytes(rng, len);
        // Plaintext whose first byte is cmek's magic is reported, not encrypted (one in 256
        // random objects would be): keep this test's plaintext unambiguous.
        if bytes.first() == Some(&cmek::format::MAGIC) {
            bytes[0] ^= 1;
        }
        let file = setup.store().join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &bytes).unwrap();
        expected.insert(path, bytes);
    }
    // Objects in other cmek forms (self-contained and streamed envelopes from `cmek
    // encrypt`) and objects of the store already.
    let key = setup.dir.path().join("key.json");
    for (i, stream) in [(0, false), (1, true)] {
        let path = format!("tenant-a/envelopes/{i}.cmek");
        let bytes = random_bytes(rng, 50_000);
        let out = setup.store().join(&path);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let mut args = vec![
            "encrypt",
            "--key-file",
            s(&key),
            "--compartment",
            "tenant-a",
        ];
        args.extend(["-o", s(&out)]);
        if stream {
            args.push("--stream");
        }
        ok(cmek(&args, Some(&bytes)));
        expected.insert(path, bytes);
    }
    for i in 0..2 {
        let path = format!("tenant-b/already/{i}.bin");
        let bytes = random_bytes(rng, 40_000);
        ok(setup.objects("put", &[&path], Some(&bytes)));
        expected.insert(path, bytes);
    }

    let checkpoint = setup.dir.path().join("migrate.checkpoint");
    let migrate = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cmek"));
        command
            .args(["objects", "migrate"])
            .args(setup.args())
            .args([
                "--checkpoint",
                s(&checkpoint),
                "--batch",
                "3",
                "--concurrency",
                "2",
            ])
            .stdin(Stdio::null());
        command
    };
    let mut kills = 0;
    for _ in 0..100 {
        let mut child = migrate()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(10..100)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        } else if child.wait().unwrap().success() {
            break;
        }
    }
    // To the end, then once more: the second run finds nothing to do.
    // The report (stdout) names what failed and why.
    let last = migrate().output().unwrap();
    assert!(
        last.status.success(),
        "the last run failed: {}\n{}",
        String::from_utf8_lossy(&last.stdout),
        String::from_utf8_lossy(&last.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    assert_eq!(report["failed"], 0, "{report}");
    assert!(!checkpoint.exists(), "the checkpoint is removed at the end");
    let again: serde_json::Value =
        serde_json::from_slice(&ok(migrate().output().unwrap())).unwrap();
    assert_eq!(again["unchanged"], expected.len() as u64, "{again}");
    assert_eq!(again["encrypted"], 0, "{again}");
    assert_eq!(again["reencrypted"], 0, "{again}");

    let listing = String::from_utf8(ok(setup.objects("ls", &[], None))).unwrap();
    let mut listed: Vec<&str> = listing
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    listed.sort_unstable();
    let paths: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(listed, paths, "no object lost or added");
    for (path, bytes) in &expected {
        let stored = std::fs::read(setup.store().join(path)).unwrap();
        assert_eq!(stored[2], 0x05, "{path} is a compact streamed envelope");
        assert_eq!(
            &ok(setup.objects("get", &[path], None)),
            bytes,
            "{path} reads back as it was"
        );
    }
    kills
}
