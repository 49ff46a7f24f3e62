//! The core on each of the three databases: round trips, tampering, swaps, key
//! states, cache limits, single-flight and nonce uniqueness.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx_envelope::{
    CacheLimits, Context, Envelope, Error, KeyKind, KeyOperation, KeyState, KeyringErrorKind,
    ManualClock, RowId, ScopePolicy, Sealed, format,
};
use support::{ALL, Counting, Db, local_keyring, unique};

fn is_rejection(e: &Error) -> bool {
    // A flipped key-id byte may name another data key in the shared key store:
    // unknown, in another state, or wrapped under a master key this keyring
    // does not hold. All are typed refusals; none yields bytes.
    matches!(
        e,
        Error::Authentication
            | Error::Malformed(_)
            | Error::UnknownKey(_)
            | Error::KeyNotUsable { .. }
            | Error::Keyring {
                kind: KeyringErrorKind::NoUsableWrappedKey | KeyringErrorKind::InvalidCiphertext,
                ..
            }
    )
}

#[tokio::test]
async fn roundtrip_sizes_through_each_driver() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let t = unique("rt");
        db.create_blob_table(&t, &["v"]).await;
        for (id, len) in [(1_i64, 0usize), (2, 1), (3, 64), (4, 1 << 20)] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let row = RowId::from(id);
            let ctx = Context::new(&t, "v", &row);
            let sealed = env.seal(&ctx, &pt).await.unwrap();
            assert_eq!(sealed.len(), len + format::OVERHEAD, "{kind:?}");
            db.put_sealed(&t, "v", id, &sealed).await;
            let back = db.get_sealed(&t, "v", id).await.unwrap().expect("not null");
            assert_eq!(back, sealed, "{kind:?} stored bytes changed");
            let opened = env.open(&ctx, &back).await.unwrap();
            assert_eq!(&opened[..], &pt[..], "{kind:?} len {len}");
            if len >= 16 {
                let raw = db.get_raw(&t, "v", id).await.unwrap();
                assert!(
                    !raw.windows(16).any(|w| w == &pt[..16]),
                    "{kind:?}: plaintext visible in stored bytes"
                );
            }
        }
        // The key was durably stored before the value came back.
        let row = RowId::from(1_i64);
        let s = env.seal(&Context::new(&t, "v", &row), b"x").await.unwrap();
        let rec = db
            .key_store()
            .get(s.key_id())
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(rec.state, KeyState::Active);
        assert_eq!(rec.kind, KeyKind::Data);
        assert_eq!(rec.scope, t);
        // A data key is wrapped by its branch key (in its own row), and the
        // branch key by the master key.
        assert!(rec.wrapped.is_empty(), "{kind:?}");
        let parent = rec.parent.expect("wrapped by a branch key");
        let branch = db.key_store().get(parent.parent).await.unwrap().unwrap();
        assert_eq!(branch.kind, KeyKind::Branch);
        assert_eq!(branch.state, KeyState::Active);
        assert_eq!(branch.wrapped.len(), 1, "{kind:?}");
        assert!(rec.horizon_ms.is_some_and(|h| h >= rec.created_ms));
    }
}

#[tokio::test]
async fn every_byte_flip_and_truncation_is_rejected() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let t = unique("tamper");
        db.create_blob_table(&t, &["v"]).await;
        let row = RowId::from(7_i64);
        let ctx = Context::new(&t, "v", &row);
        let good = env.seal(&ctx, &[0x5a; 64]).await.unwrap().into_bytes();

        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            db.put(&t, "v", 7, &bad).await;
            // Through the driver's Decode: header damage is caught there...
            match db.get_sealed(&t, "v", 7).await {
                Err(_) => assert!(
                    i == 0,
                    "{kind:?}: decode rejected byte {i}, only the version byte should fail decode"
                ),
                Ok(s) => {
                    let e = env
                        .open(&ctx, &s.unwrap())
                        .await
                        .expect_err("tampered value opened");
                    assert!(is_rejection(&e), "{kind:?} byte {i}: {e:?}");
                }
            }
            // ...and opening the raw bytes fails with a typed error.
            let raw = db.get_raw(&t, "v", 7).await.unwrap();
            let e = env
                .open_bytes(&ctx, &raw)
                .await
                .expect_err("tampered value opened");
            assert!(is_rejection(&e), "{kind:?} byte {i}: {e:?}");
        }

        for len in 0..good.len() {
            db.put(&t, "v", 7, &good[..len]).await;
            let raw = db.get_raw(&t, "v", 7).await.unwrap();
            assert_eq!(raw.len(), len);
            let e = env
                .open_bytes(&ctx, &raw)
                .await
                .expect_err("truncated value opened");
            if len < format::OVERHEAD {
                assert!(
                    matches!(e, Error::Malformed(_)),
                    "{kind:?} len {len}: {e:?}"
                );
                assert!(
                    db.get_sealed(&t, "v", 7).await.is_err(),
                    "{kind:?}: Decode accepted {len} bytes"
                );
            } else {
                assert!(
                    matches!(e, Error::Authentication),
                    "{kind:?} len {len}: {e:?}"
                );
            }
        }
        // The untouched value still opens.
        db.put(&t, "v", 7, &good).await;
        let s = db.get_sealed(&t, "v", 7).await.unwrap().unwrap();
        assert_eq!(&env.open(&ctx, &s).await.unwrap()[..], &[0x5a; 64]);
    }
}

