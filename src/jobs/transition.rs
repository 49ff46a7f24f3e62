//! Moving a live plaintext column to an encrypted one (and back).
//!
//! The phases (walked through in `docs/jobs.md`):
//!
//! 1. **add column**: a new nullable binary column next to the plaintext one;
//! 2. **dual write**: the application writes both columns;
//! 3. **backfill**: [`super::Job::encrypt_column`] fills the encrypted column of
//!    older rows in keyset-paginated, checkpointed, resumable batches, never
//!    overwriting a value the application wrote meanwhile;
//! 4. **verify**: [`transition_counts`] reports how many rows are encrypted and
//!    how many are still plaintext only; [`verify_encrypted`] opens every
//!    encrypted value and compares it with its plaintext;
//! 5. **switch reads**: [`read_transition`] reads the encrypted value when
//!    present and the plaintext otherwise, so reads can switch before the
//!    backfill ends;
//! 6. **drop plaintext**: [`drop_plaintext`] counts plaintext-only rows and drops
//!    the column under one table lock, refusing while any row would lose data.

use super::rowkey::{self, bind_arg};
use super::run::PlainKind;
use super::{Ident, JobError, JobPool, JobResult, Target, on_pool};
use crate::context::{Context, RowId};
use crate::envelope::Envelope;
use crate::sealed::Plaintext;

/// Where a transition column stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransitionCounts {
    /// Rows in the table.
    pub total: u64,
    /// Rows whose encrypted column is set.
    pub encrypted: u64,
    /// Rows with a plaintext value and no encrypted value: still to backfill.
    pub plaintext_only: u64,
    /// Rows with neither.
    pub null: u64,
}

/// Count encrypted and plaintext-only rows of `target` with plaintext column
/// `plain`. One scan.
pub async fn transition_counts(
    pool: &JobPool,
    target: &Target,
    plain: &str,
) -> JobResult<TransitionCounts> {
    let d = pool.dialect();
    let plain = d.quote(&Ident::new(plain)?);
    let col = d.quote(&target.column);
    let sum = |cond: String| match d {
        super::Dialect::MySql => {
            format!("CAST(COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0) AS SIGNED)")
        }
        _ => format!("COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0)"),
    };
    let sql = format!(
        "SELECT COUNT(*), {}, {} FROM {}",
        sum(format!("{col} IS NOT NULL")),
        sum(format!("{col} IS NULL AND {plain} IS NOT NULL")),
        d.quote(&target.table)
    );
    let (total, enc, plain_only): (i64, i64, i64) =
        on_pool!(pool, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(p).await?);
    Ok(TransitionCounts {
        total: total as u64,
        encrypted: enc as u64,
        plaintext_only: plain_only as u64,
        null: (total - enc - plain_only) as u64,
    })
}

/// Transition read: open the encrypted value when present, else return the
/// plaintext. An encrypted value that fails to open is an error, never a
/// silent fall back to the plaintext column.
pub async fn read_transition(
    envelope: &Envelope,
    ctx: &Context<'_>,
    encrypted: Option<&[u8]>,
    plaintext: Option<&[u8]>,
) -> crate::Result<Option<Plaintext>> {
    match (encrypted, plaintext) {
        (Some(v), _) => envelope.open_bytes(ctx, v).await.map(Some),
        (None, Some(p)) => Ok(Some(Plaintext::new(zeroize::Zeroizing::new(p.to_vec())))),
        (None, None) => Ok(None),
    }
}

/// What [`verify_encrypted`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Rows with both columns set, opened and compared.
    pub checked: u64,
    /// Rows whose encrypted value opens to something else than the plaintext.
    pub mismatched: u64,
    /// Rows whose encrypted value does not open.
    pub failed: u64,
    /// Rows with a plaintext value and no encrypted value.
    pub plaintext_only: u64,
    /// The first rows (at most [`super::FAILED_EXAMPLES`]) whose value
    /// mismatched or did not open: key, column and why (never a value).
    pub examples: Vec<super::FailedRow>,
}

impl VerifyReport {
    /// Whether every row is encrypted and matches its plaintext.
    pub fn is_clean(&self) -> bool {
        self.mismatched == 0 && self.failed == 0 && self.plaintext_only == 0
    }

