//! `backfill`, `decrypt`, `drop-plaintext`, `reencrypt`: jobs over data rows.

use std::time::Duration;

use crate::jobs::transition::{drop_plaintext as drop_column, transition_counts};
use crate::jobs::{
    Job, JobOptions, JobReport, PlainKind, Target, ValueCodec, parse_pk_spec, parse_tenant_spec,
};
use crate::model::ModelDescription;
use crate::{Envelope, KeyId, KeyState};
use clap::Args;

use super::config::Global;
use super::{CmdResult, Failure, Models, model, registered};

/// Options shared by every row job.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Rows per batch (one read and one transaction).
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Rows per chunk: the unit workers lease from each other.
    #[arg(long, default_value_t = 5000)]
    pub chunk_rows: u64,
    /// Concurrent chunk workers in this process.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// At most this many rows per second (this process; at least 0.01).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Seconds a chunk stays leased without progress before another worker takes it over
    /// (1 to 604800, a week).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub lease_secs: u64,
    /// This worker's id (unique per concurrent worker; reuse it to resume a killed worker's chunks at once).
    #[arg(long, env = "SQLX_ENVELOPE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Job name in sqlx_envelope_jobs (default derived from table, columns and keys).
    #[arg(long)]
    pub job_name: Option<String>,
    /// Read and decrypt, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Forget the job's checkpoints and start over (not with --dry-run, which changes nothing).
    #[arg(long, conflicts_with = "dry_run")]
    pub restart: bool,
    /// Only rows of this tenant (needs a tenant column: --tenant-column, or the model's own with --model).
    #[arg(long)]
    pub tenant: Option<String>,
}

impl JobArgs {
    fn options(&self) -> JobOptions {
        let defaults = JobOptions::default();
        JobOptions {
            batch_size: self.batch_size,
            chunk_rows: self.chunk_rows,
            concurrency: self.concurrency,
            rate: self.rate,
            lease: Duration::from_secs(self.lease_secs),
            worker_id: self.worker_id.clone().unwrap_or(defaults.worker_id),
            job_name: self.job_name.clone(),
            dry_run: self.dry_run,
            restart: self.restart,
            tenant: self.tenant.clone(),
            ..defaults
        }
    }
}

/// `backfill` / `decrypt`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// A model registered in this binary (type name or table): its table, key, tenant and the
    /// --encrypted-column's own codec (embedded tool only).
    #[arg(long, conflicts_with_all = ["table", "pk", "tenant_column", "plaintext_type", "context_column"])]
    pub model: Option<String>,
    /// The table.
    #[arg(long, required_unless_present = "model")]
    pub table: Option<String>,
    /// Its primary key: COLUMN[:KIND][,COLUMN[:KIND]...] in key order; KIND is int (default), uuid, text or bytes.
    #[arg(long, default_value = "id")]
    pub pk: String,
    /// The tenant column, COLUMN[:KIND] (KIND text (default), int or uuid): each row's tenant is bound into its values.
    #[arg(long)]
    pub tenant_column: Option<String>,
    /// The plaintext column.
    #[arg(long)]
    pub plaintext_column: String,
    /// The encrypted column (binary, nullable).
    #[arg(long)]
    pub encrypted_column: String,
    /// The plaintext column is binary (default: text).
    #[arg(long)]
    pub bytes: bool,
    /// The plaintext column's type, encoded as a model field of that type stores it
    /// (text, bytes, bool, i16, i32, i64, f32, f64, uuid, date, time, datetime,
    /// offset_datetime, json, ...; default: the raw text or bytes).
    #[arg(long)]
    pub plaintext_type: Option<String>,
    /// The model field's `pad = N` (with --plaintext-type).
    #[arg(long, default_value_t = 0, requires = "plaintext_type")]
    pub pad: usize,
    /// Column name bound into each value's context, if the application uses another name
    /// (e.g. the name the encrypted column will have after a rename).
    #[arg(long)]
    pub context_column: Option<String>,
    #[command(flatten)]
    pub job: JobArgs,
}

/// `index`.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// A model registered in this binary (type name or table).
    #[arg(long)]
    pub model: String,
    /// The blind index to fill (its column), e.g. name_bidx.
    #[arg(long)]
    pub index: String,
    #[command(flatten)]
    pub job: JobArgs,
}

/// `index`: fill a blind index for rows written before it existed (or a new
/// index version's column during an index-key rotation).
pub async fn index(g: &Global, a: IndexArgs, models: &Models) -> CmdResult {
    let m = model(models, &a.model)?;
    let (pool, envelope) = g.envelope().await?;
    let job = Job::index_column_of(envelope.clone(), pool, m, &a.index)?.options(a.job.options());
    let r = run_job(g, job, "index").await?;
    record_model(&envelope, Some(m), &r).await?;
    if r.remaining > 0 && !r.dry_run {
        return Err(Failure::RowsRemain(format!(
            "{} row(s) of {} still have no {} (failed or written meanwhile): run the same command again (a finished job makes a new pass)",
            r.remaining, m.table, a.index
        )));
    }
    Ok(())
}

