//! The key lifecycle with several application processes and an operator acting
//! at once, on PostgreSQL, MariaDB and SQLite: every process is an `Envelope`
//! with its own caches over one key store, and time is a `ManualClock` shared by
//! the envelopes and the store (no sleeps).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx_envelope::keyring::GeneratedKey;
use sqlx_envelope::store::{
    KeyFilter, KeyStore, MySqlKeyStore, NewKey, PgKeyStore, Reserved, SqliteKeyStore,
};
use sqlx_envelope::{
    CacheLimits, Clock, Context, Envelope, Error, KeyContext, KeyKind, KeyMaterial, KeyOperation,
    KeyState, Keyring, LocalKeyring, ManualClock, MasterKeyId, RowId, WrappedKey,
};
use support::{ALL, Db, local_keyring, unique};

/// One key store, its clock, and a master keyring shared by the processes.
struct World {
    db: Db,
    clock: ManualClock,
    store: Arc<dyn KeyStore>,
    keyring: Arc<LocalKeyring>,
}

impl World {
    async fn new(db: Db) -> World {
        let clock = ManualClock::new();
        let store: Arc<dyn KeyStore> = match &db {
            Db::Postgres(p) => Arc::new(PgKeyStore::new(p.clone()).with_clock(clock.clone())),
            Db::MySql(p) => Arc::new(MySqlKeyStore::new(p.clone()).with_clock(clock.clone())),
            Db::Sqlite(p, _) => Arc::new(SqliteKeyStore::new(p.clone()).with_clock(clock.clone())),
        };
        World {
            db,
            clock,
            store,
            keyring: Arc::new(local_keyring()),
        }
    }

    /// An application process (or the operator's tool).
    fn process(&self, limits: CacheLimits) -> Envelope {
        self.process_with(self.keyring.clone(), limits)
    }

    /// A process whose master keyring is `keyring`.
    fn process_with(&self, keyring: Arc<dyn Keyring>, limits: CacheLimits) -> Envelope {
        Envelope::builder()
            .keyring_arc(keyring)
            .store_arc(self.store.clone())
            .limits(limits)
            .clock(self.clock.clone())
            .build()
            .unwrap()
    }

    /// A process whose view of the store a test can hold ([`HeldStore`]).
    fn held_process(&self) -> (Arc<HeldStore>, Envelope) {
        let held = Arc::new(HeldStore {
            inner: self.store.clone(),
            armed: std::sync::Mutex::new(None),
        });
        let env = Envelope::builder()
            .keyring_arc(self.keyring.clone())
            .store_arc(held.clone())
            .clock(self.clock.clone())
            .build()
            .unwrap();
        (held, env)
    }

    async fn state(&self, id: sqlx_envelope::KeyId) -> KeyState {
        self.store.get(id).await.unwrap().unwrap().state
    }
}

/// The key `got` was refused for, and what for, when it is a refusal of a
/// key in `state` ([`Error::KeyNotUsable`]); panics naming `what` otherwise.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    got: sqlx_envelope::Result<T>,
    state: KeyState,
    what: &str,
) -> (sqlx_envelope::KeyId, KeyOperation) {
    match got {
        Err(Error::KeyNotUsable {
            id,
            state: s,
            operation,
        }) if s == state => (id, operation),
        other => panic!("{what}: expected a refusal ({state:?}), got {other:?}"),
    }
}

#[tokio::test]
async fn processes_never_undo_an_operator_retire_or_destroy() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let app = w.process(CacheLimits::default().max_uses(2));
        let operator = w.process(CacheLimits::default());
        let t = unique("lc_states");
        let row = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &row);

        let k1 = app.seal(&ctx, b"1").await.unwrap().key_id();
        // Emergency stop by the operator while the app still caches k1 as active.
        operator.set_key_state(k1, KeyState::Retired).await.unwrap();
        assert_eq!(app.seal(&ctx, b"2").await.unwrap().key_id(), k1);
        // The app's k1 reaches max uses: it demotes with a compare-and-set on
        // `active`, which must not turn the operator's `retired` back into
        // `decrypt_only`.
        let k2 = app.seal(&ctx, b"3").await.unwrap().key_id();
        assert_ne!(k2, k1);
        assert_eq!(w.state(k1).await, KeyState::Retired, "{kind:?}");

        // Same for destroyed: absorbing.
        operator
            .set_key_state(k2, KeyState::Destroyed)
            .await
            .unwrap();
        app.seal(&ctx, b"4").await.unwrap();
        let k3 = app.seal(&ctx, b"5").await.unwrap().key_id();
        assert_ne!(k3, k2);
        assert_eq!(w.state(k2).await, KeyState::Destroyed, "{kind:?}");

        // The store refuses what the state machine forbids, and a lost race is
        // its own typed error.
        match w
            .store
            .transition(k1, KeyState::Active, KeyState::DecryptOnly)
            .await
        {
            Err(Error::StateConflict {
                current: KeyState::Retired,
                expected: KeyState::Active,
                ..
            }) => {}
            other => panic!("{kind:?}: expected a state conflict, got {other:?}"),
        }
        for to in [KeyState::DecryptOnly, KeyState::Retired, KeyState::Active] {
            assert!(
                w.store
                    .transition(k2, KeyState::Destroyed, to)
                    .await
                    .is_err(),
                "{kind:?}: destroyed -> {to}"
            );
            let (_, operation) = refused(
                operator.set_key_state(k2, to).await,
                KeyState::Destroyed,
                &format!("{kind:?}"),
            );
            assert!(
                matches!(operation, KeyOperation::ChangeState(_)),
                "{kind:?}: {operation:?}"
            );
        }
        // Retired is left only by an explicit operator action.
        operator
            .set_key_state(k1, KeyState::DecryptOnly)
            .await
            .unwrap();
        assert_eq!(w.state(k1).await, KeyState::DecryptOnly);
        assert!(
            operator.set_key_state(k1, KeyState::Active).await.is_err(),
            "{kind:?}: nothing returns to active"
        );
    }
}

#[tokio::test]
async fn blob_writes_lose_to_destroy() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let env = w.process(CacheLimits::default());
        let t = unique("lc_blobs");
        // Index keys are wrapped by the master key (like branch keys): each one
        // is a key a master-key rotation re-wraps.
        let mut ids = Vec::new();
        for i in 0..12 {
            ids.push(
                env.index_key(&t, &format!("i{i}"), None, 1)
                    .await
                    .unwrap()
                    .id(),
            );
        }
        let blob = WrappedKey {
            master_key: MasterKeyId::new("local:rotated/2"),
            blob: vec![1; 61],
        };
        // Destroy first: a later blob write is refused and writes nothing.
        w.store
            .transition(ids[0], KeyState::Active, KeyState::Destroyed)
            .await
            .unwrap();
        let (_, operation) = refused(
            w.store.put_wrapped(ids[0], &blob).await,
            KeyState::Destroyed,
            &format!("{kind:?}"),
        );
        assert_eq!(operation, KeyOperation::Rewrap, "{kind:?}");
        assert!(
            w.store
                .get(ids[0])
                .await
                .unwrap()
                .unwrap()
                .wrapped
                .is_empty()
        );

        // A rotation racing a destroy: whichever commits first, a destroyed
        // key never ends up with wrapped material.
        for &id in &ids[1..] {
            let (s1, s2) = (w.store.clone(), w.store.clone());
            let b = blob.clone();
            let put = tokio::spawn(async move { s1.put_wrapped(id, &b).await });
            let destroy = tokio::spawn(async move {
                s2.transition(id, KeyState::Active, KeyState::Destroyed)
                    .await
            });
            let (_, destroyed) = (put.await.unwrap(), destroy.await.unwrap());
            destroyed.unwrap();
            let rec = w.store.get(id).await.unwrap().unwrap();
            assert_eq!(rec.state, KeyState::Destroyed);
            assert!(rec.wrapped.is_empty(), "{kind:?}: key {id} kept a blob");
        }
        drop(w.db);
    }
}

/// A keyring over a local master key that a test controls: its unwraps (or
/// its key generations) can wait at a gate (to hold a load or a mint in
/// flight), and it can be taken down (every call then fails with the
/// retryable [`Error::KeyringUnavailable`]).
#[derive(Debug)]
struct Controlled {
    inner: LocalKeyring,
    /// Whether unwraps wait at `gate` (announcing themselves on `entered`).
    gated: bool,
    /// Whether key generations wait at `gate` (announcing themselves on
    /// `entered`).
    gated_generate: bool,
    entered: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
    down: std::sync::atomic::AtomicBool,
    unwraps: AtomicU64,
}

