//! Blind indexes on a model, on PostgreSQL, MariaDB and SQLite: find by an
//! encrypted e-mail with normalisation (`Ada@Example.com ` finds
//! `ada@example.com`), tenant isolation (the same e-mail in two tenants is
//! found only in its own), a UNIQUE constraint on a full-length index violated
//! and reported as the database's error, a truncated index (last four digits
//! of a phone, 4 bits) whose false positives never reach the caller, and
//! updates that move a row's index with its value, and the index job that
//! fills an index for rows written before it existed.
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid",
    feature = "chrono"
))]

mod jobs_support;
mod support;
#[macro_use]
mod derive_support;

use derive_support::Isolated;
use support::Kind;

macro_rules! scenario {
    () => {
        use sqlx_envelope::{CacheLimits, Encrypted, Envelope, QueryAsExt};
        use uuid::Uuid;

        /// A member of an organisation, found by e-mail (unique per org), by
        /// the last four digits of a phone number, and by surname and birth
        /// date together (a compound index over a text and a date field).
        #[derive(Encrypted, Debug, Clone, PartialEq)]
        #[envelope(
            table = "members",
            tenant = "org",
            index(column = "surname_born_bidx", fields = "surname, born", normalize = "trim, lowercase", bits = 16)
        )]
        pub struct Member {
            pub id: Uuid,
            pub org: String,
            #[encrypt(index(column = "email_bidx", normalize = "nfkc, trim, lowercase", bits = 256))]
            pub email: String,
            #[encrypt(pad = 16, index(column = "phone_last4", transform = "last_digits(4)", bits = 4))]
            pub phone: Option<String>,
            #[encrypt]
            pub surname: String,
            #[encrypt]
            pub born: chrono::NaiveDate,
        }

        /// The same table during an index-key rotation: the e-mail carries
        /// its index twice, under key versions 1 and 2.
        #[derive(Encrypted, Debug, Clone, PartialEq)]
        #[envelope(table = "members", tenant = "org")]
        pub struct MemberV2 {
            pub id: Uuid,
            pub org: String,
            #[encrypt(
                index(column = "email_bidx", normalize = "nfkc, trim, lowercase", bits = 256),
                index(column = "email_bidx_v2", normalize = "nfkc, trim, lowercase", bits = 256, version = 2)
            )]
            pub email: String,
            #[encrypt(pad = 16, index(column = "phone_last4", transform = "last_digits(4)", bits = 4))]
            pub phone: Option<String>,
        }

        fn member(org: &str, email: &str, phone: Option<&str>) -> Member {
            let n = email.len() as u32;
            Member {
                id: Uuid::new_v4(),
                org: org.into(),
                email: email.into(),
                phone: phone.map(str::to_owned),
                surname: ["Lovelace", "Byron", "Somerville"][(n % 3) as usize].into(),
                born: chrono::NaiveDate::from_ymd_opt(1815, 12, 1 + n % 3).expect("date"),
            }
        }

        pub async fn run(
            db: &super::support::Db,
            pool: &sqlx::Pool<Db>,
            uuid: &str,
            blob: &str,
            bidx: &str,
        ) {
            let kind = db.kind();
            let envelope: Envelope = super::support::envelope(db, CacheLimits::default());
            db.exec(&format!(
                "CREATE TABLE members (id {uuid} PRIMARY KEY, org VARCHAR(64) NOT NULL, \
                 email {blob} NOT NULL, phone {blob} NULL, email_bidx {bidx} NOT NULL, \
                 phone_last4 {bidx} NULL, email_bidx_v2 {bidx} NULL, surname {blob} NULL, born {blob} NULL, \
                 surname_born_bidx {bidx} NULL, UNIQUE (org, email_bidx))"
            ))
            .await;
            db.exec("CREATE INDEX members_phone_last4 ON members (phone_last4)")
                .await;

            let ada = member("acme", "ada@example.com", Some("+44 20 7946 1234"));
            let ada_globex = member("globex", "ada@example.com", Some("+1 555 0001"));
            ada.insert(&envelope, pool).await.expect("insert");
            ada_globex.insert(&envelope, pool).await.expect("insert");
            // Sixty more members: 4-bit phone index values collide often.
            let mut others = Vec::new();
            for i in 0..60 {
                let m = member(
                    "acme",
                    &format!("member{i}@example.com"),
                    (i % 5 != 0).then(|| format!("+1 555 {i:04}")).as_deref(),
                );
                others.push(m);
            }
            Member::insert_all(&envelope, pool, &others)
                .await
                .expect("insert all");

            // Normalised lookup, tenant isolation.
            let found = Member::find_by_email(&envelope, pool, "acme", " Ada@Example.com ")
                .await
                .expect("find");
            assert_eq!(
                found,
                vec![ada.clone()],
                "{kind:?}: normalised, within acme only"
            );
            let found = Member::find_by_email(&envelope, pool, "globex", "ADA@example.com")
                .await
                .expect("find");
            assert_eq!(found, vec![ada_globex.clone()], "{kind:?}");
            assert!(
                Member::find_by_email(&envelope, pool, "initech", "ada@example.com")
                    .await
                    .expect("find")
                    .is_empty()
            );
            // The stored index values differ across tenants.
            let idx: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT email_bidx FROM members WHERE email_bidx IS NOT NULL ORDER BY org",
            )
            .fetch_all(pool)
            .await
            .expect("read");
            assert_eq!(
                idx.iter().collect::<std::collections::HashSet<_>>().len(),
                idx.len(),
                "{kind:?}: no shared index value"
            );

            // A truncated index: candidates include false positives, the
            // lookup returns exactly the members whose last four digits match.
            let (phone_rows, candidates) = {
                let bind = sqlx_envelope::index::lookup_value::<Member>(
                    &envelope,
                    "phone_last4",
                    Some("acme"),
                    &["1234"],
                )
                .await
                .expect("value");
                assert_eq!(bind.as_bytes().len(), 1, "4 bits stored in one byte");
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "SELECT COUNT(*) FROM members WHERE phone_last4 = ",
                );
                q.push_bind(bind);
                let candidates: i64 = q.build_query_scalar().fetch_one(pool).await.expect("count");
                let rows = Member::find_by_phone(&envelope, pool, "acme", "1234")
                    .await
                    .expect("find");
                (rows, candidates)
            };
            assert_eq!(
                phone_rows,
                vec![ada.clone()],
                "{kind:?}: false positives dropped"
            );
            // 49 distinct last-four values in 16 index buckets: some bucket
            // holds several of them (pigeonhole), whatever the index key, and
            // the lookup drops their false positives.
            let mut most_candidates = candidates;
            for m in others.iter().filter(|m| m.phone.is_some()) {
                let last4: String = m
                    .phone
                    .as_deref()
                    .unwrap()
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let bind = sqlx_envelope::index::lookup_value::<Member>(
                    &envelope,
                    "phone_last4",
                    Some("acme"),
                    &[last4.as_str()],
                )
                .await
                .expect("value");
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "SELECT COUNT(*) FROM members WHERE phone_last4 = ",
                );
                q.push_bind(bind);
                let n: i64 = q.build_query_scalar().fetch_one(pool).await.expect("count");
                most_candidates = most_candidates.max(n);
                let found = Member::find_by_phone(&envelope, pool, "acme", &last4)
                    .await
                    .expect("find");
                assert_eq!(found, vec![m.clone()], "{kind:?}: {last4}, false positives dropped");
            }
            assert!(
                most_candidates > 1,
                "{kind:?}: 4 bits over 49 phones share an index value ({most_candidates} rows at most)"
            );

            // A compound index over a text and a date field: both must match.
            let mut everyone = vec![ada.clone()];
            everyone.extend(others.iter().cloned());
            let (surname, born) = (ada.surname.clone(), ada.born);
            let want: Vec<&Member> = everyone.iter().filter(|m| m.surname == surname && m.born == born).collect();
            let found = Member::find_by_surname_born_bidx(&envelope, pool, "acme", &format!(" {} ", surname.to_uppercase()), &born.to_string())
                .await
                .expect("compound");
            assert_eq!(found.len(), want.len(), "{kind:?}");
            assert!(want.iter().all(|m| found.contains(m)), "{kind:?}");
            let other_day = (born + chrono::Days::new(1)).to_string();
            let none = Member::find_by_surname_born_bidx(&envelope, pool, "acme", &surname, &other_day).await.expect("compound");
            assert!(none.iter().all(|m| m.born.to_string() == other_day), "{kind:?}");
            let err = sqlx_envelope::jobs::Job::index_column::<Member>(envelope.clone(), super::jobs_support::job_pool(db), "surname_born_bidx");
            assert!(err.is_err(), "compound indexes are filled by writes");

            // Rows written before the index existed: the index job fills it
            // (resumable, compare-and-swap), and lookups find them again.
            db.exec("UPDATE members SET phone_last4 = NULL").await;
            assert!(Member::find_by_phone(&envelope, pool, "acme", "1234").await.expect("find").is_empty());
            let jp = super::jobs_support::job_pool(db);
            let mut o = sqlx_envelope::jobs::JobOptions::default();
            o.worker_id = "index".into();
            o.batch_size = 7;
            o.chunk_rows = 20;
            let r = sqlx_envelope::jobs::Job::index_column::<Member>(envelope.clone(), jp.clone(), "phone_last4")
                .expect("index job")
                .options(o)
                .run()
                .await
                .expect("index backfill");
            let phones = 2 + others.iter().filter(|m| m.phone.is_some()).count() as u64;
            assert_eq!((r.written, r.failed, r.remaining), (phones, 0, 0), "{kind:?}");
            assert_eq!(Member::find_by_phone(&envelope, pool, "acme", "1234").await.expect("find"), vec![ada.clone()]);
            let wrong = sqlx_envelope::jobs::Job::index_column::<Member>(envelope.clone(), jp.clone(), "nope");
            assert!(wrong.is_err());

            // UNIQUE (org, email_bidx): the same e-mail, spelled differently, in
            // the same org is the database's own unique violation.
            let dup = member("acme", "ADA@example.com", None);
            let err = dup.insert(&envelope, pool).await.expect_err("unique");
            match &err {
                sqlx_envelope::Error::Query {
                    source: sqlx::Error::Database(e),
                    ..
                } => {
                    assert!(e.is_unique_violation(), "{kind:?}: {e}");
                }
                other => {
                    panic!("{kind:?}: expected the database's unique violation, got {other:?}")
                }
            }

            // An update moves the index with the value.
            let mut moved = ada.clone();
            moved.email = "lovelace@example.com".into();
            moved
                .update_fields(&envelope, pool, &[MemberColumn::Email])
                .await
                .expect("update");
            assert!(
                Member::find_by_email(&envelope, pool, "acme", "ada@example.com")
                    .await
                    .expect("find")
                    .is_empty()
            );
            assert_eq!(
                Member::find_by_email(&envelope, pool, "acme", "Lovelace@example.com")
                    .await
                    .expect("find"),
                vec![moved.clone()]
            );
            // The sealed row carries its index values; reads that do not
            // select them still work.
            let sealed = moved.seal(&envelope).await.expect("seal");
            assert!(sealed.email_bidx.is_some() && sealed.phone_last4.is_some());
            let opened: Vec<Member> =
                sqlx::query_as::<_, MemberSealed>("SELECT id, org, email, phone, surname, born FROM members")
                    .opened(&envelope)
                    .fetch_all(pool)
                    .await
                    .expect("without index columns");
            assert_eq!(opened.len(), 62);
            // An index-key rotation: version 2 beside version 1, filled by the
            // index job while lookups use version 1, then used alone.
            assert!(MemberV2::find_by_email_bidx_v2(&envelope, pool, "acme", "lovelace@example.com").await.expect("find").is_empty());
            let old_way = MemberV2::find_by_email_bidx(&envelope, pool, "acme", "lovelace@example.com").await.expect("find");
            assert_eq!(old_way.len(), 1, "{kind:?}");
            let mut o = sqlx_envelope::jobs::JobOptions::default();
            o.worker_id = "rotate".into();
            let r = sqlx_envelope::jobs::Job::index_column::<MemberV2>(envelope.clone(), jp.clone(), "email_bidx_v2")
                .expect("index job")
                .options(o)
                .run()
                .await
                .expect("fill v2");
            assert_eq!((r.written, r.failed, r.remaining), (62, 0, 0), "{kind:?}");
            let new_way = MemberV2::find_by_email_bidx_v2(&envelope, pool, "acme", " LOVELACE@example.com").await.expect("find");
            assert_eq!(new_way, old_way, "{kind:?}: version 2 finds what version 1 found");
            let differ: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE email_bidx = email_bidx_v2")
                .fetch_one(pool)
                .await
                .expect("count");
            assert_eq!(differ, 0, "{kind:?}: a new key version gives new index values");
            let late = MemberV2 { id: Uuid::new_v4(), org: "acme".into(), email: "late@example.com".into(), phone: None };
            late.insert(&envelope, pool).await.expect("insert fills both versions");
            assert_eq!(MemberV2::find_by_email_bidx_v2(&envelope, pool, "acme", "late@example.com").await.expect("find"), vec![late.clone()]);
            assert_eq!(MemberV2::find_by_email_bidx(&envelope, pool, "acme", "late@example.com").await.expect("find"), vec![late]);

            // A row of another tenant whose truncated index value collides
            // with the one looked up is dropped by its tenant before anything
            // is opened: globex's row, given acme's phone index value for
            // "1234" and a phone that does not open (its own e-mail's
            // ciphertext, bound to another column), leaves acme's lookup as it
            // was, and fails only globex's own read of that row.
            let before = Member::find_by_phone(&envelope, pool, "acme", "1234").await.expect("find");
            assert!(!before.is_empty(), "{kind:?}");
            let bind = sqlx_envelope::index::lookup_value::<Member>(&envelope, "phone_last4", Some("acme"), &["1234"])
                .await
                .expect("value");
            let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE members SET phone = email, phone_last4 = ");
            q.push_bind(bind);
            q.push(" WHERE org = 'globex'");
            assert_eq!(q.build().execute(pool).await.expect("collide").rows_affected(), 1, "{kind:?}");
            let after = Member::find_by_phone(&envelope, pool, "acme", "1234")
                .await
                .expect("another tenant's candidate is not opened");
            assert_eq!(after, before, "{kind:?}");
            assert!(
                Member::find_by_email(&envelope, pool, "globex", "ada@example.com").await.is_err(),
                "{kind:?}: the broken value fails in its own tenant"
            );

            // A tenant-bound model is looked up within one tenant.
            let err =
                sqlx_envelope::index::lookup_value::<Member>(&envelope, "email_bidx", None, &["x"])
                    .await
                    .expect_err("tenant");
            assert!(err.to_string().contains("within one tenant"), "{err}");
        }
    };
}

#[allow(dead_code)]
mod postgres {
    type Db = sqlx::Postgres;
    scenario!();
}

#[allow(dead_code)]
mod mariadb {
    type Db = sqlx::MySql;
    scenario!();
}

#[allow(dead_code)]
mod sqlite {
    type Db = sqlx::Sqlite;
    scenario!();
}

#[tokio::test(flavor = "multi_thread")]
async fn blind_index_on_postgres() {
    let iso = Isolated::new(Kind::Postgres).await;
    let support::Db::Postgres(pool) = &iso.db else {
        unreachable!()
    };
    postgres::run(&iso.db, pool, "UUID", "BYTEA", "BYTEA").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blind_index_on_mariadb() {
    let iso = Isolated::new(Kind::MySql).await;
    let support::Db::MySql(pool) = &iso.db else {
        unreachable!()
    };
    mariadb::run(&iso.db, pool, "BINARY(16)", "LONGBLOB", "VARBINARY(32)").await;
    iso.drop_all().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blind_index_on_sqlite() {
    let iso = Isolated::new(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &iso.db else {
        unreachable!()
    };
    sqlite::run(&iso.db, pool, "BLOB", "BLOB", "BLOB").await;
    iso.drop_all().await;
}
