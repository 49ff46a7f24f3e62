//! The SQL key store, one implementation per sqlx driver.
//!
//! The three drivers differ only in their SQL text (placeholders, upsert syntax,
//! how an inserted id comes back, the clock expression), so the statements are
//! written once with `?` placeholders, turned into `$n` for PostgreSQL, and the
//! implementation is stamped out per driver by a macro.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row as _;

use super::{
    Activation, ColumnRecord, ColumnSource, KeyFilter, KeyRecord, KeyStore, MIGRATIONS_TABLE,
    NewKey, ParentWrap, Reserved,
};
use crate::clock::{Clock, ms};
use crate::error::{Error, KeyOperation, Result};
use crate::key::{KeyId, KeyState, MasterKeyId, WrappedKey};

/// A [`KeyStore`] in a SQL database reached through a sqlx pool. Use the
/// aliases [`PgKeyStore`], [`MySqlKeyStore`] and [`SqliteKeyStore`].
#[derive(Debug)]
pub struct SqlKeyStore<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    clock: Option<StoreClock>,
    _db: PhantomData<DB>,
}

impl<DB: sqlx::Database> Clone for SqlKeyStore<DB> {
    fn clone(&self) -> Self {
        SqlKeyStore {
            pool: self.pool.clone(),
            clock: self.clock.clone(),
            _db: PhantomData,
        }
    }
}

/// A store clock driven by a [`Clock`] (tests), anchored at the wall time the
/// store was configured.
#[derive(Debug, Clone)]
struct StoreClock {
    clock: Arc<dyn Clock>,
    base_ms: i64,
    origin: Duration,
}

impl<DB: sqlx::Database> SqlKeyStore<DB> {
    /// A key store in the database behind `pool`. Call [`KeyStore::migrate`]
    /// before first use. Its clock is the database's.
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        SqlKeyStore {
            pool,
            clock: None,
            _db: PhantomData,
        }
    }

    /// Read the store's time from `clock` instead of the database (tests: pass
    /// the same [`crate::ManualClock`] as the envelopes, so that advancing it
    /// also moves every horizon). The clock is anchored at the current wall time.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let origin = clock.now();
        self.clock = Some(StoreClock {
            clock,
            base_ms,
            origin,
        });
        self
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    fn clock_ms(&self) -> Option<i64> {
        self.clock.as_ref().map(|c| {
            let elapsed = c.clock.now().saturating_sub(c.origin);
            c.base_ms + elapsed.as_millis() as i64
        })
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    MySql,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
}

