//! Encrypt existing plaintext columns of a live table, phase by phase, on a
//! UUID-keyed, tenant-bound model: add columns -> the application reads either
//! form and writes encrypted values -> backfill with the model's own encoding
//! -> verify -> the next release drops `migrating_from` -> drop the plaintext.
//!
//! ```text
//! cargo run --example encrypt_existing_column
//! ```
//!
//! SQLite in a temporary file and a local master key generated in memory; the
//! same code runs on PostgreSQL and MariaDB with their pools.

use std::time::Duration;

use chrono::NaiveDate;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx_envelope::jobs::transition::{drop_plaintext, transition_counts, verify_encrypted};
use sqlx_envelope::jobs::{Job, JobError, JobOptions, JobPool, PlainKind, Target};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{Encrypted, Envelope, KeyMaterial, LocalKeyring};
use uuid::Uuid;

const ROWS: u32 = 5_000;

/// The model during the migration: each encrypted field reads its plaintext
/// column while the encrypted one is NULL; writes encrypt and clear it.
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "customers", tenant = "account")]
struct Customer {
    id: Uuid,
    account: String,
    #[encrypt(migrating_from = "email_plain")]
    email: String,
    #[encrypt(migrating_from = "signed_up_plain")]
    signed_up: NaiveDate,
}

/// The same model in the release after the migration (plaintext dropped).
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "customers", tenant = "account")]
struct CustomerAfter {
    id: Uuid,
    account: String,
    #[encrypt]
    email: String,
    #[encrypt]
    signed_up: NaiveDate,
}

fn plaintext_columns() -> [(&'static str, &'static str); 2] {
    [("email", "email_plain"), ("signed_up", "signed_up_plain")]
}

async fn connect(dir: &std::path::Path) -> Result<sqlx::SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dir.join("app.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30)),
        )
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pool = connect(dir.path()).await?;
    let store = SqliteKeyStore::new(pool.clone());
    store.migrate().await?;
    let envelope = Envelope::builder()
        .keyring(LocalKeyring::new("app/1", KeyMaterial::generate())?)
        .store(store)
        .build()?;
    let jobs = JobPool::from(pool.clone());

    // The starting point: customers of two accounts, e-mail and sign-up date
    // in plaintext (the columns renamed aside, as a migration would).
    sqlx::query(
        "CREATE TABLE customers (id BLOB PRIMARY KEY, account TEXT NOT NULL, \
         email_plain TEXT, signed_up_plain DATE)",
    )
    .execute(&pool)
    .await?;
    let mut ids = Vec::new();
    let mut tx = pool.begin().await?;
    for i in 0..ROWS {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO customers VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(if i % 2 == 0 { "acme" } else { "globex" })
            .bind(format!("customer{i}@example.com"))
            .bind(NaiveDate::from_ymd_opt(2020, 1 + i % 12, 1 + i % 28))
            .execute(&mut *tx)
            .await?;
        ids.push(id);
    }
    tx.commit().await?;
    println!("{ROWS} customers (UUID keys, two accounts) with plaintext e-mail and sign-up date");

    // Phase 1: add the encrypted columns (nullable), named as the model's fields.
    sqlx::query("ALTER TABLE customers ADD COLUMN email BLOB NULL")
        .execute(&pool)
        .await?;
    sqlx::query("ALTER TABLE customers ADD COLUMN signed_up BLOB NULL")
        .execute(&pool)
        .await?;

    // Phase 2: the application deploys the migrating model (a new release:
    // new processes, new connections that see the new columns). It reads old
    // rows from the plaintext, and every row it writes is encrypted.
    let pool = connect(dir.path()).await?;
    let old = Customer::fetch_by_key(&envelope, &pool, &ids[42])
        .await?
        .expect("row");
    println!(
        "read during the migration: {} signed up on {} (from the plaintext columns)",
        old.email, old.signed_up
    );
    let mut moved = old.clone();
    moved.email = "new-address@example.com".into();
    moved
        .update_fields(&envelope, &pool, &[CustomerColumn::Email])
        .await?;
    let fresh = Customer {
        id: Uuid::now_v7(),
        account: "acme".into(),
        email: "new-customer@example.com".into(),
        signed_up: NaiveDate::from_ymd_opt(2026, 12, 2).expect("date"),
    };
    fresh.insert(&envelope, &pool).await?;

    // Dropping the plaintext now would lose data: the library refuses.
    let email = Target::for_model::<Customer>("email")?;
    match drop_plaintext(&jobs, &email, "email_plain").await {
        Err(JobError::RowsRemain { rows, .. }) => {
            println!("drop refused: {rows} rows are plaintext only")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Phase 3: backfill each column with the model's own encoding (the date
    // as the model stores a NaiveDate), bound to each row's key and account.
    for (column, plain) in plaintext_columns() {
        let mut opts = JobOptions::default();
        opts.batch_size = 500;
        opts.worker_id = "example".into();
        let target = Target::for_model::<Customer>(column)?;
        let report = Job::encrypt_column(
            envelope.clone(),
            jobs.clone(),
            target,
            plain,
            PlainKind::Text,
        )?
        .options(opts)
        .run()
        .await?;
        println!(
            "backfill {column}: {} rows encrypted, {} left to newer application writes",
            report.written, report.conflicts
        );
    }

    // Phase 4: verify: counts, and every encrypted value opens to its
    // plaintext, compared as typed values.
    for (column, plain) in plaintext_columns() {
        let target = Target::for_model::<Customer>(column)?;
        let counts = transition_counts(&jobs, &target, plain).await?;
        let check =
            verify_encrypted(&envelope, &jobs, &target, plain, PlainKind::Text, 1000).await?;
        println!(
            "verify {column}: {} encrypted, {} plaintext only; {} opened, {} mismatched, {} failed",
            counts.encrypted, counts.plaintext_only, check.checked, check.mismatched, check.failed
        );
        assert!(check.is_clean());
    }

    // Phase 5: every row is encrypted and verified: the next release's model
    // has no `migrating_from`, and every row opens from its encrypted columns.
    let pool = connect(dir.path()).await?;
    let after = CustomerAfter::fetch_by_key(&envelope, &pool, &ids[42])
        .await?
        .expect("row");
    assert_eq!(
        (after.email.as_str(), after.signed_up),
        (moved.email.as_str(), moved.signed_up)
    );
    // Phase 6: nothing reads the plaintext any more: drop it (checked and
    // dropped under one lock).
    for (column, plain) in plaintext_columns() {
        drop_plaintext(&jobs, &Target::for_model::<Customer>(column)?, plain).await?;
    }
    let pool = connect(dir.path()).await?;

    let all: Vec<CustomerAfter> = {
        use sqlx_envelope::QueryAsExt as _;
        sqlx::query_as::<_, CustomerAfterSealed>("SELECT * FROM customers")
            .opened(&envelope)
            .fetch_all(&pool)
            .await?
    };
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('customers')")
            .fetch_all(&pool)
            .await?;
    println!(
        "done: {} customers open through the model; the table's columns are {columns:?}",
        all.len()
    );
    Ok(())
}
