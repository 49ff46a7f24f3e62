//! `keys list | rewrap (rotate) | retire | destroy`.

use clap::{Args, Subcommand};
use sqlx_envelope::jobs::rewrap::{RewrapOptions, rewrap_keys};
use sqlx_envelope::jobs::{Progress, Target, destroy_key};
use sqlx_envelope::{KeyId, KeyState, MasterKeyId};

use crate::config::{Global, parse_column};
use crate::{CmdResult, Failure};

/// Key commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List data keys: id, state, scope, tenant, master keys wrapping it.
    List,
    /// Master-key rotation: re-wrap every data key under a new master key (no data row changes).
    #[command(visible_alias = "rotate")]
    Rewrap(RewrapArgs),
    /// Stop sealing new values with these data keys (state decrypt_only); their rows still open.
    Retire(IdsArgs),
    /// Destroy data keys (crypto-shredding), refused (exit 3) while any row references them.
    Destroy(DestroyArgs),
}

/// `keys rewrap`.
#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The master key to wrap under: `local:<name>/<version>` or a KMS key ARN.
    #[arg(long)]
    pub to: String,
    /// Only data keys wrapped under this (old) master key.
    #[arg(long)]
    pub from: Option<String>,
    /// Delete the old wrapped blob of each key once the new one unwrapped.
    #[arg(long)]
    pub delete_old: bool,
    /// Count what would be re-wrapped, call nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Data keys re-wrapped concurrently.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Only data keys of this scope (by default a table name).
    #[arg(long)]
    pub scope: Option<String>,
}

/// Data key ids.
#[derive(Debug, Args)]
pub struct IdsArgs {
    /// Data key ids (as shown by `keys list`).
    #[arg(required = true, value_parser = parse_id)]
    pub ids: Vec<KeyId>,
}

/// `keys destroy`.
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Data key ids (as shown by `keys list`).
    #[arg(required = true, value_parser = parse_id)]
    pub ids: Vec<KeyId>,
    /// Also check this column (TABLE.COLUMN[:PK]); registered columns are always checked.
    #[arg(long = "column", value_parser = parse_column)]
    pub columns: Vec<Target>,
}

fn parse_id(s: &str) -> Result<KeyId, String> {
    s.trim_start_matches('#')
        .parse::<u64>()
        .ok()
        .filter(|v| *v != 0)
        .map(KeyId::new)
        .ok_or_else(|| format!("{s:?} is not a data key id"))
}

/// Run a key command.
pub async fn run(g: &Global, cmd: KeysCommand) -> CmdResult {
    match cmd {
        KeysCommand::List => {
            let pool = g.pool().await?;
            let keys = pool.key_store().list().await?;
            println!(
                "{:>8}  {:<12}  {:<24}  {:<12}  master keys",
                "id", "state", "scope", "tenant"
            );
            for k in keys {
                let masters: Vec<&str> = k.wrapped.iter().map(|w| w.master_key.as_str()).collect();
                println!(
                    "{:>8}  {:<12}  {:<24}  {:<12}  {}",
                    k.id.get(),
                    k.state.as_str(),
                    k.scope,
                    k.tenant.as_deref().unwrap_or("-"),
                    masters.join(",")
                );
            }
            Ok(())
        }
        KeysCommand::Rewrap(a) => {
            let pool = g.pool().await?;
            let keyring = g.keyring().await?;
            let mut opts = RewrapOptions::new(MasterKeyId::new(a.to))
                .delete_old(a.delete_old)
                .dry_run(a.dry_run);
            opts.concurrency = a.concurrency;
            if let Some(f) = a.from {
                opts = opts.from(MasterKeyId::new(f));
            }
            if let Some(scope) = a.scope {
                opts = opts.scope(scope);
            }
            let (tx, rx) = tokio::sync::watch::channel(Progress::default());
            let bar = crate::progress::spawn(rx, "rewrap", g.no_progress);
            let store = pool.key_store();
            let report = rewrap_keys(store.as_ref(), keyring.as_ref(), &opts, Some(&tx)).await;
            tx.send_modify(|p| p.finished = true);
            let _ = bar.await;
            let r = report?;
            println!(
                "rewrap{}: keys={} rewrapped={} already={} deleted_old={} rewrap_calls={} verify_calls={}",
                if a.dry_run { " (dry run)" } else { "" },
                r.keys,
                r.rewrapped,
                r.already,
                r.deleted,
                r.rewrap_calls,
                r.verify_calls
            );
            Ok(())
        }
        KeysCommand::Retire(a) => {
            let (_pool, envelope) = g.envelope().await?;
            for id in a.ids {
                let rec = envelope
                    .store()
                    .get(id)
                    .await?
                    .ok_or_else(|| Failure::Error(format!("unknown data key {id}")))?;
                if rec.state == KeyState::Active {
                    envelope.set_key_state(id, KeyState::DecryptOnly).await?;
                    println!("data key {id}: active -> decrypt_only");
                } else {
                    println!("data key {id}: already {}", rec.state);
                }
            }
            println!(
                "note: running applications stop sealing with a retired key when their cached copy expires (max age)"
            );
            Ok(())
        }
        KeysCommand::Destroy(a) => {
            let (pool, envelope) = g.envelope().await?;
            for id in a.ids {
                let bar = crate::progress::spinner(
                    &format!("counting rows on data key {id}"),
                    g.no_progress,
                );
                let done = destroy_key(&envelope, &pool, &a.columns, id).await;
                bar.finish_and_clear();
                done?;
                println!("data key {id}: destroyed");
            }
            Ok(())
        }
    }
}
