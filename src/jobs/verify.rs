//! Verify passes: which data keys the rows of a column reference, and the guard
//! that refuses to destroy a data key while any row still references it.
//!
//! Encrypted columns are registered in the key store's registry
//! (`sqlx_envelope_registry`: by every process on its first seal into a column,
//! by models with their description, by every job; [`register_column`] does it
//! by hand), so that status reports and [`destroy_key`] see every column
//! without being told.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::db::key_id_bytes;
use super::{JobError, JobPool, JobResult, Target, on_pool};
use crate::envelope::Envelope;
use crate::key::{KeyId, KeyKind, KeyState, MasterKeyId};
use crate::store::KeyRecord;

/// How the values of one column are distributed over data keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyCounts {
    /// Rows per data key id.
    pub by_key: BTreeMap<KeyId, u64>,
    /// Rows where the column is NULL.
    pub null: u64,
    /// Rows whose value is not a recognisable sealed value (unknown version or
    /// too short): plaintext, corruption, or a newer format.
    pub unrecognized: u64,
}

impl KeyCounts {
    /// Rows with a value under any data key.
    pub fn encrypted(&self) -> u64 {
        self.by_key.values().sum()
    }

    /// Rows under any of `keys`.
    pub fn on(&self, keys: &[KeyId]) -> u64 {
        keys.iter().filter_map(|k| self.by_key.get(k)).sum()
    }
}

/// Count the rows of `target` per data key id (one scan, grouped by the
/// 9-byte prefix of each value: version byte and key id).
pub async fn count_by_key(pool: &JobPool, target: &Target) -> JobResult<KeyCounts> {
    let d = pool.dialect();
    let col = d.quote(&target.column);
    let prefix = d.substr(&col, 1, 1 + crate::format::KEY_ID_LEN);
    let sql = format!(
        "SELECT {prefix} AS p, COUNT(*) FROM {} GROUP BY {prefix}",
        d.quote(&target.table)
    );
    let rows: Vec<(Option<Vec<u8>>, i64)> =
        on_pool!(pool, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(p).await?);
    let mut out = KeyCounts::default();
    for (prefix, n) in rows {
        out.add(prefix.as_deref(), n as u64);
    }
    Ok(out)
}

impl KeyCounts {
    /// Count `n` rows whose value starts with `prefix` (version byte and key
    /// id; `None` for NULL).
    fn add(&mut self, prefix: Option<&[u8]>, n: u64) {
        match prefix {
            None => self.null += n,
            Some(p) if p.len() == 9 && p[0] == crate::format::VERSION_V1 => {
                let id = u64::from_be_bytes(p[1..9].try_into().expect("8 bytes"));
                if id == 0 {
                    self.unrecognized += n;
                } else {
                    *self.by_key.entry(KeyId::new(id)).or_default() += n;
                }
            }
            Some(_) => self.unrecognized += n,
        }
    }

    fn merge(&mut self, other: &KeyCounts) {
        self.null += other.null;
        self.unrecognized += other.unrecognized;
        for (k, n) in &other.by_key {
            *self.by_key.entry(*k).or_default() += n;
        }
    }
}

/// Count the rows of `target` per tenant and data key id (one scan, grouped
/// by the tenant column and the 9-byte prefix of each value). The target
/// needs a tenant column; rows without a tenant are under `None`.
pub async fn count_by_tenant_key(
    pool: &JobPool,
    target: &Target,
) -> JobResult<BTreeMap<Option<String>, KeyCounts>> {
    let tb = target.tenant.as_ref().ok_or_else(|| {
        JobError::Invalid(format!(
            "{target} has no tenant column: give one (Target::tenant, --tenant-column) to count per tenant"
        ))
    })?;
    let d = pool.dialect();
    let col = d.quote(&target.column);
    let prefix = d.substr(&col, 1, 1 + crate::format::KEY_ID_LEN);
    let sql = format!(
        "SELECT {}, {prefix}, COUNT(*) FROM {} GROUP BY 1, 2",
        super::rowkey::select_tenant(d, tb),
        d.quote(&target.table)
    );
    let rows: Vec<(Option<String>, Option<Vec<u8>>, i64)> = on_pool!(pool, p => {
        use sqlx::Row as _;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(p).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((super::rowkey::read_tenant(&r, 0, tb)?, r.try_get(1)?, r.try_get(2)?));
        }
        out
    });
    let mut out: BTreeMap<Option<String>, KeyCounts> = BTreeMap::new();
    for (tenant, prefix, n) in rows {
        out.entry(tenant)
            .or_default()
            .add(prefix.as_deref(), n as u64);
    }
    Ok(out)
}

