//! `status` and `verify`.

use crate::KeyId;
use crate::jobs::transition::{transition_counts, verify_encrypted};
use crate::jobs::{
    ColumnStatus, JobError, JobPool, PlainKind, Target, registered_columns, verify_keys_open,
};
use clap::Args;

use super::config::{Global, parse_column};
use super::{CmdResult, Failure, Models, model, registered};

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Column to report (TABLE.COLUMN[:PK], PK as for --pk, repeatable). Default: every registered column.
    #[arg(long = "column", value_parser = parse_column)]
    pub columns: Vec<Target>,
    /// Every encrypted column of a model registered in this binary (type name or table;
    /// repeatable; embedded tool only).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// The tenant column of the --column(s), COLUMN[:KIND]: report per tenant too (columns a model
    /// registered report per tenant without it).
    #[arg(long, requires = "columns")]
    pub tenant_column: Option<String>,
}

/// The columns of `--model`s, after the `--column`s; a `--column` of a
/// registered model's table takes the model's description (key, tenant,
/// codec).
fn with_models(
    columns: &mut Vec<Target>,
    names: &[String],
    models: &Models,
) -> Result<(), Failure> {
    for t in columns.iter_mut() {
        if let Some(m) = registered(models, t.table.as_str(), t.column.as_str()) {
            let described = Target::from_description(m, t.column.as_str())?;
            // What a bare `--column TABLE.COLUMN` gives: anything else was
            // said with a flag, and must agree with the model.
            let bare = Target::new(t.table.as_str(), "id", t.column.as_str())?;
            let disagree: Vec<&str> = [
                (
                    t.key != bare.key && t.key != described.key,
                    ":PK in --column",
                ),
                (
                    t.tenant != bare.tenant && t.tenant != described.tenant,
                    "--tenant-column",
                ),
                (
                    t.context_column != bare.context_column
                        && t.context_column != described.context_column,
                    "--context-column",
                ),
                (
                    t.codec != bare.codec && !t.codec.same_encoding(&described.codec),
                    "--plaintext-type/--pad",
                ),
            ]
            .into_iter()
            .filter_map(|(differs, flag)| differs.then_some(flag))
            .collect();
            if !disagree.is_empty() {
                return Err(Failure::Error(format!(
                    "{}.{} is an encrypted column of the registered model {} (key {}): its key, tenant, \
                     context and codec come from the model, and {} says otherwise; leave {} out",
                    t.table,
                    t.column,
                    m.name,
                    described.key_spec(),
                    disagree.join(", "),
                    if disagree.len() == 1 { "it" } else { "them" }
                )));
            }
            *t = described;
        }
    }
    for name in names {
        columns.extend(Target::all_from_description(model(models, name)?)?);
    }
    Ok(())
}

fn with_tenant(columns: &mut [Target], spec: &Option<String>) -> Result<(), Failure> {
    if let Some(spec) = spec {
        let tenant = crate::jobs::parse_tenant_spec(spec)?;
        for t in columns {
            *t = t.clone().tenant(tenant.clone());
        }
    }
    Ok(())
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Column to check (TABLE.COLUMN[:PK], PK as for --pk, e.g. patients.note_enc:tenant_id:int,id:uuid; repeatable). Default: every registered column.
    #[arg(long = "column", value_parser = parse_column)]
    pub columns: Vec<Target>,
    /// Every encrypted column of a model registered in this binary (type name or table;
    /// repeatable; embedded tool only).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Fail (exit 3) if any row still references one of these data keys.
    #[arg(long = "key", value_delimiter = ',', value_parser = super::keys::parse_id)]
    pub keys: Vec<KeyId>,
    /// Backfill verification: open every encrypted value of the single --column and compare it
    /// with this plaintext column; fail if any row is plaintext only, differs or does not open.
    #[arg(long, requires = "columns")]
    pub plaintext_column: Option<String>,
    /// The plaintext column is binary (default: text).
    #[arg(long)]
    pub bytes: bool,
    /// The plaintext column's type, as for `backfill --plaintext-type`: values are compared as
    /// typed values.
    #[arg(long, requires = "plaintext_column")]
    pub plaintext_type: Option<String>,
    /// The model field's `pad = N` (with --plaintext-type).
    #[arg(long, default_value_t = 0, requires = "plaintext_type")]
    pub pad: usize,
    /// The tenant column of the --column(s), COLUMN[:KIND] (KIND text (default), int or uuid),
    /// for values bound to their row's tenant.
    #[arg(long, requires = "columns")]
    pub tenant_column: Option<String>,
    /// Column name bound into each value's context, if not the SQL column name (as given to
    /// `backfill --context-column`; with exactly one --column).
    #[arg(long, requires = "columns")]
    pub context_column: Option<String>,
    /// Also prove the configured keyring opens what is stored: unwrap every data
    /// key referenced by a value (one unwrap per key, not per row) and every usable
    /// index key of the columns' tables; exit 3 naming the keys that do not open.
    #[arg(long)]
    pub open: bool,
}