impl Controlled {
    fn new(inner: LocalKeyring, gated: bool) -> Controlled {
        Controlled {
            inner,
            gated,
            gated_generate: false,
            entered: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
            unwraps: AtomicU64::new(0),
        }
    }

    /// One whose key generations wait at the gate (its unwraps do not).
    fn gating_generate(inner: LocalKeyring) -> Controlled {
        Controlled {
            gated_generate: true,
            ..Controlled::new(inner, false)
        }
    }

    fn check(&self) -> sqlx_envelope::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::KeyringUnavailable {
                master_key: "local:test/1".into(),
                message: "down for the test".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Keyring for Controlled {
    fn master_keys(&self) -> Vec<MasterKeyId> {
        self.inner.master_keys()
    }
    fn can_unwrap(&self, m: &MasterKeyId) -> bool {
        self.inner.can_unwrap(m)
    }
    async fn generate(&self, ctx: &KeyContext) -> sqlx_envelope::Result<GeneratedKey> {
        self.check()?;
        if self.gated_generate {
            self.entered.notify_one();
            let _pass = self.gate.acquire().await.expect("gate open");
        }
        self.inner.generate(ctx).await
    }
    async fn wrap(
        &self,
        ctx: &KeyContext,
        m: &KeyMaterial,
    ) -> sqlx_envelope::Result<Vec<WrappedKey>> {
        self.check()?;
        self.inner.wrap(ctx, m).await
    }
    async fn unwrap(
        &self,
        ctx: &KeyContext,
        w: &[WrappedKey],
    ) -> sqlx_envelope::Result<KeyMaterial> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        if self.gated {
            self.entered.notify_one();
            let _pass = self.gate.acquire().await.expect("gate open");
        }
        self.inner.unwrap(ctx, w).await
    }
}

/// Two application processes, each with its own cache, compute a table's
/// blind index while the operator's tool retires the index key, all under
/// one `ManualClock` that the applications advance as they go. Neither ever
/// gets another key for the slot (its index values would silently change);
/// each keeps its cached key at most the branch TTL after the retire, and
/// once it has been refused, it is refused from then on; the operator's own
/// process refuses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_and_an_operator_retire_an_index_key() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let branch_ttl = Duration::from_secs(120);
        let limits = CacheLimits::default().branch_ttl(branch_ttl);
        let (app1, app2) = (w.process(limits.clone()), w.process(limits.clone()));
        let operator = w.process(limits);
        let t = unique("lc_index_retire");
        let id = app1.index_key(&t, "email", None, 1).await.unwrap().id();
        assert_eq!(app2.index_key(&t, "email", None, 1).await.unwrap().id(), id);

        // Each application looks the key up, 5 s of the shared clock apart,
        // a store round trip between lookups (as a request would make): ten
        // times, then (the operator starting its retire meanwhile) on until
        // it has been refused and made 40 lookups, or made 400 more after the
        // operator's retire returned, however long that takes on a loaded
        // machine. Returns (clock at the call, served) per lookup.
        let start = Arc::new(tokio::sync::Barrier::new(3));
        let retired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let run = |app: Envelope| {
            let (clock, t, store, start, retired) = (
                w.clock.clone(),
                t.clone(),
                w.store.clone(),
                start.clone(),
                retired.clone(),
            );
            tokio::spawn(async move {
                let mut seen: Vec<(Duration, bool)> = Vec::new();
                let mut since_retired = 0;
                for i in 0.. {
                    if i == 10 {
                        start.wait().await;
                    }
                    if i >= 40 && seen.last().is_some_and(|(_, ok)| !ok) {
                        break;
                    }
                    if retired.load(Ordering::SeqCst) {
                        since_retired += 1;
                        if since_retired > 400 {
                            break;
                        }
                    }
                    store.now_ms().await.unwrap();
                    let at = clock.now();
                    match app.index_key(&t, "email", None, 1).await {
                        Ok(k) => {
                            assert_eq!(k.id(), id, "{kind:?}: another key for the slot");
                            seen.push((at, true));
                        }
                        Err(Error::KeyNotUsable {
                            id: got,
                            state: KeyState::Retired,
                            ..
                        }) => {
                            assert_eq!(got, id);
                            seen.push((at, false));
                        }
                        Err(e) => panic!("{kind:?}: {e:?}"),
                    }
                    clock.advance(Duration::from_secs(5));
                }
                seen
            })
        };
        let (a1, a2) = (run(app1.clone()), run(app2.clone()));
        start.wait().await;
        operator.set_key_state(id, KeyState::Retired).await.unwrap();
        retired.store(true, Ordering::SeqCst);
        // The retire committed no later than this reading.
        let retired_at = w.clock.now();
        assert_eq!(w.state(id).await, KeyState::Retired);
        refused(
            operator.index_key(&t, "email", None, 1).await,
            KeyState::Retired,
            &format!("{kind:?}: the operator's process served a retired key"),
        );
        for seen in [a1.await.unwrap(), a2.await.unwrap()] {
            // Refused once, refused from then on.
            let first_refusal = seen.iter().position(|(_, ok)| !ok);
            let first_refusal = first_refusal.expect("refused within the run");
            assert!(
                seen[first_refusal..].iter().all(|(_, ok)| !ok),
                "{kind:?}: {seen:?}"
            );
            // Never served later than the branch TTL after the retire.
            for (at, ok) in &seen {
                if *ok {
                    assert!(
                        *at < retired_at + branch_ttl,
                        "{kind:?}: served at {at:?}, retired at {retired_at:?}"
                    );
                }
            }
        }
        for app in [&app1, &app2] {
            assert!(
                app.index_key(&t, "email", None, 1).await.is_err(),
                "{kind:?}"
            );
        }
    }
}

/// A process over `db`'s key store whose keyring (the local master key
/// `material`) waits at the gate on every unwrap.
fn gated_reader(db: &Db, material: KeyMaterial) -> (Arc<Controlled>, Envelope) {
    let gated = Arc::new(Controlled::new(
        LocalKeyring::new("test/1", material).unwrap(),
        true,
    ));
    let reader = Envelope::builder()
        .keyring_arc(gated.clone())
        .store_arc(db.key_store())
        .build()
        .unwrap();
    (gated, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_in_flight_cannot_outlive_a_retire() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let material = KeyMaterial::generate();
        let plain = LocalKeyring::new("test/1", material.clone()).unwrap();
        let writer = Envelope::builder()
            .keyring(plain)
            .store_arc(db.key_store())
            .build()
            .unwrap();
        let t = unique("lc_inflight");
        let row = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &row);
        let v = writer.seal(&ctx, b"in flight").await.unwrap();
        let id = v.key_id();

        let (gated, reader) = gated_reader(&db, material);
        // A cold open starts and waits inside the keyring (the branch key).
        let load = {
            let (r, v, t) = (reader.clone(), v.clone(), t.clone());
            tokio::spawn(async move {
                let row = RowId::from(1_i64);
                r.open(&Context::new(&t, "v", &row), &v).await.map(|_| ())
            })
        };
        gated.entered.notified().await;
        // Meanwhile this process retires the key.
        let retire = {
            let r = reader.clone();
            tokio::spawn(async move { r.set_key_state(id, KeyState::Retired).await })
        };
        while db.key_store().get(id).await.unwrap().unwrap().state != KeyState::Retired {
            tokio::task::yield_now().await;
        }
        gated.gate.add_permits(1_000);
        let _ = load.await.unwrap();
        retire.await.unwrap().unwrap();
        // Whatever the in-flight load did, the retire wins from now on.
        refused(
            reader.open(&ctx, &v).await,
            KeyState::Retired,
            &format!("{kind:?}: a retired key opened"),
        );
    }
}

