//! A model read during its migration to encryption
//! (`#[encrypt(migrating_from = "...")]`), on PostgreSQL, MariaDB and SQLite:
//! rows that still hold only plaintext (text, DATE, JSON, a nullable padded
//! text) open through the model from the plaintext columns; rows the model
//! writes are encrypted and clear their stale plaintext; after a backfill the
//! model reads the encrypted values; and a value that fails to open is an
//! error, never a silent fallback to the plaintext beside it.
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid",
    feature = "chrono",
    feature = "json"
))]

mod jobs_support;
mod support;
#[macro_use]
mod derive_support;

use derive_support::Isolated;
use support::Kind;

macro_rules! scenario {
    () => {
        use chrono::NaiveDate;
        use serde::{Deserialize, Serialize};
        use sqlx_envelope::jobs::{Job, JobOptions, PlainKind, Target};
        use sqlx_envelope::{CacheLimits, Encrypted, QueryAsExt};
        use uuid::Uuid;

        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        pub struct Notes {
            pub allergies: Vec<String>,
            pub history: String,
        }

        /// The README's patient, half way from plaintext columns to
        /// encrypted ones.
        #[derive(Encrypted, Debug, Clone, PartialEq)]
        #[envelope(table = "patients", tenant = "clinic", id_not_secret)]
        pub struct Patient {
            pub id: Uuid,
            pub clinic: String,
            #[encrypt(migrating_from = "name_plain")]
            pub name: String,
            #[encrypt(migrating_from = "dob_plain")]
            pub date_of_birth: NaiveDate,
            #[encrypt(json, migrating_from = "notes_plain")]
            pub notes: Notes,
            #[encrypt(pad = 16, migrating_from = "phone_plain")]
            pub phone: Option<String>,
        }

        fn patient(i: u32) -> Patient {
            Patient {
                id: Uuid::new_v4(),
                clinic: if i % 2 == 0 { "north" } else { "south" }.into(),
                name: format!("Patient {i} Ñoño"),
                date_of_birth: NaiveDate::from_ymd_opt(1900 + i as i32, 1 + i % 12, 1 + i % 28)
                    .expect("date"),
                notes: Notes {
                    allergies: vec![format!("allergy {i}")],
                    history: "stable".into(),
                },
                phone: (i % 3 != 0).then(|| format!("+1 555 {i:04}")),
            }
        }

        async fn fetch(envelope: &Envelope, pool: &sqlx::Pool<Db>, id: Uuid) -> Patient {
            Patient::fetch_by_key(envelope, pool, &id)
                .await
                .expect("opens")
                .expect("row")
        }

        pub async fn run(
            db: &super::support::Db,
            pool: &sqlx::Pool<Db>,
            uuid: &str,
            blob: &str,
            json: &str,
        ) {
            let kind = db.kind();
            let envelope = super::support::envelope(db, CacheLimits::default());
            let jp = super::jobs_support::job_pool(db);
            db.exec(&format!(
                "CREATE TABLE patients (id {uuid} PRIMARY KEY, clinic VARCHAR(64) NOT NULL, \
                 name {blob} NULL, date_of_birth {blob} NULL, notes {blob} NULL, phone {blob} NULL, \
                 name_plain VARCHAR(200) NULL, dob_plain DATE NULL, notes_plain {json} NULL, \
                 phone_plain VARCHAR(40) NULL)"
            ))
            .await;

            // Twenty rows from before the migration: plaintext only.
            let mut patients: Vec<Patient> = (0..20).map(patient).collect();
            for p in &patients {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO patients (id, clinic, name_plain, dob_plain, notes_plain, phone_plain) VALUES (",
                );
                let mut v = q.separated(", ");
                v.push_bind(p.id)
                    .push_bind(p.clinic.clone())
                    .push_bind(p.name.clone())
                    .push_bind(p.date_of_birth)
                    .push_bind(sqlx::types::Json(p.notes.clone()))
                    .push_bind(p.phone.clone());
                q.push(")");
                q.build().execute(pool).await.expect("plaintext row");
            }
            for p in &patients {
                assert_eq!(&fetch(&envelope, pool, p.id).await, p, "{kind:?}: read from plaintext");
            }
            let all: Vec<Patient> = sqlx::query_as::<_, PatientSealed>("SELECT * FROM patients")
                .opened(&envelope)
                .fetch_all(pool)
                .await
                .expect("opened");
            assert_eq!(all.len(), 20);
            for p in &all {
                assert!(patients.contains(p), "{kind:?}: {p:?}");
            }

            // New rows through the model are encrypted; their plaintext columns stay NULL.
            for i in 20..25 {
                let p = patient(i);
                p.insert(&envelope, pool).await.expect("insert");
                assert_eq!(fetch(&envelope, pool, p.id).await, p);
                patients.push(p);
            }
            let plain_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM patients WHERE name_plain IS NOT NULL")
                .fetch_one(pool)
                .await
                .expect("count");
            assert_eq!(plain_rows, 20);

            // An update through the model encrypts the field and clears its
            // stale plaintext; the row's other fields still read from plaintext.
            let mut changed = patients[1].clone();
            changed.phone = Some("+1 555 9999".into());
            changed
                .update_fields(&envelope, pool, &[PatientColumn::Phone])
                .await
                .expect("update");
            let mut q = sqlx::QueryBuilder::<Db>::new("SELECT phone_plain FROM patients WHERE id = ");
            q.push_bind(changed.id);
            let stale: Option<String> = q.build_query_scalar().fetch_one(pool).await.expect("read");
            assert_eq!(stale, None, "{kind:?}: the plaintext is cleared with the update");
            assert_eq!(fetch(&envelope, pool, changed.id).await, changed);
            patients[1] = changed;

            // Backfill every column from its plaintext with the model's codec.
            for (column, plain) in [
                ("name", "name_plain"),
                ("date_of_birth", "dob_plain"),
                ("notes", "notes_plain"),
                ("phone", "phone_plain"),
            ] {
                let mut o = JobOptions::default();
                o.worker_id = "backfill".into();
                let r = Job::encrypt_column(
                    envelope.clone(),
                    jp.clone(),
                    Target::for_model::<Patient>(column).expect("target"),
                    plain,
                    PlainKind::Text,
                )
                .expect("job")
                .options(o)
                .run()
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: backfill {column}: {e}"));
                assert_eq!((r.failed, r.remaining), (0, 0), "{kind:?} {column}");
            }
            // No silent fallback: a row whose encrypted name was swapped with
            // another row's fails, though its plaintext is still there.
            let (a, b) = (patients[2].id, patients[3].id);
            let mut q = sqlx::QueryBuilder::<Db>::new("SELECT name FROM patients WHERE id = ");
            q.push_bind(b);
            let other: Vec<u8> = q.build_query_scalar().fetch_one(pool).await.expect("read");
            let mut q = sqlx::QueryBuilder::<Db>::new("SELECT name FROM patients WHERE id = ");
            q.push_bind(a);
            let own: Vec<u8> = q.build_query_scalar().fetch_one(pool).await.expect("read");
            let set_name = |v: Vec<u8>| {
                let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE patients SET name = ");
                q.push_bind(v).push(" WHERE id = ").push_bind(a);
                async move { q.build().execute(pool).await.expect("set") }
            };
            set_name(other).await;
            let err = Patient::fetch_by_key(&envelope, pool, &a).await.expect_err("swapped");
            assert!(
                matches!(err, sqlx_envelope::Error::Authentication),
                "{kind:?}: an error, not the plaintext beside it: {err:?}"
            );
            set_name(own).await;

            // With the plaintext gone, every row reads its encrypted values.
            db.exec(
                "UPDATE patients SET name_plain = NULL, dob_plain = NULL, notes_plain = NULL, phone_plain = NULL",
            )
            .await;
            for p in &patients {
                assert_eq!(&fetch(&envelope, pool, p.id).await, p, "{kind:?}: read encrypted");
            }
            // A row with neither value is an error for a required field.
            let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE patients SET name = NULL WHERE id = ");
            q.push_bind(patients[4].id);
            q.build().execute(pool).await.expect("unset");
            let err = Patient::fetch_by_key(&envelope, pool, &patients[4].id)
                .await
                .expect_err("neither value");
            assert!(err.to_string().contains("name_plain are both NULL"), "{kind:?}: {err}");
        }
    };
}

#[allow(dead_code)]
mod postgres {
    type Db = sqlx::Postgres;
    use sqlx_envelope::Envelope;
    scenario!();
}

#[allow(dead_code)]
mod mariadb {
    type Db = sqlx::MySql;
    use sqlx_envelope::Envelope;
    scenario!();
}

#[allow(dead_code)]
mod sqlite {
    type Db = sqlx::Sqlite;
    use sqlx_envelope::Envelope;
    scenario!();
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_model_on_postgres() {
    let iso = Isolated::new(Kind::Postgres).await;
    let support::Db::Postgres(pool) = &iso.db else {
        unreachable!()
    };
    postgres::run(&iso.db, pool, "UUID", "BYTEA", "JSONB").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_model_on_mariadb() {
    let iso = Isolated::new(Kind::MySql).await;
    let support::Db::MySql(pool) = &iso.db else {
        unreachable!()
    };
    mariadb::run(&iso.db, pool, "BINARY(16)", "LONGBLOB", "JSON").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_model_on_sqlite() {
    let iso = Isolated::new(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &iso.db else {
        unreachable!()
    };
    sqlite::run(&iso.db, pool, "BLOB", "BLOB", "TEXT").await;
    iso.drop_all().await;
}
