//! Two moto servers as two regions behind a MultiKeyring: failover when the
//! first region is killed or frozen, and the outage policy when both are down
//! (cached keys keep serving within their limits and the bounded grace, then
//! everything fails closed with the typed unavailable error, within the
//! configured timeouts).
#![cfg(feature = "aws-kms")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx_envelope::keyring::kms::{KmsConfig, KmsKeyring, KmsMetrics};
use sqlx_envelope::store::KeyFilter;
use sqlx_envelope::{
    CacheLimits, Context, Envelope, Error, KeyKind, KeyState, Keyring, ManualClock, MultiKeyring,
    RowId, Sealed,
};
use support::moto::Moto;
use support::{Db, Kind, unique};

/// Short timeouts so a dead or frozen region fails within seconds (the SDK's
/// default would wait forever on a frozen one): 1 s per attempt, 2.5 s per
/// operation, 2 attempts. Not tighter: on a loaded 2-core machine a healthy
/// moto server can take a few hundred milliseconds to answer.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(2500);

/// How much longer than [`OPERATION_TIMEOUT`] a failover may take (the second
/// region's answer and the database reads), generous for a loaded machine:
/// the assertion is that the wait is bounded, not how fast it is.
const FAILOVER_SLACK: Duration = Duration::from_secs(3);

