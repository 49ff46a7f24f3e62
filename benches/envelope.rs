//! Micro benchmarks: the envelope against raw AES-256-GCM in the same run.
//!
//! `cargo bench --bench envelope`. Groups:
//! - `seal/{64,1024,16384}`: `raw_aes_gcm` (cipher already expanded, random
//!   nonce, no AAD) vs `envelope_seal` (warm cache: reserve a use, build AAD,
//!   seal, allocate the value);
//! - `open/{...}`: the same for decryption;
//! - `seal_open_64`: one seal plus one open of a 64-byte value, the figure the
//!   4x target is stated against;
//! - `cache_hit`: the encrypt-side cache lookup and use reservation alone;
//! - `aad`: building the associated data;
//! - `open_many_10k`: batch open of 10,000 values under 10 data keys.

use std::hint::black_box;

use aes_gcm::aead::{AeadInOut, Generate};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{
    CacheLimits, Context, Envelope, KeyId, KeyMaterial, LocalKeyring, RowId, format,
};

fn setup(rt: &tokio::runtime::Runtime, limits: CacheLimits) -> (Envelope, tempfile::TempDir) {
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join("bench.db"))
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        let store = SqliteKeyStore::new(pool);
        store.migrate().await.unwrap();
        let env = Envelope::builder()
            .keyring(LocalKeyring::new("bench/1", KeyMaterial::generate()).unwrap())
            .store(store)
            .limits(limits)
            .build()
            .unwrap();
        (env, dir)
    })
}

/// Time `iters` runs of `f` inside one `block_on`, as an application awaiting in
/// a running runtime would (no per-iteration runtime entry cost).
fn in_rt<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> std::time::Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
{
    rt.block_on(async {
        let t = std::time::Instant::now();
        for _ in 0..iters {
            black_box(f().await);
        }
        t.elapsed()
    })
}

fn raw_seal(cipher: &Aes256Gcm, pt: &[u8]) -> Vec<u8> {
    raw_seal_with(cipher, format::random_nonce(), pt)
}

fn raw_seal_with(cipher: &Aes256Gcm, nonce: [u8; 12], pt: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pt.len() + 16);
    out.extend_from_slice(pt);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), b"", (&mut out[..]).into())
        .unwrap();
    out.extend_from_slice(&tag);
    out
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (env, _dir) = setup(&rt, CacheLimits::default());
    let cipher = Aes256Gcm::new(&aes_gcm::Key::<Aes256Gcm>::generate());
    let row = RowId::from(123_456_i64);
    let ctx = Context::new("customers", "email", &row);
    // Warm the caches.
    let warm = rt.block_on(env.seal(&ctx, b"warm")).unwrap();
    rt.block_on(env.open(&ctx, &warm)).unwrap();

    for size in [64usize, 1024, 16384] {
        let pt = vec![0x61u8; size];
        let mut g = c.benchmark_group("seal");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("raw_aes_gcm", size), &pt, |b, pt| {
            b.iter(|| raw_seal(&cipher, black_box(pt)))
        });
        g.bench_with_input(BenchmarkId::new("envelope_seal", size), &pt, |b, pt| {
            b.iter_custom(|n| in_rt(&rt, n, || env.seal(black_box(&ctx), black_box(pt))))
        });
        g.finish();

        let raw = raw_seal_with(&cipher, [7u8; 12], &pt);
        let sealed = rt.block_on(env.seal(&ctx, &pt)).unwrap();
        let mut g = c.benchmark_group("open");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("raw_aes_gcm", size), &raw, |b, raw| {
            b.iter(|| {
                let mut buf = raw[..raw.len() - 16].to_vec();
                let tag =
                    aes_gcm::aead::Tag::<Aes256Gcm>::try_from(&raw[raw.len() - 16..]).unwrap();
                cipher
                    .decrypt_inout_detached(
                        &Nonce::from([7u8; 12]),
                        b"",
                        (&mut buf[..]).into(),
                        &tag,
                    )
                    .unwrap();
                buf
            })
        });
        g.bench_with_input(BenchmarkId::new("envelope_open", size), &sealed, |b, s| {
            b.iter_custom(|n| in_rt(&rt, n, || env.open(black_box(&ctx), black_box(s))))
        });
        g.finish();
    }

    let pt = [0x61u8; 64];
    let mut g = c.benchmark_group("seal_open_64");
    g.bench_function("raw_aes_gcm_seal", |b| {
        b.iter(|| raw_seal(&cipher, black_box(&pt)))
    });
    g.bench_function("envelope_seal_open", |b| {
        b.iter_custom(|n| {
            in_rt(&rt, n, || async {
                let s = env.seal(&ctx, black_box(&pt)).await.unwrap();
                env.open(&ctx, &s).await.unwrap()
            })
        })
    });
    g.finish();

    c.bench_function("cache_hit/seal_empty", |b| {
        b.iter_custom(|n| in_rt(&rt, n, || env.seal(black_box(&ctx), b"")))
    });

    let mut aad = Vec::new();
    c.bench_function("aad/build", |b| {
        b.iter(|| format::write_aad(&mut aad, 1, KeyId::new(42), black_box(&ctx)))
    });

    // Batch open: 10,000 values under 10 data keys, warm cache.
    let (benv, _bdir) = setup(&rt, CacheLimits::default().max_uses(1_000));
    let rows: Vec<RowId> = (0..10_000_i64).map(RowId::from).collect();
    let values: Vec<_> = rows
        .iter()
        .map(|r| {
            rt.block_on(benv.seal(&Context::new("t", "c", r), &pt))
                .unwrap()
        })
        .collect();
    let items: Vec<_> = rows
        .iter()
        .zip(&values)
        .map(|(r, v)| (Context::new("t", "c", r), v.as_bytes()))
        .collect();
    let mut g = c.benchmark_group("open_many_10k");
    g.sample_size(20);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("envelope_open_many", |b| {
        b.iter_custom(|n| in_rt(&rt, n, || benv.open_many(black_box(&items))))
    });
    g.finish();
}

criterion_group!(envelope, benches);
criterion_main!(envelope);
