//! The row job runner: re-encryption, column encryption and decryption.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::Row as _;
use tokio::sync::watch;

use super::checkpoint::{self, Chunk, JobSql, JobStatus};
use super::db::{Dialect, Ident, is_transient, key_id_bytes};
use super::plaintext::{self, Rendered};
use super::rowkey::{self, Arg, bind_arg};
use super::write::{Val, Write};
use super::{
    CancelToken, JobError, JobPool, JobResult, Progress, Target, Throttle, on_pool, verify,
};
use crate::context::{Context, RowId};
use crate::envelope::Envelope;
use crate::key::KeyId;
use crate::model::PlainValue;

/// How a job reads and writes a plaintext column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainKind {
    /// A text column (`TEXT`, `VARCHAR`): values are UTF-8 strings. With a
    /// typed [`super::ValueCodec`] (a model's date, number, UUID, JSON ...
    /// field), any column of that type, read and written through its text
    /// form.
    Text,
    /// A binary column (`BYTEA`, `BLOB`, `VARBINARY`).
    Bytes,
}

/// What a [`Job`] does to each row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobKind {
    /// Re-encrypt values sealed under any of these data keys with the active key.
    Reencrypt {
        /// The data keys to move away from (decrypt-only, not active).
        from: Vec<KeyId>,
    },
    /// Encrypt the plaintext column `plain` into the (NULL) target column.
    Encrypt {
        /// The plaintext source column.
        plain: Ident,
        /// Its type.
        kind: PlainKind,
    },
    /// Decrypt the target column into the (NULL) plaintext column `plain`.
    Decrypt {
        /// The plaintext destination column.
        plain: Ident,
        /// Its type.
        kind: PlainKind,
    },
    /// Fill the (NULL) blind-index column `index` from the target column's
    /// values: for rows written before the index existed, and for a new index
    /// version's column during an index-key rotation.
    Index {
        /// The index column.
        index: Ident,
    },
}

impl JobKind {
    fn name(&self) -> &'static str {
        match self {
            JobKind::Reencrypt { .. } => "reencrypt",
            JobKind::Encrypt { .. } => "encrypt",
            JobKind::Decrypt { .. } => "decrypt",
            JobKind::Index { .. } => "index",
        }
    }
}

/// Tuning of a [`Job`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobOptions {
    /// Rows per batch (one read, one transaction). Default 500.
    pub batch_size: usize,
    /// Rows per chunk, the unit of leasing between workers. Default 5,000.
    pub chunk_rows: u64,
    /// Concurrent chunk workers in this process. Default 1.
    pub concurrency: usize,
    /// At most this many rows per second in this process. Default unlimited.
    pub rate: Option<f64>,
    /// How long a claimed chunk stays leased without progress before another
    /// worker may take it over. Default 60 s.
    pub lease: Duration,
    /// This worker's id, unique among concurrent workers; a restarted worker
    /// with the same id takes its own leases back at once. Default
    /// `<hostname>-<pid>`.
    pub worker_id: String,
    /// The job's name in `sqlx_envelope_jobs`. Default derived from the kind,
    /// table, columns, keys and tenant, so every worker of one job agrees on it.
    pub job_name: Option<String>,
    /// Read and decrypt, write nothing (not even checkpoints).
    pub dry_run: bool,
    /// Forget the job's checkpoints and counters ([`super::reset_job`]) once
    /// its target is checked, and start over. Ignored on a dry run. Do not
    /// restart a job while other workers run it. Default false.
    pub restart: bool,
    /// Count the rows to do before starting (one scan), for progress totals.
    /// Default true.
    pub count_total: bool,
    /// Only rows of this tenant (as the model renders it: text as is, integers
    /// in decimal, UUIDs hyphenated). The target needs a tenant column.
    /// Default: every tenant.
    pub tenant: Option<String>,
}

impl Default for JobOptions {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        JobOptions {
            batch_size: 500,
            chunk_rows: 5_000,
            concurrency: 1,
            rate: None,
            lease: Duration::from_secs(60),
            worker_id: format!("{host}-{}", std::process::id()),
            job_name: None,
            dry_run: false,
            restart: false,
            count_total: true,
            tenant: None,
        }
    }
}

