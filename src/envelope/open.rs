//! Opening: the warm path, batches, and loading data keys through their branch
//! keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt as _;
use zeroize::Zeroizing;

use super::Envelope;
use crate::cache::{CachedKey, bump, load_through};
use crate::context::Context;
use crate::error::{Error, KeyOperation, Result};
use crate::format;
use crate::key::{DataKey, KeyId, KeyKind};
use crate::sealed::{Plaintext, Sealed};
use crate::store::KeyRecord;

/// Concurrent data-key loads of one batch (their keyring calls are bounded
/// separately, by the envelope's keyring concurrency).
const BATCH_LOADS: usize = 64;

impl Envelope {
    /// Decrypt the value stored at `ctx`.
    pub async fn open(&self, ctx: &Context<'_>, value: &Sealed) -> Result<Plaintext> {
        self.open_bytes(ctx, value.as_bytes()).await
    }

    /// Decrypt raw stored bytes (validated like [`Sealed::from_bytes`]).
    pub async fn open_bytes(&self, ctx: &Context<'_>, value: &[u8]) -> Result<Plaintext> {
        if let Some(done) = self.open_if_cached(ctx, value) {
            return done;
        }
        let header = format::parse_header(value)?;
        let key = self.decrypt_key(header.key_id).await?;
        format::open_parsed(&key, &header, ctx, value).map(Plaintext::new)
    }

    /// The warm path of [`Envelope::open_bytes`]: `None` when the value's data
    /// key is not cached (or past its TTL), so that the caller falls back to
    /// the async path. Synchronous: no lock, no await, no precise clock read.
    #[inline]
    pub fn open_if_cached(&self, ctx: &Context<'_>, value: &[u8]) -> Option<Result<Plaintext>> {
        let header = match format::parse_header(value) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let inner = &*self.inner;
        let now = inner.clock.coarse();
        let slack = inner.clock.coarse_resolution();
        let ttl = inner.cache.limits.decrypt_ttl;
        let opened = inner.cache.open_front.with(header.key_id, |c| {
            if c.fresh(now, slack, ttl) {
                c.with_key(|k| format::open_parsed(k, &header, ctx, value))
            } else {
                None
            }
        })??;
        bump(&inner.counters.decrypt_hits);
        Some(opened.map(Plaintext::new))
    }

    /// Decrypt many values: their data keys are resolved first, each distinct
    /// key once ([`Envelope::keys_for`]), then the values under one key are
    /// decrypted together ([`KeySet::open_batch`]). Fails on the first bad
    /// value.
    pub async fn open_many(&self, items: &[(Context<'_>, &[u8])]) -> Result<Vec<Plaintext>> {
        let keys = self.keys_for(items.iter().map(|(_, v)| *v)).await?;
        keys.open_batch(items)
            .into_iter()
            .map(|r| r.map(Plaintext::new))
            .collect()
    }

    /// Resolve the data keys of `values`, each distinct key once (one lookup per
    /// distinct key, a "same key as the previous value" fast path; the keys
    /// that are not cached are read from the store in one round trip and
    /// unwrapped through their branch keys, one keyring call per distinct
    /// branch key, bounded by the keyring concurrency), so that the values can
    /// then be opened without waiting, on any thread. Fails if any key cannot
    /// be resolved; [`Envelope::keys_for_partial`] keeps the others.
    pub async fn keys_for<'v>(&self, values: impl IntoIterator<Item = &'v [u8]>) -> Result<KeySet> {
        let (keys, mut failed) = self.resolve(values, true).await?;
        match failed.pop() {
            Some((_, e)) => Err(e),
            None => Ok(keys),
        }
    }

    /// Like [`Envelope::keys_for`], but a key that cannot be resolved (unknown,
    /// retired, destroyed, its keyring refusing) fails only its own values: the
    /// set holds every key that resolved, and each failure comes with its key.
    /// A value that is not a sealed value at all is still an error.
    pub async fn keys_for_partial<'v>(
        &self,
        values: impl IntoIterator<Item = &'v [u8]>,
    ) -> Result<(KeySet, Vec<(KeyId, Error)>)> {
        self.resolve(values, false).await
    }