/// `?` placeholders as `$1, $2, ...` for PostgreSQL.
fn placeholders(f: Flavor, sql: &str) -> String {
    if f != Flavor::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

const KEYS: &str = "sqlx_envelope_data_keys";
const BLOBS: &str = "sqlx_envelope_wrapped_keys";
const REGISTRY: &str = "sqlx_envelope_registry";

/// The columns every key query selects, in the order [`fold_rows`] reads them.
const SELECT: &str = "SELECT k.id, k.kind, k.scope, k.tenant, k.state, k.slot, k.owner, k.parent_id, \
     k.parent_blob, k.created_ms, k.state_ms, k.left_active_ms, k.horizon_ms, w.master_key, \
     w.wrapped_key FROM sqlx_envelope_data_keys k \
     LEFT JOIN sqlx_envelope_wrapped_keys w ON w.key_id = k.id";
const ORDER: &str = " ORDER BY k.id, w.master_key";

/// The statements of one driver. Parameters are positional and in the same order
/// for every driver.
struct Statements {
    now: String,
    /// (kind, scope, tenant, slot, owner, created_ms, state_ms) -> id
    reserve: String,
    /// (now, parent_id, parent_blob, horizon_ms, id, owner)
    activate: String,
    /// (key_id, master_key, wrapped_key)
    insert_wrapped: String,
    /// (id, owner)
    abandon: String,
    /// (owner, now, id, stale_before)
    take_over: String,
    /// (id)
    select_one: String,
    /// (slot)
    select_slot: String,
    /// (id) -> state
    state_of: String,
    /// (now, now, to, id, from)
    transition: String,
    /// (now, now, id, from)
    destroy: String,
    /// (id)
    delete_all_wrapped: String,
    /// (id): matches (and locks) a key that may hold blobs
    lock_blob_owner: String,
    /// (id): the branch key a data key is being activated under, locked
    /// (shared) while it is active
    lock_sealing_parent: String,
    /// (key_id, master_key, wrapped_key)
    upsert_wrapped: String,
    /// (key_id, master_key)
    delete_wrapped: String,
    /// (scope, context_table, context_column, sql_table, sql_column, source, model, registered_ms)
    register_value: String,
    register_full: String,
    select_columns: String,
    /// (older_than)
    cleanup_pending: String,
}

impl Statements {
    fn new(f: Flavor) -> Self {
        let p = |s: &str| placeholders(f, s);
        let now = match f {
            Flavor::Postgres => "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint",
            Flavor::MySql => "SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            Flavor::Sqlite => "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        };
        let returning = if f == Flavor::MySql {
            ""
        } else {
            " RETURNING id"
        };
        let upsert_wrapped = match f {
            Flavor::Postgres => format!(
                "INSERT INTO {BLOBS} (key_id, master_key, wrapped_key) VALUES (?, ?, ?) \
                 ON CONFLICT (key_id, master_key) DO UPDATE SET wrapped_key = EXCLUDED.wrapped_key, created_at = now()"
            ),
            Flavor::MySql => format!(
                "INSERT INTO {BLOBS} (key_id, master_key, wrapped_key) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE wrapped_key = VALUES(wrapped_key), created_at = CURRENT_TIMESTAMP(3)"
            ),
            Flavor::Sqlite => format!(
                "INSERT INTO {BLOBS} (key_id, master_key, wrapped_key) VALUES (?, ?, ?) \
                 ON CONFLICT (key_id, master_key) DO UPDATE SET wrapped_key = excluded.wrapped_key, \
                 created_at = strftime('%Y-%m-%d %H:%M:%f', 'now')"
            ),
        };
        let cols = "(scope, context_table, context_column, sql_table, sql_column, source, model, registered_ms) \
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
        let (register_value, register_full) = match f {
            Flavor::Postgres => (
                format!("INSERT INTO {REGISTRY} {cols} ON CONFLICT DO NOTHING"),
                format!(
                    "INSERT INTO {REGISTRY} AS r {cols} ON CONFLICT (scope, context_table, context_column) DO UPDATE SET \
                     sql_table = COALESCE(EXCLUDED.sql_table, r.sql_table), \
                     sql_column = COALESCE(EXCLUDED.sql_column, r.sql_column), \
                     model = COALESCE(EXCLUDED.model, r.model), \
                     source = CASE WHEN r.source = 'value' THEN EXCLUDED.source ELSE r.source END"
                ),
            ),
            Flavor::MySql => (
                format!("INSERT IGNORE INTO {REGISTRY} {cols}"),
                format!(
                    "INSERT INTO {REGISTRY} {cols} ON DUPLICATE KEY UPDATE \
                     sql_table = COALESCE(VALUES(sql_table), sql_table), \
                     sql_column = COALESCE(VALUES(sql_column), sql_column), \
                     model = COALESCE(VALUES(model), model), \
                     source = IF(source = 'value', VALUES(source), source)"
                ),
            ),
            Flavor::Sqlite => (
                format!("INSERT OR IGNORE INTO {REGISTRY} {cols}"),
                format!(
                    "INSERT INTO {REGISTRY} {cols} ON CONFLICT (scope, context_table, context_column) DO UPDATE SET \
                     sql_table = COALESCE(excluded.sql_table, sql_table), \
                     sql_column = COALESCE(excluded.sql_column, sql_column), \
                     model = COALESCE(excluded.model, model), \
                     source = CASE WHEN source = 'value' THEN excluded.source ELSE source END"
                ),
            ),
        };
        Statements {
            now: now.to_owned(),
            reserve: p(&format!(
                "INSERT INTO {KEYS} (kind, scope, tenant, state, slot, owner, created_ms, state_ms) \
                 VALUES (?, ?, ?, 'pending', ?, ?, ?, ?){returning}"
            )),
            activate: p(&format!(
                "UPDATE {KEYS} SET state = 'active', state_ms = ?, parent_id = ?, parent_blob = ?, horizon_ms = ? \
                 WHERE id = ? AND state = 'pending' AND owner = ?"
            )),
            insert_wrapped: p(&format!(
                "INSERT INTO {BLOBS} (key_id, master_key, wrapped_key) VALUES (?, ?, ?)"
            )),
            abandon: p(&format!(
                "DELETE FROM {KEYS} WHERE id = ? AND state = 'pending' AND owner = ?"
            )),
            take_over: p(&format!(
                "UPDATE {KEYS} SET owner = ?, created_ms = ? WHERE id = ? AND state = 'pending' \
                 AND (created_ms IS NULL OR created_ms < ?)"
            )),
            select_one: p(&format!("{SELECT} WHERE k.id = ?{ORDER}")),
            select_slot: p(&format!("{SELECT} WHERE k.slot = ?{ORDER}")),
            state_of: p(&format!("SELECT state FROM {KEYS} WHERE id = ?")),
            // MySQL evaluates SET assignments left to right: read `state` before
            // it is assigned.
            transition: p(&format!(
                "UPDATE {KEYS} SET left_active_ms = CASE WHEN state = 'active' THEN ? ELSE left_active_ms END, \
                 state_ms = ?, state = ? WHERE id = ? AND state = ?"
            )),
            destroy: p(&format!(
                "UPDATE {KEYS} SET left_active_ms = CASE WHEN state = 'active' THEN ? ELSE left_active_ms END, \
                 state_ms = ?, state = 'destroyed', parent_blob = NULL WHERE id = ? AND state = ?"
            )),
            delete_all_wrapped: p(&format!("DELETE FROM {BLOBS} WHERE key_id = ?")),
            lock_blob_owner: p(&format!(
                "UPDATE {KEYS} SET state = state WHERE id = ? AND state IN ('active', 'decrypt_only', 'retired')"
            )),
            // A shared lock on PostgreSQL and MySQL/MariaDB: activations under
            // one branch key do not wait for each other, a change of the branch
            // key waits for them. SQLite serialises writers anyway; the UPDATE
            // takes its write lock now.
            lock_sealing_parent: p(&match f {
                Flavor::Postgres => {
                    format!("SELECT id FROM {KEYS} WHERE id = ? AND state = 'active' FOR SHARE")
                }
                Flavor::MySql => format!(
                    "SELECT id FROM {KEYS} WHERE id = ? AND state = 'active' LOCK IN SHARE MODE"
                ),
                Flavor::Sqlite => {
                    format!("UPDATE {KEYS} SET state = state WHERE id = ? AND state = 'active'")
                }
            }),
            upsert_wrapped: p(&upsert_wrapped),
            delete_wrapped: p(&format!(
                "DELETE FROM {BLOBS} WHERE key_id = ? AND master_key = ?"
            )),
            register_value: p(&register_value),
            register_full: p(&register_full),
            select_columns: format!(
                "SELECT scope, context_table, context_column, sql_table, sql_column, source, model, registered_ms \
                 FROM {REGISTRY} ORDER BY context_table, context_column, scope"
            ),
            cleanup_pending: p(&format!(
                "DELETE FROM {KEYS} WHERE state = 'pending' AND (created_ms IS NULL OR created_ms < ?) \
                 AND id NOT IN (SELECT key_id FROM {BLOBS})"
            )),
        }
    }
}

fn statements(f: Flavor) -> &'static Statements {
    static PG: OnceLock<Statements> = OnceLock::new();
    static MY: OnceLock<Statements> = OnceLock::new();
    static LITE: OnceLock<Statements> = OnceLock::new();
    let cell = match f {
        Flavor::Postgres => &PG,
        Flavor::MySql => &MY,
        Flavor::Sqlite => &LITE,
    };
    cell.get_or_init(|| Statements::new(f))
}