/// What a run of a [`Job`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobReport {
    /// The job's name.
    pub job: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Rows read by this run.
    pub scanned: u64,
    /// Rows written by this run (dry run: rows that would be written).
    pub written: u64,
    /// Rows skipped because the application changed them meanwhile.
    pub conflicts: u64,
    /// Rows that could not be processed (left unchanged).
    pub failed: u64,
    /// Chunks this run finished.
    pub chunks_done: u64,
    /// Rows still to do after the run (the verify count; for a re-encryption,
    /// rows still referencing the old keys).
    pub remaining: u64,
    /// The job across all workers and runs (`None` for a dry run).
    pub status: Option<JobStatus>,
    /// The first few rows this run could not process (at most
    /// [`FAILED_EXAMPLES`]), for one summary instead of a warning per row.
    pub failed_examples: Vec<FailedRow>,
}

/// How many failed rows a [`JobReport`] names.
pub const FAILED_EXAMPLES: usize = 5;

/// A row a job could not process and left unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedRow {
    /// The row's primary key, as [`RowId`]'s `Debug` prints it (integers and
    /// UUIDs in full, text and binary parts by length only).
    pub key: String,
    /// The column whose value failed.
    pub column: String,
    /// Why (an error message: no plaintext, no key material).
    pub error: String,
}

/// A resumable, multi-worker job over the rows of one table. See the
/// [module documentation](super).
#[derive(Debug)]
pub struct Job {
    pub(super) envelope: Envelope,
    pub(super) pool: JobPool,
    pub(super) target: Target,
    /// Every column the job reads and writes: `[target]`, or for a model
    /// re-encryption all encrypted columns of the model (`target` first).
    pub(super) columns: Vec<Target>,
    pub(super) kind: JobKind,
    pub(super) opts: JobOptions,
    progress: watch::Sender<Progress>,
    cancel: CancelToken,
    /// PostgreSQL: the SQL type of a typed plaintext column decrypt-out
    /// writes (cast from text), looked up once.
    pub(super) plain_sql_type: std::sync::OnceLock<String>,
    /// The blind index an index job computes, and its model's table.
    index: Option<(&'static str, &'static crate::index::IndexColumn)>,
    /// An index job's keyed HMAC per tenant.
    index_keyed: Mutex<Vec<(Option<String>, crate::index::Keyed)>>,
    /// The first failed rows of this run.
    failed_examples: Mutex<Vec<FailedRow>>,
}

/// One row read: its key, tenant and the columns the job reads.
struct JobRow {
    key: RowId,
    tenant: Option<String>,
    vals: Vec<Val>,
}

impl Job {
    fn new(envelope: Envelope, pool: JobPool, target: Target, kind: JobKind) -> Self {
        Job {
            envelope,
            pool,
            columns: vec![target.clone()],
            target,
            kind,
            opts: JobOptions::default(),
            progress: watch::channel(Progress::default()).0,
            cancel: CancelToken::new(),
            plain_sql_type: std::sync::OnceLock::new(),
            failed_examples: Mutex::new(Vec::new()),
            index: None,
            index_keyed: Mutex::new(Vec::new()),
        }
    }

    /// Re-encrypt the values of `target` sealed under any of `from` with the
    /// active data key of their scope.
    pub fn reencrypt(envelope: Envelope, pool: JobPool, target: Target, from: Vec<KeyId>) -> Self {
        Self::new(envelope, pool, target, JobKind::Reencrypt { from })
    }

    /// Re-encrypt every encrypted column of model `M` in one pass: each row is
    /// read once and all of its values sealed under any of `from` move to the
    /// active data key in one compare-and-swap update (a row whose value in
    /// any column fails to open is left whole and counted as failed).
    pub fn reencrypt_model<M: crate::model::Encrypted>(
        envelope: Envelope,
        pool: JobPool,
        from: Vec<KeyId>,
    ) -> JobResult<Self> {
        Self::reencrypt_columns(envelope, pool, Target::all_for_model::<M>()?, from)
    }

    /// Re-encrypt several encrypted columns of one table in one pass (see
    /// [`Job::reencrypt_model`]): the targets must share table, key and
    /// tenant column.
    pub fn reencrypt_columns(
        envelope: Envelope,
        pool: JobPool,
        targets: Vec<Target>,
        from: Vec<KeyId>,
    ) -> JobResult<Self> {
        let Some(first) = targets.first() else {
            return Err(JobError::Invalid("no columns to re-encrypt".into()));
        };
        for t in &targets[1..] {
            if t.table != first.table || t.key != first.key || t.tenant != first.tenant {
                return Err(JobError::Invalid(format!(
                    "{t} and {first} differ in table, primary key or tenant column: one pass re-encrypts the columns of one table"
                )));
            }
        }
        for (i, t) in targets.iter().enumerate() {
            if targets[..i].iter().any(|u| u.column == t.column) {
                return Err(JobError::Invalid(format!("{t} is listed twice")));
            }
        }
        let mut job = Self::new(envelope, pool, first.clone(), JobKind::Reencrypt { from });
        job.columns = targets;
        Ok(job)
    }

