//! The envelope: seal and open values.
//!
//! [`Envelope`] ties a [`Keyring`], a [`KeyStore`] and the caches together. It is
//! cheap to clone (one `Arc`) and meant to be built once per process and shared.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::try_join_all;

use crate::cache::{
    ActiveKey, CacheLimits, CacheStats, CachedKey, Counters, KeyCache, Limit, ScopeKey, bump, hot,
};
use crate::clock::{Clock, SystemClock};
use crate::context::Context;
use crate::error::{Error, KeyOperation, Result};
use crate::format;
use crate::key::{DataKey, KeyContext, KeyId, KeyState};
use crate::keyring::Keyring;
use crate::sealed::{Plaintext, Sealed};
use crate::store::{KeyRecord, KeyStore};

/// Which values share an active data key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ScopePolicy {
    /// One active key per table (and tenant). The default.
    #[default]
    Table,
    /// One active key per table and column (and tenant).
    Column,
    /// One active key for everything (per tenant).
    Fixed(String),
}

impl ScopePolicy {
    fn scope_of<'a>(&'a self, ctx: &Context<'a>) -> std::borrow::Cow<'a, str> {
        match self {
            ScopePolicy::Table => ctx.table.into(),
            ScopePolicy::Column => format!("{}.{}", ctx.table, ctx.column).into(),
            ScopePolicy::Fixed(s) => s.as_str().into(),
        }
    }
}

/// Builds an [`Envelope`].
#[derive(Debug, Default)]
pub struct EnvelopeBuilder {
    keyring: Option<Arc<dyn Keyring>>,
    store: Option<Arc<dyn KeyStore>>,
    limits: CacheLimits,
    clock: Option<Arc<dyn Clock>>,
    scope: ScopePolicy,
}

impl EnvelopeBuilder {
    /// The keyring that wraps data keys. Required.
    pub fn keyring(mut self, keyring: impl Keyring + 'static) -> Self {
        self.keyring = Some(Arc::new(keyring));
        self
    }