    /// Keep row `row` of `target` as an example, if there is room.
    fn example(&mut self, row: &RowId, target: &Target, error: String) {
        if self.examples.len() < super::FAILED_EXAMPLES {
            self.examples.push(super::FailedRow {
                key: format!("{row:?}"),
                column: target.column.to_string(),
                error,
            });
        }
    }
}

/// Key, tenant, encrypted value, plaintext bytes.
type VerifyRow = (RowId, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);

/// Open every encrypted value of `target` and compare it with the plaintext
/// column `plain` (keyset pagination by the whole primary key, `batch` rows at
/// a time; each value bound to its row's key and tenant).
pub async fn verify_encrypted(
    envelope: &Envelope,
    pool: &JobPool,
    target: &Target,
    plain: &str,
    kind: PlainKind,
    batch: usize,
) -> JobResult<VerifyReport> {
    let d = pool.dialect();
    let plain_q = super::plaintext::read_expr(d, &target.codec, &d.quote(&Ident::new(plain)?));
    let (t, col) = (d.quote(&target.table), d.quote(&target.column));
    let key = &target.key;
    let mut select = rowkey::select_key(d, key);
    let tenant = target.tenant.as_ref().map(|tb| {
        select.push(rowkey::select_tenant(d, tb));
        (select.len() - 1, tb)
    });
    let first_val = select.len();
    select.push(col);
    select.push(plain_q);
    let select = select.join(", ");
    let order = rowkey::key_list(d, key);
    let sql_first = format!(
        "SELECT {select} FROM {t} ORDER BY {order} LIMIT {}",
        batch.max(1)
    );
    let sql_next = format!(
        "SELECT {select} FROM {t} WHERE {} ORDER BY {order} LIMIT {}",
        rowkey::compare(d, key, ">", 1),
        batch.max(1)
    );
    let mut report = VerifyReport::default();
    let mut after: Option<RowId> = None;
    loop {
        let rows: Vec<VerifyRow> = on_pool!(pool, p => {
            use sqlx::Row as _;
            let rows = match &after {
                None => sqlx::query(sqlx::AssertSqlSafe(sql_first.clone())).fetch_all(p).await?,
                Some(a) => {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql_next.clone()));
                    for arg in &rowkey::key_args(d, a) {
                        q = bind_arg!(q, arg);
                    }
                    q.fetch_all(p).await?
                }
            };
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let plain: Option<Vec<u8>> = match kind {
                    PlainKind::Text => r.try_get::<Option<String>, _>(first_val + 1)?.map(String::into_bytes),
                    PlainKind::Bytes => r.try_get(first_val + 1)?,
                };
                let tenant = match tenant {
                    Some((i, tb)) => rowkey::read_tenant(&r, i, tb)?,
                    None => None,
                };
                out.push((rowkey::read_key(&r, 0, key)?, tenant, r.try_get(first_val)?, plain));
            }
            out
        });
        let Some(last) = rows.last().map(|r| r.0.clone()) else {
            break;
        };
        for (row, tenant, enc, plain) in rows {
            let mut ctx = Context::new(&target.context_table, &target.context_column, &row);
            if let Some(tenant) = &tenant {
                ctx = ctx.with_tenant(tenant);
            }
            match (enc, plain) {
                (Some(v), p) => match envelope.open_bytes(&ctx, &v).await {
                    Ok(pt) => {
                        report.checked += 1;
                        if let Some(p) = p
                            && !same_value(target, kind, &p, pt)
                        {
                            report.mismatched += 1;
                            report.example(
                                &row,
                                target,
                                "opens to another value than the plaintext column".into(),
                            );
                        }
                    }
                    Err(e) if e.is_retryable() => return Err(e.into()),
                    Err(e) => {
                        report.failed += 1;
                        report.example(&row, target, e.to_string());
                    }
                },
                (None, Some(_)) => report.plaintext_only += 1,
                (None, None) => {}
            }
        }
        after = Some(last);
    }
    Ok(report)
}

