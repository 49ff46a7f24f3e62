//! The jobs on the README's own model (`Patient`: UUID key, tenant, text,
//! date, JSON, nullable text) and on a model with a composite key whose first
//! part is the tenant, on PostgreSQL, MariaDB and SQLite: a backfill built from
//! the model (from text, DATE, JSON and padded nullable columns) writes values
//! that open through the model, verified as typed values; re-encryption of one
//! tenant, then of the rest by two workers sharing the job (every row written
//! exactly once), moves every encrypted column off the retired keys while each
//! value keeps opening through the model; destroy then succeeds; decrypt-out
//! writes the model's plaintext back into text, DATE and JSON columns.
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
        use sqlx_envelope::jobs::transition::verify_encrypted;
        use sqlx_envelope::jobs::{
            ColumnStatus, DestroyOptions, Job, JobOptions, JobPool, PlainKind, Target,
            count_rows_on, destroy_key,
        };
        use sqlx_envelope::{CacheLimits, KeyId};

        /// A visit: composite key `(clinic_id, id)` whose first part is the
        /// tenant, as multi-tenant schemas often do.
        #[derive(Encrypted, Debug, Clone, PartialEq)]
        #[envelope(table = "visits", id(clinic_id, id), tenant = "clinic_id")]
        pub struct Visit {
            pub clinic_id: i64,
            pub id: Uuid,
            #[encrypt]
            pub reason: String,
        }

        fn opts(worker: &str, chunk_rows: u64, tenant: Option<&str>) -> JobOptions {
            let mut o = JobOptions::default();
            o.worker_id = worker.into();
            o.chunk_rows = chunk_rows;
            o.batch_size = 4;
            o.tenant = tenant.map(str::to_owned);
            o
        }


        /// Re-encrypt `target` off `old`: tenant `first` alone, then the rest
        /// by two workers sharing one job. Returns the rows written.
        async fn reencrypt(
            envelope: &Envelope,
            jp: &JobPool,
            target: &Target,
            old: &[KeyId],
            first: &str,
            expect_first: u64,
            expect_total: u64,
        ) {
            let before = count_rows_on(jp, target, old).await.expect("count");
            assert_eq!(before, expect_total, "{target}: rows on the retired keys");
            let one = Job::reencrypt(envelope.clone(), jp.clone(), target.clone(), old.to_vec())
                .options(opts("solo", 5, Some(first)))
                .run()
                .await
                .expect("one tenant");
            assert_eq!(one.written, expect_first, "{target}: tenant {first} only");
            assert_eq!(one.failed, 0);
            let left = count_rows_on(jp, target, old).await.expect("count");
            assert_eq!(left, expect_total - expect_first, "{target}: other tenants untouched");
            let job = |w: &str| {
                Job::reencrypt(envelope.clone(), jp.clone(), target.clone(), old.to_vec())
                    .options(opts(w, 3, None))
            };
            let (a, b) = (job("w1"), job("w2"));
            let (a, b) = tokio::join!(a.run(), b.run());
            let (a, b) = (a.expect("worker 1"), b.expect("worker 2"));
            assert_eq!(
                a.written + b.written,
                expect_total - expect_first,
                "{target}: every row written exactly once"
            );
            assert_eq!(a.failed + b.failed + a.conflicts + b.conflicts, 0);
            let status = a.status.expect("status");
            assert!(status.is_done());
            assert_eq!(status.written, expect_total - expect_first);
            assert_eq!(count_rows_on(jp, target, old).await.expect("count"), 0, "{target}");
        }

        /// The text form of a JSON column, per database.
        fn json_text(kind: super::support::Kind) -> &'static str {
            match kind {
                super::support::Kind::MySql => "CAST(notes_plain AS CHAR)",
                _ => "CAST(notes_plain AS TEXT)",
            }
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
                 ward VARCHAR(64) NOT NULL, name {blob} NULL, date_of_birth {blob} NULL, \
                 notes {blob} NULL, phone {blob} NULL, legacy_name VARCHAR(200) NULL, \
                 dob_plain DATE NULL, notes_plain {json} NULL, phone_plain VARCHAR(40) NULL, name_bidx {blob} NULL)"
            ))
            .await;
            db.exec(&format!(
                "CREATE TABLE visits (clinic_id BIGINT NOT NULL, id {uuid} NOT NULL, \
                 reason {blob} NOT NULL, PRIMARY KEY (clinic_id, id))"
            ))
            .await;

            // Sixty patients in two clinics (random UUIDs: key order is not
            // insertion order), written by the model.
            let mut patients = Vec::new();
            for i in 0..60u32 {
                let p = Patient {
                    id: Uuid::new_v4(),
                    clinic: if i % 3 == 0 { "south" } else { "north" }.into(),
                    ward: "cardiology".into(),
                    name: format!("Patient {i} Ñoño"),
                    date_of_birth: NaiveDate::from_ymd_opt(1900 + i as i32, 1 + i % 12, 1 + i % 28)
                        .expect("date"),
                    notes: Notes {
                        allergies: vec![format!("allergy {i}")],
                        history: "stable".into(),
                    },
                    phone: (i % 4 != 0).then(|| format!("+1 555 {i:04}")),
                };
                p.insert(&envelope, pool).await.expect("insert");
                patients.push(p);
            }
            let north = patients.iter().filter(|p| p.clinic == "north").count() as u64;
            let with_phone = patients.iter().filter(|p| p.phone.is_some()).count() as u64;
            let north_phone = patients
                .iter()
                .filter(|p| p.clinic == "north" && p.phone.is_some())
                .count() as u64;

            // Backfill: the names become a legacy plaintext column; a job
            // built from the model encrypts them back.
            for p in &patients {
                let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE patients SET name = NULL, legacy_name = ");
                q.push_bind(p.name.clone()).push(" WHERE id = ").push_bind(p.id);
                q.build().execute(pool).await.expect("to plaintext");
            }
            let name = Target::for_model::<Patient>("name").expect("target");
            assert_eq!(name.key_spec(), "id:uuid");
            let r = Job::encrypt_column(envelope.clone(), jp.clone(), name.clone(), "legacy_name", PlainKind::Text)
                .expect("job")
                .options(opts("backfill", 7, None))
                .run()
                .await
                .expect("backfill");
            assert_eq!((r.written, r.failed, r.remaining), (60, 0, 0), "{kind:?}");
            let v = verify_encrypted(&envelope, &jp, &name, "legacy_name", PlainKind::Text, 16)
                .await
                .expect("verify");
            assert_eq!(v.checked, 60);
            assert!(v.is_clean(), "{v:?}");
            for p in &patients {
                let got = Patient::fetch_by_key(&envelope, pool, &p.id).await.expect("open").expect("row");
                assert_eq!(&got, p, "{kind:?}: a backfilled value opens through the model");
            }
            // The finished backfill run again (no --restart) makes a new pass
            // for rows that need it since, keeping its history.
            for p in patients.iter().take(5) {
                let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE patients SET name = NULL WHERE id = ");
                q.push_bind(p.id);
                q.build().execute(pool).await.expect("unset");
            }
            let again = Job::encrypt_column(envelope.clone(), jp.clone(), name.clone(), "legacy_name", PlainKind::Text)
                .expect("job")
                .options(opts("backfill", 7, None))
                .run()
                .await
                .expect("new pass");
            assert_eq!((again.written, again.failed, again.remaining), (5, 0, 0), "{kind:?}: new pass");
            let st = again.status.expect("status");
            assert!(st.is_done());
            assert_eq!(st.written, 65, "{kind:?}: the job's history is kept across passes");
            // Status per tenant, from one grouped scan.
            let keys = envelope.keys().await.expect("keys");
            let st = ColumnStatus::compute(&jp, &name, &keys).await.expect("status");
            assert_eq!(st.counts.encrypted(), 60);
            assert_eq!(st.by_tenant.len(), 2, "{st:?}");
            assert_eq!(st.by_tenant[&Some("north".to_owned())].counts.encrypted(), north);
            assert_eq!(st.by_tenant[&Some("south".to_owned())].counts.encrypted(), 60 - north);
            assert_eq!(st.by_tenant[&Some("south".to_owned())].undecryptable, 0);

            // Typed backfill: a DATE, a JSON and a padded nullable text column,
            // each sealed with the model's own codec and frame.
            for p in &patients {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "UPDATE patients SET date_of_birth = NULL, notes = NULL, phone = NULL, dob_plain = ",
                );
                q.push_bind(p.date_of_birth)
                    .push(", notes_plain = ")
                    .push_bind(sqlx::types::Json(p.notes.clone()))
                    .push(", phone_plain = ")
                    .push_bind(p.phone.clone())
                    .push(" WHERE id = ")
                    .push_bind(p.id);
                q.build().execute(pool).await.expect("to typed plaintext");
            }
            for (column, plain, rows) in [
                ("date_of_birth", "dob_plain", 60),
                ("notes", "notes_plain", 60),
                ("phone", "phone_plain", with_phone),
            ] {
                let target = Target::for_model::<Patient>(column).expect("target");
                let r = Job::encrypt_column(envelope.clone(), jp.clone(), target.clone(), plain, PlainKind::Text)
                    .expect("job")
                    .options(opts("typed", 13, None))
                    .run()
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?}: backfill {column}: {e}"));
                assert_eq!((r.written, r.failed, r.remaining), (rows, 0, 0), "{kind:?} {column}");
                let v = verify_encrypted(&envelope, &jp, &target, plain, PlainKind::Text, 16)
                    .await
                    .expect("verify");
                assert_eq!(v.checked, rows, "{kind:?} {column}");
                assert!(v.is_clean(), "{kind:?} {column}: {v:?}");
            }
            for p in &patients {
                let got = Patient::fetch_by_key(&envelope, pool, &p.id).await.expect("open").expect("row");
                assert_eq!(&got, p, "{kind:?}: typed backfilled values open through the model");
            }

            // Re-encrypt every encrypted column of the model after a
            // rotation, in one pass: each row is read once and all of its
            // columns move in one compare-and-swap (rows written = rows).
            let old = super::jobs_support::retire_active(&envelope).await;
            let columns = Target::all_for_model::<Patient>().expect("targets");
            assert_eq!(columns.len(), 4);
            let on_old = |jp: JobPool, old: Vec<KeyId>| async move {
                let mut n = Vec::new();
                for t in Target::all_for_model::<Patient>().expect("targets") {
                    n.push(count_rows_on(&jp, &t, &old).await.expect("count"));
                }
                n
            };
            assert_eq!(on_old(jp.clone(), old.clone()).await, vec![60, 60, 60, with_phone]);
            let one = Job::reencrypt_model::<Patient>(envelope.clone(), jp.clone(), old.clone())
                .expect("model job")
                .options(opts("solo", 5, Some("north")))
                .run()
                .await
                .expect("one tenant");
            assert_eq!((one.written, one.failed), (north, 0), "{kind:?}: one write per row");
            assert_eq!(
                on_old(jp.clone(), old.clone()).await,
                vec![60 - north, 60 - north, 60 - north, with_phone - north_phone],
                "{kind:?}: every column of the tenant's rows, and only those"
            );
            // One south row's notes swapped with another row's: that row is
            // left whole (all four columns) and reported once, by key.
            let south: Vec<&Patient> = patients.iter().filter(|p| p.clinic == "south").collect();
            let notes_of = |id: Uuid| {
                let mut q = sqlx::QueryBuilder::<Db>::new("SELECT notes FROM patients WHERE id = ");
                q.push_bind(id);
                async move { q.build_query_scalar::<Vec<u8>>().fetch_one(pool).await.expect("notes") }
            };
            let set_notes = |id: Uuid, v: Vec<u8>| {
                let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE patients SET notes = ");
                q.push_bind(v).push(" WHERE id = ").push_bind(id);
                async move { q.build().execute(pool).await.expect("set notes") }
            };
            let original = notes_of(south[0].id).await;
            set_notes(south[0].id, notes_of(south[1].id).await).await;
            // Both workers join one pass: a run only starts a new pass when
            // the job was finished before it started. Paced, so that one
            // worker cannot finish the pass before the other has started.
            let job = |w: &str| {
                let mut o = opts(w, 3, None);
                o.rate = Some(40.0);
                Job::reencrypt_model::<Patient>(envelope.clone(), jp.clone(), old.clone())
                    .expect("model job")
                    .options(o)
            };
            let (a, b) = (job("w1"), job("w2"));
            let (a, b) = tokio::join!(a.run(), b.run());
            let (a, b) = (a.expect("worker 1"), b.expect("worker 2"));
            assert!(a.job.contains("name+date_of_birth+notes+phone"), "{}", a.job);
            assert_eq!(a.written + b.written, 60 - north - 1, "{kind:?}: every row written exactly once");
            assert_eq!(a.failed + b.failed, 1, "{kind:?}: the swapped row");
            assert_eq!(a.conflicts + b.conflicts, 0);
            let failed: Vec<_> = a.failed_examples.iter().chain(&b.failed_examples).collect();
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert_eq!(failed[0].column, "notes");
            assert!(failed[0].key.contains(&south[0].id.simple().to_string()), "{failed:?}");
            let phone = u64::from(south[0].phone.is_some());
            assert_eq!(on_old(jp.clone(), old.clone()).await, vec![1, 1, 1, phone], "{kind:?}: the failed row is left whole");
            // Repaired, the same job run again makes a new pass for it: two
            // workers started together on the finished job make one pass
            // between them (the other joins it, or finds nothing left).
            set_notes(south[0].id, original).await;
            let passes = || async { sqlx_envelope::jobs::job_status(&jp, &a.job).await.expect("status").passes };
            let before = passes().await;
            let (j1, j2) = (job("w1"), job("w2"));
            let (x, y) = tokio::join!(j1.run(), j2.run());
            let (x, y) = (x.expect("new pass"), y.expect("new pass"));
            assert_eq!((x.written + y.written, x.failed + y.failed), (1, 0), "{kind:?}");
            assert_eq!(passes().await, before + 1, "{kind:?}: one new pass");
            assert_eq!(on_old(jp.clone(), old.clone()).await, vec![0, 0, 0, 0], "{kind:?}");
            for p in &patients {
                let got = Patient::fetch_by_key(&envelope, pool, &p.id).await.expect("open").expect("row");
                assert_eq!(&got, p, "{kind:?}: a re-encrypted value opens through the model");
            }
            // The retired keys are unreferenced in every column the model
            // registered: destroy succeeds (this test's processes are the only
            // ones that sealed, so the seal horizon is not waited for).
            for id in &old {
                destroy_key(&envelope, &jp, &DestroyOptions::new().unsafe_skip_seal_horizon(), *id)
                    .await
                    .expect("destroy");
            }
            for p in &patients {
                let got = Patient::fetch_by_key(&envelope, pool, &p.id).await.expect("open").expect("row");
                assert_eq!(&got, p);
            }

            // Decrypt-out: the model's plaintext back into the legacy column.
            db.exec("UPDATE patients SET legacy_name = NULL").await;
            let r = Job::decrypt_column(envelope.clone(), jp.clone(), name.clone(), "legacy_name", PlainKind::Text)
                .expect("job")
                .options(opts("out", 11, None))
                .run()
                .await
                .expect("decrypt out");
            assert_eq!((r.written, r.failed), (60, 0));
            for p in &patients {
                let mut q = sqlx::QueryBuilder::<Db>::new("SELECT legacy_name FROM patients WHERE id = ");
                q.push_bind(p.id);
                let plain: Option<String> = q.build_query_scalar().fetch_one(pool).await.expect("read");
                assert_eq!(plain.as_deref(), Some(p.name.as_str()));
            }

            // Typed decrypt-out: a date and a JSON document back into typed columns.
            db.exec("UPDATE patients SET dob_plain = NULL, notes_plain = NULL").await;
            for (column, plain) in [("date_of_birth", "dob_plain"), ("notes", "notes_plain")] {
                let target = Target::for_model::<Patient>(column).expect("target");
                let r = Job::decrypt_column(envelope.clone(), jp.clone(), target, plain, PlainKind::Text)
                    .expect("job")
                    .options(opts("typed-out", 17, None))
                    .run()
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?}: decrypt {column}: {e}"));
                assert_eq!((r.written, r.failed), (60, 0), "{kind:?} {column}");
            }
            for p in &patients {
                let mut q = sqlx::QueryBuilder::<Db>::new("SELECT dob_plain FROM patients WHERE id = ");
                q.push_bind(p.id);
                let dob: NaiveDate = q.build_query_scalar().fetch_one(pool).await.expect("read date");
                assert_eq!(dob, p.date_of_birth);
                let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                    "SELECT {} FROM patients WHERE id = ",
                    json_text(kind)
                ));
                q.push_bind(p.id);
                let notes: String = q.build_query_scalar().fetch_one(pool).await.expect("read json");
                let notes: Notes = serde_json::from_str(&notes).expect("json");
                assert_eq!(notes, p.notes);
            }

            // A composite key (clinic_id, id) with the tenant as its first part.
            let mut visits = Vec::new();
            for i in 0..40i64 {
                let v = Visit {
                    clinic_id: 1 + i % 3,
                    id: Uuid::new_v4(),
                    reason: format!("visit {i}"),
                };
                v.insert(&envelope, pool).await.expect("insert visit");
                visits.push(v);
            }
            let target = Target::for_model::<Visit>("reason").expect("target");
            assert_eq!(target.key_spec(), "clinic_id:int,id:uuid");
            let old = super::jobs_support::retire_active(&envelope).await;
            let clinic_2 = visits.iter().filter(|v| v.clinic_id == 2).count() as u64;
            reencrypt(&envelope, &jp, &target, &old, "2", clinic_2, 40).await;
            for v in &visits {
                let got = Visit::fetch_by_key(&envelope, pool, &(v.clinic_id, v.id))
                    .await
                    .expect("open")
                    .expect("row");
                assert_eq!(&got, v, "{kind:?}: composite key");
            }
            // Re-encrypting `target` with `o` is refused: the error.
            let refused = async |target: Target, o: JobOptions| {
                Job::reencrypt(envelope.clone(), jp.clone(), target, old.clone())
                    .options(o)
                    .run()
                    .await
                    .expect_err("refused")
            };
            // A tenant that is not an integer is refused before anything runs.
            let err = refused(target.clone(), opts("bad", 3, Some("north"))).await;
            assert!(err.to_string().contains("not an integer"), "{err}");

            // A misspelled column is refused before anything is registered,
            // planned or written.
            let typo = Target::keyed("patients", name.key.clone(), "nmae").unwrap();
            let mut o = opts("typo", 5, None);
            o.count_total = false;
            let err = refused(typo, o).await;
            assert!(matches!(err, sqlx_envelope::jobs::JobError::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains("check the table"), "{err}");
            let registered = sqlx_envelope::jobs::registered_columns(&jp).await.unwrap();
            assert!(registered.iter().all(|t| t.column.as_str() != "nmae"), "{registered:?}");

            // An encrypted column that is not binary is refused the same way
            // on PostgreSQL and MySQL/MariaDB (SQLite stores bound bytes as
            // bytes whatever the declared type).
            if !matches!(kind, super::support::Kind::Sqlite) {
                let text = Target::keyed("patients", name.key.clone(), "legacy_name").unwrap();
                let mut o = opts("text", 5, None);
                o.job_name = Some("text_column".into());
                let err = refused(text, o).await;
                assert!(matches!(err, sqlx_envelope::jobs::JobError::Invalid(_)), "{err:?}");
                let m = err.to_string();
                assert!(
                    m.contains("patients.legacy_name is")
                        && m.contains("sealed values are bytes")
                        && m.contains("nothing was registered"),
                    "{kind:?}: {m}"
                );
                let st = sqlx_envelope::jobs::job_status(&jp, "text_column").await.unwrap();
                assert!(st.kind.is_none(), "{kind:?}: no job registered: {st:?}");
            }

            // A key or tenant column declared as another kind than it is (the
            // UUID `id` as an integer, the text tenant as an integer) is
            // refused the same way: read so, every value would be bound to
            // another row or tenant.
            let as_int = Target::new("patients", "id", "phone").unwrap();
            let int_tenant = Target::for_model::<Patient>("phone")
                .unwrap()
                .tenant(sqlx_envelope::jobs::parse_tenant_spec("clinic:int").unwrap());
            for (target, column, declared) in [(as_int, "id", "int"), (int_tenant, "clinic", "int")] {
                let mut o = opts("kinds", 5, None);
                o.job_name = Some("kinds".into());
                let err = refused(target, o).await;
                assert!(matches!(err, sqlx_envelope::jobs::JobError::Invalid(_)), "{err:?}");
                let m = err.to_string();
                assert!(
                    m.contains(&format!("patients.{column} "))
                        && m.contains(&format!("reads it as {declared}"))
                        && m.contains("nothing was registered"),
                    "{kind:?}: {m}"
                );
                let st = sqlx_envelope::jobs::job_status(&jp, "kinds").await.unwrap();
                assert!(st.kind.is_none(), "{kind:?}: no job registered: {st:?}");
            }

            // The model's column without its tenant column: the retired keys
            // hold values bound to tenants, which such a target would fail as
            // if tampered with: refused, naming the flag, before anything is
            // registered.
            let no_tenant = Target::keyed("patients", name.key.clone(), "phone").unwrap();
            let mut o = opts("no_tenant", 5, None);
            o.job_name = Some("no_tenant".into());
            let err = refused(no_tenant, o).await;
            assert!(matches!(err, sqlx_envelope::jobs::JobError::Invalid(_)), "{err:?}");
            let m = err.to_string();
            assert!(
                m.contains("bound to tenant") && m.contains("--tenant-column"),
                "{kind:?}: {m}"
            );
            let st = sqlx_envelope::jobs::job_status(&jp, "no_tenant").await.unwrap();
            assert!(st.kind.is_none(), "{kind:?}: no job registered: {st:?}");

            // A restart (`--restart`, JobOptions::restart) forgets a job's
            // progress only once the target is checked: the same job refused
            // for a wrong key kind keeps it.
            let mut o = opts("kept", 5, None);
            o.job_name = Some("kept".into());
            let phone = Target::for_model::<Patient>("phone").unwrap();
            Job::reencrypt(envelope.clone(), jp.clone(), phone, old.clone())
                .options(o.clone())
                .run()
                .await
                .unwrap();
            let before = sqlx_envelope::jobs::job_status(&jp, "kept").await.unwrap();
            assert!(before.kind.is_some(), "{kind:?}: {before:?}");
            o.restart = true;
            let as_int = Target::new("patients", "id", "phone").unwrap();
            let err = refused(as_int, o).await;
            assert!(matches!(err, sqlx_envelope::jobs::JobError::Invalid(_)), "{err:?}");
            assert_eq!(
                sqlx_envelope::jobs::job_status(&jp, "kept").await.unwrap(),
                before,
                "{kind:?}: the refused restart kept the job's progress"
            );
        }
    };
}

