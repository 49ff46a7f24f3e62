//! Micro benchmarks: the envelope against raw AES-256-GCM with the same crate,
//! in the same run.
//!
//! `cargo bench --bench envelope` (release, opt-level 3). Every variant and its
//! baseline run in alternating rounds (so a change in machine load hits both),
//! each round timing enough iterations for about 40 ms. The report gives the
//! median ns per operation with the range over rounds, the ratio to the
//! baseline (median and range of the per-round ratios: each round of a variant
//! against its baseline's sample of the same round), the machine's load
//! average before and after, the CPU features AES-GCM can use and the `aes`
//! crate's backend. It is written to `target/bench/micro.json`.
//! `BENCH_FILTER=seal_open_64` runs only the variants whose name contains it
//! (and their baselines).
//!
//! Baselines: raw AES-256-GCM seal/open with the expanded key reused and a
//! nonce from the operating system (what the envelope does for every value).
//! The nonce source itself is measured too (`getrandom` against a user-space
//! generator), so its share of a seal is visible.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, Generate};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{
    CacheLimits, Context, Encrypted, Envelope, KeyMaterial, LocalKeyring, RowId, format,
};

mod machine;
use machine::{aes_backend, cpu_features, loadavg, median};

const ROUNDS: usize = 15;
const ROUND_TARGET: Duration = Duration::from_millis(40);

type Body<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

struct Variant<'a> {
    name: &'static str,
    baseline: Option<&'static str>,
    body: Body<'a>,
    iters: u64,
    samples: Vec<f64>,
}

fn variant<'a>(
    name: &'static str,
    baseline: Option<&'static str>,
    body: impl FnMut(u64) -> Duration + 'a,
) -> Variant<'a> {
    Variant {
        name,
        baseline,
        body: Box::new(body),
        iters: 0,
        samples: Vec::new(),
    }
}

/// Time `n` calls of `f`.
fn timed(n: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed()
}

fn run(variants: &mut [Variant<'_>]) {
    // Calibrate: iterations per round for ~ROUND_TARGET.
    for v in variants.iter_mut() {
        let mut n = 16;
        loop {
            let d = (v.body)(n);
            if d >= ROUND_TARGET / 4 || n > 1 << 28 {
                v.iters = ((n as f64) * ROUND_TARGET.as_secs_f64() / d.as_secs_f64().max(1e-9))
                    .ceil() as u64;
                break;
            }
            n *= 4;
        }
    }
    for _ in 0..ROUNDS {
        for v in variants.iter_mut() {
            let d = (v.body)(v.iters);
            v.samples.push(d.as_nanos() as f64 / v.iters as f64);
        }
    }
}

fn setup(rt: &tokio::runtime::Runtime, limits: CacheLimits) -> (Envelope, tempfile::TempDir) {
    setup_threads(rt, limits, None)
}

/// [`setup`], with at most `threads` threads per batch (default: the cores).
fn setup_threads(
    rt: &tokio::runtime::Runtime,
    limits: CacheLimits,
    threads: Option<usize>,
) -> (Envelope, tempfile::TempDir) {
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
        let mut builder = Envelope::builder()
            .keyring(LocalKeyring::new("bench/1", KeyMaterial::generate()).unwrap())
            .store(store)
            .limits(limits);
        if let Some(n) = threads {
            builder = builder.batch_threads(n);
        }
        let env = builder.build().unwrap();
        (env, dir)
    })
}

/// [`timed`] for an async body: `n` runs of `f()`, awaited in turn on `rt`.
fn timed_async<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    n: u64,
    mut f: impl FnMut() -> F,
) -> Duration {
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            f().await;
        }
        t.elapsed()
    })
}

/// `n` calls of `env.seal_many(items)`, timed.
fn seal_many_timed(
    rt: &tokio::runtime::Runtime,
    env: &Envelope,
    items: &[(Context<'_>, &[u8])],
    n: u64,
) -> Duration {
    timed_async(rt, n, || async {
        black_box(env.seal_many(items).await.unwrap());
    })
}

fn raw_seal(cipher: &Aes256Gcm, nonce: [u8; 12], pt: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + pt.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(pt);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), b"", (&mut out[12..]).into())
        .unwrap();
    out.extend_from_slice(&tag);
    out
}

