//! End-to-end benchmark: encrypted columns against plaintext columns (and
//! against pgcrypto), on the local databases, in one run with the same batching.
//!
//! `scripts/bench.sh` (or `cargo bench --all-features --bench e2e`). Rows:
//! `BENCH_ROWS` (default 100,000), each with two 64-byte secret fields plus
//! ordinary columns; `BENCH_RUNS` repetitions (default 5) of every variant,
//! interleaved (plaintext, envelope, plaintext, envelope, ...), so a change in
//! machine load hits both. Every figure is reported as the median with its range
//! over the runs, next to the machine's load average (before and after each
//! database), the share of all cores that were busy during each timed part
//! (database server included, from `/proc/stat`) and the CPU features AES-GCM
//! can use; the whole report goes to `target/bench/report.json`. Before each
//! timed part, outside its time, the database is let settle (PostgreSQL
//! `CHECKPOINT` and `VACUUM ANALYZE`, MariaDB `ANALYZE TABLE`, SQLite a WAL
//! checkpoint), so background work left by one variant does not land in the
//! other's time.
//!
//! - insert: multi-row `INSERT`s of `BATCH` rows, one transaction each; the
//!   envelope seals each batch with one `seal_many` first, as an application
//!   writing a page of rows would;
//! - insert, pipelined (envelope only): the same, but page k + 1 is sealed on a
//!   runtime worker while page k is written, as an application writing a
//!   stream of pages can do, by an envelope built with `batch_threads(1)` (the
//!   seal keeps to one core, the database has the other); compared with the
//!   same plaintext insert;
//! - insert, sealed beforehand (envelope only): every page sealed before the
//!   timed part, which then only writes them: what the longer stored values
//!   (37 bytes more per value) cost the database, sealing aside;
//! - sealing alone (envelope only): `seal_many` over every page with no
//!   database work meanwhile, what sealing costs by itself (ns per value);
//! - select: keyset pages of `BATCH` rows; the envelope opens every value of a
//!   page from the bytes the row already holds, consecutive values under one
//!   data key together (`KeySet::open_batch_in_place`, keys resolved once per
//!   page), while the next page is being fetched. The time spent opening and
//!   the time the select waited for it are reported per pass: they tell CPU
//!   shared with the fetch from latency added to it. Timed `SELECT_PASSES`
//!   times per run (each pass after the database settled), the plaintext,
//!   opened and unopened passes alternating pass by pass, so its median and
//!   range are over `BENCH_RUNS` x `SELECT_PASSES` pairs taken within a
//!   second of each other;
//! - select, unopened (envelope only): the same pages fetched and not opened,
//!   what the longer stored values cost the select, opening aside (the
//!   select's counterpart of "sealed beforehand");
//! - insert and select, stock AES-GCM (a reference, not the envelope): the
//!   same insert into a table of the same shape, every value sealed by the
//!   `aes-gcm` crate alone (the stored format's layout and length, the same
//!   associated data, a nonce from a counter), page by page on the writing
//!   task; and the same select over that table, every value opened by the
//!   `aes-gcm` crate alone, value by value, in the buffer it was fetched
//!   into, on a blocking thread while the next page is fetched, with no key
//!   lookup, cache or header check: what the crate the micro benchmark
//!   compares with costs the insert and the select, in the same runs and
//!   passes.

use std::time::Instant;

use aes_gcm::aead::{AeadInOut, Generate};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use serde_json::{Value, json};
use sqlx::{QueryBuilder, Row as _};
use sqlx_envelope::format::{
    HEADER_LEN, NONCE_LEN, NONCE_OFFSET, OVERHEAD, TAG_LEN, VERSION_V1, write_aad,
};
use sqlx_envelope::store::{KeyStore, MySqlKeyStore, PgKeyStore, SqliteKeyStore};
use sqlx_envelope::{
    CacheLimits, Context, Envelope, KeyId, KeyMaterial, Keyring, LocalKeyring, RowId,
};
use zeroize::Zeroizing;

#[path = "../tests/support/moto.rs"]
#[allow(dead_code)]
mod moto;

mod machine;
use machine::{aes_backend, cpu_features, loadavg, median};

const BATCH: usize = 1_000;
/// Timed passes of the select per run: a pass over 100,000 rows takes a
/// fraction of a second, short enough for one scheduling hiccup to move it by
/// a fifth, so each run times it several times (plaintext and envelope pass
/// by pass, paired for the ratio).
const SELECT_PASSES: usize = 4;
const PASSPHRASE: &str = "bench-passphrase";
/// The reference table (values sealed by the `aes-gcm` crate alone): its
/// name as long as the envelope's table's, so the associated data is as long.
const REF_TABLE: &str = "bench_ref";
/// The key id the reference values' header and associated data carry.
const REF_KEY_ID: u64 = 1;

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