/// The same for an index key: a first load that read the key's record before
/// the operator's retire, and is still unwrapping, does not leave the key
/// cached afterwards (the retire waits for it through the key's slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_key_load_in_flight_cannot_outlive_a_retire() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let material = KeyMaterial::generate();
        let writer = Envelope::builder()
            .keyring(LocalKeyring::new("test/1", material.clone()).unwrap())
            .store_arc(db.key_store())
            .build()
            .unwrap();
        let t = unique("lc_inflight_index");
        let id = writer.index_key(&t, "email", None, 1).await.unwrap().id();

        let (gated, reader) = gated_reader(&db, material);
        let load = {
            let (r, t) = (reader.clone(), t.clone());
            tokio::spawn(async move { r.index_key(&t, "email", None, 1).await.map(|_| ()) })
        };
        gated.entered.notified().await;
        let retire = {
            let r = reader.clone();
            tokio::spawn(async move { r.set_key_state(id, KeyState::Retired).await })
        };
        // (A retire that failed before its transition ends the wait: it is
        // unwrapped below.)
        while db.key_store().get(id).await.unwrap().unwrap().state != KeyState::Retired
            && !retire.is_finished()
        {
            tokio::task::yield_now().await;
        }
        gated.gate.add_permits(1_000);
        let _ = load.await.unwrap();
        retire.await.unwrap().unwrap();
        let (got, _) = refused(
            reader.index_key(&t, "email", None, 1).await,
            KeyState::Retired,
            &format!("{kind:?}: a retired index key served"),
        );
        assert_eq!(got, id, "{kind:?}");
    }
}

#[tokio::test]
async fn destroyed_and_dropped_keys_leave_no_reachable_material() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let env = w.process(CacheLimits::default());
        let t = unique("lc_weak");
        let row = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &row);
        // Warm both paths: the key sits in the active cache, the decrypt
        // cache and both fronts.
        let v = env.seal(&ctx, b"x").await.unwrap();
        env.seal(&ctx, b"y").await.unwrap();
        env.open(&ctx, &v).await.unwrap();
        env.open(&ctx, &v).await.unwrap();
        let weak = {
            let set = env.keys_for([v.as_bytes()]).await.unwrap();
            Arc::downgrade(&set.get_arc(v.key_id()).unwrap())
        };
        assert!(weak.upgrade().is_some());
        env.set_key_state(v.key_id(), KeyState::Destroyed)
            .await
            .unwrap();
        assert!(
            weak.upgrade().is_none(),
            "{kind:?}: a destroyed key is still reachable"
        );

        // Dropping the envelope releases everything it cached.
        let v2 = env.seal(&ctx, b"z").await.unwrap();
        env.open(&ctx, &v2).await.unwrap();
        let weak = {
            let set = env.keys_for([v2.as_bytes()]).await.unwrap();
            Arc::downgrade(&set.get_arc(v2.key_id()).unwrap())
        };
        drop(env);
        assert!(
            weak.upgrade().is_none(),
            "{kind:?}: a dropped envelope left its key reachable"
        );
    }
}

/// Counts keyring calls in flight.
#[derive(Debug)]
struct InFlight {
    inner: Arc<LocalKeyring>,
    now: AtomicU64,
    max: AtomicU64,
    calls: AtomicU64,
}

#[async_trait]
impl Keyring for InFlight {
    fn master_keys(&self) -> Vec<MasterKeyId> {
        self.inner.master_keys()
    }
    fn can_unwrap(&self, m: &MasterKeyId) -> bool {
        self.inner.can_unwrap(m)
    }
    async fn generate(&self, ctx: &KeyContext) -> sqlx_envelope::Result<GeneratedKey> {
        self.inner.generate(ctx).await
    }
    async fn wrap(
        &self,
        ctx: &KeyContext,
        m: &KeyMaterial,
    ) -> sqlx_envelope::Result<Vec<WrappedKey>> {
        self.inner.wrap(ctx, m).await
    }
    async fn unwrap(
        &self,
        ctx: &KeyContext,
        w: &[WrappedKey],
    ) -> sqlx_envelope::Result<KeyMaterial> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.inner.unwrap(ctx, w).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_fan_out_is_bounded() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let writer = w.process(CacheLimits::default());
        let t = unique("lc_fanout");
        // 40 tenants: 40 branch keys, so a cold read needs 40 keyring calls.
        let rows: Vec<RowId> = (0..40_i64).map(RowId::from).collect();
        let tenants: Vec<String> = (0..40).map(|i| format!("{t}-tenant-{i}")).collect();
        let mut values = Vec::new();
        for (r, tn) in rows.iter().zip(&tenants) {
            let ctx = Context::new(&t, "v", r).with_tenant(tn);
            values.push(writer.seal(&ctx, b"v").await.unwrap());
        }
        for bound in [4_usize, 16] {
            let counting = Arc::new(InFlight {
                inner: w.keyring.clone(),
                now: AtomicU64::new(0),
                max: AtomicU64::new(0),
                calls: AtomicU64::new(0),
            });
            let reader = Envelope::builder()
                .keyring_arc(counting.clone())
                .store_arc(w.store.clone())
                .keyring_concurrency(bound)
                .build()
                .unwrap();
            let items: Vec<_> = rows
                .iter()
                .zip(&tenants)
                .zip(&values)
                .map(|((r, tn), v)| (Context::new(&t, "v", r).with_tenant(tn), v.as_bytes()))
                .collect();
            assert_eq!(reader.open_many(&items).await.unwrap().len(), 40);
            let max = counting.max.load(Ordering::SeqCst);
            assert_eq!(counting.calls.load(Ordering::SeqCst), 40, "{kind:?}");
            assert!(
                max <= bound as u64,
                "{kind:?}: {max} calls in flight, bound {bound}"
            );
            assert!(max >= 2, "{kind:?}: the calls did not overlap at all");
        }
    }
}

#[tokio::test]
async fn an_outage_leaves_no_rows_and_stale_reservations_are_cleaned_up() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let down = Arc::new(Controlled::new(local_keyring(), false));
        down.down.store(true, Ordering::SeqCst);
        let env = w.process_with(down, CacheLimits::default());
        let t = unique("lc_outage");
        let row = RowId::from(1_i64);
        for _ in 0..50 {
            let e = env
                .seal(&Context::new(&t, "v", &row), b"x")
                .await
                .unwrap_err();
            assert!(e.is_retryable(), "{kind:?}: {e:?}");
        }
        let left = w.store.list(&KeyFilter::all().scope(&t)).await.unwrap();
        assert!(left.is_empty(), "{kind:?}: a failed seal left {left:?}");

        // A process that died between reserving and activating leaves a pending
        // row; cleanup removes it once it is older than asked, never an active
        // key.
        let Reserved::Mine(dead) = w
            .store
            .reserve(&NewKey {
                kind: KeyKind::Data,
                scope: &t,
                tenant: None,
                slot: None,
                owner: "dead-process",
            })
            .await
            .unwrap()
        else {
            panic!("no slot, no conflict")
        };
        let live = w.process(CacheLimits::default());
        let v = live.seal(&Context::new(&t, "w", &row), b"y").await.unwrap();
        assert_eq!(
            w.store
                .cleanup_pending(Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        w.clock.advance(Duration::from_secs(3601));
        assert!(
            w.store
                .cleanup_pending(Duration::from_secs(3600))
                .await
                .unwrap()
                >= 1
        );
        assert!(w.store.get(dead).await.unwrap().is_none(), "{kind:?}");
        assert_eq!(w.state(v.key_id()).await, KeyState::Active);
        assert_eq!(
            &live.open(&Context::new(&t, "w", &row), &v).await.unwrap()[..],
            b"y"
        );
    }
}

#[tokio::test]
async fn the_horizon_bounds_every_process_seal_by_the_store_clock() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let limits = CacheLimits::default()
            .max_age(Duration::from_secs(60))
            .outage_grace(Duration::from_secs(30));
        let app = w.process(limits);
        let t = unique("lc_horizon");
        let row = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &row);
        let k = app.seal(&ctx, b"a").await.unwrap().key_id();
        let rec = w.store.get(k).await.unwrap().unwrap();
        let activated = rec.state_ms.unwrap();
        assert_eq!(rec.horizon_ms, Some(activated + 90_000), "{kind:?}");
        // The app seals under k as long as it may, each time checking against
        // the store's clock: never past the horizon.
        let mut last_under_k = None;
        for _ in 0..200 {
            let v = app.seal(&ctx, b"b").await.unwrap();
            if v.key_id() != k {
                break;
            }
            last_under_k = Some(w.store.now_ms().await.unwrap());
            w.clock.advance(Duration::from_millis(500));
        }
        let last = last_under_k.expect("sealed under k at least once");
        assert!(
            last <= rec.horizon_ms.unwrap(),
            "{kind:?}: sealed past the horizon"
        );
        assert!(last >= activated + 59_000, "{kind:?}: stopped too early");
    }
}

