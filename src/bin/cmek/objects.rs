//! `cmek objects`: an object store (local files, S3, GCS, Azure Blob) under each tenant's key,
//! through `EncryptedStore`: put, get (ranges too), list, and the bulk migration.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use cmek::objects::{Compartments, EncryptedStore, Migration, MigrationProgress, PathBinding};
use cmek::{CompartmentId, Error, ErrorKind};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, ObjectStoreScheme};

use crate::streaming;

/// `cmek objects` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ObjectsCommand {
    /// Encrypts a file or stdin into an object (in constant memory, in parts above the part
    /// size).
    Put {
        #[command(flatten)]
        store: StoreArgs,
        /// The object's path in the store.
        path: String,
        /// Input file (stdin if absent or `-`).
        #[arg(long, short)]
        input: Option<PathBuf>,
    },
    /// Decrypts an object, or a range of it, to a file (written only once authenticated) or
    /// stdout.
    Get {
        #[command(flatten)]
        store: StoreArgs,
        /// The object's path in the store.
        path: String,
        /// Output file (stdout if absent or `-`); an existing file is kept unless --force.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
        /// Only these plaintext bytes: `START-END` (inclusive), `START-` or `-N` (the last
        /// N); fetches only the chunks they need.
        #[arg(long, allow_hyphen_values = true)]
        range: Option<String>,
    },
    /// Lists objects with their plaintext sizes, one `SIZE PATH` line each.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        /// Only objects under this prefix.
        prefix: Option<String>,
    },
    /// Encrypts the plaintext objects under a prefix (adopting customer-managed keys for
    /// existing data) and re-encrypts objects in other cmek forms, batch by batch; resumable
    /// from --checkpoint after a crash, and safe to run again.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
        /// Only objects under this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Progress file: written after every batch, resumed from, removed at the end.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Objects per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Objects migrated at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// The AAD objects in other cmek forms were encrypted with: `none` (empty, as
        /// `cmek encrypt` without --aad) or `path` (their path).
        #[arg(long, default_value = "none", value_parser = ["none", "path"])]
        source_aad: String,
    },
}

/// Which store, and whose keys.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The store: `file:///dir`, `s3://bucket`, `gs://bucket`, `az://container` (a path after
    /// the bucket is a prefix). Credentials and settings come from the environment, as
    /// `object_store`'s builders read them (`AWS_…`, `GOOGLE_…`, `AZURE_…`).
    #[arg(long)]
    pub(crate) url: String,
    /// A setting for the store's builder, `KEY=VALUE` (`object_store`'s config keys, such as
    /// `aws_endpoint`); repeatable.
    #[arg(long = "store-option", value_name = "KEY=VALUE")]
    pub(crate) options: Vec<String>,
    /// The local key file.
    #[arg(long, required_unless_present = "state", conflicts_with = "state")]
    pub(crate) key_file: Option<PathBuf>,
    /// Use the control plane's state instead (each compartment's attached key): a directory
    /// or a `postgres://` URL.
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// The provider-managed key file, with a PostgreSQL --state.
    #[arg(long, env = "CMEK_PROVIDER_KEY")]
    pub(crate) provider_key: Option<PathBuf>,
    /// The key configuration id recorded in envelopes (with --key-file).
    #[arg(long, default_value = "local")]
    pub(crate) key_config: String,
    /// Directory of DEK records (with --key-file; objects name their DEK).
    #[arg(long, required_unless_present = "state")]
    pub(crate) dek_store: Option<PathBuf>,
    /// Every object belongs to this compartment (default: the path's first segment names it).
    #[arg(long)]
    pub(crate) compartment: Option<String>,
    /// Bytes per multipart part (5 MiB, S3's minimum, unless set).
    #[arg(long, default_value_t = 5 << 20)]
    pub(crate) part_size: usize,
}

