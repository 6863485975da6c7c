//! `cmek`: envelope encryption from the command line, over the local key-file backend.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod cli;
mod demo;

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cmek::{Client, CompartmentId, FileDekStore, KeyConfigId, LocalKms};

use cli::{Cli, Command, CryptArgs};

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
        Command::Encrypt(args) => {
            let client = client(&args)?;
            let compartment = CompartmentId::new(&args.compartment)?;
            let plaintext = read_input(args.input.as_deref())?;
            let aad = args.aad.as_deref().unwrap_or_default().as_bytes();
            let envelope = if args.compact {
                client
                    .encrypt_compact(&compartment, &plaintext, aad)
                    .await?
            } else {
                client.encrypt(&compartment, &plaintext, aad).await?
            };
            write_output(args.output.as_deref(), &envelope)
        }
        Command::Decrypt(args) => {
            let client = client(&args)?;
            let compartment = CompartmentId::new(&args.compartment)?;
            let envelope = read_input(args.input.as_deref())?;
            let aad = args.aad.as_deref().unwrap_or_default().as_bytes();
            let plaintext = client.decrypt(&compartment, &envelope, aad).await?;
            write_output(args.output.as_deref(), &plaintext)
        }
        Command::Inspect { input } => {
            let bytes = read_input(input.as_deref())?;
            let info = cmek::inspect(&bytes)?;
            let json = serde_json::to_string_pretty(&info)
                .map_err(|e| cmek::Error::new(cmek::ErrorKind::Configuration, e.to_string()))?;
            write_output(None, format!("{json}\n").as_bytes())
        }
        Command::Demo(args) => demo::run(args).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

fn client(args: &CryptArgs) -> cmek::Result<Client> {
    if let Some(state) = &args.state {
        return Ok(admin::open_plane(state)?.client().clone());
    }
    let Some(key_file) = &args.key_file else {
        return Err(cmek::Error::new(
            cmek::ErrorKind::InvalidInput,
            "give --key-file or --state",
        ));
    };
    let kms = LocalKms::open(key_file)?;
    let mut builder = Client::builder().key(KeyConfigId::new(&args.key_config)?, Arc::new(kms));
    if let Some(dir) = &args.dek_store {
        builder = builder.dek_store(Arc::new(FileDekStore::open(dir)?));
    } else if args.compact {
        return Err(cmek::Error::new(
            cmek::ErrorKind::InvalidInput,
            "--compact needs --dek-store <DIR> to keep the DEK records",
        ));
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

fn write_output(path: Option<&Path>, bytes: &[u8]) -> cmek::Result<()> {
    match path {
        Some(p) if p != Path::new("-") => Ok(std::fs::write(p, bytes)?),
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            Ok(out.flush()?)
        }
    }
}
