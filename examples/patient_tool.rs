//! An application's own `sqlx-envelope` tool, with the README's `Patient`
//! model registered: `--model Patient` stands for the model's table, UUID key,
//! tenant column and every encrypted column with its own codec (a date, JSON,
//! a padded `Option`), so backfill, re-encryption, status and verify need no
//! description of the table on the command line.
//!
//! Run with `cargo run --example patient_tool --features cli -- --help`; the
//! README's walkthrough ("From a plaintext table to an encrypted one, and a
//! key rotation") drives it against PostgreSQL.

#[allow(dead_code)]
mod model {
    type Db = sqlx::Postgres;
    // The README's model, byte for byte (tests/derive_one_call.rs checks it).
    include!("../tests/derive_support/flagship.rs");
}

use sqlx_envelope::Encrypted as _;

fn main() -> std::process::ExitCode {
    sqlx_envelope::cli::main_with_models(&[model::Patient::DESCRIPTION])
}