#[allow(dead_code)]
mod postgres {
    #[allow(dead_code)]
    type Db = sqlx::Postgres;
    include!("derive_support/flagship.rs");
    scenario!();
}

#[allow(dead_code)]
mod mariadb {
    #[allow(dead_code)]
    type Db = sqlx::MySql;
    include!("derive_support/flagship.rs");
    scenario!();
}

#[allow(dead_code)]
mod sqlite {
    #[allow(dead_code)]
    type Db = sqlx::Sqlite;
    include!("derive_support/flagship.rs");
    scenario!();
}

#[tokio::test(flavor = "multi_thread")]
async fn model_jobs_on_postgres() {
    let iso = Isolated::new(Kind::Postgres).await;
    let support::Db::Postgres(pool) = &iso.db else {
        unreachable!()
    };
    postgres::run(&iso.db, pool, "UUID", "BYTEA", "JSONB").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn model_jobs_on_mariadb() {
    let iso = Isolated::new(Kind::MySql).await;
    let support::Db::MySql(pool) = &iso.db else {
        unreachable!()
    };
    mariadb::run(&iso.db, pool, "BINARY(16)", "LONGBLOB", "JSON").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn model_jobs_on_sqlite() {
    let iso = Isolated::new(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &iso.db else {
        unreachable!()
    };
    sqlite::run(&iso.db, pool, "BLOB", "BLOB", "TEXT").await;
    iso.drop_all().await;
}
