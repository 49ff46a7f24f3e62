//! Batch opening: a 10,000-row result set makes one key lookup per distinct data
//! key, on every database.
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid"
))]

mod support;
#[macro_use]
mod derive_support;

use sqlx_envelope::{CacheLimits, Encrypted, Envelope, model};
use support::Db;

#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "visits")]
struct Visit {
    id: i64,
    #[encrypt]
    note: String,
    #[encrypt]
    code: Option<i32>,
}

const ROWS: i64 = 10_000;
const KEYS: u64 = 4;

#[tokio::test(flavor = "multi_thread")]
async fn open_all_resolves_each_data_key_once() {
    for kind in support::ALL {
        let db = Db::connect(kind).await;
        let writer = support::envelope(&db, CacheLimits::default());
        let table = support::unique("derive_batch");
        db.create_blob_table(&table, Visit::ENCRYPTED_COLUMNS).await;

        let models: Vec<Visit> = (1..=ROWS)
            .map(|id| Visit {
                id,
                note: format!("visit note {id}"),
                code: (id % 3 != 0).then_some(id as i32),
            })
            .collect();
        // Four distinct data keys: a new active key every 2,500 rows.
        let mut sealed = Vec::with_capacity(models.len());
        for chunk in models.chunks((ROWS as u64 / KEYS) as usize) {
            writer.rotate_active_keys().await;
            sealed.extend(Visit::seal_all(&writer, chunk).await.expect("seal"));
        }
        assert_eq!(writer.stats().keyring_generate_calls, KEYS, "{kind:?}");
        insert_rows!(&db, Visit, &table, &sealed, |b, r| {
            b.push_bind(r.id).push_bind(&r.note).push_bind(&r.code);
        });

        // A fresh envelope over the same key store and master key: cold caches.
        let reader = Envelope::builder()
            .keyring_arc(writer.keyring().clone())
            .store_arc(db.key_store())
            .build()
            .expect("envelope");
        let rows: Vec<VisitSealed> = select_all!(&db, VisitSealed, table, "id");
        assert_eq!(rows.len(), ROWS as usize);
        let opened = model::open_all(&reader, rows).await.expect("open_all");
        assert_eq!(opened, models, "{kind:?}");

        let stats = reader.stats();
        assert_eq!(
            stats.keyring_unwrap_calls, KEYS,
            "{kind:?}: one unwrap per distinct key"
        );
        assert_eq!(
            stats.decrypt_misses, KEYS,
            "{kind:?}: one cache miss per distinct key"
        );
        assert_eq!(
            stats.decrypt_hits, 0,
            "{kind:?}: no per-value lookups at all"
        );

        // A second pass over the same rows is served from the cache.
        let rows: Vec<VisitSealed> = select_all!(&db, VisitSealed, table, "id");
        let again = Visit::open_all(&reader, rows).await.expect("open_all");
        assert_eq!(again.len(), ROWS as usize);
        let stats = reader.stats();
        assert_eq!(stats.keyring_unwrap_calls, KEYS);
        assert_eq!(stats.decrypt_hits, KEYS);
    }
}