/// Seconds of each run of one variant.
#[derive(Default, Debug, Clone)]
struct Runs {
    insert: Vec<f64>,
    /// Envelope only: page k + 1 sealed while page k is written.
    insert_pipelined: Vec<f64>,
    /// Envelope only: of that, the time spent waiting for a page's seal.
    insert_pipelined_wait: Vec<f64>,
    /// Envelope only: pages sealed before the timed part, which only writes.
    insert_presealed: Vec<f64>,
    /// Envelope only: sealing every page (`seal_many`), no database work.
    seal_only: Vec<f64>,
    /// One entry per select pass ([`SELECT_PASSES`] per run).
    select: Vec<f64>,
    /// Envelope only, per select pass: seconds spent opening pages (on the
    /// blocking thread, beside the fetch of the next page) and seconds the
    /// select waited for an opening to finish.
    select_opening: Vec<f64>,
    select_wait: Vec<f64>,
    /// Envelope only, per select pass: the same pages fetched and not
    /// opened (what the longer stored values cost the select).
    select_fetch_only: Vec<f64>,
    /// Envelope only: the reference insert, every value sealed by the
    /// `aes-gcm` crate alone into a table of the same shape.
    insert_aes_gcm: Vec<f64>,
    /// Envelope only, per select pass: the reference select over that table,
    /// every value opened by the `aes-gcm` crate alone, and the seconds that
    /// opening took.
    select_aes_gcm: Vec<f64>,
    select_aes_gcm_opening: Vec<f64>,
    /// Share of all cores busy during each timed part, by run.
    insert_busy: Vec<f64>,
    insert_pipelined_busy: Vec<f64>,
    insert_presealed_busy: Vec<f64>,
    insert_aes_gcm_busy: Vec<f64>,
    select_busy: Vec<f64>,
    bytes_per_value: f64,
}

fn rate(rows: usize, secs: &[f64]) -> Value {
    let r: Vec<f64> = secs.iter().map(|s| rows as f64 / s).collect();
    json!({
        "median_rows_per_second": median(&r),
        "min_rows_per_second": r.iter().copied().fold(f64::INFINITY, f64::min),
        "max_rows_per_second": r.iter().copied().fold(0.0, f64::max),
        "runs_seconds": secs,
    })
}

impl Runs {
    fn json(&self, rows: usize) -> Value {
        let optional = |v: &[f64]| {
            if v.is_empty() {
                Value::Null
            } else {
                rate(rows, v)
            }
        };
        let busy = |v: &[f64]| if v.is_empty() { Value::Null } else { json!(v) };
        json!({
            "insert": rate(rows, &self.insert),
            "insert_pipelined": optional(&self.insert_pipelined),
            "insert_sealed_beforehand": optional(&self.insert_presealed),
            "insert_pipelined_seconds_waiting_for_seals": self.insert_pipelined_wait,
            "seal_only_seconds": self.seal_only,
            "select": rate(rows, &self.select),
            "select_seconds_opening": self.select_opening,
            "select_seconds_waiting_for_opening": self.select_wait,
            "select_fetch_only": optional(&self.select_fetch_only),
            "insert_stock_aes_gcm": optional(&self.insert_aes_gcm),
            "select_stock_aes_gcm": optional(&self.select_aes_gcm),
            "select_stock_aes_gcm_seconds_opening": self.select_aes_gcm_opening,
            "machine_cpu_busy_share": {
                "insert": busy(&self.insert_busy),
                "insert_pipelined": busy(&self.insert_pipelined_busy),
                "insert_sealed_beforehand": busy(&self.insert_presealed_busy),
                "insert_stock_aes_gcm": busy(&self.insert_aes_gcm_busy),
                "select": busy(&self.select_busy),
            },
            "stored_bytes_per_value": self.bytes_per_value,
        })
    }
}