/// `SELECT ... WHERE <filter>` for [`KeyStore::list`], with its binds.
fn list_sql(f: Flavor, filter: &KeyFilter) -> (String, Vec<String>) {
    let mut conds: Vec<String> = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    let mut any_of = |col: &str, values: Vec<String>, binds: &mut Vec<String>| {
        if !values.is_empty() {
            conds.push(format!(
                "k.{col} IN ({})",
                vec!["?"; values.len()].join(", ")
            ));
            binds.extend(values);
        }
    };
    any_of(
        "kind",
        filter.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        &mut binds,
    );
    any_of(
        "state",
        filter
            .states
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
        &mut binds,
    );
    if let Some(s) = &filter.scope {
        conds.push("k.scope = ?".into());
        binds.push(s.clone());
    }
    match &filter.tenant {
        None => {}
        Some(None) => conds.push("k.tenant IS NULL".into()),
        Some(Some(t)) => {
            conds.push("k.tenant = ?".into());
            binds.push(t.clone());
        }
    }
    if filter.master_wrapped {
        conds.push(format!(
            "EXISTS (SELECT 1 FROM {BLOBS} x WHERE x.key_id = k.id)"
        ));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (placeholders(f, &format!("{SELECT}{where_}{ORDER}")), binds)
}

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
            let kind: String = row.try_get(1)?;
            let state: String = row.try_get(4)?;
            let parent_id: Option<i64> = row.try_get(7)?;
            let parent_blob: Option<Vec<u8>> = row.try_get(8)?;
            let parent = match (parent_id, parent_blob) {
                (Some(p), Some(blob)) => Some(ParentWrap {
                    parent: KeyId::from_db(p)?,
                    blob,
                }),
                _ => None,
            };
            out.push(KeyRecord {
                id,
                kind: kind.parse()?,
                scope: row.try_get(2)?,
                tenant: row.try_get::<Option<String>, _>(3)?,
                state: state.parse()?,
                wrapped: Vec::new(),
                parent,
                slot: row.try_get(5)?,
                owner: row.try_get(6)?,
                created_ms: row.try_get::<Option<i64>, _>(9)?.unwrap_or(0),
                state_ms: row.try_get(10)?,
                left_active_ms: row.try_get(11)?,
                horizon_ms: row.try_get(12)?,
            });
        }
        let master_key: Option<String> = row.try_get(13)?;
        let blob: Option<Vec<u8>> = row.try_get(14)?;
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

type ColumnRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    i64,
);

fn column_of(r: ColumnRow) -> ColumnRecord {
    ColumnRecord {
        scope: r.0,
        context_table: r.1,
        context_column: r.2,
        sql_table: r.3,
        sql_column: r.4,
        source: ColumnSource::parse(&r.5),
        model: r.6,
        registered_ms: r.7,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

macro_rules! sql_key_store {
    ($feature:literal, $db:ty, $flavor:expr, $dir:literal, |$pool:ident, $q:ident| $reserve:expr) => {
        #[cfg(feature = $feature)]
        impl SqlKeyStore<$db> {
            /// The embedded migrations of the key store for this driver, tracked in
            /// [`MIGRATIONS_TABLE`].
            pub fn migrator() -> sqlx::migrate::Migrator {
                let mut m = sqlx::migrate!($dir);
                m.dangerous_set_table_name(MIGRATIONS_TABLE);
                m
            }

            fn sql() -> &'static Statements {
                statements($flavor)
            }

            async fn now_in<'c, E>(&self, e: E) -> Result<i64>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                if let Some(ms) = self.clock_ms() {
                    return Ok(ms);
                }
                Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(Self::sql().now.as_str()))
                    .fetch_one(e)
                    .await?)
            }

            async fn conflict(&self, id: KeyId, expected: KeyState, wanted: KeyState) -> Error {
                match self.state_of(id).await {
                    Ok(current) => Error::StateConflict {
                        id,
                        expected,
                        current,
                        wanted,
                    },
                    Err(e) => e,
                }
            }

            /// Key `id`'s state as the store holds it now
            /// ([`Error::UnknownKey`] if there is no such key).
            async fn state_of(&self, id: KeyId) -> Result<KeyState> {
                let current: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                    Self::sql().state_of.as_str(),
                ))
                .bind(id.as_i64())
                .fetch_optional(&self.pool)
                .await?;
                current.ok_or(Error::UnknownKey(id))?.parse()
            }
        }

        #[cfg(feature = $feature)]
        #[async_trait]
        impl KeyStore for SqlKeyStore<$db> {
            async fn migrate(&self) -> Result<()> {
                let mut conn = self.pool.acquire().await?;
                // sqlx's own migration lock is `GET_LOCK(name, -1)`, which
                // MariaDB answers with NULL without taking any lock (a negative
                // timeout is not "forever" there), so concurrent migrators
                // would see each other's half-applied migration as dirty. Take
                // a lock with a finite timeout on the same connection first.
                if $flavor == Flavor::MySql {
                    let got: Option<i64> = sqlx::query_scalar(
                        "SELECT GET_LOCK('sqlx_envelope_migrations', 600)",
                    )
                    .fetch_one(&mut *conn)
                    .await?;
                    if got != Some(1) {
                        return Err(Error::Config(
                            "could not take the migration lock within 10 minutes: another process is migrating the key store".into(),
                        ));
                    }
                }
                // `run_direct` is what `run` calls; taking the connection
                // directly keeps this future `Send` under async_trait.
                let result = Self::migrator()
                    .run_direct(None, &mut *conn, false)
                    .await
                    .map_err(|e| Error::Store(sqlx::Error::Migrate(Box::new(e))));
                if $flavor == Flavor::MySql {
                    sqlx::query("SELECT RELEASE_LOCK('sqlx_envelope_migrations')")
                        .execute(&mut *conn)
                        .await?;
                }
                result
            }

            async fn now_ms(&self) -> Result<i64> {
                self.now_in(&self.pool).await
            }

            async fn reserve(&self, new: &NewKey<'_>) -> Result<Reserved> {
                let now = self.now_ms().await?;
                let $pool = &self.pool;
                let $q = sqlx::query(sqlx::AssertSqlSafe(Self::sql().reserve.as_str()))
                    .bind(new.kind.as_str())
                    .bind(new.scope)
                    .bind(new.tenant)
                    .bind(new.slot)
                    .bind(new.owner)
                    .bind(now)
                    .bind(now);
                let inserted: std::result::Result<i64, sqlx::Error> = async { $reserve }.await;
                match inserted {
                    Ok(id) => Ok(Reserved::Mine(KeyId::from_db(id)?)),
                    Err(e) if new.slot.is_some() && is_unique_violation(&e) => {
                        let slot = new.slot.expect("checked");
                        match self.find_slot(slot).await? {
                            Some(holder) => Ok(Reserved::Taken(Box::new(holder))),
                            // The holder was abandoned in between: try again.
                            None => self.reserve(new).await,
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn activate(
                &self,
                id: KeyId,
                owner: &str,
                activation: &Activation<'_>,
            ) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                let now = self.now_in(&mut *tx).await?;
                let horizon = now.saturating_add(ms(activation.seal_window));
                let (parent_id, parent_blob) = match activation.parent {
                    Some((p, b)) => (Some(p.as_i64()), Some(b)),
                    None => (None, None),
                };
                // A data key becomes active only under a branch key that still
                // is: one an operator suspended or a process rotated out since
                // the minting process chose it is refused, in the same
                // transaction (its row locked until the commit, so a change of
                // the branch key waits for this activation or wins before it).
                if let Some((parent, _)) = activation.parent {
                    let sql = Self::sql().lock_sealing_parent.as_str();
                    let live = if $flavor == Flavor::Sqlite {
                        sqlx::query(sqlx::AssertSqlSafe(sql))
                            .bind(parent.as_i64())
                            .execute(&mut *tx)
                            .await?
                            .rows_affected()
                            == 1
                    } else {
                        sqlx::query(sqlx::AssertSqlSafe(sql))
                            .bind(parent.as_i64())
                            .fetch_optional(&mut *tx)
                            .await?
                            .is_some()
                    };
                    if !live {
                        tx.rollback().await?;
                        return Err(Error::KeyNotUsable {
                            id: parent,
                            state: self.state_of(parent).await?,
                            operation: KeyOperation::Encrypt,
                        });
                    }
                }
                let done = sqlx::query(sqlx::AssertSqlSafe(Self::sql().activate.as_str()))
                    .bind(now)
                    .bind(parent_id)
                    .bind(parent_blob)
                    .bind(horizon)
                    .bind(id.as_i64())
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Err(self.conflict(id, KeyState::Pending, KeyState::Active).await);
                }
                for w in activation.wrapped {
                    sqlx::query(sqlx::AssertSqlSafe(Self::sql().insert_wrapped.as_str()))
                        .bind(id.as_i64())
                        .bind(w.master_key.as_str())
                        .bind(&w.blob)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn abandon(&self, id: KeyId, owner: &str) -> Result<bool> {
                let done = sqlx::query(sqlx::AssertSqlSafe(Self::sql().abandon.as_str()))
                    .bind(id.as_i64())
                    .bind(owner)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn take_over(&self, id: KeyId, owner: &str, stale_before_ms: i64) -> Result<bool> {
                let now = self.now_ms().await?;
                let done = sqlx::query(sqlx::AssertSqlSafe(Self::sql().take_over.as_str()))
                    .bind(owner)
                    .bind(now)
                    .bind(id.as_i64())
                    .bind(stale_before_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(Self::sql().select_one.as_str()))
                    .bind(id.as_i64())
                    .fetch_all(&self.pool)
                    .await?;
                Ok(fold_rows(rows)?.pop())
            }

            async fn get_many(&self, ids: &[KeyId]) -> Result<Vec<KeyRecord>> {
                let mut out = Vec::with_capacity(ids.len());
                for part in ids.chunks(500) {
                    let phs = vec!["?"; part.len()].join(", ");
                    let sql = placeholders($flavor, &format!("{SELECT} WHERE k.id IN ({phs}){ORDER}"));
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in part {
                        q = q.bind(id.as_i64());
                    }
                    out.extend(fold_rows(q.fetch_all(&self.pool).await?)?);
                }
                Ok(out)
            }

            async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
                let (sql, binds) = list_sql($flavor, filter);
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for b in binds {
                    q = q.bind(b);
                }
                fold_rows(q.fetch_all(&self.pool).await?)
            }

            async fn find_slot(&self, slot: &str) -> Result<Option<KeyRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(Self::sql().select_slot.as_str()))
                    .bind(slot)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(fold_rows(rows)?.pop())
            }

            async fn transition(&self, id: KeyId, from: KeyState, to: KeyState) -> Result<()> {
                if !from.may_become(to) {
                    return Err(Error::Config(format!(
                        "a key cannot go from {from} to {to} (allowed: active -> decrypt_only, \
                         active|decrypt_only -> retired, retired -> decrypt_only, anything -> destroyed)"
                    )));
                }
                let mut tx = self.pool.begin().await?;
                let now = self.now_in(&mut *tx).await?;
                let done = if to == KeyState::Destroyed {
                    sqlx::query(sqlx::AssertSqlSafe(Self::sql().destroy.as_str()))
                        .bind(now)
                        .bind(now)
                        .bind(id.as_i64())
                        .bind(from.as_str())
                        .execute(&mut *tx)
                        .await?
                } else {
                    sqlx::query(sqlx::AssertSqlSafe(Self::sql().transition.as_str()))
                        .bind(now)
                        .bind(now)
                        .bind(to.as_str())
                        .bind(id.as_i64())
                        .bind(from.as_str())
                        .execute(&mut *tx)
                        .await?
                };
                if done.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Err(self.conflict(id, from, to).await);
                }
                if to == KeyState::Destroyed {
                    sqlx::query(sqlx::AssertSqlSafe(Self::sql().delete_all_wrapped.as_str()))
                        .bind(id.as_i64())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn put_wrapped(&self, id: KeyId, wrapped: &WrappedKey) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                // Lock the key row first (a destroy in flight either committed,
                // and this finds the key destroyed, or waits for this
                // transaction and deletes the blob with the others).
                let live = sqlx::query(sqlx::AssertSqlSafe(Self::sql().lock_blob_owner.as_str()))
                    .bind(id.as_i64())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if live != 1 {
                    tx.rollback().await?;
                    let state = match self.get(id).await? {
                        Some(r) => r.state,
                        None => return Err(Error::UnknownKey(id)),
                    };
                    return Err(Error::KeyNotUsable {
                        id,
                        state,
                        operation: KeyOperation::Rewrap,
                    });
                }
                sqlx::query(sqlx::AssertSqlSafe(Self::sql().upsert_wrapped.as_str()))
                    .bind(id.as_i64())
                    .bind(wrapped.master_key.as_str())
                    .bind(&wrapped.blob)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delete_wrapped(&self, id: KeyId, master_key: &MasterKeyId) -> Result<()> {
                sqlx::query(sqlx::AssertSqlSafe(Self::sql().delete_wrapped.as_str()))
                    .bind(id.as_i64())
                    .bind(master_key.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn register_columns(&self, columns: &[ColumnRecord]) -> Result<()> {
                if columns.is_empty() {
                    return Ok(());
                }
                let now = self.now_ms().await?;
                let mut tx = self.pool.begin().await?;
                for c in columns {
                    let sql = if c.source == ColumnSource::Value {
                        &Self::sql().register_value
                    } else {
                        &Self::sql().register_full
                    };
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(&c.scope)
                        .bind(&c.context_table)
                        .bind(&c.context_column)
                        .bind(&c.sql_table)
                        .bind(&c.sql_column)
                        .bind(c.source.as_str())
                        .bind(&c.model)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn columns(&self) -> Result<Vec<ColumnRecord>> {
                let rows: Vec<ColumnRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(Self::sql().select_columns.as_str()))
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows.into_iter().map(column_of).collect())
            }

            async fn cleanup_pending(&self, older_than: Duration) -> Result<u64> {
                let now = self.now_ms().await?;
                let done = sqlx::query(sqlx::AssertSqlSafe(Self::sql().cleanup_pending.as_str()))
                    .bind(now.saturating_sub(ms(older_than)))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }
        }
    };
}

sql_key_store!(
    "postgres",
    sqlx::Postgres,
    Flavor::Postgres,
    "migrations/postgres",
    |pool, q| q.fetch_one(pool).await?.try_get(0)
);
sql_key_store!(
    "mysql",
    sqlx::MySql,
    Flavor::MySql,
    "migrations/mysql",
    |pool, q| {
        let id = q.execute(pool).await?.last_insert_id();
        i64::try_from(id).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }
);
sql_key_store!(
    "sqlite",
    sqlx::Sqlite,
    Flavor::Sqlite,
    "migrations/sqlite",
    |pool, q| q.fetch_one(pool).await?.try_get(0)
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyKind;

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            placeholders(Flavor::Postgres, "a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(placeholders(Flavor::MySql, "a = ?"), "a = ?");
    }

    #[test]
    fn list_filters_bind_in_order() {
        let f = KeyFilter::all()
            .kind(KeyKind::Branch)
            .state(KeyState::Active)
            .tenant(Some("t"))
            .master_wrapped();
        let (sql, binds) = list_sql(Flavor::Postgres, &f);
        assert!(sql.contains("k.kind IN ($1)"), "{sql}");
        assert!(sql.contains("k.state IN ($2)"), "{sql}");
        assert!(sql.contains("k.tenant = $3"), "{sql}");
        assert!(sql.contains("EXISTS"), "{sql}");
        assert_eq!(binds, ["branch", "active", "t"]);
    }
}
