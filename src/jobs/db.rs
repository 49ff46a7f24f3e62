//! The database side of the jobs: a pool of any enabled driver, validated
//! identifiers, and the few SQL spellings that differ between drivers.

use std::fmt;
use std::sync::Arc;

use super::{JobError, JobResult};
use crate::store::KeyStore;

/// A sqlx pool of one of the enabled drivers. Jobs generate their SQL per
/// driver, so they take this instead of a generic `Pool<DB>`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JobPool {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// MySQL or MariaDB.
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// Run `$body` with `$p` bound to the concrete pool of each driver. The body is
/// compiled once per driver, so it may use driver-specific types freely.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            #[cfg(feature = "postgres")]
            $crate::jobs::JobPool::Postgres($p) => $body,
            #[cfg(feature = "mysql")]
            $crate::jobs::JobPool::MySql($p) => $body,
            #[cfg(feature = "sqlite")]
            $crate::jobs::JobPool::Sqlite($p) => $body,
        }
    };
}
pub(crate) use on_pool;

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for JobPool {
    fn from(p: sqlx::PgPool) -> Self {
        JobPool::Postgres(p)
    }
}
#[cfg(feature = "mysql")]
impl From<sqlx::MySqlPool> for JobPool {
    fn from(p: sqlx::MySqlPool) -> Self {
        JobPool::MySql(p)
    }
}
#[cfg(feature = "sqlite")]
impl From<sqlx::SqlitePool> for JobPool {
    fn from(p: sqlx::SqlitePool) -> Self {
        JobPool::Sqlite(p)
    }
}

impl JobPool {
    /// Connect to `url` (`postgres://`, `mysql://` or `mariadb://`, `sqlite:`)
    /// with at most `max_connections` connections. SQLite connections wait up to
    /// 30 s for a lock instead of failing at once.
    pub async fn connect(url: &str, max_connections: u32) -> JobResult<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(JobPool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max_connections)
                    .connect(url)
                    .await?,
            )),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                Ok(JobPool::MySql(
                    sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(max_connections)
                        .connect(&url)
                        .await?,
                ))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use std::str::FromStr as _;
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .busy_timeout(std::time::Duration::from_secs(30));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await;
                match pool {
                    Ok(pool) => Ok(JobPool::Sqlite(pool)),
                    // SQLITE_CANTOPEN: most often a file that does not exist
                    // (sqlx does not create one unless told to).
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("14") => {
                        Err(JobError::Invalid(format!(
                            "cannot open the SQLite database of {url} ({}): if the file does not exist yet, end the URL with ?mode=rwc to create it",
                            e.message()
                        )))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            _ => Err(JobError::Invalid(
                "database URL must start with postgres://, mysql://, mariadb:// or sqlite: (of the enabled drivers)".into(),
            )),
        }
    }

    /// The SQL dialect of this pool.
    pub fn dialect(&self) -> Dialect {
        on_pool!(self, _p => dialect_of(_p))
    }

    /// A key store over the same database.
    pub fn key_store(&self) -> Arc<dyn KeyStore> {
        match self {
            #[cfg(feature = "postgres")]
            JobPool::Postgres(p) => Arc::new(crate::store::PgKeyStore::new(p.clone())),
            #[cfg(feature = "mysql")]
            JobPool::MySql(p) => Arc::new(crate::store::MySqlKeyStore::new(p.clone())),
            #[cfg(feature = "sqlite")]
            JobPool::Sqlite(p) => Arc::new(crate::store::SqliteKeyStore::new(p.clone())),
        }
    }
}

trait DialectOf {
    fn dialect(&self) -> Dialect;
}
#[cfg(feature = "postgres")]
impl DialectOf for sqlx::PgPool {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}
#[cfg(feature = "mysql")]
impl DialectOf for sqlx::MySqlPool {
    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }
}
#[cfg(feature = "sqlite")]
impl DialectOf for sqlx::SqlitePool {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}
fn dialect_of<P: DialectOf>(p: &P) -> Dialect {
    p.dialect()
}

