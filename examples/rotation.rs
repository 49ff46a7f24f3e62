//! Data-key rotation on a live application: a re-encryption job over a
//! UUID-keyed, tenant-bound model runs as a background tokio task, moving
//! every encrypted column of a row in one pass, while the application keeps
//! serving reads and writes through the model.
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
    DestroyOptions, Job, JobOptions, JobPool, Target, count_rows_on, destroy_key,
};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{Encrypted, Envelope, KeyKind, KeyMaterial, KeyState, LocalKeyring};
use uuid::Uuid;

const ROWS: usize = 20_000;

/// A user of a multi-tenant service: UUID key, rows bound to their org.
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "users", tenant = "org")]
struct User {
    id: Uuid,
    org: String,
    #[encrypt]
    email: String,
    #[encrypt(pad = 16)]
    phone: Option<String>,
}

fn ids(keys: &[sqlx_envelope::KeyId]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

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

    // An application table of users in three orgs, written through the model.
    sqlx::query(
        "CREATE TABLE users (id BLOB PRIMARY KEY, org TEXT NOT NULL, email BLOB NOT NULL, phone BLOB)",
    )
    .execute(&pool)
    .await?;
    let users: Vec<User> = (0..ROWS)
        .map(|i| User {
            id: Uuid::now_v7(),
            org: ["acme", "globex", "initech"][i % 3].into(),
            email: format!("user{i}@example.com"),
            phone: (i % 2 == 0).then(|| format!("+1 555 {i:05}")),
        })
        .collect();
    let mut tx = pool.begin().await?;
    for chunk in users.chunks(500) {
        User::insert_all(&envelope, &mut *tx, chunk).await?;
    }
    tx.commit().await?;
    let jobs = JobPool::from(pool.clone());

    // 1. Retire today's data keys (one per org): no new value is sealed
    //    under them from now on.
    let mut old = Vec::new();
    for k in envelope.keys().await? {
        if k.kind == KeyKind::Data && k.state == KeyState::Active {
            envelope.set_key_state(k.id, KeyState::DecryptOnly).await?;
            old.push(k.id);
        }
    }
    let email = Target::for_model::<User>("email")?;
    println!(
        "{ROWS} users in 3 orgs; retired data keys {}, referenced by {} e-mails",
        ids(&old),
        count_rows_on(&jobs, &email, &old).await?
    );

    // 2. Re-encrypt the model in the background, throttled, with progress:
    //    one read and one compare-and-swap per row for both columns.
    let mut opts = JobOptions::default();
    opts.batch_size = 500;
    opts.rate = Some(10_000.0);
    opts.worker_id = "example".into();
    let job =
        Job::reencrypt_model::<User>(envelope.clone(), jobs.clone(), old.clone())?.options(opts);
    let mut progress = job.progress();
    let background = tokio::spawn(async move { job.run().await });
    let reporter = tokio::spawn(async move {
        let mut next = 0u64;
        while progress.changed().await.is_ok() {
            let p = progress.borrow().clone();
            let total = p.total.unwrap_or(ROWS as u64).max(1);
            if p.scanned * 100 / total >= next || p.finished {
                println!(
                    "  re-encryption {:>3}%: {} rows written, {} skipped for newer application writes",
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

    // 3. Meanwhile the application keeps serving through the model.
    let started = Instant::now();
    let (mut reads, mut writes) = (0u64, 0u64);
    let mut changed = Vec::new();
    while !background.is_finished() {
        let i = (writes as usize * 7919) % ROWS;
        let mut user = User::fetch_by_key(&envelope, &pool, &users[i].id)
            .await?
            .expect("row");
        reads += 1;
        user.email = format!("changed{i}@example.com");
        user.update_fields(&envelope, &pool, &[UserColumn::Email])
            .await?;
        writes += 1;
        changed.push(user);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let report = background.await??;
    reporter.await?;
    println!(
        "job done in {:.1?}: {} rows re-encrypted (every column on a retired key), {} left to the application's newer values; the application served {reads} reads and {writes} writes meanwhile",
        started.elapsed(),
        report.written,
        report.conflicts
    );

    // 4. Verify every column, then destroy the old keys (refused if any row
    //    still used one).
    for target in Target::all_for_model::<User>()? {
        assert_eq!(count_rows_on(&jobs, &target, &old).await?, 0, "{target}");
    }
    // This example is the only process that ever held the old keys as active
    // keys and it stopped sealing under them (they are decrypt-only), so it
    // may skip the seal horizon; a deployment with other processes waits for
    // it (`keys destroy` says how long).
    for id in &old {
        destroy_key(
            &envelope,
            &jobs,
            &DestroyOptions::new().unsafe_skip_seal_horizon(),
            *id,
        )
        .await?;
    }
    println!("data keys {} destroyed", ids(&old));

    // Every row opens through the model, and every application write survived.
    for user in changed.iter().rev() {
        let now = User::fetch_by_key(&envelope, &pool, &user.id)
            .await?
            .expect("row");
        assert_eq!(now.org, user.org);
        assert!(now.email.starts_with("changed"), "{now:?}");
    }
    let mut opened = 0;
    for user in &users {
        if User::fetch_by_key(&envelope, &pool, &user.id)
            .await?
            .is_some()
        {
            opened += 1;
        }
    }
    println!("all {opened} users open; all application writes survived");
    Ok(())
}