    /// Encrypt the plaintext column `plain` of `target.table` into
    /// `target.column` (which must exist, nullable; rows where it is already set,
    /// e.g. by dual writes, are left alone).
    pub fn encrypt_column(
        envelope: Envelope,
        pool: JobPool,
        target: Target,
        plain: &str,
        kind: PlainKind,
    ) -> JobResult<Self> {
        let plain = Ident::new(plain)?;
        Ok(Self::new(
            envelope,
            pool,
            target,
            JobKind::Encrypt { plain, kind },
        ))
    }

    /// Decrypt `target.column` into the plaintext column `plain` (which must
    /// exist, nullable): the way back out of the library.
    pub fn decrypt_column(
        envelope: Envelope,
        pool: JobPool,
        target: Target,
        plain: &str,
        kind: PlainKind,
    ) -> JobResult<Self> {
        let plain = Ident::new(plain)?;
        Ok(Self::new(
            envelope,
            pool,
            target,
            JobKind::Decrypt { plain, kind },
        ))
    }

    /// Fill blind index `index` (a column of `M::INDEXES`) of model `M` for
    /// every row whose indexed value is set and whose index is NULL: each
    /// value is opened, prepared as the index says and hashed under the
    /// row's tenant, and the index written with a compare-and-swap on the
    /// encrypted value (a row the application rewrote meanwhile already has
    /// its index). Resumable and multi-worker like every job.
    pub fn index_column<M: crate::model::Encrypted>(
        envelope: Envelope,
        pool: JobPool,
        index: &str,
    ) -> JobResult<Self> {
        Self::index_column_of(envelope, pool, M::DESCRIPTION, index)
    }

    /// [`Job::index_column`] from a model's description (what the CLI's
    /// `index --model` uses).
    pub fn index_column_of(
        envelope: Envelope,
        pool: JobPool,
        model: &'static crate::model::ModelDescription,
        index: &str,
    ) -> JobResult<Self> {
        let (_, spec) = crate::index::of_description(model, index)?;
        spec.spec(model.table)?;
        let [field] = spec.fields else {
            return Err(JobError::Invalid(format!(
                "{index} is a compound index over {}: an index job fills one-field indexes; fill a compound index by re-saving its rows (update_fields on one of its fields)",
                spec.fields.join(", ")
            )));
        };
        let target = Target::from_description(model, field)?;
        let mut job = Self::new(
            envelope,
            pool,
            target,
            JobKind::Index {
                index: Ident::new(spec.column)?,
            },
        );
        job.index = Some((model.table, spec));
        Ok(job)
    }

    /// Set the options.
    pub fn options(mut self, opts: JobOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The options.
    pub fn opts(&self) -> &JobOptions {
        &self.opts
    }

    /// What the job does.
    pub fn kind(&self) -> &JobKind {
        &self.kind
    }

    /// The job's name in `sqlx_envelope_jobs`.
    pub fn name(&self) -> String {
        if let Some(n) = &self.opts.job_name {
            return n.clone();
        }
        let t = &self.target;
        let name = match &self.kind {
            JobKind::Reencrypt { from } => {
                let mut ids: Vec<u64> = from.iter().map(|k| k.get()).collect();
                ids.sort_unstable();
                let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
                let cols: Vec<&str> = self.columns.iter().map(|c| c.column.as_str()).collect();
                format!("reencrypt:{}.{}:{}", t.table, cols.join("+"), ids.join(","))
            }
            JobKind::Encrypt { plain, .. } => {
                format!("encrypt:{}.{}->{}", t.table, plain, t.column)
            }
            JobKind::Decrypt { plain, .. } => {
                format!("decrypt:{}.{}->{}", t.table, t.column, plain)
            }
            JobKind::Index { index } => {
                format!("index:{}.{}->{}", t.table, t.column, index)
            }
        };
        match &self.opts.tenant {
            Some(tenant) => format!("{name}@tenant={tenant}"),
            None => name,
        }
    }

    /// A receiver of this process's progress, updated after every batch.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The token that cancels this job.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    fn spec(&self) -> String {
        let t = &self.target;
        let mut v = serde_json::json!({
            "table": t.table.as_str(), "column": t.column.as_str(),
            "context_table": t.context_table, "context_column": t.context_column,
        });
        // A single integer key without tenants keeps the description of
        // earlier releases, so their checkpointed jobs resume.
        if t.key.len() == 1 && t.key[0].kind == crate::model::PkKind::Int {
            v["pk"] = serde_json::json!(t.key[0].name.as_str());
        } else {
            v["key"] = serde_json::json!(t.key_spec());
        }
        if self.columns.len() > 1 {
            v["columns"] = self
                .columns
                .iter()
                .map(|c| serde_json::json!([c.column.as_str(), c.context_column]))
                .collect();
        }
        if let Some(tb) = &t.tenant {
            v["tenant_column"] = serde_json::json!(format!("{}:{}", tb.column, tb.kind.name()));
        }
        if let Some(only) = &self.opts.tenant {
            v["only_tenant"] = serde_json::json!(only);
        }
        if let (JobKind::Encrypt { .. } | JobKind::Decrypt { .. }, Some(codec)) =
            (&self.kind, t.codec.describe())
        {
            v["codec"] = serde_json::json!(codec);
        }
        match &self.kind {
            JobKind::Reencrypt { from } => {
                let mut ids: Vec<u64> = from.iter().map(|k| k.get()).collect();
                ids.sort_unstable();
                v["from"] = serde_json::json!(ids);
            }
            JobKind::Encrypt { plain, .. } | JobKind::Decrypt { plain, .. } => {
                v["plain"] = serde_json::json!(plain.as_str());
            }
            JobKind::Index { index } => {
                v["index"] = serde_json::json!(index.as_str());
                if let Some((_, i)) = self.index {
                    v["index_version"] = serde_json::json!(i.version);
                }
            }
        }
        v.to_string()
    }

