//! Encrypting an existing plaintext column online, on PostgreSQL, MariaDB and
//! SQLite: backfill stopped and resumed, transition reads and counts,
//! dual writes never overwritten, the guarded DROP COLUMN, and the way back
//! out (decrypt to plaintext).

mod jobs_support;
mod support;

use std::collections::BTreeMap;

use jobs_support::*;
use sqlx_envelope::jobs::transition::{
    drop_plaintext, read_transition, transition_counts, verify_encrypted,
};
use sqlx_envelope::jobs::{Job, JobError, JobOptions, PlainKind, Target, job_status};
use sqlx_envelope::{Context, Envelope, RowId};
use support::{ALL, Db, Kind, unique};

const ROWS: i64 = 3_000;

fn email(id: i64) -> Option<String> {
    (id % 100 != 0).then(|| format!("user{id}@example.com"))
}

fn ph(db: &Db, n: usize) -> String {
    match db.kind() {
        Kind::Postgres => format!("${n}"),
        _ => "?".into(),
    }
}

/// The application's dual write: plaintext and encrypted column together.
async fn dual_write(db: &Db, env: &Envelope, table: &str, id: i64, value: &str, insert: bool) {
    let row = RowId::from(id);
    let sealed = env
        .seal(&Context::new(table, "email_enc", &row), value.as_bytes())
        .await
        .unwrap();
    let sql = if insert {
        format!(
            "INSERT INTO {table} (email, email_enc, id) VALUES ({}, {}, {})",
            ph(db, 1),
            ph(db, 2),
            ph(db, 3)
        )
    } else {
        format!(
            "UPDATE {table} SET email = {}, email_enc = {} WHERE id = {}",
            ph(db, 1),
            ph(db, 2),
            ph(db, 3)
        )
    };
    let sql = sqlx::AssertSqlSafe(sql);
    match db {
        Db::Postgres(p) => sqlx::query(sql)
            .bind(value)
            .bind(sealed.as_bytes())
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
        Db::MySql(p) => sqlx::query(sql)
            .bind(value)
            .bind(sealed.as_bytes())
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Sqlite(p, _) => sqlx::query(sql)
            .bind(value)
            .bind(sealed.as_bytes())
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
    }
    .unwrap();
}

/// A plaintext-only write (an instance that does not dual-write yet).
async fn plain_write(db: &Db, table: &str, id: i64, value: &str) {
    let sql = sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET email = {} WHERE id = {}",
        ph(db, 1),
        ph(db, 2)
    ));
    match db {
        Db::Postgres(p) => sqlx::query(sql)
            .bind(value)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
        Db::MySql(p) => sqlx::query(sql)
            .bind(value)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Sqlite(p, _) => sqlx::query(sql)
            .bind(value)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
    }
    .unwrap();
}

async fn text_rows(db: &Db, table: &str, col: &str) -> Vec<(i64, Option<String>)> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT id, {col} FROM {table} ORDER BY id"));
    match db {
        Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
        Db::MySql(p) => sqlx::query_as(sql).fetch_all(p).await,
        Db::Sqlite(p, _) => sqlx::query_as(sql).fetch_all(p).await,
    }
    .unwrap()
}

