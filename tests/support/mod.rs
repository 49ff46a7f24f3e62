//! Shared test support: real databases, never mocks.
//!
//! PostgreSQL and MariaDB must be reachable (scripts/test.sh starts them and
//! creates the databases); a missing server fails the test loudly. SQLite runs
//! embedded in a temporary file per test.
#![allow(dead_code)]

pub mod moto;

use std::sync::Arc;
use std::time::Duration;

use sqlx_envelope::store::{KeyStore, MySqlKeyStore, PgKeyStore, SqliteKeyStore};
use sqlx_envelope::{CacheLimits, Envelope, KeyMaterial, LocalKeyring, Sealed};

pub const PG_URL_VAR: &str = "SQLX_ENVELOPE_TEST_PG";
pub const MYSQL_URL_VAR: &str = "SQLX_ENVELOPE_TEST_MYSQL";

pub fn pg_url() -> String {
    std::env::var(PG_URL_VAR)
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sqlx_envelope_test".into())
}

pub fn mysql_url() -> String {
    std::env::var(MYSQL_URL_VAR)
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/sqlx_envelope_test".into())
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

pub const ALL: [Kind; 3] = [Kind::Postgres, Kind::MySql, Kind::Sqlite];

/// A connected database of one kind, with the key store migrated.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
    Sqlite(sqlx::SqlitePool, Arc<tempfile::TempDir>),
}