#[tokio::test]
async fn values_swapped_between_rows_columns_tables_and_tenants_fail() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let (t1, t2) = (unique("swap_a"), unique("swap_b"));
        db.create_blob_table(&t1, &["c1", "c2"]).await;
        db.create_blob_table(&t2, &["c1", "c2"]).await;
        let (r1, r2) = (RowId::from(1_i64), RowId::from(2_i64));
        let home = Context::new(&t1, "c1", &r1);
        let v = env.seal(&home, b"secret").await.unwrap();
        db.put_sealed(&t1, "c1", 1, &v).await;

        let elsewhere = [
            (t1.as_str(), "c1", 2_i64, Context::new(&t1, "c1", &r2)),
            (t1.as_str(), "c2", 1, Context::new(&t1, "c2", &r1)),
            (t2.as_str(), "c1", 1, Context::new(&t2, "c1", &r1)),
        ];
        for (table, col, id, ctx) in elsewhere {
            db.put_sealed(table, col, id, &v).await;
            let copied = db.get_sealed(table, col, id).await.unwrap().unwrap();
            let e = env
                .open(&ctx, &copied)
                .await
                .expect_err("copied value opened");
            assert!(
                matches!(e, Error::Authentication),
                "{kind:?} {table}.{col}#{id}: {e:?}"
            );
        }
        // Tenants (unique names: a tenant's branch key serves all its tables).
        let (ta, tb) = (unique("tenant_a"), unique("tenant_b"));
        let a = home.with_tenant(&ta);
        let va = env.seal(&a, b"tenant secret").await.unwrap();
        assert_eq!(&env.open(&a, &va).await.unwrap()[..], b"tenant secret");
        for other in [home.with_tenant(&tb), home] {
            let e = env.open(&other, &va).await.expect_err("cross-tenant open");
            assert!(matches!(e, Error::Authentication), "{kind:?}: {e:?}");
        }
        // Tenants get data keys of their own.
        assert_ne!(va.key_id(), v.key_id());
        assert_eq!(&env.open(&home, &v).await.unwrap()[..], b"secret");
    }
}

#[tokio::test]
async fn retired_and_destroyed_keys_are_refused_as_their_state_says() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let keyring = Arc::new(local_keyring());
        let mk = || {
            Envelope::builder()
                .keyring_arc(keyring.clone())
                .store_arc(db.key_store())
                .build()
                .unwrap()
        };
        let env = mk();
        let t = unique("states");
        let row = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &row);
        let v = env.seal(&ctx, b"payload").await.unwrap();
        let id = v.key_id();

        env.set_key_state(id, KeyState::Retired).await.unwrap();
        for e in [&env, &mk()] {
            match e.open(&ctx, &v).await {
                Err(Error::KeyNotUsable {
                    id: i,
                    state: KeyState::Retired,
                    operation: KeyOperation::Decrypt,
                }) => assert_eq!(i, id),
                other => panic!("{kind:?}: expected retired refusal, got {other:?}"),
            }
        }
        // A retired key no longer encrypts: the next seal mints a new key.
        let v2 = env.seal(&ctx, b"new").await.unwrap();
        assert_ne!(v2.key_id(), id);

        // Retiring is reversible.
        env.set_key_state(id, KeyState::DecryptOnly).await.unwrap();
        assert_eq!(&mk().open(&ctx, &v).await.unwrap()[..], b"payload");

        env.set_key_state(id, KeyState::Destroyed).await.unwrap();
        for e in [&env, &mk()] {
            match e.open(&ctx, &v).await {
                Err(Error::KeyNotUsable {
                    state: KeyState::Destroyed,
                    ..
                }) => {}
                other => panic!("{kind:?}: expected destroyed refusal, got {other:?}"),
            }
        }
        let rec = db.key_store().get(id).await.unwrap().unwrap();
        assert_eq!(rec.state, KeyState::Destroyed);
        assert!(
            rec.wrapped.is_empty(),
            "{kind:?}: destroyed key kept its wrapped material"
        );
        assert!(rec.left_active_ms.is_some());
        // Destroyed is final.
        assert!(env.set_key_state(id, KeyState::Active).await.is_err());
        // Unknown keys are their own error.
        let mut forged = v2.clone().into_bytes();
        forged[1..9].copy_from_slice(&u64::MAX.to_be_bytes()[..]);
        assert!(matches!(
            env.open_bytes(&ctx, &forged).await,
            Err(Error::UnknownKey(_))
        ));
    }
}