    /// The keyring, already shared.
    pub fn keyring_arc(mut self, keyring: Arc<dyn Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The key store holding wrapped data keys. Required.
    pub fn store(mut self, store: impl KeyStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The key store, already shared.
    pub fn store_arc(mut self, store: Arc<dyn KeyStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Cache limits (see [`CacheLimits`]).
    pub fn limits(mut self, limits: CacheLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The clock the caches read (tests pass a [`crate::ManualClock`]).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Which values share a data key.
    pub fn scope_policy(mut self, scope: ScopePolicy) -> Self {
        self.scope = scope;
        self
    }

    /// Build the envelope.
    pub fn build(self) -> Result<Envelope> {
        let keyring = self
            .keyring
            .ok_or_else(|| Error::Config("an envelope needs a keyring".into()))?;
        let store = self
            .store
            .ok_or_else(|| Error::Config("an envelope needs a key store".into()))?;
        self.limits.validate()?;
        let counters = Arc::new(Counters::default());
        Ok(Envelope {
            inner: Arc::new(Inner {
                cache: KeyCache::new(self.limits, counters.clone()),
                counters,
                keyring,
                store,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
                scope: self.scope,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    keyring: Arc<dyn Keyring>,
    store: Arc<dyn KeyStore>,
    cache: KeyCache,
    counters: Arc<Counters>,
    clock: Arc<dyn Clock>,
    scope: ScopePolicy,
}

/// Seals and opens values. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Envelope {
    inner: Arc<Inner>,
}

impl Envelope {
    /// Start building an envelope.
    pub fn builder() -> EnvelopeBuilder {
        EnvelopeBuilder::default()
    }

    /// The keyring.
    pub fn keyring(&self) -> &Arc<dyn Keyring> {
        &self.inner.keyring
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// The cache limits in force.
    pub fn limits(&self) -> &CacheLimits {
        &self.inner.cache.limits
    }

    /// Counters of cache hits, misses, keyring calls and evictions.
    pub fn stats(&self) -> CacheStats {
        self.inner.counters.snapshot()
    }

    /// Encrypt `plaintext` for the value at `ctx`.
    pub async fn seal(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Result<Sealed> {
        check_row(ctx)?;
        let key = self.active_key(ctx, plaintext.len() as u64).await?;
        Ok(Sealed::from_trusted(format::seal(&key, ctx, plaintext)))
    }

    /// Encrypt many values. Values that share a scope share the active key, within
    /// the cache limits.
    pub async fn seal_many(&self, items: &[(Context<'_>, &[u8])]) -> Result<Vec<Sealed>> {
        let mut out = Vec::with_capacity(items.len());
        for (ctx, pt) in items {
            out.push(self.seal(ctx, pt).await?);
        }
        Ok(out)
    }

    /// Decrypt the value stored at `ctx`.
    pub async fn open(&self, ctx: &Context<'_>, value: &Sealed) -> Result<Plaintext> {
        self.open_bytes(ctx, value.as_bytes()).await
    }

    /// Decrypt raw stored bytes (validated like [`Sealed::from_bytes`]).
    pub async fn open_bytes(&self, ctx: &Context<'_>, value: &[u8]) -> Result<Plaintext> {
        let header = format::parse_header(value)?;
        let key = self.decrypt_key(header.key_id).await?;
        format::open(&key, ctx, value).map(Plaintext::new)
    }

    /// Decrypt many values. Each distinct data key is resolved once, all of them
    /// concurrently, before any value is decrypted. Fails on the first bad value.
    pub async fn open_many(&self, items: &[(Context<'_>, &[u8])]) -> Result<Vec<Plaintext>> {
        let keys = self.resolve_keys(items.iter().map(|(_, v)| *v)).await?;
        items
            .iter()
            .map(|(ctx, v)| {
                let id = format::parse_header(v)?.key_id;
                format::open(&keys[&id], ctx, v).map(Plaintext::new)
            })
            .collect()
    }

    /// Resolve (load and unwrap, concurrently) the data keys of `values`, each
    /// distinct key once.
    pub async fn resolve_keys<'v>(
        &self,
        values: impl IntoIterator<Item = &'v [u8]>,
    ) -> Result<HashMap<KeyId, Arc<DataKey>>> {
        let mut ids: Vec<KeyId> = Vec::new();
        for v in values {
            ids.push(format::parse_header(v)?.key_id);
        }
        ids.sort_unstable();
        ids.dedup();
        let keys = try_join_all(ids.iter().map(|id| self.decrypt_key(*id))).await?;
        Ok(ids.into_iter().zip(keys).collect())
    }

    /// The unwrapped data key `id`, from the cache or the keyring.
    pub async fn decrypt_key(&self, id: KeyId) -> Result<Arc<DataKey>> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let cached = inner
            .cache
            .unwrapped(id, now, &inner.counters, || async move {
                let record = inner.store.get(id).await?.ok_or(Error::UnknownKey(id))?;
                if !record.state.can_decrypt() {
                    return Err(Error::KeyNotUsable {
                        id,
                        state: record.state,
                        operation: KeyOperation::Decrypt,
                    });
                }
                bump(&inner.counters.keyring_unwrap_calls);
                let material = inner
                    .keyring
                    .unwrap(&record.context(), &record.wrapped)
                    .await
                    .inspect_err(|_| bump(&inner.counters.keyring_failures))?;
                Ok(Arc::new(CachedKey::new(
                    Arc::new(DataKey::new(id, &material)),
                    inner.clock.now(),
                )))
            })
            .await?;
        Ok(cached.key.clone())
    }

    async fn active_key(&self, ctx: &Context<'_>, len: u64) -> Result<Arc<DataKey>> {
        let inner = &self.inner;
        let limits = &inner.cache.limits;
        let scope_name = inner.scope.scope_of(ctx);
        if len > limits.max_bytes {
            // Larger than a whole key's byte budget: a key of its own, not cached.
            return Ok(self.mint(&scope_name, ctx.tenant).await?.key.clone());
        }
        if scope_name.contains('\0') {
            return Err(Error::Config(
                "a scope (table name) cannot contain NUL".into(),
            ));
        }
        // Untenanted scopes are looked up by the borrowed name; the owned key is
        // built only on a miss.
        let tenanted = ctx.tenant.map(|t| format!("{scope_name}\0{t}"));
        let lookup: &str = tenanted.as_deref().unwrap_or(&scope_name);
        let now = inner.clock.now();
        if let Some(active) = hot::active(inner.cache.id, lookup)
            && active.reserve(len, now, limits.max_age, limits).is_ok()
        {
            bump(&inner.counters.encrypt_hits);
            return Ok(active.key.clone());
        }
        let mut current = inner.cache.active.get(lookup).await;
        loop {
            let now = inner.clock.now();
            let stale = match current {
                Some(active) => match active.reserve(len, now, limits.max_age, limits) {
                    Ok(()) => {
                        bump(&inner.counters.encrypt_hits);
                        hot::remember_active(inner.cache.id, lookup, &active);
                        return Ok(active.key.clone());
                    }
                    Err(limit) => Some((active, limit)),
                },
                None => None,
            };
            bump(&inner.counters.encrypt_misses);
            let scope: ScopeKey = lookup.into();
            let refreshed = inner
                .cache
                .refresh_active(&scope, stale.as_ref().map(|(a, _)| a), || async {
                    let fresh = self.mint(&scope_name, ctx.tenant).await?;
                    if let Some((old, limit)) = &stale {
                        let counter = match limit {
                            Limit::Age => Some(&inner.counters.evicted_age),
                            Limit::Uses => Some(&inner.counters.evicted_uses),
                            Limit::Bytes => Some(&inner.counters.evicted_bytes),
                            Limit::Revoked => None,
                        };
                        if let Some(c) = counter {
                            bump(c);
                            self.demote(old.key.id()).await;
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
                        let grace_age = limits.max_age + limits.outage_grace;
                        if old.reserve(len, now, grace_age, limits).is_ok() {
                            bump(&inner.counters.served_in_grace);
                            tracing::warn!(target: "sqlx_envelope::cache", key_id = old.key.id().get(), error = %e, "keyring unavailable; sealing under an aged data key within outage grace");
                            return Ok(old.key.clone());
                        }
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reserve, generate, store and activate a new data key, and prime the
    /// decrypt cache with it. The key is durably stored before it is returned.
    async fn mint(&self, scope: &str, tenant: Option<&str>) -> Result<Arc<ActiveKey>> {
        let inner = &self.inner;
        let id = inner.store.reserve(scope, tenant).await?;
        let kctx = KeyContext {
            scope: scope.to_owned(),
            tenant: tenant.map(str::to_owned),
            key_id: id,
        };
        bump(&inner.counters.keyring_generate_calls);
        let generated = inner
            .keyring
            .generate(&kctx)
            .await
            .inspect_err(|_| bump(&inner.counters.keyring_failures))?;
        inner.store.activate(id, &generated.wrapped).await?;
        let key = Arc::new(DataKey::new(id, &generated.material));
        let now = inner.clock.now();
        inner
            .cache
            .unwrapped
            .insert(id, Arc::new(CachedKey::new(key.clone(), now)))
            .await;
        tracing::debug!(target: "sqlx_envelope::keys", key_id = id.get(), scope, "minted data key");
        Ok(Arc::new(ActiveKey::new(key, now)))
    }

    /// Mark a key this process no longer encrypts with as decrypt-only. Best
    /// effort: the state is informative, the cache already stopped using it.
    async fn demote(&self, id: KeyId) {
        if let Err(e) = self.inner.store.set_state(id, KeyState::DecryptOnly).await {
            tracing::warn!(target: "sqlx_envelope::keys", key_id = id.get(), error = %e, "could not mark rotated data key decrypt-only");
        }
    }

    /// Every data key in the store.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.inner.store.list().await
    }

    /// Change the state of a data key, and drop it from this process's caches.
    /// `Destroyed` is final and deletes the wrapped key material. Other processes
    /// see the change when their cache entries expire (max age, decrypt TTL).
    pub async fn set_key_state(&self, id: KeyId, state: KeyState) -> Result<()> {
        let record = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or(Error::UnknownKey(id))?;
        if record.state == KeyState::Destroyed && state != KeyState::Destroyed {
            return Err(Error::KeyNotUsable {
                id,
                state: record.state,
                operation: KeyOperation::Decrypt,
            });
        }
        if state == KeyState::Pending {
            return Err(Error::Config(
                "a key cannot be put back into pending".into(),
            ));
        }
        self.inner.store.set_state(id, state).await?;
        self.forget_key(id).await;
        Ok(())
    }

    /// Drop a key from this process's caches.
    pub async fn forget_key(&self, id: KeyId) {
        let inner = &self.inner;
        // Revoke first, so no thread's front cache serves the key meanwhile.
        if let Some(c) = inner.cache.unwrapped.get(&id).await {
            c.revoke();
        }
        for (_, a) in inner.cache.active.iter() {
            if a.key.id() == id {
                a.revoke();
            }
        }
        inner.cache.unwrapped.invalidate(&id).await;
        // The active cache is keyed by scope; drop any entry that holds this key.
        let _ = inner
            .cache
            .active
            .invalidate_entries_if(move |_, a| a.key.id() == id);
        inner.cache.active.run_pending_tasks().await;
    }

    /// Drop every active key, so the next seal in each scope mints a new one (for
    /// example after the master key changed).
    pub async fn rotate_active_keys(&self) {
        for (_, a) in self.inner.cache.active.iter() {
            a.revoke();
        }
        self.inner.cache.active.invalidate_all();
        self.inner.cache.active.run_pending_tasks().await;
    }
}

fn check_row(ctx: &Context<'_>) -> Result<()> {
    if ctx.row.is_empty() {
        return Err(Error::MissingRowId {
            table: ctx.table.to_owned(),
            column: ctx.column.to_owned(),
        });
    }
    Ok(())
}
