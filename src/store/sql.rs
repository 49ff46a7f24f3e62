//! The SQL key store, one implementation per sqlx driver.
//!
//! The three drivers differ only in their SQL text (placeholders, timestamps,
//! upsert syntax, how an inserted id comes back), so the implementation is written
//! once in a macro and stamped out per driver over a table of statements.

use std::marker::PhantomData;

use async_trait::async_trait;
use sqlx::Row as _;

use super::{KeyRecord, KeyStore, MIGRATIONS_TABLE};
use crate::error::{Error, Result};
use crate::key::{KeyId, KeyState, MasterKeyId, WrappedKey};

/// A [`KeyStore`] in a SQL database reached through a sqlx pool. Use the
/// aliases [`PgKeyStore`], [`MySqlKeyStore`] and [`SqliteKeyStore`].
#[derive(Debug, Clone)]
pub struct SqlKeyStore<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    _db: PhantomData<DB>,
}

impl<DB: sqlx::Database> SqlKeyStore<DB> {
    /// A key store in the database behind `pool`. Call [`KeyStore::migrate`]
    /// before first use.
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        SqlKeyStore {
            pool,
            _db: PhantomData,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }
}

/// Key store in PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgKeyStore = SqlKeyStore<sqlx::Postgres>;
/// Key store in MySQL or MariaDB.
#[cfg(feature = "mysql")]
pub type MySqlKeyStore = SqlKeyStore<sqlx::MySql>;
/// Key store in SQLite.
#[cfg(feature = "sqlite")]
pub type SqliteKeyStore = SqlKeyStore<sqlx::Sqlite>;

/// The statements of one driver. Parameters are positional and in the same order
/// for every driver.
struct Statements {
    /// (scope, tenant) -> id
    reserve: &'static str,
    /// (key_id, master_key, wrapped_key)
    insert_wrapped: &'static str,
    /// (id)
    activate: &'static str,
    /// columns: id, scope, tenant, state, created_ms, retired_ms, master_key, blob
    select_one: &'static str,
    select_all: &'static str,
    /// (state, id)
    set_state: &'static str,
    /// (id)
    mark_retired: &'static str,
    /// (id)
    mark_destroyed: &'static str,
    /// (id)
    delete_all_wrapped: &'static str,
    /// (key_id, master_key, wrapped_key)
    upsert_wrapped: &'static str,
    /// (key_id, master_key)
    delete_wrapped: &'static str,
}

macro_rules! select {
    ($created:literal, $retired:literal, $where:literal) => {
        concat!(
            "SELECT k.id, k.scope, k.tenant, k.state, ",
            $created,
            ", ",
            $retired,
            ", w.master_key, w.wrapped_key FROM sqlx_envelope_data_keys k \
             LEFT JOIN sqlx_envelope_wrapped_keys w ON w.key_id = k.id ",
            $where,
            " ORDER BY k.id, w.created_at, w.master_key"
        )
    };
}

#[cfg(feature = "postgres")]
const PG: Statements = Statements {
    reserve: "INSERT INTO sqlx_envelope_data_keys (scope, tenant, state) VALUES ($1, $2, 'pending') RETURNING id",
    insert_wrapped: "INSERT INTO sqlx_envelope_wrapped_keys (key_id, master_key, wrapped_key) VALUES ($1, $2, $3)",
    activate: "UPDATE sqlx_envelope_data_keys SET state = 'active' WHERE id = $1 AND state = 'pending'",
    select_one: select!(
        "(extract(epoch from k.created_at) * 1000)::bigint",
        "(extract(epoch from k.retired_at) * 1000)::bigint",
        "WHERE k.id = $1"
    ),
    select_all: select!(
        "(extract(epoch from k.created_at) * 1000)::bigint",
        "(extract(epoch from k.retired_at) * 1000)::bigint",
        ""
    ),
    set_state: "UPDATE sqlx_envelope_data_keys SET state = $1 WHERE id = $2",
    mark_retired: "UPDATE sqlx_envelope_data_keys SET retired_at = now() WHERE id = $1 AND retired_at IS NULL",
    mark_destroyed: "UPDATE sqlx_envelope_data_keys SET destroyed_at = now() WHERE id = $1",
    delete_all_wrapped: "DELETE FROM sqlx_envelope_wrapped_keys WHERE key_id = $1",
    upsert_wrapped: "INSERT INTO sqlx_envelope_wrapped_keys (key_id, master_key, wrapped_key) VALUES ($1, $2, $3) \
                     ON CONFLICT (key_id, master_key) DO UPDATE SET wrapped_key = EXCLUDED.wrapped_key, created_at = now()",
    delete_wrapped: "DELETE FROM sqlx_envelope_wrapped_keys WHERE key_id = $1 AND master_key = $2",
};

