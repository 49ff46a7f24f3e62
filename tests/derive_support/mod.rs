//! Helpers shared by the `derive_*` tests: run the same sqlx code on every
//! driver, create tables, insert sealed rows.
#![allow(dead_code, unused_macros)]

/// Run `$body` with `$pool` bound to the driver's pool and `$DB` to its
/// `sqlx::Database` type.
macro_rules! on_db {
    ($db:expr, |$pool:ident, $DB:ident| $body:block) => {
        match $db {
            support::Db::Postgres($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
            support::Db::MySql($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::MySql;
                $body
            }
            support::Db::Sqlite($pool, _) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
        }
    };
}

/// `INSERT INTO $table (<M::COLUMNS>) VALUES ...` for `$rows` (a slice of sealed
/// rows), 200 rows per statement; `|$b, $r| ...` pushes the binds of one row.
macro_rules! insert_rows {
    ($db:expr, $model:ty, $table:expr, $rows:expr, |$b:ident, $r:ident| $bind:block) => {{
        let cols = <$model as sqlx_envelope::Encrypted>::COLUMNS.join(", ");
        on_db!($db, |pool, DB| {
            for chunk in $rows.chunks(200) {
                let mut qb =
                    sqlx::QueryBuilder::<DB>::new(format!("INSERT INTO {} ({cols}) ", $table));
                qb.push_values(chunk, |mut $b, $r| $bind);
                qb.build().execute(pool).await.expect("insert");
            }
        })
    }};
}

/// Every row of `$table` as `$sealed`, ordered by `$order`.
macro_rules! select_all {
    ($db:expr, $sealed:ty, $table:expr, $order:expr) => {{
        let sql = format!("SELECT * FROM {} ORDER BY {}", $table, $order);
        on_db!($db, |pool, DB| {
            sqlx::query_as::<DB, $sealed>(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .expect("select")
        })
    }};
}

/// The text column type usable in a primary key on every database.
pub const KEY_TEXT: &str = "VARCHAR(64)";

/// A database of one kind where the model's own table names (`patients`) are
/// free: [`support::Db::connect`] already gives every test a namespace of its
/// own (schema, database or file), so this only names that guarantee.
#[cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub struct Isolated {
    pub db: support::Db,
}

#[cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use crate::support;

#[cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]
impl Isolated {
    pub async fn new(kind: support::Kind) -> Isolated {
        Isolated {
            db: support::Db::connect(kind).await,
        }
    }

    /// Close the pool (`scripts/test.sh` drops leftover namespaces).
    pub async fn drop_all(self) {
        match &self.db {
            support::Db::Postgres(p) => p.close().await,
            support::Db::MySql(p) => p.close().await,
            support::Db::Sqlite(..) => {}
        }
    }
}
