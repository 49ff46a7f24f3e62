//! Two moto servers as two regions behind a MultiKeyring: failover when the
//! first region is killed or frozen, and the outage policy when both are down
//! (cached keys keep serving within their limits and the bounded grace, then
//! everything fails closed with the typed unavailable error, within the
//! configured timeouts).
#![cfg(feature = "aws-kms")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx_envelope::keyring::kms::{KmsConfig, KmsKeyring};
use sqlx_envelope::{
    CacheLimits, Context, Envelope, Error, KeyState, Keyring, ManualClock, MultiKeyring, RowId,
    Sealed,
};
use support::moto::Moto;
use support::{Db, Kind, unique};

/// Tight timeouts so the test is quick: 300 ms per attempt, 800 ms per
/// operation, 2 attempts.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(800);

fn config() -> KmsConfig {
    KmsConfig::default()
        .attempt_timeout(Duration::from_millis(300))
        .operation_timeout(OPERATION_TIMEOUT)
        .connect_timeout(Duration::from_millis(200))
        .max_attempts(2)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
}

struct Regions {
    east: Moto,
    west: Moto,
    kr_east: KmsKeyring,
    kr_west: KmsKeyring,
    multi: Arc<MultiKeyring>,
    db: Db,
    table: String,
}

async fn start_two_regions() -> (Moto, Moto) {
    let east = tokio::task::spawn_blocking(Moto::start);
    let west = tokio::task::spawn_blocking(Moto::start);
    (east.await.unwrap(), west.await.unwrap())
}

async fn regions() -> Regions {
    let (east, west) = start_two_regions().await;
    let ce = east.client("us-east-1");
    let cw = west.client("eu-west-1");
    let ke = east.create_key(&ce).await;
    let kw = west.create_key(&cw).await;
    let kr_east = KmsKeyring::builder()
        .client(ce)
        .key(ke)
        .config(config())
        .build()
        .await
        .unwrap();
    let kr_west = KmsKeyring::builder()
        .client(cw)
        .key(kw)
        .config(config())
        .build()
        .await
        .unwrap();
    assert_eq!(kr_west.region(), "eu-west-1");
    let multi = Arc::new(
        MultiKeyring::new(vec![Arc::new(kr_east.clone()), Arc::new(kr_west.clone())]).unwrap(),
    );
    let db = Db::connect(Kind::Sqlite).await;
    let table = unique("kms_fo");
    db.create_blob_table(&table, &["secret"]).await;
    Regions {
        east,
        west,
        kr_east,
        kr_west,
        multi,
        db,
        table,
    }
}

impl Regions {
    fn envelope(&self, limits: CacheLimits, clock: Option<ManualClock>) -> Envelope {
        let b = Envelope::builder()
            .keyring_arc(self.multi.clone())
            .store_arc(self.db.key_store())
            .limits(limits);
        match clock {
            Some(c) => b.clock(c),
            None => b,
        }
        .build()
        .unwrap()
    }

    /// Seal and store rows `ids`; returns the sealed values.
    async fn write(
        &self,
        env: &Envelope,
        ids: std::ops::RangeInclusive<i64>,
    ) -> Vec<(i64, Sealed)> {
        let mut out = Vec::new();
        for id in ids {
            let row = RowId::from(id);
            let sealed = env
                .seal(
                    &Context::new(&self.table, "secret", &row),
                    &id.to_be_bytes(),
                )
                .await
                .expect("seal while both regions are up");
            self.db.put_sealed(&self.table, "secret", id, &sealed).await;
            out.push((id, sealed));
        }
        out
    }
}