async fn columns(pool: &JobPool, given: Vec<Target>) -> Result<Vec<Target>, Failure> {
    if !given.is_empty() {
        return Ok(given);
    }
    let cols = registered_columns(pool).await?;
    if cols.is_empty() {
        return Err(Failure::Error(
            "no encrypted column is registered yet: pass --column TABLE.COLUMN[:PK]".into(),
        ));
    }
    Ok(cols)
}

fn print_status(s: &ColumnStatus, states: &[(KeyId, String)]) -> CmdResult {
    say!(
        "{} (key {}): {} encrypted, {} null, {} unrecognized, {} undecryptable",
        s.target,
        s.target.key_spec(),
        s.counts.encrypted(),
        s.counts.null,
        s.counts.unrecognized,
        s.undecryptable
    );
    for (id, n) in &s.counts.by_key {
        let state = states
            .iter()
            .find(|(k, _)| k == id)
            .map_or("unknown", |(_, s)| s.as_str());
        say!("  data key {:>6} {:<12} {n} rows", id.get(), state);
    }
    for (m, n) in &s.by_master_key {
        say!("  master key {m}: {n} rows");
    }
    for (tenant, ts) in &s.by_tenant {
        let keys: Vec<String> = ts
            .counts
            .by_key
            .iter()
            .map(|(id, n)| format!("{}={n}", id.get()))
            .collect();
        say!(
            "  tenant {}: {} encrypted, {} null, {} undecryptable; rows per data key: {}",
            tenant.as_deref().unwrap_or("(none)"),
            ts.counts.encrypted(),
            ts.counts.null,
            ts.undecryptable,
            keys.join(" ")
        );
    }
    Ok(())
}

/// Where rows are on watched keys or do not open: per tenant when known.
fn tenant_problems(s: &ColumnStatus, watch: &[KeyId]) -> Vec<String> {
    let t = &s.target;
    if s.by_tenant.is_empty() {
        let mut out = Vec::new();
        let on = s.counts.on(watch);
        if on > 0 {
            out.push(format!(
                "{t}: {on} row(s) on the given keys (re-encrypt them: `reencrypt --key N` with the column's --table and --column, or --model)"
            ));
        }
        if s.undecryptable > 0 {
            out.push(format!(
                "{t}: {} row(s) under unknown, retired or destroyed keys (`status` names the keys; a suspended key opens again after `keys reactivate`)",
                s.undecryptable
            ));
        }
        return out;
    }
    let mut out = Vec::new();
    for (tenant, ts) in &s.by_tenant {
        let tenant = tenant.as_deref().unwrap_or("(none)");
        let on = ts.counts.on(watch);
        if on > 0 {
            out.push(format!(
                "{t} tenant {tenant}: {on} row(s) on the given keys (re-encrypt them: `reencrypt --key N` with the column's --table and --column, or --model)"
            ));
        }
        if ts.undecryptable > 0 {
            out.push(format!(
                "{t} tenant {tenant}: {} row(s) under unknown, retired or destroyed keys (`status` names the keys; a suspended key opens again after `keys reactivate`)",
                ts.undecryptable
            ));
        }
    }
    out
}

/// A failure reading column `t`'s rows: when a key or tenant column did not
/// decode as the kind `t` declares (a UUID key read as the default `int`,
/// say), what to give instead; any other failure as it is.
fn as_described(t: &Target, e: JobError) -> Failure {
    let decode =
        |e: &sqlx::Error| matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_));
    match &e {
        JobError::Db(d) | JobError::Envelope(crate::Error::Store(d)) if decode(d) => {
            Failure::Error(format!(
                "{t}: its rows do not read with the key {} and tenant column {} ({e}): give their real \
                 kinds, --column TABLE.COLUMN:PK (PK as for --pk: COLUMN:int|uuid|text|bytes, in key \
                 order) and --tenant-column COLUMN:text|int|uuid",
                t.key_spec(),
                t.tenant.as_ref().map_or("(none)".to_owned(), |tb| format!(
                    "{}:{}",
                    tb.column,
                    tb.kind.name()
                ))
            ))
        }
        _ => e.into(),
    }
}

/// `status`.
pub async fn status(g: &Global, mut a: StatusArgs, models: &Models) -> CmdResult {
    with_tenant(&mut a.columns, &a.tenant_column)?;
    with_models(&mut a.columns, &a.models, models)?;
    let pool = g.pool().await?;
    let keys = pool
        .key_store()
        .list(&crate::store::KeyFilter::all())
        .await?;
    let states: Vec<(KeyId, String)> = keys.iter().map(|k| (k.id, k.state.to_string())).collect();
    for t in columns(&pool, a.columns).await? {
        let bar = super::progress::spinner(&format!("scanning {t}"), g.no_progress);
        let s = ColumnStatus::compute(&pool, &t, &keys).await;
        bar.finish_and_clear();
        print_status(&s.map_err(|e| as_described(&t, e))?, &states)?;
    }
    Ok(())
}

