//! Blind-index benchmark on PostgreSQL, in one run against baselines measured
//! the same way:
//!
//! - **seal**: sealing a page of models with one full-length blind index
//!   against sealing the same page of an identical model without it (the
//!   index's cost per value: the HMAC-SHA256, its key lookup and the
//!   normalisation);
//! - **lookup**: `find_by_email` among `BENCH_LOOKUP_ROWS` rows (default
//!   1,000,000) — index computed, one indexed `SELECT`, the row opened and
//!   checked — against `SELECT ... WHERE email = $1` on an indexed plaintext
//!   column of a table of the same rows.
//!
//! Rounds are interleaved (baseline, indexed, baseline, ...) so a change in
//! machine load hits both; medians with ranges, the load average before and
//! after, and the ratios go to `target/bench/lookup.json`.
//!
//! `scripts/bench.sh` runs it after the end-to-end benchmark, or alone:
//! `cargo bench --features postgres --bench lookup`.

use std::time::Instant;

use serde_json::json;
use sqlx_envelope::store::{KeyStore, PgKeyStore};
use sqlx_envelope::{Encrypted, Envelope, LocalKeyring};

mod machine;
use machine::{aes_backend, cpu_features, loadavg, median};

#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "bench_lookup_members")]
struct Member {
    id: i64,
    #[encrypt(index(column = "email_bidx", normalize = "trim, lowercase", bits = 256))]
    email: String,
}

/// The same model without an index (the seal baseline).
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "bench_lookup_members")]
struct MemberNoIndex {
    id: i64,
    #[encrypt]
    email: String,
}

fn email(i: u64) -> String {
    format!("member{i:08}@example.com")
}

fn summary(v: &[f64]) -> serde_json::Value {
    json!({
        "median": median(v),
        "min": v.iter().copied().fold(f64::INFINITY, f64::min),
        "max": v.iter().copied().fold(0.0, f64::max),
        "runs": v.len(),
    })
}