impl Db {
    /// Connect (failing loudly if the server is down) to a namespace of this
    /// test's own and migrate the key store there: a fresh schema on
    /// PostgreSQL, a fresh database on MariaDB, a fresh file on SQLite. Tests
    /// never share key stores or tables, across threads or across runs
    /// (`scripts/test.sh` drops what earlier runs left behind: `t_*`).
    pub async fn connect(kind: Kind) -> Db {
        let name = unique("t");
        let db = match kind {
            Kind::Postgres => {
                let url = pg_url();
                let admin = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at {url} is required (run scripts/test.sh): {e}")
                    });
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
                    .execute(&admin)
                    .await
                    .expect("create schema");
                admin.close().await;
                let url = isolated_url(Kind::Postgres, &name);
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await
                    .expect("PostgreSQL");
                Db::Postgres(pool)
            }
            Kind::MySql => {
                let url = mysql_url();
                let admin = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("MariaDB/MySQL at {url} is required (run scripts/test.sh): {e}")
                    });
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .expect("create database");
                admin.close().await;
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&isolated_url(Kind::MySql, &name))
                    .await
                    .expect("MariaDB");
                Db::MySql(pool)
            }
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join("test.db"))
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(30));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await
                    .expect("sqlite");
                Db::Sqlite(pool, Arc::new(dir))
            }
        };
        db.key_store()
            .migrate()
            .await
            .expect("key store migrations");
        db
    }

    /// The URL of this test's namespace (for a CLI run or a second process).
    pub fn url(&self) -> String {
        match self {
            Db::Postgres(p) => {
                let opts = p.connect_options();
                let schema = opts
                    .get_options()
                    .and_then(|o| o.rsplit("search_path=").next())
                    .expect("an isolated schema");
                isolated_url(Kind::Postgres, schema)
            }
            Db::MySql(p) => isolated_url(
                Kind::MySql,
                p.connect_options().get_database().expect("a database"),
            ),
            Db::Sqlite(_, dir) => format!("sqlite:{}", dir.path().join("test.db").display()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Db::Postgres(_) => Kind::Postgres,
            Db::MySql(_) => Kind::MySql,
            Db::Sqlite(..) => Kind::Sqlite,
        }
    }

    /// A key store over this database.
    pub fn key_store(&self) -> Arc<dyn KeyStore> {
        match self {
            Db::Postgres(p) => Arc::new(PgKeyStore::new(p.clone())),
            Db::MySql(p) => Arc::new(MySqlKeyStore::new(p.clone())),
            Db::Sqlite(p, _) => Arc::new(SqliteKeyStore::new(p.clone())),
        }
    }

    /// Run one statement with no parameters.
    pub async fn exec(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Db::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Db::MySql(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Db::Sqlite(p, _) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql:?} failed: {e}", sql = self.kind()));
    }

    /// The binary column type of this database.
    pub fn blob_type(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "BYTEA",
            Db::MySql(_) => "LONGBLOB",
            Db::Sqlite(..) => "BLOB",
        }
    }

    /// Create `table (id BIGINT PRIMARY KEY, <cols> blob NULL...)`.
    pub async fn create_blob_table(&self, table: &str, cols: &[&str]) {
        let cols: String = cols
            .iter()
            .map(|c| format!(", {c} {} NULL", self.blob_type()))
            .collect();
        self.exec(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY{cols})"
        ))
        .await;
    }

    /// Insert or replace the blob `col` of row `id`.
    pub async fn put(&self, table: &str, col: &str, id: i64, value: &[u8]) {
        match self {
            Db::Postgres(p) => {
                let sql = format!("INSERT INTO {table} (id, {col}) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET {col} = EXCLUDED.{col}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(value).execute(p).await.map(|_| ())
            }
            Db::MySql(p) => {
                let sql = format!("INSERT INTO {table} (id, {col}) VALUES (?, ?) ON DUPLICATE KEY UPDATE {col} = VALUES({col})");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(value).execute(p).await.map(|_| ())
            }
            Db::Sqlite(p, _) => {
                let sql = format!("INSERT INTO {table} (id, {col}) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET {col} = excluded.{col}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(value).execute(p).await.map(|_| ())
            }
        }
        .expect("put");
    }

    /// Read blob `col` of row `id` as raw bytes (None for NULL).
    pub async fn get_raw(&self, table: &str, col: &str, id: i64) -> Option<Vec<u8>> {
        match self {
            Db::Postgres(p) => {
                let sql = format!("SELECT {col} FROM {table} WHERE id = $1");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(p)
                    .await
            }
            Db::MySql(p) => {
                let sql = format!("SELECT {col} FROM {table} WHERE id = ?");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(p)
                    .await
            }
            Db::Sqlite(p, _) => {
                let sql = format!("SELECT {col} FROM {table} WHERE id = ?");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(p)
                    .await
            }
        }
        .expect("get_raw")
    }

    /// Read blob `col` of row `id` through the driver's `Decode` for [`Sealed`].
    pub async fn get_sealed(
        &self,
        table: &str,
        col: &str,
        id: i64,
    ) -> Result<Option<Sealed>, sqlx::Error> {
        match self {
            Db::Postgres(p) => {
                let sql = format!("SELECT {col} FROM {table} WHERE id = $1");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(p)
                    .await
            }
            Db::MySql(p) => {
                let sql = format!("SELECT {col} FROM {table} WHERE id = ?");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(p)
                    .await
            }
            Db::Sqlite(p, _) => {
                let sql = format!("SELECT {col} FROM {table} WHERE id = ?");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(p)
                    .await
            }
        }
    }

    /// Bind a [`Sealed`] through the driver's `Encode` and store it.
    pub async fn put_sealed(&self, table: &str, col: &str, id: i64, value: &Sealed) {
        match self {
            Db::Postgres(p) => {
                let sql = format!("INSERT INTO {table} (id, {col}) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET {col} = EXCLUDED.{col}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(value).execute(p).await.map(|_| ())
            }
            Db::MySql(p) => {
                let sql = format!("INSERT INTO {table} (id, {col}) VALUES (?, ?) ON DUPLICATE KEY UPDATE {col} = VALUES({col})");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(value).execute(p).await.map(|_| ())
            }
            Db::Sqlite(p, _) => {
                let sql = format!("INSERT INTO {table} (id, {col}) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET {col} = excluded.{col}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(value).execute(p).await.map(|_| ())
            }
        }
        .expect("put_sealed");
    }
}

/// A table name unique to this test run.
/// The URL of the isolated namespace `name` (PostgreSQL: the base database
/// with `search_path` set to the schema; MariaDB: the database).
pub fn isolated_url(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Postgres => {
            let base = pg_url();
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options=-c%20search_path%3D{name}")
        }
        Kind::MySql => {
            let base = mysql_url();
            let (head, query) = match base.split_once('?') {
                Some((h, q)) => (h.to_owned(), format!("?{q}")),
                None => (base.clone(), String::new()),
            };
            let root = head.rsplit_once('/').map(|(r, _)| r).unwrap_or(&head);
            format!("{root}/{name}{query}")
        }
        Kind::Sqlite => unreachable!("SQLite tests use a file per test"),
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A local keyring with one fresh random master key.
pub fn local_keyring() -> LocalKeyring {
    LocalKeyring::new("test/1", KeyMaterial::generate()).expect("keyring")
}

/// An envelope over `db` with a fresh local keyring and the given limits.
pub fn envelope(db: &Db, limits: CacheLimits) -> Envelope {
    Envelope::builder()
        .keyring(local_keyring())
        .store_arc(db.key_store())
        .limits(limits)
        .build()
        .expect("envelope")
}

/// A keyring wrapper that counts calls, to assert keyring traffic directly
/// (independently of the envelope's own counters).
#[derive(Debug)]
pub struct Counting<K> {
    pub inner: K,
    pub generate: std::sync::atomic::AtomicU64,
    pub unwrap: std::sync::atomic::AtomicU64,
}

impl<K> Counting<K> {
    pub fn new(inner: K) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            generate: Default::default(),
            unwrap: Default::default(),
        })
    }
    pub fn generates(&self) -> u64 {
        self.generate.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn unwraps(&self) -> u64 {
        self.unwrap.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<K: sqlx_envelope::Keyring> sqlx_envelope::Keyring for Counting<K> {
    fn master_keys(&self) -> Vec<sqlx_envelope::MasterKeyId> {
        self.inner.master_keys()
    }
    fn can_unwrap(&self, m: &sqlx_envelope::MasterKeyId) -> bool {
        self.inner.can_unwrap(m)
    }
    async fn generate(
        &self,
        ctx: &sqlx_envelope::KeyContext,
    ) -> sqlx_envelope::Result<sqlx_envelope::keyring::GeneratedKey> {
        self.generate
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Yield so concurrent callers really overlap with the call in flight.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.generate(ctx).await
    }
    async fn wrap(
        &self,
        ctx: &sqlx_envelope::KeyContext,
        m: &KeyMaterial,
    ) -> sqlx_envelope::Result<Vec<sqlx_envelope::WrappedKey>> {
        self.inner.wrap(ctx, m).await
    }
    async fn unwrap(
        &self,
        ctx: &sqlx_envelope::KeyContext,
        w: &[sqlx_envelope::WrappedKey],
    ) -> sqlx_envelope::Result<KeyMaterial> {
        self.unwrap
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.unwrap(ctx, w).await
    }
}
