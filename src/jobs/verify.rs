//! Verify passes: which data keys the rows of a column reference, and the guard
//! that refuses to destroy a data key while any row still references it.
//!
//! Encrypted columns are registered in `sqlx_envelope_columns` (every job
//! registers its target; [`register_column`] does it by hand), so that status
//! reports and [`destroy_key`] see every column without being told.

use std::collections::{BTreeMap, BTreeSet};

use super::db::key_id_bytes;
use super::{JobError, JobPool, JobResult, Target, on_pool};
use crate::envelope::Envelope;
use crate::key::{KeyId, KeyState, MasterKeyId};
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
        let n = n as u64;
        match prefix {
            None => out.null += n,
            Some(p) if p.len() == 9 && p[0] == crate::format::VERSION_V1 => {
                let id = u64::from_be_bytes(p[1..9].try_into().expect("8 bytes"));
                if id == 0 {
                    out.unrecognized += n;
                } else {
                    *out.by_key.entry(KeyId::new(id)).or_default() += n;
                }
            }
            Some(_) => out.unrecognized += n,
        }
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

/// Record `target` in `sqlx_envelope_columns` (idempotent).
pub async fn register_column(pool: &JobPool, target: &Target) -> JobResult<()> {
    let d = pool.dialect();
    let (ins, ign) = d.insert_ignore();
    let sql = format!(
        "{ins} INTO sqlx_envelope_columns (table_name, column_name, pk_column) VALUES ({}, {}, {}){ign}",
        d.ph(1),
        d.ph(2),
        d.ph(3)
    );
    on_pool!(pool, p => sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(target.table.as_str())
        .bind(target.column.as_str())
        .bind(target.pk.as_str())
        .execute(p)
        .await
        .map(|_| ())?);
    Ok(())
}

/// Every column recorded in `sqlx_envelope_columns`.
pub async fn registered_columns(pool: &JobPool) -> JobResult<Vec<Target>> {
    let sql = "SELECT table_name, column_name, pk_column FROM sqlx_envelope_columns ORDER BY table_name, column_name";
    let rows: Vec<(String, String, String)> =
        on_pool!(pool, p => sqlx::query_as(sql).fetch_all(p).await?);
    rows.into_iter()
        .map(|(t, c, pk)| Target::new(&t, &pk, &c))
        .collect()
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
}

impl ColumnStatus {
    /// Compute the status of `target` given the key store's records.
    pub async fn compute(
        pool: &JobPool,
        target: &Target,
        keys: &[KeyRecord],
    ) -> JobResult<ColumnStatus> {
        let counts = count_by_key(pool, target).await?;
        let mut by_master_key = BTreeMap::new();
        let mut undecryptable = 0;
        for (id, n) in &counts.by_key {
            match keys.iter().find(|r| r.id == *id) {
                Some(r) => {
                    if !r.state.can_decrypt() {
                        undecryptable += n;
                    }
                    for w in &r.wrapped {
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
        })
    }
}

/// Destroy data key `id` (crypto-shredding: its wrapped material is deleted),
/// but only after counting zero rows referencing it in every registered column
/// and in `extra` columns. Refuses with [`JobError::RowsRemain`] otherwise.
///
/// The key is first set to `retired` (refused for any use, reversible), so no
/// process that reloads it can seal or open under it while the rows are counted;
/// if rows remain it is put back to its previous state.
pub async fn destroy_key(
    envelope: &Envelope,
    pool: &JobPool,
    extra: &[Target],
    id: KeyId,
) -> JobResult<()> {
    let record = envelope
        .store()
        .get(id)
        .await?
        .ok_or(crate::Error::UnknownKey(id))?;
    if record.state == KeyState::Destroyed {
        return Ok(());
    }
    if record.state == KeyState::Active {
        return Err(JobError::Invalid(format!(
            "data key {id} is active; retire it and re-encrypt its rows first"
        )));
    }
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
            "no encrypted column is registered: name the columns to check before destroying a key"
                .into(),
        ));
    }
    if record.state != KeyState::Retired {
        envelope.set_key_state(id, KeyState::Retired).await?;
    }
    let mut rows = 0;
    let mut where_ = Vec::new();
    for t in &targets {
        let n = count_rows_on(pool, t, &[id]).await?;
        if n > 0 {
            where_.push(format!("{t}: {n}"));
        }
        rows += n;
    }
    if rows > 0 {
        if record.state != KeyState::Retired {
            envelope.set_key_state(id, record.state).await?;
        }
        return Err(JobError::RowsRemain {
            rows,
            what: format!("reference data key {id} ({})", where_.join(", ")),
        });
    }
    envelope.set_key_state(id, KeyState::Destroyed).await?;
    Ok(())
}
