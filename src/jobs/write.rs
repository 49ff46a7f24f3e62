//! The compare-and-swap batch write: one statement writes a whole batch of
//! rows, each only if its column still holds the value the job read, so a
//! concurrent application write always wins; the batch and its checkpoint
//! commit in one transaction.

use super::checkpoint::JobSql;
use super::db::{Dialect, now_ms};
use super::plaintext;
use super::rowkey::{self, bind_arg};
use super::run::{Job, JobKind, PlainKind};
use super::{JobPool, JobResult};
use crate::context::RowId;

/// A column value as read or written.
pub(super) enum Val {
    /// Binary.
    Bytes(Vec<u8>),
    /// Text.
    Text(String),
}

macro_rules! bind_val {
    ($q:expr, $v:expr) => {
        match $v {
            Val::Bytes(b) => $q.bind(b.clone()),
            Val::Text(s) => $q.bind(s.clone()),
        }
    };
}

/// Bind one column of a batch as a PostgreSQL array (all values of a column
/// have the same type).
#[cfg(feature = "postgres")]
macro_rules! bind_column {
    ($q:expr, $vals:expr) => {{
        let vals: Vec<&Val> = $vals.collect();
        if matches!(vals.first(), Some(Val::Text(_))) {
            let v: Vec<String> = vals
                .iter()
                .map(|v| match v {
                    Val::Text(s) => s.clone(),
                    Val::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                })
                .collect();
            $q.bind(v)
        } else {
            let v: Vec<Vec<u8>> = vals
                .iter()
                .map(|v| match v {
                    Val::Bytes(b) => b.clone(),
                    Val::Text(s) => s.clone().into_bytes(),
                })
                .collect();
            $q.bind(v)
        }
    }};
}

/// Rows per compare-and-swap statement (SQLite and MySQL bind 3 per row).
const BULK_ROWS: usize = 1000;

fn pg_type(kind: PlainKind) -> &'static str {
    match kind {
        PlainKind::Text => "text",
        PlainKind::Bytes => "bytea",
    }
}

/// One row write: (primary key, new value, old value for the compare-and-swap).
pub(super) type Write = (RowId, Val, Val);

/// The PostgreSQL array type of a key part's values as bound (UUIDs as text,
/// cast back in the join).
fn pg_key_type(kind: crate::model::PkKind) -> &'static str {
    match kind {
        crate::model::PkKind::Int => "int8",
        crate::model::PkKind::Uuid | crate::model::PkKind::Text => "text",
        crate::model::PkKind::Bytes => "bytea",
    }
}

/// Part `i` of every key of a batch, as one PostgreSQL array.
#[cfg(feature = "postgres")]
enum KeyColumn {
    I64(Vec<i64>),
    Text(Vec<String>),
    Bytes(Vec<Vec<u8>>),
}

#[cfg(feature = "postgres")]
fn pg_key_column(writes: &[Write], i: usize) -> KeyColumn {
    use rowkey::Arg;
    let arg = |w: &Write| rowkey::part_arg(Dialect::Postgres, &w.0.parts()[i]);
    let mut col = match writes.first().map(arg) {
        Some(Arg::Text(_)) => KeyColumn::Text(Vec::with_capacity(writes.len())),
        Some(Arg::Bytes(_)) => KeyColumn::Bytes(Vec::with_capacity(writes.len())),
        _ => KeyColumn::I64(Vec::with_capacity(writes.len())),
    };
    for a in writes.iter().map(arg) {
        match (&mut col, a) {
            (KeyColumn::I64(v), Arg::I64(x)) => v.push(x),
            (KeyColumn::Text(v), Arg::Text(x)) => v.push(x),
            (KeyColumn::Bytes(v), Arg::Bytes(x)) => v.push(x),
            _ => unreachable!("every key of a batch is read with the target's key kinds"),
        }
    }
    col
}

