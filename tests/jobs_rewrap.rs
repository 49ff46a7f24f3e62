//! Master-key rotation (re-wrap): every data key gets a blob under the new
//! master key, no data row changes (compared byte for byte before and after),
//! and every value still opens once the old master key is gone from the
//! keyring. Local -> local on PostgreSQL, MariaDB and SQLite; KMS -> KMS,
//! local -> KMS and KMS -> local against moto.

mod jobs_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use jobs_support::*;
use sqlx_envelope::jobs::rewrap::{RewrapOptions, rewrap_keys};
use sqlx_envelope::keyring::GeneratedKey;
use sqlx_envelope::keyring::KmsKeyring;
use sqlx_envelope::{
    CacheLimits, Envelope, KeyContext, KeyMaterial, Keyring, LocalKeyring, MasterKeyId,
    MultiKeyring, WrappedKey,
};
use support::moto::Moto;
use support::{ALL, Db, Kind, unique};

const ROWS: i64 = 600;
/// 600 rows at 50 uses per data key: 12 data keys.
const USES: u64 = 50;

/// Counts the calls a keyring receives; can corrupt what `rewrap` returns.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Keyring>,
    rewraps: AtomicU64,
    unwraps: AtomicU64,
    corrupt: bool,
}

impl Counting {
    fn new(inner: Arc<dyn Keyring>) -> Self {
        Counting {
            inner,
            rewraps: AtomicU64::new(0),
            unwraps: AtomicU64::new(0),
            corrupt: false,
        }
    }
}

#[async_trait]
impl Keyring for Counting {
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
        self.unwraps.fetch_add(1, Ordering::Relaxed);
        self.inner.unwrap(ctx, w).await
    }
    async fn rewrap(
        &self,
        ctx: &KeyContext,
        w: &WrappedKey,
        target: &MasterKeyId,
    ) -> sqlx_envelope::Result<WrappedKey> {
        self.rewraps.fetch_add(1, Ordering::Relaxed);
        let mut out = self.inner.rewrap(ctx, w, target).await?;
        if self.corrupt {
            let last = out.blob.len() - 1;
            out.blob[last] ^= 0x55;
        }
        Ok(out)
    }
}

fn envelope_with(db: &Db, keyring: Arc<dyn Keyring>, limits: CacheLimits) -> Envelope {
    Envelope::builder()
        .keyring_arc(keyring)
        .store_arc(db.key_store())
        .limits(limits)
        .build()
        .unwrap()
}

/// Seal `ROWS` rows under `keyring`, several data keys; return the table.
async fn seed_many_keys(db: &Db, keyring: Arc<dyn Keyring>) -> String {
    let env = envelope_with(db, keyring, CacheLimits::default().max_uses(USES));
    let table = unique("jobs_rw");
    seed_any_keys(db, &env, &table).await;
    table
}

async fn seed_any_keys(db: &Db, env: &Envelope, table: &str) {
    db.create_blob_table(table, &["secret"]).await;
    let mut rows = Vec::new();
    for id in 1..=ROWS {
        let row = sqlx_envelope::RowId::from(id);
        let ctx = sqlx_envelope::Context::new(table, "secret", &row);
        let s = env.seal(&ctx, seed_plaintext(id).as_bytes()).await.unwrap();
        rows.push((id, s.into_bytes()));
    }
    insert_many(db, table, "secret", &rows).await;
}

/// Open every row with `keyring` alone (fresh caches) and check the seed.
async fn all_open_with(db: &Db, table: &str, keyring: Arc<dyn Keyring>) {
    let env = envelope_with(db, keyring, CacheLimits::default());
    let (opened, _) = open_all(db, &env, table).await;
    assert_eq!(opened.len(), ROWS as usize);
    assert!(opened.iter().all(|(id, pt)| *pt == seed_plaintext(*id)));
}