/// Whether opened value `pt` is plaintext column value `plain`: the same
/// bytes for a raw codec, the same typed value otherwise (a value that does
/// not parse or decode is a mismatch).
fn same_value(target: &Target, kind: PlainKind, plain: &[u8], pt: Plaintext) -> bool {
    let codec = &target.codec;
    let Some(id) = codec.codec() else {
        return plain == &*pt;
    };
    let Ok(opened) = codec.decode(pt.into_zeroizing()) else {
        return false;
    };
    let stored = match (kind, std::str::from_utf8(plain)) {
        (PlainKind::Text, Ok(s)) if codec.reads_text_form() => super::plaintext::parse_text(id, s),
        (PlainKind::Text, Ok(s)) if id == crate::model::CodecId::Text => Ok(
            crate::model::PlainValue::Text(zeroize::Zeroizing::new(s.to_owned())),
        ),
        _ => Ok(crate::model::PlainValue::Bytes(zeroize::Zeroizing::new(
            plain.to_vec(),
        ))),
    };
    stored.is_ok_and(|v| v == opened)
}

/// Drop the plaintext column `plain` of `target.table`, only if no row has a
/// plaintext value without an encrypted one, and every value of the
/// encrypted column is in the sealed format (a column named by mistake, text
/// or numbers, is refused before anything is dropped). The count and the `DROP COLUMN`
/// run under one exclusive table lock (PostgreSQL: one transaction with
/// `LOCK TABLE ... ACCESS EXCLUSIVE`; MySQL/MariaDB: `LOCK TABLES ... WRITE`;
/// SQLite: one `BEGIN IMMEDIATE` transaction), so no write can slip in between.
pub async fn drop_plaintext(pool: &JobPool, target: &Target, plain: &str) -> JobResult<()> {
    let plain_ident = Ident::new(plain)?;
    if plain_ident == target.column {
        return Err(JobError::Invalid(
            "the plaintext column is the encrypted column".into(),
        ));
    }
    // A column that is not binary fails the read itself (PostgreSQL: no
    // `substring` of a number, no bytes from text); an outage stays an outage.
    let sealed = match super::verify::count_by_key(pool, target).await {
        Err(JobError::Db(e @ (sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. }))) => {
            return Err(JobError::Invalid(format!(
                "{target} cannot be read as an encrypted column ({e}); check --encrypted-column: \
                 nothing was dropped"
            )));
        }
        other => other?,
    };
    if sealed.unrecognized > 0 {
        return Err(JobError::Invalid(format!(
            "{} row(s) of {target} hold values not in the sealed format: is it the encrypted \
             column? Nothing was dropped",
            sealed.unrecognized
        )));
    }
    let d = pool.dialect();
    let (t, col, pl) = (
        d.quote(&target.table),
        d.quote(&target.column),
        d.quote(&plain_ident),
    );
    let count = format!("SELECT COUNT(*) FROM {t} WHERE {pl} IS NOT NULL AND {col} IS NULL");
    let drop = format!("ALTER TABLE {t} DROP COLUMN {pl}");
    let remaining: i64 = match pool {
        #[cfg(feature = "postgres")]
        JobPool::Postgres(p) => {
            let mut tx = p.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE"
            )))
            .execute(&mut *tx)
            .await?;
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
                .fetch_one(&mut *tx)
                .await?;
            if n == 0 {
                sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            n
        }
        #[cfg(feature = "mysql")]
        JobPool::MySql(p) => {
            use sqlx::Row as _;
            let mut conn = p.acquire().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("LOCK TABLES {t} WRITE")))
                .execute(&mut *conn)
                .await?;
            let result: JobResult<i64> = async {
                let row = sqlx::raw_sql(sqlx::AssertSqlSafe(count))
                    .fetch_one(&mut *conn)
                    .await?;
                let n: i64 = row.try_get(0)?;
                if n == 0 {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(n)
            }
            .await;
            sqlx::raw_sql("UNLOCK TABLES").execute(&mut *conn).await?;
            result?
        }
        #[cfg(feature = "sqlite")]
        JobPool::Sqlite(p) => {
            let mut conn = p.acquire().await?;
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let result: JobResult<i64> = async {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
                    .fetch_one(&mut *conn)
                    .await?;
                if n == 0 {
                    sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(n)
            }
            .await;
            let end = if matches!(result, Ok(0)) {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            sqlx::raw_sql(end).execute(&mut *conn).await?;
            result?
        }
    };
    if remaining > 0 {
        return Err(JobError::RowsRemain {
            rows: remaining as u64,
            what: format!(
                "have a plaintext value and no encrypted value in {target}: run the backfill (again) for them, then drop"
            ),
        });
    }
    Ok(())
}
