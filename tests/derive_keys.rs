//! Row binding through the derive: composite primary keys and tenants, on every
//! database.
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid"
))]

mod support;
#[macro_use]
mod derive_support;

use derive_support::KEY_TEXT;
use sqlx_envelope::{CacheLimits, Encrypted, Error, PkPart, RowId};
use support::Db;

/// A composite key: (region, number), in that order.
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "lab_results", id(region, number))]
struct LabResult {
    number: i32,
    region: String,
    #[encrypt]
    result: String,
}

/// Tenant-bound rows: the clinic is part of every value's associated data.
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(tenant = "clinic")]
struct Patient {
    id: uuid::Uuid,
    clinic: String,
    #[encrypt]
    name: String,
    #[encrypt]
    diagnosis: Option<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn composite_keys_bind_every_part_in_key_order() {
    assert_eq!(LabResult::PRIMARY_KEY, ["region", "number"]);
    let r = LabResult {
        number: 7,
        region: "eu".into(),
        result: "negative".into(),
    };
    assert_eq!(
        r.row_id(),
        Some(RowId::composite([
            PkPart::Text("eu".into()),
            PkPart::Int(7)
        ]))
    );

    for kind in support::ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let table = support::unique("derive_lab");
        db.exec(&format!(
            "CREATE TABLE {table} (number INTEGER NOT NULL, region {KEY_TEXT} NOT NULL, result {} NOT NULL, PRIMARY KEY (region, number))",
            db.blob_type()
        ))
        .await;
        let models = vec![
            LabResult {
                number: 1,
                region: "eu".into(),
                result: "negative".into(),
            },
            LabResult {
                number: 2,
                region: "eu".into(),
                result: "inconclusive".into(),
            },
            LabResult {
                number: 1,
                region: "us".into(),
                result: "positive".into(),
            },
        ];
        let sealed = LabResult::seal_all(&env, &models).await.expect("seal");
        insert_rows!(&db, LabResult, &table, &sealed, |b, r| {
            b.push_bind(r.number)
                .push_bind(&r.region)
                .push_bind(&r.result);
        });
        let rows: Vec<LabResultSealed> = select_all!(&db, LabResultSealed, table, "region, number");
        let opened = LabResult::open_all(&env, rows).await.expect("open");
        assert_eq!(opened, models, "{kind:?}");

        // A value moved to a row that differs in one key part does not open:
        // (us, 1) -> (eu, 1) differs in the region, (eu, 2) -> (eu, 1) in the number.
        for from in [2, 1] {
            let mut rows: Vec<LabResultSealed> =
                select_all!(&db, LabResultSealed, table, "region, number");
            let source = rows.remove(from);
            let mut moved = rows.remove(0);
            moved.result = source.result;
            assert!(
                matches!(moved.open(&env).await, Err(Error::Authentication)),
                "{kind:?} from {from}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_sealed_for_one_tenant_does_not_open_for_another() {
    assert_eq!(Patient::TABLE, "patients");
    assert_eq!(Patient::TENANT, Some("clinic"));
    for kind in support::ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let table = support::unique("derive_tenant");
        let uuid_type = match kind {
            support::Kind::Postgres => "UUID",
            support::Kind::MySql => "BINARY(16)",
            support::Kind::Sqlite => "BLOB",
        };
        db.exec(&format!(
            "CREATE TABLE {table} (id {uuid_type} PRIMARY KEY, clinic {KEY_TEXT} NOT NULL, name {blob} NOT NULL, diagnosis {blob} NULL)",
            blob = db.blob_type()
        ))
        .await;
        let a = Patient {
            id: uuid::Uuid::now_v7(),
            clinic: "clinic-a".into(),
            name: "Ada".into(),
            diagnosis: Some("flu".into()),
        };
        let sealed = a.seal(&env).await.expect("seal");
        insert_rows!(
            &db,
            Patient,
            &table,
            std::slice::from_ref(&sealed),
            |b, r| {
                b.push_bind(r.id)
                    .push_bind(&r.clinic)
                    .push_bind(&r.name)
                    .push_bind(&r.diagnosis);
            }
        );
        let rows: Vec<PatientSealed> = select_all!(&db, PatientSealed, table, "id");
        assert_eq!(
            Patient::open_all(&env, rows).await.expect("open"),
            vec![a.clone()],
            "{kind:?}"
        );

        // The row is reassigned to tenant B in the database: its values no
        // longer open, although table, column and primary key are unchanged.
        on_db!(&db, |pool, DB| {
            let mut qb = sqlx::QueryBuilder::<DB>::new(format!("UPDATE {table} SET clinic = "));
            qb.push_bind("clinic-b")
                .push(" WHERE id = ")
                .push_bind(a.id);
            qb.build().execute(pool).await.expect("update");
        });
        let mut rows: Vec<PatientSealed> = select_all!(&db, PatientSealed, table, "id");
        assert_eq!(rows[0].clinic, "clinic-b");
        let row = rows.pop().expect("one row");
        assert!(
            matches!(row.open(&env).await, Err(Error::Authentication)),
            "{kind:?}"
        );

        // Sealed for B, the same plaintext opens as B only.
        let b = Patient {
            clinic: "clinic-b".into(),
            ..a.clone()
        };
        let sealed_b = b.seal(&env).await.expect("seal");
        let mut as_a = b.seal(&env).await.expect("seal");
        as_a.clinic = "clinic-a".into();
        assert!(matches!(as_a.open(&env).await, Err(Error::Authentication)));
        assert_eq!(sealed_b.open(&env).await.expect("open"), b);
    }
}
