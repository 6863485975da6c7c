//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Envelope encryption under customer-managed keys, over the local key-file backend.
#[derive(Debug, Parser)]
#[command(name = "cmek", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Creates a local key file (a key-encryption key, version 1).
    Keygen {
        /// Where to write the key file; it must not exist.
        #[arg(long, short)]
        out: PathBuf,
        /// The key id recorded in envelopes.
        #[arg(long, default_value = "local:default")]
        key_id: String,
    },
    /// Adds a new version to a local key file and makes it primary.
    RotateKey {
        /// The key file.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Encrypts a file or stdin into an envelope.
    Encrypt(CryptArgs),
    /// Decrypts an envelope from a file or stdin.
    Decrypt(CryptArgs),
    /// Prints an envelope's header as JSON; needs no key.
    Inspect {
        /// The envelope file (stdin if absent or `-`).
        #[arg(long, short)]
        input: Option<PathBuf>,
    },
    /// Runs a realistic multi-tenant workload on the embedded default and reports what happened.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CryptArgs {
    /// The local key file.
    #[arg(long)]
    pub(crate) key_file: PathBuf,
    /// The compartment (tenant, workspace) the data belongs to.
    #[arg(long)]
    pub(crate) compartment: String,
    /// The key configuration id recorded in envelopes.
    #[arg(long, default_value = "local")]
    pub(crate) key_config: String,
    /// Additional authenticated data (must match on decrypt).
    #[arg(long)]
    pub(crate) aad: Option<String>,
    /// Write a compact envelope (the DEK record goes to --dek-store).
    #[arg(long)]
    pub(crate) compact: bool,
    /// Directory of DEK records (needed for compact envelopes).
    #[arg(long)]
    pub(crate) dek_store: Option<PathBuf>,
    /// Input file (stdin if absent or `-`).
    #[arg(long, short)]
    pub(crate) input: Option<PathBuf>,
    /// Output file (stdout if absent or `-`).
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of compartments (tenants).
    #[arg(long, default_value_t = 64)]
    pub(crate) compartments: usize,
    /// Records written (and read back).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) records: usize,
    /// Concurrent tasks.
    #[arg(long, default_value_t = 16)]
    pub(crate) tasks: usize,
    /// Keep the key file and DEK records here instead of a temporary directory.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
}