    async fn resolve<'v>(
        &self,
        values: impl IntoIterator<Item = &'v [u8]>,
        stop_at_first: bool,
    ) -> Result<(KeySet, Vec<(KeyId, Error)>)> {
        let mut ids: Vec<KeyId> = Vec::new();
        let mut last = None;
        for v in values {
            let id = format::parse_header(v)?.key_id;
            if last != Some(id) {
                ids.push(id);
                last = Some(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let inner = &*self.inner;
        let now = inner.clock.coarse();
        let slack = inner.clock.coarse_resolution();
        let ttl = inner.cache.limits.decrypt_ttl;
        let mut keys = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match inner
                .cache
                .open_front
                .with(id, |c| {
                    if c.fresh(now, slack, ttl) {
                        c.data_key()
                    } else {
                        None
                    }
                })
                .flatten()
            {
                Some(k) => {
                    bump(&inner.counters.decrypt_hits);
                    keys.push((id, k));
                }
                None => missing.push(id),
            }
        }
        let mut failed = Vec::new();
        if !missing.is_empty() {
            for (id, loaded) in self.load_data_keys(&missing, stop_at_first).await? {
                match loaded {
                    Ok(k) => keys.push((id, k)),
                    Err(e) => failed.push((id, e)),
                }
            }
            keys.sort_unstable_by_key(|(id, _)| *id);
        }
        Ok((
            KeySet {
                keys: Arc::new(keys),
            },
            failed,
        ))
    }

    /// Load several data keys: one store round trip for their records, then
    /// each through its single-flight cache entry. With `stop_at_first`, the
    /// first failure ends the load (and is the last entry).
    async fn load_data_keys(
        &self,
        ids: &[KeyId],
        stop_at_first: bool,
    ) -> Result<Vec<(KeyId, Result<Arc<DataKey>>)>> {
        let epoch = self.inner.revocations.load(Ordering::Acquire);
        let mut records: HashMap<KeyId, KeyRecord> = self
            .inner
            .store
            .get_many(ids)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let jobs: Vec<(KeyId, Option<KeyRecord>)> =
            ids.iter().map(|id| (*id, records.remove(id))).collect();
        let mut loads = futures_util::stream::iter(jobs)
            .map(|(id, record)| async move {
                let loaded = match record {
                    None => Err(Error::UnknownKey(id)),
                    Some(record) => self.load_data_key(id, Some((record, epoch))).await,
                };
                (id, loaded)
            })
            .buffer_unordered(BATCH_LOADS);
        let mut out = Vec::with_capacity(ids.len());
        while let Some((id, one)) = loads.next().await {
            let failed = one.is_err();
            out.push((id, one));
            if failed && stop_at_first {
                break;
            }
        }
        Ok(out)
    }

    /// The unwrapped data key `id`, from the cache or through its branch key.
    pub async fn decrypt_key(&self, id: KeyId) -> Result<Arc<DataKey>> {
        self.load_data_key(id, None).await
    }

    /// Load data key `id` through its cache entry. `prefetched` is its record
    /// read at revocation epoch `epoch`: used only if no revocation happened
    /// since, so a load never publishes a key older than the latest revocation.
    async fn load_data_key(
        &self,
        id: KeyId,
        prefetched: Option<(KeyRecord, u64)>,
    ) -> Result<Arc<DataKey>> {
        let inner = &*self.inner;
        let l = &inner.cache.limits;
        let now = inner.clock.coarse();
        bump(&inner.counters.decrypt_misses);
        let front = inner.cache.open_front.clone();
        let cached = load_through(
            &inner.cache.unwrapped,
            id,
            now,
            inner.clock.coarse_resolution(),
            l.decrypt_ttl,
            l.outage_grace,
            &inner.counters,
            CachedKey::is_revoked,
            || async move {
                let record = match prefetched {
                    Some((r, epoch)) if inner.revocations.load(Ordering::Acquire) == epoch => r,
                    _ => inner.store.get(id).await?.ok_or(Error::UnknownKey(id))?,
                };
                if record.kind != KeyKind::Data {
                    return Err(Error::UnknownKey(id));
                }
                if !record.state.can_decrypt() {
                    return Err(Error::KeyNotUsable {
                        id,
                        state: record.state,
                        operation: KeyOperation::Decrypt,
                    });
                }
                let mut loaded = inner.clock.coarse();
                let material = match &record.parent {
                    Some(p) => {
                        let branch = self.branch_entry(p.parent).await?;
                        // A data key never outlives the cache entry of the
                        // branch key that unwrapped it: an outage is bounded
                        // by the branch TTL plus grace, not by both TTLs.
                        let branch_expiry = branch.loaded.saturating_add(l.branch_ttl);
                        loaded = loaded.min(branch_expiry.saturating_sub(l.decrypt_ttl));
                        branch.key.unwrap(&record.context(), &p.blob)?
                    }
                    None => self.keyring_unwrap(&record).await?,
                };
                Ok(Arc::new(CachedKey::new(
                    Arc::new(DataKey::new(id, &material)),
                    loaded,
                )))
            },
            move |fresh| front.put(id, fresh),
        )
        .await?;
        match cached.data_key() {
            Some(k) => Ok(k),
            // Revoked between its load and now (a state change): read the
            // key's record again, which says why it no longer opens.
            None => Box::pin(self.load_data_key(id, None)).await,
        }
    }
}

/// Data keys resolved for a batch of values ([`Envelope::keys_for`]): open the
/// values without waiting, on any thread. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Sorted by id.
    keys: Arc<Vec<(KeyId, Arc<DataKey>)>>,
}

impl KeySet {
    /// The key `id`, if resolved.
    #[inline]
    pub fn get(&self, id: KeyId) -> Option<&DataKey> {
        let k = &self.keys;
        let i = if k.len() <= 8 {
            k.iter().position(|(i, _)| *i == id)?
        } else {
            k.binary_search_by_key(&id, |(i, _)| *i).ok()?
        };
        Some(&k[i].1)
    }