/// `verify`.
pub async fn verify(g: &Global, mut a: VerifyArgs, models: &Models) -> CmdResult {
    let pool = g.pool().await?;
    with_tenant(&mut a.columns, &a.tenant_column)?;
    if let Some(name) = &a.context_column {
        let [t] = a.columns.as_mut_slice() else {
            return Err(Failure::Error(
                "--context-column needs exactly one --column".into(),
            ));
        };
        *t = t.clone().context_column(name);
    }
    if let Some(ty) = &a.plaintext_type {
        let codec = crate::jobs::ValueCodec::builtin(ty, a.pad)?;
        for t in &mut a.columns {
            *t = t.clone().codec(codec);
        }
    }
    with_models(&mut a.columns, &a.models, models)?;
    if let Some(plain) = &a.plaintext_column {
        let [t] = a.columns.as_slice() else {
            return Err(Failure::Error(
                "--plaintext-column needs exactly one --column".into(),
            ));
        };
        // With the tenants' own master keys (--tenant-keys), as every job has.
        let (_, envelope) = g.envelope().await?;
        let kind = if a.bytes {
            PlainKind::Bytes
        } else {
            PlainKind::Text
        };
        let bar = super::progress::spinner(&format!("verifying {t}"), g.no_progress);
        let c = transition_counts(&pool, t, plain).await;
        let v = verify_encrypted(&envelope, &pool, t, plain, kind, 1000).await;
        bar.finish_and_clear();
        let (c, v) = (
            c.map_err(|e| as_described(t, e))?,
            v.map_err(|e| as_described(t, e))?,
        );
        say!(
            "{t}: {} rows, {} encrypted, {} plaintext only; opened {}, mismatched {}, failed {}",
            c.total,
            c.encrypted,
            c.plaintext_only,
            v.checked,
            v.mismatched,
            v.failed
        );
        if !v.is_clean() {
            let examples: String = v
                .examples
                .iter()
                .map(|f| format!("\n  {} ({}): {}", f.key, f.column, f.error))
                .collect();
            return Err(Failure::RowsRemain(format!(
                "{t}: {} plaintext only, {} mismatched, {} do not open{}{examples}",
                v.plaintext_only,
                v.mismatched,
                v.failed,
                if examples.is_empty() {
                    ""
                } else {
                    "; the first rows:"
                }
            )));
        }
        return Ok(());
    }
    let keys = pool
        .key_store()
        .list(&crate::store::KeyFilter::all())
        .await?;
    let states: Vec<(KeyId, String)> = keys.iter().map(|k| (k.id, k.state.to_string())).collect();
    let watch: Vec<KeyId> = a.keys.clone();
    let mut problems = Vec::new();
    for t in columns(&pool, a.columns.clone()).await? {
        let bar = super::progress::spinner(&format!("scanning {t}"), g.no_progress);
        let s = ColumnStatus::compute(&pool, &t, &keys).await;
        bar.finish_and_clear();
        let s = s.map_err(|e| as_described(&t, e))?;
        print_status(&s, &states)?;
        problems.extend(tenant_problems(&s, &watch));
        if s.counts.unrecognized > 0 {
            problems.push(format!(
                "{t}: {} row(s) not in the sealed format",
                s.counts.unrecognized
            ));
        }
    }
    if a.open {
        let (_, envelope) = g.envelope().await?;
        let targets = columns(&pool, Vec::new()).await.unwrap_or_default();
        let targets = if a.columns.is_empty() {
            targets
        } else {
            a.columns.clone()
        };
        let bar = super::progress::spinner(
            "opening every referenced data key and the tables' index keys",
            g.no_progress,
        );
        let r = verify_keys_open(&envelope, &pool, &targets).await;
        bar.finish_and_clear();
        let r = r?;
        say!(
            "keys: {} referenced, {} open, {} do not open",
            r.keys,
            r.opened,
            r.failed.len()
        );
        for (id, why) in &r.failed {
            say!("  data key {id} does not open: {why}");
        }
        say!(
            "index keys: {} of these tables, {} open, {} do not open",
            r.index_keys,
            r.index_opened,
            r.index_failed.len()
        );
        for (id, scope, why) in &r.index_failed {
            say!("  index key {id} ({scope}) does not open: {why}");
        }
        if !r.failed.is_empty() {
            let ids: Vec<String> = r.failed.iter().map(|(id, _)| id.to_string()).collect();
            problems.push(format!(
                "data key(s) {} do not open with this configuration (check the master keys given)",
                ids.join(", ")
            ));
        }
        if !r.index_failed.is_empty() {
            let ids: Vec<String> = r
                .index_failed
                .iter()
                .map(|(id, ..)| id.to_string())
                .collect();
            problems.push(format!(
                "index key(s) {} do not open with this configuration (check the master keys given; `keys rewrap` re-wraps them)",
                ids.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        say!("verify: ok");
        Ok(())
    } else {
        Err(Failure::RowsRemain(problems.join("; ")))
    }
}