/// Count the rows of `target` whose value references any of `keys`.
pub async fn count_rows_on(pool: &JobPool, target: &Target, keys: &[KeyId]) -> JobResult<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let d = pool.dialect();
    let col = d.quote(&target.column);
    let phs: Vec<String> = (1..=keys.len()).map(|i| d.ph(i)).collect();
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE {} IN ({})",
        d.quote(&target.table),
        d.key_id_expr(&col),
        phs.join(", ")
    );
    let n: i64 = on_pool!(pool, p => {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for k in keys {
            q = q.bind(key_id_bytes(*k));
        }
        q.fetch_one(p).await?
    });
    Ok(n as u64)
}

/// Record `target` in the key store's column registry (idempotent).
pub async fn register_column(pool: &JobPool, target: &Target) -> JobResult<()> {
    let record = crate::store::ColumnRecord::sealed(
        &target.context_table,
        &target.context_table,
        &target.context_column,
    )
    .with_sql(
        target.table.as_str(),
        target.column.as_str(),
        crate::store::ColumnSource::Job,
    );
    pool.key_store().register_columns(&[record]).await?;
    Ok(())
}

/// The key and tenant columns of a model's registered description.
#[derive(serde::Deserialize)]
struct ModelKeys {
    key: Vec<NamedKind<crate::model::PkKind>>,
    tenant: Option<NamedKind<crate::model::TenantKind>>,
}

#[derive(serde::Deserialize)]
struct NamedKind<K> {
    name: String,
    kind: K,
}

/// Every column recorded in the key store's column registry (with its key and
/// tenant columns when a model registered it; otherwise an integer `id`).
pub async fn registered_columns(pool: &JobPool) -> JobResult<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for c in pool.key_store().columns().await? {
        let mut t = Target::new(c.table(), "id", c.column())?
            .context_table(&c.context_table)
            .context_column(&c.context_column);
        // A model's description names its key and tenant columns.
        if let Some(m) = c
            .model
            .as_deref()
            .and_then(|m| serde_json::from_str::<ModelKeys>(m).ok())
        {
            t = t.key(
                m.key
                    .into_iter()
                    .map(|k| {
                        Ok(super::PkColumn {
                            name: super::Ident::new(&k.name)?,
                            kind: k.kind,
                        })
                    })
                    .collect::<JobResult<_>>()?,
            )?;
            if let Some(tn) = m.tenant {
                t = t.tenant(super::TenantBinding {
                    column: super::Ident::new(&tn.name)?,
                    kind: tn.kind,
                });
            }
        }
        if !out
            .iter()
            .any(|o| o.table == t.table && o.column == t.column)
        {
            out.push(t);
        }
    }
    Ok(out)
}

/// The key distribution of one column, with master keys resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ColumnStatus {
    /// The column.
    pub target: Target,
    /// Rows per data key.
    pub counts: KeyCounts,
    /// Rows per master key (a row counts once under every master key its data
    /// key is wrapped by).
    pub by_master_key: BTreeMap<MasterKeyId, u64>,
    /// Rows whose data key is unknown to the key store, or in a state that
    /// cannot decrypt (retired, destroyed): rows that do not open today.
    pub undecryptable: u64,
    /// The same per tenant, for a target with a tenant column (empty
    /// otherwise); rows without a tenant under `None`.
    pub by_tenant: BTreeMap<Option<String>, TenantStatus>,
}

/// The key distribution of one tenant's rows of a column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantStatus {
    /// Rows per data key.
    pub counts: KeyCounts,
    /// Rows that do not open today (unknown, retired or destroyed key).
    pub undecryptable: u64,
}

