//! `keys list | rewrap (rotate) | retire | suspend | reactivate | destroy |
//! shred-tenant | cleanup-pending | create-local-file`.

use crate::jobs::rewrap::{RewrapOptions, rewrap_keys};
use crate::jobs::{DestroyOptions, Destroyed, Progress, Target, destroy_key};
use crate::{KeyId, KeyState, MasterKeyId};
use clap::{Args, Subcommand};

use super::config::{Global, parse_column};
use super::{CmdResult, Failure};

/// Key commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List keys (data, branch, index): id, kind, state, scope, tenant, what wraps it.
    List,
    /// Master-key rotation: re-wrap branch and index keys under a new master key (no data key or row changes).
    #[command(visible_alias = "rotate")]
    Rewrap(RewrapArgs),
    /// Stop sealing new values with these keys (state decrypt_only); their rows still open.
    Retire(IdsArgs),
    /// Emergency stop: keys refuse to seal and to open (state retired) until reactivated.
    Suspend(IdsArgs),
    /// Undo a suspend: retired keys open again (state decrypt_only; nothing returns to active).
    Reactivate(IdsArgs),
    /// Destroy data keys (crypto-shredding): refused before the seal horizon (exit 4), while any row references them (exit 3), and for active keys (retire them first) and branch or index keys (exit 1).
    Destroy(DestroyArgs),
    /// Crypto-shred a tenant: destroy its branch, data and index keys (every value of the tenant stops opening).
    ShredTenant(ShredArgs),
    /// Delete pending key reservations that never got material (processes killed mid-mint).
    CleanupPending(CleanupArgs),
    /// Create a local master key file with one fresh random key (mode 0600; refuses to overwrite).
    CreateLocalFile(CreateLocalArgs),
}

/// `keys shred-tenant`.
#[derive(Debug, Args)]
pub struct ShredArgs {
    /// The tenant.
    pub tenant: String,
    /// Required: this cannot be undone.
    #[arg(long)]
    pub yes: bool,
}

/// `keys cleanup-pending`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Only reservations older than this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub older_than_secs: u64,
}

/// `keys create-local-file`.
#[derive(Debug, Args)]
pub struct CreateLocalArgs {
    /// Where to write the key file.
    pub path: std::path::PathBuf,
    /// The master key's name (`local:<name>` in `keys list`).
    #[arg(long, default_value = "app/1")]
    pub name: String,
}

/// `keys rewrap`.
#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The master key to wrap under: `local:<name>/<version>` or a KMS key ARN.
    #[arg(long)]
    pub to: String,
    /// Only keys (branch and index keys) wrapped under this (old) master key.
    #[arg(long)]
    pub from: Option<String>,
    /// Delete the old wrapped blob of each key once the new one unwrapped.
    #[arg(long)]
    pub delete_old: bool,
    /// Count what would be re-wrapped, call nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keys re-wrapped concurrently.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Only keys of this scope (by default a table name).
    #[arg(long)]
    pub scope: Option<String>,
}

/// Key ids (`keys retire`, `suspend`, `reactivate`).
#[derive(Debug, Args)]
pub struct IdsArgs {
    /// Key ids, as shown by `keys list`: data, branch or index keys.
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
    /// Seconds to wait past the key's seal horizon for values sealed just
    /// before it to be written (at most 31536000, a year).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub settle_secs: u64,
    /// Do not wait for the key's seal horizon. Only when every process that
    /// could still seal under the key is known to be stopped: values such a
    /// process seals are lost with the key.
    #[arg(long)]
    pub unsafe_skip_seal_horizon: bool,
}

/// The store's record of every id, in the order given; an unknown id fails
/// before anything is changed.
async fn records(
    envelope: &crate::Envelope,
    ids: &[KeyId],
) -> Result<Vec<crate::store::KeyRecord>, Failure> {
    let mut out: Vec<crate::store::KeyRecord> = Vec::with_capacity(ids.len());
    for id in ids {
        if out.iter().any(|r| r.id == *id) {
            continue;
        }
        out.push(envelope.store().get(*id).await?.ok_or_else(|| {
            Failure::Error(format!(
                "unknown key {id}: `keys list` shows the ids (nothing was changed)"
            ))
        })?);
    }
    Ok(out)
}

/// Refuse, naming the first key whose state `ok` rejects and `why`, before
/// any key is changed.
fn all_in(
    records: &[crate::store::KeyRecord],
    ok: impl Fn(KeyState) -> bool,
    why: &str,
) -> Result<(), Failure> {
    match records.iter().find(|r| !ok(r.state)) {
        Some(r) => Err(Failure::Error(format!(
            "{} key {} is {}: {why} (nothing was changed)",
            r.kind.as_str(),
            r.id,
            r.state
        ))),
        None => Ok(()),
    }
}

