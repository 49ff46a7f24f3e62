//! Jobs over live data: encrypting an existing column, re-encrypting rows under
//! a retired data key, re-wrapping data keys under a new master key, and the
//! verify passes that gate every destructive step.
//!
//! Rotation is two different jobs:
//!
//! - **Master key replaced** ([`rewrap`]): every key the master key wraps
//!   (branch and index keys, and data keys of release 0.1 that have no branch
//!   key) is re-wrapped under the new master key ([`crate::Keyring::rewrap`],
//!   KMS ReEncrypt or unwrap/wrap locally). O(number of branch keys) keyring
//!   calls: data keys and data rows are untouched. The old blob is kept until
//!   the new one unwrapped once.
//! - **Data key retired** ([`Job::reencrypt`]): rows whose values reference the
//!   retired key ids are found by the key id at its fixed offset, decrypted,
//!   sealed under the active key and written back with a compare-and-swap
//!   `UPDATE ... WHERE <key> = ? AND col = <old value>`, so a concurrent application
//!   write always wins. Progress is checkpointed in `sqlx_envelope_jobs` in the
//!   same transaction as the rows it covers, so a killed run resumes exactly
//!   where it stopped, and several workers (tasks or processes) share the table
//!   by leasing primary-key ranges ("chunks"). [`Job::reencrypt_model`] moves
//!   every encrypted column of a model in the same pass: one read and one
//!   compare-and-swap update per row, for all of its columns.
//!
//! Encrypting an existing plaintext column ([`Job::encrypt_column`]), its
//! transition reads ([`transition`]) and the guarded `DROP COLUMN`
//! ([`transition::drop_plaintext`]) follow the phases described in
//! `docs/jobs.md`; [`Job::decrypt_column`] is the way back out.
//!
//! Any primary key a model can have works: integer, UUID, text or binary,
//! one column or several ([`Target::key`]); keyset pagination and the chunks
//! workers lease are by the whole key, and checkpoints store it in canonical
//! form. With a tenant column ([`Target::tenant`]) each row's tenant is bound
//! into its values and new values go under that tenant's keys;
//! [`JobOptions::tenant`] limits a job to one tenant.
//! Nothing here logs or reports plaintext or key material: progress carries
//! counts, errors carry key ids and primary keys at most.

mod check;
mod checkpoint;
mod db;
mod plaintext;
pub mod rewrap;
mod rowkey;
mod run;
pub mod transition;
pub mod verify;
mod write;

pub use checkpoint::{JobStatus, job_status, reset_job};
pub use db::{Dialect, Ident, JobPool};
pub use plaintext::ValueCodec;
pub use rowkey::{PkColumn, TenantBinding, parse_pk_spec, parse_tenant_spec};
pub use run::{FAILED_EXAMPLES, FailedRow, Job, JobKind, JobOptions, JobReport, PlainKind};
pub use verify::{
    ColumnStatus, DEFAULT_DESTROY_SETTLE, DestroyOptions, Destroyed, KeyCounts, KeysOpenReport,
    LEGACY_SEAL_HORIZON, TenantStatus, count_by_key, count_by_tenant_key, count_rows_on,
    destroy_key, register_column, registered_columns, verify_keys_open,
};

pub(crate) use db::on_pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::key::KeyId;

/// What a job can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The envelope (keyring, key store, a value) failed.
    #[error(transparent)]
    Envelope(#[from] crate::Error),
    /// The database failed.
    #[error("database error: {0}{hint}", hint = crate::error::store_hint(.0))]
    Db(#[from] sqlx::Error),
    /// An argument was invalid (an identifier, an option, a key id).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// A destructive step was refused because rows still depend on what it
    /// would remove (a data key, a plaintext column).
    #[error("refused: {rows} row(s) still {what}")]
    RowsRemain {
        /// How many rows.
        rows: u64,
        /// What they still depend on.
        what: String,
    },
    /// Destroy was refused because a process may still seal under the key: its
    /// seal horizon (plus the settle time) has not passed by the store's clock.
    #[error(
        "data key {key} may still be sealing in another process: destroy is possible in {}s, after its seal horizon; re-encrypt meanwhile and retry then (override with --unsafe-skip-seal-horizon only if every process that could seal under it is stopped)",
        wait.as_secs().max(1)
    )]
    SealHorizon {
        /// The key.
        key: KeyId,
        /// How long until destroy is possible.
        wait: Duration,
    },
    /// The job was cancelled; its progress is checkpointed.
    #[error("cancelled; progress is checkpointed and the job resumes where it stopped")]
    Cancelled,
}

