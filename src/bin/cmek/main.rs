//! `cmek`: envelope encryption from the command line, over the local key-file backend.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod cli;
mod demo;
mod objects;
mod state;
mod streaming;

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cmek::stream::StreamForm;
use cmek::{Client, CompartmentId, FileDekStore, KeyConfigId, LocalKms};

use cli::{Cli, Command, CryptArgs};
use cmek::{Error, ErrorKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> cmek::Result<ExitCode> {
    match cli.command {
        Command::Keys(command) => return admin::keys(command).await,
        Command::Compartments(command) => return admin::compartments(command).await,
        Command::Rewrap {
            state,
            external_key_id,
            batch,
        } => return admin::rewrap(state, external_key_id, batch).await,
        Command::Activity {
            state,
            after,
            limit,
        } => return admin::activity(state, after, limit).await,
        Command::Keygen { out, key_id } => {
            let key_id = match key_id {
                Some(id) => id,
                None => LocalKms::unique_key_id()?,
            };
            let kms = LocalKms::create(&out, key_id)?;
            eprintln!(
                "created {} (key id {}, version {}); keep it secret",
                out.display(),
                kms.key_id(),
                kms.primary_version()
            );
            Ok(())
        }
        Command::RotateKey { key_file } => {
            let kms = LocalKms::open(&key_file)?;
            let version = kms.rotate()?;
            eprintln!("{}: version {version} is now primary", key_file.display());
            Ok(())
        }
        Command::Encrypt(cli::EncryptArgs {
            common: args,
            compact,
            stream,
        }) => {
            if compact && args.state.is_none() && args.dek_store.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "--compact needs --dek-store <DIR> to keep the DEK records",
                ));
            }
            refuse_existing(args.output.as_deref(), args.force)?;
            let client = client(&args).await?;
            let compartment = CompartmentId::new(&args.compartment)?;
            let aad = args.aad.as_deref().unwrap_or_default().as_bytes();
            let (mut input, total) = streaming::open_input(args.input.as_deref())?;
            let first = streaming::read_up_to(&mut input, streaming::STREAM_THRESHOLD)?;
            if stream || first.len() == streaming::STREAM_THRESHOLD {
                let form = if compact {
                    StreamForm::Compact
                } else {
                    StreamForm::SelfContained
                };
                let output = streaming::Output::create(args.output.as_deref(), args.force)?;
                return streaming::encrypt(
                    &client,
                    &compartment,
                    aad,
                    form,
                    &first,
                    &mut input,
                    total,
                    output,
                )
                .await
                .map(|()| ExitCode::SUCCESS);
            }
            let envelope = if compact {
                client.encrypt_compact(&compartment, &first, aad).await?
            } else {
                client.encrypt(&compartment, &first, aad).await?
            };
            streaming::Output::create(args.output.as_deref(), args.force)?.write_all(&envelope)
        }
        Command::Decrypt(cli::DecryptArgs {
            common: args,
            range,
        }) => {
            refuse_existing(args.output.as_deref(), args.force)?;
            let client = client(&args).await?;
            let compartment = CompartmentId::new(&args.compartment)?;
            let aad = args.aad.as_deref().unwrap_or_default().as_bytes();
            let (mut input, total) = streaming::open_input(args.input.as_deref())?;
            let first = streaming::read_up_to(&mut input, cmek::format::PREAMBLE_LEN)?;
            let form = first
                .get(2)
                .filter(|_| {
                    first.len() == cmek::format::PREAMBLE_LEN && first[0] == cmek::format::MAGIC
                })
                .copied();
            let compact = matches!(form, Some(0x02 | 0x05));
            if compact && args.state.is_none() && args.dek_store.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "this is a compact envelope: give --dek-store <DIR> (the DEK records it was \
                     encrypted with) or --state",
                ));
            }
            let output = streaming::Output::create(args.output.as_deref(), args.force)?;
            if let Some(range) = range {
                let range = streaming::parse_range(&range)?;
                let path = args.input.as_deref().filter(|p| *p != Path::new("-"));
                let (Some(path), true) = (path, matches!(form, Some(0x04 | 0x05))) else {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        "--range reads a streamed envelope file, not stdin (encrypt it with --stream)",
                    ));
                };
                streaming::decrypt_range(&client, &compartment, aad, path, range, output).await?;
                return Ok(ExitCode::SUCCESS);
            }
            if matches!(form, Some(0x04 | 0x05)) {
                streaming::decrypt(&client, &compartment, aad, first, &mut input, total, output)
                    .await?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut envelope = first;
            input.read_to_end(&mut envelope)?;
            let plaintext = client.decrypt(&compartment, &envelope, aad).await?;
            output.write_all(&plaintext)
        }
        Command::Inspect { input } => {
            let info = match input.as_deref().filter(|p| *p != Path::new("-")) {
                Some(path) => {
                    // Only the head: a streamed file may be far larger than memory.
                    let (mut file, total) = streaming::open_input(Some(path))?;
                    let head = streaming::read_up_to(&mut file, 16 << 10)?;
                    cmek::format::inspect_prefix(&head, total.unwrap_or(head.len() as u64))?
                }
                None => cmek::inspect(&read_input(None)?)?,
            };
            let json = serde_json::to_string_pretty(&info)
                .map_err(|e| cmek::Error::new(cmek::ErrorKind::Configuration, e.to_string()))?;
            write_output(None, false, format!("{json}\n").as_bytes())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Objects(command) => objects::run(command).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn client(args: &CryptArgs) -> cmek::Result<Client> {
    open_client(
        args.key_file.as_deref(),
        args.state.as_deref(),
        args.provider_key.as_deref(),
        &args.key_config,
        args.dek_store.as_deref(),
    )
    .await
}

/// The client of `--state`, or of `--key-file` (under `--key-config`, DEK records in
/// `--dek-store`).
pub(crate) async fn open_client(
    key_file: Option<&Path>,
    state: Option<&str>,
    provider_key: Option<&Path>,
    key_config: &str,
    dek_store: Option<&Path>,
) -> cmek::Result<Client> {
    if let Some(state) = state {
        let plane = state::open_plane(state, provider_key, state::Create::No).await?;
        return Ok(plane.client().clone());
    }
    let Some(key_file) = key_file else {
        return Err(cmek::Error::new(
            cmek::ErrorKind::InvalidInput,
            "give --key-file or --state",
        ));
    };
    let kms = LocalKms::open(key_file)?;
    let mut builder = Client::builder().key(KeyConfigId::new(key_config)?, Arc::new(kms));
    if let Some(dir) = dek_store {
        builder = builder.dek_store(Arc::new(FileDekStore::open(dir)?));
    }
    builder.build()
}

fn read_input(path: Option<&Path>) -> cmek::Result<Vec<u8>> {
    match path {
        Some(p) if p != Path::new("-") => Ok(std::fs::read(p)?),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}

/// Fails early (before any work) if the output file exists and may not be replaced.
fn refuse_existing(path: Option<&Path>, force: bool) -> cmek::Result<()> {
    match path {
        Some(p) if p != Path::new("-") && !force && p.exists() => Err(already_exists(p)),
        _ => Ok(()),
    }
}

pub(crate) fn already_exists(path: &Path) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        format!("{} exists; give --force to replace it", path.display()),
    )
}

/// Writes `bytes` to the file `path` (stdout if `None` or `-`); an existing file is replaced
/// only if `force`.
fn write_output(path: Option<&Path>, force: bool, bytes: &[u8]) -> cmek::Result<()> {
    match path {
        Some(p) if p != Path::new("-") => {
            let mut file = std::fs::OpenOptions::new();
            file.write(true);
            if force {
                file.create(true).truncate(true);
            } else {
                file.create_new(true);
            }
            let mut file = file.open(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => already_exists(p),
                _ => {
                    let kind = Error::from(std::io::Error::from(e.kind())).kind();
                    Error::new(kind, format!("cannot write {}: {e}", p.display()))
                }
            })?;
            file.write_all(bytes)?;
            Ok(file.sync_all()?)
        }
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            Ok(out.flush()?)
        }
    }
}