async fn encrypt_existing(kind: Kind) {
    let db = Db::connect(kind).await;
    let pool = job_pool(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let env = envelope_from_file(&db, &keys);
    let table = unique("jobs_bf");
    let text = if kind == Kind::MySql {
        "VARCHAR(255)"
    } else {
        "TEXT"
    };

    // A table with plaintext rows, then phase 1: a new nullable column.
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, email {text} NULL)"
    ))
    .await;
    let mut expected: BTreeMap<i64, Option<String>> = BTreeMap::new();
    for batch in (1..=ROWS).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = batch
            .iter()
            .map(|id| match email(*id) {
                Some(e) => format!("({id}, '{e}')"),
                None => format!("({id}, NULL)"),
            })
            .collect();
        db.exec(&format!(
            "INSERT INTO {table} (id, email) VALUES {}",
            values.join(", ")
        ))
        .await;
        for id in batch {
            expected.insert(*id, email(*id));
        }
    }
    db.exec(&format!(
        "ALTER TABLE {table} ADD COLUMN email_enc {} NULL",
        db.blob_type()
    ))
    .await;
    let target = Target::new(&table, "id", "email_enc").unwrap();
    let nulls = (ROWS / 100) as u64;
    let c = transition_counts(&pool, &target, "email").await.unwrap();
    assert_eq!(
        (c.total, c.encrypted, c.plaintext_only, c.null),
        (ROWS as u64, 0, ROWS as u64 - nulls, nulls)
    );

    // Phase 3: backfill, stopped (cancelled) a third of the way.
    let mut opts = JobOptions::default();
    opts.batch_size = 100;
    opts.chunk_rows = 500;
    let job = Job::encrypt_column(
        env.clone(),
        pool.clone(),
        target.clone(),
        "email",
        PlainKind::Text,
    )
    .unwrap()
    .options(opts.clone());
    let cancel = job.cancel_token();
    let mut progress = job.progress();
    let watcher = tokio::spawn(async move {
        while progress.changed().await.is_ok() {
            if progress.borrow().written >= 1_000 {
                cancel.cancel();
                return;
            }
        }
    });
    assert!(matches!(job.run().await, Err(JobError::Cancelled)));
    watcher.await.unwrap();
    let c = transition_counts(&pool, &target, "email").await.unwrap();
    assert!(c.encrypted >= 1_000 && c.plaintext_only > 0, "{c:?}");
    let st = job_status(&pool, &job.name()).await.unwrap();
    assert_eq!(
        st.written, c.encrypted,
        "checkpoints match the rows written"
    );
    assert_eq!(st.chunks_running, 0, "a cancelled run releases its lease");

    // Dropping the plaintext now is refused, and the column stays.
    match drop_plaintext(&pool, &target, "email").await {
        Err(JobError::RowsRemain { rows, .. }) => assert_eq!(rows, c.plaintext_only),
        other => panic!("drop must be refused, got {other:?}"),
    }
    assert_eq!(text_rows(&db, &table, "email").await.len(), ROWS as usize);

    // Phase 2 (dual writes) goes on meanwhile: updates of done and not-yet-done
    // rows, a new row, and a plaintext-only write from a lagging instance.
    for id in [5, 1500, 2999] {
        let v = format!("changed{id}@example.com");
        dual_write(&db, &env, &table, id, &v, false).await;
        expected.insert(id, Some(v));
    }
    dual_write(&db, &env, &table, ROWS + 1, "new@example.com", true).await;
    expected.insert(ROWS + 1, Some("new@example.com".into()));
    plain_write(&db, &table, 2500, "lagging@example.com").await;
    expected.insert(2500, Some("lagging@example.com".into()));

    // Phase 5: transition reads accept both forms.
    let raw = all_rows(&db, &table, "email_enc").await;
    let plain = text_rows(&db, &table, "email").await;
    let mut seen = (0, 0);
    for ((id, enc), (_, pt)) in raw.iter().zip(&plain) {
        let row = RowId::from(*id);
        let ctx = Context::new(&table, "email_enc", &row);
        let got = read_transition(&env, &ctx, enc.as_deref(), pt.as_deref().map(str::as_bytes))
            .await
            .unwrap()
            .map(|p| String::from_utf8(p.into_vec()).unwrap());
        assert_eq!(got, expected[id], "row {id}");
        if enc.is_some() {
            seen.0 += 1
        } else if pt.is_some() {
            seen.1 += 1
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0, "both forms were read: {seen:?}");
    // A ciphertext that does not open is an error, never a fall back to plaintext.
    let (id, enc) = raw.iter().find(|(_, e)| e.is_some()).unwrap();
    let other = RowId::from(id + 1_000_000);
    assert!(
        read_transition(
            &env,
            &Context::new(&table, "email_enc", &other),
            enc.as_deref(),
            Some(b"x")
        )
        .await
        .is_err()
    );

    // Resume: the job finishes where it stopped.
    let job = Job::encrypt_column(
        env.clone(),
        pool.clone(),
        target.clone(),
        "email",
        PlainKind::Text,
    )
    .unwrap()
    .options(opts);
    let report = job.run().await.unwrap();
    assert_eq!(report.remaining, 0);
    assert_eq!(report.failed, 0);
    let st = job_status(&pool, &job.name()).await.unwrap();
    assert!(st.is_done());
    // Phase 4: verify. Every non-null plaintext has an encrypted twin that
    // opens to it; dual-written values were not overwritten.
    let c = transition_counts(&pool, &target, "email").await.unwrap();
    assert_eq!(c.plaintext_only, 0, "{c:?}");
    let v = verify_encrypted(&env, &pool, &target, "email", PlainKind::Text, 256)
        .await
        .unwrap();
    assert!(v.is_clean(), "{v:?}");
    let non_null = expected.values().filter(|v| v.is_some()).count() as u64;
    assert_eq!(v.checked, non_null);

    // An encrypted column named by mistake (the integer key) is refused,
    // whatever the database makes of reading it, and nothing is dropped.
    let wrong = Target::new(&table, "id", "id").unwrap();
    match drop_plaintext(&pool, &wrong, "email").await {
        Err(JobError::Invalid(m)) => {
            assert!(m.to_lowercase().contains("nothing was dropped"), "{m}")
        }
        other => panic!("a column not in the sealed format: {other:?}"),
    }
    assert_eq!(text_rows(&db, &table, "email").await.len(), expected.len());

    // Phase 6: drop the plaintext; now allowed.
    drop_plaintext(&pool, &target, "email").await.unwrap();
    let gone = format!("SELECT email FROM {table}");
    let still_there = match &db {
        Db::Postgres(p) => sqlx::query(sqlx::AssertSqlSafe(gone))
            .fetch_all(p)
            .await
            .is_ok(),
        Db::MySql(p) => sqlx::query(sqlx::AssertSqlSafe(gone))
            .fetch_all(p)
            .await
            .is_ok(),
        Db::Sqlite(p, _) => sqlx::query(sqlx::AssertSqlSafe(gone))
            .fetch_all(p)
            .await
            .is_ok(),
    };
    assert!(!still_there, "the plaintext column is gone");

    // Decrypting out into a column that cannot take the values: the
    // database's refusal quotes the value it refused, so the error keeps only
    // its code and says what to check (SQLite takes any value in any column).
    if kind != Kind::Sqlite {
        db.exec(&format!(
            "ALTER TABLE {table} ADD COLUMN n_plain BIGINT NULL"
        ))
        .await;
        let err = Job::decrypt_column(
            env.clone(),
            pool.clone(),
            target.clone(),
            "n_plain",
            PlainKind::Text,
        )
        .unwrap()
        .run()
        .await
        .expect_err("text into an integer column");
        let said = err.to_string();
        assert!(matches!(err, JobError::Invalid(_)), "{kind:?}: {err:?}");
        assert!(
            said.contains("is not shown") && !said.contains("example.com"),
            "{kind:?}: {said}"
        );
    }

    // Leaving the library: decrypt back into a new plaintext column.
    db.exec(&format!(
        "ALTER TABLE {table} ADD COLUMN email_plain {text} NULL"
    ))
    .await;
    let back = Job::decrypt_column(
        env.clone(),
        pool.clone(),
        target.clone(),
        "email_plain",
        PlainKind::Text,
    )
    .unwrap()
    .run()
    .await
    .unwrap();
    assert_eq!(back.remaining, 0);
    assert_eq!(back.written, non_null);
    let plain = text_rows(&db, &table, "email_plain").await;
    let got: BTreeMap<i64, Option<String>> = plain.into_iter().collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn backfill_postgres() {
    encrypt_existing(ALL[0]).await;
}

#[tokio::test]
async fn backfill_mariadb() {
    encrypt_existing(ALL[1]).await;
}

#[tokio::test]
async fn backfill_sqlite() {
    encrypt_existing(ALL[2]).await;
}

/// SQLite's declared types are hints: a `TEXT` key column holds the 16-byte
/// blobs sqlx binds for a `Uuid`, a column declared without a type holds the
/// tenants. A job checks what the rows store, not what the table declares:
/// it backfills such a table with `id:uuid` and refuses `id` read as an
/// integer before it registers anything.
#[tokio::test]
async fn sqlite_keys_are_checked_by_what_the_rows_store() {
    let db = Db::connect(Kind::Sqlite).await;
    let Db::Sqlite(sqlite, _) = &db else {
        unreachable!()
    };
    let pool = job_pool(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let env = envelope_from_file(&db, &keys);
    let table = unique("jobs_hint");
    db.exec(&format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, org, note TEXT NULL, note_enc BLOB NULL)"
    ))
    .await;
    for i in 0..20 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (id, org, note) VALUES (?, ?, ?)"
        )))
        .bind(uuid::Uuid::new_v4())
        .bind(["north", "south"][i % 2])
        .bind(format!("note {i}"))
        .execute(sqlite)
        .await
        .unwrap();
    }
    let tenant = sqlx_envelope::jobs::parse_tenant_spec("org").unwrap();
    let as_int = Target::new(&table, "id", "note_enc")
        .unwrap()
        .tenant(tenant.clone());
    let mut opts = JobOptions::default();
    opts.job_name = Some(format!("{table}-int"));
    let err = Job::encrypt_column(env.clone(), pool.clone(), as_int, "note", PlainKind::Text)
        .unwrap()
        .options(opts.clone())
        .run()
        .await
        .expect_err("a UUID key read as an integer");
    let m = err.to_string();
    assert!(
        m.contains(&format!(
            "{table}.id holds blob values, but the job reads it as int"
        )),
        "{m}"
    );
    assert!(
        job_status(&pool, &format!("{table}-int"))
            .await
            .unwrap()
            .kind
            .is_none()
    );

    let uuid_key = sqlx_envelope::jobs::parse_pk_spec("id:uuid").unwrap();
    let target = Target::keyed(&table, uuid_key, "note_enc")
        .unwrap()
        .tenant(tenant);
    let r = Job::encrypt_column(
        env.clone(),
        pool.clone(),
        target.clone(),
        "note",
        PlainKind::Text,
    )
    .unwrap()
    .run()
    .await
    .unwrap();
    assert_eq!((r.written, r.remaining), (20, 0));
    let c = transition_counts(&pool, &target, "note").await.unwrap();
    assert_eq!((c.encrypted, c.plaintext_only), (20, 0), "{c:?}");

    // A text id among the UUIDs: the column holds two storage classes, no
    // kind reads it, and the refusal names both.
    db.exec(&format!(
        "INSERT INTO {table} (id, org, note) VALUES ('legacy-7', 'north', 'x')"
    ))
    .await;
    let mut opts = JobOptions::default();
    opts.job_name = Some(format!("{table}-mixed"));
    let err = Job::encrypt_column(env, pool.clone(), target, "note", PlainKind::Text)
        .unwrap()
        .options(opts)
        .run()
        .await
        .expect_err("a text id among blob ids");
    let m = err.to_string();
    assert!(
        m.contains(&format!("{table}.id holds ")) && m.contains("text") && m.contains("blob"),
        "{m}"
    );
}
