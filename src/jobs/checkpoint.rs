//! Checkpoints and leases in `sqlx_envelope_jobs`.
//!
//! A job is one header row (`chunk = 0`, holding its kind and a description) and
//! one row per primary-key range `(lo, hi]` ("chunk", bounds stored as the
//! canonical form of the key, so any key shape works), planned once by the first
//! worker (inside the transaction that inserts the header, so concurrent
//! starters agree on one plan). A worker claims a chunk with a compare-and-swap
//! `UPDATE` (pending, or running under an expired lease, or its own lease after
//! a restart), processes it batch by batch, and records each batch's last
//! primary key and counts in the same transaction as the batch's row writes,
//! renewing its lease. A crash therefore loses nothing and repeats nothing.
//! The header row counts the job's passes after the first (`passes`,
//! [`JobStatus::passes`]), so that starting a new pass is a compare-and-set on
//! it.

use sqlx::Row as _;

use super::db::{Dialect, now_ms};
use super::rowkey::{self, bind_arg};
use super::{JobError, JobPool, JobResult, Target, on_pool};
use crate::context::RowId;

/// A claimed primary-key range.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub chunk: i64,
    pub hi: Option<RowId>,
    /// Last primary key done (`lo` when none yet). `None`: from the start.
    pub after: Option<RowId>,
}

/// A stored bound or cursor back to a key.
fn stored_key(job: &str, v: Option<String>) -> JobResult<Option<RowId>> {
    v.map(|hex| {
        RowId::from_canonical_hex(&hex).ok_or_else(|| {
            JobError::Invalid(format!(
                "job {job:?} has a checkpoint that is not a primary key; reset the job (reset_job, or the command's --restart) and run it again"
            ))
        })
    })
    .transpose()
}

/// The statements on the jobs table, per dialect.
#[derive(Debug)]
pub(crate) struct JobSql {
    pub candidates: String,
    pub claim: String,
    pub load: String,
    /// In the batch transaction: (cursor, lease_until, updated, scanned, written,
    /// conflicts, failed, job, chunk, owner)
    pub progress: String,
    pub done: String,
    pub release: String,
}

impl JobSql {
    pub(crate) fn new(d: Dialect) -> Self {
        let p = |n| d.ph(n);
        let claimable = |a: usize, b: usize| {
            format!(
                "(state = 'pending' OR (state = 'running' AND (owner = {} OR lease_until < {})))",
                p(a),
                p(b)
            )
        };
        JobSql {
            candidates: format!(
                "SELECT chunk FROM sqlx_envelope_jobs WHERE job = {} AND chunk > 0 AND {} ORDER BY chunk LIMIT 16",
                p(1),
                claimable(2, 3)
            ),
            claim: format!(
                "UPDATE sqlx_envelope_jobs SET state = 'running', owner = {}, lease_until = {}, updated_ms = {} \
                 WHERE job = {} AND chunk = {} AND {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                claimable(6, 7)
            ),
            load: format!(
                "SELECT lo_key, hi_key, cursor_key FROM sqlx_envelope_jobs WHERE job = {} AND chunk = {}",
                p(1),
                p(2)
            ),
            progress: format!(
                "UPDATE sqlx_envelope_jobs SET cursor_key = {}, lease_until = {}, updated_ms = {}, \
                 scanned = scanned + {}, written = written + {}, conflicts = conflicts + {}, failed = failed + {} \
                 WHERE job = {} AND chunk = {} AND owner = {} AND state = 'running'",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8),
                p(9),
                p(10)
            ),
            done: format!(
                "UPDATE sqlx_envelope_jobs SET state = 'done', lease_until = NULL, updated_ms = {} \
                 WHERE job = {} AND chunk = {} AND owner = {} AND state = 'running'",
                p(1),
                p(2),
                p(3),
                p(4)
            ),
            release: format!(
                "UPDATE sqlx_envelope_jobs SET state = 'pending', owner = NULL, lease_until = NULL, updated_ms = {} \
                 WHERE job = {} AND chunk = {} AND owner = {} AND state = 'running'",
                p(1),
                p(2),
                p(3),
                p(4)
            ),
        }
    }
}