pub(crate) async fn run(command: ObjectsCommand) -> cmek::Result<()> {
    match command {
        ObjectsCommand::Put { store, path, input } => {
            let store = open(&store).await?;
            put(&store, &Path::from(path), input.as_deref()).await
        }
        ObjectsCommand::Get {
            store,
            path,
            output,
            force,
            range,
        } => {
            crate::refuse_existing(output.as_deref(), force)?;
            let store = open(&store).await?;
            let range = range.as_deref().map(streaming::parse_range).transpose()?;
            get(&store, &Path::from(path), range, output.as_deref(), force).await
        }
        ObjectsCommand::Ls { store, prefix } => {
            let store = open(&store).await?;
            let prefix = prefix.map(Path::from);
            let mut listed = store.list(prefix.as_ref());
            let mut out = String::new();
            while let Some(item) = listed.next().await {
                match item {
                    Ok(meta) => out.push_str(&format!("{} {}\n", meta.size, meta.location)),
                    // An object whose length no envelope has (not encrypted yet): say so, go on.
                    Err(e)
                        if cmek::objects::cmek_error(&e)
                            .is_some_and(|e| e.kind() == ErrorKind::InvalidInput) =>
                    {
                        out.push_str(&format!("- {}\n", from_store(e).message()));
                    }
                    Err(e) => return Err(from_store(e)),
                }
            }
            crate::write_output(None, false, out.as_bytes())
        }
        ObjectsCommand::Migrate {
            store: store_args,
            prefix,
            checkpoint,
            batch,
            concurrency,
            source_aad,
        } => {
            let store = open(&store_args).await?;
            let mut job = Migration::new()
                .with_batch_size(batch)
                .with_concurrency(concurrency)
                .with_source_binding(if source_aad == "path" {
                    PathBinding::Path
                } else {
                    PathBinding::None
                });
            if let Some(file) = checkpoint {
                // The checkpoint names the exact store: URL and options.
                let mut name = store_args_name(&store_args);
                name.push_str(&format!(" compartment={:?}", store_args.compartment));
                job = job.with_checkpoint(file).with_job_name(name);
            }
            migrate(&store, &job, prefix.map(Path::from)).await
        }
    }
}

type Store = EncryptedStore<Arc<dyn ObjectStore>>;

/// The store's URL and a digest of its options (which may hold credentials), as a
/// checkpoint names its job.
fn store_args_name(args: &StoreArgs) -> String {
    use sha2::Digest as _;
    let mut options = args.options.clone();
    options.sort_unstable();
    let digest = sha2::Sha256::digest(options.join("\n").as_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{} options:{short}", args.url)
}

async fn open(args: &StoreArgs) -> cmek::Result<Store> {
    let client = crate::open_client(
        args.key_file.as_deref(),
        args.state.as_deref(),
        args.provider_key.as_deref(),
        &args.key_config,
        args.dek_store.as_deref(),
    )
    .await?;
    let compartments = match &args.compartment {
        Some(id) => Compartments::fixed(CompartmentId::new(id)?),
        None => Compartments::first_segment(),
    };
    Ok(
        EncryptedStore::new(inner_store(args)?, client, compartments)?
            .with_part_size(args.part_size),
    )
}

/// The store `--url` names, with `--store-option`s, under the URL's path as a prefix.
#[cfg_attr(
    not(any(
        feature = "object-store-aws",
        feature = "object-store-gcp",
        feature = "object-store-azure"
    )),
    allow(unreachable_code, unused_variables)
)]
fn inner_store(args: &StoreArgs) -> cmek::Result<Arc<dyn ObjectStore>> {
    let bad = |what: String| Error::new(ErrorKind::InvalidInput, what);
    let url = url::Url::parse(&args.url).map_err(|e| bad(format!("--url {}: {e}", args.url)))?;
    let (scheme, prefix) =
        ObjectStoreScheme::parse(&url).map_err(|e| bad(format!("--url {}: {e}", args.url)))?;
    let options = args
        .options
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.to_owned()))
                .ok_or_else(|| bad(format!("--store-option {o}: expected KEY=VALUE")))
        })
        .collect::<cmek::Result<Vec<_>>>()?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => {
            let dir = url
                .to_file_path()
                .map_err(|()| bad(format!("--url {}: not a local path", args.url)))?;
            std::fs::create_dir_all(&dir)?;
            let local =
                object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(from_store)?;
            return Ok(Arc::new(local));
        }
        #[cfg(feature = "object-store-aws")]
        ObjectStoreScheme::AmazonS3 => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in &options {
                builder = builder.with_config(key.parse().map_err(from_store)?, value);
            }
            Arc::new(builder.build().map_err(from_store)?)
        }
        #[cfg(feature = "object-store-gcp")]
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut builder =
                object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (key, value) in &options {
                builder = builder.with_config(key.parse().map_err(from_store)?, value);
            }
            Arc::new(builder.build().map_err(from_store)?)
        }
        #[cfg(feature = "object-store-azure")]
        ObjectStoreScheme::MicrosoftAzure => {
            let mut builder =
                object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (key, value) in &options {
                builder = builder.with_config(key.parse().map_err(from_store)?, value);
            }
            Arc::new(builder.build().map_err(from_store)?)
        }
        other => {
            let _ = options;
            return Err(bad(format!(
                "--url {}: this build has no client for {other:?} (features object-store-aws, \
                 -gcp, -azure)",
                args.url
            )));
        }
    };
    Ok(if prefix.as_ref().is_empty() {
        store
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    })
}

