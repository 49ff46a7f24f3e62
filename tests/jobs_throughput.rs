//! Re-encryption throughput against a plain UPDATE of the same rows, in the
//! same run, on PostgreSQL, MariaDB and SQLite: an integer-keyed table, and a
//! table shaped like the README's model (UUID key, tenant column). Prints the
//! figures; asserts only correctness (no timing assertion).

mod jobs_support;
mod support;

use std::time::Instant;

use jobs_support::*;
use sqlx_envelope::jobs::{
    Job, JobOptions, Target, count_rows_on, parse_pk_spec, parse_tenant_spec,
};
use sqlx_envelope::{Context, KeyState, RowId};
use support::{ALL, Db, Kind, unique};
use uuid::Uuid;

const ROWS: i64 = 20_000;
const BATCH: usize = 500;

/// The baseline: read the rows in keyset batches of `BATCH` and write each one
/// back (same bytes, no crypto) with one UPDATE per row, one transaction per
/// batch: the job's I/O pattern without decryption, encryption or checkpoints.
async fn plain_update(db: &Db, table: &str) -> u64 {
    let mut after = 0i64;
    let mut updated = 0u64;
    let (select, update) = match db.kind() {
        Kind::Postgres => (
            format!("SELECT id, secret FROM {table} WHERE id > $1 ORDER BY id LIMIT {BATCH}"),
            format!("UPDATE {table} SET secret = $1 WHERE id = $2"),
        ),
        _ => (
            format!("SELECT id, secret FROM {table} WHERE id > ? ORDER BY id LIMIT {BATCH}"),
            format!("UPDATE {table} SET secret = ? WHERE id = ?"),
        ),
    };
    macro_rules! go {
        ($p:expr) => {{
            loop {
                let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(select.clone()))
                    .bind(after)
                    .fetch_all($p)
                    .await
                    .unwrap();
                let Some(last) = rows.last().map(|r| r.0) else {
                    break;
                };
                let mut tx = $p.begin().await.unwrap();
                for (id, mut v) in rows {
                    // Change one byte of the nonce so every row really changes.
                    v[10] ^= 1;
                    updated += sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                        .bind(v)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .unwrap()
                        .rows_affected();
                }
                tx.commit().await.unwrap();
                after = last;
            }
        }};
    }
    match db {
        Db::Postgres(p) => go!(p),
        Db::MySql(p) => go!(p),
        Db::Sqlite(p, _) => go!(p),
    }
    updated
}

