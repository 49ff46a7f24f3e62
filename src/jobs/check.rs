//! What a job checks before it registers, plans or writes anything: its
//! options, that every column it reads or writes exists, that the key and
//! tenant columns are of the kinds the job was told (a UUID column read as an
//! integer would bind every value to the wrong row) and the encrypted columns
//! binary (PostgreSQL, MySQL/MariaDB), that a typed codec fits the plaintext
//! column, and that the keys it re-encrypts away from are retired but still
//! decrypt (and, for a key of a tenant, that the target names its tenant
//! column).

use super::db::{Dialect, Ident};
use super::run::{Job, JobKind, PlainKind};
use super::{JobError, JobResult, on_pool};
use crate::key::KeyState;
use crate::model::{PkKind, TenantKind};

impl Job {
    pub(super) fn tenant_binding(&self) -> JobResult<&super::TenantBinding> {
        self.target.tenant.as_ref().ok_or_else(|| {
            JobError::Invalid(format!(
                "{} has no tenant column: give the target one (Target::tenant, --tenant-column) to limit a job to one tenant",
                self.target
            ))
        })
    }

    pub(super) async fn precheck(&self) -> JobResult<()> {
        if self.opts.batch_size == 0 || self.opts.concurrency == 0 {
            return Err(JobError::Invalid(
                "batch size and concurrency must be at least 1".into(),
            ));
        }
        if self.opts.tenant.is_some() {
            self.tenant_binding()?;
        }
        self.check_target().await?;
        // The declared types, read once for both checks.
        let types = self.column_types().await?;
        self.check_kinds(&types).await?;
        if let JobKind::Encrypt { plain, kind } | JobKind::Decrypt { plain, kind } = &self.kind {
            self.check_codec(plain, *kind, &types)?;
        }
        if let JobKind::Reencrypt { from } = &self.kind {
            if from.is_empty() {
                return Err(JobError::Invalid("no key ids to re-encrypt from".into()));
            }
            for id in from {
                let rec = self
                    .envelope
                    .store()
                    .get(*id)
                    .await?
                    .ok_or(crate::Error::UnknownKey(*id))?;
                if rec.state == KeyState::Active {
                    return Err(JobError::Invalid(format!(
                        "data key {id} is active: retire it (`keys retire {}`: decrypt_only) before re-encrypting away from it",
                        id.get()
                    )));
                }
                if !rec.state.can_decrypt() {
                    // The key store's refusal, with what to do about it.
                    return Err(crate::Error::KeyNotUsable {
                        id: *id,
                        state: rec.state,
                        operation: crate::KeyOperation::Decrypt,
                    }
                    .into());
                }
                // A data key of a tenant (of this table's scope) holds values
                // bound to that tenant: a target without a tenant column
                // would fail every one of them as if tampered with.
                if self.target.tenant.is_none()
                    && rec.scope == self.target.context_table
                    && let Some(tenant) = &rec.tenant
                {
                    return Err(JobError::Invalid(format!(
                        "data key {id} holds values of {} bound to tenant {tenant:?}, and the target names no \
                         tenant column: give it (--tenant-column COLUMN[:KIND], Target::tenant), or use the \
                         model (--model, Target::for_model)",
                        self.target
                    )));
                }
            }
        }
        Ok(())
    }

