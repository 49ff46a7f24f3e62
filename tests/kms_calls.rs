//! How many KMS calls the caches leave, against moto over HTTP, and the
//! latency of single calls (printed, not asserted).
#![cfg(feature = "aws-kms")]

mod support;

use std::time::{Duration, Instant};

use sqlx_envelope::keyring::kms::KmsKeyring;
use sqlx_envelope::{CacheLimits, Context, Envelope, KeyContext, KeyId, Keyring, RowId};
use support::moto::Moto;
use support::{Db, Kind, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_values_need_ten_generate_and_k_concurrent_decrypts() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let key = moto.create_key(&client).await;
    let kr = KmsKeyring::builder()
        .client(client.clone())
        .key(&key)
        .build()
        .await
        .unwrap();
    let db = Db::connect(Kind::Sqlite).await;
    let Db::Sqlite(pool, _) = &db else {
        unreachable!()
    };
    let table = unique("kms_calls");
    db.create_blob_table(&table, &["secret"]).await;

    // Write 10,000 values with max_uses 1,000.
    let writer = Envelope::builder()
        .keyring(kr.clone())
        .store_arc(db.key_store())
        .limits(CacheLimits::default().max_uses(1_000))
        .build()
        .unwrap();
    // Seal first, then insert in one transaction (SQLite has one writer, and
    // minting a data key writes to the key table).
    let mut sealed = Vec::with_capacity(10_000);
    for id in 1..=10_000_i64 {
        let row = RowId::from(id);
        sealed.push(
            writer
                .seal(
                    &Context::new(&table, "secret", &row),
                    format!("value {id}").as_bytes(),
                )
                .await
                .unwrap(),
        );
    }
    let insert = format!("INSERT INTO {table} (id, secret) VALUES (?, ?)");
    let mut tx = pool.begin().await.unwrap();
    for (id, value) in (1..=10_000_i64).zip(&sealed) {
        sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(id)
            .bind(value.as_bytes())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let gdk = kr.metrics().generate_data_key_calls;
    assert!(gdk <= 10, "{gdk} GenerateDataKey calls for 10,000 values");
    assert_eq!(writer.stats().keyring_generate_calls, gdk);
    let k = writer.keys().await.unwrap().len() as u64;
    assert_eq!(k, gdk);

    // Read them back cold: a fresh envelope and keyring (own counters).
    let cold_kr = KmsKeyring::builder()
        .client(client)
        .key(&key)
        .build()
        .await
        .unwrap();
    let reader = Envelope::builder()
        .keyring(cold_kr.clone())
        .store_arc(db.key_store())
        .build()
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, secret FROM {table} ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 10_000);
    let ids: Vec<RowId> = rows.iter().map(|(id, _)| RowId::from(*id)).collect();
    let items: Vec<(Context<'_>, &[u8])> = rows
        .iter()
        .zip(&ids)
        .map(|((_, v), row)| (Context::new(&table, "secret", row), v.as_slice()))
        .collect();
    let opened = reader.open_many(&items).await.unwrap();
    for ((id, _), pt) in rows.iter().zip(&opened) {
        assert_eq!(pt.as_bytes(), format!("value {id}").as_bytes());
    }
    let m = cold_kr.metrics();
    assert_eq!(m.decrypt_calls, k, "one Decrypt per data key");
    assert!(
        m.max_in_flight > 1,
        "Decrypt calls were not concurrent: max in flight {}",
        m.max_in_flight
    );
    println!(
        "10,000 values: {gdk} GenerateDataKey; cold open_many: {} Decrypt, max {} in flight",
        m.decrypt_calls, m.max_in_flight
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