    /// `(columns read, WHERE filter selecting rows still to do, its binds)`;
    /// placeholders from `first_ph`.
    fn filter(&self, d: Dialect, first_ph: usize) -> JobResult<(Vec<String>, String, Vec<Arg>)> {
        let col = d.quote(&self.target.column);
        let (read, mut filter, mut args) = match &self.kind {
            JobKind::Reencrypt { from } => {
                let mut args = Vec::new();
                let mut any = Vec::new();
                let mut read = Vec::new();
                for c in &self.columns {
                    let c = d.quote(&c.column);
                    let phs: Vec<String> = (0..from.len())
                        .map(|i| d.ph(first_ph + args.len() + i))
                        .collect();
                    any.push(format!("{} IN ({})", d.key_id_expr(&c), phs.join(", ")));
                    args.extend(from.iter().map(|k| Arg::Bytes(key_id_bytes(*k))));
                    read.push(c);
                }
                let filter = match any.len() {
                    1 => any.remove(0),
                    _ => format!("({})", any.join(" OR ")),
                };
                (read, filter, args)
            }
            JobKind::Encrypt { plain, .. } => {
                let plain = d.quote(plain);
                (
                    vec![plaintext::read_expr(d, &self.target.codec, &plain)],
                    format!("{col} IS NULL AND {plain} IS NOT NULL"),
                    vec![],
                )
            }
            JobKind::Decrypt { plain, .. } => {
                let plain = d.quote(plain);
                (
                    vec![col.clone()],
                    format!("{col} IS NOT NULL AND {plain} IS NULL"),
                    vec![],
                )
            }
            JobKind::Index { index } => {
                let index = d.quote(index);
                (
                    vec![col.clone()],
                    format!("{col} IS NOT NULL AND {index} IS NULL"),
                    vec![],
                )
            }
        };
        if let Some(only) = &self.opts.tenant {
            let tb = self.tenant_binding()?;
            filter = format!(
                "{filter} AND {}",
                rowkey::tenant_eq(d, tb, first_ph + args.len())
            );
            args.push(rowkey::tenant_arg(d, tb, only)?);
        }
        Ok((read, filter, args))
    }

    fn read_kind(&self) -> PlainKind {
        match &self.kind {
            JobKind::Encrypt { kind, .. } => *kind,
            _ => PlainKind::Bytes,
        }
    }

    /// A decrypt-out batch the database refused: its message may quote a
    /// decrypted value (a date or number the column would not take), so only
    /// its code is kept, with what to check.
    fn redacted(&self, e: JobError) -> JobError {
        match (&self.kind, e) {
            (JobKind::Decrypt { plain, .. }, JobError::Db(db)) => {
                let code = db
                    .as_database_error()
                    .and_then(|d| d.code().map(|c| c.into_owned()))
                    .unwrap_or_else(|| "no code".into());
                JobError::Invalid(format!(
                    "the database refused a batch of decrypted values for {}.{plain} (error code \
                     {code}; its message is not shown, as it may quote a value): check that the \
                     column's type takes the values' plaintext type (--plaintext-type)",
                    self.target.table
                ))
            }
            (_, e) => e,
        }
    }

