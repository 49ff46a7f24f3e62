//! End-to-end benchmark: encrypted columns against plaintext columns and against
//! pgcrypto, on the local databases, in one run with the same batching.
//!
//! `scripts/bench.sh` (or `cargo bench --all-features --bench e2e`). Writes
//! `target/bench/report.json` and prints a table. Rows: `BENCH_ROWS` (default
//! 100,000), each with two 64-byte secret fields plus ordinary columns.
//!
//! Workloads, per database, each on a fresh table:
//! - `plaintext`: the two fields stored as plain BYTEA/BLOB;
//! - `envelope`: the fields sealed by this library (insert), then selected and
//!   opened with `open_many` per page (select, cold cache first, then warm);
//! - `pgcrypto` (PostgreSQL only): `pgp_sym_encrypt` / `pgp_sym_decrypt` in the
//!   same statements.
//!
//! Inserts are multi-row statements of `BATCH` rows in one transaction per batch;
//! selects are keyset pages of `BATCH` rows.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{QueryBuilder, Row as _};
use sqlx_envelope::store::{KeyStore, MySqlKeyStore, PgKeyStore, SqliteKeyStore};
use sqlx_envelope::{
    CacheLimits, Context, Envelope, KeyMaterial, Keyring, LocalKeyring, RowId, Sealed,
};

#[path = "../tests/support/moto.rs"]
#[allow(dead_code)]
mod moto;

const BATCH: usize = 1_000;
const PASSPHRASE: &str = "bench-passphrase";

struct Data {
    ids: Vec<i64>,
    emails: Vec<Vec<u8>>,
    ssns: Vec<Vec<u8>>,
}