#[cfg(feature = "mysql")]
const MYSQL: Statements = Statements {
    reserve: "INSERT INTO sqlx_envelope_data_keys (scope, tenant, state) VALUES (?, ?, 'pending')",
    insert_wrapped: "INSERT INTO sqlx_envelope_wrapped_keys (key_id, master_key, wrapped_key) VALUES (?, ?, ?)",
    activate: "UPDATE sqlx_envelope_data_keys SET state = 'active' WHERE id = ? AND state = 'pending'",
    select_one: select!(
        "CAST(UNIX_TIMESTAMP(k.created_at) * 1000 AS SIGNED)",
        "CAST(UNIX_TIMESTAMP(k.retired_at) * 1000 AS SIGNED)",
        "WHERE k.id = ?"
    ),
    select_all: select!(
        "CAST(UNIX_TIMESTAMP(k.created_at) * 1000 AS SIGNED)",
        "CAST(UNIX_TIMESTAMP(k.retired_at) * 1000 AS SIGNED)",
        ""
    ),
    set_state: "UPDATE sqlx_envelope_data_keys SET state = ? WHERE id = ?",
    mark_retired: "UPDATE sqlx_envelope_data_keys SET retired_at = CURRENT_TIMESTAMP(3) WHERE id = ? AND retired_at IS NULL",
    mark_destroyed: "UPDATE sqlx_envelope_data_keys SET destroyed_at = CURRENT_TIMESTAMP(3) WHERE id = ?",
    delete_all_wrapped: "DELETE FROM sqlx_envelope_wrapped_keys WHERE key_id = ?",
    upsert_wrapped: "INSERT INTO sqlx_envelope_wrapped_keys (key_id, master_key, wrapped_key) VALUES (?, ?, ?) \
                     ON DUPLICATE KEY UPDATE wrapped_key = VALUES(wrapped_key), created_at = CURRENT_TIMESTAMP(3)",
    delete_wrapped: "DELETE FROM sqlx_envelope_wrapped_keys WHERE key_id = ? AND master_key = ?",
};

#[cfg(feature = "sqlite")]
const SQLITE: Statements = Statements {
    reserve: "INSERT INTO sqlx_envelope_data_keys (scope, tenant, state) VALUES (?, ?, 'pending') RETURNING id",
    insert_wrapped: "INSERT INTO sqlx_envelope_wrapped_keys (key_id, master_key, wrapped_key) VALUES (?, ?, ?)",
    activate: "UPDATE sqlx_envelope_data_keys SET state = 'active' WHERE id = ? AND state = 'pending'",
    select_one: select!(
        "CAST((julianday(k.created_at) - 2440587.5) * 86400000 AS INTEGER)",
        "CAST((julianday(k.retired_at) - 2440587.5) * 86400000 AS INTEGER)",
        "WHERE k.id = ?"
    ),
    select_all: select!(
        "CAST((julianday(k.created_at) - 2440587.5) * 86400000 AS INTEGER)",
        "CAST((julianday(k.retired_at) - 2440587.5) * 86400000 AS INTEGER)",
        ""
    ),
    set_state: "UPDATE sqlx_envelope_data_keys SET state = ? WHERE id = ?",
    mark_retired: "UPDATE sqlx_envelope_data_keys SET retired_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = ? AND retired_at IS NULL",
    mark_destroyed: "UPDATE sqlx_envelope_data_keys SET destroyed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = ?",
    delete_all_wrapped: "DELETE FROM sqlx_envelope_wrapped_keys WHERE key_id = ?",
    upsert_wrapped: "INSERT INTO sqlx_envelope_wrapped_keys (key_id, master_key, wrapped_key) VALUES (?, ?, ?) \
                     ON CONFLICT (key_id, master_key) DO UPDATE SET wrapped_key = excluded.wrapped_key, \
                     created_at = strftime('%Y-%m-%d %H:%M:%f', 'now')",
    delete_wrapped: "DELETE FROM sqlx_envelope_wrapped_keys WHERE key_id = ? AND master_key = ?",
};

