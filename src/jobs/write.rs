//! The compare-and-swap batch write: one statement writes a whole batch of
//! rows, each only if its columns still hold the values the job read, so a
//! concurrent application write always wins; the batch and its checkpoint
//! commit in one transaction. A model re-encryption moves every encrypted
//! column of a row in the same statement (one read, one compare-and-swap).

use super::checkpoint::JobSql;
use super::db::{Dialect, now_ms};
use super::plaintext;
use super::rowkey::{self, bind_arg};
use super::run::{Job, JobKind, PlainKind};
use super::{JobPool, JobResult};
use crate::context::RowId;

/// A column value as read or written.
#[derive(Clone)]
pub(super) enum Val {
    /// Binary.
    Bytes(Vec<u8>),
    /// Text.
    Text(String),
    /// SQL NULL (an encrypted column of a model re-encryption that is not set).
    Null,
}

macro_rules! bind_val {
    ($q:expr, $v:expr) => {
        match $v {
            Val::Bytes(b) => $q.bind(b.clone()),
            Val::Text(s) => $q.bind(s.clone()),
            Val::Null => $q.bind(None::<Vec<u8>>),
        }
    };
}

/// Bind one column of a batch as a PostgreSQL array (all values of a column
/// have the same type).
#[cfg(feature = "postgres")]
macro_rules! bind_column {
    ($q:expr, $vals:expr) => {{
        let vals: Vec<&Val> = $vals.collect();
        if vals.iter().any(|v| matches!(v, Val::Text(_))) {
            let v: Vec<Option<String>> = vals
                .iter()
                .map(|v| match v {
                    Val::Text(s) => Some(s.clone()),
                    Val::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    Val::Null => None,
                })
                .collect();
            $q.bind(v)
        } else {
            let v: Vec<Option<Vec<u8>>> = vals
                .iter()
                .map(|v| match v {
                    Val::Bytes(b) => Some(b.clone()),
                    Val::Text(s) => Some(s.clone().into_bytes()),
                    Val::Null => None,
                })
                .collect();
            $q.bind(v)
        }
    }};
}

/// Bound values per compare-and-swap statement on MySQL/MariaDB and SQLite
/// (key parts plus a new and an old value per column, per row).
const BULK_BINDS: usize = 3000;

fn pg_type(kind: PlainKind) -> &'static str {
    match kind {
        PlainKind::Text => "text",
        PlainKind::Bytes => "bytea",
    }
}