/// After a job run with `--model` (not a dry run), once the job has checked
/// its target and run: record the model's description in the key store's
/// column registry, as the model's first seal does, so that `status`,
/// `verify` and `keys destroy` describe its columns by the model (key, tenant,
/// codec) without being given `--model`.
async fn record_model(
    envelope: &Envelope,
    m: Option<&'static ModelDescription>,
    r: &JobReport,
) -> Result<(), Failure> {
    if let Some(m) = m
        && !r.dry_run
    {
        envelope.register_model(m).await?;
    }
    Ok(())
}

/// `drop-plaintext`.
#[derive(Debug, Args)]
pub struct DropArgs {
    /// The table.
    #[arg(long)]
    pub table: String,
    /// Its primary key: COLUMN[:KIND][,COLUMN[:KIND]...] in key order; KIND is int (default), uuid, text or bytes.
    /// Checked for form only: the drop does not read rows by key (accepted so that the flags of the other data
    /// commands can be reused as they are).
    #[arg(long, default_value = "id")]
    pub pk: String,
    /// The plaintext column to drop.
    #[arg(long)]
    pub plaintext_column: String,
    /// The encrypted column that must be set on every row with a plaintext value.
    #[arg(long)]
    pub encrypted_column: String,
}

/// `reencrypt`.
#[derive(Debug, Args)]
pub struct ReencryptArgs {
    /// A model registered in this binary (type name or table): re-encrypt every encrypted column
    /// of it in one pass (one read and one compare-and-swap per row; embedded tool only).
    #[arg(long, conflicts_with_all = ["table", "pk", "column", "tenant_column", "context_column"])]
    pub model: Option<String>,
    /// The table.
    #[arg(long, required_unless_present = "model")]
    pub table: Option<String>,
    /// Its primary key: COLUMN[:KIND][,COLUMN[:KIND]...] in key order; KIND is int (default), uuid, text or bytes.
    /// Default: id. Not with a column of a registered model, which has its own.
    #[arg(long)]
    pub pk: Option<String>,
    /// The tenant column, COLUMN[:KIND] (KIND text (default), int or uuid): each row's tenant is bound into its values.
    #[arg(long)]
    pub tenant_column: Option<String>,
    /// The encrypted column. One of a model registered in this binary takes the model's key,
    /// tenant and codec.
    #[arg(long, required_unless_present = "model")]
    pub column: Option<String>,
    /// Data keys to move away from (repeatable or comma-separated). Default: every decrypt_only key.
    #[arg(long = "key", value_delimiter = ',', value_parser = super::keys::parse_id)]
    pub keys: Vec<KeyId>,
    /// Column name bound into each value's context, if not the SQL column name.
    #[arg(long)]
    pub context_column: Option<String>,
    #[command(flatten)]
    pub job: JobArgs,
}

/// `--rate`: a finite number of rows per second, at least 0.01.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.01 => Ok(r),
        Ok(_) => Err(format!(
            "{s}: give a rate of at least 0.01 rows per second (or leave out --rate for no limit)"
        )),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

fn target(
    table: &str,
    pk: &str,
    tenant: &Option<String>,
    column: &str,
    ctx: &Option<String>,
) -> Result<Target, Failure> {
    let mut t = Target::keyed(table, parse_pk_spec(pk)?, column)?;
    if let Some(tenant) = tenant {
        t = t.tenant(parse_tenant_spec(tenant)?);
    }
    Ok(match ctx {
        Some(c) => t.context_column(c),
        None => t,
    })
}

async fn run_job(g: &Global, job: Job, label: &str) -> Result<JobReport, Failure> {
    let cancel = job.cancel_token();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let bar = super::progress::spawn(job.progress(), label, g.no_progress);
    let report = job.run().await;
    let _ = bar.await;
    let r = report?;
    say!(
        "{}{}: scanned={} written={} conflicts={} failed={} chunks_done={} remaining={}",
        r.job,
        if r.dry_run { " (dry run)" } else { "" },
        r.scanned,
        r.written,
        r.conflicts,
        r.failed,
        r.chunks_done,
        r.remaining
    );
    if let Some(s) = &r.status {
        say!(
            "job total: chunks {}/{} done, written={} conflicts={} failed={}",
            s.chunks_done,
            s.chunks,
            s.written,
            s.conflicts,
            s.failed
        );
    }
    if r.failed > 0 {
        let examples: Vec<String> = r
            .failed_examples
            .iter()
            .map(|f| format!("  {} ({}): {}", f.key, f.column, f.error))
            .collect();
        return Err(Failure::RowsRemain(format!(
            "{} row(s) could not be processed{} and were left unchanged; the first {}:\n{}\n\
             (a value that does not open usually means a master key is missing from the configuration: \
             `verify --open` names the keys that do not open)",
            r.failed,
            if r.dry_run { " in this dry run" } else { "" },
            examples.len(),
            examples.join("\n")
        )));
    }
    Ok(r)
}