/// Rows of `counts` whose key is unknown or cannot decrypt.
fn undecryptable(counts: &KeyCounts, keys: &[KeyRecord]) -> u64 {
    counts
        .by_key
        .iter()
        .filter(|(id, _)| {
            keys.iter()
                .find(|r| r.id == **id)
                .is_none_or(|r| !r.state.can_decrypt())
        })
        .map(|(_, n)| n)
        .sum()
}

impl ColumnStatus {
    /// Compute the status of `target` given the key store's records.
    pub async fn compute(
        pool: &JobPool,
        target: &Target,
        keys: &[KeyRecord],
    ) -> JobResult<ColumnStatus> {
        // With a tenant column, one grouped scan gives both views.
        let (counts, by_tenant) = if target.tenant.is_some() {
            let per = count_by_tenant_key(pool, target).await?;
            let mut all = KeyCounts::default();
            let mut by_tenant = BTreeMap::new();
            for (tenant, c) in per {
                all.merge(&c);
                let undecryptable = undecryptable(&c, keys);
                by_tenant.insert(
                    tenant,
                    TenantStatus {
                        counts: c,
                        undecryptable,
                    },
                );
            }
            (all, by_tenant)
        } else {
            (count_by_key(pool, target).await?, BTreeMap::new())
        };
        let mut by_master_key = BTreeMap::new();
        let mut undecryptable = 0;
        for (id, n) in &counts.by_key {
            match keys.iter().find(|r| r.id == *id) {
                Some(r) => {
                    if !r.state.can_decrypt() {
                        undecryptable += n;
                    }
                    // A data key wrapped by a branch key is under the master
                    // keys that wrap its branch key.
                    let wrapped = match &r.parent {
                        Some(p) => keys
                            .iter()
                            .find(|b| b.id == p.parent)
                            .map_or(&[][..], |b| &b.wrapped[..]),
                        None => &r.wrapped[..],
                    };
                    for w in wrapped {
                        *by_master_key.entry(w.master_key.clone()).or_default() += n;
                    }
                }
                None => undecryptable += n,
            }
        }
        Ok(ColumnStatus {
            target: target.clone(),
            counts,
            by_master_key,
            undecryptable,
            by_tenant,
        })
    }
}

/// How long after a key's seal horizon destroy still waits by default, for
/// values sealed just before the horizon to reach the database (a seal and
/// the write that stores it are not one step).
pub const DEFAULT_DESTROY_SETTLE: Duration = Duration::from_secs(60);

/// The horizon assumed for keys written by releases that did not record one
/// (0.1): creation plus 24 hours, longer than any sensible `max_age`.
pub const LEGACY_SEAL_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// What [`destroy_key`] checks and waits for.
#[derive(Debug, Clone)]
pub struct DestroyOptions {
    columns: Vec<Target>,
    settle: Duration,
    skip_seal_horizon: bool,
}

impl Default for DestroyOptions {
    fn default() -> Self {
        DestroyOptions {
            columns: Vec::new(),
            settle: DEFAULT_DESTROY_SETTLE,
            skip_seal_horizon: false,
        }
    }
}

impl DestroyOptions {
    /// Check every registered column, wait for the seal horizon plus
    /// [`DEFAULT_DESTROY_SETTLE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Also count rows in `target` (registered columns are always counted).
    pub fn column(mut self, target: Target) -> Self {
        self.columns.push(target);
        self
    }

    /// Wait this long past the seal horizon instead of [`DEFAULT_DESTROY_SETTLE`].
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Do not wait for the key's seal horizon. Only correct when every process
    /// that could still hold the key as its active key is known to be stopped:
    /// a process that is not keeps sealing under it, and those values are lost
    /// with the key.
    pub fn unsafe_skip_seal_horizon(mut self) -> Self {
        self.skip_seal_horizon = true;
        self
    }
}

/// What [`destroy_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// The key was destroyed by this call.
    Now,
    /// The key was destroyed before: nothing changed.
    Already,
}