/// Create the job's header and chunks unless they exist. Returns whether this
/// call planned the job. Refuses a job name already used with another spec.
pub(crate) async fn plan(
    pool: &JobPool,
    job: &str,
    kind: &str,
    spec: &str,
    target: &Target,
    chunk_rows: u64,
) -> JobResult<bool> {
    let d = pool.dialect();
    let (ins, ign) = d.insert_ignore();
    let p = |n| d.ph(n);
    let header = format!(
        "{ins} INTO sqlx_envelope_jobs (job, chunk, kind, spec, state, updated_ms) VALUES ({}, 0, {}, {}, 'running', {}){ign}",
        p(1),
        p(2),
        p(3),
        p(4)
    );
    let read_header = format!(
        "SELECT kind, spec FROM sqlx_envelope_jobs WHERE job = {} AND chunk = 0",
        p(1)
    );
    let insert_chunk = format!(
        "INSERT INTO sqlx_envelope_jobs (job, chunk, kind, lo_key, hi_key, state, updated_ms) VALUES ({}, {}, {}, {}, {}, 'pending', {})",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6)
    );
    let t = d.quote(&target.table);
    let key = &target.key;
    let (select, order) = (
        rowkey::select_key(d, key).join(", "),
        rowkey::key_list(d, key),
    );
    let offset = chunk_rows.max(1) - 1;
    let first = format!("SELECT {select} FROM {t} ORDER BY {order} LIMIT 1 OFFSET {offset}");
    let next = format!(
        "SELECT {select} FROM {t} WHERE {} ORDER BY {order} LIMIT 1 OFFSET {offset}",
        rowkey::compare(d, key, ">", 1)
    );
    let now = now_ms();
    on_pool!(pool, p => {
        let mut tx = p.begin().await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(header))
            .bind(job)
            .bind(kind)
            .bind(spec)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 0 {
            let row = sqlx::query(sqlx::AssertSqlSafe(read_header))
                .bind(job)
                .fetch_one(&mut *tx)
                .await?;
            let (k, s): (String, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
            tx.commit().await?;
            if k != kind || s.as_deref() != Some(spec) {
                return Err(JobError::Invalid(format!(
                    "job {job:?} already exists with another description (a {k} job with other columns, key or \
                     options): give this one its own name (--job-name, JobOptions::job_name), or start \
                     that job over (--restart, jobs::reset_job; its progress is discarded)"
                )));
            }
            return Ok(false);
        }
        let mut bounds: Vec<RowId> = Vec::new();
        loop {
            let row = match bounds.last() {
                None => sqlx::query(sqlx::AssertSqlSafe(first.clone()))
                    .fetch_optional(&mut *tx)
                    .await?,
                Some(last) => {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(next.clone()));
                    for a in &rowkey::key_args(d, last) {
                        q = bind_arg!(q, a);
                    }
                    q.fetch_optional(&mut *tx).await?
                }
            };
            match row {
                Some(r) => bounds.push(rowkey::read_key(&r, 0, key)?),
                None => break,
            }
        }
        // Chunks (lo, hi]: (-inf, b1], (b1, b2], ..., (bk, +inf).
        let mut lo: Option<String> = None;
        for (i, hi) in bounds
            .iter()
            .map(|b| Some(b.to_canonical_hex()))
            .chain([None])
            .enumerate()
        {
            sqlx::query(sqlx::AssertSqlSafe(insert_chunk.clone()))
                .bind(job)
                .bind(i as i64 + 1)
                .bind(kind)
                .bind(lo.clone())
                .bind(hi.clone())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            lo = hi;
        }
        tx.commit().await?;
        Ok(true)
    })
}