    /// Count the rows still to do (for a re-encryption: rows referencing the
    /// old keys). One scan of the table.
    pub async fn remaining(&self) -> JobResult<u64> {
        let d = self.pool.dialect();
        let (_, filter, args) = self.filter(d, 1)?;
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {filter}",
            d.quote(&self.target.table)
        );
        let n: i64 = on_pool!(&self.pool, p => {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
            for a in &args {
                q = bind_arg!(q, a);
            }
            q.fetch_one(p).await?
        });
        Ok(n as u64)
    }

    /// Run the job until every chunk is done (by this process or others), or
    /// until cancelled ([`JobError::Cancelled`], progress kept).
    pub async fn run(&self) -> JobResult<JobReport> {
        let result = self.run_inner().await;
        self.progress.send_modify(|p| p.finished = true);
        result
    }

    async fn run_inner(&self) -> JobResult<JobReport> {
        self.precheck().await?;
        let name = self.name();
        // Only once the target is checked: a refused job keeps its progress.
        if self.opts.restart && !self.opts.dry_run {
            checkpoint::reset_job(&self.pool, &name).await?;
        }
        // Read before this run registers anything: only a job that was already
        // finished when this run started gets a new pass. A run that starts
        // while the pass is in progress (a second worker that joins late)
        // belongs to that pass, even if the other workers finish it first.
        // (A dry run registers nothing and reads no job state.)
        let finished_at_start = if self.opts.dry_run {
            None
        } else {
            Some(retry(|| checkpoint::job_status(&self.pool, &name)).await?)
                .filter(JobStatus::is_done)
        };
        let mut total = None;
        if self.opts.count_total {
            let n = self.remaining().await?;
            total = Some(n);
            self.progress.send_modify(|p| p.total = Some(n));
        }
        if self.opts.dry_run {
            return self.dry_run(name).await;
        }
        for c in &self.columns {
            verify::register_column(&self.pool, c).await?;
        }
        let created = checkpoint::plan(
            &self.pool,
            &name,
            self.kind.name(),
            &self.spec(),
            &self.target,
            self.opts.chunk_rows,
        )
        .await?;
        // A finished job run again makes a new pass over the table for rows
        // that appeared (or failed) since, keeping its counters.
        if let Some(seen) = finished_at_start.filter(|_| !created) {
            let todo = match total {
                Some(n) => n,
                None => self.remaining().await?,
            };
            if todo > 0 && retry(|| checkpoint::new_pass(&self.pool, &name, &seen)).await? {
                tracing::info!(target: "sqlx_envelope::jobs", job = %name, rows = todo, "job was finished; new pass for rows that appeared since");
            }
        }
        let sql = JobSql::new(self.pool.dialect());
        let throttle = Throttle::new(self.opts.rate);
        let counts = Mutex::new(Progress::default());
        let workers =
            (0..self.opts.concurrency).map(|i| self.worker(i, &name, &sql, &throttle, &counts));
        let results = futures_util::future::join_all(workers).await;
        for r in results {
            r?;
        }
        let c = counts.lock().expect("progress lock").clone();
        Ok(JobReport {
            job: name.clone(),
            dry_run: false,
            scanned: c.scanned,
            written: c.written,
            conflicts: c.conflicts,
            failed: c.failed,
            chunks_done: c.chunks_done,
            remaining: self.remaining().await?,
            status: Some(checkpoint::job_status(&self.pool, &name).await?),
            failed_examples: self.take_failed_examples(),
        })
    }

    async fn worker(
        &self,
        index: usize,
        job: &str,
        sql: &JobSql,
        throttle: &Throttle,
        counts: &Mutex<Progress>,
    ) -> JobResult<()> {
        let owner = format!("{}/{index}", self.opts.worker_id);
        let lease_ms = super::lease_ms(self.opts.lease);
        loop {
            if self.cancel.is_cancelled() {
                return Err(JobError::Cancelled);
            }
            let Some(chunk) =
                retry(|| checkpoint::claim(&self.pool, sql, job, &owner, lease_ms, index)).await?
            else {
                // Nothing claimable. Chunks leased by other workers may remain:
                // wait for them to finish, or for their leases to expire (a dead
                // worker) and take them over, so that a run returns only when
                // the whole job is done.
                let st = retry(|| checkpoint::job_status(&self.pool, job)).await?;
                if st.chunks_done >= st.chunks {
                    return Ok(());
                }
                let pause =
                    (self.opts.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
                self.cancel.sleep(pause).await;
                continue;
            };
            tracing::debug!(target: "sqlx_envelope::jobs", job, chunk = chunk.chunk, owner, "claimed chunk");
            self.run_chunk(chunk, job, &owner, sql, throttle, counts)
                .await?;
        }
    }

    async fn run_chunk(
        &self,
        chunk: Chunk,
        job: &str,
        owner: &str,
        sql: &JobSql,
        throttle: &Throttle,
        counts: &Mutex<Progress>,
    ) -> JobResult<()> {
        let hi = chunk.hi.clone();
        let mut after = chunk.after.clone();
        loop {
            if self.cancel.is_cancelled() {
                checkpoint::finish_chunk(&self.pool, &sql.release, job, chunk.chunk, owner).await?;
                return Err(JobError::Cancelled);
            }
            let rows = retry(|| self.fetch(after.as_ref(), hi.as_ref())).await?;
            let Some(last) = rows.last().map(|r| r.key.clone()) else {
                checkpoint::finish_chunk(&self.pool, &sql.done, job, chunk.chunk, owner).await?;
                let mut c = counts.lock().expect("progress lock");
                c.chunks_done += 1;
                self.publish(&c);
                return Ok(());
            };
            let scanned = rows.len() as u64;
            let (writes, failed) = self.transform(rows, false).await?;
            let outcome = retry(|| {
                self.commit(
                    &writes,
                    sql,
                    job,
                    chunk.chunk,
                    owner,
                    &last,
                    scanned,
                    failed,
                )
            })
            .await
            .map_err(|e| self.redacted(e))?;
            let Some((written, conflicts)) = outcome else {
                tracing::warn!(target: "sqlx_envelope::jobs", job, chunk = chunk.chunk, owner, "lease lost (another worker took the chunk over); batch rolled back");
                return Ok(());
            };
            after = Some(last);
            {
                let mut c = counts.lock().expect("progress lock");
                c.scanned += scanned;
                c.written += written;
                c.conflicts += conflicts;
                c.failed += failed;
                self.publish(&c);
            }
            throttle.pace(scanned, &self.cancel).await;
        }
    }

    fn publish(&self, c: &Progress) {
        self.progress.send_modify(|p| {
            p.scanned = c.scanned;
            p.written = c.written;
            p.conflicts = c.conflicts;
            p.failed = c.failed;
            p.chunks_done = c.chunks_done;
        });
    }

    /// Read the next batch after `after` (exclusive) up to `hi` (inclusive),
    /// in key order.
    async fn fetch(&self, after: Option<&RowId>, hi: Option<&RowId>) -> JobResult<Vec<JobRow>> {
        let d = self.pool.dialect();
        let key = &self.target.key;
        let mut conds = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        if let Some(a) = after {
            conds.push(rowkey::compare(d, key, ">", args.len() + 1));
            args.extend(rowkey::key_args(d, a));
        }
        if let Some(h) = hi {
            conds.push(rowkey::compare(d, key, "<=", args.len() + 1));
            args.extend(rowkey::key_args(d, h));
        }
        let (read, filter, fargs) = self.filter(d, args.len() + 1)?;
        conds.push(filter);
        args.extend(fargs);
        let mut select = rowkey::select_key(d, key);
        let tenant = self.target.tenant.as_ref().map(|t| {
            select.push(rowkey::select_tenant(d, t));
            (select.len() - 1, t)
        });
        let first_val = select.len();
        let n_vals = read.len();
        select.extend(read);
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}",
            select.join(", "),
            d.quote(&self.target.table),
            conds.join(" AND "),
            rowkey::key_list(d, key),
            self.opts.batch_size
        );
        let text = self.read_kind() == PlainKind::Text;
        Ok(on_pool!(&self.pool, p => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for a in &args {
                q = bind_arg!(q, a);
            }
            let rows = q.fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(JobRow {
                    key: rowkey::read_key(&r, 0, key)?,
                    tenant: match tenant {
                        Some((i, t)) => rowkey::read_tenant(&r, i, t)?,
                        None => None,
                    },
                    vals: (first_val..first_val + n_vals)
                        .map(|i| -> Result<Val, sqlx::Error> {
                            Ok(if text {
                                Val::Text(r.try_get(i)?)
                            } else {
                                r.try_get::<Option<Vec<u8>>, _>(i)?.map_or(Val::Null, Val::Bytes)
                            })
                        })
                        .collect::<Result<_, _>>()?,
                });
            }
            out
        }))
    }

    /// Compute the new values of each row. Rows with a value that does not
    /// open are counted as failed and left alone (every column of the row); a
    /// keyring outage fails the batch. A dry run (`dry`) only opens values: it
    /// seals nothing, so it mints no data key.
    async fn transform(&self, rows: Vec<JobRow>, dry: bool) -> JobResult<(Vec<Write>, u64)> {
        let mut writes = Vec::with_capacity(rows.len());
        let mut failed = 0;
        for JobRow {
            key: row,
            tenant,
            vals: old,
        } in rows
        {
            let mut new = Vec::with_capacity(old.len());
            let mut error = None;
            for (c, val) in self.columns.iter().zip(&old) {
                let mut ctx = Context::new(&c.context_table, &c.context_column, &row);
                if let Some(tenant) = &tenant {
                    ctx = ctx.with_tenant(tenant);
                }
                match self.transform_value(c, &ctx, val, dry).await {
                    Ok(v) => new.push(v),
                    Err(JobError::Envelope(e)) if !e.is_retryable() => {
                        error = Some((c, e));
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            match error {
                None => writes.push(Write { key: row, new, old }),
                Some((c, e)) => {
                    failed += 1;
                    tracing::debug!(target: "sqlx_envelope::jobs", table = %c.table, column = %c.column, row = ?row, error = %e, "row left unchanged");
                    let mut ex = self.failed_examples.lock().expect("failed rows lock");
                    if ex.len() < FAILED_EXAMPLES {
                        ex.push(FailedRow {
                            key: format!("{row:?}"),
                            column: c.column.to_string(),
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok((writes, failed))
    }

    /// The new value of one column of a row (unchanged for a column of a
    /// model re-encryption that is NULL or not on a key being retired).
    async fn transform_value(
        &self,
        c: &Target,
        ctx: &Context<'_>,
        old: &Val,
        dry: bool,
    ) -> JobResult<Val> {
        match (&self.kind, old) {
            (JobKind::Reencrypt { .. }, Val::Null) => Ok(Val::Null),
            (JobKind::Reencrypt { from }, Val::Bytes(v)) => {
                let on_old_key = crate::format::parse_header(v)
                    .map(|h| from.contains(&h.key_id))
                    .unwrap_or(true);
                if !on_old_key {
                    return Ok(old.clone());
                }
                let pt = self.envelope.open_bytes(ctx, v).await?;
                if dry {
                    return Ok(Val::Null);
                }
                let sealed = self.envelope.seal(ctx, &pt).await?;
                if from.contains(&sealed.key_id()) {
                    return Err(JobError::Invalid(format!(
                        "the active key of {c} is {}, one of the keys being retired; retire it first",
                        sealed.key_id()
                    )));
                }
                Ok(Val::Bytes(sealed.into_bytes()))
            }
            (JobKind::Encrypt { .. }, _) => {
                let bytes = self.encode_plain(old)?;
                if dry {
                    return Ok(Val::Null);
                }
                let sealed = self.envelope.seal(ctx, &bytes).await?;
                Ok(Val::Bytes(sealed.into_bytes()))
            }
            (JobKind::Decrypt { kind, .. }, Val::Bytes(v)) => {
                let pt = self.envelope.open_bytes(ctx, v).await?;
                Ok(self.decode_plain(pt, *kind)?)
            }
            (JobKind::Index { .. }, Val::Bytes(v)) => {
                let (table, index) = self.index.expect("an index job has its index");
                let pt = self.envelope.open_bytes(ctx, v).await?;
                // The field's text as `IndexText` gives it to the derive.
                let value = c.codec.decode(pt.into_zeroizing())?;
                if matches!(value, PlainValue::Null) {
                    return Ok(Val::Null);
                }
                let Some(text) = plaintext::index_text(&value) else {
                    return Err(JobError::Invalid(format!(
                        "{c} holds values a blind index cannot read (text, integers, bool, char, UUID and dates can be indexed)"
                    )));
                };
                if dry {
                    return Ok(Val::Null);
                }
                let keyed = self.index_keyed(table, index, ctx.tenant).await?;
                Ok(match index.value_with(&keyed, &[Some(text.as_str())]) {
                    Some(v) => Val::Bytes(v.as_bytes().to_vec()),
                    None => Val::Null,
                })
            }
            _ => Err(crate::Error::Config("unexpected column type".into()).into()),
        }
    }

    /// The bytes a backfill seals for a plaintext value: raw, or framed by the
    /// target's codec exactly as the model frames it.
    fn encode_plain(&self, val: &Val) -> crate::Result<zeroize::Zeroizing<Vec<u8>>> {
        let codec = &self.target.codec;
        let Some(id) = codec.codec() else {
            return match val {
                Val::Text(s) => Ok(zeroize::Zeroizing::new(s.as_bytes().to_vec())),
                Val::Bytes(b) => Ok(zeroize::Zeroizing::new(b.clone())),
                Val::Null => Err(crate::Error::codec(
                    "PlainValue",
                    "NULL is not backfilled (the row keeps SQL NULL)",
                )),
            };
        };
        let value = match val {
            Val::Text(s) if codec.reads_text_form() => plaintext::parse_text(id, s)?,
            Val::Text(s) => PlainValue::Text(zeroize::Zeroizing::new(s.clone())),
            Val::Bytes(b) => PlainValue::Bytes(zeroize::Zeroizing::new(b.clone())),
            Val::Null => PlainValue::Null,
        };
        match codec.encode(&value)? {
            Some(buf) => Ok(buf.into_inner()),
            None => Err(crate::Error::codec(
                "PlainValue",
                "NULL is not backfilled (the row keeps SQL NULL)",
            )),
        }
    }

    /// What decrypt-out writes for an opened value.
    fn decode_plain(&self, pt: crate::Plaintext, kind: PlainKind) -> crate::Result<Val> {
        let not_utf8 = || crate::Error::codec("String", "decrypted value is not UTF-8");
        if self.target.codec.codec().is_none() {
            return match kind {
                PlainKind::Bytes => Ok(Val::Bytes(pt.into_vec())),
                PlainKind::Text => String::from_utf8(pt.into_vec())
                    .map(Val::Text)
                    .map_err(|_| not_utf8()),
            };
        }
        let value = self.target.codec.decode(pt.into_zeroizing())?;
        match plaintext::render(self.pool.dialect(), &value) {
            None => Err(crate::Error::codec(
                "PlainValue",
                "a hidden NULL is not written back (the plaintext column stays NULL)",
            )),
            Some(r) => Ok(match (r, kind) {
                (Rendered::Text(s), PlainKind::Text) => Val::Text(s.to_string()),
                (Rendered::Text(s), PlainKind::Bytes) => Val::Bytes(s.as_bytes().to_vec()),
                (Rendered::Bytes(b), PlainKind::Bytes) => Val::Bytes(b.to_vec()),
                (Rendered::Bytes(b), PlainKind::Text) => {
                    Val::Text(String::from_utf8(b.to_vec()).map_err(|_| not_utf8())?)
                }
            }),
        }
    }

    async fn dry_run(&self, name: String) -> JobResult<JobReport> {
        let mut report = JobReport {
            job: name,
            dry_run: true,
            ..JobReport::default()
        };
        let mut after = None;
        loop {
            if self.cancel.is_cancelled() {
                return Err(JobError::Cancelled);
            }
            let rows = retry(|| self.fetch(after.as_ref(), None)).await?;
            let Some(last) = rows.last().map(|r| r.key.clone()) else {
                break;
            };
            report.scanned += rows.len() as u64;
            let (writes, failed) = self.transform(rows, true).await?;
            report.written += writes.len() as u64;
            report.failed += failed;
            after = Some(last);
            self.progress.send_modify(|p| {
                p.scanned = report.scanned;
                p.failed = report.failed;
            });
        }
        report.remaining = report.scanned;
        report.failed_examples = self.take_failed_examples();
        Ok(report)
    }

    /// An index job's keyed HMAC for `tenant`: one key lookup and key setup
    /// per tenant for the whole job, not one per row.
    async fn index_keyed(
        &self,
        table: &'static str,
        index: &crate::index::IndexColumn,
        tenant: Option<&str>,
    ) -> JobResult<crate::index::Keyed> {
        let cached = self
            .index_keyed
            .lock()
            .expect("index key lock")
            .iter()
            .find(|(t, _)| t.as_deref() == tenant)
            .map(|(_, k)| k.clone());
        if let Some(k) = cached {
            return Ok(k);
        }
        let k = index.keyed(&self.envelope, table, tenant).await?;
        self.index_keyed
            .lock()
            .expect("index key lock")
            .push((tenant.map(str::to_owned), k.clone()));
        Ok(k)
    }

    fn take_failed_examples(&self) -> Vec<FailedRow> {
        std::mem::take(&mut *self.failed_examples.lock().expect("failed rows lock"))
    }
}

/// Retry `f` on transient database errors (deadlocks, lock timeouts, SQLite
/// busy), up to 8 attempts with a growing pause.
pub(crate) async fn retry<T, F, Fut>(mut f: F) -> JobResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = JobResult<T>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(JobError::Db(e)) if attempt < 8 && is_transient(&e) => {
                attempt += 1;
                tracing::debug!(target: "sqlx_envelope::jobs", attempt, error = %e, "transient database error; retrying");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt * attempt))).await;
            }
            Err(JobError::Envelope(crate::Error::Store(e))) if attempt < 8 && is_transient(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt * attempt))).await;
            }
            other => return other,
        }
    }
}