/// `backfill` (`reverse = false`) and `decrypt` (`reverse = true`).
pub async fn backfill(g: &Global, a: BackfillArgs, reverse: bool, models: &Models) -> CmdResult {
    let described = a.model.as_deref().map(|m| model(models, m)).transpose()?;
    let t = match (described, &a.table) {
        (Some(m), _) => Target::from_description(m, &a.encrypted_column)?,
        (None, Some(table)) => {
            let t = target(
                table,
                &a.pk,
                &a.tenant_column,
                &a.encrypted_column,
                &a.context_column,
            )?;
            match &a.plaintext_type {
                Some(ty) => t.codec(ValueCodec::builtin(ty, a.pad)?),
                None => t,
            }
        }
        (None, None) => return Err(Failure::Error("--table or --model is required".into())),
    };
    let (pool, envelope) = g.envelope().await?;
    let kind = if a.bytes {
        PlainKind::Bytes
    } else {
        PlainKind::Text
    };
    let job = if reverse {
        Job::decrypt_column(
            envelope.clone(),
            pool.clone(),
            t.clone(),
            &a.plaintext_column,
            kind,
        )?
    } else {
        Job::encrypt_column(
            envelope.clone(),
            pool.clone(),
            t.clone(),
            &a.plaintext_column,
            kind,
        )?
    }
    .options(a.job.options());
    let r = run_job(g, job, if reverse { "decrypt" } else { "backfill" }).await?;
    record_model(&envelope, described, &r).await?;
    if !reverse {
        let c = transition_counts(&pool, &t, &a.plaintext_column).await?;
        say!(
            "{t}: {} encrypted, {} plaintext only, {} empty, {} rows",
            c.encrypted,
            c.plaintext_only,
            c.null,
            c.total
        );
        // With --tenant, the job's own count (that tenant's rows): other
        // tenants' plaintext is another job's.
        let (left, whose) = match &a.job.tenant {
            Some(tenant) => (r.remaining, format!(" (tenant {tenant})")),
            None => (c.plaintext_only, String::new()),
        };
        if left > 0 && !r.dry_run {
            return Err(Failure::RowsRemain(format!(
                "{left} row(s) of {t}{whose} are still plaintext only (failed or written meanwhile): run the same command again (a finished job makes a new pass)"
            )));
        }
    } else if r.remaining > 0 && !r.dry_run {
        return Err(Failure::RowsRemain(format!(
            "{} row(s) of {t} are not decrypted (failed or written meanwhile): run the same command again (a finished job makes a new pass)",
            r.remaining
        )));
    }
    Ok(())
}

/// `drop-plaintext`.
pub async fn drop_plaintext(g: &Global, a: DropArgs) -> CmdResult {
    let pool = g.pool().await?;
    let t = target(&a.table, &a.pk, &None, &a.encrypted_column, &None)?;
    drop_column(&pool, &t, &a.plaintext_column).await?;
    say!("{}.{} dropped", a.table, a.plaintext_column);
    Ok(())
}

/// `reencrypt`.
pub async fn reencrypt(g: &Global, a: ReencryptArgs, models: &Models) -> CmdResult {
    let described = a.model.as_deref().map(|m| model(models, m)).transpose()?;
    let targets = match (described, &a.table, &a.column) {
        (Some(m), _, _) => Target::all_from_description(m)?,
        (None, Some(table), Some(column)) => {
            match registered(models, table, column) {
                // The model's own description, as status and verify take it:
                // flags that describe the column again could only disagree.
                Some(m)
                    if a.pk.is_some()
                        || a.tenant_column.is_some()
                        || a.context_column.is_some() =>
                {
                    return Err(Failure::Error(format!(
                        "{table}.{column} is an encrypted column of the registered model {}: its key, \
                         tenant and context come from the model; leave out --pk, --tenant-column and \
                         --context-column (or use --model {} for every encrypted column in one pass)",
                        m.name, m.name
                    )));
                }
                Some(m) => vec![Target::from_description(m, column)?],
                None => vec![target(
                    table,
                    a.pk.as_deref().unwrap_or("id"),
                    &a.tenant_column,
                    column,
                    &a.context_column,
                )?],
            }
        }
        _ => {
            return Err(Failure::Error(
                "--table and --column, or --model, are required".into(),
            ));
        }
    };
    let (pool, envelope) = g.envelope().await?;
    let keys: Vec<KeyId> = if a.keys.is_empty() {
        envelope
            .keys()
            .await?
            .into_iter()
            .filter(|k| k.state == KeyState::DecryptOnly)
            .map(|k| k.id)
            .collect()
    } else {
        a.keys.clone()
    };
    if keys.is_empty() {
        say!("no decrypt_only data key: nothing to re-encrypt (retire a key first)");
        return Ok(());
    }
    let job =
        Job::reencrypt_columns(envelope.clone(), pool, targets, keys)?.options(a.job.options());
    let r = run_job(g, job, "reencrypt").await?;
    record_model(&envelope, described, &r).await?;
    if r.remaining > 0 && !r.dry_run {
        return Err(Failure::RowsRemain(format!(
            "{} row(s) still reference the retired keys (failed or written meanwhile): run the same command again (a finished job makes a new pass)",
            r.remaining
        )));
    }
    Ok(())
}