/// Start a new pass over a finished job: every chunk back to pending, its
/// cursor cleared, its counters (the job's history) kept. A compare-and-set on
/// the finished job the caller saw (`seen`, read before it registered
/// anything): the header's pass count is raised only if it is still the one
/// seen (which also locks the header row, serializing concurrent callers), and
/// only if every chunk is still done; so neither a pass in progress in another
/// process nor one that another process started and finished meanwhile is
/// followed by another. Returns whether a new pass was started.
pub(crate) async fn new_pass(pool: &JobPool, job: &str, seen: &JobStatus) -> JobResult<bool> {
    let d = pool.dialect();
    let p = |n| d.ph(n);
    let next_pass = format!(
        "UPDATE sqlx_envelope_jobs SET passes = passes + 1 WHERE job = {} AND chunk = 0 AND passes = {}",
        p(1),
        p(2)
    );
    let open_chunks = format!(
        "SELECT COUNT(*) FROM sqlx_envelope_jobs WHERE job = {} AND chunk > 0 AND state <> 'done'",
        p(1)
    );
    let reopen = format!(
        "UPDATE sqlx_envelope_jobs SET state = 'pending', owner = NULL, lease_until = NULL, \
         cursor_key = NULL, updated_ms = {} WHERE job = {} AND chunk > 0 AND state = 'done'",
        p(1),
        p(2)
    );
    on_pool!(pool, p => {
        let mut tx = p.begin().await?;
        let claimed = sqlx::query(sqlx::AssertSqlSafe(next_pass))
            .bind(job)
            .bind(seen.passes as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed != 1 {
            // Another process started a pass since (or the job was reset).
            tx.rollback().await?;
            return Ok(false);
        }
        let open: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(open_chunks))
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
        if open > 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let n = sqlx::query(sqlx::AssertSqlSafe(reopen))
            .bind(now_ms())
            .bind(job)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    })
}

/// Claim one chunk for `owner` with a lease of `lease_ms`.
pub(crate) async fn claim(
    pool: &JobPool,
    sql: &JobSql,
    job: &str,
    owner: &str,
    lease_ms: i64,
    pick: usize,
) -> JobResult<Option<Chunk>> {
    loop {
        let now = now_ms();
        let candidates: Vec<i64> = on_pool!(pool, p => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.candidates.clone()))
            .bind(job)
            .bind(owner)
            .bind(now)
            .fetch_all(p)
            .await?);
        if candidates.is_empty() {
            return Ok(None);
        }
        // Spread concurrent workers over the candidates; our own lease first.
        let chunk = candidates[pick % candidates.len()];
        let got = on_pool!(pool, p => sqlx::query(sqlx::AssertSqlSafe(sql.claim.clone()))
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(job)
            .bind(chunk)
            .bind(owner)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected());
        if got == 1 {
            let (lo, hi, cursor): (Option<String>, Option<String>, Option<String>) = on_pool!(pool, p => {
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.load.clone()))
                    .bind(job)
                    .bind(chunk)
                    .fetch_one(p)
                    .await?;
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)
            });
            return Ok(Some(Chunk {
                chunk,
                hi: stored_key(job, hi)?,
                after: stored_key(job, cursor.or(lo))?,
            }));
        }
        // Lost the race for this chunk: look again.
    }
}

/// Run one parameterless-but-for-keys statement on a chunk row (done, release).
pub(crate) async fn finish_chunk(
    pool: &JobPool,
    stmt: &str,
    job: &str,
    chunk: i64,
    owner: &str,
) -> JobResult<bool> {
    let stmt = stmt.to_owned();
    Ok(on_pool!(pool, p => sqlx::query(sqlx::AssertSqlSafe(stmt))
        .bind(now_ms())
        .bind(job)
        .bind(chunk)
        .bind(owner)
        .execute(p)
        .await?
        .rows_affected()
        == 1))
}

/// The state of a job across all its workers, from `sqlx_envelope_jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's kind (`reencrypt`, `encrypt`, `decrypt`); `None` if the job
    /// does not exist.
    pub kind: Option<String>,
    /// Chunks in the plan.
    pub chunks: u64,
    /// Chunks finished.
    pub chunks_done: u64,
    /// Chunks leased right now.
    pub chunks_running: u64,
    /// Rows read, summed over all workers and runs.
    pub scanned: u64,
    /// Rows written.
    pub written: u64,
    /// Rows skipped because the application changed them concurrently.
    pub conflicts: u64,
    /// Rows that could not be processed.
    pub failed: u64,
    /// Distinct workers that finished at least one chunk.
    pub workers: Vec<String>,
    /// Passes over the table after the first (a finished job run again).
    pub passes: u64,
}

impl JobStatus {
    /// Whether every chunk is done.
    pub fn is_done(&self) -> bool {
        self.kind.is_some() && self.chunks == self.chunks_done
    }
}

/// chunk, kind, state, owner, scanned, written, conflicts, failed, passes.
type StatusRow = (i64, String, String, Option<String>, i64, i64, i64, i64, i64);