async fn open_all(
    env: &Envelope,
    table: &str,
    rows: &[(i64, Sealed)],
) -> sqlx_envelope::Result<()> {
    let ids: Vec<RowId> = rows.iter().map(|(id, _)| RowId::from(*id)).collect();
    let items: Vec<(Context<'_>, &[u8])> = rows
        .iter()
        .zip(&ids)
        .map(|((_, s), row)| (Context::new(table, "secret", row), s.as_bytes()))
        .collect();
    let out = env.open_many(&items).await?;
    for ((id, _), pt) in rows.iter().zip(out) {
        assert_eq!(pt.as_bytes(), &id.to_be_bytes());
    }
    Ok(())
}

fn distinct_keys(rows: &[(i64, Sealed)]) -> u64 {
    let mut ids: Vec<_> = rows.iter().map(|(_, s)| s.key_id()).collect();
    ids.sort();
    ids.dedup();
    ids.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_key_is_wrapped_in_both_regions() {
    let r = regions().await;
    let env = r.envelope(CacheLimits::default().max_uses(5), None);
    r.write(&env, 1..=10).await;
    let keys = env.keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    for k in &keys {
        let masters: Vec<_> = k.wrapped.iter().map(|w| w.master_key.clone()).collect();
        let mut want = r.multi.master_keys();
        want.sort();
        let mut got = masters.clone();
        got.sort();
        assert_eq!(got, want, "one blob per region");
        assert!(masters.iter().any(|m| m.as_str().contains(":us-east-1:")));
        assert!(masters.iter().any(|m| m.as_str().contains(":eu-west-1:")));
    }
    let (e, w) = (r.kr_east.metrics(), r.kr_west.metrics());
    assert_eq!((e.generate_data_key_calls, w.encrypt_calls), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_to_the_second_region_when_the_first_is_killed() {
    let mut r = regions().await;
    let writer = r.envelope(CacheLimits::default().max_uses(5), None);
    let rows = r.write(&writer, 1..=20).await;
    let k = distinct_keys(&rows);
    assert_eq!(k, 4);

    r.east.kill();
    let reader = r.envelope(CacheLimits::default(), None);
    let started = Instant::now();
    open_all(&reader, &r.table, &rows)
        .await
        .expect("second region answers");
    let elapsed = started.elapsed();
    assert!(
        elapsed < OPERATION_TIMEOUT + Duration::from_millis(700),
        "failover took {elapsed:?}"
    );
    assert_eq!(r.multi.failovers(), k);
    assert_eq!(r.kr_west.metrics().decrypt_calls, k);
    let east = r.kr_east.metrics();
    assert!(east.failures >= k, "{east:?}");
    drop(r.west);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_to_the_second_region_when_the_first_is_frozen() {
    let r = regions().await;
    let writer = r.envelope(CacheLimits::default().max_uses(5), None);
    let rows = r.write(&writer, 1..=20).await;
    let k = distinct_keys(&rows);

    // SIGSTOP: connections are accepted, nothing ever answers. The SDK default
    // would wait forever; the attempt and operation timeouts bound it.
    r.east.freeze();
    let reader = r.envelope(CacheLimits::default(), None);
    let started = Instant::now();
    open_all(&reader, &r.table, &rows)
        .await
        .expect("second region answers");
    let elapsed = started.elapsed();
    assert!(
        elapsed < OPERATION_TIMEOUT + Duration::from_millis(1200),
        "failover took {elapsed:?}"
    );
    assert_eq!(r.multi.failovers(), k);
    assert_eq!(r.kr_west.metrics().decrypt_calls, k);
    assert!(
        r.kr_east.metrics().timeouts >= k,
        "{:?}",
        r.kr_east.metrics()
    );
    r.east.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_regions_down_cached_keys_serve_within_limits_then_fail_closed() {
    let mut r = regions().await;
    let clock = ManualClock::new();
    let limits = CacheLimits::default()
        .max_uses(5)
        .decrypt_ttl(Duration::from_secs(60))
        .outage_grace(Duration::from_secs(30));
    let writer = r.envelope(limits.clone(), Some(clock.clone()));
    // 8 values: key 1 full (5 uses), key 2 active with 3 of 5 uses.
    let rows = r.write(&writer, 1..=8).await;
    assert_eq!(distinct_keys(&rows), 2);
    let (key1_rows, key2_rows) = rows.split_at(5);
    // A reader that has key 1 cached, not key 2.
    let reader = r.envelope(limits, Some(clock.clone()));
    open_all(&reader, &r.table, key1_rows).await.unwrap();

    // Both regions down: one killed, one frozen.
    r.east.kill();
    r.west.freeze();
    let calls_before = (
        r.kr_east.metrics().total_calls(),
        r.kr_west.metrics().total_calls(),
    );

    // Cached key: served from the cache, no KMS call at all.
    open_all(&reader, &r.table, key1_rows)
        .await
        .expect("cached key serves");
    assert_eq!(
        (
            r.kr_east.metrics().total_calls(),
            r.kr_west.metrics().total_calls()
        ),
        calls_before
    );

    // Uncached key: typed unavailable error, within the timeouts of the two
    // regions (refused at once + frozen until the operation timeout).
    let started = Instant::now();
    let e = open_all(&reader, &r.table, key2_rows).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(e, Error::KeyringUnavailable { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(
        elapsed < 2 * OPERATION_TIMEOUT + Duration::from_millis(700),
        "{elapsed:?}"
    );

    // The writer keeps sealing under its active key within max uses...
    let row = RowId::from(100_i64);
    let ctx = Context::new(&r.table, "secret", &row);
    writer.seal(&ctx, b"a").await.expect("4th use of key 2");
    writer.seal(&ctx, b"b").await.expect("5th use of key 2");
    // ...and then needs a new data key, which it cannot get: fail closed, no
    // value written under a key that is not durably stored.
    let e = writer.seal(&ctx, b"c").await.unwrap_err();
    assert!(matches!(e, Error::KeyringUnavailable { .. }), "{e:?}");
    let keys = writer.keys().await.unwrap();
    assert_eq!(
        keys.iter()
            .filter(|k| k.state == KeyState::Active && !k.wrapped.is_empty())
            .count(),
        1,
        "no new active key: {keys:?}"
    );

    // Past the decrypt TTL, within the outage grace: the cached key still serves.
    clock.advance(Duration::from_secs(61));
    open_all(&reader, &r.table, key1_rows)
        .await
        .expect("served in grace");
    assert!(reader.stats().served_in_grace >= 1);
    // Past TTL + grace: fail closed with the typed error.
    clock.advance(Duration::from_secs(30));
    let e = open_all(&reader, &r.table, key1_rows).await.unwrap_err();
    assert!(matches!(e, Error::KeyringUnavailable { .. }), "{e:?}");
    r.west.thaw();
}