#[tokio::test]
async fn cache_limits_mint_a_new_key_exactly_when_crossed() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let row = RowId::from(1_i64);
        let t = unique("limits");
        let ctx = Context::new(&t, "v", &row);
        // One keyring for every envelope: they share the scope's branch key.
        let kr = Counting::new(local_keyring());
        let build = |limits: CacheLimits, clock: ManualClock| {
            Envelope::builder()
                .keyring_arc(kr.clone())
                .store_arc(db.key_store())
                .limits(limits)
                .clock(clock)
                .build()
                .unwrap()
        };

        // Max uses.
        let env = build(CacheLimits::default().max_uses(3), ManualClock::new());
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(env.seal(&ctx, b"x").await.unwrap().key_id());
        }
        assert_eq!(env.stats().data_keys_minted, 1, "{kind:?}");
        ids.push(env.seal(&ctx, b"x").await.unwrap().key_id());
        assert_eq!(
            env.stats().data_keys_minted,
            2,
            "{kind:?}: 4th use must mint"
        );
        assert!(ids[..3].iter().all(|i| *i == ids[0]) && ids[3] != ids[0]);
        assert_eq!(env.stats().evicted_uses, 1);
        // Minting data keys costs no keyring call: one branch key for the scope.
        assert_eq!(kr.generates(), 1, "{kind:?}");
        assert_eq!(env.stats().keyring_generate_calls, 1);
        // The rotated-out key is marked decrypt-only in the store.
        let old = db.key_store().get(ids[0]).await.unwrap().unwrap();
        assert_eq!(old.state, KeyState::DecryptOnly);
        // A batch reserves its uses in one step, within the limit.
        let rows: Vec<RowId> = (10..13_i64).map(RowId::from).collect();
        let items: Vec<_> = rows
            .iter()
            .map(|r| (Context::new(&t, "v", r), &b"x"[..]))
            .collect();
        let batch = env.seal_many(&items).await.unwrap();
        assert!(batch.iter().all(|s| s.key_id() == batch[0].key_id()));
        assert_ne!(batch[0].key_id(), ids[3], "{kind:?}: 1 + 3 uses > 3");

        // Max bytes.
        let env = build(CacheLimits::default().max_bytes(100), ManualClock::new());
        env.seal(&ctx, &[0; 60]).await.unwrap();
        env.seal(&ctx, &[0; 40]).await.unwrap();
        assert_eq!(
            env.stats().data_keys_minted,
            1,
            "{kind:?}: exactly 100 bytes fit"
        );
        env.seal(&ctx, &[0; 1]).await.unwrap();
        assert_eq!(
            env.stats().data_keys_minted,
            2,
            "{kind:?}: byte 101 must mint"
        );
        assert_eq!(env.stats().evicted_bytes, 1);
        // A value larger than a key's whole budget gets a key of its own,
        // demoted at once, with its horizon at its activation.
        let big = env.seal(&ctx, &[0; 101]).await.unwrap();
        assert_eq!(env.stats().data_keys_minted, 3);
        assert_eq!(&env.open(&ctx, &big).await.unwrap()[..], &[0; 101]);
        let one_off = db.key_store().get(big.key_id()).await.unwrap().unwrap();
        assert_eq!(one_off.state, KeyState::DecryptOnly, "{kind:?}");
        assert!(one_off.horizon_ms <= one_off.left_active_ms);

        // Max age, with a manual clock: no sleeps.
        let clock = ManualClock::new();
        let env = build(
            CacheLimits::default().max_age(Duration::from_secs(60)),
            clock.clone(),
        );
        env.seal(&ctx, b"x").await.unwrap();
        clock.advance(Duration::from_secs(59));
        env.seal(&ctx, b"x").await.unwrap();
        assert_eq!(env.stats().data_keys_minted, 1, "{kind:?}");
        clock.advance(Duration::from_secs(1));
        env.seal(&ctx, b"x").await.unwrap();
        assert_eq!(
            env.stats().data_keys_minted,
            2,
            "{kind:?}: age 60 s must mint"
        );
        assert_eq!(env.stats().evicted_age, 1);
        assert_eq!(kr.generates(), 1, "{kind:?}: still one branch key");
    }
}