#[tokio::test]
async fn shredding_a_tenant_destroys_its_key_tree_and_nothing_else() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let limits = CacheLimits::default()
            .max_uses(2)
            .decrypt_ttl(Duration::from_secs(60))
            .branch_ttl(Duration::from_secs(120));
        let app = w.process(limits.clone());
        let other = w.process(limits);
        let (t1, t2) = (unique("lc_shred_a"), unique("lc_shred_b"));
        let (gone, kept) = (unique("acme"), unique("globex"));
        let rows: Vec<RowId> = (0..6_i64).map(RowId::from).collect();
        let mut values = Vec::new();
        for r in &rows {
            for t in [&t1, &t2] {
                for tenant in [&gone, &kept] {
                    let ctx = Context::new(t, "v", r).with_tenant(tenant);
                    values.push((
                        t.clone(),
                        r.clone(),
                        tenant.clone(),
                        app.seal(&ctx, b"v").await.unwrap(),
                    ));
                }
            }
        }
        app.index_key(&t1, "email", Some(&gone), 1).await.unwrap();
        // Another process has the tenant's keys cached, its index key too.
        let gone_index = other.index_key(&t1, "email", Some(&gone), 1).await.unwrap();
        let kept_index = other.index_key(&t1, "email", Some(&kept), 1).await.unwrap();
        for (t, r, tenant, v) in &values {
            other
                .open(&Context::new(t, "v", r).with_tenant(tenant), v)
                .await
                .unwrap();
        }

        let report = app.shred_tenant(&gone).await.unwrap();
        assert!(report.data_keys >= 6, "{kind:?}: {report:?}");
        assert_eq!(report.branch_keys, 1, "{kind:?}: one branch key per tenant");
        assert_eq!(report.index_keys, 1);
        assert_eq!(report.master_keys, vec![w.keyring.primary().to_string()]);

        let tenant_keys = w
            .store
            .list(&KeyFilter::all().tenant(Some(&gone)))
            .await
            .unwrap();
        assert!(!tenant_keys.is_empty());
        for k in &tenant_keys {
            assert_eq!(k.state, KeyState::Destroyed, "{kind:?}");
            assert!(
                k.wrapped.is_empty() && k.parent.is_none(),
                "{kind:?}: material left for {k:?}"
            );
        }
        // The shredding process at once; the other one when its cache entries
        // expire; the other tenant never.
        w.clock.advance(Duration::from_secs(61));
        for (t, r, tenant, v) in &values {
            let ctx = Context::new(t, "v", r).with_tenant(tenant);
            for env in [&app, &other] {
                let opened = env.open(&ctx, v).await;
                if *tenant == gone {
                    refused(
                        opened,
                        KeyState::Destroyed,
                        &format!("{kind:?}: a shredded value"),
                    );
                } else {
                    assert_eq!(&opened.unwrap()[..], b"v", "{kind:?}");
                }
            }
        }
        // Its index key: in the shredding process at once, in the other one
        // once the entry's TTL (the branch TTL) has passed; the other
        // tenant's index key is unwrapped again and still serves.
        let destroyed = |got: sqlx_envelope::Result<Arc<sqlx_envelope::envelope::IndexKey>>,
                         when: &str| {
            let what = format!("{kind:?}: a shredded index key, {when}");
            let (id, _) = refused(got, KeyState::Destroyed, &what);
            assert_eq!(id, gone_index.id(), "{kind:?}");
        };
        destroyed(app.index_key(&t1, "email", Some(&gone), 1).await, "at once");
        // Past the decrypt TTL, within the branch TTL: the other process's
        // entry is the one it cached (the TTL of index keys is the branch
        // TTL, as documented).
        let cached = other.index_key(&t1, "email", Some(&gone), 1).await.unwrap();
        assert!(Arc::ptr_eq(&cached, &gone_index), "{kind:?}");
        w.clock.advance(Duration::from_secs(60));
        destroyed(
            other.index_key(&t1, "email", Some(&gone), 1).await,
            "past its TTL",
        );
        let again = other.index_key(&t1, "email", Some(&kept), 1).await.unwrap();
        assert_eq!(again.id(), kept_index.id(), "{kind:?}");
        assert_eq!(again.expose(), kept_index.expose(), "{kind:?}");
        assert!(
            !Arc::ptr_eq(&again, &kept_index),
            "{kind:?}: unwrapped anew"
        );
        // New writes for the other tenant go on as before.
        let r = RowId::from(99_i64);
        let ctx = Context::new(&t1, "v", &r).with_tenant(&kept);
        let v = app.seal(&ctx, b"after").await.unwrap();
        assert_eq!(&other.open(&ctx, &v).await.unwrap()[..], b"after");
    }
}

/// Two application processes and the operator's tool over one store, under
/// one `ManualClock`: one process mints an index key for a tenant (reserved,
/// its keyring call in flight) and the other has the tenant's data key
/// cached, while the operator shreds the tenant. The reservation is destroyed
/// with the rest, the mint fails with `KeyNotUsable` when the keyring
/// returns, and no key of the tenant is left anything but destroyed (before,
/// the shred skipped it and it became active afterwards, wrapped by the master
/// key: the tenant's blind indexes computable again); the other process opens
/// the tenant's value until its decrypt TTL runs out, then no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_minted_while_its_tenant_is_shredded_ends_destroyed() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let gated = Arc::new(Controlled::gating_generate(local_keyring()));
        let limits = CacheLimits::default().decrypt_ttl(Duration::from_secs(60));
        let app = w.process_with(gated.clone(), limits.clone());
        let reader = w.process(limits);
        let operator = w.process(CacheLimits::default());
        let (t, tenant) = (unique("lc_shred_mint"), unique("acme"));
        // The tenant's branch and data keys, minted by the operator's process
        // (the application's key generations wait at the gate); the second
        // application has them cached.
        let r = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &r).with_tenant(&tenant);
        let sealed = operator.seal(&ctx, b"v").await.unwrap();
        assert_eq!(&reader.open(&ctx, &sealed).await.unwrap()[..], b"v");

        let entered = gated.entered.notified();
        let mint = tokio::spawn({
            let (app, t, tenant) = (app.clone(), t.clone(), tenant.clone());
            async move { app.index_key(&t, "email", Some(&tenant), 1).await }
        });
        entered.await;
        let pending = w
            .store
            .list(&KeyFilter::all().tenant(Some(&tenant)).kind(KeyKind::Index))
            .await
            .unwrap();
        assert_eq!(pending.len(), 1, "{kind:?}: {pending:?}");
        assert_eq!(pending[0].state, KeyState::Pending, "{kind:?}");

        let report = operator.shred_tenant(&tenant).await.unwrap();
        assert_eq!(
            (report.data_keys, report.branch_keys, report.index_keys),
            (1, 1, 1),
            "{kind:?}: the reservation is destroyed with the rest: {report:?}"
        );
        gated.gate.add_permits(1);
        let (id, operation) = refused(
            mint.await.unwrap(),
            KeyState::Destroyed,
            &format!("{kind:?}: a mint its tenant's shred overtook"),
        );
        assert_eq!(operation, KeyOperation::Index, "{kind:?}");
        assert_eq!(id, pending[0].id, "{kind:?}");
        for k in w
            .store
            .list(&KeyFilter::all().tenant(Some(&tenant)))
            .await
            .unwrap()
        {
            assert_eq!(k.state, KeyState::Destroyed, "{kind:?}: {k:?}");
            assert!(k.wrapped.is_empty(), "{kind:?}: material left for {k:?}");
        }
        // The slot stays taken by the destroyed key: no process mints another.
        let (_, operation) = refused(
            app.index_key(&t, "email", Some(&tenant), 1).await,
            KeyState::Destroyed,
            &format!("{kind:?}: the shredded tenant's index key"),
        );
        assert_eq!(operation, KeyOperation::Index, "{kind:?}");
        refused(
            operator.open(&ctx, &sealed).await,
            KeyState::Destroyed,
            &format!("{kind:?}: a shredded value"),
        );
        // The other application: its cached copy within the decrypt TTL (as
        // documented), refused once the TTL has run out.
        assert_eq!(&reader.open(&ctx, &sealed).await.unwrap()[..], b"v");
        w.clock.advance(Duration::from_secs(61));
        refused(
            reader.open(&ctx, &sealed).await,
            KeyState::Destroyed,
            &format!("{kind:?}: a shredded value past the TTL"),
        );
    }
}