/// Move `rec` to `to` by a compare-and-set from the state it was read in.
/// `false` when another process moved it there first (nothing left to do).
async fn move_from_read(
    envelope: &crate::Envelope,
    rec: &crate::store::KeyRecord,
    to: KeyState,
) -> Result<bool, Failure> {
    match envelope.change_key_state(rec.id, rec.state, to).await {
        Ok(()) => Ok(true),
        Err(crate::Error::StateConflict { current, .. }) if current == to => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A key id as `keys list` shows it (`7` or `#7`).
pub(super) fn parse_id(s: &str) -> Result<KeyId, String> {
    s.trim_start_matches('#')
        .parse::<u64>()
        .ok()
        .filter(|v| *v != 0)
        .map(KeyId::new)
        .ok_or_else(|| {
            format!("{s:?} is not a key id (a positive number, as `keys list` shows it)")
        })
}

/// Run a key command.
pub async fn run(g: &Global, cmd: KeysCommand) -> CmdResult {
    match cmd {
        KeysCommand::List => {
            let pool = g.pool().await?;
            let keys = pool
                .key_store()
                .list(&crate::store::KeyFilter::all())
                .await?;
            say!(
                "{:>8}  {:<6}  {:<12}  {:<24}  {:<12}  wrapped by",
                "id",
                "kind",
                "state",
                "scope",
                "tenant"
            );
            for k in keys {
                let by = match &k.parent {
                    Some(p) => format!("branch key {}", p.parent),
                    None => k
                        .wrapped
                        .iter()
                        .map(|w| w.master_key.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                };
                say!(
                    "{:>8}  {:<6}  {:<12}  {:<24}  {:<12}  {}",
                    k.id.get(),
                    k.kind.as_str(),
                    k.state.as_str(),
                    k.scope,
                    k.tenant.as_deref().unwrap_or("-"),
                    if by.is_empty() { "-".to_owned() } else { by }
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
            let bar = super::progress::spawn(rx, "rewrap", g.no_progress);
            let store = pool.key_store();
            let report = rewrap_keys(store.as_ref(), keyring.as_ref(), &opts, Some(&tx)).await;
            tx.send_modify(|p| p.finished = true);
            let _ = bar.await;
            let r = report?;
            say!(
                "rewrap{}: keys={} rewrapped={} already={} deleted_old={} rewrap_calls={} verify_calls={} skipped_no_blob={} skipped_destroyed={}",
                if a.dry_run { " (dry run)" } else { "" },
                r.keys,
                r.rewrapped,
                r.already,
                r.deleted,
                r.rewrap_calls,
                r.verify_calls,
                r.skipped_no_blob,
                r.skipped_destroyed
            );
            if r.keys == 0 {
                eprintln!(
                    "note: no key matched{}{}: nothing was re-wrapped (`keys list` shows what wraps each key)",
                    opts.from
                        .as_ref()
                        .map(|f| format!(" --from {f}"))
                        .unwrap_or_default(),
                    opts.scope
                        .as_ref()
                        .map(|s| format!(" --scope {s}"))
                        .unwrap_or_default(),
                );
            } else if a.delete_old
                && !a.dry_run
                && r.rewrapped > 0
                && r.deleted == 0
                && opts.from.is_none()
            {
                eprintln!(
                    "note: --delete-old deleted nothing: without --from it deletes the blobs under master keys this \
                     keyring no longer wraps new keys with; make {} the primary (first) master key of the \
                     configuration, or name the old one with --from",
                    opts.target
                );
            }
            if !a.dry_run && r.keys > 0 {
                say!(
                    "next: run `sqlx-envelope verify --open` with the configuration your applications will use (new master key only) before retiring the old master key"
                );
            }
            Ok(())
        }
        KeysCommand::Retire(a) => {
            let (_pool, envelope) = g.envelope().await?;
            // Every id is checked before any is changed.
            let records = records(&envelope, &a.ids).await?;
            for rec in records {
                let (id, kind) = (rec.id, rec.kind.as_str());
                if rec.state != KeyState::Active {
                    say!("{kind} key {id}: already {}", rec.state);
                } else if move_from_read(&envelope, &rec, KeyState::DecryptOnly).await? {
                    say!("{kind} key {id}: active -> decrypt_only");
                } else {
                    say!("{kind} key {id}: already decrypt_only");
                }
            }
            say!(
                "note: running applications stop sealing with a retired key when their cached copy expires (max age)"
            );
            Ok(())
        }
        KeysCommand::Suspend(a) => {
            let (_pool, envelope) = g.envelope().await?;
            // Every id is checked before any is changed.
            let records = records(&envelope, &a.ids).await?;
            all_in(
                &records,
                |s| s == KeyState::Retired || s.may_become(KeyState::Retired),
                "only an active or decrypt_only key can be suspended",
            )?;
            for rec in records {
                let (id, kind) = (rec.id, rec.kind.as_str());
                if rec.state == KeyState::Retired
                    || !move_from_read(&envelope, &rec, KeyState::Retired).await?
                {
                    say!("{kind} key {id}: already suspended (retired)");
                    continue;
                }
                say!("{kind} key {id}: suspended (retired: refuses to seal and to open)");
            }
            say!(
                "note: running applications refuse the key when their cached copy expires (decrypt TTL)"
            );
            Ok(())
        }
        KeysCommand::Reactivate(a) => {
            let (_pool, envelope) = g.envelope().await?;
            // Only a suspended (retired) key: reactivating an active key would
            // demote it for good, and nothing else returns to decrypt_only.
            // Every id is checked before any is changed.
            let records = records(&envelope, &a.ids).await?;
            all_in(
                &records,
                |s| s == KeyState::Retired,
                "not retired: reactivate only undoes `keys suspend`",
            )?;
            for rec in records {
                // A compare-and-set from retired: a key another process moved
                // meanwhile is left as it is (a state conflict).
                let (id, kind) = (rec.id, rec.kind.as_str());
                if move_from_read(&envelope, &rec, KeyState::DecryptOnly).await? {
                    say!("{kind} key {id}: retired -> decrypt_only (opens again, never seals)");
                } else {
                    say!("{kind} key {id}: already decrypt_only");
                }
            }
            Ok(())
        }
        KeysCommand::ShredTenant(a) => {
            if !a.yes {
                return Err(Failure::Error(format!(
                    "shredding tenant {:?} destroys every key of it and cannot be undone: pass --yes",
                    a.tenant
                )));
            }
            let (_pool, envelope) = g.envelope().await?;
            let r = envelope.shred_tenant(&a.tenant).await?;
            say!(
                "tenant {}: destroyed data_keys={} branch_keys={} index_keys={} already_destroyed={}",
                r.tenant,
                r.data_keys,
                r.branch_keys,
                r.index_keys,
                r.already_destroyed
            );
            say!(
                "live database and replicas: every value of this tenant now fails as destroyed (other processes: once their cached keys expire)."
            );
            say!(
                "backups taken earlier still hold its wrapped keys: they stay readable by whoever can restore them and use the master key(s) {}.",
                if r.master_keys.is_empty() {
                    "that wrapped them".to_owned()
                } else {
                    r.master_keys.join(", ")
                }
            );
            say!(
                "if those master keys serve this tenant alone (its own KMS key), schedule their deletion in KMS to make the backups unreadable too; a shared master key cannot be deleted for one tenant."
            );
            Ok(())
        }
        KeysCommand::CleanupPending(a) => {
            let pool = g.pool().await?;
            let n = pool
                .key_store()
                .cleanup_pending(std::time::Duration::from_secs(a.older_than_secs))
                .await?;
            say!(
                "deleted {n} pending reservation(s) older than {}s",
                a.older_than_secs
            );
            Ok(())
        }
        KeysCommand::CreateLocalFile(a) => {
            let k = crate::LocalKeyring::create_file(&a.path, &a.name)?;
            say!(
                "created {} with master key {} (keep it secret and backed up: without it nothing opens)",
                a.path.display(),
                crate::Keyring::master_keys(&k)[0]
            );
            Ok(())
        }
        KeysCommand::Destroy(a) => {
            let (pool, envelope) = g.envelope().await?;
            let mut opts =
                DestroyOptions::new().settle(std::time::Duration::from_secs(a.settle_secs));
            for c in a.columns {
                opts = opts.column(c);
            }
            if a.unsafe_skip_seal_horizon {
                opts = opts.unsafe_skip_seal_horizon();
            }
            for id in a.ids {
                let bar = super::progress::spinner(
                    &format!("counting rows on data key {id}"),
                    g.no_progress,
                );
                let done = destroy_key(&envelope, &pool, &opts, id).await;
                bar.finish_and_clear();
                match done? {
                    Destroyed::Now => say!("data key {id}: destroyed"),
                    Destroyed::Already => say!("data key {id}: already destroyed"),
                }
            }
            Ok(())
        }
    }
}