/// Throughput of `a` relative to `b`: median of the per-run ratios, with range.
fn ratio(a: &[f64], b: &[f64]) -> Value {
    let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
    json!({
        "median": median(&r),
        "min": r.iter().copied().fold(f64::INFINITY, f64::min),
        "max": r.iter().copied().fold(0.0, f64::max),
    })
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, in
/// clock ticks): the database server's work counts too.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The timed part of a run: wall time, and the share of all cores that were
/// busy meanwhile (a figure taken while the machine was saturated, by the
/// workload or by something else, shows as such).
struct Timer {
    start: Instant,
    ticks: (u64, u64),
}

impl Timer {
    fn start() -> Self {
        Timer {
            ticks: cpu_ticks(),
            start: Instant::now(),
        }
    }

    fn stop(self, secs: &mut Vec<f64>, busy: &mut Vec<f64>) {
        secs.push(self.start.elapsed().as_secs_f64());
        let now = cpu_ticks();
        busy.push((now.0 - self.ticks.0) as f64 / (now.1 - self.ticks.1).max(1) as f64);
    }
}

type Page = Vec<(i64, Vec<u8>, Vec<u8>)>;

/// Open every value of a page in place, consecutive values under one data
/// key together (`KeySet::open_batch_in_place`); returns how many rows
/// checked out.
fn open_page(keys: &sqlx_envelope::KeySet, table: &str, page: Page) -> usize {
    let rows: Vec<(i64, RowId)> = page
        .iter()
        .map(|(id, _, _)| (*id, RowId::from(*id)))
        .collect();
    let mut items = Vec::with_capacity(page.len() * 2);
    for ((_, email, ssn), (_, row)) in page.into_iter().zip(&rows) {
        items.push((Context::new(table, "email", row), email));
        items.push((Context::new(table, "ssn", row), ssn));
    }
    let opened = keys.open_batch_in_place(items);
    let mut n = 0;
    for (pair, (id, _)) in opened.chunks(2).zip(&rows) {
        let e = pair[0].as_ref().unwrap();
        let s = pair[1].as_ref().unwrap();
        assert_eq!(&e[..8], &((id - 1) as u64).to_be_bytes());
        assert_eq!(s.len(), 64);
        n += 1;
    }
    n
}

/// A value of the reference table: the stored format's layout and length
/// (version, key id, nonce, ciphertext, tag), sealed by the `aes-gcm` crate
/// alone with the associated data the envelope gives a value of that row and
/// column (the nonce from a counter: a benchmark's shortcut, unique per value).
fn seal_aes_gcm(cipher: &Aes256Gcm, column: &str, id: i64, counter: u64, pt: &[u8]) -> Vec<u8> {
    let row = RowId::from(id);
    let mut aad = Vec::new();
    let ctx = Context::new(REF_TABLE, column, &row);
    write_aad(&mut aad, VERSION_V1, KeyId::new(REF_KEY_ID), &ctx);
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    let mut v = Vec::with_capacity(OVERHEAD + pt.len());
    v.push(VERSION_V1);
    v.extend_from_slice(&REF_KEY_ID.to_be_bytes());
    v.extend_from_slice(&nonce);
    v.extend_from_slice(pt);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), &aad, (&mut v[HEADER_LEN..]).into())
        .unwrap();
    v.extend_from_slice(&tag);
    v
}

/// Open every value of a page of the reference table with the `aes-gcm`
/// crate alone, value by value, each in the buffer it was fetched into, with
/// the associated data the envelope uses (no key lookup, cache or header
/// check); returns how many rows checked out.
fn open_page_aes_gcm(cipher: &Aes256Gcm, page: Page) -> usize {
    let mut aad = Vec::new();
    let mut n = 0;
    for (id, email, ssn) in page {
        let row = RowId::from(id);
        let mut open = |column: &str, mut v: Vec<u8>| -> Zeroizing<Vec<u8>> {
            let ctx = Context::new(REF_TABLE, column, &row);
            write_aad(&mut aad, VERSION_V1, KeyId::new(REF_KEY_ID), &ctx);
            let nonce: [u8; NONCE_LEN] = v[NONCE_OFFSET..HEADER_LEN].try_into().unwrap();
            let end = v.len() - TAG_LEN;
            let tag = aes_gcm::aead::Tag::<Aes256Gcm>::try_from(&v[end..]).unwrap();
            cipher
                .decrypt_inout_detached(
                    &Nonce::from(nonce),
                    &aad,
                    (&mut v[HEADER_LEN..end]).into(),
                    &tag,
                )
                .unwrap();
            v.copy_within(HEADER_LEN..end, 0);
            v.truncate(end - HEADER_LEN);
            Zeroizing::new(v)
        };
        let e = open("email", email);
        let s = open("ssn", ssn);
        assert_eq!(&e[..8], &((id - 1) as u64).to_be_bytes());
        assert_eq!(s.len(), 64);
        n += 1;
    }
    n
}

/// Seal the two values of every row of a page on a runtime worker (from
/// copies of the plaintext, as the plaintext insert copies its values).
fn seal_page(
    env: &Envelope,
    table: &'static str,
    d: &Data,
    chunk: &[i64],
) -> tokio::task::JoinHandle<Vec<(sqlx_envelope::Sealed, sqlx_envelope::Sealed)>> {
    let env = env.clone();
    let owned: Vec<(RowId, Vec<u8>, Vec<u8>)> = chunk
        .iter()
        .map(|id| {
            let i = (*id - 1) as usize;
            (RowId::from(*id), d.emails[i].clone(), d.ssns[i].clone())
        })
        .collect();
    tokio::spawn(async move {
        let mut items = Vec::with_capacity(owned.len() * 2);
        for (row, e, s) in &owned {
            items.push((Context::new(table, "email", row), &e[..]));
            items.push((Context::new(table, "ssn", row), &s[..]));
        }
        let mut it = env.seal_many(&items).await.unwrap().into_iter();
        owned
            .iter()
            .map(|_| (it.next().unwrap(), it.next().unwrap()))
            .collect()
    })
}

