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

use sqlx_envelope::{CacheLimits, Encrypted, Envelope, Error, model};
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
        // Data keys are minted locally under one branch key: one keyring call.
        assert_eq!(writer.stats().data_keys_minted, KEYS, "{kind:?}");
        assert_eq!(writer.stats().keyring_generate_calls, 1, "{kind:?}");
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
            stats.keyring_unwrap_calls, 1,
            "{kind:?}: one keyring unwrap, for the one branch key"
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
        assert_eq!(stats.keyring_unwrap_calls, 1);
        assert_eq!(stats.decrypt_hits, KEYS);
    }
}

/// An envelope over `db` whose batches use two threads, whatever the machine.
fn two_threads(db: &Db) -> Envelope {
    Envelope::builder()
        .keyring(support::local_keyring())
        .store_arc(db.key_store())
        .batch_threads(2)
        .build()
        .expect("envelope")
}

/// Records the thread that decodes each value.
#[derive(Debug, Clone, PartialEq)]
struct Probe(String);

static DECODED_ON: std::sync::Mutex<Vec<std::thread::ThreadId>> = std::sync::Mutex::new(Vec::new());

impl sqlx_envelope::FieldCodec for Probe {
    fn size_hint(&self) -> usize {
        self.0.len()
    }
    fn encode(&self, out: &mut Vec<u8>) -> sqlx_envelope::Result<()> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> sqlx_envelope::Result<Self> {
        DECODED_ON
            .lock()
            .expect("probe lock")
            .push(std::thread::current().id());
        <String as sqlx_envelope::FieldCodec>::decode(bytes).map(Probe)
    }
}

#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "probes")]
struct Probed {
    id: i64,
    #[encrypt]
    value: Probe,
}

/// A page below the threshold is opened on the calling task; a batch from it
/// up to twice its size is split between the calling task (the first part)
/// and the blocking pool; a large batch leaves the task (split across cores on
/// the blocking pool); all in order, with the positions of failed rows counted
/// across parts.
#[tokio::test(flavor = "current_thread")]
async fn large_batches_are_opened_off_the_calling_task() {
    use sqlx_envelope::model::batch::OFFLOAD_MIN_ROWS;
    let db = Db::connect(support::Kind::Sqlite).await;
    let env = two_threads(&db);
    let me = std::thread::current().id();
    let models: Vec<Probed> = (0..(OFFLOAD_MIN_ROWS * 4) as i64)
        .map(|id| Probed {
            id,
            value: Probe(format!("value {id}")),
        })
        .collect();
    let sealed = Probed::seal_all(&env, &models).await.expect("seal");

    let small: Vec<ProbedSealed> = sealed[..OFFLOAD_MIN_ROWS - 1].to_vec();
    DECODED_ON.lock().expect("lock").clear();
    let opened = Probed::open_all(&env, small).await.expect("open small");
    assert_eq!(opened, models[..OFFLOAD_MIN_ROWS - 1]);
    let threads = std::mem::take(&mut *DECODED_ON.lock().expect("lock"));
    assert_eq!(threads.len(), OFFLOAD_MIN_ROWS - 1);
    assert!(
        threads.iter().all(|t| *t == me),
        "a small page stays on the task"
    );

    // Two parts of 300 rows: the first opened here, the second on the pool.
    let middle = 600;
    let opened = Probed::open_all(&env, sealed[..middle].to_vec())
        .await
        .expect("open middle");
    assert_eq!(opened, models[..middle], "parts come back in order");
    let threads = std::mem::take(&mut *DECODED_ON.lock().expect("lock"));
    assert_eq!(threads.len(), middle);
    assert_eq!(
        threads.iter().filter(|t| **t == me).count(),
        middle / 2,
        "the first part on the task, the other on the pool"
    );
    // A failure in either part keeps its position.
    for bad in [7, middle - 2] {
        let mut rows = sealed[..middle].to_vec();
        rows[bad].value = rows[bad + 1].value.clone();
        match Probed::open_all(&env, rows.clone()).await {
            Err(Error::Row { position, .. }) => assert_eq!(position, bad),
            other => panic!("expected a row error, got {other:?}"),
        }
        let each = Probed::open_each(&env, rows).await;
        assert_eq!(each.len(), middle);
        for (i, r) in each.iter().enumerate() {
            assert_eq!(r.is_err(), i == bad, "row {i}: {r:?}");
        }
    }
    DECODED_ON.lock().expect("lock").clear();

    let mut large: Vec<ProbedSealed> = sealed.clone();
    let opened = Probed::open_all(&env, large.clone())
        .await
        .expect("open large");
    assert_eq!(opened, models, "chunks come back in order");
    let threads = std::mem::take(&mut *DECODED_ON.lock().expect("lock"));
    assert_eq!(threads.len(), models.len());
    assert!(
        threads.iter().all(|t| *t != me),
        "a large batch leaves the task"
    );

    // A failure deep in the last chunk keeps its absolute position.
    let last = large.len() - 3;
    large[last].value = large[0].value.clone();
    let each = Probed::open_each(&env, large.clone()).await;
    assert_eq!(each.len(), models.len());
    for (i, r) in each.iter().enumerate() {
        if i == last {
            assert!(
                matches!(r, Err(Error::Row { position, column: "value", key: None, .. }) if *position == last),
                "{r:?}"
            );
        } else {
            assert_eq!(r.as_ref().expect("opens"), &models[i]);
        }
    }
    match Probed::open_all(&env, large).await {
        Err(Error::Row { position, .. }) => assert_eq!(position, last),
        other => panic!("expected a row error, got {other:?}"),
    }
}