/// Defect 1 of the lifecycle issue: `retire && reencrypt && destroy` in one go
/// while another process still holds the key as its active key. Destroy waits
/// for the key's seal horizon (recorded in the store, read by the operator's
/// tool without knowing the application's configuration), then counts rows.
#[tokio::test]
async fn destroy_waits_for_the_seal_horizon_of_every_process() {
    use sqlx_envelope::jobs::{DestroyOptions, JobError, JobPool, destroy_key};
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let limits = CacheLimits::default().max_age(Duration::from_secs(300));
        let app = w.process(limits.clone());
        let operator = w.process(CacheLimits::default());
        let jobs = match &w.db {
            Db::Postgres(p) => JobPool::from(p.clone()),
            Db::MySql(p) => JobPool::from(p.clone()),
            Db::Sqlite(p, _) => JobPool::from(p.clone()),
        };
        let t = unique("lc_destroy");
        w.db.create_blob_table(&t, &["v"]).await;
        let (row1, row2) = (RowId::from(1_i64), RowId::from(2_i64));
        let ctx1 = Context::new(&t, "v", &row1);
        let v1 = app.seal(&ctx1, b"one").await.unwrap();
        let k = v1.key_id();
        w.db.put_sealed(&t, "v", 1, &v1).await;

        // The operator retires k and finds no rows to re-encrypt yet... but
        // the app still holds k as its active key.
        operator
            .set_key_state(k, KeyState::DecryptOnly)
            .await
            .unwrap();
        let horizon = w.store.get(k).await.unwrap().unwrap().horizon_ms.unwrap();
        match destroy_key(&operator, &jobs, &DestroyOptions::new(), k).await {
            Err(JobError::SealHorizon { key, wait }) => {
                assert_eq!(key, k);
                let now = w.store.now_ms().await.unwrap();
                assert_eq!(wait.as_millis() as i64, horizon + 60_000 - now, "{kind:?}");
            }
            other => panic!("{kind:?}: destroy before the horizon must wait, got {other:?}"),
        }
        assert_eq!(w.state(k).await, KeyState::DecryptOnly, "{kind:?}");
        // Which is right: the app seals another row under k meanwhile.
        let ctx2 = Context::new(&t, "v", &row2);
        let v2 = app.seal(&ctx2, b"two").await.unwrap();
        assert_eq!(v2.key_id(), k, "{kind:?}: the app's cached key still seals");
        w.db.put_sealed(&t, "v", 2, &v2).await;

        // Past the horizon and the settle time, nobody seals under k any more
        // and destroy counts the rows: both remain, so it refuses.
        w.clock.advance(Duration::from_millis(
            (horizon + 60_001 - w.store.now_ms().await.unwrap()) as u64,
        ));
        let v3 = app.seal(&ctx2, b"three").await.unwrap();
        assert_ne!(v3.key_id(), k, "{kind:?}");
        match destroy_key(&operator, &jobs, &DestroyOptions::new(), k).await {
            Err(JobError::RowsRemain { rows, .. }) => assert_eq!(rows, 2, "{kind:?}"),
            other => panic!("{kind:?}: rows remain, got {other:?}"),
        }
        assert_eq!(w.state(k).await, KeyState::DecryptOnly, "{kind:?}");
        // Re-encrypt both rows (what `reencrypt` does), then destroy succeeds
        // and nothing sealed under k was lost.
        for (row, ctx, v) in [(1, &ctx1, &v1), (2, &ctx2, &v2)] {
            let pt = app.open(ctx, v).await.unwrap();
            let fresh = app.seal(ctx, &pt).await.unwrap();
            assert_ne!(fresh.key_id(), k);
            w.db.put_sealed(&t, "v", row, &fresh).await;
        }
        destroy_key(&operator, &jobs, &DestroyOptions::new(), k)
            .await
            .unwrap();
        assert_eq!(w.state(k).await, KeyState::Destroyed, "{kind:?}");
    }
}

/// Where [`HeldStore`] holds the destroying process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// After its read of the store's clock (destroy's first count follows).
    Clock,
    /// After a key moved to `retired` (destroy's second count follows).
    Suspended,
    /// After a data key was reserved (its activation under the branch key the
    /// process chose follows).
    Reserved,
}

