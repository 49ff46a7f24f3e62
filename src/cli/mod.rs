//! The `sqlx-envelope` command line tool (feature `cli`): manage the keys and
//! the encrypted data of an application that uses this library.
//!
//! The installed binary is [`main`]. An application embeds the same tool in its
//! own binary with its models registered, so jobs, verify and status use each
//! model's own description (table, key, tenant, every encrypted column and its
//! codec, custom ones included) with `--model NAME`:
//!
//! ```no_run
//! # #[cfg(all(feature = "derive", feature = "uuid", feature = "chrono"))] mod m {
//! # use sqlx_envelope::Encrypted;
//! # #[derive(Encrypted)]
//! # #[envelope(tenant = "clinic")]
//! # pub struct Patient { pub id: uuid::Uuid, pub clinic: String,
//! #     #[encrypt] pub note: String }
//! // src/bin/app-envelope.rs
//! fn main() -> std::process::ExitCode {
//!     sqlx_envelope::cli::main_with_models(&[Patient::DESCRIPTION])
//! }
//! # }
//! ```
//!
//! Exit codes (stable, for scripts):
//! - 0: success;
//! - 1: error (database, keyring, configuration);
//! - 2: usage error (bad flags or arguments);
//! - 3: a verification found rows remaining, a job left rows unprocessed, or
//!   a destructive step was refused because rows still depend on it;
//! - 4: not yet: `keys destroy` before the key's seal horizon;
//! - 130: interrupted (Ctrl-C); the job's progress is checkpointed;
//! - 141: standard output was closed (`keys list | head -3`): the command
//!   stopped at its next line of output, as a tool killed by `SIGPIPE` would.

/// `println!` that stops the command with [`Failure::OutputClosed`] when
/// standard output is gone (a closed pipe) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            return Err($crate::cli::Failure::output(e));
        }
    }};
}

mod config;
mod data;
mod keys;
mod progress;
mod report;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::jobs::JobError;
use crate::model::ModelDescription;

/// The registered model whose table `table` has the encrypted column
/// `column`: such a column is described by the model, not by flags.
fn registered(models: &Models, table: &str, column: &str) -> Option<&'static ModelDescription> {
    models
        .iter()
        .copied()
        .find(|m| m.table == table && m.encrypted_column(column).is_some())
}

/// Resolve `--model NAME` among the registered models.
fn model(models: &Models, name: &str) -> Result<&'static ModelDescription, Failure> {
    models
        .iter()
        .copied()
        .find(|m| m.name == name || m.table == name)
        .ok_or_else(|| {
            Failure::Error(if models.is_empty() {
                format!(
                    "--model {name}: no model is registered in this binary; embed the tool with \
                     sqlx_envelope::cli::main_with_models(&[Model::DESCRIPTION]) (`index` needs it), \
                     or describe the column with flags: --table, --pk, --tenant-column and \
                     --plaintext-type for backfill, decrypt and reencrypt; --column \
                     TABLE.COLUMN[:PK] and --tenant-column for status and verify"
                )
            } else {
                format!(
                    "--model {name}: not a registered model (registered: {})",
                    models.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
                )
            })
        })
}

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: verification found rows remaining / destructive step refused.
pub const EXIT_ROWS_REMAIN: u8 = 3;
/// Exit code: not yet (`keys destroy` before the key's seal horizon): retry later.
pub const EXIT_NOT_YET: u8 = 4;
/// Exit code: interrupted.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code: standard output was closed (a reader such as `head` went away);
/// 128 + `SIGPIPE`, what a shell reports for a tool that signal stopped.
pub const EXIT_OUTPUT_CLOSED: u8 = 141;