#[tokio::test]
async fn decrypt_ttl_reloads_exactly_when_expired() {
    let db = Db::connect(support::Kind::Sqlite).await;
    let kr = Counting::new(local_keyring());
    let clock = ManualClock::new();
    let mk = |clock: ManualClock| {
        Envelope::builder()
            .keyring_arc(kr.clone())
            .store_arc(db.key_store())
            .limits(
                CacheLimits::default()
                    .decrypt_ttl(Duration::from_secs(30))
                    .branch_ttl(Duration::from_secs(600)),
            )
            .clock(clock)
            .build()
            .unwrap()
    };
    let row = RowId::from(1_i64);
    let ctx = Context::new("ttl", "v", &row);
    let v = mk(ManualClock::new()).seal(&ctx, b"ttl").await.unwrap();
    let reader = mk(clock.clone());
    reader.open(&ctx, &v).await.unwrap();
    assert_eq!(kr.unwraps(), 1, "the branch key, once");
    assert_eq!(reader.stats().decrypt_misses, 1);
    clock.advance(Duration::from_secs(29));
    reader.open(&ctx, &v).await.unwrap();
    assert_eq!(reader.stats().decrypt_misses, 1);
    clock.advance(Duration::from_secs(1));
    reader.open(&ctx, &v).await.unwrap();
    assert_eq!(reader.stats().decrypt_misses, 2, "TTL passed: reload");
    assert_eq!(reader.stats().expired_ttl, 1);
    assert_eq!(kr.unwraps(), 1, "the branch key is within its own TTL");
    clock.advance(Duration::from_secs(570));
    reader.open(&ctx, &v).await.unwrap();
    assert_eq!(kr.unwraps(), 2, "branch TTL passed: one more keyring call");
}

#[tokio::test]
async fn concurrent_misses_make_one_keyring_call() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let kr = Counting::new(local_keyring());
        let mk = || {
            Envelope::builder()
                .keyring_arc(kr.clone())
                .store_arc(db.key_store())
                .build()
                .unwrap()
        };
        let t: Arc<str> = unique("flight").into();
        let env = mk();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let env = env.clone();
                let t = t.clone();
                tokio::spawn(async move {
                    let row = RowId::from(i as i64);
                    env.seal(&Context::new(&t, "v", &row), b"v").await.unwrap()
                })
            })
            .collect();
        let mut sealed: Vec<Sealed> = Vec::new();
        for task in tasks {
            sealed.push(task.await.unwrap());
        }
        assert_eq!(kr.generates(), 1, "{kind:?}: 64 concurrent encrypt misses");
        assert!(sealed.iter().all(|s| s.key_id() == sealed[0].key_id()));

        // A cold reader: 64 concurrent opens of values under one key.
        let reader = mk();
        let before = kr.unwraps();
        let tasks: Vec<_> = sealed
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let reader = reader.clone();
                let t = t.clone();
                tokio::spawn(async move {
                    let row = RowId::from(i as i64);
                    reader.open(&Context::new(&t, "v", &row), &s).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(&task.await.unwrap()[..], b"v");
        }
        assert_eq!(
            kr.unwraps() - before,
            1,
            "{kind:?}: 64 concurrent decrypt misses"
        );
        assert_eq!(reader.stats().keyring_unwrap_calls, 1);
    }
}