type Armed = (
    Hold,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

/// One process's view of the shared key store: its first call at the armed
/// point returns only when the test releases it, so another process acts
/// while this one counts rows (destroy) or mints a data key.
#[derive(Debug)]
struct HeldStore {
    inner: Arc<dyn KeyStore>,
    armed: std::sync::Mutex<Option<Armed>>,
}

impl HeldStore {
    /// Hold the next call at `at`: the first receiver fires when it is held,
    /// sending on the second releases it.
    fn arm(
        &self,
        at: Hold,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        *self.armed.lock().unwrap() = Some((at, reached_tx, release_rx));
        (reached_rx, release_tx)
    }

    async fn hold(&self, at: Hold) {
        let taken = {
            let mut armed = self.armed.lock().unwrap();
            match armed.as_ref() {
                Some((point, ..)) if *point == at => armed.take(),
                _ => None,
            }
        };
        if let Some((_, reached, release)) = taken {
            reached.send(()).unwrap();
            release.await.unwrap();
        }
    }
}

#[async_trait]
impl KeyStore for HeldStore {
    async fn migrate(&self) -> sqlx_envelope::Result<()> {
        self.inner.migrate().await
    }
    async fn now_ms(&self) -> sqlx_envelope::Result<i64> {
        let now = self.inner.now_ms().await;
        self.hold(Hold::Clock).await;
        now
    }
    async fn reserve(&self, new: &NewKey<'_>) -> sqlx_envelope::Result<Reserved> {
        let reserved = self.inner.reserve(new).await;
        if new.kind == KeyKind::Data {
            self.hold(Hold::Reserved).await;
        }
        reserved
    }
    async fn activate(
        &self,
        id: sqlx_envelope::KeyId,
        owner: &str,
        activation: &sqlx_envelope::store::Activation<'_>,
    ) -> sqlx_envelope::Result<()> {
        self.inner.activate(id, owner, activation).await
    }
    async fn abandon(&self, id: sqlx_envelope::KeyId, owner: &str) -> sqlx_envelope::Result<bool> {
        self.inner.abandon(id, owner).await
    }
    async fn take_over(
        &self,
        id: sqlx_envelope::KeyId,
        owner: &str,
        stale_before_ms: i64,
    ) -> sqlx_envelope::Result<bool> {
        self.inner.take_over(id, owner, stale_before_ms).await
    }
    async fn get(
        &self,
        id: sqlx_envelope::KeyId,
    ) -> sqlx_envelope::Result<Option<sqlx_envelope::store::KeyRecord>> {
        self.inner.get(id).await
    }
    async fn get_many(
        &self,
        ids: &[sqlx_envelope::KeyId],
    ) -> sqlx_envelope::Result<Vec<sqlx_envelope::store::KeyRecord>> {
        self.inner.get_many(ids).await
    }
    async fn list(
        &self,
        filter: &KeyFilter,
    ) -> sqlx_envelope::Result<Vec<sqlx_envelope::store::KeyRecord>> {
        self.inner.list(filter).await
    }
    async fn find_slot(
        &self,
        slot: &str,
    ) -> sqlx_envelope::Result<Option<sqlx_envelope::store::KeyRecord>> {
        self.inner.find_slot(slot).await
    }
    async fn transition(
        &self,
        id: sqlx_envelope::KeyId,
        from: KeyState,
        to: KeyState,
    ) -> sqlx_envelope::Result<()> {
        self.inner.transition(id, from, to).await?;
        if to == KeyState::Retired {
            self.hold(Hold::Suspended).await;
        }
        Ok(())
    }
    async fn put_wrapped(
        &self,
        id: sqlx_envelope::KeyId,
        wrapped: &WrappedKey,
    ) -> sqlx_envelope::Result<()> {
        self.inner.put_wrapped(id, wrapped).await
    }
    async fn delete_wrapped(
        &self,
        id: sqlx_envelope::KeyId,
        master_key: &MasterKeyId,
    ) -> sqlx_envelope::Result<()> {
        self.inner.delete_wrapped(id, master_key).await
    }
    async fn register_columns(
        &self,
        columns: &[sqlx_envelope::store::ColumnRecord],
    ) -> sqlx_envelope::Result<()> {
        self.inner.register_columns(columns).await
    }
    async fn columns(&self) -> sqlx_envelope::Result<Vec<sqlx_envelope::store::ColumnRecord>> {
        self.inner.columns().await
    }
    async fn cleanup_pending(&self, older_than: Duration) -> sqlx_envelope::Result<u64> {
        self.inner.cleanup_pending(older_than).await
    }
}

/// Destroy decides on the key state it read, and every change it makes is a
/// compare-and-set from that state: an operator's suspend or reactivate issued
/// while it counts rows (its process held at the store by [`HeldStore`]) is
/// neither undone nor overtaken, and a row restored between its two counts
/// keeps its key. An application process seals, and a fresh one opens, under
/// one `ManualClock`.
#[tokio::test]
async fn destroy_leaves_a_change_made_while_it_counts_as_it_was_made() {
    use sqlx_envelope::jobs::{DestroyOptions, JobError, JobPool, destroy_key};
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let (held, destroyer) = w.held_process();
        let app = w.process(CacheLimits::default());
        let operator = w.process(CacheLimits::default());
        let jobs = match &w.db {
            Db::Postgres(p) => JobPool::from(p.clone()),
            Db::MySql(p) => JobPool::from(p.clone()),
            Db::Sqlite(p, _) => JobPool::from(p.clone()),
        };
        let t = unique("lc_held");
        w.db.create_blob_table(&t, &["v"]).await;
        let row = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &row);
        let v = app.seal(&ctx, b"one").await.unwrap();
        let k = v.key_id();
        w.db.put_sealed(&t, "v", 1, &v).await;
        operator
            .set_key_state(k, KeyState::DecryptOnly)
            .await
            .unwrap();
        let opts = DestroyOptions::new().settle(Duration::ZERO);
        match destroy_key(&destroyer, &jobs, &opts, k).await {
            Err(JobError::SealHorizon { wait, .. }) => {
                w.clock.advance(wait + Duration::from_millis(1))
            }
            other => panic!("{kind:?}: destroy before the horizon must wait, got {other:?}"),
        }

        // 1. The row remains; the operator suspends the key while destroy
        //    counts. The refusal leaves the suspension in place.
        let (reached, release) = held.arm(Hold::Clock);
        let (r, ()) = tokio::join!(destroy_key(&destroyer, &jobs, &opts, k), async {
            reached.await.unwrap();
            operator.set_key_state(k, KeyState::Retired).await.unwrap();
            release.send(()).unwrap();
        });
        match r {
            Err(JobError::RowsRemain { rows, .. }) => assert_eq!(rows, 1, "{kind:?}"),
            other => panic!("{kind:?}: the row remains, got {other:?}"),
        }
        assert_eq!(
            w.state(k).await,
            KeyState::Retired,
            "{kind:?}: the operator's suspend stands"
        );
        operator
            .change_key_state(k, KeyState::Retired, KeyState::DecryptOnly)
            .await
            .unwrap();

        // 2. No row is left; destroy suspends the key and, while it counts
        //    again, the operator reactivates it: destroy fails, the key stays.
        w.db.exec(&format!("UPDATE {t} SET v = NULL WHERE id = 1"))
            .await;
        let (reached, release) = held.arm(Hold::Suspended);
        let (r, ()) = tokio::join!(destroy_key(&destroyer, &jobs, &opts, k), async {
            reached.await.unwrap();
            operator
                .change_key_state(k, KeyState::Retired, KeyState::DecryptOnly)
                .await
                .unwrap();
            release.send(()).unwrap();
        });
        match r {
            Err(JobError::Envelope(Error::StateConflict {
                id,
                expected,
                current,
                wanted,
            })) => assert_eq!(
                (id, expected, current, wanted),
                (
                    k,
                    KeyState::Retired,
                    KeyState::DecryptOnly,
                    KeyState::Destroyed
                ),
                "{kind:?}"
            ),
            other => panic!("{kind:?}: the reactivated key must not be destroyed, got {other:?}"),
        }
        assert_eq!(w.state(k).await, KeyState::DecryptOnly, "{kind:?}");

        // 3. A row restored between the two counts: destroy refuses and puts
        //    the key back as it found it; a process that never cached the key
        //    opens the row.
        let (reached, release) = held.arm(Hold::Suspended);
        let (r, ()) = tokio::join!(destroy_key(&destroyer, &jobs, &opts, k), async {
            reached.await.unwrap();
            w.db.put_sealed(&t, "v", 1, &v).await;
            release.send(()).unwrap();
        });
        match r {
            Err(JobError::RowsRemain { rows, .. }) => assert_eq!(rows, 1, "{kind:?}"),
            other => panic!("{kind:?}: the restored row remains, got {other:?}"),
        }
        assert_eq!(w.state(k).await, KeyState::DecryptOnly, "{kind:?}");
        let fresh = w.process(CacheLimits::default());
        assert_eq!(
            fresh.open(&ctx, &v).await.unwrap().as_bytes(),
            b"one",
            "{kind:?}"
        );

        // Without interference, destroy goes through.
        w.db.exec(&format!("UPDATE {t} SET v = NULL WHERE id = 1"))
            .await;
        destroy_key(&destroyer, &jobs, &opts, k).await.unwrap();
        assert_eq!(w.state(k).await, KeyState::Destroyed, "{kind:?}");
    }
}

/// A data key becomes active only under a branch key that still is: an
/// operator suspends a tenant's branch key after an application chose it for
/// a new data key and before that key's activation (the application held at
/// the store by [`HeldStore`]); the activation is refused in the store's
/// transaction, the application chooses again (a new branch key), and no data
/// key is ever activated under the suspended one. Another process opens the
/// new value and, as the suspension means, not the old one. One `ManualClock`.
#[tokio::test]
async fn a_data_key_is_never_activated_under_a_suspended_branch_key() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let (held, app) = w.held_process();
        let operator = w.process(CacheLimits::default());
        let reader = w.process(CacheLimits::default());
        let (t, tenant) = (unique("lc_branch"), unique("acme"));
        let (row1, row2) = (RowId::from(1_i64), RowId::from(2_i64));
        let ctx1 = Context::new(&t, "v", &row1).with_tenant(&tenant);
        let ctx2 = Context::new(&t, "v", &row2).with_tenant(&tenant);
        let v1 = app.seal(&ctx1, b"one").await.unwrap();
        let parent_of = async |id| {
            w.store
                .get(id)
                .await
                .unwrap()
                .unwrap()
                .parent
                .unwrap()
                .parent
        };
        let branch = parent_of(v1.key_id()).await;

        // The application's next seal mints a data key; the operator suspends
        // the branch key it chose while the mint is between reserve and
        // activation.
        app.rotate_active_keys().await;
        let (reached, release) = held.arm(Hold::Reserved);
        let (v2, ()) = tokio::join!(app.seal(&ctx2, b"two"), async {
            reached.await.unwrap();
            operator
                .set_key_state(branch, KeyState::Retired)
                .await
                .unwrap();
            release.send(()).unwrap();
        });
        let v2 = v2.unwrap();
        assert_ne!(v2.key_id(), v1.key_id(), "{kind:?}");
        let new_branch = parent_of(v2.key_id()).await;
        assert_ne!(new_branch, branch, "{kind:?}: chosen again");
        assert_eq!(w.state(branch).await, KeyState::Retired, "{kind:?}");
        // The tenant's data keys: the one minted before the suspension, the
        // new one; the refused reservation is gone, nothing else is under the
        // suspended branch key.
        let data: Vec<_> = w
            .store
            .list(&KeyFilter::all().kind(KeyKind::Data).tenant(Some(&tenant)))
            .await
            .unwrap();
        assert_eq!(
            data.iter().map(|k| (k.id, k.state)).collect::<Vec<_>>(),
            vec![
                (v1.key_id(), KeyState::Active),
                (v2.key_id(), KeyState::Active)
            ],
            "{kind:?}"
        );
        assert_eq!(
            reader.open(&ctx2, &v2).await.unwrap().as_bytes(),
            b"two",
            "{kind:?}"
        );
        let (id, _) = refused(
            reader.open(&ctx1, &v1).await,
            KeyState::Retired,
            &format!("{kind:?}: a value under the suspended branch key"),
        );
        assert_eq!(id, branch, "{kind:?}");
    }
}