impl Job {
    /// One compare-and-swap `UPDATE` of `n` rows, given as `(key, new, old)`:
    /// PostgreSQL binds one array per key column plus two (`unnest`),
    /// MySQL/MariaDB and SQLite bind `(parts + 2) n` values (a derived table of
    /// `UNION ALL` rows / a `VALUES` list). A row is written only if its column
    /// still holds `old`; the affected-row count is the number written.
    fn bulk_update_sql(&self, d: Dialect, n: usize) -> String {
        let t = d.quote(&self.target.table);
        let col = d.quote(&self.target.column);
        let key = &self.target.key;
        let (set_col, cond, new_ty, old_ty) = match &self.kind {
            JobKind::Reencrypt { .. } => {
                (col.clone(), format!("{t}.{col} = v.ov"), "bytea", "bytea")
            }
            JobKind::Encrypt { plain, kind } => {
                let plain = d.quote(plain);
                let read = plaintext::read_expr(d, &self.target.codec, &format!("{t}.{plain}"));
                let eq = text_eq(d, *kind, &read, "v.ov");
                (
                    col.clone(),
                    format!("{t}.{col} IS NULL AND {eq}"),
                    "bytea",
                    pg_type(*kind),
                )
            }
            JobKind::Decrypt { plain, kind } => {
                let plain = d.quote(plain);
                (
                    plain.clone(),
                    format!("{t}.{plain} IS NULL AND {t}.{col} = v.ov"),
                    pg_type(*kind),
                    "bytea",
                )
            }
        };
        // PostgreSQL does not assign text to a typed column implicitly.
        let new_val = match (d, self.plain_sql_type.get()) {
            (Dialect::Postgres, Some(ty)) if matches!(self.kind, JobKind::Decrypt { .. }) => {
                format!("CAST(v.nv AS {ty})")
            }
            _ => "v.nv".to_owned(),
        };
        let names: Vec<String> = (0..key.len()).map(|i| format!("k{i}")).collect();
        let join = key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let c = format!("{t}.{}", d.quote(&k.name));
                match (d, k.kind) {
                    (Dialect::Postgres, crate::model::PkKind::Uuid) => {
                        format!("{c} = CAST(v.k{i} AS uuid)")
                    }
                    _ => format!("{c} = v.k{i}"),
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let width = key.len() + 2;
        match d {
            Dialect::Postgres => {
                let arrays: Vec<String> = key
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("${}::{}[]", i + 1, pg_key_type(k.kind)))
                    .chain([
                        format!("${}::{new_ty}[]", key.len() + 1),
                        format!("${}::{old_ty}[]", key.len() + 2),
                    ])
                    .collect();
                format!(
                    "UPDATE {t} SET {set_col} = {new_val} \
                     FROM unnest({}) AS v({}, nv, ov) \
                     WHERE {join} AND {cond}",
                    arrays.join(", "),
                    names.join(", ")
                )
            }
            Dialect::MySql => {
                let first = names
                    .iter()
                    .map(|k| format!("? AS {k}"))
                    .chain(["? AS nv".to_owned(), "? AS ov".to_owned()])
                    .collect::<Vec<_>>()
                    .join(", ");
                let rest = vec!["?"; width].join(", ");
                let rows: Vec<String> = std::iter::once(format!("SELECT {first}"))
                    .chain(std::iter::repeat_n(
                        format!("SELECT {rest}"),
                        n.saturating_sub(1),
                    ))
                    .collect();
                format!(
                    "UPDATE {t} JOIN ({}) AS v ON {join} SET {t}.{set_col} = v.nv WHERE {cond}",
                    rows.join(" UNION ALL ")
                )
            }
            Dialect::Sqlite => {
                let row = format!("({})", vec!["?"; width].join(", "));
                let rows = vec![row.as_str(); n].join(", ");
                format!(
                    "WITH v({}, nv, ov) AS (VALUES {rows}) \
                     UPDATE {t} SET {set_col} = v.nv FROM v WHERE {join} AND {cond}",
                    names.join(", ")
                )
            }
        }
    }

    /// Write one batch and its checkpoint in one transaction. `None` when the
    /// lease was lost (everything rolled back).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &self,
        writes: &[Write],
        sql: &JobSql,
        job: &str,
        chunk: i64,
        owner: &str,
        last: &RowId,
        scanned: u64,
        failed: u64,
    ) -> JobResult<Option<(u64, u64)>> {
        let d = self.pool.dialect();
        let now = now_ms();
        let lease_until = now + self.opts.lease.as_millis() as i64;
        // $p: the pool; $bind: how one part's rows are bound onto query $q.
        macro_rules! batch_tx {
            ($p:expr, |$q:ident, $part:ident| $bind:expr) => {{
                let mut tx = $p.begin().await?;
                let mut written = 0u64;
                for $part in writes.chunks(BULK_ROWS) {
                    let sql = self.bulk_update_sql(d, $part.len());
                    let $q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    let $q = $bind;
                    written += $q.execute(&mut *tx).await?.rows_affected();
                }
                let conflicts = writes.len() as u64 - written;
                let ok = sqlx::query(sqlx::AssertSqlSafe(sql.progress.clone()))
                    .bind(last.to_canonical_hex())
                    .bind(lease_until)
                    .bind(now)
                    .bind(scanned as i64)
                    .bind(written as i64)
                    .bind(conflicts as i64)
                    .bind(failed as i64)
                    .bind(job)
                    .bind(chunk)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if ok != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                tx.commit().await?;
                Ok(Some((written, conflicts)))
            }};
        }
        // MySQL/MariaDB and SQLite: (key parts..., new, old) per row.
        macro_rules! per_row {
            ($q:ident, $part:ident) => {{
                let mut q = $q;
                for (row, new, old) in $part {
                    for a in &rowkey::key_args(d, row) {
                        q = bind_arg!(q, a);
                    }
                    q = bind_val!(q, new);
                    q = bind_val!(q, old);
                }
                q
            }};
        }
        match &self.pool {
            #[cfg(feature = "postgres")]
            JobPool::Postgres(p) => batch_tx!(p, |q, part| {
                let mut q = q;
                for i in 0..self.target.key.len() {
                    q = match pg_key_column(part, i) {
                        KeyColumn::I64(v) => q.bind(v),
                        KeyColumn::Text(v) => q.bind(v),
                        KeyColumn::Bytes(v) => q.bind(v),
                    };
                }
                let q = bind_column!(q, part.iter().map(|w| &w.1));
                bind_column!(q, part.iter().map(|w| &w.2))
            }),
            #[cfg(feature = "mysql")]
            JobPool::MySql(p) => batch_tx!(p, |q, part| per_row!(q, part)),
            #[cfg(feature = "sqlite")]
            JobPool::Sqlite(p) => batch_tx!(p, |q, part| per_row!(q, part)),
        }
    }
}

/// `plain = ph`, byte-exact on MySQL (whose text comparison ignores case).
fn text_eq(d: Dialect, kind: PlainKind, plain: &str, ph: &str) -> String {
    match (d, kind) {
        (Dialect::MySql, PlainKind::Text) => {
            format!("CAST({plain} AS BINARY) = CAST({ph} AS BINARY)")
        }
        _ => format!("{plain} = {ph}"),
    }
}