#[tokio::test]
async fn batch_open_resolves_each_key_once() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let kr = Counting::new(local_keyring());
        let mk = |limits| {
            Envelope::builder()
                .keyring_arc(kr.clone())
                .store_arc(db.key_store())
                .limits(limits)
                .build()
                .unwrap()
        };
        let writer = mk(CacheLimits::default().max_uses(250));
        let t = unique("batch");
        let rows: Vec<RowId> = (0..1000_i64).map(RowId::from).collect();
        let mut values = Vec::new();
        for r in &rows {
            values.push(
                writer
                    .seal(&Context::new(&t, "v", r), b"same")
                    .await
                    .unwrap(),
            );
        }
        let distinct: HashSet<_> = values.iter().map(Sealed::key_id).collect();
        assert_eq!(distinct.len(), 4, "{kind:?}");
        let reader = mk(CacheLimits::default());
        let before = kr.unwraps();
        let items: Vec<_> = rows
            .iter()
            .zip(&values)
            .map(|(r, v)| (Context::new(&t, "v", r), v.as_bytes()))
            .collect();
        let opened = reader.open_many(&items).await.unwrap();
        assert_eq!(opened.len(), 1000);
        assert_eq!(
            reader.stats().decrypt_misses,
            4,
            "{kind:?}: one load per distinct data key"
        );
        assert_eq!(
            kr.unwraps() - before,
            1,
            "{kind:?}: one keyring call per distinct branch key"
        );
    }
}

/// Column `v` of `table`, row by row, with its plaintext.
fn batch_items<'a>(
    table: &'a str,
    rows: &'a [RowId],
    plains: &'a [Vec<u8>],
) -> Vec<(Context<'a>, &'a [u8])> {
    rows.iter()
        .zip(plains)
        .map(|(r, p)| (Context::new(table, "v", r), &p[..]))
        .collect()
}

/// A batch spread over many columns (more than the few a page usually has)
/// registers every column in the key store and leaves each column's key
/// ready for the warm path; every value opens.
#[tokio::test]
async fn a_batch_over_many_columns_registers_and_warms_each() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let t = unique("wide");
        let columns: Vec<String> = (0..40).map(|c| format!("c{c}")).collect();
        let rows: Vec<RowId> = (0..5_i64).map(RowId::from).collect();
        let pt = b"value".as_slice();
        let mut items = Vec::new();
        for row in &rows {
            for c in &columns {
                items.push((Context::new(&t, c, row), pt));
            }
        }
        let sealed = env.seal_many(&items).await.unwrap();
        let registered: HashSet<String> = db
            .key_store()
            .columns()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.context_table == t)
            .map(|r| r.context_column)
            .collect();
        assert_eq!(
            registered,
            columns.iter().cloned().collect::<HashSet<_>>(),
            "{kind:?}"
        );
        for c in &columns {
            let ctx = Context::new(&t, c, &rows[0]);
            let warm = env.seal_if_cached(&ctx, pt).expect("warm after the batch");
            assert_eq!(&env.open(&ctx, &warm.unwrap()).await.unwrap()[..], pt);
        }
        for ((ctx, pt), s) in items.iter().zip(&sealed) {
            assert_eq!(&env.open(ctx, s).await.unwrap()[..], *pt, "{kind:?}");
        }
    }
}