async fn local_to_local(kind: Kind) {
    let db = Db::connect(kind).await;
    let (k1, k2) = (random_key(), random_key());
    let old: Arc<dyn Keyring> = Arc::new(LocalKeyring::new("app/1", KeyMaterial::new(k1)).unwrap());
    let table = seed_many_keys(&db, old.clone()).await;
    let before = all_rows(&db, &table, "secret").await;
    let store = db.key_store();
    let in_scope = |filter: sqlx_envelope::store::KeyFilter| {
        let store = store.clone();
        let table = table.clone();
        async move {
            store
                .list(&filter)
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.scope == table)
                .collect::<Vec<_>>()
        }
    };
    let data_keys =
        in_scope(sqlx_envelope::store::KeyFilter::all().kind(sqlx_envelope::KeyKind::Data)).await;
    assert!(
        data_keys.len() as u64 >= ROWS as u64 / USES,
        "{} data keys",
        data_keys.len()
    );
    // Master-key rotation is O(branch keys): the data keys are wrapped by
    // their branch key, which alone is wrapped by the master key.
    let branch_keys = in_scope(sqlx_envelope::store::KeyFilter::all().master_wrapped())
        .await
        .len() as u64;
    assert_eq!(branch_keys, 1, "one branch key for the scope");

    // A keyring whose rewrap output does not unwrap: the old blob is kept and
    // the run fails before deleting anything.
    let both = || {
        LocalKeyring::with_keys(
            "app/2",
            [
                ("app/1".to_owned(), KeyMaterial::new(k1)),
                ("app/2".to_owned(), KeyMaterial::new(k2)),
            ],
        )
        .unwrap()
    };
    let target = MasterKeyId::new("local:app/2");
    let mut broken = Counting::new(Arc::new(both()));
    broken.corrupt = true;
    let opts = RewrapOptions::new(target.clone())
        .delete_old(true)
        .scope(&table);
    assert!(
        rewrap_keys(store.as_ref(), &broken, &opts, None)
            .await
            .is_err()
    );
    all_open_with(&db, &table, old.clone()).await;

    // A keyring that holds only the new master key cannot unwrap the old
    // blobs: refused with what to configure, and nothing changes.
    let only_new = LocalKeyring::new("app/2", KeyMaterial::new(k2)).unwrap();
    let err = rewrap_keys(store.as_ref(), &only_new, &opts, None)
        .await
        .expect_err("the old master key is not configured");
    let m = err.to_string();
    assert!(
        m.contains("is wrapped under local:app/1, which this keyring cannot unwrap")
            && m.contains("configure the old master key"),
        "{kind:?}: {m}"
    );
    all_open_with(&db, &table, old.clone()).await;

    let counting = Counting::new(Arc::new(both()));
    let report = rewrap_keys(store.as_ref(), &counting, &opts, None)
        .await
        .unwrap();
    // Only the branch key was re-wrapped; the data keys were not touched.
    assert_eq!(report.keys, branch_keys);
    assert_eq!(report.keys, report.rewrapped + report.already);
    assert_eq!(report.deleted, branch_keys);
    let data_after =
        in_scope(sqlx_envelope::store::KeyFilter::all().kind(sqlx_envelope::KeyKind::Data)).await;
    assert_eq!(
        data_after.iter().map(|k| &k.parent).collect::<Vec<_>>(),
        data_keys.iter().map(|k| &k.parent).collect::<Vec<_>>(),
        "data keys' wrapped material unchanged"
    );
    assert_eq!(
        report.rewrap_calls,
        counting.rewraps.load(Ordering::Relaxed)
    );
    assert_eq!(
        report.rewrap_calls + report.verify_calls,
        counting.rewraps.load(Ordering::Relaxed) + counting.unwraps.load(Ordering::Relaxed)
    );
    eprintln!(
        "REWRAP {kind:?} local->local: {} data keys under {} branch key(s), {} rewrap calls + {} verify unwraps ({:.2} keyring calls per data key), {} old blobs deleted",
        data_keys.len(),
        report.keys,
        report.rewrap_calls,
        report.verify_calls,
        (report.rewrap_calls + report.verify_calls) as f64 / data_keys.len() as f64,
        report.deleted
    );
    for k in store
        .list(&sqlx_envelope::store::KeyFilter::all().master_wrapped())
        .await
        .unwrap()
        .iter()
        .filter(|k| k.scope == table)
    {
        let masters: Vec<&str> = k.wrapped.iter().map(|w| w.master_key.as_str()).collect();
        assert_eq!(masters, ["local:app/2"], "key {}", k.id);
    }

    // No data row changed.
    assert_eq!(all_rows(&db, &table, "secret").await, before);
    // The old master key is gone from the keyring: everything still opens.
    let only_new: Arc<dyn Keyring> =
        Arc::new(LocalKeyring::new("app/2", KeyMaterial::new(k2)).unwrap());
    all_open_with(&db, &table, only_new).await;
    // And the old master key alone opens nothing any more.
    let env_old = envelope_with(&db, old, CacheLimits::default());
    let (id, v) = &before[0];
    let row = sqlx_envelope::RowId::from(*id);
    let ctx = sqlx_envelope::Context::new(&table, "secret", &row);
    assert!(
        env_old
            .open_bytes(&ctx, v.as_deref().unwrap())
            .await
            .is_err()
    );

    // Running again is a no-op that only verifies.
    let again = rewrap_keys(
        store.as_ref(),
        &Counting::new(Arc::new(both())),
        &opts,
        None,
    )
    .await
    .unwrap();
    assert_eq!(again.rewrapped, 0);
    assert_eq!(again.rewrap_calls, 0);
    assert_eq!(again.already, again.keys);
}

