//! Values and keys written by release 0.1.0 keep opening.
//!
//! `tests/fixtures/v0_1_0/` was written by release 0.1.0 itself
//! (`store.db`: its key store and a `customers` table, tenant-bound and
//! untenanted values, data keys wrapped directly by a local master key, one of
//! them rotated out; `keys.json`: the master keys; `expected.tsv`: what each row
//! holds). This release migrates that database (the key-tree migration only)
//! and opens every value, then keeps writing to it.

mod support;

use sqlx_envelope::store::{KeyFilter, KeyStore, SqliteKeyStore};
use sqlx_envelope::{Context, Envelope, KeyKind, KeyState, LocalKeyring, RowId, format};

#[tokio::test]
async fn a_database_written_by_release_0_1_0_opens_after_migration() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0_1_0");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    std::fs::copy(fixture.join("store.db"), &db).unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let store = SqliteKeyStore::new(pool.clone());
    store.migrate().await.unwrap();

    // The old data keys are still there, wrapped by the master key, with their
    // states; the migration dated them.
    let old = store.list(&KeyFilter::all()).await.unwrap();
    assert!(old.len() >= 4, "{old:?}");
    assert!(
        old.iter()
            .all(|k| k.kind == KeyKind::Data && k.parent.is_none())
    );
    assert!(old.iter().all(|k| k.wrapped.len() == 1 && k.created_ms > 0));
    assert_eq!(
        old.iter()
            .filter(|k| k.state == KeyState::DecryptOnly)
            .count(),
        old.len() - old.iter().filter(|k| k.state == KeyState::Active).count()
    );

    let keyring = LocalKeyring::from_file(fixture.join("keys.json")).unwrap();
    let env = Envelope::builder()
        .keyring(keyring)
        .store(store.clone())
        .build()
        .unwrap();
    let expected = std::fs::read_to_string(fixture.join("expected.tsv")).unwrap();
    let rows: Vec<(i64, Option<String>, Vec<u8>)> =
        sqlx::query_as("SELECT id, tenant, email FROM customers ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), expected.lines().count());
    for ((id, tenant, value), line) in rows.iter().zip(expected.lines()) {
        let mut parts = line.split('\t');
        assert_eq!(parts.next().unwrap(), id.to_string());
        let want_tenant = parts.next().unwrap();
        let want = parts.next().unwrap();
        assert_eq!(tenant.as_deref().unwrap_or(""), want_tenant);
        assert_eq!(
            value.len(),
            want.len() + format::OVERHEAD,
            "37 bytes of overhead"
        );
        let row = RowId::from(*id);
        let mut ctx = Context::new("customers", "email", &row);
        if let Some(t) = tenant {
            ctx = ctx.with_tenant(t);
        }
        let pt = env.open_bytes(&ctx, value).await.unwrap();
        assert_eq!(pt.as_bytes(), want.as_bytes(), "row {id}");
    }

    // New values in the old database go under the key tree, and open again.
    let row = RowId::from(11_i64);
    let ctx = Context::new("customers", "email", &row).with_tenant("tenant-1");
    let v = env.seal(&ctx, b"new@example.com").await.unwrap();
    let rec = store.get(v.key_id()).await.unwrap().unwrap();
    assert!(
        rec.parent.is_some(),
        "new data keys are wrapped by a branch key"
    );
    let cold = Envelope::builder()
        .keyring(LocalKeyring::from_file(fixture.join("keys.json")).unwrap())
        .store(store)
        .build()
        .unwrap();
    assert_eq!(&cold.open(&ctx, &v).await.unwrap()[..], b"new@example.com");
}
