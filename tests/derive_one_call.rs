//! The flagship `Patient` of the README, exactly as documented
//! (`tests/derive_support/flagship.rs`, compared with the guide below), driven
//! on PostgreSQL, MariaDB and SQLite: insert, fetch by primary key, update of
//! one named field, update of the whole row, a `query_as` opened in the same
//! call (all at once, row by row, streamed), a corrupted row in a page, a
//! value swapped from another row, a value under a key nobody has, a missing
//! row, a write into another tenant's row, and a composite-key model.
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid",
    feature = "chrono"
))]

mod support;
#[macro_use]
mod derive_support;

use derive_support::Isolated;
use support::Kind;

/// The guide's flagship code block is this test's code, byte for byte.
#[test]
fn the_guide_shows_the_code_this_test_runs() {
    let guide = include_str!("../README.md");
    let code = include_str!("derive_support/flagship.rs");
    let start = guide
        .find("<!-- flagship: tests/derive_support/flagship.rs -->\n```rust\n")
        .expect("the flagship marker in README.md");
    let block = &guide[start..];
    let block = &block[block.find("```rust\n").expect("fence") + 8..];
    let block = &block[..block.find("```\n").expect("closing fence")];
    assert_eq!(
        block, code,
        "README.md's flagship block and tests/derive_support/flagship.rs differ"
    );
}

/// A lab result with a composite key and no `id_not_secret`: errors never
/// show its key.
macro_rules! lab_result {
    () => {
        #[derive(sqlx_envelope::Encrypted, Debug, Clone, PartialEq)]
        #[envelope(table = "lab_results", id(region, number))]
        pub struct LabResult {
            pub region: String,
            pub number: i32,
            #[encrypt]
            pub result: String,
        }
    };
}