macro_rules! driver {
    ($name:ident, $db:ty, $pool:ty, $store:ty, $blob:literal, $ph1:literal, $ph2:literal, [$($settle:literal),*]) => {
        mod $name {
            use super::*;

            /// Before a timed part, outside its time: let the database finish
            /// the background work the previous part left (dirty pages, WAL,
            /// statistics), so that it does not land in this part's time.
            async fn settle(pool: &$pool, table: &str) {
                $(
                    let sql = $settle.replace("{table}", table);
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.unwrap();
                )*
            }

            pub async fn setup(pool: &$pool, table: &str) {
                let drop = format!("DROP TABLE IF EXISTS {table}");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(pool).await.unwrap();
                let create = format!(
                    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, age INT NOT NULL, email {b} NOT NULL, ssn {b} NOT NULL)",
                    b = $blob
                );
                sqlx::query(sqlx::AssertSqlSafe(create)).execute(pool).await.unwrap();
            }

            async fn insert_batch<T>(pool: &$pool, table: &str, chunk: &[i64], cols: Vec<(T, T)>)
            where
                T: for<'q> sqlx::Encode<'q, $db> + sqlx::Type<$db> + Send + 'static,
            {
                let mut tx = pool.begin().await.unwrap();
                let mut qb = QueryBuilder::<$db>::new(format!("INSERT INTO {table} (id, name, age, email, ssn) "));
                qb.push_values(chunk.iter().zip(cols), |mut b, (id, (e, s))| {
                    b.push_bind(*id).push_bind(format!("person {id}")).push_bind((*id % 90) as i32).push_bind(e).push_bind(s);
                });
                qb.build().execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }

            async fn page(pool: &$pool, table: &str, after: i64) -> Page {
                let sql = format!("SELECT id, email, ssn FROM {table} WHERE id > {} ORDER BY id LIMIT {}", $ph1, $ph2);
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(after)
                    .bind(BATCH as i64)
                    .fetch_all(pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get::<i64, _>(0), r.get::<Vec<u8>, _>(1), r.get::<Vec<u8>, _>(2)))
                    .collect()
            }

            /// Fetch every page of `table` (nothing opened), checking that
            /// each value is `len` bytes long; returns how many rows came.
            async fn fetch_pages(pool: &$pool, table: &str, len: usize) -> usize {
                let (mut n, mut after) = (0usize, 0i64);
                loop {
                    let p = page(pool, table, after).await;
                    let Some(last) = p.last() else { break };
                    after = last.0;
                    for (_, e, s) in &p {
                        assert_eq!((e.len(), s.len()), (len, len));
                    }
                    n += p.len();
                }
                n
            }

            /// Insert every row into `table`, new and settled, page by page,
            /// the two values of row `i` (from 0) with id `id` made by
            /// `values(i, id)` on the writing task; the inserts timed.
            async fn timed_insert<T>(
                pool: &$pool,
                table: &str,
                d: &Data,
                values: impl Fn(usize, i64) -> (T, T),
                secs: &mut Vec<f64>,
                busy: &mut Vec<f64>,
            ) where
                T: for<'q> sqlx::Encode<'q, $db> + sqlx::Type<$db> + Send + 'static,
            {
                setup(pool, table).await;
                settle(pool, table).await;
                let t = Timer::start();
                for chunk in d.ids.chunks(BATCH) {
                    let cols = chunk.iter().map(|id| values((*id - 1) as usize, *id)).collect();
                    insert_batch(pool, table, chunk, cols).await;
                }
                t.stop(secs, busy);
            }

            pub async fn plaintext(pool: &$pool, d: &Data, runs: &mut Runs) {
                let values = |i: usize, _| (d.emails[i].clone(), d.ssns[i].clone());
                timed_insert(pool, "bench_plain", d, values, &mut runs.insert, &mut runs.insert_busy).await;
                runs.bytes_per_value = 64.0;
            }

            pub async fn envelope(pool: &$pool, d: &Data, env: &Envelope, one_core: &Envelope, runs: &mut Runs) {
                let table = "bench_enc";
                setup(pool, table).await;
                settle(pool, table).await;
                let rows: Vec<RowId> = d.ids.iter().map(|i| RowId::from(*i)).collect();
                let items_of = |chunk: &[i64]| {
                    let mut items = Vec::with_capacity(chunk.len() * 2);
                    for id in chunk {
                        let i = (*id - 1) as usize;
                        items.push((Context::new(table, "email", &rows[i]), &d.emails[i][..]));
                        items.push((Context::new(table, "ssn", &rows[i]), &d.ssns[i][..]));
                    }
                    items
                };

                // Sealing alone, every page, no database work meanwhile.
                let t = Instant::now();
                for chunk in d.ids.chunks(BATCH) {
                    std::hint::black_box(env.seal_many(&items_of(chunk)).await.unwrap());
                }
                runs.seal_only.push(t.elapsed().as_secs_f64());

                let t = Timer::start();
                let mut bytes = 0.0;
                for chunk in d.ids.chunks(BATCH) {
                    let sealed = env.seal_many(&items_of(chunk)).await.unwrap();
                    bytes = sealed[0].len() as f64;
                    let mut it = sealed.into_iter();
                    let cols = chunk
                        .iter()
                        .map(|_| (it.next().unwrap(), it.next().unwrap()))
                        .collect();
                    insert_batch(pool, table, chunk, cols).await;
                }
                t.stop(&mut runs.insert, &mut runs.insert_busy);
                runs.bytes_per_value = bytes;

                // Pipelined insert into a fresh table: page k + 1 is sealed
                // on a runtime worker while page k is written.
                setup(pool, table).await;
                settle(pool, table).await;
                let t = Timer::start();
                let mut chunks = d.ids.chunks(BATCH);
                let mut next = chunks.next().map(|c| (c, seal_page(one_core, table, d, c)));
                let mut waited = 0.0;
                while let Some((chunk, sealing)) = next.take() {
                    let w = Instant::now();
                    let cols = sealing.await.unwrap();
                    waited += w.elapsed().as_secs_f64();
                    next = chunks.next().map(|c| (c, seal_page(one_core, table, d, c)));
                    insert_batch(pool, table, chunk, cols).await;
                }
                t.stop(&mut runs.insert_pipelined, &mut runs.insert_pipelined_busy);
                runs.insert_pipelined_wait.push(waited);

                // Sealed beforehand: only the writes are timed.
                setup(pool, table).await;
                let mut sealed = Vec::new();
                for chunk in d.ids.chunks(BATCH) {
                    sealed.push(seal_page(env, table, d, chunk).await.unwrap());
                }
                settle(pool, table).await;
                let t = Timer::start();
                for (chunk, cols) in d.ids.chunks(BATCH).zip(sealed) {
                    insert_batch(pool, table, chunk, cols).await;
                }
                t.stop(&mut runs.insert_presealed, &mut runs.insert_presealed_busy);

            }

            /// The select passes of one run, the four variants alternating
            /// pass by pass (forward, then backward: plaintext, opened, stock
            /// AES-GCM, unopened, unopened, stock AES-GCM, opened, plaintext,
            /// ...), so that the passes
            /// a ratio pairs ran within a second of each other, the database
            /// settled before each.
            pub async fn selects(
                pool: &$pool,
                d: &Data,
                env: &Envelope,
                cipher: &std::sync::Arc<Aes256Gcm>,
                plain: &mut Runs,
                enc: &mut Runs,
            ) {
                for pass in 0..SELECT_PASSES {
                    let mut order = [0, 1, 2, 3];
                    if pass % 2 == 1 {
                        order.reverse();
                    }
                    for variant in order {
                        match variant {
                            0 => {
                                settle(pool, "bench_plain").await;
                                let t = Timer::start();
                                let n = fetch_pages(pool, "bench_plain", 64).await;
                                t.stop(&mut plain.select, &mut plain.select_busy);
                                assert_eq!(n, d.ids.len());
                            }
                            1 => select_opened(pool, d, env, enc).await,
                            2 => select_aes_gcm(pool, d, cipher, enc).await,
                            _ => {
                                // The same select, nothing opened: the sealed
                                // values' length alone.
                                settle(pool, "bench_enc").await;
                                let t = Instant::now();
                                let n = fetch_pages(pool, "bench_enc", 64 + sqlx_envelope::format::OVERHEAD).await;
                                enc.select_fetch_only.push(t.elapsed().as_secs_f64());
                                assert_eq!(n, d.ids.len());
                            }
                        }
                    }
                }
            }

            /// One select pass over the envelope's table: page k is opened on
            /// a blocking thread while page k + 1 is fetched.
            async fn select_opened(pool: &$pool, d: &Data, env: &Envelope, runs: &mut Runs) {
                let table = "bench_enc";
                settle(pool, table).await;
                let t = Timer::start();
                let (mut n, mut after) = (0usize, 0i64);
                let (mut opening_secs, mut waited) = (0.0, 0.0);
                let mut opening: Option<tokio::task::JoinHandle<(usize, f64)>> = None;
                loop {
                    let p = page(pool, table, after).await;
                    if let Some(h) = opening.take() {
                        let w = Instant::now();
                        let (rows, secs) = h.await.unwrap();
                        waited += w.elapsed().as_secs_f64();
                        n += rows;
                        opening_secs += secs;
                    }
                    let Some(last) = p.last() else { break };
                    after = last.0;
                    let keys = env
                        .keys_for(p.iter().flat_map(|(_, e, s)| [e.as_slice(), s.as_slice()]))
                        .await
                        .unwrap();
                    opening = Some(tokio::task::spawn_blocking(move || {
                        let t = Instant::now();
                        let rows = open_page(&keys, table, p);
                        (rows, t.elapsed().as_secs_f64())
                    }));
                }
                t.stop(&mut runs.select, &mut runs.select_busy);
                runs.select_opening.push(opening_secs);
                runs.select_wait.push(waited);
                assert_eq!(n, d.ids.len());
            }

            /// The reference table, written: the same rows, each value sealed
            /// by the `aes-gcm` crate alone ([`seal_aes_gcm`]) on the writing
            /// task, page by page, as the envelope's insert seals each page
            /// before writing it. Timed: the insert's reference.
            pub async fn stock_aes_gcm(pool: &$pool, d: &Data, cipher: &Aes256Gcm, runs: &mut Runs) {
                let values = |i: usize, id| {
                    let counter = 2 * i as u64;
                    (
                        seal_aes_gcm(cipher, "email", id, counter, &d.emails[i]),
                        seal_aes_gcm(cipher, "ssn", id, counter + 1, &d.ssns[i]),
                    )
                };
                let (secs, busy) = (&mut runs.insert_aes_gcm, &mut runs.insert_aes_gcm_busy);
                timed_insert(pool, REF_TABLE, d, values, secs, busy).await;
            }

            /// One select pass over the reference table, as
            /// [`select_opened`] over the envelope's: page k opened (by the
            /// `aes-gcm` crate alone) on a blocking thread while page k + 1
            /// is fetched.
            async fn select_aes_gcm(pool: &$pool, d: &Data, cipher: &std::sync::Arc<Aes256Gcm>, runs: &mut Runs) {
                settle(pool, REF_TABLE).await;
                let t = Instant::now();
                let (mut n, mut after, mut opening_secs) = (0usize, 0i64, 0.0);
                let mut opening: Option<tokio::task::JoinHandle<(usize, f64)>> = None;
                loop {
                    let p = page(pool, REF_TABLE, after).await;
                    if let Some(h) = opening.take() {
                        let (rows, secs) = h.await.unwrap();
                        n += rows;
                        opening_secs += secs;
                    }
                    let Some(last) = p.last() else { break };
                    after = last.0;
                    let cipher = cipher.clone();
                    opening = Some(tokio::task::spawn_blocking(move || {
                        let t = Instant::now();
                        let rows = open_page_aes_gcm(&cipher, p);
                        (rows, t.elapsed().as_secs_f64())
                    }));
                }
                runs.select_aes_gcm.push(t.elapsed().as_secs_f64());
                runs.select_aes_gcm_opening.push(opening_secs);
                assert_eq!(n, d.ids.len());
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
    "$2",
    ["CHECKPOINT", "VACUUM ANALYZE {table}"]
);
driver!(
    my,
    sqlx::MySql,
    sqlx::MySqlPool,
    MySqlKeyStore,
    "LONGBLOB",
    "?",
    "?",
    ["ANALYZE TABLE {table}"]
);
driver!(
    lite,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    SqliteKeyStore,
    "BLOB",
    "?",
    "?",
    ["PRAGMA wal_checkpoint(TRUNCATE)", "ANALYZE {table}"]
);

async fn pgcrypto(pool: &sqlx::PgPool, d: &Data) -> Runs {
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
    let insert = t.elapsed().as_secs_f64();
    let bytes: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT length(email) FROM {table} WHERE id = 1"
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    let t = Instant::now();
    let (mut last, mut n) = (0_i64, 0);
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
    Runs {
        insert: vec![insert],
        select: vec![t.elapsed().as_secs_f64()],
        bytes_per_value: f64::from(bytes),
        ..Runs::default()
    }
}

/// A pool on a schema of its own, dropped and created again: every run starts
/// from an empty key store (each run's local master key is new).
async fn pg_pool(url: &str, schema: &str) -> sqlx::PgPool {
    use std::str::FromStr as _;
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("PostgreSQL is required (scripts/bench.sh starts it)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    // pgcrypto's functions stay reachable in public.
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", format!("{schema},public"))]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap()
}

/// A pool on a database of its own, dropped and created again.
async fn mysql_pool(url: &str, database: &str) -> sqlx::MySqlPool {
    use std::str::FromStr as _;
    let admin = sqlx::MySqlPool::connect(url)
        .await
        .expect("MariaDB is required (scripts/bench.sh starts it)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let opts = sqlx::mysql::MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(database);
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap()
}

fn envelope(store: std::sync::Arc<dyn KeyStore>, keyring: std::sync::Arc<dyn Keyring>) -> Envelope {
    envelope_threads(store, keyring, None)
}

/// An envelope whose batches use at most `threads` threads (default: all
/// cores).
fn envelope_threads(
    store: std::sync::Arc<dyn KeyStore>,
    keyring: std::sync::Arc<dyn Keyring>,
    threads: Option<usize>,
) -> Envelope {
    let mut b = Envelope::builder()
        .keyring_arc(keyring)
        .store_arc(store)
        .limits(CacheLimits::default().max_uses(1 << 20));
    if let Some(n) = threads {
        b = b.batch_threads(n);
    }
    b.build().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let reps: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let d = data(n);
    let keyring: std::sync::Arc<dyn Keyring> =
        std::sync::Arc::new(LocalKeyring::new("bench/1", KeyMaterial::generate()).unwrap());
    let pg_url = std::env::var("SQLX_ENVELOPE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sqlx_envelope_test".into());
    let my_url = std::env::var("SQLX_ENVELOPE_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/sqlx_envelope_test".into());
    let mut report = serde_json::Map::new();
    report.insert(
        "setup".into(),
        json!({"rows": n, "fields_per_row": 2, "field_bytes": 64, "batch_rows": BATCH,
               "runs": reps, "select_passes_per_run": SELECT_PASSES, "cpu_features": cpu_features(),
               "aes_backend": aes_backend(), "cpus": std::thread::available_parallelism().map_or(0, |n| n.get())}),
    );
    let mut table: Vec<(&str, Runs, Runs, String)> = Vec::new();

    macro_rules! compare {
        ($name:literal, $m:ident, $pool:expr) => {{
            let load_before = loadavg();
            let store: std::sync::Arc<dyn KeyStore> = std::sync::Arc::new($m::store(&$pool).await);
            let env = envelope(store.clone(), keyring.clone());
            let one_core = envelope_threads(store, keyring.clone(), Some(1));
            let (mut plain, mut enc) = (Runs::default(), Runs::default());
            let cipher = std::sync::Arc::new(Aes256Gcm::new(&aes_gcm::Key::<Aes256Gcm>::generate()));
            for _ in 0..reps {
                $m::plaintext(&$pool, &d, &mut plain).await;
                $m::envelope(&$pool, &d, &env, &one_core, &mut enc).await;
                $m::stock_aes_gcm(&$pool, &d, &cipher, &mut enc).await;
                $m::selects(&$pool, &d, &env, &cipher, &mut plain, &mut enc).await;
            }
            let load = format!("{load_before} -> {}", loadavg());
            report.insert($name.into(), json!({
                "load_average_before_after": load,
                "plaintext": plain.json(n), "envelope": enc.json(n),
                "envelope_over_plaintext": {
                    "insert": ratio(&enc.insert, &plain.insert),
                    "insert_pipelined": ratio(&enc.insert_pipelined, &plain.insert),
                    "insert_sealed_beforehand": ratio(&enc.insert_presealed, &plain.insert),
                    "select": ratio(&enc.select, &plain.select),
                    "select_fetch_only": ratio(&enc.select_fetch_only, &plain.select),
                },
                "stock_aes_gcm_over_plaintext": {
                    "insert": ratio(&enc.insert_aes_gcm, &plain.insert),
                    "select": ratio(&enc.select_aes_gcm, &plain.select),
                },
                // Both envelopes: the pipelined one mints its own data keys.
                "keyring_calls": {"generate": env.stats().keyring_generate_calls + one_core.stats().keyring_generate_calls,
                                  "unwrap": env.stats().keyring_unwrap_calls + one_core.stats().keyring_unwrap_calls,
                                  "data_keys_minted": env.stats().data_keys_minted + one_core.stats().data_keys_minted},
            }));
            table.push(($name, plain, enc, load));
        }};
    }

    // `BENCH_DB=postgres,sqlite` runs only those databases.
    let only = std::env::var("BENCH_DB").ok();
    let wanted = |db: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == db))
    };
    let mut pgc_runs: Option<Runs> = None;
    if wanted("postgres") {
        let pool = pg_pool(&pg_url, "bench_e2e").await;
        compare!("postgres", pg, pool);
        let pgc = pgcrypto(&pool, &d).await;
        report.insert("postgres_pgcrypto".into(), pgc.json(n));
        pgc_runs = Some(pgc);

        // KMS cost, through the real aws-sdk-kms client against the local endpoint:
        // a cold read of everything the PostgreSQL runs wrote.
        if std::env::var_os(moto::MOTO_VAR).is_some() {
            let moto = moto::Moto::start();
            let client = moto.client("us-east-1");
            let key = moto.create_key(&client).await;
            let kr = sqlx_envelope::keyring::kms::KmsKeyring::builder()
                .client(client)
                .key(&key)
                .build()
                .await
                .unwrap();
            // A key store of its own: the runs above wrapped their branch keys
            // with the local master key.
            let pool = pg_pool(&pg_url, "bench_e2e_kms").await;
            let env = envelope(
                std::sync::Arc::new(pg::store(&pool).await),
                std::sync::Arc::new(kr.clone()),
            );
            let mut runs = Runs::default();
            pg::envelope(&pool, &d, &env, &env, &mut runs).await;
            let cold = envelope(
                std::sync::Arc::new(pg::store(&pool).await),
                std::sync::Arc::new(kr.clone()),
            );
            let before = kr.metrics();
            let rows: Vec<(i64, Vec<u8>, Vec<u8>)> =
                sqlx::query_as("SELECT id, email, ssn FROM bench_enc ORDER BY id")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let keys = cold
                .keys_for(
                    rows.iter()
                        .flat_map(|(_, e, s)| [e.as_slice(), s.as_slice()]),
                )
                .await
                .unwrap();
            assert_eq!(open_page(&keys, "bench_enc", rows), n);
            let after = kr.metrics();
            report.insert(
                "kms".into(),
                json!({
                    "endpoint": "moto (local, loopback)",
                    "values_written": 2 * n,
                    "generate_data_key_calls_writes": env.stats().keyring_generate_calls,
                    "data_keys_minted": env.stats().data_keys_minted,
                    "decrypt_calls_cold_read": after.decrypt_calls - before.decrypt_calls,
                    "distinct_data_keys_cold_read": keys.len(),
                }),
            );
        } else {
            report.insert(
                "kms".into(),
                json!({"not_run": "SQLX_ENVELOPE_MOTO_SERVER is not set (scripts/bench.sh sets it)"}),
            );
        }
    }

    if wanted("mariadb") {
        let pool = mysql_pool(&my_url, "sqlx_envelope_bench_e2e").await;
        compare!("mariadb", my, pool);
    }

    if wanted("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join("bench.db"))
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
            )
            .await
            .unwrap();
        compare!("sqlite", lite, pool);
    }

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();

    println!(
        "\n{n} rows x 2 fields of 64 B, batches of {BATCH}, {reps} interleaved runs ({SELECT_PASSES} select passes each); CPU: {}; aes backend: {}",
        cpu_features().join(" "),
        aes_backend()
    );
    println!(
        "{:<9} {:<19} {:>24} {:>24} {:>14} {:>14}",
        "db",
        "variant",
        "insert rows/s (range)",
        "select rows/s (range)",
        "insert ratio",
        "select ratio"
    );
    let fmt = |rows: usize, s: &[f64]| {
        let r: Vec<f64> = s.iter().map(|s| rows as f64 / s).collect();
        format!(
            "{:.0} ({:.0}-{:.0})",
            median(&r),
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(0.0, f64::max)
        )
    };
    for (db, plain, enc, load) in &table {
        let rs = |a: &[f64], b: &[f64]| {
            let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
            format!(
                "{:.0}% ({:.0}-{:.0})",
                100.0 * median(&r),
                100.0 * r.iter().copied().fold(f64::INFINITY, f64::min),
                100.0 * r.iter().copied().fold(0.0, f64::max)
            )
        };
        // One variant: rows/s (range) and the ratio to plaintext, insert
        // then select; blank where the variant has no such part.
        let row = |label: &str, insert: &[f64], select: &[f64], note: &str| {
            let cell = |v: &[f64]| {
                if v.is_empty() {
                    String::new()
                } else {
                    fmt(n, v)
                }
            };
            let ratio = |v: &[f64], base: &[f64]| {
                if v.is_empty() || std::ptr::eq(v, base) {
                    String::new()
                } else {
                    rs(v, base)
                }
            };
            println!(
                "{db:<9} {label:<19} {:>24} {:>24} {:>14} {:>14}{note}",
                cell(insert),
                cell(select),
                ratio(insert, &plain.insert),
                ratio(select, &plain.select)
            );
        };
        row("plaintext", &plain.insert, &plain.select, "");
        row("envelope", &enc.insert, &enc.select, "");
        row("envelope, unopened", &[], &enc.select_fetch_only, "");
        let opening = format!(
            "   opening: {:.1} ms per pass (median)",
            1000.0 * median(&enc.select_aes_gcm_opening)
        );
        row(
            "stock aes-gcm",
            &enc.insert_aes_gcm,
            &enc.select_aes_gcm,
            &opening,
        );
        let waiting = format!(
            "   waiting for seals: {:.1} ms (median)",
            1000.0 * median(&enc.insert_pipelined_wait)
        );
        row("envelope, pipelined", &enc.insert_pipelined, &[], &waiting);
        let seal_only = format!(
            "   sealing alone: {:.1} ms, {:.0} ns per value (median)",
            1000.0 * median(&enc.seal_only),
            1e9 * median(&enc.seal_only) / (2 * n) as f64
        );
        row(
            "envelope, presealed",
            &enc.insert_presealed,
            &[],
            &seal_only,
        );
        println!(
            "{db:<9} select: opening {:.1} ms per pass beside the fetch of the next page, waited for {:.1} ms of it (medians); plaintext select {:.1} ms per pass",
            1000.0 * median(&enc.select_opening),
            1000.0 * median(&enc.select_wait),
            1000.0 * median(&plain.select),
        );
        let pct = |v: &[f64]| format!("{:.0}%", 100.0 * median(v));
        println!(
            "{db:<9} load average {load}; all cores busy (median): plaintext insert {} select {}, envelope insert {} pipelined {} select {}",
            pct(&plain.insert_busy),
            pct(&plain.select_busy),
            pct(&enc.insert_busy),
            pct(&enc.insert_pipelined_busy),
            pct(&enc.select_busy)
        );
    }
    if let Some(pgc) = &pgc_runs {
        println!(
            "postgres  pgcrypto   insert {:.0} rows/s, select {:.0} rows/s, {} bytes per 64-byte value (one run)",
            n as f64 / pgc.insert[0],
            n as f64 / pgc.select[0],
            pgc.bytes_per_value
        );
    }
    println!("report: {}", out.join("report.json").display());
}
