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
        /// The key id recorded in envelopes; it must differ between key files (default: a new
        /// random id, `local:` and 24 hex digits).
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Adds a new version to a local key file and makes it primary.
    RotateKey {
        /// The key file.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Encrypts a file or stdin into an envelope (a streamed one, in constant memory, from
    /// 1 MiB on or with --stream).
    Encrypt(EncryptArgs),
    /// Decrypts an envelope from a file or stdin (streamed ones in constant memory: to a file,
    /// written only once the whole object is authenticated; to stdout, chunk by chunk, so a
    /// truncated object gives a prefix and a failing exit status).
    Decrypt(DecryptArgs),
    /// Prints an envelope's header as JSON; needs no key.
    Inspect {
        /// The envelope file (stdin if absent or `-`).
        #[arg(long, short)]
        input: Option<PathBuf>,
    },
    /// Keeps objects of a store (local files, S3, GCS, Azure Blob) under each tenant's key:
    /// put, get, list, and the bulk migration of existing objects.
    #[command(subcommand)]
    Objects(crate::objects::ObjectsCommand),
    /// Runs a realistic multi-tenant workload on the embedded default and reports what happened.
    Demo(DemoArgs),
    /// Manages external key configurations (create, list, show, validate, rotate, delete).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manages compartments and their write-once key attachment.
    #[command(subcommand)]
    Compartments(CompartmentsCommand),
    /// Re-wraps the DEK records of a rotated external key under its current KMS key.
    Rewrap {
        #[command(flatten)]
        state: StateArgs,
        /// The external key (`ekey_…`).
        external_key_id: String,
        /// DEK records re-wrapped per batch (and per progress line).
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Prints a page of the activity feed (the audit trail) as
    /// `{"data": [...], "has_more": …, "next": …}`.
    Activity {
        #[command(flatten)]
        state: StateArgs,
        /// The cursor: 0 for the first page, then the previous page's `next`.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Events per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// The control plane's embedded state.
#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    /// The control plane's state: a directory (configurations, compartments, DEK records,
    /// the audit trail and the provider-managed key file, created on first use), or a
    /// `postgres://` URL shared by every node (then give --provider-key too).
    #[arg(long, env = "CMEK_STATE", hide_env_values = true)]
    pub(crate) state: String,
    /// The provider-managed key file, with a PostgreSQL --state (created on first use; every
    /// node needs the same one).
    #[arg(long, env = "CMEK_PROVIDER_KEY")]
    pub(crate) provider_key: Option<PathBuf>,
    /// Who is making the change, for the audit trail.
    #[arg(long, env = "USER", default_value = "cli")]
    pub(crate) actor: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Creates an external key configuration from a request body (the reference API's JSON) or
    /// a local key file; prints it.
    Create {
        #[command(flatten)]
        state: StateArgs,
        /// The request body: JSON text, `@FILE`, or `-` for stdin.
        #[arg(long, required_unless_present = "local_key_file")]
        body: Option<String>,
        /// Shortcut for a local key file configuration (development, demos).
        #[arg(long, conflicts_with = "body")]
        local_key_file: Option<PathBuf>,
        /// The display name (with --local-key-file).
        #[arg(long, default_value = "local key")]
        display_name: String,
    },
    /// Lists every configuration as `{"data": [...]}`.
    List {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Prints one configuration.
    Show {
        #[command(flatten)]
        state: StateArgs,
        /// The external key (`ekey_…`).
        id: String,
    },
    /// Validates a configuration with a real round trip; prints the result and exits with 1 if
    /// it failed.
    Validate {
        #[command(flatten)]
        state: StateArgs,
        /// The external key (`ekey_…`).
        id: String,
    },
    /// Moves a configuration to a new KMS key of the same provider (validated first).
    Rotate {
        #[command(flatten)]
        state: StateArgs,
        /// The external key (`ekey_…`).
        id: String,
        /// The new `provider_config`: JSON text, `@FILE`, or `-` for stdin.
        #[arg(long)]
        provider_config: String,
    },
    /// Deletes (deactivates) a configuration: no new data goes under it.
    Delete {
        #[command(flatten)]
        state: StateArgs,
        /// The external key (`ekey_…`).
        id: String,
        /// Delete even if compartments use it (their new writes then fail).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CompartmentsCommand {
    /// Creates a compartment (a fresh UUID v4), optionally with a validated key; prints it.
    Create {
        #[command(flatten)]
        state: StateArgs,
        /// The external key its data goes under (default: the provider-managed key).
        #[arg(long)]
        external_key_id: Option<String>,
    },
    /// Attaches a validated external key, once.
    Attach {
        #[command(flatten)]
        state: StateArgs,
        /// The compartment id.
        compartment_id: String,
        /// The external key (`ekey_…`).
        #[arg(long)]
        external_key_id: String,
    },
    /// Prints one compartment.
    Show {
        #[command(flatten)]
        state: StateArgs,
        /// The compartment id.
        compartment_id: String,
    },
    /// Lists every compartment as `{"data": [...]}`.
    List {
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CryptArgs {
    /// The local key file.
    #[arg(long, required_unless_present = "state", conflicts_with = "state")]
    pub(crate) key_file: Option<PathBuf>,
    /// Use the control plane's state instead: each compartment's attached key (or the
    /// provider-managed one) and its DEK records; a directory or a `postgres://` URL.
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// The provider-managed key file, with a PostgreSQL --state.
    #[arg(long, env = "CMEK_PROVIDER_KEY")]
    pub(crate) provider_key: Option<PathBuf>,
    /// The compartment (tenant, workspace) the data belongs to.
    #[arg(long)]
    pub(crate) compartment: String,
    /// The key configuration id recorded in envelopes (with --key-file).
    #[arg(long, default_value = "local")]
    pub(crate) key_config: String,
    /// Additional authenticated data (must match on decrypt).
    #[arg(long)]
    pub(crate) aad: Option<String>,
    /// Directory of DEK records (needed for compact envelopes, with --key-file).
    #[arg(long)]
    pub(crate) dek_store: Option<PathBuf>,
    /// Input file (stdin if absent or `-`).
    #[arg(long, short)]
    pub(crate) input: Option<PathBuf>,
    /// Output file (stdout if absent or `-`); an existing file is kept unless --force.
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

/// `cmek encrypt`: the common arguments and the envelope form.
#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    #[command(flatten)]
    pub(crate) common: CryptArgs,
    /// Write a compact envelope (its DEK record goes to --dek-store, or the state's records).
    #[arg(long)]
    pub(crate) compact: bool,
    /// Write a streamed envelope whatever the input's size (16 KiB chunks, range reads).
    #[arg(long)]
    pub(crate) stream: bool,
}

/// `cmek decrypt`: the common arguments and an optional range.
#[derive(Debug, Args)]
pub(crate) struct DecryptArgs {
    #[command(flatten)]
    pub(crate) common: CryptArgs,
    /// Decrypt only these plaintext bytes of a streamed envelope file: `START-END`
    /// (inclusive), `START-` or `-N` (the last N); reads only the chunks they need.
    #[arg(long, requires = "input", allow_hyphen_values = true)]
    pub(crate) range: Option<String>,
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