    /// The key `id`, shared (the set keeps its own reference).
    pub fn get_arc(&self, id: KeyId) -> Option<Arc<DataKey>> {
        self.keys
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, k)| k.clone())
    }

    /// How many distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key was resolved.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Open many stored values whose keys are in the set, one result per
    /// value, in order. Consecutive values under one data key are decrypted
    /// together (the counter blocks of such a run go through one block-cipher
    /// call), so a page of values costs much less than opening them one by
    /// one. Each
    /// value is copied once, into the buffer its plaintext is returned in.
    pub fn open_batch(&self, items: &[(Context<'_>, &[u8])]) -> Vec<Result<Zeroizing<Vec<u8>>>> {
        let ctxs: Vec<&Context<'_>> = items.iter().map(|(c, _)| c).collect();
        let bufs = items
            .iter()
            .map(|(_, v)| Zeroizing::new(v.to_vec()))
            .collect();
        self.open_batch_parts(&ctxs, bufs)
    }

    /// [`KeySet::open_batch`] on values the caller owns (as fetched from a
    /// row): each is decrypted where it lies, no copy.
    pub fn open_batch_in_place(
        &self,
        items: Vec<(Context<'_>, Vec<u8>)>,
    ) -> Vec<Result<Zeroizing<Vec<u8>>>> {
        let mut ctxs = Vec::with_capacity(items.len());
        let mut bufs = Vec::with_capacity(items.len());
        for (ctx, value) in items {
            ctxs.push(ctx);
            bufs.push(Zeroizing::new(value));
        }
        self.open_batch_parts(&ctxs, bufs)
    }

    /// [`KeySet::open_batch_in_place`] with the contexts and the buffers
    /// apart (how the model batch opener holds them): one result per buffer,
    /// in order.
    pub(crate) fn open_batch_parts<'c, C: std::borrow::Borrow<Context<'c>>>(
        &self,
        ctxs: &[C],
        mut bufs: Vec<Zeroizing<Vec<u8>>>,
    ) -> Vec<Result<Zeroizing<Vec<u8>>>> {
        // Values that cannot be opened at all (malformed, key not in the set)
        // fail here, each with its error (rare: kept apart, by index); the
        // others are opened together, run by run.
        let mut failed: Vec<(usize, Error)> = Vec::new();
        let mut items: Vec<format::Opening<'_, '_>> = Vec::with_capacity(bufs.len());
        for (i, (buf, ctx)) in bufs.iter_mut().zip(ctxs).enumerate() {
            let found = format::parse_header(buf).and_then(|h| {
                let key = self
                    .get(h.key_id)
                    .ok_or_else(|| Error::UnknownKey(h.key_id))?;
                Ok((h, key))
            });
            match found {
                Ok((header, key)) => {
                    let ct_end = buf.len() - format::TAG_LEN;
                    let (head, tag) = buf.split_at_mut(ct_end);
                    items.push(format::Opening {
                        key,
                        ctx: ctx.borrow(),
                        nonce: header.nonce,
                        ct: &mut head[format::HEADER_LEN..],
                        tag: (&*tag).try_into().expect("16 bytes"),
                    });
                }
                Err(e) => failed.push((i, e)),
            }
        }
        let mut ok = Vec::with_capacity(items.len());
        format::open_batch(&mut items, &mut ok);
        drop(items);
        let mut failed = failed.into_iter().peekable();
        let mut opened = ok.into_iter();
        bufs.into_iter()
            .enumerate()
            .map(|(i, mut buf)| {
                if let Some((_, e)) = failed.next_if(|(at, _)| *at == i) {
                    return Err(e);
                }
                if !opened.next().expect("one result per value opened") {
                    return Err(Error::Authentication);
                }
                format::plaintext_to_front(&mut buf);
                Ok(buf)
            })
            .collect()
    }

    /// Open a stored value whose key is in the set (else
    /// [`Error::UnknownKey`]).
    pub fn open(&self, ctx: &Context<'_>, value: &[u8]) -> Result<Plaintext> {
        self.open_bytes(ctx, value).map(Plaintext::new)
    }

    /// Open a stored value into a zeroizing buffer.
    pub fn open_bytes(&self, ctx: &Context<'_>, value: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let header = format::parse_header(value)?;
        let key = self
            .get(header.key_id)
            .ok_or_else(|| Error::UnknownKey(header.key_id))?;
        format::open_parsed(key, &header, ctx, value)
    }

    /// Open a sealed value in its own buffer (see
    /// [`KeySet::open_in_place`]): the header is parsed once.
    pub fn open_sealed(&self, ctx: &Context<'_>, value: Sealed) -> Result<Zeroizing<Vec<u8>>> {
        self.open_in_place(ctx, value.into_bytes())
    }

    /// Open a stored value in its own buffer: no second allocation, no copy of
    /// the ciphertext (see [`format::open_in_place`]). The header is parsed
    /// once.
    pub fn open_in_place(&self, ctx: &Context<'_>, value: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
        let header = format::parse_header(&value)?;
        let key = self
            .get(header.key_id)
            .ok_or_else(|| Error::UnknownKey(header.key_id))?;
        format::open_in_place_parsed(key, &header, ctx, value)
    }
}