fn from_store(e: object_store::Error) -> Error {
    if let Some(inner) = cmek::objects::cmek_error(&e) {
        return inner.clone();
    }
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        object_store::Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
        object_store::Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
        object_store::Error::Precondition { .. } => ErrorKind::Validation,
        object_store::Error::UnknownConfigurationKey { .. } => ErrorKind::InvalidInput,
        _ => ErrorKind::Transient,
    };
    Error::new(kind, e.to_string())
}

async fn put(store: &Store, path: &Path, input: Option<&FsPath>) -> cmek::Result<()> {
    let (mut input, total) = streaming::open_input(input)?;
    let part = store.part_size();
    let first = streaming::read_up_to(&mut input, part.saturating_add(1))?;
    if first.len() <= part {
        store.put(path, first.into()).await.map_err(from_store)?;
        return Ok(());
    }
    let progress = streaming::progress(total, "encrypting");
    let mut upload = store.put_multipart(path).await.map_err(from_store)?;
    let mut piece = first;
    let sent = async {
        loop {
            progress.inc(piece.len() as u64);
            upload
                .put_part(std::mem::take(&mut piece).into())
                .await
                .map_err(from_store)?;
            piece = tokio::task::block_in_place(|| streaming::read_up_to(&mut input, part))?;
            if piece.is_empty() {
                break;
            }
        }
        upload.complete().await.map_err(from_store)
    }
    .await;
    progress.finish_and_clear();
    if let Err(e) = sent {
        let _ = upload.abort().await;
        return Err(e);
    }
    Ok(())
}

async fn get(
    store: &Store,
    path: &Path,
    range: Option<cmek::stream::ByteRange>,
    output: Option<&FsPath>,
    force: bool,
) -> cmek::Result<()> {
    let range = range
        .map(|r| match r {
            cmek::stream::ByteRange::Bounded(r) => Ok(GetRange::Bounded(r)),
            cmek::stream::ByteRange::From(start) => Ok(GetRange::Offset(start)),
            cmek::stream::ByteRange::Suffix(n) => Ok(GetRange::Suffix(n)),
            other => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("--range: {other:?} is not supported for objects"),
            )),
        })
        .transpose()?;
    let options = GetOptions {
        range,
        ..GetOptions::default()
    };
    let result = store.get_opts(path, options).await.map_err(from_store)?;
    let len = result.range.end - result.range.start;
    let progress = streaming::progress(Some(len), "decrypting");
    let mut output = streaming::Output::create(output, force)?;
    let mut stream = result.into_stream();
    {
        let mut writer = output.writer();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(from_store)?;
            tokio::task::block_in_place(|| std::io::Write::write_all(&mut writer, &bytes))?;
            progress.inc(bytes.len() as u64);
        }
        std::io::Write::flush(&mut writer)?;
    }
    progress.finish_and_clear();
    output.commit()
}

async fn migrate(store: &Store, job: &Migration, prefix: Option<Path>) -> cmek::Result<()> {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("migrating {bar:40} {pos}/{len} objects {per_sec} {eta} {msg}")
    {
        bar.set_style(style);
    }
    let report = job
        .run(store, prefix.as_ref(), |p: &MigrationProgress| {
            bar.set_length(p.total);
            bar.set_position(p.counts.scanned);
            bar.set_message(format!(
                "{} encrypted, {} re-encrypted, {} unchanged, {} failed",
                p.counts.encrypted, p.counts.reencrypted, p.counts.unchanged, p.counts.failed
            ));
        })
        .await?;
    bar.finish_and_clear();
    let counts = report.counts;
    let json = serde_json::json!({
        "scanned": counts.scanned,
        "encrypted": counts.encrypted,
        "reencrypted": counts.reencrypted,
        "unchanged": counts.unchanged,
        "failed": counts.failed,
        "bytes": counts.bytes,
        "failures": report.failures.iter().map(|(path, why)| serde_json::json!({"path": path.as_ref(), "error": why})).collect::<Vec<_>>(),
    });
    crate::write_output(None, false, format!("{json:#}\n").as_bytes())?;
    if counts.failed > 0 {
        return Err(Error::new(
            ErrorKind::Validation,
            format!(
                "{} objects could not be migrated (listed above)",
                counts.failed
            ),
        ));
    }
    Ok(())
}