/// Result of a job operation.
pub type JobResult<T> = std::result::Result<T, JobError>;

/// The encrypted column a job works on: table, primary key (one column or
/// several, of any kind a model key can have), optional tenant column, and the
/// encrypted column, plus the names bound into each value's context (by
/// default the SQL names; override them when the application's
/// [`crate::Context`] uses other names, e.g. before renaming `email_enc` to
/// `email`). Build it from a model with [`Target::for_model`] so that the job
/// binds and encodes values exactly as the model does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The table.
    pub table: Ident,
    /// Its primary-key columns, in key order.
    pub key: Vec<PkColumn>,
    /// The tenant column, if rows are tenant-bound.
    pub tenant: Option<TenantBinding>,
    /// The encrypted column (a binary column: `BYTEA`, `BLOB`, `VARBINARY`).
    pub column: Ident,
    /// The table name in each value's context.
    pub context_table: String,
    /// The column name in each value's context.
    pub context_column: String,
    /// How plaintext values are encoded before sealing (backfill) and after
    /// opening (decrypt-out, verify): raw by default, the model's own codec
    /// with [`Target::for_model`].
    pub codec: ValueCodec,
}

impl Target {
    /// A target with a single integer primary key column `pk` and no tenant,
    /// whose context names are its SQL names (see [`Target::key`] and
    /// [`Target::tenant`] for other shapes). Fails on an identifier that is not
    /// `[A-Za-z_][A-Za-z0-9_]*`.
    pub fn new(table: &str, pk: &str, column: &str) -> JobResult<Self> {
        let key = vec![PkColumn {
            name: Ident::new(pk)?,
            kind: crate::model::PkKind::Int,
        }];
        Self::keyed(table, key, column)
    }

    /// A target with primary key `key` (e.g. from
    /// [`parse_pk_spec`]`("tenant_id:int,id:uuid")`) and no tenant, whose
    /// context names are its SQL names.
    pub fn keyed(table: &str, key: Vec<PkColumn>, column: &str) -> JobResult<Self> {
        Target {
            table: Ident::new(table)?,
            key: Vec::new(),
            tenant: None,
            column: Ident::new(column)?,
            context_table: table.to_owned(),
            context_column: column.to_owned(),
            codec: ValueCodec::Raw,
        }
        .key(key)
    }

    /// The target for encrypted column `column` of model `M`: its table, key
    /// columns and kinds, tenant column and context names, exactly as the
    /// derive describes them, so values the job writes open through the model
    /// and the other way round.
    pub fn for_model<M: crate::model::Encrypted>(column: &str) -> JobResult<Self> {
        Self::from_description(M::DESCRIPTION, column)
    }

    /// One target per encrypted column of model `M`, in the model's field
    /// order (for [`Job::reencrypt_model`], verify and status of a whole model).
    pub fn all_for_model<M: crate::model::Encrypted>() -> JobResult<Vec<Self>> {
        Self::all_from_description(M::DESCRIPTION)
    }

    /// [`Target::all_for_model`] from a model's description.
    pub fn all_from_description(
        model: &'static crate::model::ModelDescription,
    ) -> JobResult<Vec<Self>> {
        model
            .encrypted
            .iter()
            .map(|c| Self::from_description(model, c.column))
            .collect()
    }