async fn measure(kind: Kind) {
    let db = Db::connect(kind).await;
    let pool = job_pool(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let envelope = envelope_from_file(&db, &keys);
    let table = unique("jobs_tp");
    let old = seed(&db, &envelope, &table, ROWS).await;
    envelope
        .set_key_state(old, KeyState::DecryptOnly)
        .await
        .unwrap();
    let target = Target::new(&table, "id", "secret").unwrap();

    let mut opts = JobOptions::default();
    opts.batch_size = BATCH;
    opts.count_total = false;
    let job =
        Job::reencrypt(envelope.clone(), pool.clone(), target.clone(), vec![old]).options(opts);
    let t0 = Instant::now();
    let report = job.run().await.unwrap();
    let job_time = t0.elapsed();
    assert_eq!(report.written, ROWS as u64);
    assert_eq!(report.remaining, 0);
    assert_eq!(count_rows_on(&pool, &target, &[old]).await.unwrap(), 0);

    let t1 = Instant::now();
    let updated = plain_update(&db, &table).await;
    let plain_time = t1.elapsed();
    assert_eq!(updated, ROWS as u64);

    let job_rate = ROWS as f64 / job_time.as_secs_f64();
    let plain_rate = ROWS as f64 / plain_time.as_secs_f64();
    eprintln!(
        "THROUGHPUT {kind:?}: re-encryption {job_rate:.0} rows/s ({job_time:?}), plain UPDATE {plain_rate:.0} rows/s ({plain_time:?}), ratio {:.2} (debug build, {ROWS} rows, batch {BATCH}, 1 worker)",
        job_rate / plain_rate
    );
}

/// The baseline for a UUID key: keyset batches by `id` (a UUID), one UPDATE
/// per row, one transaction per batch.
async fn plain_update_uuid(db: &Db, table: &str) -> u64 {
    let mut after: Option<Uuid> = None;
    let mut updated = 0u64;
    let ph = |n: usize| match db.kind() {
        Kind::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    };
    let first = format!("SELECT id, secret FROM {table} ORDER BY id LIMIT {BATCH}");
    let next = format!(
        "SELECT id, secret FROM {table} WHERE id > {} ORDER BY id LIMIT {BATCH}",
        ph(1)
    );
    let update = format!("UPDATE {table} SET secret = {} WHERE id = {}", ph(1), ph(2));
    macro_rules! go {
        ($p:expr) => {{
            loop {
                let rows: Vec<(Uuid, Vec<u8>)> = match after {
                    None => sqlx::query_as(sqlx::AssertSqlSafe(first.clone()))
                        .fetch_all($p)
                        .await
                        .unwrap(),
                    Some(a) => sqlx::query_as(sqlx::AssertSqlSafe(next.clone()))
                        .bind(a)
                        .fetch_all($p)
                        .await
                        .unwrap(),
                };
                let Some(last) = rows.last().map(|r| r.0) else {
                    break;
                };
                let mut tx = $p.begin().await.unwrap();
                for (id, mut v) in rows {
                    v[10] ^= 1;
                    updated += sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                        .bind(v)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .unwrap()
                        .rows_affected();
                }
                tx.commit().await.unwrap();
                after = Some(last);
            }
        }};
    }
    match db {
        Db::Postgres(p) => go!(p),
        Db::MySql(p) => go!(p),
        Db::Sqlite(p, _) => go!(p),
    }
    updated
}

/// A table shaped like the README's model: UUID key, tenant column, sealed
/// values bound to both, re-encrypted by a job that reads key and tenant.
async fn measure_model(kind: Kind) {
    let db = Db::connect(kind).await;
    let pool = job_pool(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let envelope = envelope_from_file(&db, &keys);
    let table = unique("jobs_tp_uuid");
    let uuid_ty = match kind {
        Kind::Postgres => "UUID",
        Kind::MySql => "BINARY(16)",
        Kind::Sqlite => "BLOB",
    };
    db.exec(&format!(
        "CREATE TABLE {table} (id {uuid_ty} PRIMARY KEY, clinic VARCHAR(64) NOT NULL, secret {} NOT NULL)",
        db.blob_type()
    ))
    .await;
    let mut rows = Vec::with_capacity(ROWS as usize);
    for i in 0..ROWS {
        let id = Uuid::new_v4();
        let clinic = ["north", "south"][(i % 2) as usize];
        let row = RowId::from(id);
        let ctx = Context::new(&table, "secret", &row).with_tenant(clinic);
        let sealed = envelope
            .seal(&ctx, seed_plaintext(i).as_bytes())
            .await
            .unwrap();
        rows.push((id, clinic, sealed.into_bytes()));
    }
    let insert = format!("INSERT INTO {table} (id, clinic, secret) ");
    macro_rules! seed {
        ($p:expr, $DB:ty) => {{
            for chunk in rows.chunks(1000) {
                let mut q = sqlx::QueryBuilder::<$DB>::new(insert.clone());
                q.push_values(chunk, |mut b, (id, clinic, v)| {
                    b.push_bind(*id).push_bind(*clinic).push_bind(v.clone());
                });
                q.build().execute($p).await.unwrap();
            }
        }};
    }
    match &db {
        Db::Postgres(p) => seed!(p, sqlx::Postgres),
        Db::MySql(p) => seed!(p, sqlx::MySql),
        Db::Sqlite(p, _) => seed!(p, sqlx::Sqlite),
    }
    let old: Vec<_> = envelope
        .keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.kind == sqlx_envelope::KeyKind::Data && k.state == KeyState::Active)
        .map(|k| k.id)
        .collect();
    for id in &old {
        envelope
            .set_key_state(*id, KeyState::DecryptOnly)
            .await
            .unwrap();
    }
    let target = Target::new(&table, "id", "secret")
        .unwrap()
        .key(parse_pk_spec("id:uuid").unwrap())
        .unwrap()
        .tenant(parse_tenant_spec("clinic").unwrap());
    let mut opts = JobOptions::default();
    opts.batch_size = BATCH;
    opts.count_total = false;
    let t0 = Instant::now();
    let report = Job::reencrypt(envelope.clone(), pool.clone(), target.clone(), old.clone())
        .options(opts)
        .run()
        .await
        .unwrap();
    let job_time = t0.elapsed();
    assert_eq!((report.written, report.failed), (ROWS as u64, 0));
    assert_eq!(count_rows_on(&pool, &target, &old).await.unwrap(), 0);

    let t1 = Instant::now();
    assert_eq!(plain_update_uuid(&db, &table).await, ROWS as u64);
    let plain_time = t1.elapsed();
    let job_rate = ROWS as f64 / job_time.as_secs_f64();
    let plain_rate = ROWS as f64 / plain_time.as_secs_f64();
    eprintln!(
        "THROUGHPUT {kind:?} (UUID key, tenant): re-encryption {job_rate:.0} rows/s ({job_time:?}), plain keyset UPDATE {plain_rate:.0} rows/s ({plain_time:?}), ratio {:.2} (debug build, {ROWS} rows, batch {BATCH}, 1 worker)",
        job_rate / plain_rate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_throughput_vs_plain_update() {
    // One database after the other, so the figures do not compete for the CPU.
    for kind in ALL {
        measure(kind).await;
        measure_model(kind).await;
    }
}
