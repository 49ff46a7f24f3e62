//! The README's model migrated and rotated on a live database, on PostgreSQL,
//! MariaDB and SQLite: a plaintext table shaped like `Patient` (UUID key,
//! tenant, text, date, JSON, nullable text) is backfilled column by column
//! while the application keeps inserting patients and renaming others (dual
//! writes); every data key is retired and the whole model re-encrypted in one
//! pass by the application's own tool (`examples/patient_tool.rs`,
//! `reencrypt --model Patient`) killed with SIGKILL twice at random points and
//! resumed by two workers, while the application keeps writing; then nothing references
//! the old keys, they are destroyed, and every row opens through the model to
//! exactly what the application last wrote. The same for a table with a
//! composite key `(clinic_id, id)` driven entirely by the CLI.
//!
//! `SQLX_ENVELOPE_ACCEPT_ROWS` sets the table size (default 2,000 rows here;
//! `scripts/accept.sh` runs 100,000).
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid",
    feature = "chrono",
    feature = "json",
    feature = "cli"
))]

mod jobs_support;
mod support;
#[macro_use]
mod derive_support;

use support::Kind;

fn rows() -> usize {
    std::env::var("SQLX_ENVELOPE_ACCEPT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn rand_u64() -> u64 {
    u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

macro_rules! scenario {
    () => {
        use std::collections::BTreeMap;
        use std::process::{Child, Stdio};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        use sqlx_envelope::jobs::{
            DestroyOptions, Job, JobOptions, JobPool, PlainKind, Target, count_rows_on,
            destroy_key, job_status, transition::verify_encrypted,
        };
        use sqlx_envelope::{Context, KeyId, RowId};

        use super::jobs_support::{
            cli, db_url, envelope_from_file, job_pool, patient_tool, random_key, write_key_file,
        };

        #[derive(Encrypted, Debug, Clone, PartialEq)]
        #[envelope(table = "visits", id(clinic_id, id), tenant = "clinic_id")]
        pub struct Visit {
            pub clinic_id: i64,
            pub id: Uuid,
            #[encrypt]
            pub reason: String,
        }


        fn job_name(table: &str, column: &str, old: &[KeyId]) -> String {
            let ids: Vec<String> = old.iter().map(|k| k.get().to_string()).collect();
            format!("reencrypt:{table}.{column}:{}", ids.join(","))
        }

        fn spawn(mut c: std::process::Command, args: &[&str]) -> Child {
            c.args(args).stdout(Stdio::null()).stderr(Stdio::inherit());
            c.spawn().expect("spawn sqlx-envelope")
        }

        /// Run a CLI re-encryption, SIGKILL it at `kills` random points, then
        /// resume with two workers; returns when the job is done.
        async fn reencrypt_with_kills(
            tool: &dyn Fn() -> std::process::Command,
            jp: &JobPool,
            job: &str,
            args: &[&str],
            total: u64,
            kills: usize,
        ) {
            let mut marks: Vec<u64> =
                (0..kills).map(|_| total / 10 + super::rand_u64() % (total / 2).max(1)).collect();
            marks.sort_unstable();
            // Paced so that the rows after the last mark (at least 40%) take
            // at least 3 s (from 1,600 rows; the floor of 200 rows/s gives
            // less for fewer): a poll delayed by a loaded machine still kills
            // the worker before it finishes.
            let rate = (total / 8).max(200).to_string();
            for mark in marks {
                let mut a = args.to_vec();
                a.extend(["--worker-id", "w1", "--rate", &rate]);
                let mut child = spawn(tool(), &a);
                loop {
                    let st = job_status(jp, job).await.expect("status");
                    if st.written >= mark {
                        break;
                    }
                    assert!(child.try_wait().expect("wait").is_none(), "exited before {mark}: {st:?}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                child.kill().expect("SIGKILL");
                assert!(!child.wait().expect("wait").success());
            }
            let mut a1 = args.to_vec();
            a1.extend(["--worker-id", "w1"]);
            let mut a2 = args.to_vec();
            a2.extend(["--worker-id", "w2"]);
            let (mut w1, mut w2) = (spawn(tool(), &a1), spawn(tool(), &a2));
            let (s1, s2) = (w1.wait().expect("w1"), w2.wait().expect("w2"));
            // Exit 3: rows the application wrote under an old key while the
            // job ran behind it; the caller sweeps them after the writer stops.
            for s in [s1, s2] {
                assert!(matches!(s.code(), Some(0) | Some(3)), "worker: {s:?}");
            }
            assert!(job_status(jp, job).await.expect("status").is_done());
        }

        pub async fn patients(db: &super::support::Db, pool: &sqlx::Pool<Db>, uuid: &str, blob: &str, json: &str) {
            let started = Instant::now();
            let kind = db.kind();
            let n = super::rows();
            let dir = tempfile::tempdir().expect("tempdir");
            let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
            let envelope = envelope_from_file(db, &keys);
            let jp = job_pool(db);
            let url = db_url(db);
            db.exec(&format!(
                "CREATE TABLE patients (id {uuid} PRIMARY KEY, clinic VARCHAR(64) NOT NULL, \
                 ward VARCHAR(64) NOT NULL, name {blob} NULL, date_of_birth {blob} NULL, \
                 notes {blob} NULL, phone {blob} NULL, name_plain VARCHAR(200) NULL, \
                 dob_plain DATE NULL, notes_plain {json} NULL, phone_plain VARCHAR(40) NULL, name_bidx {blob} NULL)"
            ))
            .await;

            // The plaintext table as it was before encryption.
            let mut expected: BTreeMap<Uuid, Patient> = BTreeMap::new();
            let seeded: Vec<Patient> = (0..n)
                .map(|i| Patient {
                    id: Uuid::new_v4(),
                    clinic: ["north", "south", "east"][i % 3].into(),
                    ward: "general".into(),
                    name: format!("Patient {i}"),
                    date_of_birth: NaiveDate::from_ymd_opt(1930 + (i % 80) as i32, 1 + (i % 12) as u32, 1 + (i % 28) as u32).unwrap(),
                    notes: Notes { allergies: vec![format!("a{}", i % 7)], history: format!("h{i}") },
                    phone: (i % 5 != 0).then(|| format!("+1 555 {:06}", i)),
                })
                .collect();
            for chunk in seeded.chunks(400) {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO patients (id, clinic, ward, name_plain, dob_plain, notes_plain, phone_plain) ",
                );
                q.push_values(chunk, |mut b, p| {
                    b.push_bind(p.id)
                        .push_bind(p.clinic.clone())
                        .push_bind(p.ward.clone())
                        .push_bind(p.name.clone())
                        .push_bind(p.date_of_birth)
                        .push_bind(sqlx::types::Json(p.notes.clone()))
                        .push_bind(p.phone.clone());
                });
                q.build().execute(pool).await.expect("seed");
            }
            for p in &seeded {
                expected.insert(p.id, p.clone());
            }
            let seed_time = started.elapsed();

            // The application: inserts patients through the model and renames
            // existing ones with dual writes (plaintext and sealed name).
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (envelope, pool, stop) = (envelope.clone(), pool.clone(), stop.clone());
                let ids: Vec<(Uuid, String)> = seeded.iter().map(|p| (p.id, p.clinic.clone())).collect();
                tokio::spawn(async move {
                    let mut renamed: BTreeMap<Uuid, String> = BTreeMap::new();
                    let mut inserted: Vec<Patient> = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        if i % 3 == 0 {
                            let p = Patient {
                                id: Uuid::new_v4(),
                                clinic: "west".into(),
                                ward: "new".into(),
                                name: format!("New {i}"),
                                date_of_birth: NaiveDate::from_ymd_opt(2001, 2, 3).unwrap(),
                                notes: Notes::default(),
                                phone: None,
                            };
                            p.insert(&envelope, &pool).await.expect("app insert");
                            inserted.push(p);
                        } else {
                            let (id, clinic) = &ids[(super::rand_u64() % ids.len() as u64) as usize];
                            let name = format!("Renamed {i}");
                            let row = RowId::from(*id);
                            let ctx = Context::new("patients", "name", &row).with_tenant(clinic);
                            let sealed = envelope.seal(&ctx, name.as_bytes()).await.expect("seal");
                            let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE patients SET name_plain = ");
                            q.push_bind(name.clone())
                                .push(", name = ")
                                .push_bind(sealed.into_bytes())
                                .push(" WHERE id = ")
                                .push_bind(*id);
                            q.build().execute(&pool).await.expect("app rename");
                            renamed.insert(*id, name);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    (renamed, inserted, i)
                })
            };

            // Backfill every encrypted column from its typed plaintext column.
            let columns = [
                ("name", "name_plain"),
                ("date_of_birth", "dob_plain"),
                ("notes", "notes_plain"),
                ("phone", "phone_plain"),
            ];
            for (column, plain) in columns {
                let mut o = JobOptions::default();
                o.concurrency = 2;
                o.chunk_rows = (n as u64 / 8).max(50);
                let r = Job::encrypt_column(envelope.clone(), jp.clone(), Target::for_model::<Patient>(column).unwrap(), plain, PlainKind::Text)
                    .unwrap()
                    .options(o)
                    .run()
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?}: backfill {column}: {e}"));
                assert_eq!((r.failed, r.remaining), (0, 0), "{kind:?} {column}: {r:?}");
            }
            for (column, plain) in columns {
                let t = Target::for_model::<Patient>(column).unwrap();
                let v = verify_encrypted(&envelope, &jp, &t, plain, PlainKind::Text, 500).await.unwrap();
                assert!(v.is_clean(), "{kind:?} {column}: {v:?}");
            }
            let backfill_time = started.elapsed();

            // Rotation: retire every data key; re-encrypt the whole model in
            // one pass with the application's own tool (`--model Patient`,
            // killed twice, resumed by two workers).
            let old = super::jobs_support::retire_active(&envelope).await;
            let old_list: Vec<String> = old.iter().map(|k| k.get().to_string()).collect();
            let old_list = old_list.join(",");
            let job = job_name("patients", "name+date_of_birth+notes+phone", &old);
            let args = [
                "reencrypt", "--model", "Patient", "--key", old_list.as_str(), "--batch-size", "200",
                "--chunk-rows", "500", "--lease-secs", "2",
            ];
            reencrypt_with_kills(&|| patient_tool(&url, &keys), &jp, &job, &args, n as u64, 2).await;
            stop.store(true, Ordering::Relaxed);
            let (renamed, inserted, writes) = writer.await.expect("writer");
            // A write that began before the retirement may land after the
            // job passed its row: sweep once more now that the writer stopped.
            let mut o = JobOptions::default();
            o.job_name = Some("sweep".into());
            Job::reencrypt_model::<Patient>(envelope.clone(), jp.clone(), old.clone())
                .unwrap()
                .options(o)
                .run()
                .await
                .unwrap();
            for column in ["name", "date_of_birth", "notes", "phone"] {
                let t = Target::for_model::<Patient>(column).unwrap();
                assert_eq!(count_rows_on(&jp, &t, &old).await.unwrap(), 0, "{kind:?} {column}");
            }
            let st = job_status(&jp, &job).await.unwrap();
            // Each row the job read was written once or lost to a newer
            // application write; none twice (at most the seeded rows and the
            // application's inserts sealed before the retirement).
            assert_eq!(st.failed, 0, "{kind:?}: {st:?}");
            assert_eq!(st.written + st.conflicts, st.scanned, "{kind:?}: {st:?}");
            assert!(st.written <= (n + inserted.len()) as u64, "{kind:?}: {st:?}");
            for id in &old {
                destroy_key(&envelope, &jp, &DestroyOptions::new().unsafe_skip_seal_horizon(), *id)
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?}: destroy {id}: {e}"));
            }

            // Every row opens through the model to what was last written.
            for (id, name) in &renamed {
                expected.get_mut(id).expect("seeded").name = name.clone();
            }
            for p in &inserted {
                expected.insert(p.id, p.clone());
            }
            let fresh = envelope_from_file(db, &keys);
            let opened = sqlx::QueryBuilder::<Db>::new("SELECT * FROM patients ORDER BY id")
                .build_query_as::<PatientSealed>()
                .opened(&fresh)
                .fetch_each(pool)
                .await
                .expect("select");
            assert_eq!(opened.len(), expected.len(), "{kind:?}: no row lost or added");
            for p in opened {
                let p = p.unwrap_or_else(|e| panic!("{kind:?}: a row does not open: {e}"));
                assert_eq!(Some(&p), expected.get(&p.id), "{kind:?}");
            }
            eprintln!(
                "{kind:?}: {n} patients seeded in {seed_time:?}, backfilled by {backfill_time:?}, \
                 rotated and verified by {:?}; {writes} application writes ({} renames, {} inserts); \
                 CLI job {st:?}",
                started.elapsed(),
                renamed.len(),
                inserted.len()
            );
        }

        pub async fn visits(db: &super::support::Db, pool: &sqlx::Pool<Db>, uuid: &str, blob: &str) {
            let kind = db.kind();
            let n = (super::rows() / 2).max(100);
            let dir = tempfile::tempdir().expect("tempdir");
            let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
            let envelope = envelope_from_file(db, &keys);
            let jp = job_pool(db);
            let url = db_url(db);
            db.exec(&format!(
                "CREATE TABLE visits (clinic_id BIGINT NOT NULL, id {uuid} NOT NULL, \
                 reason {blob} NULL, reason_plain VARCHAR(200) NULL, PRIMARY KEY (clinic_id, id))"
            ))
            .await;
            let seeded: Vec<Visit> = (0..n)
                .map(|i| Visit { clinic_id: 1 + (i % 4) as i64, id: Uuid::new_v4(), reason: format!("reason {i}") })
                .collect();
            for chunk in seeded.chunks(400) {
                let mut q = sqlx::QueryBuilder::<Db>::new("INSERT INTO visits (clinic_id, id, reason_plain) ");
                q.push_values(chunk, |mut b, v| {
                    b.push_bind(v.clinic_id).push_bind(v.id).push_bind(v.reason.clone());
                });
                q.build().execute(pool).await.expect("seed visits");
            }
            let key = ["--pk", "clinic_id:int,id:uuid", "--tenant-column", "clinic_id:int"];
            let run = |args: &[&str]| {
                let out = cli(&url, &keys).args(args).output().expect("run sqlx-envelope");
                (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
            };
            let mut backfill = vec!["backfill", "--table", "visits", "--plaintext-column", "reason_plain", "--encrypted-column", "reason"];
            backfill.extend(key);
            let (code, out) = run(&backfill);
            assert_eq!(code, Some(0), "{kind:?}: {out}");
            let verify = ["verify", "--column", "visits.reason:clinic_id:int,id:uuid", "--tenant-column", "clinic_id:int", "--plaintext-column", "reason_plain"];
            let (code, out) = run(&verify);
            assert_eq!(code, Some(0), "{kind:?}: {out}");
            assert!(out.contains(&format!("opened {n}")), "{kind:?}: {out}");

            let old = super::jobs_support::retire_active(&envelope).await;
            let old_list: Vec<String> = old.iter().map(|k| k.get().to_string()).collect();
            let old_list = old_list.join(",");
            // Verify names the tenants whose rows are still on the old keys;
            // status reports per tenant.
            let mut on_old = verify.to_vec();
            on_old.truncate(5);
            on_old.extend(["--key", old_list.as_str()]);
            let (code, out) = run(&on_old);
            assert_eq!(code, Some(3), "{kind:?}: {out}");
            for tenant in 1..=4 {
                assert!(out.contains(&format!("visits.reason tenant {tenant}: ")), "{kind:?}: {out}");
            }
            let (code, out) = run(&["status", "--column", "visits.reason:clinic_id:int,id:uuid", "--tenant-column", "clinic_id:int"]);
            assert_eq!(code, Some(0), "{kind:?}: {out}");
            let per_tenant = seeded.iter().filter(|v| v.clinic_id == 2).count();
            assert!(out.contains(&format!("tenant 2: {per_tenant} encrypted")), "{kind:?}: {out}");
            let mut args = vec!["reencrypt", "--table", "visits", "--column", "reason", "--key", old_list.as_str(), "--batch-size", "100", "--chunk-rows", "300", "--lease-secs", "2"];
            args.extend(key);
            reencrypt_with_kills(&|| cli(&url, &keys), &jp, &job_name("visits", "reason", &old), &args, n as u64, 1).await;
            let t = Target::for_model::<Visit>("reason").unwrap();
            assert_eq!(count_rows_on(&jp, &t, &old).await.unwrap(), 0, "{kind:?}");
            let (code, out) = run(&verify);
            assert_eq!(code, Some(0), "{kind:?}: {out}");
            let (code, out) = run(&on_old);
            assert_eq!(code, Some(0), "{kind:?}: nothing left on the old keys: {out}");
            for id in &old {
                destroy_key(&envelope, &jp, &DestroyOptions::new().unsafe_skip_seal_horizon(), *id).await.unwrap();
            }
            let fresh = envelope_from_file(db, &keys);
            for v in &seeded {
                let got = Visit::fetch_by_key(&fresh, pool, &(v.clinic_id, v.id)).await.expect("open").expect("row");
                assert_eq!(&got, v, "{kind:?}");
            }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_model_postgres() {
    let db = support::Db::connect(Kind::Postgres).await;
    let support::Db::Postgres(pool) = &db else {
        unreachable!()
    };
    postgres::patients(&db, pool, "UUID", "BYTEA", "JSONB").await;
    // Its own database (and key store): the patients' keys stay out of it.
    let db = support::Db::connect(Kind::Postgres).await;
    let support::Db::Postgres(pool) = &db else {
        unreachable!()
    };
    postgres::visits(&db, pool, "UUID", "BYTEA").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_model_mariadb() {
    let db = support::Db::connect(Kind::MySql).await;
    let support::Db::MySql(pool) = &db else {
        unreachable!()
    };
    mariadb::patients(&db, pool, "BINARY(16)", "LONGBLOB", "JSON").await;
    let db = support::Db::connect(Kind::MySql).await;
    let support::Db::MySql(pool) = &db else {
        unreachable!()
    };
    mariadb::visits(&db, pool, "BINARY(16)", "LONGBLOB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_model_sqlite() {
    let db = support::Db::connect(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &db else {
        unreachable!()
    };
    sqlite::patients(&db, pool, "BLOB", "BLOB", "TEXT").await;
    let db = support::Db::connect(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &db else {
        unreachable!()
    };
    sqlite::visits(&db, pool, "BLOB", "BLOB").await;
}