/// One field of every kind, bound to a tenant, one key per tenant; its id
/// may appear in errors (so a row's error shows which row id it was given).
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "mixed", tenant = "org", id_not_secret)]
struct Mixed {
    id: i64,
    org: String,
    #[encrypt]
    name: String,
    #[encrypt]
    code: Option<i32>,
    #[encrypt(hide_null)]
    flag: Option<bool>,
    #[encrypt(json)]
    tags: Vec<String>,
    #[encrypt(pad = 16)]
    phone: Option<String>,
    #[encrypt(migrating_from = "legacy_note")]
    note: String,
}

/// The batch openers agree with opening rows one at a time: on a page split
/// across cores, with rows of three tenants interleaved (their values under
/// three data keys), NULLs, hidden NULLs, padding, JSON and rows still in
/// plaintext, every row opens in the batch as it does alone, and each damaged
/// row fails alone, at its position, with the column and the kind of error it
/// fails with alone, naming its own id (also the rows after a row whose key
/// did not resolve, which the batch opener skips).
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_opens_each_row_as_it_opens_alone() {
    let db = Db::connect(support::Kind::Sqlite).await;
    // Two threads whatever the machine: the page is split in two parts.
    let env = two_threads(&db);
    let orgs = ["acme", "globex", "initech"];
    let models: Vec<Mixed> = (0..1_536_i64)
        .map(|i| Mixed {
            id: i,
            org: orgs[i as usize % 3].into(),
            name: format!("name {i}"),
            code: (i % 3 != 0).then_some(i as i32),
            flag: (i % 4 != 0).then_some(i % 2 == 0),
            tags: (0..i % 4).map(|t| format!("tag {t}")).collect(),
            phone: (i % 5 != 0).then(|| format!("+44 {i:08}")),
            note: format!("note {i}"),
        })
        .collect();
    let mut sealed = Mixed::seal_all(&env, &models).await.expect("seal");
    // Rows not migrated yet: the note is still in its plaintext column.
    for (row, m) in sealed.iter_mut().zip(&models).step_by(7) {
        row.note = None;
        row.note_plaintext = Some(m.note.clone());
    }
    // Damage: values swapped between rows, a flipped byte, a key this store
    // never had, and a row whose note is in neither column.
    sealed[10].tags = sealed[11].tags.clone();
    let mut name = sealed[700].name.as_bytes().to_vec();
    *name.last_mut().expect("bytes") ^= 1;
    sealed[700].name = sqlx_envelope::Sealed::from_bytes(name).expect("header intact");
    let mut phone = sealed[1_001].phone.clone().expect("set").into_bytes();
    phone[1..9].copy_from_slice(&999_999_999_u64.to_be_bytes());
    sealed[1_001].phone = Some(sqlx_envelope::Sealed::from_bytes(phone).expect("header"));
    sealed[1_200].note = None;
    sealed[1_200].note_plaintext = None;
    let damaged = [
        (10, "tags"),
        (700, "name"),
        (1_001, "phone"),
        (1_200, "note"),
    ];

    let each = Mixed::open_each(&env, sealed.clone()).await;
    assert_eq!(each.len(), models.len());
    for (i, (batch, row)) in each.iter().zip(sealed.clone()).enumerate() {
        let alone = row.open(&env).await;
        match damaged.iter().find(|(at, _)| *at == i) {
            None => {
                assert_eq!(batch.as_ref().expect("opens in the batch"), &models[i]);
                assert_eq!(alone.expect("opens alone"), models[i]);
            }
            Some((_, expected)) => {
                let Err(Error::Row {
                    position,
                    column,
                    key,
                    source,
                }) = batch
                else {
                    panic!("row {i}: expected a row error, got {batch:?}");
                };
                assert_eq!((*position, *column), (i, *expected));
                assert_eq!(key.as_deref(), Some(format!("id = {i}").as_str()));
                let alone = alone.expect_err("fails alone too");
                assert_eq!(
                    std::mem::discriminant(&**source),
                    std::mem::discriminant(&alone),
                    "row {i}: {source:?} in the batch, {alone:?} alone"
                );
            }
        }
    }
    match Mixed::open_all(&env, sealed).await {
        Err(Error::Row {
            position, column, ..
        }) => assert_eq!((position, column), (10, "tags")),
        other => panic!("expected the first damaged row, got {other:?}"),
    }
}