    /// Every column the job reads or writes exists: checked before the job
    /// registers or writes anything, so a typo never leaves a registered
    /// column or a planned job behind.
    async fn check_target(&self) -> JobResult<()> {
        let d = self.pool.dialect();
        let t = &self.target;
        let mut cols: Vec<String> = t.key.iter().map(|k| d.quote(&k.name)).collect();
        if let Some(tb) = &t.tenant {
            cols.push(d.quote(&tb.column));
        }
        cols.extend(self.columns.iter().map(|c| d.quote(&c.column)));
        if let JobKind::Encrypt { plain, .. } | JobKind::Decrypt { plain, .. } = &self.kind {
            cols.push(d.quote(plain));
        }
        if let JobKind::Index { index } = &self.kind {
            cols.push(d.quote(index));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE 1 = 0",
            cols.join(", "),
            d.quote(&t.table)
        );
        let checked: Result<(), sqlx::Error> = on_pool!(&self.pool, p => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_optional(p).await.map(|_| ())
        });
        match checked {
            Ok(()) => Ok(()),
            Err(sqlx::Error::Database(e)) => Err(JobError::Invalid(format!(
                "{t} cannot be read as the job needs (table {}, columns {}): {}; check the table, --pk, --tenant-column and column names",
                t.table,
                cols.join(", "),
                e.message()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The key and tenant columns hold the kinds the target declares, and
    /// every encrypted column is binary: by the table's declared column types
    /// on PostgreSQL and MySQL/MariaDB (so an empty table is checked too), by
    /// the values stored on SQLite, whose declared types are only hints (a
    /// `TEXT` column holds the 16-byte blobs sqlx binds for a `Uuid`). A type
    /// this does not know (a PostgreSQL domain, say) is let through.
    async fn check_kinds(&self, types: &[(String, String)]) -> JobResult<()> {
        let d = self.pool.dialect();
        let t = &self.target;
        // What column `c` is or holds (said in a refusal) when one of its
        // classes does not `fit`.
        let misfit = async |c: &Ident, fits: &(dyn Fn(SqlClass) -> bool + Sync)| {
            Ok::<_, JobError>(
                self.column_classes(types, c)
                    .await?
                    .filter(|(_, classes)| classes.iter().any(|k| !fits(*k)))
                    .map(|(said, _)| said),
            )
        };
        let refuse = |column: &Ident, said: String, what: String, fix: &str| {
            JobError::Invalid(format!(
                "{}.{column} {said}, but {what}: {fix} (nothing was registered or written)",
                t.table
            ))
        };
        for k in &t.key {
            if let Some(said) = misfit(&k.name, &|c| c.holds_key(d, k.kind)).await? {
                return Err(refuse(
                    &k.name,
                    said,
                    format!("the job reads it as {} (a key column, --pk)", k.kind.name()),
                    "declare its real kind (--pk COLUMN:int|uuid|text|bytes, Target::key)",
                ));
            }
        }
        if let Some(tb) = &t.tenant
            && let Some(said) = misfit(&tb.column, &|c| c.holds_tenant(d, tb.kind)).await?
        {
            return Err(refuse(
                &tb.column,
                said,
                format!(
                    "the job reads it as {} (the tenant column, --tenant-column)",
                    tb.kind.name()
                ),
                "declare its real kind (--tenant-column COLUMN:text|int|uuid, Target::tenant)",
            ));
        }
        // SQLite stores a bound blob as a blob whatever the column's declared
        // type, so only PostgreSQL and MySQL/MariaDB columns must be binary.
        for c in self.columns.iter().filter(|_| d != Dialect::Sqlite) {
            if let Some(said) = misfit(&c.column, &|k| k == SqlClass::Binary).await? {
                return Err(refuse(
                    &c.column,
                    said,
                    "sealed values are bytes".into(),
                    "encrypt into a binary column (BYTEA on PostgreSQL, a BLOB or VARBINARY on \
                     MySQL/MariaDB)",
                ));
            }
        }
        Ok(())
    }

    /// What column `c` is (its declared type among `types`) or holds (on
    /// SQLite, the storage classes of its values), said for a refusal, with
    /// the classes that stand for it; `None` for a type this does not know.
    async fn column_classes(
        &self,
        types: &[(String, String)],
        c: &Ident,
    ) -> JobResult<Option<(String, Vec<SqlClass>)>> {
        let d = self.pool.dialect();
        if d == Dialect::Sqlite {
            let stored: Vec<(String, SqlClass)> = self
                .sqlite_stored(c)
                .await?
                .into_iter()
                .filter_map(|s| SqlClass::stored(&s).map(|k| (s, k)))
                .collect();
            let names: Vec<&str> = stored.iter().map(|(s, _)| s.as_str()).collect();
            let said = format!("holds {} values", names.join(" and "));
            return Ok(Some((said, stored.into_iter().map(|(_, k)| k).collect())));
        }
        Ok(declared_type(d, types, c)
            .and_then(|ty| Some((format!("is {ty}"), vec![SqlClass::of(d, ty)?]))))
    }

    /// Every column of the target's table with its declared type, as the
    /// database's catalogue spells it (PostgreSQL, MySQL/MariaDB; none on
    /// SQLite).
    async fn column_types(&self) -> JobResult<Vec<(String, String)>> {
        let d = self.pool.dialect();
        let (sql, table) = match d {
            Dialect::Postgres => (
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                d.quote(&self.target.table),
            ),
            // Declared types are hints on SQLite: `sqlite_stored` instead.
            Dialect::Sqlite => return Ok(Vec::new()),
            Dialect::MySql => (
                "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND BINARY TABLE_NAME = ?",
                self.target.table.as_str().to_owned(),
            ),
        };
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(table)
                .fetch_all(p)
                .await?
        }))
    }

    /// The storage classes (`integer`, `text`, `blob`, `real`; `null` for an
    /// empty column) of the values of SQLite column `column`: those of its
    /// smallest and largest value (SQLite orders numbers before text before
    /// blobs, so two values of one class mean the whole column is of it, up
    /// to integer and real) and of the values of the first rows read.
    async fn sqlite_stored(&self, column: &Ident) -> JobResult<Vec<String>> {
        let d = self.pool.dialect();
        let (c, t) = (d.quote(column), d.quote(&self.target.table));
        let sql = format!(
            "SELECT typeof(min({c})) FROM {t} UNION SELECT typeof(max({c})) FROM {t} \
             UNION SELECT typeof(c) FROM (SELECT {c} AS c FROM {t} LIMIT {SAMPLED_ROWS}) \
             WHERE c IS NOT NULL"
        );
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(p)
                .await?
        }))
    }

    /// A typed codec reads text forms; PostgreSQL's decrypt-out needs the
    /// column's type to cast into (from `types`, [`Job::column_types`]).
    fn check_codec(
        &self,
        plain: &Ident,
        kind: PlainKind,
        types: &[(String, String)],
    ) -> JobResult<()> {
        let codec = &self.target.codec;
        if codec.codec() == Some(crate::model::CodecId::Custom) {
            return Err(JobError::Invalid(format!(
                "{} is a field with its own FieldCodec: jobs re-encrypt it, but backfill and decrypt-out need a built-in type",
                self.target
            )));
        }
        if codec.reads_text_form() && kind == PlainKind::Bytes {
            return Err(JobError::Invalid(format!(
                "{} holds {} values, read through their text form: use PlainKind::Text (no --bytes)",
                self.target,
                codec.codec().map(|c| c.name()).unwrap_or("raw")
            )));
        }
        if codec.reads_text_form()
            && matches!(self.kind, JobKind::Decrypt { .. })
            && self.pool.dialect() == Dialect::Postgres
        {
            let ty = declared_type(Dialect::Postgres, types, plain).ok_or_else(|| {
                JobError::Invalid(format!(
                    "table {} has no column {plain}: create the plaintext column first",
                    self.target.table
                ))
            })?;
            let _ = self.plain_sql_type.set(ty.to_owned());
        }
        Ok(())
    }
}

