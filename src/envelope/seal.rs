//! Sealing: the warm path, batches, and the active data keys behind them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Envelope, check_row};
use crate::cache::front::PlaceRef;
use crate::cache::{ActiveKey, Limit, ScopeKey, bump};
use crate::context::{Context, RowId};
use crate::error::{Error, Result};
use crate::format;
use crate::model::ModelDescription;
use crate::sealed::Sealed;
use crate::store::{ColumnRecord, ColumnSource};

/// Front entries (columns × tenants) kept before revoked ones are pruned.
const FRONT_PRUNE: usize = 4_096;

/// Distinct columns of a batch group found by a scan of the list; past this
/// many, by a hash set.
const FEW_PLACES: usize = 16;

/// A batch of at least twice this many values under one key is sealed on
/// several cores (parts of at least this many values): the database waits for
/// the batch, so its cores are idle. Below it, handing half a batch to another
/// core costs more than it saves. Measured on a 2-core machine: a page of
/// 2,000 values took 400 µs split in two (a one-off run with the earlier
/// threshold of 512) and 358 µs on one thread (`page_2k/seal_many` in
/// `benches/envelope.rs` now), while 10,000 values took 1.58 ms split and
/// 1.83 ms on one thread (`batch_10k/seal_many_one_thread`).
const SEAL_SPLIT_MIN: usize = 2_048;

/// Values of one `seal_many` batch that share an active key: one scope and
/// tenant (those of `first`, its first value), and where they are in the batch.
struct SealGroup<'a, 'c> {
    first: &'a Context<'c>,
    scope: std::borrow::Cow<'a, str>,
    members: Vec<usize>,
}

/// Whether two places are the same, at once when they are named by the same
/// strings.
#[inline]
fn same_place(a: &PlaceRef<'_>, b: &PlaceRef<'_>) -> bool {
    use crate::format::{same_opt_str, same_str};
    same_str(a.0, b.0) && same_str(a.1, b.1) && same_opt_str(a.2, b.2)
}

/// Seal `values` under `key`, split across cores when the batch is large.
/// Every output buffer is allocated here, on the calling thread (which gets
/// the values back and will free them); the other threads encrypt the buffers
/// in place (with scratch space of their own) and allocate none of them. If sealing panics, the buffers (some still holding plaintext) are
/// wiped before the panic goes on.
fn seal_spread(
    key: &crate::key::DataKey,
    values: &[(&Context<'_>, &[u8])],
    nonces: &[[u8; format::NONCE_LEN]],
    threads: usize,
) -> Vec<Vec<u8>> {
    let mut out = format::seal_buffers(key, values, nonces);
    let sealed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        seal_parts(key, values, &mut out, threads)
    }));
    if let Err(panic) = sealed {
        for buf in &mut out {
            zeroize::Zeroize::zeroize(buf);
        }
        std::panic::resume_unwind(panic);
    }
    out
}

