//! Data-key rotation on a live application: a re-encryption job runs as a
//! background tokio task while the application keeps serving reads and writes.
//!
//! ```text
//! cargo run --example rotation
//! ```
//!
//! SQLite in a temporary file, a local master key generated in memory. The
//! same code runs on PostgreSQL and MariaDB with their pools.

use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx_envelope::jobs::{
    DestroyOptions, Job, JobOptions, JobPool, Target, count_by_key, destroy_key,
};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{Context, Envelope, KeyMaterial, KeyState, LocalKeyring, RowId};

const ROWS: i64 = 20_000;

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

    // An application table with encrypted e-mail addresses.
    sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, email BLOB NOT NULL)")
        .execute(&pool)
        .await?;
    let mut tx = pool.begin().await?;
    for id in 1..=ROWS {
        let row = RowId::from(id);
        let sealed = envelope
            .seal(
                &Context::new("users", "email", &row),
                format!("user{id}@example.com").as_bytes(),
            )
            .await?;
        sqlx::query("INSERT INTO users (id, email) VALUES (?, ?)")
            .bind(id)
            .bind(&sealed)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let jobs = JobPool::from(pool.clone());
    let target = Target::new("users", "id", "email")?;
    let before = count_by_key(&jobs, &target).await?;
    let (&old, _) = before.by_key.iter().next().expect("one data key");
    println!("{ROWS} rows sealed under data key {old}");

    // 1. Retire the data key: no new value is sealed under it from now on.
    envelope.set_key_state(old, KeyState::DecryptOnly).await?;

    // 2. Re-encrypt its rows in the background, throttled, with progress.
    let mut opts = JobOptions::default();
    opts.batch_size = 500;
    opts.rate = Some(10_000.0);
    opts.worker_id = "example".into();
    let job =
        Job::reencrypt(envelope.clone(), jobs.clone(), target.clone(), vec![old]).options(opts);
    let mut progress = job.progress();
    let background = tokio::spawn(async move { job.run().await });
    let reporter = tokio::spawn(async move {
        let mut next = 0u64;
        while progress.changed().await.is_ok() {
            let p = progress.borrow().clone();
            let total = p.total.unwrap_or(ROWS as u64).max(1);
            if p.scanned * 100 / total >= next || p.finished {
                println!(
                    "  re-encryption {:>3}%: {} written, {} skipped for newer application writes",
                    p.scanned * 100 / total,
                    p.written,
                    p.conflicts
                );
                next += 25;
            }
            if p.finished {
                break;
            }
        }
    });

    // 3. Meanwhile the application keeps serving: reads and writes.
    let started = Instant::now();
    let (mut reads, mut writes) = (0u64, 0u64);
    let mut written_ids = Vec::new();
    while !background.is_finished() {
        let id = (writes as i64 * 7919) % ROWS + 1;
        let row = RowId::from(id);
        let ctx = Context::new("users", "email", &row);
        let current: sqlx_envelope::Sealed =
            sqlx::query_scalar("SELECT email FROM users WHERE id = ?")
                .bind(id)
                .fetch_one(&pool)
                .await?;
        envelope.open(&ctx, &current).await?;
        reads += 1;
        let sealed = envelope
            .seal(&ctx, format!("changed{id}@example.com").as_bytes())
            .await?;
        sqlx::query("UPDATE users SET email = ? WHERE id = ?")
            .bind(&sealed)
            .bind(id)
            .execute(&pool)
            .await?;
        writes += 1;
        written_ids.push(id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let report = background.await??;
    reporter.await?;
    println!(
        "job done in {:.1?}: {} rows re-encrypted, {} left to the application's newer values; the application served {reads} reads and {writes} writes meanwhile",
        started.elapsed(),
        report.written,
        report.conflicts
    );

    // 4. Verify, then destroy the old key (refused if any row still used it).
    let after = count_by_key(&jobs, &target).await?;
    assert_eq!(after.on(&[old]), 0);
    // This example is the only process that ever held `old` as its active key
    // and it stopped sealing under it (the key is decrypt-only), so it may skip
    // the seal horizon; a deployment with other processes waits for it
    // (`keys destroy` says how long).
    destroy_key(
        &envelope,
        &jobs,
        &DestroyOptions::new().unsafe_skip_seal_horizon(),
        old,
    )
    .await?;
    println!(
        "data key {old} destroyed; rows per data key now: {:?}",
        after
            .by_key
            .iter()
            .map(|(k, n)| (k.get(), *n))
            .collect::<Vec<_>>()
    );

    // Every application write survived.
    for id in written_ids {
        let row = RowId::from(id);
        let v: sqlx_envelope::Sealed = sqlx::query_scalar("SELECT email FROM users WHERE id = ?")
            .bind(id)
            .fetch_one(&pool)
            .await?;
        let pt = envelope
            .open(&Context::new("users", "email", &row), &v)
            .await?;
        assert_eq!(&*pt, format!("changed{id}@example.com").as_bytes());
    }
    println!("all application writes survived");
    Ok(())
}
