//! The sealed row works with sqlx's compile-time checked macros: `query_as!`
//! with the type override syntax for encrypted columns, checked against
//! PostgreSQL through the offline data committed in `.sqlx/`.
//!
//! Regenerate the data after changing a query (the table must exist):
//! ```text
//! psql ... -c 'CREATE TABLE IF NOT EXISTS derive_query_as_patients (...)'   # see TABLE_DDL
//! SQLX_OFFLINE=false SQLX_OFFLINE_DIR=$PWD/.sqlx DATABASE_URL=postgres://... \
//!     cargo test --all-features --test derive_query_as --no-run
//! ```
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid"
))]

mod support;

use sqlx_envelope::{CacheLimits, Encrypted, Error, QueryAsExt, Sealed};
use support::Db;

/// The table the checked queries below are checked against; created at run time.
const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS derive_query_as_patients (
    id UUID PRIMARY KEY,
    ward TEXT NOT NULL,
    name BYTEA NOT NULL,
    phone BYTEA NULL
)";

#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "derive_query_as_patients")]
struct Patient {
    id: uuid::Uuid,
    ward: String,
    #[encrypt]
    name: String,
    #[encrypt(pad = 16)]
    phone: Option<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn query_as_macro_reads_sealed_rows() {
    let db = Db::connect(support::Kind::Postgres).await;
    db.exec(TABLE_DDL).await;
    let support::Db::Postgres(pool) = &db else {
        unreachable!("connected to PostgreSQL")
    };
    let env = support::envelope(&db, CacheLimits::default());
    // A ward unique to this run, so concurrent runs do not see each other's rows.
    let ward = support::unique("ward");

    let patients = vec![
        Patient {
            id: uuid::Uuid::now_v7(),
            ward: ward.clone(),
            name: "Ada Lovelace".into(),
            phone: Some("+44 20 7946 0958".into()),
        },
        Patient {
            id: uuid::Uuid::now_v7(),
            ward: ward.clone(),
            name: "Charles Babbage".into(),
            phone: None,
        },
    ];
    for p in Patient::seal_all(&env, &patients).await.expect("seal") {
        // Bind parameters of type `Sealed` are passed with `as _` (sqlx checks
        // bind types against the column's default Rust type, `Vec<u8>`).
        sqlx::query!(
            "INSERT INTO derive_query_as_patients (id, ward, name, phone) VALUES ($1, $2, $3, $4)",
            p.id,
            p.ward,
            &p.name as _,
            &p.phone as _,
        )
        .execute(pool)
        .await
        .expect("insert");
    }

    // The type override names `Sealed` for each encrypted column; nullability is
    // still inferred, so `phone` is an `Option<Sealed>`, as in `PatientSealed`.
    let rows = sqlx::query_as!(
        PatientSealed,
        r#"SELECT id, ward, name as "name: Sealed", phone as "phone: Sealed"
           FROM derive_query_as_patients WHERE ward = $1 ORDER BY id"#,
        ward
    )
    .fetch_all(pool)
    .await
    .expect("select");
    assert_eq!(rows.len(), 2);
    assert!(rows[1].phone.is_none(), "NULL stays NULL");
    let opened = Patient::open_all(&env, rows).await.expect("open");
    assert_eq!(opened, patients);

    // The checked query opens in the same call, like any `query_as`.
    let opened: Vec<Patient> = sqlx::query_as!(
        PatientSealed,
        r#"SELECT id, ward, name as "name: Sealed", phone as "phone: Sealed"
           FROM derive_query_as_patients WHERE ward = $1 ORDER BY id"#,
        ward
    )
    .opened(&env)
    .fetch_all(pool)
    .await
    .expect("select and open");
    assert_eq!(opened, patients);

    // The checked query binds values to the row like any other: a row read
    // under another id does not open.
    let mut row = sqlx::query_as!(
        PatientSealed,
        r#"SELECT id, ward, name as "name: Sealed", phone as "phone: Sealed"
           FROM derive_query_as_patients WHERE id = $1"#,
        patients[0].id
    )
    .fetch_one(pool)
    .await
    .expect("select one");
    row.id = patients[1].id;
    assert!(matches!(row.open(&env).await, Err(Error::Authentication)));
}