/// Destroy data key `id` (crypto-shredding: its wrapped material is deleted).
///
/// Only data keys: a branch or index key is refused ([`JobError::Invalid`]).
/// Values carry data-key ids, so no row count could stop the destruction of
/// a branch key (every value under every data key it wraps) or of an index
/// key (every lookup of its blind index); a tenant's whole key tree goes
/// with [`Envelope::shred_tenant`].
///
/// Refused with [`JobError::SealHorizon`] until the key's seal horizon (recorded
/// in the store when the key was activated: after it no process seals under
/// the key, whatever its caches hold) plus the settle time has passed by the
/// store's clock; then refused with [`JobError::RowsRemain`] unless zero rows
/// reference it in every registered column and in the columns of `opts`.
///
/// Rows are counted with the key as it is; when none remain, the key is set
/// to `retired` (refused for any use), the rows are counted again (for values
/// written meanwhile: then it is put back as it was) and the key is destroyed
/// (a key already `retired` goes from the first count to `destroyed`).
/// Every change is a compare-and-set from the state this call read or set: if
/// an operator or another process changes the key in between, destroy fails
/// with [`crate::Error::StateConflict`] (or [`JobError::RowsRemain`] when its
/// second count found rows) and leaves their change as it is (run it again to
/// decide on the new state). One change a state cannot show: a
/// suspend while the key is `retired` for the second count finds it already
/// suspended, and is undone if that count finds rows.
///
/// A key destroyed already is left as it is ([`Destroyed::Already`]).
pub async fn destroy_key(
    envelope: &Envelope,
    pool: &JobPool,
    opts: &DestroyOptions,
    id: KeyId,
) -> JobResult<Destroyed> {
    let record = envelope
        .store()
        .get(id)
        .await?
        .ok_or(crate::Error::UnknownKey(id))?;
    if record.kind != KeyKind::Data {
        let what = if record.kind == KeyKind::Index {
            "an index key"
        } else {
            "a branch key"
        };
        return Err(JobError::Invalid(format!(
            "key {id} is {what}, not a data key: destroying it would make unreadable every value \
             it stands behind (no row count can check that); destroy data keys after their rows \
             are re-encrypted, or crypto-shred a whole tenant with `keys shred-tenant`"
        )));
    }
    if record.state == KeyState::Destroyed {
        return Ok(Destroyed::Already);
    }
    if record.state == KeyState::Active {
        return Err(JobError::Invalid(format!(
            "data key {id} is active; retire it (`keys retire {n}`) and re-encrypt its rows (`reencrypt --key {n}`) first",
            n = id.get()
        )));
    }
    if !opts.skip_seal_horizon {
        let horizon = record
            .horizon_ms
            .unwrap_or(record.created_ms + LEGACY_SEAL_HORIZON.as_millis() as i64);
        let ready = horizon.saturating_add(crate::clock::ms(opts.settle));
        let now = envelope.store().now_ms().await?;
        if now < ready {
            return Err(JobError::SealHorizon {
                key: id,
                wait: Duration::from_millis((ready - now) as u64),
            });
        }
    }
    let extra = &opts.columns;
    let mut targets: Vec<Target> = registered_columns(pool).await?;
    let mut seen: BTreeSet<(String, String)> = targets
        .iter()
        .map(|t| (t.table.to_string(), t.column.to_string()))
        .collect();
    for t in extra {
        if seen.insert((t.table.to_string(), t.column.to_string())) {
            targets.push(t.clone());
        }
    }
    if targets.is_empty() {
        return Err(JobError::Invalid(
            "no encrypted column is registered: name the columns to check before destroying a key (`--column TABLE.COLUMN[:PK]`, `DestroyOptions::column`)"
                .into(),
        ));
    }
    // Count first, with the key as it is: the usual refusal (rows remain)
    // changes nothing, so it cannot undo what an operator does meanwhile.
    count_refs(pool, &targets, id).await?;
    // No row left: suspend the key (no process that reloads it seals or opens
    // under it), count again for rows written meanwhile, then destroy. Each
    // step is a compare-and-set from the state this call set or read: a key an
    // operator or another process moved in between is left as they left it.
    // (A key that was retired all along was counted so: no second count.)
    if record.state != KeyState::Retired {
        envelope
            .change_key_state(id, record.state, KeyState::Retired)
            .await?;
        if let Err(e) = count_refs(pool, &targets, id).await {
            match envelope
                .change_key_state(id, KeyState::Retired, record.state)
                .await
            {
                Ok(()) | Err(crate::Error::StateConflict { .. }) => {}
                Err(undo) => return Err(undo.into()),
            }
            return Err(e);
        }
    }
    envelope
        .change_key_state(id, KeyState::Retired, KeyState::Destroyed)
        .await?;
    Ok(Destroyed::Now)
}