/// The SQL spelling of one driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `$n` placeholders, `substring(x from a for b)`.
    Postgres,
    /// MySQL / MariaDB: `?` placeholders, `SUBSTRING(x, a, b)`.
    MySql,
    /// SQLite: `?` placeholders, `substr(x, a, b)`.
    Sqlite,
}

impl Dialect {
    /// The `n`-th placeholder (1-based).
    pub fn ph(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// `len` bytes of `expr` starting at 1-based byte `from`.
    pub fn substr(self, expr: &str, from: usize, len: usize) -> String {
        match self {
            Dialect::Postgres => format!("substring({expr} from {from} for {len})"),
            Dialect::MySql => format!("SUBSTRING({expr}, {from}, {len})"),
            Dialect::Sqlite => format!("substr({expr}, {from}, {len})"),
        }
    }

    /// The expression of the 8-byte big-endian key id of the value in `col`
    /// (bytes 2..=9, see [`crate::format::KEY_ID_OFFSET`]).
    pub fn key_id_expr(self, col: &str) -> String {
        self.substr(
            col,
            crate::format::KEY_ID_OFFSET + 1,
            crate::format::KEY_ID_LEN,
        )
    }

    /// `ident`, quoted for this dialect. PostgreSQL identifiers are quoted only
    /// when all lowercase, so that unquoted mixed-case names keep folding.
    pub fn quote(self, ident: &Ident) -> String {
        match self {
            Dialect::Postgres if ident.0.bytes().all(|b| !b.is_ascii_uppercase()) => {
                format!("\"{}\"", ident.0)
            }
            Dialect::Postgres => ident.0.clone(),
            Dialect::MySql => format!("`{}`", ident.0),
            // Not `"..."`: SQLite reads a double-quoted name that matches no
            // column as a string literal, so a misspelled column would select
            // a constant instead of failing.
            Dialect::Sqlite => format!("`{}`", ident.0),
        }
    }

    /// `INSERT` that does nothing when the row exists (the statement prefix and
    /// suffix around `INTO t (...) VALUES (...)`).
    pub(crate) fn insert_ignore(self) -> (&'static str, &'static str) {
        match self {
            Dialect::Postgres => ("INSERT", " ON CONFLICT DO NOTHING"),
            Dialect::MySql => ("INSERT IGNORE", ""),
            Dialect::Sqlite => ("INSERT OR IGNORE", ""),
        }
    }
}

/// A SQL identifier (table or column name) checked against
/// `[A-Za-z_][A-Za-z0-9_]*` (at most 63 characters), so it can be interpolated
/// into generated SQL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validate `name`.
    pub fn new(name: &str) -> JobResult<Self> {
        let mut bytes = name.bytes();
        let ok = name.len() <= 63
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(Ident(name.to_owned()))
        } else {
            Err(JobError::Invalid(format!(
                "{name:?} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters)"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Whether a database error is transient (deadlock, serialization failure, lock
/// timeout, SQLite busy): the batch that hit it is rolled back and retried.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let msg = db.message();
            matches!(
                code.as_deref(),
                // PostgreSQL: serialization failure, deadlock, lock not available;
                // MySQL/MariaDB: deadlock (40001).
                Some("40001") | Some("40P01") | Some("55P03")
                // SQLite: BUSY, LOCKED and their extended codes.
                | Some("5") | Some("6") | Some("261") | Some("517") | Some("262")
            ) || msg.contains("Lock wait timeout")
                || msg.contains("Deadlock found")
                || msg.contains("database is locked")
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        _ => false,
    }
}

/// Milliseconds since the Unix epoch, the clock of job leases.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The 8 bytes a value stores for `id`.
pub(crate) fn key_id_bytes(id: crate::KeyId) -> Vec<u8> {
    id.get().to_be_bytes().to_vec()
}