/// Read the status of job `job`.
pub async fn job_status(pool: &JobPool, job: &str) -> JobResult<JobStatus> {
    let d = pool.dialect();
    let sql = format!(
        "SELECT chunk, kind, state, owner, scanned, written, conflicts, failed, passes FROM sqlx_envelope_jobs WHERE job = {} ORDER BY chunk",
        d.ph(1)
    );
    let rows: Vec<StatusRow> =
        on_pool!(pool, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(job).fetch_all(p).await?);
    let mut st = JobStatus::default();
    for (chunk, kind, state, owner, scanned, written, conflicts, failed, passes) in rows {
        if chunk == 0 {
            st.kind = Some(kind);
            st.passes = passes as u64;
            continue;
        }
        st.chunks += 1;
        match state.as_str() {
            "done" => {
                st.chunks_done += 1;
                if let Some(o) = owner
                    && !st.workers.contains(&o)
                {
                    st.workers.push(o);
                }
            }
            "running" => st.chunks_running += 1,
            _ => {}
        }
        st.scanned += scanned as u64;
        st.written += written as u64;
        st.conflicts += conflicts as u64;
        st.failed += failed as u64;
    }
    st.workers.sort();
    Ok(st)
}

/// Delete job `job` (its header, chunks and counts), so that running it again
/// starts over. Do not reset a job while workers run it.
pub async fn reset_job(pool: &JobPool, job: &str) -> JobResult<u64> {
    let sql = format!(
        "DELETE FROM sqlx_envelope_jobs WHERE job = {}",
        pool.dialect().ph(1)
    );
    Ok(
        on_pool!(pool, p => sqlx::query(sqlx::AssertSqlSafe(sql)).bind(job).execute(p).await?.rows_affected()),
    )
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::store::{KeyStore, SqliteKeyStore};

    /// A finished job of two chunks that scanned `scanned` rows in all.
    async fn finished_job(scanned: i64) -> JobPool {
        // One connection: each connection to `:memory:` is a database of its own.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        SqliteKeyStore::new(pool.clone()).migrate().await.unwrap();
        for (chunk, state, n) in [(0, "running", 0), (1, "done", scanned - 1), (2, "done", 1)] {
            sqlx::query(
                "INSERT INTO sqlx_envelope_jobs (job, chunk, kind, state, scanned) VALUES ('j', ?, 'reencrypt', ?, ?)",
            )
            .bind(chunk)
            .bind(state)
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
        }
        JobPool::Sqlite(pool)
    }

    /// Mark every chunk done, as the workers of a pass do.
    async fn finish_pass(pool: &JobPool) {
        let JobPool::Sqlite(p) = pool else {
            unreachable!()
        };
        sqlx::query("UPDATE sqlx_envelope_jobs SET state = 'done' WHERE chunk > 0")
            .execute(p)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_new_pass_is_a_compare_and_set_on_the_finished_job() {
        let pool = finished_job(10).await;
        // Two processes start on the finished job and see the same status.
        let seen = job_status(&pool, "j").await.unwrap();
        assert!(seen.is_done());
        assert_eq!((seen.scanned, seen.passes), (10, 0));

        // The first starts a pass: every chunk back to pending, counters kept.
        assert!(new_pass(&pool, "j", &seen).await.unwrap());
        let st = job_status(&pool, "j").await.unwrap();
        assert_eq!(
            (st.chunks, st.chunks_done, st.scanned, st.passes),
            (2, 0, 10, 1)
        );
        // The second joins it: no pass of its own, while it runs...
        assert!(!new_pass(&pool, "j", &seen).await.unwrap());
        // ...nor once it is over.
        finish_pass(&pool).await;
        assert!(!new_pass(&pool, "j", &seen).await.unwrap());
        let st = job_status(&pool, "j").await.unwrap();
        assert_eq!((st.chunks_done, st.passes), (2, 1));

        // A run that starts now sees the finished pass: it starts the next.
        assert!(new_pass(&pool, "j", &st).await.unwrap());
        let running = job_status(&pool, "j").await.unwrap();
        assert_eq!((running.chunks_done, running.passes), (0, 2));
        // A pass in progress is never followed by another, even by a caller
        // that saw its count.
        assert!(!new_pass(&pool, "j", &running).await.unwrap());
        assert_eq!(job_status(&pool, "j").await.unwrap().passes, 2);
    }
}
