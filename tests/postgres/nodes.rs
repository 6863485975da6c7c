//! Three node **processes** on one database. Each is this test binary started again as
//! [`node_process`]: a control plane over PostgreSQL with a change feed, taking commands on
//! stdin and answering on stdout. The customer's KMS is a local key file every process opens;
//! the customer disables the key by creating `<key file>.disabled` next to it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cmek::control::{
    Actor, BackendFactory, ControlPlane, CreateExternalKey, ExternalKeyId, ProviderConfig,
};
use cmek::postgres::{FeedOptions, Postgres};
use cmek::{CompartmentId, Error, ErrorKind, KmsBackend, LocalKms, WrapContext};

use super::{fresh_database, server};

/// How often the polling-only node reads the changes: its documented bound.
const POLL: Duration = Duration::from_millis(300);

/// A local key file that refuses every call once `<file>.disabled` exists: a customer's key,
/// disabled from outside every node.
#[derive(Debug)]
struct DisableableKey {
    inner: LocalKms,
    marker: PathBuf,
}

impl std::fmt::Display for DisableableKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (disableable)", self.inner)
    }
}

impl DisableableKey {
    fn check(&self) -> cmek::Result<()> {
        if self.marker.exists() {
            Err(Error::new(ErrorKind::KeyRevoked, "the key is disabled"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl KmsBackend for DisableableKey {
    async fn wrap(
        &self,
        dek: &cmek::DataKey,
        context: &WrapContext<'_>,
    ) -> cmek::Result<cmek::WrappedKey> {
        self.check()?;
        self.inner.wrap(dek, context).await
    }

    async fn unwrap(
        &self,
        wrapped: &cmek::WrappedKey,
        context: &WrapContext<'_>,
    ) -> cmek::Result<cmek::DataKey> {
        self.check()?;
        self.inner.unwrap(wrapped, context).await
    }

    fn provider(&self) -> cmek::Provider {
        self.inner.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        self.inner.wrapping_key_id()
    }

    async fn describe(&self) -> cmek::Result<cmek::KeyDescription> {
        self.check()?;
        self.inner.describe().await
    }
}

#[derive(Debug)]
struct DisableableKeys;

#[async_trait]
impl BackendFactory for DisableableKeys {
    async fn backend(&self, config: &ProviderConfig) -> cmek::Result<Arc<dyn KmsBackend>> {
        let ProviderConfig::Local { key_file } = config else {
            return Err(Error::new(ErrorKind::Configuration, "local keys only"));
        };
        Ok(Arc::new(DisableableKey {
            inner: LocalKms::open(key_file)?,
            marker: PathBuf::from(format!("{key_file}.disabled")),
        }))
    }
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// A node process, as the parent sees it.
struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeProcess {
    /// Starts a node on `url`; `listen: false` makes it rely on polling alone.
    fn start(url: &str, provider_key: &Path, listen: bool) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                "nodes::node_process",
                "--include-ignored",
                "--nocapture",
            ])
            .env("CMEK_NODE_URL", url)
            .env("CMEK_NODE_PROVIDER_KEY", provider_key)
            .env("CMEK_NODE_LISTEN", if listen { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a node process");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut node = Self {
            child,
            stdin,
            stdout,
        };
        node.reply().expect("the node starts");
        node
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to the node");
    }

    /// The next answer: `Ok(text)` or `Err((kind, message))`.
    fn reply(&mut self) -> Result<String, (String, String)> {
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("read from the node");
            assert!(n > 0, "the node process ended");
            let line = line.trim_end();
            if let Some(ok) = line.strip_prefix("NODE ok") {
                return Ok(ok.trim().to_owned());
            }
            if let Some(err) = line.strip_prefix("NODE err ") {
                let (kind, message) = err.split_once(' ').unwrap_or((err, ""));
                return Err((kind.to_owned(), message.to_owned()));
            }
        }
    }

    fn ask(&mut self, command: &str) -> Result<String, (String, String)> {
        self.send(command);
        self.reply()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// Compact envelopes written by one process are read by the others; 3 × 20 racing attaches
/// of different keys to one compartment have exactly one winner; a revocation one process
/// sees at the KMS makes the others refuse within the documented bound (with notifications,
/// and by polling alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_processes_share_one_truth() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let provider_key = dir.path().join("provider.key");
    LocalKms::create(&provider_key, "local:provider").unwrap();
    let db = Postgres::connect(&url).await.unwrap();
    let admin_plane = ControlPlane::builder()
        .postgres(&db)
        .provider_managed(Arc::new(LocalKms::open(&provider_key).unwrap()))
        .factory(Arc::new(DisableableKeys))
        .build()
        .unwrap();
    let admin = Actor::new("admin@example.com");
    let mut keys = Vec::new();
    for i in 0..60 {
        let key_file = dir.path().join(format!("customer-{i}.key"));
        LocalKms::create(&key_file, format!("local:customer-{i}")).unwrap();
        let config = ProviderConfig::Local {
            key_file: key_file.display().to_string(),
        };
        let key = admin_plane
            .create_external_key(&admin, CreateExternalKey::new(format!("key {i}"), config))
            .await
            .unwrap();
        admin_plane
            .validate_external_key(&admin, &key.id)
            .await
            .unwrap();
        keys.push((key.id, key_file));
    }
    let mut a = NodeProcess::start(&url, &provider_key, true);
    let mut b = NodeProcess::start(&url, &provider_key, true);
    let mut c = NodeProcess::start(&url, &provider_key, false);

    // 3 × 20 attaches of different keys to one compartment, all at one moment.
    let contested = admin_plane
        .create_compartment(&admin, None)
        .await
        .unwrap()
        .compartment_id;
    let at = unix_ns() + 300_000_000;
    for (n, node) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        let ids: Vec<_> = keys[n * 20..(n + 1) * 20]
            .iter()
            .map(|(id, _)| id.to_string())
            .collect();
        node.send(&format!("attach {at} {contested} {}", ids.join(" ")));
    }
    let mut winners = Vec::new();
    for node in [&mut a, &mut b, &mut c] {
        let answer = node.reply().expect("attach answers");
        winners.extend(answer.split_whitespace().map(str::to_owned));
    }
    assert_eq!(winners.len(), 1, "attaches that won: {winners:?}");
    let stored = admin_plane.compartment(&contested).await.unwrap();
    assert_eq!(
        stored.external_key_id.map(|k| k.to_string()),
        Some(winners[0].clone())
    );

    // Compact envelopes written by one process, read by the others.
    let (key, key_file) = &keys[0];
    let compartment = admin_plane
        .create_compartment(&admin, Some(key))
        .await
        .unwrap()
        .compartment_id;
    let from_a = dir.path().join("from-a.cmek");
    let from_b = dir.path().join("from-b.cmek");
    a.ask(&format!(
        "encrypt {compartment} {} secret-a",
        from_a.display()
    ))
    .unwrap();
    b.ask(&format!(
        "encrypt {compartment} {} secret-b",
        from_b.display()
    ))
    .unwrap();
    for node in [&mut a, &mut b, &mut c] {
        for (file, text) in [(&from_a, "secret-a"), (&from_b, "secret-b")] {
            let answer = node.ask(&format!("decrypt {compartment} {}", file.display()));
            assert_eq!(answer, Ok(text.to_owned()));
        }
    }
    let info = cmek::format::inspect(&std::fs::read(&from_a).unwrap()).unwrap();
    assert_eq!(
        info.key_config_id, None,
        "a compact envelope names no key: its DEK record is in the database"
    );

    // The customer disables the key. b and c decrypt from their caches until told.
    for node in [&mut b, &mut c] {
        node.send(&format!("watch {compartment} {}", from_a.display()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(format!("{}.disabled", key_file.display()), b"").unwrap();
    let seen_at: u128 = a
        .ask(&format!("detect {compartment} {}", from_a.display()))
        .expect("a sees the revocation")
        .parse()
        .unwrap();
    let mut delays = Vec::new();
    for node in [&mut b, &mut c] {
        let refused_at: u128 = node.reply().expect("refused").parse().unwrap();
        delays.push(Duration::from_nanos(
            u64::try_from(refused_at.saturating_sub(seen_at)).unwrap(),
        ));
    }
    eprintln!(
        "revocation seen by a → refused by b (NOTIFY) after {:?}, by c (polling every {POLL:?}) after {:?}",
        delays[0], delays[1]
    );
    assert!(
        delays[0] < Duration::from_secs(1),
        "with notifications: {:?}",
        delays[0]
    );
    assert!(
        delays[1] < POLL + Duration::from_millis(700),
        "polling alone: {:?} (bound: the poll interval and a query)",
        delays[1]
    );
}

/// A node process (started by the tests above with `CMEK_NODE_URL` set; run alone it does
/// nothing). Commands, one per line; answers `NODE ok …` or `NODE err <kind> <message>`:
/// - `attach <unix ns> <compartment> <key>…`: at that moment, attaches every key at once;
///   answers the keys that won;
/// - `encrypt <compartment> <file> <text>`: writes a compact envelope of `text` to `file`;
/// - `decrypt <compartment> <file>`: answers the plaintext;
/// - `watch <compartment> <file>`: decrypts every millisecond until refused; answers when;
/// - `detect <compartment> <file>`: drops the compartment's cached DEKs and decrypts, which
///   must be refused; answers when;
/// - `quit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a node process the three-process test starts"]
async fn node_process() {
    let Ok(url) = std::env::var("CMEK_NODE_URL") else {
        return;
    };
    let provider_key = std::env::var("CMEK_NODE_PROVIDER_KEY").expect("provider key");
    let listen = std::env::var("CMEK_NODE_LISTEN").as_deref() == Ok("1");
    let db = Postgres::connect(&url).await.expect("connect");
    let plane = ControlPlane::builder()
        .postgres(&db)
        .provider_managed(Arc::new(
            LocalKms::open(&provider_key).expect("provider key"),
        ))
        .factory(Arc::new(DisableableKeys))
        .build()
        .expect("plane");
    let options = FeedOptions::default().poll_every(POLL).listen(listen);
    let _feed = db
        .follow(plane.client().clone(), options)
        .await
        .expect("follow");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    println!("NODE ok started");
    while let Some(line) = rx.recv().await {
        if line == "quit" {
            break;
        }
        match command(&plane, &line).await {
            Ok(answer) => println!("NODE ok {answer}"),
            Err(e) => println!(
                "NODE err {} {}",
                e.kind().as_str(),
                e.message().replace('\n', " ")
            ),
        }
    }
}

async fn command(plane: &ControlPlane, line: &str) -> cmek::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let client = plane.client();
    let actor = Actor::new("node");
    match words.as_slice() {
        ["attach", at, compartment, keys @ ..] => {
            let compartment = CompartmentId::new(*compartment)?;
            let at: u128 = at.parse().expect("a time");
            tokio::time::sleep(Duration::from_nanos(
                u64::try_from(at.saturating_sub(unix_ns())).unwrap_or(0),
            ))
            .await;
            let attaches = keys.iter().map(|key| {
                let (compartment, actor) = (&compartment, &actor);
                async move {
                    let key = ExternalKeyId::new(*key)?;
                    match plane.attach_external_key(actor, compartment, &key).await {
                        Ok(_) => Ok(Some(key.to_string())),
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            });
            let won: Vec<String> = futures_util::future::try_join_all(attaches)
                .await?
                .into_iter()
                .flatten()
                .collect();
            Ok(won.join(" "))
        }
        ["encrypt", compartment, file, text] => {
            let compartment = CompartmentId::new(*compartment)?;
            let envelope = client
                .encrypt_compact(&compartment, text.as_bytes(), b"")
                .await?;
            std::fs::write(file, envelope)?;
            Ok(String::new())
        }
        ["decrypt", compartment, file] => {
            let compartment = CompartmentId::new(*compartment)?;
            let plaintext = client
                .decrypt(&compartment, &std::fs::read(file)?, b"")
                .await?;
            Ok(String::from_utf8_lossy(&plaintext).into_owned())
        }
        ["watch", compartment, file] => {
            let compartment = CompartmentId::new(*compartment)?;
            let envelope = std::fs::read(file)?;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Err(e) = client.decrypt(&compartment, &envelope, b"").await {
                    assert_eq!(e.kind(), ErrorKind::KeyRevoked, "{e}");
                    return Ok(unix_ns().to_string());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(Error::new(
                ErrorKind::DeadlineExceeded,
                "still decrypting from the cache after 10 s",
            ))
        }
        ["detect", compartment, file] => {
            let compartment = CompartmentId::new(*compartment)?;
            client.purge(&compartment);
            match client
                .decrypt(&compartment, &std::fs::read(file)?, b"")
                .await
            {
                Err(e) if e.kind() == ErrorKind::KeyRevoked => Ok(unix_ns().to_string()),
                Err(e) => Err(e),
                Ok(_) => Err(Error::new(
                    ErrorKind::Integrity,
                    "decrypted under a disabled key",
                )),
            }
        }
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("unknown command {line:?}"),
        )),
    }
}
