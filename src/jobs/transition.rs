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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

impl VerifyReport {
    /// Whether every row is encrypted and matches its plaintext.
    pub fn is_clean(&self) -> bool {
        self.mismatched == 0 && self.failed == 0 && self.plaintext_only == 0
    }
}

/// id, encrypted value, plaintext bytes.
type VerifyRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Open every encrypted value of `target` and compare it with the plaintext
/// column `plain` (keyset pagination by primary key, `batch` rows at a time).
pub async fn verify_encrypted(
    envelope: &Envelope,
    pool: &JobPool,
    target: &Target,
    plain: &str,
    kind: PlainKind,
    batch: usize,
) -> JobResult<VerifyReport> {
    let d = pool.dialect();
    let plain_q = d.quote(&Ident::new(plain)?);
    let (t, pk, col) = (
        d.quote(&target.table),
        d.quote(&target.pk),
        d.quote(&target.column),
    );
    let sql = format!(
        "SELECT {pk}, {col}, {plain_q} FROM {t} WHERE {pk} > {} ORDER BY {pk} LIMIT {}",
        d.ph(1),
        batch.max(1)
    );
    let mut report = VerifyReport::default();
    let mut after = i64::MIN;
    loop {
        let rows: Vec<VerifyRow> = on_pool!(pool, p => {
            use sqlx::Row as _;
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(after).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let plain: Option<Vec<u8>> = match kind {
                    PlainKind::Text => r.try_get::<Option<String>, _>(2)?.map(String::into_bytes),
                    PlainKind::Bytes => r.try_get(2)?,
                };
                out.push((r.try_get(0)?, r.try_get(1)?, plain));
            }
            out
        });
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        for (id, enc, plain) in rows {
            let row = RowId::from(id);
            let ctx = Context::new(&target.context_table, &target.context_column, &row);
            match (enc, plain) {
                (Some(v), p) => match envelope.open_bytes(&ctx, &v).await {
                    Ok(pt) => {
                        report.checked += 1;
                        if p.is_some_and(|p| p != *pt) {
                            report.mismatched += 1;
                        }
                    }
                    Err(e) if e.is_retryable() => return Err(e.into()),
                    Err(_) => report.failed += 1,
                },
                (None, Some(_)) => report.plaintext_only += 1,
                (None, None) => {}
            }
        }
        after = last;
    }
    Ok(report)
}

/// Drop the plaintext column `plain` of `target.table`, only if no row has a
/// plaintext value without an encrypted one. The count and the `DROP COLUMN`
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
            what: format!("have a plaintext value and no encrypted value in {target}"),
        });
    }
    Ok(())
}