    /// [`Target::for_model`] from a model's description.
    pub fn from_description(
        model: &'static crate::model::ModelDescription,
        column: &str,
    ) -> JobResult<Self> {
        let col = model.encrypted_column(column).ok_or_else(|| {
            JobError::Invalid(format!(
                "model {} has no encrypted column {column:?} (encrypted: {})",
                model.name,
                model
                    .encrypted
                    .iter()
                    .map(|c| c.column)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(Target {
            table: Ident::new(model.table)?,
            key: model
                .key
                .iter()
                .map(|k| {
                    Ok(PkColumn {
                        name: Ident::new(k.name)?,
                        kind: k.kind,
                    })
                })
                .collect::<JobResult<_>>()?,
            tenant: model
                .tenant
                .map(|t| {
                    Ok::<_, JobError>(TenantBinding {
                        column: Ident::new(t.name)?,
                        kind: t.kind,
                    })
                })
                .transpose()?,
            column: Ident::new(col.column)?,
            context_table: model.table.to_owned(),
            context_column: col.column.to_owned(),
            codec: ValueCodec::Model(col),
        })
    }

    /// Use these primary-key columns, e.g. from
    /// [`parse_pk_spec`]`("tenant_id:int,id:uuid")`.
    pub fn key(mut self, key: Vec<PkColumn>) -> JobResult<Self> {
        if key.is_empty() {
            return Err(JobError::Invalid("empty primary key".into()));
        }
        self.key = key;
        Ok(self)
    }

    /// Bind each row's tenant from this column (e.g. from
    /// [`parse_tenant_spec`]`("clinic:text")`).
    pub fn tenant(mut self, tenant: TenantBinding) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Encode plaintext values with `codec` (e.g.
    /// [`ValueCodec::builtin`]`("date", 0)`), as a model field of that type
    /// stores them.
    pub fn codec(mut self, codec: ValueCodec) -> Self {
        self.codec = codec;
        self
    }

    /// Use `name` as the column name in each value's context.
    pub fn context_column(mut self, name: &str) -> Self {
        self.context_column = name.to_owned();
        self
    }

    /// Use `name` as the table name in each value's context.
    pub fn context_table(mut self, name: &str) -> Self {
        self.context_table = name.to_owned();
        self
    }

    /// The key as `--pk` spells it (`tenant_id:int,id:uuid`).
    pub fn key_spec(&self) -> String {
        self.key
            .iter()
            .map(|k| format!("{}:{}", k.name, k.kind.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

/// Progress of a running job in this process, published on a
/// `tokio::sync::watch` channel ([`Job::progress`]). Counts only: no value, no
/// key material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Rows the job had to process when this process started (counted once;
    /// `None` if not counted).
    pub total: Option<u64>,
    /// Rows read by this process.
    pub scanned: u64,
    /// Rows written by this process.
    pub written: u64,
    /// Rows skipped because the application changed them concurrently (the
    /// compare-and-swap found a new value, which is kept).
    pub conflicts: u64,
    /// Rows that could not be processed (a value that does not open); they are
    /// left unchanged and show up in the verify pass.
    pub failed: u64,
    /// Chunks this process finished.
    pub chunks_done: u64,
    /// Set once the job stopped (finished, failed or cancelled).
    pub finished: bool,
}

/// A cancellation token: cancel it from anywhere, the job stops after the
/// batch in flight (which commits with its checkpoint, or rolls back whole).
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<(AtomicBool, tokio::sync::Notify)>,
}

impl CancelToken {
    /// A fresh token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Request cancellation.
    pub fn cancel(&self) {
        self.inner.0.store(true, Ordering::SeqCst);
        self.inner.1.notify_waiters();
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// Sleep for `d`, or less if cancelled meanwhile.
    pub(crate) async fn sleep(&self, d: Duration) {
        if self.is_cancelled() {
            return;
        }
        let notified = self.inner.1.notified();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = notified => {}
        }
    }
}

/// A chunk lease in milliseconds, at most a year (a longer one would only
/// overflow the timestamps it is added to; a dead worker's chunk then waits
/// that long for another worker anyway).
pub(crate) fn lease_ms(lease: Duration) -> i64 {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    crate::clock::ms(lease.min(YEAR))
}

/// A rate limit in rows per second, shared by the tasks of one job.
#[derive(Debug)]
pub(crate) struct Throttle {
    rate: Option<f64>,
    start: Instant,
    rows: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub(crate) fn new(rate: Option<f64>) -> Self {
        Throttle {
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
            start: Instant::now(),
            rows: Default::default(),
        }
    }

    /// Account for `n` rows and sleep as long as the rate requires.
    pub(crate) async fn pace(&self, n: u64, cancel: &CancelToken) {
        let Some(rate) = self.rate else { return };
        let done = self.rows.fetch_add(n, Ordering::Relaxed) + n;
        let due = Duration::try_from_secs_f64(done as f64 / rate)
            .ok()
            .and_then(|d| self.start.checked_add(d));
        let Some(due) = due else {
            // A rate so low that the next row is due past what a clock can
            // say: wait a minute at a time (the job stays cancellable).
            cancel.sleep(Duration::from_secs(60)).await;
            return;
        };
        let now = Instant::now();
        if due > now {
            cancel.sleep(due - now).await;
        }
    }
}

/// Parse a list of key ids such as `3,4` or `#3`.
pub fn parse_key_ids(list: &str) -> JobResult<Vec<KeyId>> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .trim_start_matches('#')
                .parse::<u64>()
                .ok()
                .filter(|v| *v != 0)
                .map(KeyId::new)
                .ok_or_else(|| JobError::Invalid(format!("{s:?} is not a key id")))
        })
        .collect()
}