/// Refuse ([`JobError::RowsRemain`]) while any row of `targets` references
/// data key `id`, or ([`JobError::Invalid`]) while a column cannot be counted.
async fn count_refs(pool: &JobPool, targets: &[Target], id: KeyId) -> JobResult<()> {
    let mut rows = 0;
    let mut where_ = Vec::new();
    for t in targets {
        let n = count_rows_on(pool, t, &[id]).await.map_err(|e| {
            JobError::Invalid(format!(
                "cannot count the rows of column {t} ({e}): destroy refuses while it cannot check every column values under data key {id} may be in; restore the column, or run destroy where it exists"
            ))
        })?;
        if n > 0 {
            where_.push(format!("{t}: {n}"));
        }
        rows += n;
    }
    if rows > 0 {
        return Err(JobError::RowsRemain {
            rows,
            what: format!(
                "reference data key {id} ({}): re-encrypt them off it first (`reencrypt --key {}` with each column's \
                 --table and --column, or --model), then destroy again",
                where_.join(", "),
                id.get()
            ),
        });
    }
    Ok(())
}

/// The result of [`verify_keys_open`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeysOpenReport {
    /// Distinct data keys referenced by stored values.
    pub keys: u64,
    /// Of those, keys the configured keyring opened.
    pub opened: u64,
    /// Keys that did not open, each with the reason (a key id and an error
    /// message, never key material).
    pub failed: Vec<(KeyId, String)>,
    /// Index keys (blind indexes) of the targets' tables that can still be
    /// used (`active` or `decrypt_only`).
    pub index_keys: u64,
    /// Of those, keys the configured keyring opened.
    pub index_opened: u64,
    /// Index keys that did not open, each with its scope
    /// (`table/index/vN`) and the reason.
    pub index_failed: Vec<(KeyId, String, String)>,
}

impl KeysOpenReport {
    /// Every referenced data key and every usable index key opened.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty() && self.index_failed.is_empty()
    }
}

/// Prove that `envelope`'s configuration opens what is stored: load every
/// data key referenced by a value in `targets` (through its branch key and the
/// keyring, as a read would), one load per distinct key, not per row, and
/// unwrap every usable index key of the targets' tables (blind indexes). Run it
/// after a master-key rotation (`keys rewrap --delete-old`) with the
/// configuration the applications will use.
pub async fn verify_keys_open(
    envelope: &Envelope,
    pool: &JobPool,
    targets: &[Target],
) -> JobResult<KeysOpenReport> {
    let mut ids: BTreeSet<KeyId> = BTreeSet::new();
    for t in targets {
        ids.extend(count_by_key(pool, t).await?.by_key.into_keys());
    }
    let mut report = KeysOpenReport {
        keys: ids.len() as u64,
        ..Default::default()
    };
    for id in ids {
        match envelope.decrypt_key(id).await {
            Ok(_) => report.opened += 1,
            Err(e) => report.failed.push((id, e.to_string())),
        }
    }
    // The blind indexes' keys of the same tables: wrapped by the master keys
    // themselves (a master-key rotation re-wraps them), so a configuration
    // that opens every data key may still not open them.
    let tables: BTreeSet<&str> = targets.iter().map(|t| t.table.as_str()).collect();
    let index_keys = envelope
        .store()
        .list(&crate::store::KeyFilter::all().kind(KeyKind::Index))
        .await?;
    for r in index_keys.iter().filter(|r| {
        r.state.can_decrypt()
            && r.scope
                .split_once('/')
                .is_some_and(|(table, _)| tables.contains(table))
    }) {
        report.index_keys += 1;
        match envelope.keyring_unwrap(r).await {
            Ok(_) => report.index_opened += 1,
            Err(e) => report
                .index_failed
                .push((r.id, r.scope.clone(), e.to_string())),
        }
    }
    Ok(report)
}