/// One row write: its primary key, and per column the new value and the old
/// one for the compare-and-swap (one column, or every encrypted column of a
/// model re-encryption, in [`Job`]'s column order).
pub(super) struct Write {
    /// The row's primary key.
    pub(super) key: RowId,
    /// New values, one per column.
    pub(super) new: Vec<Val>,
    /// The values read, one per column.
    pub(super) old: Vec<Val>,
}

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
    let arg = |w: &Write| rowkey::part_arg(Dialect::Postgres, &w.key.parts()[i]);
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
    /// What one batch write sets, per column: `(SET target, compare-and-swap
    /// condition on v.o{j}, new value expression from v.n{j}, new type, old
    /// type)` (types for PostgreSQL's arrays).
    #[allow(clippy::type_complexity)]
    fn write_columns(
        &self,
        d: Dialect,
    ) -> Vec<(String, String, String, &'static str, &'static str)> {
        let t = d.quote(&self.target.table);
        let col = d.quote(&self.target.column);
        match &self.kind {
            JobKind::Reencrypt { .. } if self.columns.len() == 1 => vec![(
                col.clone(),
                format!("{t}.{col} = v.o0"),
                "v.n0".to_owned(),
                "bytea",
                "bytea",
            )],
            // Several columns: each is replaced only if it still holds what
            // was read (NULL-safe: a model's columns may be NULL), so a column
            // the application rewrote meanwhile keeps its new value while the
            // row's other columns still move off the retired keys.
            JobKind::Reencrypt { .. } => self
                .columns
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let c = d.quote(&c.column);
                    let (same, moved) = match d {
                        Dialect::Postgres => (
                            format!("{t}.{c} IS NOT DISTINCT FROM v.o{j}"),
                            format!("v.n{j} IS DISTINCT FROM v.o{j}"),
                        ),
                        Dialect::MySql => (
                            format!("{t}.{c} <=> v.o{j}"),
                            format!("NOT (v.n{j} <=> v.o{j})"),
                        ),
                        Dialect::Sqlite => (
                            format!("{t}.{c} IS v.o{j}"),
                            format!("v.n{j} IS NOT v.o{j}"),
                        ),
                    };
                    (
                        c.clone(),
                        // The row counts as written when a column that moves
                        // is still as read.
                        format!("({moved} AND {same})"),
                        format!("CASE WHEN {same} THEN v.n{j} ELSE {t}.{c} END"),
                        "bytea",
                        "bytea",
                    )
                })
                .collect(),
            JobKind::Encrypt { plain, kind } => {
                let plain = d.quote(plain);
                let read = plaintext::read_expr(d, &self.target.codec, &format!("{t}.{plain}"));
                let eq = text_eq(d, *kind, &read, "v.o0");
                vec![(
                    col.clone(),
                    format!("{t}.{col} IS NULL AND {eq}"),
                    "v.n0".to_owned(),
                    "bytea",
                    pg_type(*kind),
                )]
            }
            JobKind::Index { index } => {
                let index = d.quote(index);
                vec![(
                    index.clone(),
                    format!("{t}.{index} IS NULL AND {t}.{col} = v.o0"),
                    "v.n0".to_owned(),
                    "bytea",
                    "bytea",
                )]
            }
            JobKind::Decrypt { plain, kind } => {
                let plain = d.quote(plain);
                // PostgreSQL does not assign text to a typed column implicitly.
                let new_val = match (d, self.plain_sql_type.get()) {
                    (Dialect::Postgres, Some(ty)) => format!("CAST(v.n0 AS {ty})"),
                    _ => "v.n0".to_owned(),
                };
                vec![(
                    plain.clone(),
                    format!("{t}.{plain} IS NULL AND {t}.{col} = v.o0"),
                    new_val,
                    pg_type(*kind),
                    "bytea",
                )]
            }
        }
    }

    /// One compare-and-swap `UPDATE` of `n` rows: PostgreSQL binds one array
    /// per key column plus two per written column (`unnest`), MySQL/MariaDB
    /// and SQLite bind `(parts + 2 columns) n` values (a derived table of
    /// `UNION ALL` rows / a `VALUES` list). A row is written only if its
    /// columns still hold the values read; the affected-row count is the
    /// number written.
    fn bulk_update_sql(&self, d: Dialect, n: usize) -> String {
        let t = d.quote(&self.target.table);
        let key = &self.target.key;
        let cols = self.write_columns(d);
        let set = |prefix: &str| {
            cols.iter()
                .map(|(c, _, nv, _, _)| format!("{prefix}{c} = {nv}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // One column: written only if unchanged. A model's columns: the row is
        // written if any column that moves is unchanged (each column guarded
        // by its own CASE); a row whose moving columns were all rewritten by
        // the application is a conflict.
        let cond = match cols.len() {
            1 => cols[0].1.clone(),
            _ => format!(
                "({})",
                cols.iter()
                    .map(|c| c.1.as_str())
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
        };
        let names: Vec<String> = (0..key.len())
            .map(|i| format!("k{i}"))
            .chain((0..cols.len()).flat_map(|j| [format!("n{j}"), format!("o{j}")]))
            .collect();
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
        match d {
            Dialect::Postgres => {
                let mut ph = 0;
                let mut next = || {
                    ph += 1;
                    ph
                };
                let arrays: Vec<String> = key
                    .iter()
                    .map(|k| format!("${}::{}[]", next(), pg_key_type(k.kind)))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .chain(cols.iter().flat_map(|(_, _, _, nt, ot)| {
                        [
                            format!("${}::{nt}[]", next()),
                            format!("${}::{ot}[]", next()),
                        ]
                    }))
                    .collect();
                format!(
                    "UPDATE {t} SET {} FROM unnest({}) AS v({}) WHERE {join} AND {cond}",
                    set(""),
                    arrays.join(", "),
                    names.join(", ")
                )
            }
            Dialect::MySql => {
                let first = names
                    .iter()
                    .map(|k| format!("? AS {k}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let rest = vec!["?"; names.len()].join(", ");
                let rows: Vec<String> = std::iter::once(format!("SELECT {first}"))
                    .chain(std::iter::repeat_n(
                        format!("SELECT {rest}"),
                        n.saturating_sub(1),
                    ))
                    .collect();
                format!(
                    "UPDATE {t} JOIN ({}) AS v ON {join} SET {} WHERE {cond}",
                    rows.join(" UNION ALL "),
                    set(&format!("{t}."))
                )
            }
            Dialect::Sqlite => {
                let row = format!("({})", vec!["?"; names.len()].join(", "));
                let rows = vec![row.as_str(); n].join(", ");
                format!(
                    "WITH v({}) AS (VALUES {rows}) UPDATE {t} SET {} FROM v WHERE {join} AND {cond}",
                    names.join(", "),
                    set("")
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
        let lease_until = now.saturating_add(super::lease_ms(self.opts.lease));
        // $p: the pool; $bind: how one part's rows are bound onto query $q.
        macro_rules! batch_tx {
            ($p:expr, |$q:ident, $part:ident| $bind:expr) => {{
                let mut tx = $p.begin().await?;
                let mut written = 0u64;
                let width = self.target.key.len() + 2 * self.columns.len().max(1);
                for $part in writes.chunks((BULK_BINDS / width).max(1)) {
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
                for w in $part {
                    for a in &rowkey::key_args(d, &w.key) {
                        q = bind_arg!(q, a);
                    }
                    for (new, old) in w.new.iter().zip(&w.old) {
                        q = bind_val!(q, new);
                        q = bind_val!(q, old);
                    }
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
                for j in 0..part.first().map_or(0, |w| w.new.len()) {
                    q = bind_column!(q, part.iter().map(|w| &w.new[j]));
                    q = bind_column!(q, part.iter().map(|w| &w.old[j]));
                }
                q
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
