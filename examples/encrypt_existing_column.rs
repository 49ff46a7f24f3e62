//! Encrypt an existing plaintext column of a live table, phase by phase:
//! add column -> dual write -> backfill -> verify -> switch reads -> drop
//! plaintext.
//!
//! ```text
//! cargo run --example encrypt_existing_column
//! ```
//!
//! SQLite in a temporary file and a local master key generated in memory.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx_envelope::jobs::transition::{
    drop_plaintext, read_transition, transition_counts, verify_encrypted,
};
use sqlx_envelope::jobs::{Job, JobError, JobOptions, JobPool, PlainKind, Target};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{Context, Envelope, KeyMaterial, LocalKeyring, RowId};

const ROWS: i64 = 5_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dir.path().join("app.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30)),
        )
        .await?;
    let store = SqliteKeyStore::new(pool.clone());
    store.migrate().await?;
    let envelope = Envelope::builder()
        .keyring(LocalKeyring::new("app/1", KeyMaterial::generate())?)
        .store(store)
        .build()?;
    let jobs = JobPool::from(pool.clone());

    // The starting point: a table with a plaintext column.
    sqlx::query("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT)")
        .execute(&pool)
        .await?;
    let mut tx = pool.begin().await?;
    for id in 1..=ROWS {
        sqlx::query("INSERT INTO customers (id, email) VALUES (?, ?)")
            .bind(id)
            .bind(format!("customer{id}@example.com"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    println!("{ROWS} customers with a plaintext e-mail column");

    // Phase 1: add the encrypted column (nullable).
    sqlx::query("ALTER TABLE customers ADD COLUMN email_enc BLOB NULL")
        .execute(&pool)
        .await?;
    // Bind values to the name the column will keep ("email_enc" here; pass
    // `.context_column("email")` if you will rename it to `email` later).
    let target = Target::new("customers", "id", "email_enc")?;

    // Phase 2: the application writes both columns from now on.
    let id = 42_i64;
    let row = RowId::from(id);
    let ctx = Context::new("customers", "email_enc", &row);
    let new_email = "new-address@example.com";
    let sealed = envelope.seal(&ctx, new_email.as_bytes()).await?;
    sqlx::query("UPDATE customers SET email = ?, email_enc = ? WHERE id = ?")
        .bind(new_email)
        .bind(&sealed)
        .bind(id)
        .execute(&pool)
        .await?;

    // Dropping the plaintext now would lose data: the library refuses.
    match drop_plaintext(&jobs, &target, "email").await {
        Err(JobError::RowsRemain { rows, .. }) => {
            println!("drop refused: {rows} rows are plaintext only")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Phase 3: backfill the older rows (resumable; safe next to dual writes).
    let mut opts = JobOptions::default();
    opts.batch_size = 500;
    opts.worker_id = "example".into();
    let job = Job::encrypt_column(
        envelope.clone(),
        jobs.clone(),
        target.clone(),
        "email",
        PlainKind::Text,
    )?
    .options(opts);
    let report = job.run().await?;
    println!(
        "backfill: {} rows encrypted, {} left to newer application writes",
        report.written, report.conflicts
    );

    // Phase 4: verify: counts, and every encrypted value opens to its plaintext.
    let counts = transition_counts(&jobs, &target, "email").await?;
    let check = verify_encrypted(&envelope, &jobs, &target, "email", PlainKind::Text, 1000).await?;
    println!(
        "verify: {} encrypted, {} plaintext only; {} opened, {} mismatched, {} failed",
        counts.encrypted, counts.plaintext_only, check.checked, check.mismatched, check.failed
    );
    assert!(check.is_clean());

    // Phase 5: reads switch to the encrypted column (transition reads take
    // either form while older instances still run).
    let (enc, plain): (Option<Vec<u8>>, Option<String>) =
        sqlx::query_as("SELECT email_enc, email FROM customers WHERE id = ?")
            .bind(id)
            .fetch_one(&pool)
            .await?;
    let value = read_transition(
        &envelope,
        &ctx,
        enc.as_deref(),
        plain.as_deref().map(str::as_bytes),
    )
    .await?;
    assert_eq!(value.as_deref(), Some(new_email.as_bytes()));

    // Phase 6: drop the plaintext column; checked and dropped under one lock.
    drop_plaintext(&jobs, &target, "email").await?;
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('customers')")
            .fetch_all(&pool)
            .await?;
    println!("done: customers now has columns {columns:?}; every e-mail is encrypted");
    Ok(())
}