/// Two application processes and an operator under one `ManualClock`, the
/// tenant's branch key suspended while one process is minting a data key
/// under it (held at the store between reservation and activation) and the
/// other still seals under the data key it cached: the minting process
/// chooses a new branch key; the other keeps its cached key until its max age
/// (as documented), then mints under the new branch key, never the suspended
/// one. The suspended branch key ends with only the data keys minted before
/// the suspension, and a fresh reader opens what was sealed under the new one.
#[tokio::test]
async fn two_applications_and_an_operator_suspend_a_branch_key() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let (held, a) = w.held_process();
        let b = w.process(CacheLimits::default().max_age(Duration::from_secs(300)));
        let operator = w.process(CacheLimits::default());
        let (t, tenant) = (unique("lc_two_branch"), unique("acme"));
        let ctx = |row: i64| (t.clone(), RowId::from(row));
        let seal = async |app: &Envelope, row: i64, text: &[u8]| {
            let (t, id) = ctx(row);
            let c = Context::new(&t, "v", &id).with_tenant(&tenant);
            app.seal(&c, text).await
        };
        let parent_of = async |id| {
            w.store
                .get(id)
                .await
                .unwrap()
                .unwrap()
                .parent
                .unwrap()
                .parent
        };
        let a1 = seal(&a, 1, b"a1").await.unwrap();
        let b1 = seal(&b, 2, b"b1").await.unwrap();
        let branch = parent_of(a1.key_id()).await;
        assert_eq!(
            parent_of(b1.key_id()).await,
            branch,
            "{kind:?}: one branch key per tenant"
        );

        // a mints a new data key; while it is held between reservation and
        // activation, the operator suspends the branch key and b seals again.
        a.rotate_active_keys().await;
        let (reached, release) = held.arm(Hold::Reserved);
        let (a2, b2) = tokio::join!(seal(&a, 3, b"a2"), async {
            reached.await.unwrap();
            operator
                .set_key_state(branch, KeyState::Retired)
                .await
                .unwrap();
            let b2 = seal(&b, 4, b"b2").await;
            release.send(()).unwrap();
            b2
        });
        let (a2, b2) = (a2.unwrap(), b2.unwrap());
        let new_branch = parent_of(a2.key_id()).await;
        assert_ne!(new_branch, branch, "{kind:?}: a chose again");
        assert_eq!(
            b2.key_id(),
            b1.key_id(),
            "{kind:?}: b's cached key, within its max age"
        );

        // Past b's max age, b mints under the new branch key.
        w.clock.advance(Duration::from_secs(301));
        let b3 = seal(&b, 5, b"b3").await.unwrap();
        assert_ne!(b3.key_id(), b1.key_id(), "{kind:?}");
        assert_eq!(parent_of(b3.key_id()).await, new_branch, "{kind:?}");
        let mut under_suspended = Vec::new();
        for k in w
            .store
            .list(&KeyFilter::all().kind(KeyKind::Data).tenant(Some(&tenant)))
            .await
            .unwrap()
        {
            if k.parent.map(|p| p.parent) == Some(branch) {
                under_suspended.push(k.id);
            }
        }
        under_suspended.sort();
        assert_eq!(
            under_suspended,
            vec![a1.key_id(), b1.key_id()],
            "{kind:?}: nothing activated under the suspended branch key"
        );
        let reader = w.process(CacheLimits::default());
        for (row, v, text) in [(3, &a2, &b"a2"[..]), (5, &b3, &b"b3"[..])] {
            let (t, id) = ctx(row);
            let c = Context::new(&t, "v", &id).with_tenant(&tenant);
            assert_eq!(
                reader.open(&c, v).await.unwrap().as_bytes(),
                text,
                "{kind:?}"
            );
        }
        assert_eq!(w.state(branch).await, KeyState::Retired, "{kind:?}");
    }
}

/// A tenant shredded while one of its data keys is being minted (the
/// application held at the store between the key's reservation and its
/// activation): the mint fails as destroyed instead of choosing a branch key
/// again, and every key of the tenant ends destroyed; nothing is minted for
/// it behind the shred's back. One `ManualClock`.
#[tokio::test]
async fn a_data_key_minted_while_its_tenant_is_shredded_is_never_activated() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let (held, app) = w.held_process();
        let operator = w.process(CacheLimits::default());
        let (t, tenant) = (unique("lc_shred_mint"), unique("acme"));
        let (row1, row2) = (RowId::from(1_i64), RowId::from(2_i64));
        app.seal(&Context::new(&t, "v", &row1).with_tenant(&tenant), b"one")
            .await
            .unwrap();
        app.rotate_active_keys().await;
        let (reached, release) = held.arm(Hold::Reserved);
        let ctx2 = Context::new(&t, "v", &row2).with_tenant(&tenant);
        let (sealed, ()) = tokio::join!(app.seal(&ctx2, b"two"), async {
            reached.await.unwrap();
            operator.shred_tenant(&tenant).await.unwrap();
            release.send(()).unwrap();
        });
        let (_, operation) = refused(
            sealed,
            KeyState::Destroyed,
            &format!("{kind:?}: a seal its tenant's shred overtook"),
        );
        assert_eq!(operation, KeyOperation::Encrypt, "{kind:?}");
        let keys = w
            .store
            .list(&KeyFilter::all().tenant(Some(&tenant)))
            .await
            .unwrap();
        assert_eq!(
            keys.len(),
            3,
            "{kind:?}: branch, data key, the reservation: {keys:?}"
        );
        for k in &keys {
            assert_eq!(k.state, KeyState::Destroyed, "{kind:?}: {k:?}");
        }
    }
}

/// Two application processes with different cache limits (each its own
/// `Envelope` and caches) and an operator acting at the same time, under one
/// `ManualClock`: each process seals under its own data key; the operator
/// retires both and asks to destroy them. Each destroy waits for the horizon of
/// the process that sealed under that key (the longer-lived process keeps
/// sealing under its key after the other's horizon has passed), then refuses
/// while rows remain, and succeeds once the operator's re-encryption job moved
/// them. Every row the two processes wrote opens afterwards.
#[tokio::test]
async fn two_processes_and_an_operator_destroy_only_after_every_horizon() {
    use sqlx_envelope::jobs::{DestroyOptions, Job, JobError, JobPool, Target, destroy_key};
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let a = w.process(CacheLimits::default().max_age(Duration::from_secs(300)));
        let b = w.process(CacheLimits::default().max_age(Duration::from_secs(1800)));
        let operator = w.process(CacheLimits::default());
        let jobs = match &w.db {
            Db::Postgres(p) => JobPool::from(p.clone()),
            Db::MySql(p) => JobPool::from(p.clone()),
            Db::Sqlite(p, _) => JobPool::from(p.clone()),
        };
        let t = unique("lc_two");
        w.db.create_blob_table(&t, &["v"]).await;
        let mut written: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut seal = async |app: &Envelope, row: i64, text: &str| {
            let id = RowId::from(row);
            let v = app
                .seal(&Context::new(&t, "v", &id), text.as_bytes())
                .await
                .unwrap();
            w.db.put_sealed(&t, "v", row, &v).await;
            written.retain(|(r, _)| *r != row);
            written.push((row, text.as_bytes().to_vec()));
            v.key_id()
        };
        let ka = seal(&a, 1, "a1").await;
        let kb = seal(&b, 2, "b2").await;
        assert_ne!(
            ka, kb,
            "{kind:?}: each process seals under its own data key"
        );

        // The operator retires both keys; both processes still hold theirs.
        for k in [ka, kb] {
            operator
                .set_key_state(k, KeyState::DecryptOnly)
                .await
                .unwrap();
        }
        assert_eq!(seal(&a, 3, "a3").await, ka, "{kind:?}");
        assert_eq!(seal(&b, 4, "b4").await, kb, "{kind:?}");
        let wait = async |k| match destroy_key(&operator, &jobs, &DestroyOptions::new(), k).await {
            Err(JobError::SealHorizon { key, wait }) => {
                assert_eq!(key, k);
                wait
            }
            other => panic!("{kind:?}: destroy of {k} before its horizon must wait, got {other:?}"),
        };
        let (wait_a, wait_b) = (wait(ka).await, wait(kb).await);
        assert!(
            wait_b > wait_a,
            "{kind:?}: b's key lives longer ({wait_a:?} vs {wait_b:?})"
        );

        // Past a's horizon: a moves on, b still seals under kb, so kb cannot go.
        w.clock.advance(wait_a + Duration::from_millis(1));
        assert_ne!(seal(&a, 5, "a5").await, ka, "{kind:?}");
        assert_eq!(
            seal(&b, 6, "b6").await,
            kb,
            "{kind:?}: b is still within its max age"
        );
        wait(kb).await;
        match destroy_key(&operator, &jobs, &DestroyOptions::new(), ka).await {
            Err(JobError::RowsRemain { rows, .. }) => assert_eq!(rows, 2, "{kind:?}: rows 1 and 3"),
            other => panic!("{kind:?}: rows remain under ka, got {other:?}"),
        }

        // The operator re-encrypts ka's rows while both processes run, then
        // destroys ka; kb follows once b's horizon has passed.
        let target = Target::new(&t, "id", "v").unwrap();
        let r = Job::reencrypt(operator.clone(), jobs.clone(), target.clone(), vec![ka])
            .run()
            .await
            .unwrap();
        assert_eq!((r.written, r.remaining), (2, 0), "{kind:?}");
        destroy_key(&operator, &jobs, &DestroyOptions::new(), ka)
            .await
            .unwrap();
        assert_eq!(w.state(ka).await, KeyState::Destroyed, "{kind:?}");
        w.clock.advance(wait_b - wait_a);
        assert_ne!(seal(&b, 7, "b7").await, kb, "{kind:?}");
        let r = Job::reencrypt(operator.clone(), jobs.clone(), target, vec![kb])
            .run()
            .await
            .unwrap();
        assert_eq!(
            (r.written, r.remaining),
            (3, 0),
            "{kind:?}: rows 2, 4 and 6"
        );
        destroy_key(&operator, &jobs, &DestroyOptions::new(), kb)
            .await
            .unwrap();

        // Every row opens, through either process, to what was last written.
        for (row, text) in &written {
            let id = RowId::from(*row);
            let ctx = Context::new(&t, "v", &id);
            let stored = w.db.get_sealed(&t, "v", *row).await.unwrap().expect("row");
            for app in [&a, &b] {
                assert_eq!(
                    app.open(&ctx, &stored).await.unwrap().as_bytes(),
                    text,
                    "{kind:?} row {row}"
                );
            }
        }
    }
}