#[tokio::test]
async fn rewrap_local_to_local_postgres() {
    local_to_local(ALL[0]).await;
}

#[tokio::test]
async fn rewrap_local_to_local_mariadb() {
    local_to_local(ALL[1]).await;
}

#[tokio::test]
async fn rewrap_local_to_local_sqlite() {
    local_to_local(ALL[2]).await;
}

async fn kms(moto: &Moto, key: &str, unwrap_only: Option<&str>) -> KmsKeyring {
    let mut b = KmsKeyring::builder()
        .client(moto.client("us-east-1"))
        .key(key);
    if let Some(u) = unwrap_only {
        b = b.unwrap_only_key(u);
    }
    b.build().await.unwrap()
}

/// Seal under `old`, re-wrap with `during` to `target` deleting the `from`
/// blobs, then open everything with `after` alone. Returns (data keys, report).
async fn rotate(
    old: Arc<dyn Keyring>,
    during: Arc<dyn Keyring>,
    from: MasterKeyId,
    target: MasterKeyId,
    after: Arc<dyn Keyring>,
) -> (u64, sqlx_envelope::jobs::rewrap::RewrapReport) {
    let db = Db::connect(Kind::Sqlite).await;
    let table = seed_many_keys(&db, old).await;
    let before = all_rows(&db, &table, "secret").await;
    let store = db.key_store();
    let keys = store
        .list(&sqlx_envelope::store::KeyFilter::all().master_wrapped())
        .await
        .unwrap()
        .len() as u64;
    let opts = RewrapOptions::new(target.clone())
        .from(from.clone())
        .delete_old(true);
    let report = rewrap_keys(store.as_ref(), during.as_ref(), &opts, None)
        .await
        .unwrap();
    assert_eq!(report.rewrapped, keys);
    assert_eq!(report.deleted, keys);
    for k in store
        .list(&sqlx_envelope::store::KeyFilter::all().master_wrapped())
        .await
        .unwrap()
    {
        let masters: Vec<&str> = k.wrapped.iter().map(|w| w.master_key.as_str()).collect();
        assert_eq!(masters, [target.as_str()], "key {}", k.id);
    }
    assert_eq!(
        all_rows(&db, &table, "secret").await,
        before,
        "no data row changed"
    );
    all_open_with(&db, &table, after).await;
    (keys, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_kms_to_kms() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let (k1, k2) = (
        moto.create_key(&client).await,
        moto.create_key(&client).await,
    );
    let old = Arc::new(kms(&moto, &k1, None).await);
    let during = Arc::new(kms(&moto, &k2, Some(&k1)).await);
    let (keys, report) = rotate(
        old,
        during.clone(),
        MasterKeyId::new(k1.clone()),
        MasterKeyId::new(k2.clone()),
        Arc::new(kms(&moto, &k2, None).await),
    )
    .await;
    let m = during.metrics();
    // One ReEncrypt and one verifying Decrypt per data key, nothing else.
    assert_eq!(m.re_encrypt_calls, keys);
    assert_eq!(m.decrypt_calls, keys);
    assert_eq!(m.generate_data_key_calls + m.encrypt_calls, 0);
    eprintln!(
        "REWRAP kms->kms: {keys} data keys, {} ReEncrypt + {} Decrypt ({:.1} KMS calls per data key)",
        m.re_encrypt_calls,
        m.decrypt_calls,
        (m.re_encrypt_calls + m.decrypt_calls) as f64 / keys as f64
    );
    assert_eq!(report.rewrap_calls, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_local_to_kms() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let k2 = moto.create_key(&client).await;
    let local = random_key();
    let old: Arc<dyn Keyring> =
        Arc::new(LocalKeyring::new("app/1", KeyMaterial::new(local)).unwrap());
    let kms2 = Arc::new(kms(&moto, &k2, None).await);
    let during: Arc<dyn Keyring> =
        Arc::new(MultiKeyring::new(vec![kms2.clone(), old.clone()]).unwrap());
    let (keys, _) = rotate(
        old,
        during,
        MasterKeyId::new("local:app/1"),
        MasterKeyId::new(k2.clone()),
        Arc::new(kms(&moto, &k2, None).await),
    )
    .await;
    // Local unwrap, then one KMS Encrypt and one verifying Decrypt per key.
    let m = kms2.metrics();
    assert_eq!(m.encrypt_calls, keys);
    assert_eq!(m.decrypt_calls, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_kms_to_local() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let k1 = moto.create_key(&client).await;
    let old = Arc::new(kms(&moto, &k1, None).await);
    let local = random_key();
    let new_local: Arc<dyn Keyring> =
        Arc::new(LocalKeyring::new("app/2", KeyMaterial::new(local)).unwrap());
    let during: Arc<dyn Keyring> =
        Arc::new(MultiKeyring::new(vec![new_local.clone(), old.clone()]).unwrap());
    let before = old.metrics();
    let (keys, _) = rotate(
        old.clone(),
        during,
        MasterKeyId::new(k1.clone()),
        MasterKeyId::new("local:app/2"),
        new_local,
    )
    .await;
    // One KMS Decrypt per data key to take it out of KMS; nothing wrapped there.
    let m = old.metrics();
    assert_eq!(m.decrypt_calls - before.decrypt_calls, keys);
}

/// `verify_keys_open` also unwraps the keys of the blind indexes of the
/// tables it checks. A rotation that re-wrapped the table's branch key but not
/// its index key (a scope of its own) leaves every data key opening under the
/// new master key alone, and the index key named as not opening; once that is
/// re-wrapped too, everything opens. The index key of another table, not
/// re-wrapped, is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_open_checks_the_tables_index_keys() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let (k1, k2) = (random_key(), random_key());
        let old: Arc<dyn Keyring> =
            Arc::new(LocalKeyring::new("app/1", KeyMaterial::new(k1)).unwrap());
        let table = seed_many_keys(&db, old.clone()).await;
        let env = envelope_with(&db, old, CacheLimits::default());
        let index = env.index_key(&table, "secret_bidx", None, 1).await.unwrap();
        env.index_key("other_table", "x_bidx", None, 1)
            .await
            .unwrap();
        let store = db.key_store();
        let both = LocalKeyring::with_keys(
            "app/2",
            [
                ("app/1".to_owned(), KeyMaterial::new(k1)),
                ("app/2".to_owned(), KeyMaterial::new(k2)),
            ],
        )
        .unwrap();
        let rewrap = |scope: String| {
            RewrapOptions::new(MasterKeyId::new("local:app/2"))
                .delete_old(true)
                .scope(scope)
        };
        rewrap_keys(store.as_ref(), &both, &rewrap(table.clone()), None)
            .await
            .unwrap();

        let only_new = Arc::new(LocalKeyring::new("app/2", KeyMaterial::new(k2)).unwrap());
        let pool = job_pool(&db);
        let targets = [sqlx_envelope::jobs::Target::new(&table, "id", "secret").unwrap()];
        let check = || async {
            let env = envelope_with(&db, only_new.clone(), CacheLimits::default());
            sqlx_envelope::jobs::verify_keys_open(&env, &pool, &targets)
                .await
                .unwrap()
        };
        let r = check().await;
        assert!(r.keys >= ROWS as u64 / USES, "{kind:?}: {r:?}");
        assert_eq!((r.opened, r.failed.len()), (r.keys, 0), "{kind:?}: {r:?}");
        assert_eq!((r.index_keys, r.index_opened), (1, 0), "{kind:?}: {r:?}");
        let (id, scope, why) = &r.index_failed[0];
        assert_eq!(*id, index.id(), "{kind:?}");
        assert_eq!(*scope, format!("{table}/secret_bidx/v1"), "{kind:?}");
        assert!(
            why.contains("local:app/1") || why.contains("no stored wrapped key"),
            "{kind:?}: {why}"
        );
        assert!(!r.is_clean());

        rewrap_keys(
            store.as_ref(),
            &both,
            &rewrap(format!("{table}/secret_bidx/v1")),
            None,
        )
        .await
        .unwrap();
        let r = check().await;
        assert!(r.is_clean(), "{kind:?}: {r:?}");
        assert_eq!((r.index_keys, r.index_opened), (1, 1), "{kind:?}: {r:?}");
    }
}