const AFTER_HELP: &str = "\
Configuration comes from flags or the environment:
  DATABASE_URL                        postgres://..., mysql://... (or mariadb://...), sqlite:path
                                      (sqlite:path?mode=rwc creates the file if it does not exist)
  SQLX_ENVELOPE_LOCAL_KEYS_FILE       JSON file of local master keys
                                      {\"primary\": \"app/2\", \"keys\": {\"app/1\": \"<base64>\", \"app/2\": \"<base64>\"}}
  SQLX_ENVELOPE_KMS_KEY_IDS           comma-separated AWS KMS keys (id, ARN or alias); the first wraps new keys
  SQLX_ENVELOPE_KMS_UNWRAP_ONLY_KEY_IDS  KMS keys used only to unwrap (e.g. the old key during a rotation)
  SQLX_ENVELOPE_KMS_ENDPOINT          KMS endpoint override (a local KMS); AWS credentials and region as usual

A typical rotation of a data key:
  sqlx-envelope keys retire 3              # stop sealing new values with data key #3
  sqlx-envelope reencrypt --table users --column email --key 3
  sqlx-envelope verify --key 3             # exit 3 while rows still use #3
  sqlx-envelope keys destroy 3             # refused while any row uses #3

Exit codes: 0 ok, 1 error, 2 usage, 3 rows remain (verify found rows, a job left rows unprocessed, or a destructive step was refused), 4 not yet (keys destroy before the key's seal horizon), 130 interrupted (progress is saved; run the same command again to resume), 141 standard output closed (e.g. piped into head).";

/// Manage data keys, master keys and encrypted columns of sqlx-envelope.
#[derive(Debug, Parser)]
#[command(name = "sqlx-envelope", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: config::Global,
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the key store, jobs and column registry tables.
    Migrate,
    /// List, rotate, retire and destroy keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Encrypt an existing plaintext column into an encrypted column (resumable).
    Backfill(data::BackfillArgs),
    /// Decrypt an encrypted column back into a plaintext column (to leave the library).
    Decrypt(data::BackfillArgs),
    /// Drop a plaintext column once every row has its encrypted value (refused otherwise).
    DropPlaintext(data::DropArgs),
    /// Re-encrypt the rows of a column off the data keys `keys retire` made decrypt_only, or the --key keys (resumable, multi-worker).
    Reencrypt(data::ReencryptArgs),
    /// Fill a model's blind index for rows written before it existed (embedded tool, --model).
    Index(data::IndexArgs),
    /// Rows per data key and per master key, for every encrypted column.
    Status(report::StatusArgs),
    /// Check encrypted columns; exit 3 if rows remain on the given keys or do not decrypt.
    Verify(report::VerifyArgs),
}

/// A command's failure, mapped to an exit code.
#[derive(Debug)]
enum Failure {
    /// Exit 1.
    Error(String),
    /// Exit 3.
    RowsRemain(String),
    /// Exit 4.
    NotYet(String),
    /// Exit 130.
    Interrupted,
    /// Exit 141: standard output is gone; nothing more is printed.
    OutputClosed,
}

impl Failure {
    /// A failed write to standard output (the only I/O [`say!`] does).
    fn output(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::OutputClosed
        } else {
            Failure::Error(format!("cannot write to standard output: {e}"))
        }
    }
}

impl From<JobError> for Failure {
    fn from(e: JobError) -> Self {
        match e {
            JobError::RowsRemain { .. } => Failure::RowsRemain(e.to_string()),
            JobError::Cancelled => Failure::Interrupted,
            JobError::SealHorizon { .. } => Failure::NotYet(e.to_string()),
            other => Failure::Error(other.to_string()),
        }
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

/// What a command returns.
type CmdResult = Result<(), Failure>;

/// The models an embedding application registered ([`main_with_models`]).
type Models = [&'static ModelDescription];

/// The `sqlx-envelope` tool: parse the process's arguments, run the command,
/// return its exit code. No model is registered: use `--table`, `--pk`,
/// `--tenant-column` and `--plaintext-type` to describe columns.
pub fn main() -> ExitCode {
    main_with_models(&[])
}

/// The `sqlx-envelope` tool with `models` registered (each a derived model's
/// `DESCRIPTION`): `--model NAME` (the Rust type name or the table) then stands
/// for the model's table, key, tenant and encrypted columns with their codecs
/// in `reencrypt` (every encrypted column in one pass), `backfill`, `decrypt`,
/// `status` and `verify`. Sets up logging (`SQLX_ENVELOPE_LOG`, default
/// `warn`, colours only on a terminal) and its own multi-threaded runtime:
/// call it from a synchronous `fn main`, not from inside a tokio runtime.
pub fn main_with_models(models: &[&'static ModelDescription]) -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SQLX_ENVELOPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = rt.block_on(run(cli, models));
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(Failure::Error(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::RowsRemain(m)) => {
            eprintln!("rows remain: {m}");
            ExitCode::from(EXIT_ROWS_REMAIN)
        }
        Err(Failure::NotYet(m)) => {
            eprintln!("not yet: {m}");
            ExitCode::from(EXIT_NOT_YET)
        }
        Err(Failure::Interrupted) => {
            eprintln!(
                "interrupted: progress is checkpointed; run the same command again to resume"
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(Failure::OutputClosed) => ExitCode::from(EXIT_OUTPUT_CLOSED),
    }
}

async fn run(cli: Cli, models: &Models) -> CmdResult {
    let g = &cli.global;
    match cli.command {
        Command::Migrate => {
            let pool = g.pool().await?;
            pool.key_store().migrate().await?;
            say!("migrations applied");
            Ok(())
        }
        Command::Keys(k) => keys::run(g, k).await,
        Command::Backfill(a) => data::backfill(g, a, false, models).await,
        Command::Decrypt(a) => data::backfill(g, a, true, models).await,
        Command::DropPlaintext(a) => data::drop_plaintext(g, a).await,
        Command::Reencrypt(a) => data::reencrypt(g, a, models).await,
        Command::Index(a) => data::index(g, a, models).await,
        Command::Status(a) => report::status(g, a, models).await,
        Command::Verify(a) => report::verify(g, a, models).await,
    }
}