fn raw_open(cipher: &Aes256Gcm, v: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let nonce: [u8; 12] = v[..12].try_into().unwrap();
    let end = v.len() - 16;
    let mut buf = zeroize::Zeroizing::new(v[12..end].to_vec());
    let tag = aes_gcm::aead::Tag::<Aes256Gcm>::try_from(&v[end..]).unwrap();
    cipher
        .decrypt_inout_detached(&Nonce::from(nonce), b"", buf.as_mut_slice().into(), &tag)
        .unwrap();
    buf
}

/// The end-to-end page as a model: two encrypted 64-byte fields per row.
#[derive(Encrypted, Clone)]
#[envelope(table = "bench_enc")]
struct Person {
    id: i64,
    #[encrypt]
    email: Vec<u8>,
    #[encrypt]
    ssn: Vec<u8>,
}

fn user_nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    rand::fill(&mut n);
    n
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let load_before = loadavg();
    let (env, _dir) = setup(&rt, CacheLimits::default());
    let cipher = Aes256Gcm::new(&aes_gcm::Key::<Aes256Gcm>::generate());
    let row = RowId::from(123_456_i64);
    let ctx = Context::new("customers", "email", &row);
    let pt64 = [0x61u8; 64];
    let pt16k = vec![0x61u8; 16 * 1024];
    let warm = rt.block_on(env.seal(&ctx, &pt64)).unwrap();
    rt.block_on(env.open(&ctx, &warm)).unwrap();
    let sealed16k = rt.block_on(env.seal(&ctx, &pt16k)).unwrap();
    let raw64 = raw_seal(&cipher, format::random_nonce(), &pt64);
    let raw16k = raw_seal(&cipher, format::random_nonce(), &pt16k);

    // Batch: 10,000 values under 10 data keys.
    let (benv, _bdir) = setup(&rt, CacheLimits::default().max_uses(1_000));
    let rows: Vec<RowId> = (0..10_000_i64).map(RowId::from).collect();
    let items_pt: Vec<(Context<'_>, &[u8])> = rows
        .iter()
        .map(|r| (Context::new("t", "c", r), &pt64[..]))
        .collect();
    let values = rt.block_on(benv.seal_many(&items_pt)).unwrap();
    let items: Vec<(Context<'_>, &[u8])> = rows
        .iter()
        .zip(&values)
        .map(|(r, v)| (Context::new("t", "c", r), v.as_bytes()))
        .collect();
    rt.block_on(benv.open_many(&items)).unwrap();
    let (senv, _sdir) = setup(&rt, CacheLimits::default());
    rt.block_on(senv.seal(&items_pt[0].0, &pt64)).unwrap();
    let (senv1, _sdir1) = setup_threads(&rt, CacheLimits::default(), Some(1));
    rt.block_on(senv1.seal(&items_pt[0].0, &pt64)).unwrap();

    // A page as the end-to-end select reads it: 1,000 rows, two 64-byte
    // fields each, owned bytes as fetched.
    let page_rows: Vec<RowId> = (1..=1_000_i64).map(RowId::from).collect();
    let page_items: Vec<(Context<'_>, &[u8])> = page_rows
        .iter()
        .flat_map(|r| {
            [
                (Context::new("bench_enc", "email", r), &pt64[..]),
                (Context::new("bench_enc", "ssn", r), &pt64[..]),
            ]
        })
        .collect();
    let page: Vec<Vec<u8>> = rt
        .block_on(env.seal_many(&page_items))
        .unwrap()
        .into_iter()
        .map(|s| s.into_bytes())
        .collect();
    let page_keys = rt
        .block_on(env.keys_for(page.iter().map(Vec::as_slice)))
        .unwrap();
    let raw_page: Vec<Vec<u8>> = (0..page.len())
        .map(|_| raw_seal(&cipher, format::random_nonce(), &pt64))
        .collect();
    // The same page as sealed rows of a model, opened by `open_all`.
    let people: Vec<Person> = (1..=1_000_i64)
        .map(|id| Person {
            id,
            email: pt64.to_vec(),
            ssn: pt64.to_vec(),
        })
        .collect();
    let model_page = rt.block_on(Person::seal_all(&env, &people)).unwrap();

    let mut v = vec![
        variant("nonce/getrandom", None, |n| {
            timed(n, || {
                black_box(format::random_nonce());
            })
        }),
        variant("nonce/userspace_rng", Some("nonce/getrandom"), |n| {
            timed(n, || {
                black_box(user_nonce());
            })
        }),
        variant("seal_open_64/raw_aes_gcm", None, |n| {
            timed(n, || {
                let s = raw_seal(&cipher, format::random_nonce(), black_box(&pt64));
                black_box(raw_open(&cipher, &s));
            })
        }),
        variant(
            "seal_open_64/raw_aes_gcm_userspace_nonce",
            Some("seal_open_64/raw_aes_gcm"),
            |n| {
                timed(n, || {
                    let s = raw_seal(&cipher, user_nonce(), black_box(&pt64));
                    black_box(raw_open(&cipher, &s));
                })
            },
        ),
        variant(
            "seal_open_64/envelope_warm_sync",
            Some("seal_open_64/raw_aes_gcm"),
            |n| {
                timed(n, || {
                    let s = env.seal_if_cached(&ctx, black_box(&pt64)).unwrap().unwrap();
                    black_box(env.open_if_cached(&ctx, s.as_bytes()).unwrap().unwrap());
                })
            },
        ),
        variant(
            "seal_open_64/envelope_async",
            Some("seal_open_64/raw_aes_gcm"),
            |n| {
                timed_async(&rt, n, || async {
                    let s = env.seal(&ctx, black_box(&pt64)).await.unwrap();
                    black_box(env.open(&ctx, &s).await.unwrap());
                })
            },
        ),
        variant("seal_64/raw_aes_gcm", None, |n| {
            timed(n, || {
                black_box(raw_seal(&cipher, format::random_nonce(), black_box(&pt64)));
            })
        }),
        variant(
            "seal_64/envelope_warm_sync",
            Some("seal_64/raw_aes_gcm"),
            |n| {
                timed(n, || {
                    black_box(env.seal_if_cached(&ctx, black_box(&pt64)));
                })
            },
        ),
        variant("open_64/raw_aes_gcm", None, |n| {
            timed(n, || {
                black_box(raw_open(&cipher, black_box(&raw64)));
            })
        }),
        variant(
            "open_64/envelope_warm_sync",
            Some("open_64/raw_aes_gcm"),
            |n| {
                timed(n, || {
                    black_box(env.open_if_cached(&ctx, black_box(warm.as_bytes())));
                })
            },
        ),
        variant("seal_16k/raw_aes_gcm", None, |n| {
            timed(n, || {
                black_box(raw_seal(&cipher, format::random_nonce(), black_box(&pt16k)));
            })
        }),
        variant(
            "seal_16k/envelope_warm_sync",
            Some("seal_16k/raw_aes_gcm"),
            |n| {
                timed(n, || {
                    black_box(env.seal_if_cached(&ctx, black_box(&pt16k)));
                })
            },
        ),
        variant("open_16k/raw_aes_gcm", None, |n| {
            timed(n, || {
                black_box(raw_open(&cipher, black_box(&raw16k)));
            })
        }),
        variant(
            "open_16k/envelope_warm_sync",
            Some("open_16k/raw_aes_gcm"),
            |n| {
                timed(n, || {
                    black_box(env.open_if_cached(&ctx, black_box(sealed16k.as_bytes())));
                })
            },
        ),
        variant("batch_10k/open_one_by_one", None, |n| {
            timed(n, || {
                for (c, v) in &items {
                    black_box(benv.open_if_cached(c, v).unwrap().unwrap());
                }
            })
        }),
        variant(
            "batch_10k/open_many",
            Some("batch_10k/open_one_by_one"),
            |n| {
                timed_async(&rt, n, || async {
                    black_box(benv.open_many(&items).await.unwrap());
                })
            },
        ),
        variant("page_2k/raw_aes_gcm_open", None, |n| {
            timed(n, || {
                for v in raw_page.clone() {
                    black_box(raw_open(&cipher, &v));
                }
            })
        }),
        variant(
            "page_2k/open_batch_in_place",
            Some("page_2k/raw_aes_gcm_open"),
            |n| {
                timed(n, || {
                    let items: Vec<(Context<'_>, Vec<u8>)> = page_items
                        .iter()
                        .zip(page.clone())
                        .map(|((c, _), v)| (*c, v))
                        .collect();
                    black_box(page_keys.open_batch_in_place(items));
                })
            },
        ),
        variant(
            "page_2k/model_open_all",
            Some("page_2k/open_batch_in_place"),
            |n| {
                timed_async(&rt, n, || async {
                    black_box(Person::open_all(&env, model_page.clone()).await.unwrap());
                })
            },
        ),
        variant("batch_10k/seal_one_by_one", None, |n| {
            timed(n, || {
                for (c, p) in &items_pt {
                    black_box(senv.seal_if_cached(c, p));
                }
            })
        }),
        variant(
            "batch_10k/seal_many",
            Some("batch_10k/seal_one_by_one"),
            |n| seal_many_timed(&rt, &senv, &items_pt, n),
        ),
        variant(
            "batch_10k/seal_many_one_thread",
            Some("batch_10k/seal_many"),
            |n| seal_many_timed(&rt, &senv1, &items_pt, n),
        ),
        variant("page_2k/seal_many", Some("page_2k/seal_one_by_one"), |n| {
            seal_many_timed(&rt, &senv, &page_items, n)
        }),
        variant("page_2k/seal_one_by_one", None, |n| {
            timed_async(&rt, n, || async {
                for (c, v) in &page_items {
                    black_box(senv.seal(c, v).await.unwrap());
                }
            })
        }),
    ];
    // `BENCH_FILTER=open_64` keeps the variants whose name contains it, with
    // their baselines (for a profiler, or a quick look at one figure).
    if let Ok(f) = std::env::var("BENCH_FILTER") {
        let keep: Vec<&'static str> = v
            .iter()
            .filter(|x| x.name.contains(f.as_str()))
            .flat_map(|x| [Some(x.name), x.baseline])
            .flatten()
            .collect();
        v.retain(|x| keep.contains(&x.name));
    }
    run(&mut v);
    let load_after = loadavg();
    let features = cpu_features();

    // A variant's ratio is taken round by round against its baseline's
    // sample of the same round (the two ran back to back, under the same
    // load): the median of those ratios, with their range.
    let round_ratios = |x: &Variant<'_>| -> Option<Vec<f64>> {
        let b = v.iter().find(|b| Some(b.name) == x.baseline)?;
        Some(
            x.samples
                .iter()
                .zip(&b.samples)
                .map(|(a, b)| a / b)
                .collect(),
        )
    };
    println!(
        "micro benchmarks (release; {ROUNDS} interleaved rounds of ~{} ms each)",
        ROUND_TARGET.as_millis()
    );
    println!("load average before: {load_before}; after: {load_after}");
    println!(
        "CPU features: {}; aes backend: {}",
        features.join(" "),
        aes_backend()
    );
    println!(
        "{:<44} {:>10} {:>20} {:>7} {:>13}",
        "variant", "median ns", "range ns", "ratio", "ratio range"
    );
    let mut json = Vec::new();
    for x in &v {
        let m = median(&x.samples);
        let lo = x.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = x.samples.iter().copied().fold(0.0, f64::max);
        let ratios = round_ratios(x);
        let ratio = ratios.as_deref().map(median);
        let ratio_range = ratios.as_deref().map(|r| {
            (
                r.iter().copied().fold(f64::INFINITY, f64::min),
                r.iter().copied().fold(0.0, f64::max),
            )
        });
        println!(
            "{:<44} {:>10.1} {:>20} {:>7} {:>13}",
            x.name,
            m,
            format!("{lo:.1}-{hi:.1}"),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            ratio_range.map_or("-".to_owned(), |(a, b)| format!("{a:.2}-{b:.2}x")),
        );
        json.push(serde_json::json!({
            "variant": x.name, "median_ns": m, "min_ns": lo, "max_ns": hi,
            "baseline": x.baseline, "ratio": ratio,
            "ratio_min": ratio_range.map(|r| r.0), "ratio_max": ratio_range.map(|r| r.1),
        }));
    }
    let report = serde_json::json!({
        "load_before": load_before, "load_after": load_after,
        "cpu_features": features, "aes_backend": aes_backend(), "rounds": ROUNDS, "results": json,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("micro.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}