fn config() -> KmsConfig {
    KmsConfig::default()
        .attempt_timeout(Duration::from_millis(1000))
        .operation_timeout(OPERATION_TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .max_attempts(2)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
}

/// Whether `calls` requests of one kind are one operation: the counters count
/// every attempt, and a slow answer on a loaded machine can cause a retry
/// (counted in `retries`).
fn one_operation(calls: u64, m: &KmsMetrics) -> bool {
    calls >= 1 && calls - 1 <= m.retries
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
async fn every_branch_key_is_wrapped_in_both_regions() {
    let r = regions().await;
    let env = r.envelope(CacheLimits::default().max_uses(5), None);
    r.write(&env, 1..=10).await;
    let data = env.keys().await.unwrap();
    assert_eq!(data.len(), 2, "two data keys");
    assert!(
        data.iter()
            .all(|k| k.wrapped.is_empty() && k.parent.is_some())
    );
    let branches =
        r.db.key_store()
            .list(&KeyFilter::all().kind(KeyKind::Branch))
            .await
            .unwrap();
    assert_eq!(branches.len(), 1, "one branch key for the scope");
    for k in &branches {
        let masters: Vec<_> = k.wrapped.iter().map(|w| w.master_key.clone()).collect();
        let mut want = r.multi.master_keys();
        want.sort();
        let mut got = masters.clone();
        got.sort();
        assert_eq!(got, want, "one blob per region");
        assert!(masters.iter().any(|m| m.as_str().contains(":us-east-1:")));
        assert!(masters.iter().any(|m| m.as_str().contains(":eu-west-1:")));
    }
    // KMS traffic follows branch keys, not data keys.
    let (e, w) = (r.kr_east.metrics(), r.kr_west.metrics());
    assert!(one_operation(e.generate_data_key_calls, &e), "{e:?}");
    assert!(one_operation(w.encrypt_calls, &w), "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_to_the_second_region_when_the_first_is_killed() {
    let mut r = regions().await;
    let writer = r.envelope(CacheLimits::default().max_uses(5), None);
    let rows = r.write(&writer, 1..=20).await;
    assert_eq!(distinct_keys(&rows), 4);

    r.east.kill();
    let reader = r.envelope(CacheLimits::default(), None);
    let started = Instant::now();
    open_all(&reader, &r.table, &rows)
        .await
        .expect("second region answers");
    let elapsed = started.elapsed();
    assert!(
        elapsed < OPERATION_TIMEOUT + FAILOVER_SLACK,
        "failover took {elapsed:?}"
    );
    // Four data keys, one branch key: one failover, one Decrypt in the west.
    assert_eq!(r.multi.failovers(), 1);
    let w = r.kr_west.metrics();
    assert!(one_operation(w.decrypt_calls, &w), "{w:?}");
    let east = r.kr_east.metrics();
    assert!(east.failures >= 1, "{east:?}");
    drop(r.west);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_to_the_second_region_when_the_first_is_frozen() {
    let r = regions().await;
    let writer = r.envelope(CacheLimits::default().max_uses(5), None);
    let rows = r.write(&writer, 1..=20).await;

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
        elapsed < OPERATION_TIMEOUT + FAILOVER_SLACK,
        "failover took {elapsed:?}"
    );
    assert_eq!(r.multi.failovers(), 1);
    let w = r.kr_west.metrics();
    assert!(one_operation(w.decrypt_calls, &w), "{w:?}");
    assert!(
        r.kr_east.metrics().timeouts >= 1,
        "{:?}",
        r.kr_east.metrics()
    );
    r.east.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_regions_down_cached_branch_keys_serve_within_limits_then_fail_closed() {
    let mut r = regions().await;
    let clock = ManualClock::new();
    let limits = CacheLimits::default()
        .max_uses(5)
        .decrypt_ttl(Duration::from_secs(60))
        .branch_ttl(Duration::from_secs(120))
        .outage_grace(Duration::from_secs(30));
    let writer = r.envelope(limits.clone(), Some(clock.clone()));
    // 8 values: data key 1 full (5 uses), data key 2 active with 3 of 5 uses.
    let rows = r.write(&writer, 1..=8).await;
    assert_eq!(distinct_keys(&rows), 2);
    let (key1_rows, key2_rows) = rows.split_at(5);
    // A reader that has data key 1 and the branch key cached, not data key 2.
    let reader = r.envelope(limits, Some(clock.clone()));
    open_all(&reader, &r.table, key1_rows).await.unwrap();

    // Both regions down: one killed, one frozen.
    r.east.kill();
    r.west.freeze();
    let calls = |r: &Regions| {
        (
            r.kr_east.metrics().total_calls(),
            r.kr_west.metrics().total_calls(),
        )
    };
    let calls_before = calls(&r);

    // Data key 2 is not cached, but its branch key is: it is read from the key
    // store and unwrapped locally, no KMS call at all.
    open_all(&reader, &r.table, key2_rows)
        .await
        .expect("cached branch key serves");
    // The writer uses up data key 2 and mints data key 3 locally under the
    // cached branch key: no KMS call either.
    let row = RowId::from(100_i64);
    let ctx = Context::new(&r.table, "secret", &row);
    for _ in 0..3 {
        writer.seal(&ctx, b"during the outage").await.expect("seal");
    }
    assert_eq!(writer.stats().data_keys_minted, 3);
    assert_eq!(calls(&r), calls_before, "no KMS call within the branch TTL");

    // Past the branch TTL, within the outage grace: KMS is asked once, fails,
    // and the cached branch key keeps serving.
    clock.advance(Duration::from_secs(121));
    open_all(&reader, &r.table, key1_rows)
        .await
        .expect("served in grace");
    assert!(reader.stats().served_in_grace >= 1);

    // Past branch TTL + grace: every path that needs the branch key fails
    // closed with the typed, retryable error, and no value is sealed under a
    // key that is not durably stored.
    clock.advance(Duration::from_secs(30));
    let e = open_all(&reader, &r.table, key1_rows).await.unwrap_err();
    assert!(matches!(e, Error::KeyringUnavailable { .. }), "{e:?}");
    assert!(e.is_retryable());
    // Data key 3 (minted during the outage) has used 1 of its 5 uses.
    for _ in 0..4 {
        writer
            .seal(&ctx, b"x")
            .await
            .expect("data key 3 still has uses");
    }
    let e = writer.seal(&ctx, b"y").await.unwrap_err();
    assert!(matches!(e, Error::KeyringUnavailable { .. }), "{e:?}");
    let pending =
        r.db.key_store()
            .list(&KeyFilter::all().state(KeyState::Pending))
            .await
            .unwrap();
    assert!(pending.is_empty(), "a failed mint left rows: {pending:?}");
    r.west.thaw();
}