/// Everything the scenario does, on the flagship code of the enclosing module.
macro_rules! scenario {
    () => {
        lab_result!();

        use sqlx_envelope::model::Column as _;
        use sqlx_envelope::{CacheLimits, Error, format::OVERHEAD};

        async fn raw(pool: &sqlx::Pool<Db>, column: &str, id: Uuid) -> Option<Vec<u8>> {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!("SELECT {column} FROM patients WHERE id = "));
            q.push_bind(id);
            q.build_query_scalar().fetch_one(pool).await.expect("raw read")
        }

        async fn set_raw(pool: &sqlx::Pool<Db>, column: &str, id: Uuid, value: &[u8]) {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!("UPDATE patients SET {column} = "));
            q.push_bind(value).push(" WHERE id = ").push_bind(id);
            q.build().execute(pool).await.expect("raw write");
        }

        fn row_error(r: &Result<Patient>) -> (usize, &'static str, Option<String>, &Error) {
            match r {
                Err(Error::Row { position, column, key, source }) => {
                    (*position, column, key.clone(), &**source)
                }
                other => panic!("expected Error::Row, got {other:?}"),
            }
        }

        fn is_not_found(e: &Error) -> bool {
            matches!(e, Error::Query { model: _, source: sqlx::Error::RowNotFound })
        }

        pub async fn run(db: &super::support::Db, pool: &sqlx::Pool<Db>, uuid: &str, blob: &str) {
            let kind = db.kind();
            let envelope = super::support::envelope(db, CacheLimits::default());
            db.exec(&format!(
                "CREATE TABLE patients (id {uuid} PRIMARY KEY, clinic VARCHAR(64) NOT NULL, \
                 ward VARCHAR(64) NOT NULL, name {blob} NOT NULL, date_of_birth {blob} NOT NULL, \
                 notes {blob} NOT NULL, phone {blob} NULL, name_bidx {blob} NULL)"
            ))
            .await;
            db.exec(&format!(
                "CREATE TABLE lab_results (region VARCHAR(16) NOT NULL, number INTEGER NOT NULL, \
                 result {blob} NOT NULL, PRIMARY KEY (region, number))"
            ))
            .await;

            // Insert in one call; a `query_as` opens in one call.
            let ada = admit(&envelope, pool, "Ada Lovelace", "cardiology").await.expect("admit");
            let charles = admit(&envelope, pool, "Charles Babbage", "cardiology").await.expect("admit");
            let grace = admit(&envelope, pool, "Grace Hopper", "oncology").await.expect("admit");
            let page = ward(&envelope, pool, "cardiology").await.expect("query");
            let page: Vec<Patient> = page.into_iter().map(|r| r.expect("opens")).collect();
            assert_eq!(page, [ada.clone(), charles.clone()], "{kind:?}");
            // What is stored is ciphertext, bound to the row.
            let stored_name = raw(pool, "name", ada.id).await.expect("name");
            assert_eq!(stored_name.len(), OVERHEAD + "Ada Lovelace".len());
            assert!(!stored_name.windows(3).any(|w| w == b"Ada"));
            assert_eq!(raw(pool, "phone", ada.id).await, None, "NULL stays NULL");

            // Found by name through the blind index: case and spacing do not
            // matter, other names do.
            assert_eq!(named(&envelope, pool, "north", " ada LOVELACE").await.expect("find"), vec![ada.clone()], "{kind:?}");
            assert!(named(&envelope, pool, "north", "Ada Byron").await.expect("find").is_empty());
            assert!(named(&envelope, pool, "south", "Ada Lovelace").await.expect("find").is_empty());

            // Update of one named field: only `phone` is sealed and written.
            let ada = change_phone(&envelope, pool, ada.id, "+44 20 7946 0958")
                .await
                .expect("update")
                .expect("ada exists");
            let stored_phone = raw(pool, "phone", ada.id).await.expect("phone is set");
            assert_eq!(stored_phone.len(), OVERHEAD + 32, "16-byte blocks: 16 characters take two");
            assert_eq!(raw(pool, "name", ada.id).await.as_deref(), Some(&stored_name[..]), "name untouched");
            let fetched = Patient::fetch_by_key(&envelope, pool, &ada.id).await.expect("fetch");
            assert_eq!(fetched.as_ref(), Some(&ada), "{kind:?}");
            assert_eq!(PatientColumn::Phone.name(), "phone");
            assert_eq!(Patient::COLUMNS[PatientColumn::Phone.index()], "phone");

            // A missing row: fetch says None, writes say RowNotFound.
            let nobody = Uuid::now_v7();
            assert_eq!(Patient::fetch_by_key(&envelope, pool, &nobody).await.expect("fetch"), None);
            assert_eq!(change_phone(&envelope, pool, nobody, "0").await.expect("no row"), None);
            let ghost = Patient { id: nobody, ..ada.clone() };
            assert!(is_not_found(&ghost.update(&envelope, pool).await.expect_err("no row")));
            assert!(is_not_found(
                &ghost
                    .update_fields(&envelope, pool, &[PatientColumn::Name])
                    .await
                    .expect_err("no row")
            ));
            let none = sqlx::QueryBuilder::<Db>::new("SELECT * FROM patients WHERE ward = 'none'")
                .build_query_as::<PatientSealed>()
                .opened(&envelope)
                .fetch_one(pool)
                .await;
            assert!(is_not_found(&none.expect_err("no row")), "{kind:?}");

            // Values sealed for one tenant never land in another tenant's row.
            let intruder = Patient { clinic: "south".into(), phone: Some("0".into()), ..ada.clone() };
            assert!(is_not_found(
                &intruder
                    .update_fields(&envelope, pool, &[PatientColumn::Phone])
                    .await
                    .expect_err("other tenant")
            ));
            assert_eq!(raw(pool, "phone", ada.id).await.as_deref(), Some(&stored_phone[..]));
            assert!(matches!(
                ada.update_fields(&envelope, pool, &[]).await,
                Err(Error::Config(_))
            ));

            // A corrupted row in a page fails alone, named by position, column and id.
            let mut damaged = raw(pool, "name", charles.id).await.expect("name");
            *damaged.last_mut().expect("bytes") ^= 1;
            set_raw(pool, "name", charles.id, &damaged).await;
            let page = ward(&envelope, pool, "cardiology").await.expect("query");
            assert_eq!(page.len(), 2);
            assert_eq!(page[0].as_ref().expect("ada opens"), &ada);
            let (position, column, key, source) = row_error(&page[1]);
            assert_eq!((position, column), (1, "name"), "{kind:?}");
            assert_eq!(key, Some(format!("id = {}", charles.id)), "id_not_secret");
            assert!(matches!(source, Error::Authentication));
            let message = page[1].as_ref().expect_err("damaged").to_string();
            assert!(message.contains("row 1") && message.contains("name"), "{message}");
            assert!(!message.contains("Babbage"), "{message}");
            // All at once: the first row that does not open fails the batch.
            let all = sqlx::QueryBuilder::<Db>::new("SELECT * FROM patients WHERE ward = 'cardiology' ORDER BY id")
                .build_query_as::<PatientSealed>()
                .opened(&envelope)
                .fetch_all(pool)
                .await;
            assert_eq!(row_error(&all.map(|_| ada.clone())).0, 1);
            // Streamed: one item per row, the damaged one an error.
            let mut q = sqlx::QueryBuilder::<Db>::new("SELECT * FROM patients WHERE ward = 'cardiology' ORDER BY id");
            let streamed: Vec<Result<Patient>> = futures_util::StreamExt::collect(
                q.build_query_as::<PatientSealed>().opened(&envelope).fetch(pool),
            )
            .await;
            assert_eq!(streamed.len(), 2);
            assert_eq!(streamed[0].as_ref().expect("ada"), &ada);
            assert_eq!(row_error(&streamed[1]).1, "name");

            // A value swapped in from another row authenticates nowhere else.
            let adas_birth = raw(pool, "date_of_birth", ada.id).await.expect("set");
            set_raw(pool, "date_of_birth", grace.id, &adas_birth).await;
            let page = ward(&envelope, pool, "oncology").await.expect("query");
            let (position, column, _, source) = row_error(&page[0]);
            assert_eq!((position, column), (0, "date_of_birth"), "{kind:?}");
            assert!(matches!(source, Error::Authentication));
            // Rewriting the whole row seals every value anew.
            grace.update(&envelope, pool).await.expect("update all");
            let page = ward(&envelope, pool, "oncology").await.expect("query");
            assert_eq!(page[0].as_ref().expect("repaired"), &grace, "{kind:?}");

            // A value under a data key this store never had fails its row only.
            let alan = admit(&envelope, pool, "Alan Turing", "icu").await.expect("admit");
            let joan = admit(&envelope, pool, "Joan Clarke", "icu").await.expect("admit");
            let mut forged = raw(pool, "notes", joan.id).await.expect("notes");
            forged[1..9].copy_from_slice(&999_999_999_u64.to_be_bytes());
            set_raw(pool, "notes", joan.id, &forged).await;
            let page = ward(&envelope, pool, "icu").await.expect("query");
            assert_eq!(page[0].as_ref().expect("alan opens"), &alan, "{kind:?}");
            let (position, column, _, source) = row_error(&page[1]);
            assert_eq!((position, column), (1, "notes"));
            assert!(matches!(source, Error::UnknownKey(_)), "{source:?}");

            // Many rows in one statement, one seal_many call.
            let batch: Vec<Patient> = (0..5)
                .map(|i| Patient { id: Uuid::now_v7(), ward: "batch".into(), name: format!("patient {i}"), ..ada.clone() })
                .collect();
            Patient::insert_all(&envelope, pool, &batch).await.expect("insert_all");
            let page = ward(&envelope, pool, "batch").await.expect("query");
            let page: Vec<Patient> = page.into_iter().map(|r| r.expect("opens")).collect();
            assert_eq!(page, batch, "{kind:?}");

            // Composite keys: fetch by (region, number); errors do not show the key.
            let labs = [
                LabResult { region: "eu".into(), number: 1, result: "negative".into() },
                LabResult { region: "eu".into(), number: 2, result: "positive".into() },
                LabResult { region: "us".into(), number: 1, result: "inconclusive".into() },
            ];
            LabResult::insert_all(&envelope, pool, &labs).await.expect("insert labs");
            let got = LabResult::fetch_by_key(&envelope, pool, &("eu".into(), 2)).await.expect("fetch");
            assert_eq!(got.as_ref(), Some(&labs[1]), "{kind:?}");
            let got = LabResult::fetch_by_key(&envelope, pool, &("us".into(), 2)).await.expect("fetch");
            assert_eq!(got, None);
            let mut us1 = labs[2].clone();
            us1.result = "negative".into();
            us1.update_fields(&envelope, pool, &[LabResultColumn::Result]).await.expect("update");
            let mut q = sqlx::QueryBuilder::<Db>::new("SELECT * FROM lab_results WHERE region = ");
            q.push_bind("us").push(" AND number = ").push_bind(1_i32);
            let row: LabResultSealed = q.build_query_as().fetch_one(pool).await.expect("row");
            assert_eq!(row.open(&envelope).await.expect("open"), us1);
            // The eu/2 result moved into eu/1: fails, and says where without the key.
            let mut q = sqlx::QueryBuilder::<Db>::new("SELECT * FROM lab_results ORDER BY region, number");
            let mut rows: Vec<LabResultSealed> = q.build_query_as().fetch_all(pool).await.expect("rows");
            rows[0].result = rows[1].result.clone();
            let opened = LabResult::open_each(&envelope, rows).await;
            match &opened[0] {
                Err(Error::Row { position: 0, column: "result", key: None, source }) => {
                    assert!(matches!(**source, Error::Authentication));
                }
                other => panic!("expected a row error without key, got {other:?}"),
            }
            assert_eq!(opened[1].as_ref().expect("eu/2"), &labs[1]);
            assert_eq!(opened[2].as_ref().expect("us/1"), &us1);
        }
    };
}

mod postgres {
    #[allow(dead_code)]
    type Db = sqlx::Postgres;
    include!("derive_support/flagship.rs");
    scenario!();
}

mod mariadb {
    #[allow(dead_code)]
    type Db = sqlx::MySql;
    include!("derive_support/flagship.rs");
    scenario!();
}

mod sqlite {
    #[allow(dead_code)]
    type Db = sqlx::Sqlite;
    include!("derive_support/flagship.rs");
    scenario!();
}

#[tokio::test(flavor = "multi_thread")]
async fn flagship_on_postgres() {
    let iso = Isolated::new(Kind::Postgres).await;
    let support::Db::Postgres(pool) = &iso.db else {
        unreachable!()
    };
    postgres::run(&iso.db, pool, "UUID", "BYTEA").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flagship_on_mariadb() {
    let iso = Isolated::new(Kind::MySql).await;
    let support::Db::MySql(pool) = &iso.db else {
        unreachable!()
    };
    mariadb::run(&iso.db, pool, "BINARY(16)", "LONGBLOB").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flagship_on_sqlite() {
    let iso = Isolated::new(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &iso.db else {
        unreachable!()
    };
    sqlite::run(&iso.db, pool, "BLOB", "BLOB").await;
    iso.drop_all().await;
}
