//! How many KMS calls the key tree and the caches leave, against moto over
//! HTTP, and the latency of single calls (printed, not asserted).
#![cfg(feature = "aws-kms")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx_envelope::keyring::kms::KmsKeyring;
use sqlx_envelope::store::{KeyFilter, KeyStore, SqliteKeyStore};
use sqlx_envelope::{
    Context, Envelope, KeyContext, KeyId, KeyKind, Keyring, ManualClock, RowId, Sealed,
};
use support::moto::Moto;
use support::{Db, Kind, unique};

/// Issue 11's measurement: four processes (four envelopes over one key store,
/// each with its own caches) write to two scopes every simulated hour
/// for seven simulated days with the default limits (max age 5 min: a new data
/// key per process and scope at every write), under a `ManualClock` shared by
/// the envelopes and the store; then a cold process reads every row.
///
/// Before branch keys, every data key was one GenerateDataKey and, on a cold
/// read, one Decrypt: the "before" figures are the data-key counts of this
/// same run. After, KMS sees branch keys only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_days_of_four_processes_cost_kms_calls_per_branch_key() {
    const STEPS: i64 = 7 * 24;
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let key = moto.create_key(&client).await;
    let kms = |client: aws_sdk_kms::Client| {
        let key = key.clone();
        async move {
            KmsKeyring::builder()
                .client(client)
                .key(&key)
                .build()
                .await
                .unwrap()
        }
    };
    let writers_kr = kms(client.clone()).await;
    let db = Db::connect(Kind::Sqlite).await;
    let Db::Sqlite(pool, _) = &db else {
        unreachable!()
    };
    let clock = ManualClock::new();
    let store: Arc<dyn KeyStore> =
        Arc::new(SqliteKeyStore::new(pool.clone()).with_clock(clock.clone()));
    let scopes = [unique("kms_week_a"), unique("kms_week_b")];
    for t in &scopes {
        db.create_blob_table(t, &["secret"]).await;
    }
    let processes: Vec<Envelope> = (0..4)
        .map(|_| {
            Envelope::builder()
                .keyring(writers_kr.clone())
                .store_arc(store.clone())
                .clock(clock.clone())
                .build()
                .unwrap()
        })
        .collect();

    let mut rows: Vec<(usize, i64, Sealed)> = Vec::new();
    for step in 0..STEPS {
        clock.advance(Duration::from_secs(3600));
        for (p, env) in processes.iter().enumerate() {
            for (s, t) in scopes.iter().enumerate() {
                let id = step * 4 + p as i64;
                let row = RowId::from(id);
                let v = env
                    .seal(&Context::new(t, "secret", &row), &id.to_be_bytes())
                    .await
                    .unwrap();
                rows.push((s, id, v));
            }
        }
    }
    for (s, t) in scopes.iter().enumerate() {
        let insert = format!("INSERT INTO {t} (id, secret) VALUES (?, ?)");
        let mut tx = pool.begin().await.unwrap();
        for (_, id, v) in rows.iter().filter(|r| r.0 == s) {
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(*id)
                .bind(v.as_bytes())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let data_keys: u64 = processes.iter().map(|e| e.stats().data_keys_minted).sum();
    let branch_keys = store
        .list(&KeyFilter::all().kind(KeyKind::Branch))
        .await
        .unwrap();
    let gdk = writers_kr.metrics().generate_data_key_calls;
    assert_eq!(
        data_keys,
        (STEPS * 4 * 2) as u64,
        "a data key per write (max age)"
    );
    assert_eq!(branch_keys.len(), 2, "one branch key per scope in a week");
    assert!(
        gdk <= branch_keys.len() as u64,
        "{gdk} GenerateDataKey for {} branch keys",
        branch_keys.len()
    );

    // A cold process reads every row.
    let cold_kr = kms(client).await;
    let reader = Envelope::builder()
        .keyring(cold_kr.clone())
        .store_arc(store.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut read = 0;
    let mut touched = std::collections::BTreeSet::new();
    for t in &scopes {
        let stored: Vec<(i64, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, secret FROM {t} ORDER BY id"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        let ids: Vec<RowId> = stored.iter().map(|(id, _)| RowId::from(*id)).collect();
        let items: Vec<(Context<'_>, &[u8])> = stored
            .iter()
            .zip(&ids)
            .map(|((_, v), row)| (Context::new(t, "secret", row), v.as_slice()))
            .collect();
        for ((id, _), pt) in stored.iter().zip(reader.open_many(&items).await.unwrap()) {
            assert_eq!(pt.as_bytes(), &id.to_be_bytes());
        }
        for (_, v) in &stored {
            let k = store
                .get(Sealed::from_bytes(v.clone()).unwrap().key_id())
                .await
                .unwrap()
                .unwrap();
            touched.insert(k.parent.unwrap().parent);
        }
        read += stored.len();
    }
    let decrypts = cold_kr.metrics().decrypt_calls;
    assert_eq!(read as u64, data_keys);
    assert!(
        decrypts <= touched.len() as u64,
        "{decrypts} Decrypt for {} branch keys touched",
        touched.len()
    );
    println!(
        "4 processes x 2 scopes x 7 days (a write every hour): {data_keys} data keys, {} branch keys\n\
         writes:    before {data_keys} GenerateDataKey, after {gdk}\n\
         cold read: before {data_keys} Decrypt, after {decrypts} ({} branch keys touched)",
        branch_keys.len(),
        touched.len()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_call_latency_against_moto() {
    const N: usize = 200;
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let key = moto.create_key(&client).await;
    let kr = KmsKeyring::builder()
        .client(client)
        .key(&key)
        .build()
        .await
        .unwrap();
    let mut gdk = Vec::with_capacity(N);
    let mut dec = Vec::with_capacity(N);
    for i in 0..N {
        let ctx = KeyContext {
            kind: sqlx_envelope::key::KeyKind::Data,
            scope: "bench".into(),
            tenant: None,
            key_id: KeyId::new(i as u64 + 1),
        };
        let t = Instant::now();
        let g = kr.generate(&ctx).await.unwrap();
        gdk.push(t.elapsed());
        let t = Instant::now();
        let m = kr.unwrap(&ctx, &g.wrapped).await.unwrap();
        dec.push(t.elapsed());
        assert_eq!(m.expose(), g.material.expose());
    }
    let m = kr.metrics();
    assert_eq!(
        (m.generate_data_key_calls, m.decrypt_calls, m.failures),
        (N as u64, N as u64, 0)
    );
    gdk.sort();
    dec.sort();
    println!(
        "moto over loopback, {N} sequential calls each: GenerateDataKey p50 {:?} p99 {:?}; Decrypt p50 {:?} p99 {:?}; mean attempt {:.2} ms",
        percentile(&gdk, 0.5),
        percentile(&gdk, 0.99),
        percentile(&dec, 0.5),
        percentile(&dec, 0.99),
        m.total_latency_us as f64 / 1000.0 / (2 * N) as f64,
    );
}