/// Batches over many columns (more than `seal_many` scans as a list) in two
/// processes, each with its own caches, while the operator retires one
/// process's key, under one `ManualClock`: each batch seals under one key of
/// its process; the retired key stays retired when its process rotates away
/// from it by age; after the rotation every column of the batch seals warm
/// under the new key; each process opens what the other sealed under keys
/// that still decrypt, and the retired key's values are refused to the
/// process that never cached it.
#[tokio::test]
async fn two_processes_batch_many_columns_while_the_operator_retires() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let limits = CacheLimits::default().max_age(Duration::from_secs(300));
        let a = w.process(limits.clone());
        let b = w.process(limits);
        let operator = w.process(CacheLimits::default());
        let t = unique("lc_batch");
        let columns: Vec<String> = (0..24).map(|c| format!("c{c}")).collect();
        let rows: Vec<RowId> = (0..3_i64).map(RowId::from).collect();
        let table = t.as_str();
        let items: Vec<(Context<'_>, &[u8])> = rows
            .iter()
            .flat_map(|r| {
                columns
                    .iter()
                    .map(move |c| (Context::new(table, c, r), &b"v"[..]))
            })
            .collect();
        let one_key = |sealed: &[sqlx_envelope::Sealed]| {
            let k = sealed[0].key_id();
            assert!(
                sealed.iter().all(|s| s.key_id() == k),
                "{kind:?}: one key per batch"
            );
            k
        };

        let a1 = a.seal_many(&items).await.unwrap();
        let b1 = b.seal_many(&items).await.unwrap();
        let (ka, kb) = (one_key(&a1), one_key(&b1));
        assert_ne!(
            ka, kb,
            "{kind:?}: each process seals under its own data key"
        );

        operator.set_key_state(ka, KeyState::Retired).await.unwrap();
        w.clock.advance(Duration::from_secs(301));
        let a2 = a.seal_many(&items).await.unwrap();
        let b2 = b.seal_many(&items).await.unwrap();
        let (ka2, kb2) = (one_key(&a2), one_key(&b2));
        assert!(
            ![ka, kb].contains(&ka2) && ![ka, kb].contains(&kb2),
            "{kind:?}: rotated by age"
        );
        assert_eq!(
            w.state(ka).await,
            KeyState::Retired,
            "{kind:?}: never undone"
        );
        assert_eq!(w.state(ka2).await, KeyState::Active, "{kind:?}");

        for c in &columns {
            let ctx = Context::new(&t, c, &rows[0]);
            let warm = a.seal_if_cached(&ctx, b"w").expect("warm after the batch");
            assert_eq!(warm.unwrap().key_id(), ka2, "{kind:?}: {c}");
        }
        for (((ctx, pt), x), y) in items.iter().zip(&a2).zip(&b2) {
            assert_eq!(&b.open(ctx, x).await.unwrap()[..], *pt, "{kind:?}");
            assert_eq!(&a.open(ctx, y).await.unwrap()[..], *pt, "{kind:?}");
        }
        for ((ctx, pt), y) in items.iter().zip(&b1) {
            assert_eq!(&a.open(ctx, y).await.unwrap()[..], *pt, "{kind:?}");
        }
        let (_, operation) = refused(
            b.open(&items[0].0, &a1[0]).await,
            KeyState::Retired,
            &format!("{kind:?}: a retired key must not open"),
        );
        assert_eq!(operation, KeyOperation::Decrypt, "{kind:?}");
    }
}

/// An index key is cached like a branch key: during a keyring outage a
/// process keeps computing blind indexes for the branch TTL, then within the
/// outage grace (one failed keyring call, not one per lookup), and fails
/// closed with the retryable error past it; once the keyring is back the same
/// key serves again. Another process that never loaded the key fails at once.
#[tokio::test]
async fn an_index_key_serves_through_an_outage_within_the_grace_only() {
    for kind in ALL {
        let w = World::new(Db::connect(kind).await).await;
        let keyring = Arc::new(Controlled::new(local_keyring(), false));
        let limits = CacheLimits::default()
            .branch_ttl(Duration::from_secs(120))
            .outage_grace(Duration::from_secs(30));
        let (app, cold) = (
            w.process_with(keyring.clone(), limits.clone()),
            w.process_with(keyring.clone(), limits),
        );
        let t = unique("lc_index_outage");
        let key = app.index_key(&t, "email", None, 1).await.unwrap();

        keyring.down.store(true, Ordering::SeqCst);
        let unwraps = || keyring.unwraps.load(Ordering::SeqCst);
        let before = unwraps();
        // Within the branch TTL: served from the cache, no keyring call.
        w.clock.advance(Duration::from_secs(100));
        assert_eq!(
            app.index_key(&t, "email", None, 1).await.unwrap().id(),
            key.id()
        );
        assert_eq!(
            unwraps(),
            before,
            "{kind:?}: no keyring call within the TTL"
        );
        assert_eq!(app.stats().served_in_grace, 0);
        // A process without the key cached cannot compute the index at all.
        let e = cold.index_key(&t, "email", None, 1).await.unwrap_err();
        assert!(
            matches!(e, Error::KeyringUnavailable { .. }),
            "{kind:?}: {e:?}"
        );

        // Past the TTL, within the grace: the keyring is asked once, fails,
        // and the cached key keeps serving without asking again at once.
        w.clock.advance(Duration::from_secs(21));
        let before = unwraps();
        for _ in 0..3 {
            let k = app.index_key(&t, "email", None, 1).await.unwrap();
            assert_eq!(k.id(), key.id(), "{kind:?}");
            assert_eq!(k.expose(), key.expose(), "{kind:?}");
        }
        assert_eq!(
            unwraps(),
            before + 1,
            "{kind:?}: one failed call, not one per lookup"
        );
        assert!(
            app.stats().served_in_grace >= 3,
            "{kind:?}: {:?}",
            app.stats()
        );

        // Past TTL + grace: fails closed, retryable.
        w.clock.advance(Duration::from_secs(30));
        let e = app.index_key(&t, "email", None, 1).await.unwrap_err();
        assert!(
            matches!(e, Error::KeyringUnavailable { .. }),
            "{kind:?}: {e:?}"
        );
        assert!(e.is_retryable());

        // The keyring is back: the same key, unwrapped anew.
        keyring.down.store(false, Ordering::SeqCst);
        let again = app.index_key(&t, "email", None, 1).await.unwrap();
        assert_eq!(
            (again.id(), again.expose()),
            (key.id(), key.expose()),
            "{kind:?}"
        );
        assert_eq!(
            cold.index_key(&t, "email", None, 1).await.unwrap().id(),
            key.id()
        );
    }
}