/// A small deterministic generator (no benchmark-only dependency).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SQLX_ENVELOPE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sqlx_envelope_test".into());
    let rows: u64 = std::env::var("BENCH_LOOKUP_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let lookups: usize = std::env::var("BENCH_LOOKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let store = PgKeyStore::new(pool.clone());
    store.migrate().await?;
    // One master key for every run: the loaded rows (and their index key)
    // are reused by later runs.
    std::fs::create_dir_all("target/bench")?;
    let key_file = std::path::Path::new("target/bench/lookup-master-key.json");
    let keyring = if key_file.exists() {
        LocalKeyring::from_file(key_file)?
    } else {
        LocalKeyring::create_file(key_file, "bench/lookup")?
    };
    let envelope = Envelope::builder().keyring(keyring).store(store).build()?;
    let load_before = loadavg();

    // Seal: a page of 1,000 models, with and without the index, interleaved.
    let page: Vec<Member> = (0..1_000)
        .map(|i| Member {
            id: i,
            email: email(i as u64),
        })
        .collect();
    let page_plain: Vec<MemberNoIndex> = page
        .iter()
        .map(|m| MemberNoIndex {
            id: m.id,
            email: m.email.clone(),
        })
        .collect();
    Member::seal_all(&envelope, &page).await?;
    MemberNoIndex::seal_all(&envelope, &page_plain).await?;
    let (mut seal_base, mut seal_index) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        std::hint::black_box(MemberNoIndex::seal_all(&envelope, &page_plain).await?);
        seal_base.push(t.elapsed().as_nanos() as f64 / page.len() as f64);
        let t = Instant::now();
        std::hint::black_box(Member::seal_all(&envelope, &page).await?);
        seal_index.push(t.elapsed().as_nanos() as f64 / page.len() as f64);
    }
    let seal_extra = median(&seal_index) - median(&seal_base);
    println!(
        "seal, ns per value: without index {:.0}, with one full-length index {:.0} (+{seal_extra:.0} ns)",
        median(&seal_base),
        median(&seal_index)
    );

    // Lookup tables: the same rows encrypted with a blind index, and in
    // plaintext with an ordinary index.
    let have: Option<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN (SELECT COUNT(*) FROM bench_lookup_plain) = (SELECT COUNT(*) FROM bench_lookup_members) \
         THEN (SELECT COUNT(*) FROM bench_lookup_members) END",
    )
    .fetch_one(&pool)
    .await
    .unwrap_or(None);
    if have != Some(rows as i64) {
        println!("loading {rows} rows into bench_lookup_members and bench_lookup_plain ...");
        let started = Instant::now();
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS bench_lookup_members; DROP TABLE IF EXISTS bench_lookup_plain; \
             CREATE TABLE bench_lookup_members (id BIGINT PRIMARY KEY, email BYTEA NOT NULL, email_bidx BYTEA NOT NULL); \
             CREATE TABLE bench_lookup_plain (id BIGINT PRIMARY KEY, email TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let mut batch = Vec::with_capacity(1_000);
        for i in 0..rows {
            batch.push(Member {
                id: i as i64,
                email: email(i),
            });
            if batch.len() == 1_000 || i + 1 == rows {
                Member::insert_all(&envelope, &pool, &batch).await?;
                let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                    "INSERT INTO bench_lookup_plain (id, email) ",
                );
                q.push_values(&batch, |mut b, m| {
                    b.push_bind(m.id).push_bind(m.email.clone());
                });
                q.build().execute(&pool).await?;
                batch.clear();
            }
        }
        sqlx::raw_sql(
            "CREATE INDEX bench_lookup_members_bidx ON bench_lookup_members (email_bidx); \
             CREATE INDEX bench_lookup_plain_email ON bench_lookup_plain (email); \
             ANALYZE bench_lookup_members; ANALYZE bench_lookup_plain",
        )
        .execute(&pool)
        .await?;
        println!("loaded in {:.0?}", started.elapsed());
    } else {
        println!("reusing the {rows} rows loaded by an earlier run");
    }

    // Lookups of random existing e-mails, interleaved; per-lookup latency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let (mut plain, mut blind) = (Vec::new(), Vec::new());
    for n in 0..lookups + 100 {
        let e = email(next(&mut state) % rows);
        let t = Instant::now();
        let found: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, email FROM bench_lookup_plain WHERE email = $1")
                .bind(&e)
                .fetch_all(&pool)
                .await?;
        let p = t.elapsed().as_nanos() as f64 / 1_000.0;
        assert_eq!(found.len(), 1);
        let t = Instant::now();
        let found = Member::find_by_email(&envelope, &pool, &e).await?;
        let b = t.elapsed().as_nanos() as f64 / 1_000.0;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].email, e);
        if n >= 100 {
            // the first 100 warm the connections and caches
            plain.push(p);
            blind.push(b);
        }
    }
    let ratio = median(&blind) / median(&plain);
    println!(
        "lookup among {rows} rows, µs (median of {lookups}): plaintext index {:.0}, blind index {:.0}: {ratio:.2}x",
        median(&plain),
        median(&blind)
    );
    let load_after = loadavg();
    let features = cpu_features();
    println!(
        "load average: before {load_before}, after {load_after}; CPU features: {}; aes backend: {}",
        features.join(" "),
        aes_backend()
    );
    let report = json!({
        "rows": rows,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_features": features,
        "aes_backend": aes_backend(),
        "seal_ns_per_value": {
            "without_index": summary(&seal_base),
            "with_full_length_index": summary(&seal_index),
            "index_extra_ns_median": seal_extra,
        },
        "lookup_us": {
            "plaintext_index": summary(&plain),
            "blind_index": summary(&blind),
            "ratio_of_medians": ratio,
        },
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/lookup.json",
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("wrote target/bench/lookup.json");
    Ok(())
}