fn data(n: usize) -> Data {
    let field = |i: usize, tag: u8| -> Vec<u8> {
        let mut v = vec![tag; 64];
        v[..8].copy_from_slice(&(i as u64).to_be_bytes());
        v
    };
    Data {
        ids: (1..=n as i64).collect(),
        emails: (0..n).map(|i| field(i, b'e')).collect(),
        ssns: (0..n).map(|i| field(i, b's')).collect(),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[derive(Default, Debug)]
struct Run {
    insert_s: f64,
    select_cold_s: f64,
    select_warm_s: f64,
    bytes_per_value: f64,
}

impl Run {
    fn json(&self, rows: usize) -> Value {
        json!({
            "insert": {"seconds": self.insert_s, "rows_per_second": rows as f64 / self.insert_s},
            "select_cold": {"seconds": self.select_cold_s, "rows_per_second": rows as f64 / self.select_cold_s},
            "select_warm": {"seconds": self.select_warm_s, "rows_per_second": rows as f64 / self.select_warm_s},
            "stored_bytes_per_value": self.bytes_per_value,
        })
    }
}

macro_rules! driver {
    ($name:ident, $db:ty, $pool:ty, $store:ty, $blob:literal, $ph1:literal, $ph2:literal) => {
        mod $name {
            use super::*;

            pub async fn setup(pool: &$pool, table: &str) {
                let drop = format!("DROP TABLE IF EXISTS {table}");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(pool).await.unwrap();
                let create = format!(
                    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, age INT NOT NULL, email {b} NOT NULL, ssn {b} NOT NULL)",
                    b = $blob
                );
                sqlx::query(sqlx::AssertSqlSafe(create)).execute(pool).await.unwrap();
            }

            async fn insert_rows<F, T>(pool: &$pool, table: &str, d: &Data, mut cols: F)
            where
                F: FnMut(usize) -> (T, T),
                T: for<'q> sqlx::Encode<'q, $db> + sqlx::Type<$db> + Send + 'static,
            {
                for chunk in d.ids.chunks(BATCH) {
                    let mut tx = pool.begin().await.unwrap();
                    let mut qb = QueryBuilder::<$db>::new(format!("INSERT INTO {table} (id, name, age, email, ssn) "));
                    qb.push_values(chunk, |mut b, id| {
                        let i = (*id - 1) as usize;
                        let (e, s) = cols(i);
                        b.push_bind(*id).push_bind(format!("person {id}")).push_bind((*id % 90) as i32).push_bind(e).push_bind(s);
                    });
                    qb.build().execute(&mut *tx).await.unwrap();
                    tx.commit().await.unwrap();
                }
            }

            /// Keyset pages of (id, email, ssn) as raw bytes.
            async fn pages(pool: &$pool, table: &str, mut f: impl AsyncFnMut(Vec<(i64, Vec<u8>, Vec<u8>)>)) {
                let mut last = 0_i64;
                let sql = format!("SELECT id, email, ssn FROM {table} WHERE id > {} ORDER BY id LIMIT {}", $ph1, $ph2);
                loop {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(last)
                        .bind(BATCH as i64)
                        .fetch_all(pool)
                        .await
                        .unwrap();
                    if rows.is_empty() {
                        break;
                    }
                    let page: Vec<(i64, Vec<u8>, Vec<u8>)> = rows
                        .iter()
                        .map(|r| (r.get::<i64, _>(0), r.get::<Vec<u8>, _>(1), r.get::<Vec<u8>, _>(2)))
                        .collect();
                    last = page.last().unwrap().0;
                    f(page).await;
                }
            }

            pub async fn plaintext(pool: &$pool, d: &Data) -> Run {
                let table = "bench_plain";
                setup(pool, table).await;
                let t = Instant::now();
                insert_rows(pool, table, d, |i| (d.emails[i].clone(), d.ssns[i].clone())).await;
                let insert_s = secs(t.elapsed());
                let mut n = 0usize;
                let t = Instant::now();
                pages(pool, table, async |p| { n += p.len(); }).await;
                let select_s = secs(t.elapsed());
                assert_eq!(n, d.ids.len());
                Run { insert_s, select_cold_s: select_s, select_warm_s: select_s, bytes_per_value: 64.0 }
            }

            pub async fn envelope(
                pool: &$pool,
                d: &Data,
                env: &Envelope,
                cold: &Envelope,
                between: &mut dyn FnMut(),
            ) -> Run {
                let table = "bench_enc";
                setup(pool, table).await;
                let rows: Vec<RowId> = d.ids.iter().map(|i| RowId::from(*i)).collect();
                let t = Instant::now();
                // Seal a batch ahead of each statement, as an application would.
                let mut sealed: Vec<(Sealed, Sealed)> = Vec::with_capacity(d.ids.len());
                for chunk in d.ids.chunks(BATCH) {
                    for id in chunk {
                        let i = (*id - 1) as usize;
                        let e = env.seal(&Context::new(table, "email", &rows[i]), &d.emails[i]).await.unwrap();
                        let s = env.seal(&Context::new(table, "ssn", &rows[i]), &d.ssns[i]).await.unwrap();
                        sealed.push((e, s));
                    }
                }
                insert_rows(pool, table, d, |i| (sealed[i].0.clone(), sealed[i].1.clone())).await;
                let insert_s = secs(t.elapsed());
                let bytes = sealed[0].0.len() as f64;
                drop(sealed);

                let select = async |reader: &Envelope| {
                    let t = Instant::now();
                    let mut n = 0usize;
                    pages(pool, table, async |p| {
                        let rids: Vec<RowId> = p.iter().map(|r| RowId::from(r.0)).collect();
                        let mut items = Vec::with_capacity(p.len() * 2);
                        for (r, row) in p.iter().zip(&rids) {
                            items.push((Context::new(table, "email", row), r.1.as_slice()));
                            items.push((Context::new(table, "ssn", row), r.2.as_slice()));
                        }
                        let opened = reader.open_many(&items).await.unwrap();
                        assert_eq!(&opened[0][..8], &((p[0].0 - 1) as u64).to_be_bytes());
                        n += p.len();
                    })
                    .await;
                    assert_eq!(n, d.ids.len());
                    secs(t.elapsed())
                };
                let select_cold_s = select(cold).await;
                between();
                let select_warm_s = select(cold).await;
                Run { insert_s, select_cold_s, select_warm_s, bytes_per_value: bytes }
            }

            pub async fn store(pool: &$pool) -> $store {
                let s = <$store>::new(pool.clone());
                s.migrate().await.unwrap();
                s
            }
        }
    };
}

driver!(
    pg,
    sqlx::Postgres,
    sqlx::PgPool,
    PgKeyStore,
    "BYTEA",
    "$1",
    "$2"
);
driver!(
    my,
    sqlx::MySql,
    sqlx::MySqlPool,
    MySqlKeyStore,
    "LONGBLOB",
    "?",
    "?"
);
driver!(
    lite,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    SqliteKeyStore,
    "BLOB",
    "?",
    "?"
);

async fn pgcrypto(pool: &sqlx::PgPool, d: &Data) -> Run {
    let table = "bench_pgcrypto";
    pg::setup(pool, table).await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        .execute(pool)
        .await
        .unwrap();
    let t = Instant::now();
    for chunk in d.ids.chunks(BATCH) {
        let mut tx = pool.begin().await.unwrap();
        let mut qb = QueryBuilder::<sqlx::Postgres>::new(format!(
            "INSERT INTO {table} (id, name, age, email, ssn) "
        ));
        qb.push_values(chunk, |mut b, id| {
            let i = (*id - 1) as usize;
            b.push_bind(*id)
                .push_bind(format!("person {id}"))
                .push_bind((*id % 90) as i32)
                .push("pgp_sym_encrypt_bytea(")
                .push_bind_unseparated(d.emails[i].clone())
                .push_unseparated(", ")
                .push_bind_unseparated(PASSPHRASE)
                .push_unseparated(")")
                .push("pgp_sym_encrypt_bytea(")
                .push_bind_unseparated(d.ssns[i].clone())
                .push_unseparated(", ")
                .push_bind_unseparated(PASSPHRASE)
                .push_unseparated(")");
        });
        qb.build().execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    let insert_s = secs(t.elapsed());
    let bytes: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT length(email) FROM {table} WHERE id = 1"
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    let t = Instant::now();
    let mut last = 0_i64;
    let mut n = 0;
    let sql = format!(
        "SELECT id, pgp_sym_decrypt_bytea(email, $3), pgp_sym_decrypt_bytea(ssn, $3) FROM {table} WHERE id > $1 ORDER BY id LIMIT $2"
    );
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(last)
            .bind(BATCH as i64)
            .bind(PASSPHRASE)
            .fetch_all(pool)
            .await
            .unwrap();
        if rows.is_empty() {
            break;
        }
        n += rows.len();
        last = rows.last().unwrap().get(0);
    }
    assert_eq!(n, d.ids.len());
    let s = secs(t.elapsed());
    Run {
        insert_s,
        select_cold_s: s,
        select_warm_s: s,
        bytes_per_value: bytes as f64,
    }
}

fn envelopes(
    store: std::sync::Arc<dyn KeyStore>,
    keyring: std::sync::Arc<dyn Keyring>,
) -> (Envelope, Envelope) {
    let mk = || {
        Envelope::builder()
            .keyring_arc(keyring.clone())
            .store_arc(store.clone())
            .limits(CacheLimits::default().max_uses(10_000))
            .build()
            .unwrap()
    };
    (mk(), mk())
}

fn ratio(a: f64, b: f64) -> f64 {
    // Throughput ratio a/b given durations: (rows/a_s) / (rows/b_s) = b_s / a_s.
    b / a
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let d = data(n);
    let keyring: std::sync::Arc<dyn Keyring> =
        std::sync::Arc::new(LocalKeyring::new("bench/1", KeyMaterial::generate()).unwrap());
    let pg_url = std::env::var("SQLX_ENVELOPE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sqlx_envelope_test".into());
    let my_url = std::env::var("SQLX_ENVELOPE_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/sqlx_envelope_test".into());
    let mut report = serde_json::Map::new();
    report.insert("rows".into(), json!(n));
    report.insert("fields_per_row".into(), json!(2));
    report.insert("field_bytes".into(), json!(64));
    report.insert("batch_rows".into(), json!(BATCH));
    let mut table = Vec::new();

    // PostgreSQL: plaintext, envelope, pgcrypto.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&pg_url)
        .await
        .expect("PostgreSQL is required (scripts/bench.sh starts it)");
    let (env, cold) = envelopes(std::sync::Arc::new(pg::store(&pool).await), keyring.clone());
    let plain = pg::plaintext(&pool, &d).await;
    let enc = pg::envelope(&pool, &d, &env, &cold, &mut || ()).await;
    let pgc = pgcrypto(&pool, &d).await;
    let (ws, cs) = (env.stats(), cold.stats());
    report.insert("postgres".into(), json!({
        "plaintext": plain.json(n), "envelope": enc.json(n), "pgcrypto": pgc.json(n),
        "ratios": {
            "insert_envelope_over_plaintext": ratio(enc.insert_s, plain.insert_s),
            "select_warm_envelope_over_plaintext": ratio(enc.select_warm_s, plain.select_warm_s),
            "select_cold_envelope_over_plaintext": ratio(enc.select_cold_s, plain.select_cold_s),
            "insert_envelope_over_pgcrypto": ratio(enc.insert_s, pgc.insert_s),
            "select_warm_envelope_over_pgcrypto": ratio(enc.select_warm_s, pgc.select_warm_s),
        },
        "keyring_calls": {"generate_data_key": ws.keyring_generate_calls, "decrypt_cold": cs.keyring_unwrap_calls,
                          "values_written": 2 * n, "max_uses": 10_000,
                          "generate_bound_ceil_values_over_max_uses": (2 * n).div_ceil(10_000)},
    }));
    table.push(("postgres", plain, enc, Some(pgc)));

    // KMS cost, through the real aws-sdk-kms client against the local endpoint.
    let kms = if std::env::var_os(moto::MOTO_VAR).is_some() {
        let moto = moto::Moto::start();
        let client = moto.client("us-east-1");
        let key = moto.create_key(&client).await;
        let kr = sqlx_envelope::keyring::kms::KmsKeyring::builder()
            .client(client)
            .key(&key)
            .build()
            .await
            .unwrap();
        let (env, cold) = envelopes(
            std::sync::Arc::new(pg::store(&pool).await),
            std::sync::Arc::new(kr.clone()),
        );
        let before = kr.metrics();
        let mut after_cold = None;
        let run = pg::envelope(&pool, &d, &env, &cold, &mut || {
            after_cold = Some(kr.metrics())
        })
        .await;
        let (c, w) = (after_cold.unwrap(), kr.metrics());
        json!({
            "endpoint": "moto (local, loopback)",
            "values_written": 2 * n, "max_uses": 10_000,
            "generate_data_key_calls": c.generate_data_key_calls - before.generate_data_key_calls,
            "decrypt_calls_cold_read": c.decrypt_calls - before.decrypt_calls,
            "decrypt_calls_warm_read": w.decrypt_calls - c.decrypt_calls,
            "distinct_data_keys": cold.stats().keyring_unwrap_calls,
            "max_decrypts_in_flight": w.max_in_flight,
            "throughput": run.json(n),
        })
    } else {
        json!({"skipped": "SQLX_ENVELOPE_MOTO_SERVER is not set (scripts/bench.sh sets it)"})
    };
    report.insert("kms".into(), kms);

    // MariaDB and SQLite: plaintext and envelope.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&my_url)
        .await
        .expect("MariaDB is required (scripts/bench.sh starts it)");
    let (env, cold) = envelopes(std::sync::Arc::new(my::store(&pool).await), keyring.clone());
    let plain = my::plaintext(&pool, &d).await;
    let enc = my::envelope(&pool, &d, &env, &cold, &mut || ()).await;
    report.insert("mariadb".into(), json!({
        "plaintext": plain.json(n), "envelope": enc.json(n),
        "ratios": {"insert_envelope_over_plaintext": ratio(enc.insert_s, plain.insert_s),
                   "select_warm_envelope_over_plaintext": ratio(enc.select_warm_s, plain.select_warm_s)},
        "keyring_calls": {"generate_data_key": env.stats().keyring_generate_calls, "decrypt_cold": cold.stats().keyring_unwrap_calls},
    }));
    table.push(("mariadb", plain, enc, None));

    let dir = tempfile::tempdir().unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join("bench.db"))
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
        )
        .await
        .unwrap();
    let (env, cold) = envelopes(
        std::sync::Arc::new(lite::store(&pool).await),
        keyring.clone(),
    );
    let plain = lite::plaintext(&pool, &d).await;
    let enc = lite::envelope(&pool, &d, &env, &cold, &mut || ()).await;
    report.insert("sqlite".into(), json!({
        "plaintext": plain.json(n), "envelope": enc.json(n),
        "ratios": {"insert_envelope_over_plaintext": ratio(enc.insert_s, plain.insert_s),
                   "select_warm_envelope_over_plaintext": ratio(enc.select_warm_s, plain.select_warm_s)},
        "keyring_calls": {"generate_data_key": env.stats().keyring_generate_calls, "decrypt_cold": cold.stats().keyring_unwrap_calls},
    }));
    table.push(("sqlite", plain, enc, None));

    report.insert(
        "units".into(),
        json!({"seconds": "s", "rows_per_second": "rows/s", "stored_bytes_per_value": "bytes"}),
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();

    println!("\n{n} rows x 2 fields of 64 B, batches of {BATCH}");
    println!(
        "{:<9} {:<10} {:>12} {:>14} {:>14} {:>8}",
        "db", "variant", "insert r/s", "select cold", "select warm", "bytes"
    );
    for (db, plain, enc, pgc) in &table {
        for (name, r) in [
            ("plaintext", Some(plain)),
            ("envelope", Some(enc)),
            ("pgcrypto", pgc.as_ref()),
        ] {
            if let Some(r) = r {
                println!(
                    "{db:<9} {name:<10} {:>12.0} {:>14.0} {:>14.0} {:>8.0}",
                    n as f64 / r.insert_s,
                    n as f64 / r.select_cold_s,
                    n as f64 / r.select_warm_s,
                    r.bytes_per_value
                );
            }
        }
    }
    println!("report: {}", out.join("report.json").display());
}