/// Batches seal and open what one-by-one calls do (values of every length,
/// under several data keys, a large batch split in uneven parts across
/// threads or kept on one thread), and in a batch a tampered, swapped,
/// truncated or unknown-key value fails alone, with its own typed error,
/// while the others open (the first and last values and neighbours
/// included).
#[tokio::test]
async fn batches_match_one_by_one_and_a_bad_value_fails_alone() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default().max_uses(500));
        let t = unique("runs");
        let rows: Vec<RowId> = (0..3_000_i64).map(RowId::from).collect();
        let plains: Vec<Vec<u8>> = (0..rows.len())
            .map(|i| (0..i % 300).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let items = batch_items(&t, &rows, &plains);
        // 400 values per call under a 500-use limit: a new key every other
        // call; then 2,200 values in one call, sealed value by value (more
        // than one key can take).
        let mut sealed = Vec::new();
        for chunk in items[..800].chunks(400) {
            sealed.extend(env.seal_many(chunk).await.unwrap());
        }
        sealed.extend(env.seal_many(&items[800..]).await.unwrap());
        // And a large batch under one key, split in three uneven parts on
        // three threads (another envelope: another table). A batch is split
        // from twice 2,048 values.
        let with_threads = |n: usize| {
            Envelope::builder()
                .keyring(local_keyring())
                .store_arc(db.key_store())
                .batch_threads(n)
                .build()
        };
        let big = with_threads(3).unwrap();
        let t_big = unique("runs_big");
        let big_rows: Vec<RowId> = (0..6_145_i64).map(RowId::from).collect();
        let big_plains: Vec<Vec<u8>> = (0..big_rows.len())
            .map(|i| (0..i % 300).map(|j| (i * 17 + j) as u8).collect())
            .collect();
        let big_items = batch_items(&t_big, &big_rows, &big_plains);
        let big_sealed = big.seal_many(&big_items).await.unwrap();
        assert_eq!(
            big_sealed
                .iter()
                .map(Sealed::key_id)
                .collect::<HashSet<_>>()
                .len(),
            1
        );
        // The same large batch kept on the calling thread (batch_threads(1)).
        let one = with_threads(1).unwrap();
        assert_eq!(one.batch_threads(), 1);
        let t_one = unique("runs_one");
        let one_items = batch_items(&t_one, &big_rows, &big_plains);
        let one_sealed = one.seal_many(&one_items).await.unwrap();
        let zero = with_threads(0);
        assert!(
            matches!(&zero, Err(Error::Config(m)) if m.contains("batch_threads")),
            "{zero:?}"
        );
        for (env, items, sealed, plains) in [
            (&env, &items, &sealed, &plains),
            (&big, &big_items, &big_sealed, &big_plains),
            (&one, &one_items, &one_sealed, &big_plains),
        ] {
            for ((ctx, pt), s) in items.iter().zip(sealed).step_by(7) {
                assert_eq!(&env.open(ctx, s).await.unwrap()[..], *pt, "{kind:?}");
            }
            let stored: Vec<(Context<'_>, &[u8])> = items
                .iter()
                .zip(sealed)
                .map(|((c, _), s)| (*c, s.as_bytes()))
                .collect();
            let opened = env.open_many(&stored).await.unwrap();
            assert_eq!(opened.len(), plains.len());
            assert!(opened.iter().zip(plains).all(|(o, p)| o[..] == p[..]));
        }
        assert!(
            sealed
                .iter()
                .map(Sealed::key_id)
                .collect::<HashSet<_>>()
                .len()
                > 2
        );

        // One bad value of each kind among good ones.
        let mut bytes: Vec<Vec<u8>> = sealed.iter().map(|s| s.as_bytes().to_vec()).collect();
        let tag_end = |b: &Vec<u8>| b.len() - 1;
        let (first_end, last) = (tag_end(&bytes[0]), bytes.len() - 1);
        bytes[0][first_end] ^= 1; // the first value: tampered tag (an empty value)
        bytes[last][format::HEADER_LEN] ^= 1; // the last value: tampered ciphertext
        let end = tag_end(&bytes[10]);
        bytes[10][end] ^= 1; // tampered tag
        bytes[20][format::HEADER_LEN] ^= 0x40; // tampered ciphertext (value 20 is 20 bytes)
        bytes[30] = bytes[31].clone(); // another row's value
        bytes[40].truncate(format::OVERHEAD - 1); // truncated
        bytes[41].truncate(3); // truncated, next to another
        bytes[42][1..9].copy_from_slice(&u64::MAX.to_be_bytes()); // next to both: unknown key
        bytes[50][1..9].copy_from_slice(&u64::MAX.to_be_bytes()); // a key not in the set
        let unresolved = [40, 41, 42, 50];
        let keys = env
            .keys_for_partial(bytes.iter().map(Vec::as_slice))
            .await
            .unwrap_err();
        assert!(matches!(keys, Error::Malformed(_)), "{kind:?}: {keys:?}");
        let keys = env
            .keys_for(
                bytes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !unresolved.contains(i))
                    .map(|(_, b)| b.as_slice()),
            )
            .await
            .unwrap();
        let stored: Vec<(Context<'_>, &[u8])> = items
            .iter()
            .zip(&bytes)
            .map(|((c, _), b)| (*c, b.as_slice()))
            .collect();
        let owned: Vec<(Context<'_>, Vec<u8>)> = items
            .iter()
            .zip(&bytes)
            .map(|((c, _), b)| (*c, b.clone()))
            .collect();
        for results in [keys.open_batch(&stored), keys.open_batch_in_place(owned)] {
            assert_eq!(results.len(), items.len());
            for (i, r) in results.iter().enumerate() {
                match i {
                    0 | 10 | 20 | 30 => assert!(
                        matches!(r, Err(Error::Authentication)),
                        "{kind:?} {i}: {r:?}"
                    ),
                    i if i == last => assert!(
                        matches!(r, Err(Error::Authentication)),
                        "{kind:?} {i}: {r:?}"
                    ),
                    40 | 41 => assert!(matches!(r, Err(Error::Malformed(_))), "{kind:?}: {r:?}"),
                    42 | 50 => assert!(matches!(r, Err(Error::UnknownKey(_))), "{kind:?}: {r:?}"),
                    _ => assert_eq!(&r.as_ref().unwrap()[..], &plains[i][..], "{kind:?} {i}"),
                }
            }
        }
        let good: Vec<(Context<'_>, &[u8])> = stored
            .iter()
            .enumerate()
            .filter(|(i, _)| !unresolved.contains(i))
            .map(|(_, s)| *s)
            .collect();
        assert!(matches!(
            env.open_many(&good).await,
            Err(Error::Authentication)
        ));
    }
}

/// `seal_many` over interleaved values of two tables, two columns and three
/// tenants (none and two named; equal names held in one string or in two), under
/// each scope policy: the values of one (scope, tenant) share one data key,
/// each other group has its own, and every value is in its place and opens.
#[tokio::test]
async fn seal_many_groups_interleaved_values_by_scope_and_tenant() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let fixed = unique("mix_fixed");
        for policy in [
            ScopePolicy::Table,
            ScopePolicy::Column,
            ScopePolicy::Fixed(fixed.clone()),
        ] {
            let env = Envelope::builder()
                .keyring(local_keyring())
                .store_arc(db.key_store())
                .scope_policy(policy.clone())
                .build()
                .unwrap();
            let (ta, tb) = (unique("mix_a"), unique("mix_b"));
            // Tenants of their own: a tenant's branch key is shared by all
            // its tables, wrapped by the master key that made it (each
            // envelope here has a fresh one).
            let (x, y) = (unique("mix_x"), unique("mix_y"));
            let (ta_again, x_again) = (ta.clone(), x.clone());
            let rows: Vec<RowId> = (0..48_i64).map(RowId::from).collect();
            let plains: Vec<Vec<u8>> = (0..rows.len())
                .map(|i| format!("value {i}").into_bytes())
                .collect();
            let items: Vec<(Context<'_>, &[u8])> = rows
                .iter()
                .zip(&plains)
                .enumerate()
                .map(|(i, (row, pt))| {
                    let table = [&ta, &tb, &ta_again][i % 3];
                    let ctx = Context::new(table, ["c1", "c2"][i % 2], row);
                    let ctx = match i % 4 {
                        0 => ctx,
                        1 => ctx.with_tenant(&x),
                        2 => ctx.with_tenant(&x_again),
                        _ => ctx.with_tenant(&y),
                    };
                    (ctx, &pt[..])
                })
                .collect();
            let sealed = env.seal_many(&items).await.unwrap();
            assert_eq!(sealed.len(), items.len());
            let mut keys: HashMap<(String, Option<&str>), HashSet<_>> = HashMap::new();
            for ((ctx, _), s) in items.iter().zip(&sealed) {
                let scope = match &policy {
                    ScopePolicy::Table => ctx.table.to_owned(),
                    ScopePolicy::Column => format!("{}.{}", ctx.table, ctx.column),
                    _ => fixed.clone(),
                };
                keys.entry((scope, ctx.tenant))
                    .or_default()
                    .insert(s.key_id());
            }
            // Two tables x three tenants; by column, the four (column,
            // tenant) pairs that i % 2 and i % 4 make, x two tables; one
            // fixed scope x three tenants.
            let groups = match &policy {
                ScopePolicy::Table => 6,
                ScopePolicy::Column => 8,
                _ => 3,
            };
            assert_eq!(keys.len(), groups, "{kind:?} {policy:?}");
            assert!(
                keys.values().all(|k| k.len() == 1),
                "{kind:?} {policy:?}: {keys:?}"
            );
            let distinct: HashSet<_> = keys.values().flatten().collect();
            assert_eq!(distinct.len(), groups, "{kind:?} {policy:?}");
            for ((ctx, pt), s) in items.iter().zip(&sealed) {
                assert_eq!(
                    &env.open(ctx, s).await.unwrap()[..],
                    *pt,
                    "{kind:?} {policy:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn no_key_nonce_pair_repeats_across_100k_encryptions() {
    let db = Db::connect(support::Kind::Sqlite).await;
    let env = support::envelope(&db, CacheLimits::default().max_uses(40_000));
    let row = RowId::from(1_i64);
    let ctx = Context::new("nonces", "v", &row);
    let mut seen = HashSet::with_capacity(100_000);
    let mut keys = HashSet::new();
    for _ in 0..100_000 {
        let v = env.seal(&ctx, b"").await.unwrap();
        let b = v.as_bytes();
        keys.insert(v.key_id());
        let pair: [u8; 20] = b[1..21].try_into().unwrap();
        assert!(seen.insert(pair), "(key, nonce) repeated");
    }
    assert_eq!(seen.len(), 100_000);
    assert_eq!(keys.len(), 3, "40k uses per key over 100k values");
}

#[tokio::test]
async fn missing_row_id_is_refused() {
    let db = Db::connect(support::Kind::Sqlite).await;
    let env = support::envelope(&db, CacheLimits::default());
    let none = RowId::composite([]);
    match env.seal(&Context::new("users", "email", &none), b"x").await {
        Err(Error::MissingRowId { table, column }) => {
            assert_eq!((table.as_str(), column.as_str()), ("users", "email"))
        }
        other => panic!("expected MissingRowId, got {other:?}"),
    }
}

#[tokio::test]
async fn wrapped_key_bound_to_its_key_store_row() {
    // Swapping wrapped data keys between two key-store rows must not unwrap,
    // nor swapping branch keys between two tenants.
    let db = Db::connect(support::Kind::Sqlite).await;
    let Db::Sqlite(pool, _) = &db else {
        unreachable!()
    };
    let keyring = Arc::new(local_keyring());
    let env = Envelope::builder()
        .keyring_arc(keyring.clone())
        .store_arc(db.key_store())
        .limits(CacheLimits::default().max_uses(1))
        .build()
        .unwrap();
    let cold = || {
        Envelope::builder()
            .keyring_arc(keyring.clone())
            .store_arc(db.key_store())
            .build()
            .unwrap()
    };
    let invalid = |r: sqlx_envelope::Result<_>| match r {
        Err(Error::Keyring {
            kind: KeyringErrorKind::InvalidCiphertext,
            ..
        }) => {}
        other => panic!("expected InvalidCiphertext, got {other:?}"),
    };
    let row = RowId::from(1_i64);
    let ctx = Context::new("bind", "v", &row);
    let a = env.seal(&ctx, b"a").await.unwrap();
    let b = env.seal(&ctx, b"b").await.unwrap();
    assert_ne!(a.key_id(), b.key_id());
    let swap = "UPDATE sqlx_envelope_data_keys SET parent_blob = \
                (SELECT parent_blob FROM sqlx_envelope_data_keys WHERE id = ?) WHERE id = ?";
    sqlx::query(swap)
        .bind(b.key_id().as_i64())
        .bind(a.key_id().as_i64())
        .execute(pool)
        .await
        .unwrap();
    invalid(cold().open(&ctx, &a).await.map(|_| ()));

    let (n, s) = (RowId::from(2_i64), RowId::from(3_i64));
    let north = Context::new("bind2", "v", &n).with_tenant("north");
    let south = Context::new("bind2", "v", &s).with_tenant("south");
    let vn = env.seal(&north, b"n").await.unwrap();
    let vs = env.seal(&south, b"s").await.unwrap();
    let store = db.key_store();
    let branch_of = |v: Sealed| {
        let store = store.clone();
        async move {
            let d = store.get(v.key_id()).await.unwrap().unwrap();
            store.get(d.parent.unwrap().parent).await.unwrap().unwrap()
        }
    };
    let (bn, bs) = (branch_of(vn.clone()).await, branch_of(vs.clone()).await);
    assert_ne!(bn.id, bs.id, "one branch key per tenant");
    store.put_wrapped(bn.id, &bs.wrapped[0]).await.unwrap();
    invalid(cold().open(&north, &vn).await.map(|_| ()));
    assert_eq!(&cold().open(&south, &vs).await.unwrap()[..], b"s");
}