/// Fold joined rows (one per wrapped blob, or one with NULL blob) into records.
fn fold_rows<R: sqlx::Row>(rows: Vec<R>) -> Result<Vec<KeyRecord>>
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    String: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    Vec<u8>: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    let mut out: Vec<KeyRecord> = Vec::new();
    for row in rows {
        let id = KeyId::from_db(row.try_get::<i64, _>(0)?)?;
        if out.last().is_none_or(|r| r.id != id) {
            let state: String = row.try_get(3)?;
            out.push(KeyRecord {
                id,
                scope: row.try_get(1)?,
                tenant: row.try_get::<Option<String>, _>(2)?,
                state: state.parse()?,
                wrapped: Vec::new(),
                created_at_ms: row.try_get(4)?,
                retired_at_ms: row.try_get::<Option<i64>, _>(5)?,
            });
        }
        let master_key: Option<String> = row.try_get(6)?;
        let blob: Option<Vec<u8>> = row.try_get(7)?;
        if let (Some(m), Some(b)) = (master_key, blob) {
            out.last_mut()
                .expect("pushed above")
                .wrapped
                .push(WrappedKey {
                    master_key: MasterKeyId::new(m),
                    blob: b,
                });
        }
    }
    Ok(out)
}

macro_rules! sql_key_store {
    ($feature:literal, $db:ty, $sql:ident, $dir:literal, |$pool:ident, $q:ident| $reserve:expr) => {
        #[cfg(feature = $feature)]
        impl SqlKeyStore<$db> {
            /// The embedded migrations of the key store for this driver, tracked in
            /// [`MIGRATIONS_TABLE`].
            pub fn migrator() -> sqlx::migrate::Migrator {
                let mut m = sqlx::migrate!($dir);
                m.dangerous_set_table_name(MIGRATIONS_TABLE);
                m
            }
        }

        #[cfg(feature = $feature)]
        #[async_trait]
        impl KeyStore for SqlKeyStore<$db> {
            async fn migrate(&self) -> Result<()> {
                Self::migrator()
                    .run(&self.pool)
                    .await
                    .map_err(|e| Error::Store(sqlx::Error::Migrate(Box::new(e))))
            }

            async fn reserve(&self, scope: &str, tenant: Option<&str>) -> Result<KeyId> {
                let $pool = &self.pool;
                let $q = sqlx::query($sql.reserve).bind(scope).bind(tenant);
                let id: i64 = $reserve;
                KeyId::from_db(id)
            }

            async fn activate(&self, id: KeyId, wrapped: &[WrappedKey]) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                for w in wrapped {
                    sqlx::query($sql.insert_wrapped)
                        .bind(id.as_i64())
                        .bind(w.master_key.as_str())
                        .bind(&w.blob)
                        .execute(&mut *tx)
                        .await?;
                }
                let done = sqlx::query($sql.activate)
                    .bind(id.as_i64())
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(Error::UnknownKey(id));
                }
                tx.commit().await?;
                Ok(())
            }

            async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
                let rows = sqlx::query($sql.select_one)
                    .bind(id.as_i64())
                    .fetch_all(&self.pool)
                    .await?;
                Ok(fold_rows(rows)?.pop())
            }

            async fn list(&self) -> Result<Vec<KeyRecord>> {
                let rows = sqlx::query($sql.select_all).fetch_all(&self.pool).await?;
                fold_rows(rows)
            }

            async fn set_state(&self, id: KeyId, state: KeyState) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query($sql.set_state)
                    .bind(state.as_str())
                    .bind(id.as_i64())
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(Error::UnknownKey(id));
                }
                if state != KeyState::Active {
                    sqlx::query($sql.mark_retired)
                        .bind(id.as_i64())
                        .execute(&mut *tx)
                        .await?;
                }
                if state == KeyState::Destroyed {
                    sqlx::query($sql.delete_all_wrapped)
                        .bind(id.as_i64())
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query($sql.mark_destroyed)
                        .bind(id.as_i64())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn put_wrapped(&self, id: KeyId, wrapped: &WrappedKey) -> Result<()> {
                sqlx::query($sql.upsert_wrapped)
                    .bind(id.as_i64())
                    .bind(wrapped.master_key.as_str())
                    .bind(&wrapped.blob)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_wrapped(&self, id: KeyId, master_key: &MasterKeyId) -> Result<()> {
                sqlx::query($sql.delete_wrapped)
                    .bind(id.as_i64())
                    .bind(master_key.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

sql_key_store!(
    "postgres",
    sqlx::Postgres,
    PG,
    "migrations/postgres",
    |pool, q| { q.fetch_one(pool).await?.try_get(0)? }
);
sql_key_store!(
    "mysql",
    sqlx::MySql,
    MYSQL,
    "migrations/mysql",
    |pool, q| {
        i64::try_from(q.execute(pool).await?.last_insert_id())
            .map_err(|_| Error::Config("key id out of range".into()))?
    }
);
sql_key_store!(
    "sqlite",
    sqlx::Sqlite,
    SQLITE,
    "migrations/sqlite",
    |pool, q| { q.fetch_one(pool).await?.try_get(0)? }
);