/// Seal `out` (made by [`format::seal_buffers`] for `values`) in place: in
/// parts of at least [`SEAL_SPLIT_MIN`] values on up to `threads` threads,
/// the first on the calling thread.
fn seal_parts(
    key: &crate::key::DataKey,
    values: &[(&Context<'_>, &[u8])],
    out: &mut [Vec<u8>],
    threads: usize,
) {
    let parts = (values.len() / SEAL_SPLIT_MIN).min(threads);
    if parts <= 1 {
        return format::seal_batch_into(key, values, out);
    }
    let per = values.len().div_ceil(parts);
    std::thread::scope(|s| {
        let mut parts = values.chunks(per).zip(out.chunks_mut(per));
        let (first_values, first_out) = parts.next().expect("a non-empty batch");
        let others: Vec<_> = parts
            .map(|(v, o)| s.spawn(move || format::seal_batch_into(key, v, o)))
            .collect();
        format::seal_batch_into(key, first_values, first_out);
        for part in others {
            if let Err(panic) = part.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

impl Envelope {
    /// Encrypt `plaintext` for the value at `ctx`.
    pub async fn seal(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Result<Sealed> {
        if let Some(done) = self.seal_if_cached(ctx, plaintext) {
            return done;
        }
        check_row(ctx)?;
        self.register_column(ctx).await?;
        let len = plaintext.len() as u64;
        let (active, sealed) = loop {
            let active = self.active_key(ctx, 1, len).await?;
            // Empty only if revoked since its reservation (a state change):
            // take the next active key.
            if let Some(s) = active.with_key(|k| format::seal(k, ctx, plaintext)) {
                break (active, Sealed::from_trusted(s));
            }
        };
        if len <= self.inner.cache.limits.max_bytes {
            self.front_put(ctx, &active);
        }
        Ok(sealed)
    }

    /// The warm path of [`Envelope::seal`]: `None` when the active key of the
    /// value's column is not cached (or cannot take one more value), so that
    /// the caller falls back to the async path. Synchronous: no lock, no await,
    /// no precise clock read.
    #[inline]
    pub fn seal_if_cached(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Option<Result<Sealed>> {
        if ctx.row.is_empty() {
            return None;
        }
        let inner = &*self.inner;
        let l = &inner.cache.limits;
        let len = plaintext.len() as u64;
        let now = inner.clock.coarse();
        let slack = inner.clock.coarse_resolution();
        let sealed =
            inner
                .cache
                .seal_front
                .with(PlaceRef(ctx.table, ctx.column, ctx.tenant), |a| {
                    a.reserve(1, len, now, slack, l.max_age, l)
                        .ok()
                        .and_then(|()| a.with_key(|k| format::seal(k, ctx, plaintext)))
                })??;
        bump(&inner.counters.encrypt_hits);
        Some(Ok(Sealed::from_trusted(sealed)))
    }

    /// Encrypt many values. Values that share an active data key reserve their
    /// uses and bytes in one step (a whole row, or a whole batch of rows of one
    /// table and tenant), within the cache limits.
    pub async fn seal_many(&self, items: &[(Context<'_>, &[u8])]) -> Result<Vec<Sealed>> {
        let limits = &self.inner.cache.limits;
        for (ctx, _) in items {
            check_row(ctx)?;
        }
        // Group by (scope, tenant): the values of one group share an active key.
        // A value is compared by name with each group's first value (the
        // previous value's group first: a row's columns, consecutive rows),
        // without building a scope; only a value no group matches by name has
        // its scope built and compared (two different names can make one
        // scope, see `ScopePolicy::same_group`).
        let mut groups: Vec<SealGroup<'_, '_>> = Vec::new();
        let mut prev = 0;
        for (i, (ctx, _)) in items.iter().enumerate() {
            let named = |g: &SealGroup<'_, '_>| self.inner.scope.same_group(g.first, ctx);
            let g = if groups.get(prev).is_some_and(named) {
                prev
            } else if let Some(g) = groups.iter().position(named) {
                g
            } else {
                let scope = self.inner.scope.scope_of(ctx);
                match groups
                    .iter()
                    .position(|g| g.scope == scope && g.first.tenant == ctx.tenant)
                {
                    Some(g) => g,
                    None => {
                        groups.push(SealGroup {
                            first: ctx,
                            scope,
                            members: Vec::new(),
                        });
                        groups.len() - 1
                    }
                }
            };
            groups[g].members.push(i);
            prev = g;
        }
        let mut out: Vec<Option<Sealed>> = vec![None; items.len()];
        for SealGroup { members, .. } in groups {
            let count = members.len() as u64;
            let bytes: u64 = members.iter().map(|&i| items[i].1.len() as u64).sum();
            if count > limits.max_uses || bytes > limits.max_bytes {
                // More than one key can take: value by value.
                for &i in &members {
                    out[i] = Some(self.seal(&items[i].0, items[i].1).await?);
                }
                continue;
            }
            // The distinct columns of the group (a page of rows has a few),
            // each with one of its values' contexts: registered, and later
            // pointed at the key, once each rather than once per value. Past
            // a few columns they are looked up in a set, not a list.
            let mut places: Vec<(PlaceRef<'_>, usize)> = Vec::new();
            let mut seen: HashSet<PlaceRef<'_>> = HashSet::new();
            for &i in &members {
                let ctx = &items[i].0;
                let place = PlaceRef(ctx.table, ctx.column, ctx.tenant);
                let known = if places.len() <= FEW_PLACES {
                    places.iter().any(|(p, _)| same_place(p, &place))
                } else {
                    if seen.is_empty() {
                        seen.extend(places.iter().map(|(p, _)| *p));
                    }
                    !seen.insert(place)
                };
                if !known {
                    places.push((place, i));
                }
            }
            for &(place, i) in &places {
                let registered = self.inner.cache.seal_front.with(place, |_| ()).is_some();
                if !registered {
                    self.register_column(&items[i].0).await?;
                }
            }
            let first = &items[members[0]].0;
            let active = self.active_key(first, count, bytes).await?;
            let Some(key) = active.data_key() else {
                // Revoked since its reservation: value by value.
                for &i in &members {
                    out[i] = Some(self.seal(&items[i].0, items[i].1).await?);
                }
                continue;
            };
            let nonces = format::random_nonces(members.len());
            let values: Vec<(&Context<'_>, &[u8])> =
                members.iter().map(|&i| (&items[i].0, items[i].1)).collect();
            let sealed = seal_spread(&key, &values, &nonces, self.batch_threads());
            for (&i, s) in members.iter().zip(sealed) {
                out[i] = Some(Sealed::from_trusted(s));
            }
            for &(_, i) in &places {
                self.front_put(&items[i].0, &active);
            }
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("every value sealed"))
            .collect())
    }

    fn front_put(&self, ctx: &Context<'_>, active: &Arc<ActiveKey>) {
        let place = PlaceRef(ctx.table, ctx.column, ctx.tenant);
        let same = self
            .inner
            .cache
            .seal_front
            .with(place, |a| Arc::ptr_eq(a, active))
            .unwrap_or(false);
        if same {
            return;
        }
        self.inner.cache.seal_front.put(
            PlaceRef(ctx.table, ctx.column, ctx.tenant),
            active,
            FRONT_PRUNE,
        );
    }

    /// Record in the key store that values are sealed into `ctx`'s column (once
    /// per process and column), so destroy and verify know every column a key's
    /// values may be in.
    pub(crate) async fn register_column(&self, ctx: &Context<'_>) -> Result<()> {
        let scope = self.inner.scope.scope_of(ctx);
        let name = format!("c\0{scope}\0{}\0{}", ctx.table, ctx.column);
        if self.inner.registered.contains_key(&name) {
            return Ok(());
        }
        self.inner
            .store
            .register_columns(&[ColumnRecord::sealed(&scope, ctx.table, ctx.column)])
            .await?;
        self.inner.registered.insert(name, ()).await;
        Ok(())
    }

    /// Record a model's encrypted columns, with its description, in the key
    /// store's column registry (once per process and model). The derive calls it
    /// on a model's first seal; the operator's tools then know every encrypted
    /// column of the model without running a job first.
    pub async fn register_model(&self, model: &'static ModelDescription) -> Result<()> {
        let name = format!("m\0{}\0{}", model.table, model.name);
        if self.inner.registered.contains_key(&name) {
            return Ok(());
        }
        let json = model.to_json();
        let no_row = RowId::composite([]);
        let cols: Vec<ColumnRecord> = model
            .encrypted
            .iter()
            .map(|c| {
                let ctx = Context::new(model.table, c.column, &no_row);
                let scope = self.inner.scope.scope_of(&ctx);
                ColumnRecord::sealed(&scope, model.table, c.column)
                    .with_sql(model.table, c.column, ColumnSource::Model)
                    .with_model(json.clone())
            })
            .collect();
        self.inner.store.register_columns(&cols).await?;
        self.inner.registered.insert(name, ()).await;
        Ok(())
    }

    /// The active data key of `ctx`'s scope and tenant, with `n` uses of `len`
    /// bytes in total reserved on it: the cached one if it can take them, else
    /// a new one (single-flight per scope). A single value larger than a whole
    /// key's byte budget gets a key of its own, demoted at once.
    pub(crate) async fn active_key(
        &self,
        ctx: &Context<'_>,
        n: u64,
        len: u64,
    ) -> Result<Arc<ActiveKey>> {
        let inner = &*self.inner;
        let limits = &inner.cache.limits;
        let scope_name = inner.scope.scope_of(ctx);
        if scope_name.contains('\0') || ctx.tenant.is_some_and(|t| t.contains('\0')) {
            return Err(Error::Config(
                "a scope (table name) or tenant cannot contain NUL".into(),
            ));
        }
        if len > limits.max_bytes {
            // Its horizon is its activation: no other value is sealed under it.
            let one_off = self
                .mint_data_key(&scope_name, ctx.tenant, Duration::ZERO)
                .await?;
            self.demote(one_off.id()).await;
            return Ok(one_off);
        }
        let scope: ScopeKey = match ctx.tenant {
            Some(t) => format!("{scope_name}\0{t}").into(),
            None => (*scope_name).into(),
        };
        let slack = inner.clock.coarse_resolution();
        let mut current = inner.cache.active.get(&scope).await;
        loop {
            let now = inner.clock.coarse();
            let stale = match current {
                Some(active) => match active.reserve(n, len, now, slack, limits.max_age, limits) {
                    Ok(()) => {
                        bump(&inner.counters.encrypt_hits);
                        return Ok(active);
                    }
                    Err(limit) => Some((active, limit)),
                },
                None => None,
            };
            bump(&inner.counters.encrypt_misses);
            let refreshed = inner
                .cache
                .refresh_active(&scope, stale.as_ref().map(|(a, _)| a), || async {
                    let fresh = self
                        .mint_data_key(&scope_name, ctx.tenant, limits.seal_window())
                        .await?;
                    if let Some((old, limit)) = &stale {
                        let counter = match limit {
                            Limit::Age => Some(&inner.counters.evicted_age),
                            Limit::Uses => Some(&inner.counters.evicted_uses),
                            Limit::Bytes => Some(&inner.counters.evicted_bytes),
                            Limit::Revoked => None,
                        };
                        old.revoke();
                        if let Some(c) = counter {
                            bump(c);
                            self.demote(old.id()).await;
                        }
                    }
                    Ok(fresh)
                })
                .await;
            match refreshed {
                Ok(active) => current = Some(active),
                Err(e) if e.is_retryable() => {
                    // Outage: an entry past max age only may serve within grace.
                    if let Some((old, Limit::Age)) = &stale {
                        let grace_age = limits.seal_window();
                        if old
                            .reserve(n, len, inner.clock.coarse(), slack, grace_age, limits)
                            .is_ok()
                        {
                            bump(&inner.counters.served_in_grace);
                            tracing::warn!(target: "sqlx_envelope::cache", key_id = old.id().get(), error = %e, "keyring unavailable; sealing under an aged data key within outage grace");
                            return Ok(old.clone());
                        }
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{DataKey, KeyId, KeyMaterial};

    /// A batch split into uneven parts on three threads: every value is
    /// sealed once, in order, with its own nonce, and opens to its plaintext.
    #[test]
    fn a_split_batch_seals_every_value_once_in_order() {
        let key = DataKey::new(KeyId::new(7), &KeyMaterial::generate());
        let n = 3 * SEAL_SPLIT_MIN + 1;
        let rows: Vec<RowId> = (0..n as i64).map(RowId::from).collect();
        let plains: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; i % 70]).collect();
        let ctxs: Vec<Context<'_>> = rows.iter().map(|r| Context::new("t", "c", r)).collect();
        let values: Vec<(&Context<'_>, &[u8])> =
            ctxs.iter().zip(&plains).map(|(c, p)| (c, &p[..])).collect();
        let nonces = format::random_nonces(n);
        for threads in [1, 2, 3] {
            let sealed = seal_spread(&key, &values, &nonces, threads);
            assert_eq!(sealed.len(), n);
            for (i, s) in sealed.iter().enumerate() {
                assert_eq!(
                    &s[format::NONCE_OFFSET..format::HEADER_LEN],
                    &nonces[i],
                    "{i}"
                );
                let opened = format::open_in_place(&key, &ctxs[i], s.clone()).unwrap();
                assert_eq!(&opened[..], &plains[i][..], "{threads} threads, value {i}");
            }
            // Opened under another value's context, it fails: bound to its row.
            assert!(format::open_in_place(&key, &ctxs[1], sealed[n - 1].clone()).is_err());
        }
    }
}