/// The declared type of column `c` among `types` ([`Job::column_types`]):
/// PostgreSQL folds the unquoted (mixed-case) names `Dialect::quote` leaves
/// to lower case; MySQL column names are case-insensitive.
fn declared_type<'t>(d: Dialect, types: &'t [(String, String)], c: &Ident) -> Option<&'t str> {
    let folded = c.as_str().to_ascii_lowercase();
    types
        .iter()
        .find(|(n, _)| match d {
            Dialect::Postgres => *n == folded,
            _ => n.eq_ignore_ascii_case(c.as_str()),
        })
        .map(|(_, ty)| ty.as_str())
}

/// How many rows of a SQLite table the check reads the stored values of,
/// beside each column's smallest and largest value.
const SAMPLED_ROWS: usize = 1_000;

/// What a declared column type (or a SQLite value's storage class) can hold,
/// as far as a job's key, tenant and sealed columns are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SqlClass {
    Integer,
    Text,
    Binary,
    Uuid,
    /// Known types that are none of the above (floats, dates, JSON ...; a
    /// SQLite `real` value).
    Other,
}

impl SqlClass {
    /// The class of declared type `ty`; `None` when unknown (let through).
    fn of(d: Dialect, ty: &str) -> Option<SqlClass> {
        let ty = ty.to_ascii_lowercase();
        let base = ty.split('(').next().unwrap_or("").trim();
        match d {
            Dialect::Postgres => Some(match base {
                "smallint" | "integer" | "bigint" | "numeric" => SqlClass::Integer,
                "text" | "character varying" | "character" | "citext" | "name" => SqlClass::Text,
                "bytea" => SqlClass::Binary,
                "uuid" => SqlClass::Uuid,
                "real"
                | "double precision"
                | "boolean"
                | "date"
                | "json"
                | "jsonb"
                | "timestamp without time zone"
                | "timestamp with time zone" => SqlClass::Other,
                _ => return None,
            }),
            Dialect::MySql => Some(match base {
                "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "decimal" => {
                    SqlClass::Integer
                }
                "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum"
                | "set" => SqlClass::Text,
                "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                    SqlClass::Binary
                }
                "uuid" => SqlClass::Uuid,
                "float" | "double" | "date" | "datetime" | "timestamp" | "time" | "json" => {
                    SqlClass::Other
                }
                _ => return None,
            }),
            // SQLite: by the values stored (`SqlClass::stored`).
            Dialect::Sqlite => None,
        }
    }

    /// The class of a SQLite storage class (`typeof`): `None` for NULL.
    fn stored(class: &str) -> Option<SqlClass> {
        match class {
            "integer" => Some(SqlClass::Integer),
            "text" => Some(SqlClass::Text),
            "blob" => Some(SqlClass::Binary),
            "real" => Some(SqlClass::Other),
            _ => None,
        }
    }

    /// Whether a key part of `kind` can be read from and compared in a column
    /// of this class.
    fn holds_key(self, d: Dialect, kind: PkKind) -> bool {
        match kind {
            PkKind::Int => self == SqlClass::Integer,
            PkKind::Text => self == SqlClass::Text,
            PkKind::Bytes => self == SqlClass::Binary,
            PkKind::Uuid => self.holds_uuid(d),
        }
    }

    /// Whether a tenant of `kind` can be read from a column of this class.
    fn holds_tenant(self, d: Dialect, kind: TenantKind) -> bool {
        match kind {
            TenantKind::Int => self == SqlClass::Integer,
            TenantKind::Text => self == SqlClass::Text,
            TenantKind::Uuid => self.holds_uuid(d),
        }
    }

    /// A UUID is PostgreSQL's `UUID`, or the 16 bytes MySQL/MariaDB and SQLite
    /// store (MariaDB's own `UUID` type too).
    fn holds_uuid(self, d: Dialect) -> bool {
        match d {
            Dialect::Postgres => self == SqlClass::Uuid,
            Dialect::MySql | Dialect::Sqlite => {
                matches!(self, SqlClass::Binary | SqlClass::Uuid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_hold_the_kinds_a_job_reads() {
        use Dialect::*;
        let holds = |d, ty: &str, kind| SqlClass::of(d, ty).map(|c| c.holds_key(d, kind));
        assert_eq!(holds(Postgres, "uuid", PkKind::Uuid), Some(true));
        assert_eq!(holds(Postgres, "uuid", PkKind::Int), Some(false));
        assert_eq!(holds(Postgres, "text", PkKind::Uuid), Some(false));
        assert_eq!(
            holds(Postgres, "character varying(36)", PkKind::Text),
            Some(true)
        );
        assert_eq!(holds(Postgres, "bigint", PkKind::Int), Some(true));
        assert_eq!(holds(Postgres, "my_domain", PkKind::Int), None);
        assert_eq!(holds(MySql, "binary", PkKind::Uuid), Some(true));
        assert_eq!(holds(MySql, "binary", PkKind::Int), Some(false));
        assert_eq!(holds(MySql, "char", PkKind::Uuid), Some(false));
        assert_eq!(holds(MySql, "int", PkKind::Int), Some(true));
        assert_eq!(
            holds(Sqlite, "TEXT", PkKind::Uuid),
            None,
            "declared types are hints"
        );
        let stored = |class: &str, kind| SqlClass::stored(class).map(|c| c.holds_key(Sqlite, kind));
        assert_eq!(stored("integer", PkKind::Int), Some(true));
        assert_eq!(stored("blob", PkKind::Uuid), Some(true));
        assert_eq!(stored("text", PkKind::Int), Some(false));
        assert_eq!(stored("text", PkKind::Uuid), Some(false));
        assert_eq!(stored("blob", PkKind::Int), Some(false));
        assert_eq!(stored("null", PkKind::Int), None);
        let tenant = |d, ty: &str, kind| SqlClass::of(d, ty).map(|c| c.holds_tenant(d, kind));
        assert_eq!(tenant(Postgres, "text", TenantKind::Int), Some(false));
        assert_eq!(tenant(MySql, "bigint", TenantKind::Int), Some(true));
        assert_eq!(tenant(MySql, "varchar", TenantKind::Text), Some(true));
        assert_eq!(SqlClass::of(Postgres, "text"), Some(SqlClass::Text));
        assert_eq!(SqlClass::of(MySql, "longblob"), Some(SqlClass::Binary));
    }
}
